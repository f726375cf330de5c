"""Benchmark plots (`leantrain report`): one figure per (suite, data set, model).

The plots of a single run's events stay in the core (`leantrain.methods.plots`): `leantrain.runs.runner`
writes them into every run folder, benchmark or not.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless, as in leantrain.methods.plots: reports are made on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from ..methods.plots import save_figure  # noqa: E402
from .frontier import Frontier, build_frontiers  # noqa: E402
from .labels import PointLabel, place_labels  # noqa: E402
from .summary import Summary  # noqa: E402

__all__ = ["plot_pareto", "plot_flops_curves", "slug"]


def slug(*parts: str) -> str:
    """A file-name-safe ``a-b-c`` from the parts."""
    return "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in p) for p in parts)


def _by_model(summaries: list[Summary]) -> dict[tuple[str, str, str], list[Summary]]:
    out: dict[tuple[str, str, str], list[Summary]] = {}
    for s in summaries:
        out.setdefault((s.suite, s.dataset, s.model), []).append(s)
    return out


def plot_pareto(summaries: list[Summary], out_dir: str | Path) -> list[Path]:
    """Accuracy vs training time and vs training FLOPs, one PNG per (suite, data set, model).

    Time is each method's ratio to dense's on the same machine (`Summary.time_ratio`, quiet rows
    only), the one time quantity that stays comparable when a suite's runs landed on different
    machines; a method without one is left off that panel. Where the suite measured a dense
    frontier (`leantrain.harness.frontier`), its envelope is the dashed line through its points
    (this model's shorter dense runs placed where the frontier places them), and the other
    networks on it are grey squares. Labels are placed clear of one another (`place_labels`).
    """
    written = []
    frontiers = build_frontiers(summaries)
    for (suite, dataset, model), group in _by_model(summaries).items():
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True)
        names: tuple[list[PointLabel], list[PointLabel]] = ([], [])
        # one per training recipe of this model in the suite (e.g. one data order and another)
        own_frontiers = [f for f in frontiers.values() if (f.reference.suite, f.reference.dataset,
                         f.reference.model) == (suite, dataset, model)]
        # this model's shorter dense runs stand where the frontier puts them (at dense's pace,
        # `leantrain.harness.frontier`), so the dashed line passes through their markers
        placed = {p.summary.label: p.time_ratio for f in own_frontiers for p in f.points
                  if p.summary.model == model}
        # tab20: a suite compares up to 20 methods per model; the default cycle repeats after 10
        colours = plt.get_cmap("tab20").colors
        for i, s in enumerate(group):
            y, yerr = s.mean("acc"), s.std("acc") or 0.0
            flops = s.mean("train_flops")
            tflops = None if flops is None else flops / 1e12
            at = placed.get(s.label, s.time_ratio)  # only dense rows are frontier points
            for ax, x, own in zip(axes, (at, tflops), names):
                if x is None or y is None:
                    continue
                marker = "s" if s.method == "none" else "o"
                ax.errorbar([x], [y], yerr=[yerr], fmt=marker, capsize=3, label=s.label,
                            color=colours[i % len(colours)])
                own.append(PointLabel(x, y, s.label))
        for frontier in own_frontiers:
            _draw_frontier(axes, frontier, names)
        axes[0].set(xlabel="training time ÷ dense's on the same machine (train + surgery)",
                    ylabel="test top-1 (%)")
        axes[1].set(xlabel="training TFLOPs (forward + backward, integrated)")
        fig.suptitle(f"{suite}: {model} on {dataset} (mean ± std over seeds)")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # off the points
        fig.tight_layout()
        for ax, own in zip(axes, names):
            place_labels(ax, own)
        path = Path(out_dir) / f"{slug(suite, dataset, model)}-pareto.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _draw_frontier(axes: Any, frontier: Frontier,
                   names: tuple[list[PointLabel], list[PointLabel]]) -> None:
    """The envelope on both panels (dashed), and the other networks' dense points (grey), whose
    names join `names` (one list per panel)."""
    model = frontier.reference.model
    for ax, axis, own in zip(axes, ("time", "flops"), names):
        envelope = frontier.envelope(axis)
        if len(envelope) > 1:
            ax.plot([p.x(axis) for p in envelope], [p.acc for p in envelope], "--",
                    color="0.45", linewidth=1.2, zorder=0,
                    label="dense frontier" if axis == "flops" else None)
        for p in frontier.points:
            x = p.x(axis)
            if p.summary.model == model or x is None or p.acc is None:
                continue  # this model's own dense rows are drawn with the methods
            ax.errorbar([x], [p.acc], yerr=[p.std], fmt="s", capsize=3, color="0.55",
                        label=p.name(model) if axis == "flops" else None)
            own.append(PointLabel(x, p.acc, p.name(model), color="0.35"))


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


def plot_flops_curves(summaries: list[Summary], out_dir: str | Path) -> list[Path]:
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
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
