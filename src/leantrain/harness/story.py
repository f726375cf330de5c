"""The headline in words: for each method of a suite, what it measured against its target and the
measured quantities that say why, generated from the result rows (never typed by hand).

A reader who sees "0.78× dense time" also needs to know whether that was the claim, and what bounds
it: a method cannot save more time than it cut training FLOPs (forward + backward over the whole
run), and a per-step channel selection cannot train faster than a static network of the widths it
computes. Each sentence here is built from those numbers: the verdicts come from
`leantrain.harness.targets`, the removals' timing from the rows' event traces, the FLOPs cuts
from the FLOP counters, the time ratios from quiet runs only.
"""

from __future__ import annotations

import statistics

from .frontier import Frontier, build_frontiers, frontier_of
from .pace import drift_sentence
from .summary import Summary
from .targets import (
    COLUMNS,
    TARGETS,
    Check,
    check_targets,
    controls_of,
    ld_family,
    time_share,
    width_controls,
)

__all__ = ["story", "headline", "HELD_POINTS"]

# "Held its accuracy", in the headline: DCP's bar (within a point of dense top-1), the stricter of
# the two papers' accuracy claims (DCP: ResNet-32 at ~no loss; Learn&Drop: within 3.2 points).
HELD_POINTS = TARGETS.dcp_max_drop

_VERDICT = {True: "met", False: "**missed**", None: "not judged"}


def _verdict(check: Check | None) -> str:
    if check is None:
        return "not judged"
    if check.met is None and check.seeds < 2:
        return "not judged yet: one seed"
    return _VERDICT[check.met]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _removal_timing(s: Summary) -> tuple[float, float, float] | None:
    """(mean blocks removed per run, earliest and latest removal as a fraction of training)."""
    counts, firsts, lasts = [], [], []
    for row in s.rows:
        trace = row.get("trace") or {}
        total = max((e.get("step", 0) for e in trace.get("epochs", [])), default=0)
        steps = [e["step"] for e in trace.get("events", [])
                 if e.get("kind") in ("drop", "freeze") and "step" in e]
        counts.append(len(steps))
        if steps and total:
            firsts.append(min(steps) / total)
            lasts.append(max(steps) / total)
    if not counts:
        return None
    return statistics.fmean(counts), min(firsts, default=0.0), max(lasts, default=0.0)


def _lowest_score(s: Summary, after: float = 0.0) -> tuple[float, str, float] | None:
    """(S, unit, fraction of training) of the lowest score any block reached at a Learn&Drop
    checkpoint while drops were allowed (between the warm-up and the stop) and later than
    `after` (a fraction of training), over all seeds."""
    args = s.args("learndrop")
    warmup, stop = float(args.get("warmup", 0.0)), float(args.get("stop", 1.0))
    best: tuple[float, str, float] | None = None
    for row in s.rows:
        trace = row.get("trace") or {}
        total = max((e.get("step", 0) for e in trace.get("epochs", [])), default=0)
        for e in trace.get("events", []):
            if e.get("kind") != "ld_checkpoint" or "lowest_S" not in e or not total:
                continue
            at = e.get("step", 0) / total
            if warmup <= at < stop and at > after and (best is None or e["lowest_S"] < best[0]):
                best = (e["lowest_S"], e.get("lowest_unit", "?"), at)
    return best


def _no_drop_reason(s: Summary) -> str:
    """Why the threshold rule removed nothing: how close the lowest score came to τ."""
    args = s.args("learndrop")
    tau = f" (τ = {args['tau']:g})" if "tau" in args else ""
    text = f"It removed no block: no block met the drop rule{tau}"
    lowest = _lowest_score(s)
    if lowest is None:
        return text + "."
    score, unit, at = lowest
    text += (f"; the lowest score while drops were allowed "
             f"({_pct(float(args.get('warmup', 0)))}–{_pct(float(args.get('stop', 1)))} of "
             f"training) was S = {score:.2f} ({unit}, at {_pct(at)})")
    if args.get("normalize") == "peers":
        text += (": the block that changed least still changed at "
                 f"{score:.2f}× the rate of the block that changed most")
    return text + "."


