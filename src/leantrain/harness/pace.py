"""The machine's own drift between runs, measured where a method did exactly dense's work.

A time ratio compares two runs taken hours apart, and on a cloud host the same work can take a
different time in each: in the `paper` suite a Learn&Drop run's epochs before its first removal,
the same FLOPs as dense's, ran 10% faster than the dense run's epochs on the same machine model,
with both runs recorded as quiet. Every epoch whose training FLOPs equal dense's (Learn&Drop
before its first removal, any method's dense warm-up) is a free calibration: its time against
dense's time for the same epochs on the same machine is 1.00 up to the method's bookkeeping;
whatever else it is, the machine's speed moved, and the run's time ratio carries that drift.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ..runs.env import hardware_name, machine_key
from ..runs.machine_share import is_quiet
from .summary import Summary, row_value

__all__ = [
    "Pace", "DRIFT", "dense_share", "infer_dense_times", "inferred_dense_sentence",
    "pace_checks", "pace_table", "drift_sentence",
]

# Epochs count as dense's work when their training FLOPs agree with dense's to 0.1%: the counts
# are exact (FlopCounterMode over the same batches), so any removal or slicing shows far above it.
_SAME_WORK = 1e-3
# Fewer epochs than this say little: one epoch's time varies by ±5% on a quiet 2-core machine.
MIN_EPOCHS = 3
# A pace further than this from 1.00 is drift worth a sentence: Learn&Drop's scoring, the only
# extra work in those epochs, cost < 0.1% (AMD seed-0 runs: 170.9 s against dense's 170.8 s).
DRIFT = 0.03


@dataclass(frozen=True)
class Pace:
    """One run's time over its epochs of dense's work / dense's time over the same epochs."""

    label: str
    seed: int
    hardware: str
    epochs: tuple[int, ...]
    ratio: float
    time_ratio: float  # the whole run's training time / dense's (`Summary.time_ratio_of`)


def _per_epoch(row: dict[str, Any], *keys: str) -> dict[int, float]:
    """Each epoch's share of the trace's cumulative `keys` (summed), by epoch number."""
    out: dict[int, float] = {}
    previous = 0.0
    for e in (row.get("trace") or {}).get("epochs") or []:
        if any(e.get(k) is None for k in keys):
            return {}
        total = sum(float(e[k]) for k in keys)
        out[int(e["epoch"])] = total - previous
        previous = total
    return out


def _epoch_time(row: dict[str, Any]) -> dict[int, float]:
    return _per_epoch(row, "train_s", "surgery_s")  # the report's training time, per epoch


def _same_work(flops: dict[int, float], dense_flops: dict[int, float], epoch: int) -> bool:
    """Whether a run's `epoch` did dense's training FLOPs for that epoch (to `_SAME_WORK`)."""
    return bool(dense_flops.get(epoch)) and (
        abs(flops.get(epoch, 0.0) / dense_flops[epoch] - 1) <= _SAME_WORK)


def _checkable(s: Summary) -> bool:
    """Runs whose epochs of dense's FLOPs are dense's work and nothing else: Learn&Drop before
    its first removal (dense's network plus a score per checkpoint), and dense trained for part
    of the epochs (`budget`: every epoch is dense's, only the learning rates differ). DCP in
    mask mode also counts dense's FLOPs, but its masking is extra work, so its pace would be its
    own overhead, not the machine's drift."""
    if s.dense is None or s.dense is s or not s.dense.rows:
        return False
    # A dense row that is not the baseline trained at a budget (or with layers frozen, whose
    # lighter epochs the FLOPs comparison in `pace_checks` leaves out).
    return s.method in ("learndrop", "none")


def _epoch_shares(dense: Summary) -> dict[int, float]:
    """Each epoch's share of dense's whole training time, the mean over its quiet rows whose
    trace covers every epoch of the recipe (the shares of a machine-independent schedule of
    work: the first epoch carries warm-up and compilation, later ones do not)."""
    shares: dict[int, list[float]] = {}
    epochs = int(dense.train.get("epochs") or 0)
    for r in dense.rows:
        times = _epoch_time(r)
        if is_quiet(r.get("machine")) is False or len(times) != epochs:
            continue
        total = sum(times.values())
        for epoch, t in times.items():
            shares.setdefault(epoch, []).append(t / total)
    return {epoch: statistics.fmean(v) for epoch, v in shares.items()}


