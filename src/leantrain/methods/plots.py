"""Plots of a run's structural events (matplotlib, Agg backend: no display needed).

`plot_learndrop` draws what Learn&Drop (arXiv 2604.23403) decided and what it saved: the
normalised score S of every unit over the checkpoints with its drop marked, and the live forward
FLOPs per sample over training steps. `leantrain.runs.runner` writes these into every run folder;
the benchmark figures of `leantrain report` are in `leantrain.harness.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI, never opens a window

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from ..atomic import write_atomic  # noqa: E402

__all__ = ["plot_learndrop", "plot_dcp", "plot_run_events", "forward_flops_curve", "save_figure"]

# Event kinds that remove a unit (drop: out of the forward pass; freeze: no gradients).
_REMOVALS = ("drop", "freeze")


def save_figure(fig: Any, path: Path, dpi: int) -> None:
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
    save_figure(fig, out, dpi=120)
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
    save_figure(fig, out, dpi=110)
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