def _no_more_drops(s: Summary, last: float) -> str:
    """Why the threshold rule removed no more: the lowest score after its last removal."""
    lowest = _lowest_score(s, after=last)
    if lowest is None:
        return ""
    score, unit, at = lowest
    args = s.args("learndrop")
    stop = float(args.get("stop", 1.0))
    text = (f"After that no other block met the drop rule: the lowest score until drops stopped "
            f"({_pct(stop)} of training) was S = {score:.2f} ({unit}, at {_pct(at)})")
    if "tau" in args and score < float(args["tau"]):  # the score alone does not drop a block
        text += (", under τ but kept by the rule's other conditions (C ≤ 0, the per-stage "
                 "minimum, the cap)")
    return text + "."


def _seeds(s: Summary) -> str:
    return "1 seed" if s.n == 1 else f"{s.n} seeds"


def _time_and_flops(s: Summary, why_flops: str = "") -> str:
    """Time saving against the training-FLOPs saving: the most time the cut could save."""
    ratio, r_train = s.time_ratio, s.mean("r_train")
    if ratio is None or r_train is None:
        return ""
    if ratio >= 1:  # a cut too small to outweigh the method's own work (and the noise)
        return f"training FLOPs fell {_pct(r_train)}{why_flops} and time rose {_pct(ratio - 1)}"
    text = f"training FLOPs fell {_pct(r_train)}{why_flops} and time {_pct(1 - ratio)}"
    if (share := time_share(s)) is not None:  # None under a cut whose share is timing noise
        text += f": {share:.2f}× the FLOPs saving reached the clock"
    return text


def _frontier_clause(s: Summary, frontier: Frontier | None) -> str:
    """Where `s` lands against dense trained for the same time (`leantrain.harness.frontier`)."""
    if frontier is None or s.time_ratio is None:
        return ""
    distance = frontier.distance(s, "time")
    if distance is None:
        span = frontier.span("time")
        fastest = f" (the fastest ran at {span[0]:.2f}×)" if span else ""
        return (f"It trained faster than every dense run of the frontier{fastest}, so the "
                "frontier cannot place it.")
    at = frontier.accuracy_at("time", s.time_ratio)
    side = "above" if distance >= 0 else "below"
    return (f"Dense trained for the same {s.time_ratio:.2f}× of the time (fewer epochs, or a "
            f"smaller network) reaches {at:.2f}%: this run lies {abs(distance):.2f} points "
            f"{side} the dense frontier.")


def _scratch_sentence(s: Summary, frontier: Frontier | None) -> str:
    """The network a Learn&Drop run ended with, trained from scratch (`Frontier.scratch_of`)."""
    scratch = frontier.scratch_of(s) if frontier is not None else None
    if scratch is None or scratch.acc is None:
        return ""
    text = (f"The network it ended with is `{scratch.summary.model}` (equal parameters and "
            "FLOPs); trained densely from scratch for the whole recipe (Liu et al., arXiv "
            f"1810.05270), that network reached {scratch.acc:.2f}%")
    if (mine := s.mean("acc")) is not None:
        text += f" ({scratch.acc - mine:+.2f} points vs this run)"
    if scratch.time_ratio is not None:
        text += f" at {scratch.time_ratio:.2f}× dense time"
    return text + "."


def _dense_sentence(s: Summary) -> str:
    acc, std = s.mean("acc"), s.std("acc")
    epochs = s.train.get("epochs")
    text = f"**Dense {s.model}** ({_seeds(s)}): {acc:.2f}%" + (f" ± {std:.2f}" if std else "")
    text += f" top-1 after {epochs} epochs (the last epoch's model, never the best epoch's)"
    bar = TARGETS.recipe_bars.get((s.suite, s.dataset, s.model))
    if bar is not None and acc is not None:
        text += f"; the recipe's bar of {bar:g}% is {'met' if acc >= bar else '**missed**'}"
    return text + "."


