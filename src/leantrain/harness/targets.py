"""The papers' headline claims as checks against benchmark summaries: met, missed, by how much.

Each check reads the aggregated rows of `leantrain.harness.summary` and says whether a target
holds at this machine's scale. The targets are data, not code: ``targets.toml`` beside this
module holds the Learn&Drop paper's (arXiv 2604.23403: "training time more than halved",
accuracy within 2.38 points for VGG and 3.2 for ResNets) and the DCP paper's (arXiv 2007.01486,
CIFAR-10 table: VGG-16 73.3% and ResNet-32 50.2% fewer FLOPs at its default p), our own
acceptance bars (sliced DCP ≤ 0.75× dense time at p = 0.5, the authors' masked computation
≥ 1.0×; wall-clock saving ≥ 0.8× the training-FLOPs saving) and which suites each applies to,
each with the comment that says where it comes from. `TARGETS` is that file, read once.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from .frontier import Frontier, build_frontiers, frontier_of
from .summary import Summary

__all__ = [
    "COLUMNS",
    "TARGETS",
    "Check",
    "Targets",
    "check_targets",
    "controls_of",
    "frontier_check",
    "ld_family",
    "load_targets",
    "targets_tables",
    "time_share",
    "width_controls",
]


@dataclass(frozen=True)
class Targets:
    """The numbers and suite names of ``targets.toml`` (its comments cite each source)."""

    ld_max_drop: Mapping[str, float]  # Learn&Drop family ("vgg", "resnet") → top-1 points
    ld_max_time_ratio: float  # Learn&Drop on ResNets: time / dense time
    dcp_authors: Mapping[str, tuple[float, float]]  # model → (the authors' p, FLOPs cut in %)
    dcp_max_drop: float  # top-1 points vs our dense baseline
    dcp_max_time_ratio: float  # sliced DCP at p = 0.5: time / dense time
    ld_min_frontier_margin: float  # Learn&Drop: top-1 points above the dense frontier
    dcp_min_frontier_margin: float  # DCP: top-1 points above the dense frontier
    min_time_per_flops_saving: float  # time saving / training-FLOPs saving
    min_judged_flops_saving: float  # smaller training-FLOPs cuts: their time share is not judged
    recipe_bars: Mapping[tuple[str, str, str], float]  # (suite, data set, model) → dense top-1 %
    ld_suites: tuple[str, ...]  # suites whose Learn&Drop rows are judged
    readme_suites: tuple[str, ...]  # the README's suites when none are named
    story_suites: tuple[str, ...]  # suites the generated sentences are written for
    suite_titles: Mapping[str, str]  # suite → its bold title in the README, after the first


def load_targets(text: str | None = None) -> Targets:
    """`Targets` from TOML `text`; by default the shipped ``targets.toml``."""
    if text is None:
        text = resources.files("leantrain.harness").joinpath("targets.toml").read_text("utf-8")
    data = tomllib.loads(text)
    ld, dcp, share, suites = data["learndrop"], data["dcp"], data["time_share"], data["suites"]
    # float(): a bar written as `1` in TOML is an int, and the tables print these with {:g}/{}.
    return Targets(
        ld_max_drop=MappingProxyType({k: float(v) for k, v in ld["max_drop"].items()}),
        ld_max_time_ratio=float(ld["max_time_ratio"]),
        dcp_authors=MappingProxyType({
            model: (float(a["p"]), float(a["flops_cut"])) for model, a in dcp["authors"].items()
        }),
        dcp_max_drop=float(dcp["max_drop"]),
        dcp_max_time_ratio=float(dcp["max_time_ratio"]),
        ld_min_frontier_margin=float(data["frontier"]["ld_min_margin"]),
        dcp_min_frontier_margin=float(data["frontier"]["dcp_min_margin"]),
        min_time_per_flops_saving=float(share["min_per_flops_saving"]),
        min_judged_flops_saving=float(share["min_judged_flops_saving"]),
        recipe_bars=MappingProxyType({
            (b["suite"], b["dataset"], b["model"]): float(b["min_acc"])
            for b in data.get("recipe_bars", [])
        }),
        ld_suites=tuple(suites["learndrop_judged"]),
        readme_suites=tuple(suites["readme"]),
        story_suites=tuple(suites["story"]),
        suite_titles=MappingProxyType(dict(suites.get("titles", {}))),
    )


TARGETS = load_targets()

# Column headers of each method's table, in order.
COLUMNS = {
    "Learn&Drop": [
        f"Time vs dense (≤ {TARGETS.ld_max_time_ratio:.2f}× on ResNets)",
        (f"Accuracy drop (≤ {TARGETS.ld_max_drop['vgg']} VGG, "
         f"≤ {TARGETS.ld_max_drop['resnet']} ResNet)"),
        f"Time saving / train-FLOPs saving (≥ {TARGETS.min_time_per_flops_saving}×)",
        f"vs dense frontier at its time (≥ {TARGETS.ld_min_frontier_margin:+g} points)",
        "Control: its final network from scratch, drop and time",
    ],
    "DCP": [
        "Compact FLOPs cut (≥ authors' at their p)",
        f"Accuracy drop at authors' p (≤ {TARGETS.dcp_max_drop:g})",
        f"Sliced time at p = 0.5 (≤ {TARGETS.dcp_max_time_ratio}×)",
        "Masked time (≥ 1.0×)",
        "Sliced − masked accuracy (within 2σ)",
        "Control: its widths from scratch, drop",
        "Bound: static net at its computed widths, time",
        f"vs dense frontier at its time (≥ {TARGETS.dcp_min_frontier_margin:+g} points)",
    ],
}


@dataclass(frozen=True)
class Check:
    """One target on one (suite, data set, model, method) row of the benchmarks."""

    method: str  # "Learn&Drop" or "DCP": which table
    column: str  # one of COLUMNS[method]
    where: str
    measured: str
    met: bool | None  # None: not judged (e.g. one seed, no noise estimate)
    seeds: int


def time_share(s: Summary) -> float | None:
    """The share of the training-FLOPs saving that reached the clock, (1 − time ratio) / FLOPs
    cut; None without a quiet time ratio, or when the cut is under
    `Targets.min_judged_flops_saving` (timing noise)."""
    ratio, r_train = s.time_ratio, s.mean("r_train")
    if ratio is None or r_train is None or r_train < TARGETS.min_judged_flops_saving:
        return None
    return (1 - ratio) / r_train


def ld_family(model: str) -> str:
    """The Learn&Drop paper's family a model is judged as: ``"resnet"`` or ``"vgg"``."""
    return "resnet" if model.startswith("resnet") else "vgg"


