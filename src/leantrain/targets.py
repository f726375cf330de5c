"""The papers' headline claims as checks against benchmark summaries: met, missed, by how much.

Each check reads the aggregated rows of `leantrain.report` and says whether a target holds at
this machine's scale. The targets (numbers cited below) are the Learn&Drop paper's (arXiv
2604.23403: "training time more than halved", accuracy within 2.38 points for VGG and 3.2 for
ResNets) and the DCP paper's (arXiv 2007.01486, Table: VGG-16 73.3% and ResNet-32 50.2% fewer
FLOPs at its default p), plus our own acceptance bars (sliced DCP ≤ 0.75× dense time at p = 0.5;
wall-clock saving ≥ 0.8× the training-FLOPs saving).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Summary

__all__ = ["Check", "check_targets", "targets_table"]

# Learn&Drop paper: the largest accuracy drops it reports, per family (points of top-1).
LD_MAX_DROP = {"vgg": 2.38, "resnet": 3.2}
# Learn&Drop paper: training time "more than halved" on the ResNets.
LD_MAX_TIME_RATIO = 0.5
# Our bar: scoring and surgery overheads small, so time falls with the FLOPs.
MIN_TIME_PER_FLOPS_SAVING = 0.8
# DCP paper, CIFAR-10 from scratch: compact-model FLOPs reduction at the authors' default p.
DCP_AUTHORS = {"vgg16": (0.42, 73.3), "resnet32": (0.5, 50.2)}
DCP_MAX_DROP = 1.0  # accuracy points vs our dense baseline on the same recipe
DCP_MAX_TIME_RATIO = 0.75  # sliced DCP at p = 0.5


@dataclass(frozen=True)
class Check:
    """One target on one (data set, model, method) row of the benchmarks."""

    target: str
    where: str
    measured: str
    met: bool | None  # None: not judged (e.g. one seed, no noise estimate)
    seeds: int


def _args(s: Summary, method: str) -> dict[str, Any]:
    return s.rows[0].get("config", {}).get("method_args", {}).get(method, {})


def _where(s: Summary) -> str:
    return f"{s.dataset} / {s.model} / {s.label}"


def _drop(s: Summary) -> float | None:
    dense = s.dense.mean("acc") if s.dense else None
    acc = s.mean("acc")
    return None if dense is None or acc is None else dense - acc


def _learndrop(s: Summary) -> list[Check]:
    out: list[Check] = []
    family = "resnet" if s.model.startswith("resnet") else "vgg"
    ratio = 1 / s.speedup if s.speedup else None
    if family == "resnet" and ratio is not None:
        out.append(Check(
            f"Learn&Drop training time ≤ {LD_MAX_TIME_RATIO:.2f}× dense (ResNets)", _where(s),
            f"{ratio:.2f}×", ratio <= LD_MAX_TIME_RATIO, s.n,
        ))
    if (drop := _drop(s)) is not None:
        limit = LD_MAX_DROP[family]
        out.append(Check(
            f"Learn&Drop accuracy drop ≤ {limit} points ({'ResNet' if family == 'resnet' else 'VGG'})",
            _where(s), f"{drop:+.2f} points", drop <= limit, s.n,
        ))
    r_train = s.mean("r_train")
    if ratio is not None and r_train is not None and r_train > 0.01:
        share = (1 - ratio) / r_train
        out.append(Check(
            f"Learn&Drop wall-clock saving ≥ {MIN_TIME_PER_FLOPS_SAVING}× training-FLOPs saving",
            _where(s), f"{100 * (1 - ratio):.1f}% of time for {100 * r_train:.1f}% of FLOPs "
            f"({share:.2f}×)", share >= MIN_TIME_PER_FLOPS_SAVING, s.n,
        ))
    return out


def _dcp(s: Summary, masked: dict[tuple[str, str, float], Summary]) -> list[Check]:
    args = _args(s, "dcp")
    p, mode = float(args.get("p", 0.3)), args.get("mode", "slice")
    ratio = 1 / s.speedup if s.speedup else None
    out: list[Check] = []
    if mode == "mask":
        if ratio is not None:
            out.append(Check("DCP masked (authors' computation) time ≥ 1.0× dense", _where(s),
                             f"{ratio:.2f}×", ratio >= 1.0, s.n))
        return out
    authors = DCP_AUTHORS.get(s.model)
    r_final = s.mean("r_final")
    if authors and abs(p - authors[0]) < 1e-9 and r_final is not None:
        out.append(Check(f"DCP compact-model FLOPs cut ≥ authors' {authors[1]}%", _where(s),
                         f"{100 * r_final:.1f}%", 100 * r_final >= authors[1], s.n))
        if (drop := _drop(s)) is not None:
            out.append(Check(f"DCP accuracy drop ≤ {DCP_MAX_DROP:g} point at the authors' p",
                             _where(s), f"{drop:+.2f} points", drop <= DCP_MAX_DROP, s.n))
    if abs(p - 0.5) < 1e-9 and ratio is not None:
        out.append(Check(f"DCP sliced time ≤ {DCP_MAX_TIME_RATIO}× dense at p = 0.5", _where(s),
                         f"{ratio:.2f}×", ratio <= DCP_MAX_TIME_RATIO, s.n))
    twin = masked.get((s.dataset, s.model, p))
    if twin is not None and s.mean("acc") is not None and twin.mean("acc") is not None:
        diff = s.mean("acc") - twin.mean("acc")  # type: ignore[operator]
        stds = [x for x in (s.std("acc"), twin.std("acc")) if x is not None]
        # Within noise: inside two standard deviations over seeds; one seed cannot say.
        met = abs(diff) <= 2 * max(stds) if stds and min(s.n, twin.n) >= 2 else None
        out.append(Check("DCP sliced and masked accuracy equal within noise", _where(s),
                         f"{diff:+.2f} points vs masked", met, min(s.n, twin.n)))
    return out


def check_targets(summaries: list[Summary]) -> list[Check]:
    """Every target that the summaries can answer, in table order."""
    masked = {
        (s.dataset, s.model, float(_args(s, "dcp").get("p", 0.3))): s
        for s in summaries
        if s.method == "dcp" and _args(s, "dcp").get("mode") == "mask"
    }
    out: list[Check] = []
    for s in summaries:
        if s.method == "learndrop" and s.suite == "learndrop":
            out += _learndrop(s)
        elif s.method == "dcp" and s.suite == "dcp":
            out += _dcp(s, masked)
    return out


def targets_table(checks: list[Check]) -> str:
    """Markdown: target, where, measured value, met / missed / not judged, seeds."""
    lines = ["| Target | Data set / model / run | Measured | Met | Seeds |", "|---|---|---:|:---:|---:|"]
    for c in checks:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[c.met]
        seeds = f"{c.seeds}" + (" (single seed)" if c.seeds < 2 else "")
        lines.append(f"| {c.target} | {c.where} | {c.measured} | {verdict} | {seeds} |")
    return "\n".join(lines)