def _learndrop_sentence(s: Summary, checks: dict[str, Check],
                        frontier: Frontier | None = None) -> str:
    ratio = s.time_ratio
    drop = s.accuracy_drop
    family = ld_family(s.model)
    parts = [f"**{s.label}** on {s.model} ({_seeds(s)}):"]
    if ratio is not None:
        target = (f"paper: ≤ {TARGETS.ld_max_time_ratio:g}×" if family == "resnet"
                  else "no time claim")
        parts.append(f"{ratio:.2f}× dense training time ({target}; "
                     f"{_verdict(checks.get('time'))}),")
    if drop is not None:
        parts.append(f"top-1 {-drop:+.2f} points vs dense (paper: within "
                     f"{TARGETS.ld_max_drop[family]}; {_verdict(checks.get('acc'))}).")
    timing = _removal_timing(s)
    if timing and timing[0] > 0:
        n, first, last = timing
        blocks = "block" if n == 1 else "blocks"
        when = (f"at {_pct(first)}" if _pct(first) == _pct(last)
                else f"the first at {_pct(first)} and the last at {_pct(last)}")
        parts.append(f"It removed {n:g} {blocks} per run, {when} of training; the final network "
                     f"computes {_pct(s.mean('r_final') or 0.0)} fewer forward FLOPs than dense.")
        if s.args("learndrop").get("mode", "threshold") == "threshold":
            parts.append(_no_more_drops(s, last))
    elif timing:
        parts.append(_no_drop_reason(s))
    why = _time_and_flops(s)
    if why:
        r_train = s.mean("r_train") or 0.0
        most = TARGETS.ld_max_time_ratio
        halved = ratio is not None and ratio <= most
        if not halved and r_train < 1 - most:
            why += (f"; halving the time needs a ≥ {_pct(1 - most)} cut in training "
                    "FLOPs over the whole run, so the removals came too late or were too few")
        parts.append(why[0].upper() + why[1:] + ".")
    parts.append(_frontier_clause(s, frontier))
    parts.append(_scratch_sentence(s, frontier))
    return " ".join(p for p in parts if p)


def _control_sentence(s: Summary, control: Summary) -> str:
    """The static control at DCP's final widths against DCP itself."""
    text = (f"The control `{control.label}`, the network of the widths this run ended with "
            "trained densely from the first step (Liu et al., arXiv 1810.05270),")
    acc, mine = control.mean("acc"), s.mean("acc")
    if acc is not None and mine is not None:
        text += f" reached {acc:.2f}% ({acc - mine:+.2f} points vs DCP)"
    if control.time_ratio is not None:
        text += f" at {control.time_ratio:.2f}× dense time"
    return text.rstrip(",") + "."


def _dcp_sentence(s: Summary, checks: dict[str, Check], bound: Summary | None,
                  control: Summary | None = None, frontier: Frontier | None = None) -> str:
    args = s.args("dcp")
    p = float(args.get("p", 0.3))
    ratio = s.time_ratio
    drop = s.accuracy_drop
    parts = [f"**{s.label}** on {s.model} ({_seeds(s)}):"]
    r_final = s.mean("r_final")
    authors = TARGETS.dcp_authors.get(s.model)
    if r_final is not None:
        claim = (f"authors: {authors[1]}%; {_verdict(checks.get('flops'))}"
                 if authors and abs(p - authors[0]) < 1e-9 else "no published figure at this p")
        parts.append(f"the compact model has {100 * r_final:.1f}% fewer FLOPs ({claim}),")
    mode = args.get("mode", "slice")
    if drop is not None:
        judged = (f" (≤ {TARGETS.dcp_max_drop:g} point; {_verdict(checks['acc'])})"
                  if "acc" in checks else "")
        parts.append(f"top-1 {-drop:+.2f} points vs dense{judged},")
    if ratio is not None:
        target = (f"≤ {TARGETS.dcp_max_time_ratio}×; {_verdict(checks.get('time'))}"
                  if mode == "slice" and abs(p - 0.5) < 1e-9 else "no time target")
        done = "sliced" if mode == "slice" else "masked"
        parts.append(f"{done} training at {ratio:.2f}× dense time ({target}).")
    warmup = float(args.get("warmup", 0.05))
    why = _time_and_flops(s, f" (the first {_pct(warmup)} of training is dense, and each layer "
                             "computes its selected channels rounded up to a multiple of "
                             f"{args.get('compute_multiple', 8)})")
    if why and mode == "slice":  # masked computes every channel: no FLOPs saving to explain
        parts.append(why[0].upper() + why[1:] + ".")
    if control is not None:
        parts.append(_control_sentence(s, control))
    if bound is not None and bound.time_ratio is not None:
        b_drop = bound.accuracy_drop
        parts.append(f"The static network `{bound.label}` (every prunable width cut by p = {p:g} "
                     "before the first step, trained densely) runs at "
                     f"{bound.time_ratio:.2f}× dense time"
                     + (f" at {-b_drop:+.2f} points" if b_drop is not None else "")
                     + ": about the fastest a selection at this p can train here.")
    if mode == "slice":
        parts.append(_frontier_clause(s, frontier))
    return " ".join(p for p in parts if p)