def frontier_check(s: Summary, frontier: Frontier | None, method: str, column: str,
                   margin: float) -> Check | None:
    """`s` against the dense frontier at its own time: met when its top-1 is at least `margin`
    points above; not judged on one seed, nor faster than the frontier's fastest point."""
    if frontier is None or s.time_ratio is None:
        return None
    distance = frontier.distance(s, "time")
    if distance is None:
        fastest = frontier.span("time")
        where = f"faster than its fastest point ({fastest[0]:.2f}×)" if fastest else "no points"
        return Check(method, column, s.where, f"– at {s.time_ratio:.2f}×: {where}", None, s.n)
    met = distance >= margin if s.n >= 2 else None
    return Check(method, column, s.where, f"{distance:+.2f} at {s.time_ratio:.2f}×", met, s.n)


def _learndrop(s: Summary, frontier: Frontier | None = None) -> list[Check]:
    cols, where, out = COLUMNS["Learn&Drop"], s.where, []
    family = ld_family(s.model)
    ratio = s.time_ratio
    if ratio is not None:
        judged = ratio <= TARGETS.ld_max_time_ratio if family == "resnet" else None
        out.append(Check("Learn&Drop", cols[0], where, f"{ratio:.2f}×", judged, s.n))
    if (drop := s.accuracy_drop) is not None:
        out.append(Check("Learn&Drop", cols[1], where, f"{drop:+.2f}",
                         drop <= TARGETS.ld_max_drop[family], s.n))
    r_train = s.mean("r_train")
    if ratio is not None and r_train is not None and r_train > 0.01:
        # A cut under `min_judged_flops_saving` is shown but not judged (time_share is None),
        # and without its quotient: dividing timing noise by a few percent gives numbers like -12×.
        savings = f"{100 * (1 - ratio):.0f}% / {100 * r_train:.0f}%"
        share = time_share(s)
        met = None if share is None else share >= TARGETS.min_time_per_flops_saving
        out.append(Check("Learn&Drop", cols[2], where,
                         savings if share is None else f"{savings} = {share:.2f}×", met, s.n))
    if (check := frontier_check(s, frontier, "Learn&Drop", cols[3],
                                TARGETS.ld_min_frontier_margin)) is not None:
        out.append(check)
    # Context, not a target: the network this run ended with, trained from scratch for the whole
    # recipe (`Frontier.scratch_of`): what the deep start of training bought.
    # Its drop is against this run's dense (the scratch network's own dense row is itself).
    scratch = frontier.scratch_of(s) if frontier is not None else None
    dense_acc = s.dense.mean("acc") if s.dense else None
    if scratch is not None and scratch.acc is not None and dense_acc is not None:
        at = f" at {scratch.time_ratio:.2f}×" if scratch.time_ratio is not None else ""
        # Context: the row's seeds stay the run's own; the control's are named in the cell.
        out.append(Check("Learn&Drop", cols[4], where,
                         f"{dense_acc - scratch.acc:+.2f}{at} ({scratch.summary.model}, "
                         f"n={scratch.summary.n})", None, s.n))
    return out


