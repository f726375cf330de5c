"""Plots of a run's structural events (matplotlib, Agg backend: no display needed).

`plot_learndrop` draws what Learn&Drop (arXiv 2604.23403) decided and what it saved: the
normalised score S of every unit over the checkpoints with its drop marked, and the live forward
FLOPs per sample over training steps.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI, never opens a window

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .atomic import write_atomic  # noqa: E402

if TYPE_CHECKING:
    from .report import Summary

__all__ = [
    "plot_learndrop", "plot_dcp", "plot_run_events", "forward_flops_curve", "plot_pareto",
    "plot_flops_curves", "slug",
]

# Event kinds that remove a unit (drop: out of the forward pass; freeze: no gradients).
_REMOVALS = ("drop", "freeze")


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Write a figure atomically (format from the suffix), so no half image is left behind."""
    write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".") or "png"))


def forward_flops_curve(events: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """Live forward FLOPs per sample as a step function of the optimizer step.

    Args:
        events: Learn&Drop events (``ld_setup``, ``ld_checkpoint``, ``drop``, ``freeze``) in log
            order, as written to ``events.jsonl``.

    Returns:
        ``(steps, flops)``: the value holds from each step until the next (``steps-post``); the
        curve starts at the setup's dense count and ends at the last checkpoint.
    """
    steps: list[int] = []
    flops: list[float] = []
    for e in events:
        kind = e.get("kind")
        if kind == "ld_setup" and e.get("forward_flops") is not None and not steps:
            steps.append(int(e.get("step", 0)))
            flops.append(float(e["forward_flops"]))
        elif kind in _REMOVALS and e.get("forward_flops_after") is not None:
            if not steps and e.get("forward_flops_before") is not None:
                steps.append(0)
                flops.append(float(e["forward_flops_before"]))
            steps.append(int(e["step"]))
            flops.append(float(e["forward_flops_after"]))
        elif kind == "ld_checkpoint" and e.get("forward_flops") is not None:
            if not steps:
                steps.append(0)
                flops.append(float(e["forward_flops"]))
            steps.append(int(e["step"]))
            flops.append(float(e["forward_flops"]))
    return steps, flops


def plot_learndrop(events: list[dict[str, Any]], out_path: str | Path) -> Path:
    """Two panels: score trajectories S per unit with drops marked; live forward FLOPs.

    Args:
        events: a run's events in log order (other methods' events are ignored).
        out_path: image file to write (the format follows the suffix, e.g. ``.png``).

    Returns:
        The path written.

    Raises:
        ValueError: when the events hold no Learn&Drop checkpoint.
    """
    checkpoints = [e for e in events if e.get("kind") == "ld_checkpoint"]
    if not checkpoints:
        raise ValueError(
            "no Learn&Drop checkpoint events to plot; was the run made with --method learndrop?"
        )
    removals = [e for e in events if e.get("kind") in _REMOVALS]

    trajectories: dict[str, tuple[list[int], list[float]]] = {}
    for e in checkpoints:
        for unit, row in e["units"].items():
            if row.get("S") is not None:
                xs, ys = trajectories.setdefault(unit, ([], []))
                xs.append(int(e["step"]))
                ys.append(float(row["S"]))

    fig, (ax_s, ax_f) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    colours: dict[str, Any] = {}
    for unit, (xs, ys) in trajectories.items():
        (line,) = ax_s.plot(xs, ys, marker=".", linewidth=1, label=unit)
        colours[unit] = line.get_color()
    for i, e in enumerate(removals):
        colour = colours.get(e["unit"], "black")
        marker = "x" if e["kind"] == "drop" else "s"
        s = e.get("S")
        if s is not None:
            ax_s.scatter([e["step"]], [s], marker=marker, s=60, color=colour, zorder=3,
                         label=f"{e['kind']}" if i == 0 else None)
        ax_s.axvline(e["step"], color=colour, linestyle=":", linewidth=0.8)
    setup = next((e for e in events if e.get("kind") == "ld_setup"), {})
    if setup.get("mode") == "threshold" and setup.get("tau") is not None:
        ax_s.axhline(setup["tau"], color="grey", linestyle="--", linewidth=0.8, label="τ")
    ax_s.set_ylabel("normalised score S")
    ax_s.set_title("Learn&Drop: unit scores (× drop, ■ freeze)")
    if len(trajectories) <= 20:  # a legend for ResNet-152's 45 units would hide the plot
        ax_s.legend(fontsize=7, ncol=2, loc="upper right")

    steps, flops = forward_flops_curve(events)
    if steps:
        ax_f.step(steps, [f / 1e6 for f in flops], where="post")
        for e in removals:
            ax_f.axvline(e["step"], color="grey", linestyle=":", linewidth=0.8)
    ax_f.set_xlabel("optimizer step")
    ax_f.set_ylabel("forward MFLOPs / sample")
    ax_f.set_title("live forward FLOPs")
    ax_f.set_ylim(bottom=0)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, out, dpi=120)
    plt.close(fig)
    return out