def _other_sentence(s: Summary, frontier: Frontier | None = None) -> str:
    ratio = s.time_ratio
    drop = s.accuracy_drop
    bits = [f"**{s.label}** on {s.model} ({_seeds(s)}):"]
    if ratio is not None:
        bits.append(f"{ratio:.2f}× dense time,")
    if drop is not None:
        bits.append(f"top-1 {-drop:+.2f} points vs dense,")
    r_train, r_final = s.mean("r_train"), s.mean("r_final")
    if r_train is not None and r_final is not None:
        bits.append(f"training FLOPs −{_pct(r_train)}, final network −{_pct(r_final)} FLOPs.")
    text = " ".join(bits).rstrip(",") + ("" if bits[-1].endswith(".") else ".")
    if s.method != "none":  # dense at a budget is a point of the frontier, not judged by it
        text = " ".join(filter(None, (text, _frontier_clause(s, frontier))))
    return text


def _static_bound(s: Summary, summaries: list[Summary]) -> Summary | None:
    """The uniform static row at DCP's p in the same suite and model: the speed bound for p."""
    p = float(s.args("dcp").get("p", 0.3))
    for c in summaries:
        a = c.args("static")
        if (c.method == "static" and (c.suite, c.dataset, c.model) == (s.suite, s.dataset, s.model)
                and not a.get("widths") and abs(float(a.get("p", 0.5)) - p) < 1e-9):
            return c
    return None


# Which target columns the sentences' verdicts read: (method table, column) → key.
_KEYS = {
    ("Learn&Drop", COLUMNS["Learn&Drop"][0]): "time",
    ("Learn&Drop", COLUMNS["Learn&Drop"][1]): "acc",
    ("DCP", COLUMNS["DCP"][0]): "flops",
    ("DCP", COLUMNS["DCP"][1]): "acc",
    ("DCP", COLUMNS["DCP"][2]): "time",
    ("Learn&Drop", COLUMNS["Learn&Drop"][3]): "frontier",
    ("DCP", COLUMNS["DCP"][7]): "frontier",
}


def _checks_by_run(checks: list[Check]) -> dict[str, dict[str, Check]]:
    out: dict[str, dict[str, Check]] = {}
    for c in checks:
        if (key := _KEYS.get((c.method, c.column))) is not None:
            out.setdefault(c.where, {})[key] = c
    return out


def story(summaries: list[Summary]) -> list[str]:
    """One Markdown bullet per row of `summaries` (one suite): the dense baselines' accuracy,
    then what each method measured, its verdicts and the numbers that explain them."""
    by_run = _checks_by_run(check_targets(summaries))
    controls = width_controls(summaries)
    frontiers = build_frontiers(summaries)
    lines = []
    for s in summaries:
        where, frontier = s.where, frontier_of(s, frontiers)
        if s.dense is s:
            text = _dense_sentence(s)
        elif s.method == "learndrop":
            text = _learndrop_sentence(s, by_run.get(where, {}), frontier)
        elif s.method == "dcp":
            control, _ = controls_of(s, controls)
            text = _dcp_sentence(s, by_run.get(where, {}), _static_bound(s, summaries), control,
                                 frontier)
        else:
            text = _other_sentence(s, frontier)
        lines.append(f"- {text}")
    if drift := drift_sentence(summaries):  # what part of the time ratios is the machine's
        lines.append(f"- {drift}")
    return lines


def _brief(s: Summary) -> str:
    """`label` (time ratio, accuracy change): the two numbers a reader weighs first."""
    control = " (a static network trained from the first step, a control)" \
        if s.method == "static" else ""
    return (f"`{s.label}`{control} at {s.time_ratio:.2f}× dense time, "
            f"{-s.accuracy_drop:+.2f} points")