def _dcp(
    s: Summary,
    masked: dict[tuple[str, str, str, str], Summary],
    controls: list[Summary],
    frontier: Frontier | None = None,
) -> list[Check]:
    cols, where, out = COLUMNS["DCP"], s.where, []
    args = s.args("dcp")
    p, mode = float(args.get("p", 0.3)), args.get("mode", "slice")
    ratio = s.time_ratio
    if mode == "mask":
        if ratio is not None:
            out.append(Check("DCP", cols[3], where, f"{ratio:.2f}×", ratio >= 1.0, s.n))
        return out
    authors = TARGETS.dcp_authors.get(s.model)
    r_final = s.mean("r_final")
    if authors and abs(p - authors[0]) < 1e-9 and r_final is not None:
        out.append(Check("DCP", cols[0], where, f"{100 * r_final:.1f}% (authors {authors[1]}%)",
                         100 * r_final >= authors[1], s.n))
        if (drop := s.accuracy_drop) is not None:
            out.append(Check("DCP", cols[1], where, f"{drop:+.2f}",
                             drop <= TARGETS.dcp_max_drop, s.n))
    if abs(p - 0.5) < 1e-9 and ratio is not None:
        out.append(Check("DCP", cols[2], where, f"{ratio:.2f}×",
                         ratio <= TARGETS.dcp_max_time_ratio, s.n))
    twin = masked.get(_twin_key(s))
    acc, twin_acc = s.mean("acc"), twin.mean("acc") if twin else None
    if twin is not None and acc is not None and twin_acc is not None:
        diff = acc - twin_acc
        stds = [x for x in (s.std("acc"), twin.std("acc")) if x is not None]
        # Within noise: inside two standard deviations over seeds; one seed cannot say.
        n = min(s.n, twin.n)
        met = abs(diff) <= 2 * max(stds) if stds and n >= 2 else None
        noise = f" (2σ = {2 * max(stds):.2f})" if stds and n >= 2 else ""
        out.append(Check("DCP", cols[4], where, f"{diff:+.2f}{noise}", met, n))
    # Context, not targets: static networks at this run's final widths (see `controls_of`).
    scratch, bound = controls_of(s, controls)
    if scratch is not None and (drop := scratch.accuracy_drop) is not None:
        out.append(Check("DCP", cols[5], where, f"{drop:+.2f} (n={scratch.n})", None, s.n))
    if bound is not None and bound.time_ratio is not None:
        out.append(Check("DCP", cols[6], where, f"{bound.time_ratio:.2f}× (n={bound.n})", None,
                         s.n))
    if (check := frontier_check(s, frontier, "DCP", cols[7],
                                TARGETS.dcp_min_frontier_margin)) is not None:
        out.append(check)
    return out