def _dense_epoch_times(dense: Summary) -> dict[tuple[Any, ...], dict[int, float]]:
    """Dense's time for each epoch on each machine: the mean over its quiet rows there, or on a
    machine it never trained its full length on, its inferred time there (`infer_dense_times`)
    × each epoch's share of it."""
    measured: dict[tuple[Any, ...], dict[int, list[float]]] = {}
    for r in dense.rows:
        if is_quiet(r.get("machine")) is not False:
            per = measured.setdefault(machine_key(r.get("env", {})), {})
            for epoch, t in _epoch_time(r).items():
                per.setdefault(epoch, []).append(t)
    out = {m: {e: statistics.fmean(v) for e, v in per.items()} for m, per in measured.items()}
    if dense.inferred_times and (shares := _epoch_shares(dense)):
        for machine, times in dense.inferred_times.items():
            if machine not in out:
                mean = statistics.fmean(times)
                out[machine] = {e: share * mean for e, share in shares.items()}
    return out


def pace_checks(s: Summary) -> list[Pace]:
    """The pace of each quiet run of `s` that did dense's exact work for ≥ `MIN_EPOCHS` epochs,
    against dense's mean time for the same epochs on the same machine (`_dense_epoch_times`).

    Where dense's time on the machine is inferred, the run's *at dense's pace* ratio is its time
    ÷ (its epochs of dense's work ÷ the share of dense's time they take): dense's time as the run
    itself measured it, the same day, free of the inferred time's spread between runs."""
    if not _checkable(s):
        return []
    dense_flops = _per_epoch(s.dense.rows[0], "train_flops")
    dense_times = _dense_epoch_times(s.dense)
    out = []
    for r in s.rows:
        dense = dense_times.get(machine_key(r.get("env", {})))
        time_ratio = s.time_ratio_of(r)  # None for a contended run or one without dense beside
        if dense is None or time_ratio is None:
            continue
        flops, times = _per_epoch(r, "train_flops"), _epoch_time(r)
        same = tuple(e for e in sorted(times) if e in dense and _same_work(flops, dense_flops, e))
        if len(same) < MIN_EPOCHS:
            continue
        ratio = sum(times[e] for e in same) / sum(dense[e] for e in same)
        out.append(Pace(s.label, int(r.get("seed", 0)), str(hardware_name(r.get("env", {}))),
                        same, ratio, time_ratio))
    return out


def dense_share(s: Summary) -> float | None:
    """The share of dense's training time that `s`'s epochs take, for a dense run of the same
    model trained for fewer epochs (`budget`), every epoch of which is dense's work: dense's
    time over those epochs ÷ its whole time, the mean over dense's quiet rows on every machine.

    That is where `pace_checks` places such a run (its time ÷ its pace; the run's own time
    cancels out), but it needs no dense run on the run's own machine: a suite spread over
    sessions on several machine models can add frontier points on any of them. None where a
    row of `s` did other work than dense's epochs (layers frozen) or dense has no trace."""
    if not _checkable(s) or s.method != "none":
        return None
    dense_flops = _per_epoch(s.dense.rows[0], "train_flops")
    epochs: set[int] = set()
    for r in s.rows:
        flops = _per_epoch(r, "train_flops")
        if not flops or not all(_same_work(flops, dense_flops, e) for e in flops):
            return None
        epochs |= set(flops)
    shares = []
    for r in s.dense.rows:
        times = _epoch_time(r)
        if is_quiet(r.get("machine")) is not False and epochs <= set(times):
            shares.append(sum(times[e] for e in epochs) / sum(times.values()))
    return statistics.fmean(shares) if shares else None