def _frontier_verdicts(timed: list[Summary], frontier: Frontier | None) -> str:
    """Which of the faster-than-dense runs beat dense trained for the same time."""
    faster = [s for s in timed if s.time_ratio < 1]
    if frontier is None:
        return ("No dense frontier was measured here (dense for fewer epochs, or a smaller "
                "network), so these times are not judged against simply training dense for "
                "less time.")
    placed = [(s, d) for s in faster if (d := frontier.distance(s, "time")) is not None]
    above = [f"`{s.label}` {d:+.2f}" for s, d in placed if d >= 0]
    below = [f"`{s.label}` {d:+.2f}" for s, d in placed if d < 0]
    unplaced = [f"`{s.label}`" for s in faster if all(s is not t for t, _ in placed)]
    bits = ["Against dense trained for the same time (the dense frontier; points of top-1):"]
    bits.append(f"above it {', '.join(above)};" if above else "none lies above it;")
    if below:
        bits.append(f"below it {', '.join(below)}.")
    if unplaced:
        bits.append(f"Faster than every dense run of the frontier, not placed: "
                    f"{', '.join(unplaced)}.")
    return " ".join(bits).rstrip(";") + ("" if bits[-1].endswith(".") else ".")


def headline(summaries: list[Summary]) -> list[str]:
    """The story in one bullet per (data set, model) of one suite: which methods halved the
    training time (the Learn&Drop paper's claim), the fastest one and its accuracy, the fastest
    Learn&Drop run within the paper's accuracy range, and which stayed within `HELD_POINTS` of
    dense; times from quiet runs only."""
    groups: dict[tuple[str, str], list[Summary]] = {}
    for s in summaries:
        if s.method != "none" and s.dense is not None:
            groups.setdefault((s.dataset, s.model), []).append(s)
    frontiers = build_frontiers(summaries)
    lines = []
    for (dataset, model), runs in groups.items():
        timed = sorted((s for s in runs
                        if s.time_ratio is not None and s.accuracy_drop is not None),
                       key=lambda s: s.time_ratio)
        if not timed:
            continue
        dense = timed[0].dense
        epochs = dense.train.get("epochs")
        counts = sorted({s.n for s in runs} | {dense.n})
        seeds = (f"{counts[0]} seed{'s' if counts[0] > 1 else ''} per row" if len(counts) == 1
                 else f"{counts[0]}–{counts[-1]} seeds per row")
        parts = [f"**{dataset} / {model}** ({epochs} epochs, {seeds}; dense "
                 f"{dense.mean('acc'):.2f}%):"]
        if timed[0].time_ratio >= 1:
            # "The fastest" would flatter a run slower than dense; name every run once instead.
            parts.append("no method trained faster than dense: " + "; ".join(map(_brief, timed))
                         + ".")
            lines.append("- " + " ".join(parts))
            continue
        halved = [s for s in timed if s.time_ratio <= TARGETS.ld_max_time_ratio]
        if halved:
            parts.append("halved the training time: " + "; ".join(map(_brief, halved)) + ".")
        else:
            parts.append(f"no method halved the training time; the fastest was "
                         f"{_brief(timed[0])}.")
        # The trade the Learn&Drop paper claims: its fastest run inside the paper's accuracy
        # range, when that is neither the fastest overall nor among those that halved the time.
        ld_range = TARGETS.ld_max_drop[ld_family(model)]
        in_range = [s for s in timed if s.method == "learndrop" and s.accuracy_drop <= ld_range]
        if in_range and in_range[0] is not timed[0] and in_range[0] not in halved:
            parts.append(f"Fastest Learn&Drop run within the paper's {ld_range:g} points: "
                         f"{_brief(in_range[0])}.")
        held = [s for s in timed if s.accuracy_drop <= HELD_POINTS]
        if held:
            parts.append(f"Within {HELD_POINTS:g} point of dense accuracy: "
                         + "; ".join(map(_brief, held)) + ".")
        else:
            parts.append(f"None stayed within {HELD_POINTS:g} point of dense accuracy.")
        # No speed-up without the frontier: dense trained for the same time is the bar.
        parts.append(_frontier_verdicts(timed, frontier_of(timed[0], frontiers)))
        lines.append("- " + " ".join(parts))
    return lines