def _twin_key(s: Summary) -> tuple[str, str, str, str]:
    """Sliced and masked twins share every DCP setting but the mode (p, γ, warm-up, ...)."""
    args = {k: v for k, v in s.args("dcp").items() if k != "mode"}
    return (s.suite, s.dataset, s.model, json.dumps(args, sort_keys=True))


def controls_of(s: Summary, statics: list[Summary]) -> tuple[Summary | None, Summary | None]:
    """The `static` rows that control DCP run `s`: trained at the exact final widths of one of
    its seeds (found by equal final MACs: the same architecture), and at those widths rounded
    up to a multiple (the widths DCP's slice mode computed: the speed bound)."""
    macs = {r.get("final_macs") for r in s.rows}
    same = [c for c in statics if (c.suite, c.dataset, c.model) == (s.suite, s.dataset, s.model)]
    scratch = next((c for c in same if int(c.args("static").get("multiple", 1)) == 1
                    and c.rows[0].get("final_macs") in macs), None)
    if scratch is None:
        return None, None
    widths = scratch.args("static")["widths"]
    bound = next((c for c in same if int(c.args("static").get("multiple", 1)) > 1
                  and c.args("static")["widths"] == widths), None)
    return scratch, bound


def width_controls(summaries: list[Summary]) -> list[Summary]:
    """Static rows with explicit widths: controls of the DCP runs whose final widths they copy
    (which run's: `controls_of`)."""
    return [s for s in summaries if s.method == "static" and s.args("static").get("widths")]


def check_targets(summaries: list[Summary]) -> list[Check]:
    """Every target that the summaries can answer, in table order."""
    masked = {
        _twin_key(s): s
        for s in summaries
        if s.method == "dcp" and s.args("dcp").get("mode") == "mask"
    }
    controls = width_controls(summaries)
    frontiers = build_frontiers(summaries)
    out: list[Check] = []
    for s in summaries:
        if s.method == "learndrop" and s.suite in TARGETS.ld_suites:
            out += _learndrop(s, frontier_of(s, frontiers))
        elif s.method == "dcp":
            out += _dcp(s, masked, controls, frontier_of(s, frontiers))
    return out


def targets_tables(checks: list[Check]) -> dict[str, str]:
    """One Markdown table per method: a row per run, a column per target (value and verdict)."""
    tables: dict[str, str] = {}
    for method, cols in COLUMNS.items():
        rows: dict[str, dict[str, Check]] = {}
        for c in checks:
            if c.method == method:
                rows.setdefault(c.where, {})[c.column] = c
        if not rows:
            continue
        lines = [
            "| Run (suite: data set / model / method) | Seeds | " + " | ".join(cols) + " |",
            "|---|---:|" + "---:|" * len(cols),
        ]
        for where, cells in rows.items():
            seeds = max(c.seeds for c in cells.values())
            lines.append(
                f"| {where} | {seeds}{' (single seed)' if seeds < 2 else ''} | "
                + " | ".join(_cell(cells.get(col)) for col in cols)
                + " |"
            )
        tables[method] = "\n".join(lines)
    return tables


def _cell(c: Check | None) -> str:
    if c is None:
        return "–"
    return c.measured + {True: " ✓", False: " **✗**", None: ""}[c.met]