def infer_dense_times(summaries: list[Summary]) -> None:
    """Give each full-length dense row its training time on the machines it never ran on, from
    the same model's budgeted dense runs there (`Summary.inferred_times`): every epoch of such a
    run is dense's work, so its time ÷ the share of dense's time its epochs take (`dense_share`)
    is dense's time on its machine. `dense_share` already places those runs on the frontier
    without a dense beside them; this lets a method's run on the same machine get a time ratio
    too, instead of needing a full-length dense run (the `paper` suite's ResNet-32 dense took
    about 2.5 h on one machine model its runs were spread over)."""
    for s in summaries:
        ref = s.dense
        if ref is None or ref is s or (share := dense_share(s)) is None:
            continue
        measured = ref.quiet_times()
        for r in s.rows:
            machine = machine_key(r.get("env", {}))
            time = row_value(r, "time_s")
            if machine in measured or is_quiet(r.get("machine")) is False or time is None:
                continue
            ref.inferred_times.setdefault(machine, []).append(time / share)


def inferred_dense_sentence(summaries: list[Summary]) -> str | None:
    """Where a full-length dense time was inferred (`infer_dense_times`), what it is and how
    well its estimates agree; None where every machine timed dense itself."""
    names = {machine_key(r.get("env", {})): str(hardware_name(r.get("env", {})))
             for s in summaries for r in s.rows}
    parts = []
    for s in summaries:
        if s.dense is not s:
            continue
        for machine, times in s.inferred_times.items():
            mean = statistics.fmean(times)
            spread = (f"{len(times)} estimates, {min(times):,.0f}–{max(times):,.0f} s, within "
                      f"±{100 * max(abs(t / mean - 1) for t in times):.1f}% of their mean"
                      if len(times) > 1 else "1 estimate")
            parts.append(
                f"Dense `{s.model}` ({s.label}) never trained its full length on "
                f"{names.get(machine, '?')}: its time there, {mean:,.0f} s, is inferred from "
                "its runs trained for fewer epochs on that machine, each run's time ÷ the share "
                f"of dense's time its epochs take ({spread}; "
                "`leantrain.harness.pace.infer_dense_times`). The time ratios of other rows "
                "from that machine divide by it.")
    return " ".join(parts) or None


def _epoch_span(epochs: tuple[int, ...]) -> str:
    contiguous = epochs == tuple(range(epochs[0], epochs[-1] + 1))
    return f"{epochs[0]}–{epochs[-1]}" if contiguous else ", ".join(map(str, epochs))


def pace_table(summaries: list[Summary]) -> str | None:
    """Markdown table of every pace check in `summaries` (one suite), or None without any."""
    checks = [p for s in summaries for p in pace_checks(s)]
    if not checks:
        return None
    lines = [
        "| Run | Seed | Machine | Epochs of dense's work | Their time / dense's, same epochs "
        "| Run's time / dense's | The same at dense's pace |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for p in checks:
        lines.append(f"| {p.label} | {p.seed} | {p.hardware} | {_epoch_span(p.epochs)} "
                     f"| {p.ratio:.3f}× | {p.time_ratio:.2f}× | {p.time_ratio / p.ratio:.2f}× |")
    return "\n".join(lines)


def drift_sentence(summaries: list[Summary]) -> str | None:
    """One sentence naming the runs whose pace strayed more than `DRIFT` from 1.00, or None."""
    checks = [p for s in summaries for p in pace_checks(s)]
    off = [p for p in checks if abs(p.ratio - 1) > DRIFT]
    if not off:
        return None
    runs = "; ".join(
        f"`{p.label}` seed {p.seed} on {p.hardware}: {len(p.epochs)} epochs at {p.ratio:.2f}× "
        "dense's time" for p in off
    )
    within = len(checks) - len(off)
    return (
        f"**Machine drift.** Epochs in which a run did exactly dense's work (the same training "
        f"FLOPs) should take dense's time on the same machine; in {len(off)} of {len(checks)} "
        f"runs checked they did not ({runs}), so about that much of those runs' time ratios is "
        f"the machine's speed moving between runs, not the method"
        + (f"; the other {within} were within {DRIFT:.0%} of 1.00." if within else ".")
    )