def plot_dcp(events: list[dict[str, Any]], out_path: str | Path, layer: str | None = None) -> Path:
    """DCP over training: kept width of every layer per epoch, and one layer's utility heatmap.

    Args:
        events: DCP events (``dcp_snapshot`` once per epoch) as written to ``events.jsonl``.
        out_path: PNG file to write.
        layer: channel set whose utilities are drawn (default: the most pruned one at the end).
    """
    snaps = [e for e in events if e.get("kind") == "dcp_snapshot"]
    if not snaps:
        raise ValueError("no DCP snapshots in these events: was the run made with --method dcp?")
    names = list(snaps[-1]["widths"])
    epochs = [e.get("epoch", i) + 1 for i, e in enumerate(snaps)]
    if layer is None:
        full = {n: len(snaps[-1]["utilities"][n]) for n in names}
        layer = min(names, key=lambda n: snaps[-1]["widths"][n] / full[n])
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; choose one of: {', '.join(names)}")
    fig, (ax_w, ax_u) = plt.subplots(1, 2, figsize=(13, 4.8))
    cmap = plt.get_cmap("viridis", max(2, len(names)))
    for i, name in enumerate(names):
        full = len(snaps[-1]["utilities"][name])
        ax_w.plot(epochs, [100 * e["widths"][name] / full for e in snaps], color=cmap(i),
                  label=name if len(names) <= 16 else None)
    ax_w.set(xlabel="epoch", ylabel="kept channels (% of layer width)", title="DCP: kept width per layer")
    if len(names) <= 16:
        ax_w.legend(fontsize=6, ncol=2)
    grid = [e["utilities"][layer] for e in snaps]
    image = ax_u.imshow(list(map(list, zip(*grid))), aspect="auto", origin="lower",
                        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, len(grid[0]) - 0.5))
    ax_u.set(xlabel="epoch", ylabel="channel", title=f"utility of {layer}")
    fig.colorbar(image, ax=ax_u, label="utility U")
    fig.tight_layout()
    out = Path(out_path)
    _save(fig, out, dpi=110)
    plt.close(fig)
    return out


def plot_run_events(events: list[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Every plot the run's events support (Learn&Drop, DCP), written into `folder`."""
    folder = Path(folder)
    written = []
    if any(e.get("kind") == "ld_checkpoint" for e in events):
        written.append(plot_learndrop(events, folder / "learndrop.png"))
    if any(e.get("kind") == "dcp_snapshot" for e in events):
        written.append(plot_dcp(events, folder / "dcp.png"))
    return written


# Benchmark plots (`leantrain report`): one figure per (suite, data set, model).


def slug(*parts: str) -> str:
    """A file-name-safe ``a-b-c`` from the parts."""
    return "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in p) for p in parts)


def _by_model(summaries: list["Summary"]) -> dict[tuple[str, str, str], list["Summary"]]:
    out: dict[tuple[str, str, str], list["Summary"]] = {}
    for s in summaries:
        out.setdefault((s.suite, s.dataset, s.model), []).append(s)
    return out


def plot_pareto(summaries: list["Summary"], out_dir: str | Path) -> list[Path]:
    """Accuracy vs training time and vs training FLOPs, one PNG per (suite, data set, model)."""
    written = []
    for (suite, dataset, model), group in _by_model(summaries).items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for s in group:
            y, yerr = s.mean("acc"), s.std("acc") or 0.0
            flops = s.mean("train_flops")
            tflops = None if flops is None else flops / 1e12
            for ax, x in ((axes[0], s.mean("time_s")), (axes[1], tflops)):
                if x is None or y is None:
                    continue
                marker = "s" if s.method == "none" else "o"
                ax.errorbar([x], [y], yerr=[yerr], fmt=marker, capsize=3, label=s.label)
                ax.annotate(s.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes[0].set(xlabel="training time (s, train + surgery)", ylabel="test top-1 (%)")
        axes[1].set(xlabel="training TFLOPs (forward + backward, integrated)")
        fig.suptitle(f"{suite}: {model} on {dataset} (mean ± std over seeds)")
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = Path(out_dir) / f"{slug(suite, dataset, model)}-pareto.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _flops_curve(row: dict[str, Any]) -> tuple[list[int], list[float]]:
    """Training FLOPs per sample averaged over each evaluated epoch, as a post-step curve."""
    steps, values = [0], []
    prev = {"step": 0, "train_flops": 0, "samples": 0}
    for e in row.get("trace", {}).get("epochs", []):
        samples = e.get("samples", 0) - prev["samples"]
        if samples > 0 and "train_flops" in e:
            values.append((e["train_flops"] - prev["train_flops"]) / samples)
            steps.append(int(e["step"]))
            prev = e
    return steps, values


def plot_flops_curves(summaries: list["Summary"], out_dir: str | Path) -> list[Path]:
    """Per (suite, data set, model): each method's FLOPs over training (first seed), with events."""
    written = []
    marks = {"drop": "v", "freeze": "s", "tp_prune": "X", "dcp_export": "*"}
    for (suite, dataset, model), group in _by_model(summaries).items():
        fig, ax = plt.subplots(figsize=(8, 4.5))
        drawn = False
        for s in group:
            row = min(s.rows, key=lambda r: r.get("seed", 0))
            steps, values = _flops_curve(row)
            if not values:
                continue
            drawn = True
            gflops = [v / 1e9 for v in values]
            line = ax.stairs(gflops, steps, label=s.label, linewidth=1.5, baseline=None)
            for e in row.get("trace", {}).get("events", []):
                if e.get("kind") in marks:  # on the curve, in the epoch the event happened
                    k = min(max(bisect.bisect_left(steps, e["step"]) - 1, 0), len(gflops) - 1)
                    colour = line.get_edgecolor()
                    ax.plot([e["step"]], [gflops[k]], marks[e["kind"]], color=colour, markersize=7)
        if not drawn:
            plt.close(fig)
            continue
        ax.set(xlabel="optimizer step", ylabel="training GFLOPs / sample (epoch mean)",
               title=f"{suite}: {model} on {dataset}  (▼ drop, ■ freeze, ✕ prune, ★ export)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"{slug(suite, dataset, model)}-flops.png"
        _save(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
