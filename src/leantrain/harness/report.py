"""`leantrain report RESULTS… --out DIR`: tables and plots generated from benchmark result rows.

Rows (one per run, written by `leantrain.harness.bench`, read by `leantrain.harness.rows`) are
grouped by (suite, data set, model, recipe, method label) into `leantrain.harness.summary`'s
summaries. Each group reports accuracy mean ± std over seeds, training time (train + surgery
laps; evaluation excluded), the speed-up against the dense rows of the *same* results file, data
set, model, recipe and machine, cumulative forward and training FLOPs reductions, the final
architecture's MACs reduction, parameters and peak memory. This module writes them: Markdown
tables, documents and plots.

Environments: rows with the same device kind, core count and torch version form one section;
accuracy and FLOPs pool over its seeds whatever CPU or GPU model ran them (they do not depend on
it). Times never cross machines: a suite spread over sessions may land on different machines,
so each run's time is divided by the mean dense time *on its own machine* (CPU/GPU model,
cores, torch) and a method's ratio is the mean of those ratios. Every number in the Markdown it
writes, including ``BENCHMARKS.md`` and the README's results block, comes from the rows: nothing
is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..config import TrainConfig
from ..runs.config import TRAIN_DIGEST_NEUTRAL, method_args_without_neutral, without_neutral
from ..runs.env import hardware_name
from ..runs.machine_share import QUIET_CPU_SHARE, QUIET_OTHER_LOAD, QUIET_WAIT_SHARE
from .frontier import Frontier, Point, build_frontiers, frontier_of
from .pace import infer_dense_times, inferred_dense_sentence, pace_table
from .plots import plot_flops_curves, plot_pareto, slug
from .rows import (
    by_environment,
    check_environment,
    hardware_names,
    load_rows,
    run_counts,
    section_key,
)
from .compile_table import compile_section, load_compile_rows
from .story import headline, story
from .summary import Summary, recipe_key, row_value, summarize
from .targets import TARGETS, check_targets, targets_tables

# Summary, load_rows, check_environment and summarize live in `summary` and `rows`; they are
# named here too because `leantrain.harness.report` is where callers have always found them.
__all__ = [
    "Summary",
    "load_rows",
    "check_environment",
    "summarize",
    "markdown_table",
    "write_report",
    "replace_between_markers",
]

START, END = "<!-- results:start -->", "<!-- results:end -->"
TIME_NOTE = (
    "Train time = the `train` + `surgery` laps of `fit()` (forward, backward, optimizer "
    "step, the method's hooks and every cut, device-synchronised); evaluation, data "
    "loading and FLOP counting are excluded. Speed-ups use only runs that had the machine to "
    "themselves (`leantrain.runs.machine_share`, judged for every epoch: its threads waited for a "
    f"core at most {QUIET_WAIT_SHARE:.0%} of the time, or where that is not recorded used ≥ "
    f"{QUIET_CPU_SHARE:.0%} of wall time × threads, and at most {QUIET_OTHER_LOAD:g} of a core "
    "of other load was running at the epoch's end); a time marked *shared* was taken beside "
    "other work and gives no ratio."
)
DATA_NOTES = {
    "cifar10": "CIFAR-10 here is a copy rebuilt from JPEG (quality 75) images: real CIFAR-10 "
    "images, slightly blurred, so accuracies differ a little from published ones "
    "(see the data folder's README).",
    "imagenette": "Imagenette is the imagenette2 split re-encoded at 64×64 px JPEG.",
    "mnist": "MNIST is bit-identical to the official files.",
}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _acc(s: Summary) -> str:
    mean, std = s.mean("acc"), s.std("acc")
    if mean is None:
        return "–"
    return (
        f"{mean:.2f} ± {std:.2f} (n={s.n})" if std is not None else f"{mean:.2f} (n=1, single seed)"
    )


def _memory(s: Summary) -> str:
    peak, growth = s.mean("peak_rss_mb"), s.mean("rss_growth_mb")
    return _fmt(peak, ",.0f") + ("" if growth is None else f" (+{growth:,.0f})")


def _activations(s: Summary) -> str:
    peak, mean = s.mean("peak_activation_mb"), s.mean("mean_activation_mb")
    return "–" if peak is None else f"{peak:,.0f} / {_fmt(mean, ',.0f')}"


def _pct(value: float | None) -> str:
    return _fmt(None if value is None else 100 * value, ".1f", "%")


def _frontier_cell(s: Summary, frontiers: dict[Any, Frontier], both: bool) -> str:
    """Top-1 points above (+) or below (−) the dense frontier at the row's own time, and with
    `both` at its own training FLOPs; "·" for the frontier's own dense rows."""
    frontier = frontier_of(s, frontiers)
    if frontier is None:
        return "–"
    if s.method == "none":
        return "·"
    cells = []
    for axis in ("time", "flops") if both else ("time",):
        distance = frontier.distance(s, axis)
        if distance is not None:
            cells.append(f"{distance:+.2f}")
        elif (s.time_ratio if axis == "time" else s.mean("train_flops")) is not None:
            cells.append("faster than all" if axis == "time" else "cheaper than all")
        else:
            cells.append("–")
    return " / ".join(cells)


def markdown_table(summaries: list[Summary], headline: bool = False) -> str:
    """A Markdown table of `summaries`; ``headline`` keeps the README's columns only."""
    frontiers = build_frontiers(summaries)
    cols = [
        "Data set",
        "Model",
        "Method",
        "Top-1 % (mean ± std, n)",
        "Train time (s)",
        "Speed-up vs dense",
        "Train FLOPs cut",
        "Final MACs cut",
    ]
    if frontiers:  # top-1 vs dense trained for the same time or FLOPs (`harness.frontier`)
        cols.append("vs dense frontier, same time" if headline
                    else "vs dense frontier, same time / same FLOPs")
    cuda = not headline and any(s.mean("cuda_max_allocated_mb") is not None for s in summaries)
    if not headline:
        cols.insert(6, "Fwd FLOPs cut (R_cum)")
        cols += ["Train TFLOPs", "Final params", "Activations MiB (peak / mean)",
                 "Peak RSS MiB (+ in training)"] + (
            ["Peak CUDA (MiB)"] if cuda else []
        )
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(cols) - 3)) + "|",
    ]
    # Seconds on different machines are different units: when the table spans several, each
    # cell gives the mean time per machine, lettered, and a legend follows the table.
    hardware = hardware_names([r for s in summaries for r in s.rows])
    letters = {hw: chr(ord("A") + i) for i, hw in enumerate(hardware)} if len(hardware) > 1 else {}
    for s in summaries:
        speed = s.speedup
        cells = [
            s.dataset,
            s.model,
            s.label,
            _acc(s),
            _time_cell(s, letters) + (f" ({s.contended} shared)" if s.contended else ""),
            ("1.00×" if s.dense is s and s.n > s.contended
             else _fmt(speed, ".2f", "×") if speed is not None or not s.contended
             else "– (shared machine)"),
            _pct(s.mean("r_train")),
            _pct(s.mean("r_final")),
        ]
        if frontiers:
            cells.append(_frontier_cell(s, frontiers, both=not headline))
        if not headline:
            cells.insert(6, _pct(s.mean("r_cum")))
            train_flops = s.mean("train_flops")
            params = s.mean("final_params")
            cells += [
                _fmt(None if train_flops is None else train_flops / 1e12, ".2f"),
                _fmt(params, ",.0f"),
                _activations(s),
                _memory(s),
            ]
            if cuda:
                cells.append(_fmt(s.mean("cuda_max_allocated_mb"), ",.0f"))
        lines.append("| " + " | ".join(cells) + " |")
    if letters:
        lines += ["", "Train time per machine: " + "; ".join(
            f"({letter}) {hw}" for hw, letter in letters.items()
        ) + ". Each run's time is divided by dense's on its own machine; the speed-up is the "
            "inverse of the mean of those ratios."]
    return "\n".join(lines)


def _frontier_intro(frontier: Frontier, explained: bool) -> str:
    """The sentence before a frontier's table: which model, data and recipe, and, the first
    time in a document (`explained` False), what the frontier is and how a row is placed on
    it. Said once: the report has a frontier for every (suite, data set, model) that has one."""
    ref = frontier.reference
    train = ref.train
    recipe = (f"data in {train['stream']} chunks × {train.get('epochs')} epochs"
              if int(train.get("stream", 1)) > 1 else f"{train.get('epochs')} epochs")
    head = f"Dense frontier of {ref.model} on {ref.dataset} ({recipe})"
    if explained:
        return f"{head}; how it is built and read: the first dense frontier above."
    return (
        f"{head} (`leantrain.harness.frontier`): every dense run of this suite on the same "
        "data and training recipe, shorter (`budget`: fewer epochs, the schedule "
        "compressed into them) or another network. A method's *vs dense frontier* "
        "is its top-1 minus the frontier's at its own time (or training FLOPs), "
        "linear between the points of the upper concave envelope (★ on time, ◆ on "
        "FLOPs; a point under the line between two others is not on it, so no run "
        "added can lower the frontier); a method faster than every point is not "
        "placed. A shorter run of the model itself stands at the share of dense's "
        "time its epochs take (its time at dense's pace, as in the pace check "
        "below): every epoch of it is dense's work, so the point does not move with "
        "the machine's speed between sessions and needs no dense run on its own "
        "machine; the ratio measured against dense on the same machine is given "
        "beside it where there is one.")


def frontier_table(frontier: Frontier) -> str:
    """The dense points a model's methods are judged against: each network and budget, its
    accuracy, time and FLOPs, and whether it lies on the envelope (★ time, ◆ FLOPs)."""
    ref = frontier.reference
    on_time = {id(p) for p in frontier.envelope("time")}
    on_flops = {id(p) for p in frontier.envelope("flops")}
    lines = [
        "| Dense run | Epochs | Schedule | Top-1 % (mean ± std, n) | Time ÷ "
        f"{ref.model} dense | Train TFLOPs | On the frontier |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for p in sorted(frontier.points, key=lambda p: (p.time_ratio is None, p.time_ratio or 0.0,
                                                    p.tflops or 0.0)):
        epochs, schedule = _epochs_and_schedule(p)
        marks = ("★" if id(p) in on_time else "") + ("◆" if id(p) in on_flops else "")
        lines.append(
            f"| {p.name(ref.model)} | {epochs} | {schedule} | "
            f"{_acc(p.summary)} | {_fmt(p.time_ratio, '.2f', '×')}"
            f"{_measured_beside(p)} | "
            f"{_fmt(p.tflops, '.1f')} | {marks or '–'} |"
        )
    return "\n".join(lines)


def _epochs_and_schedule(p: Point) -> tuple[int, str]:
    """The epochs a frontier point trained (its budget of the recipe's) and its LR schedule."""
    train = p.summary.train
    epochs = TrainConfig(epochs=int(train.get("epochs", 1)), budget=p.summary.budget).run_epochs
    return epochs, str(train.get("schedule", "–"))


def schedule_comparison(frontier: Frontier) -> str | None:
    """Where the model itself ran at one budget under more than one learning-rate schedule
    (Li et al.'s question, arXiv 1905.04753: which decaying schedule makes a shortened run
    strongest), each schedule's top-1 side by side and the stronger named; None where none did."""
    ref = frontier.reference
    by_epochs: dict[int, list[tuple[str, Summary]]] = {}
    for p in frontier.points:
        if p.summary.model != ref.model or p.acc is None:
            continue
        epochs, schedule = _epochs_and_schedule(p)
        by_epochs.setdefault(epochs, []).append((schedule, p.summary))
    sentences = []
    for epochs, runs in sorted(by_epochs.items()):
        if len({schedule for schedule, _ in runs}) < 2:
            continue
        runs.sort(key=lambda run: -(run[1].mean("acc") or 0.0))
        best = runs[0]
        second = next(run for run in runs if run[0] != best[0])  # the best other schedule
        gap = (best[1].mean("acc") or 0.0) - (second[1].mean("acc") or 0.0)
        sentences.append(
            f"at {epochs} epochs, " + ", ".join(f"{schedule} {_acc(s)}" for schedule, s in runs)
            + f": {best[0]} is {gap:.2f} points stronger")
    if not sentences:
        return None
    return ("Schedules compared at the same budget (the frontier takes the stronger point): "
            + "; ".join(sentences) + ".")


def _without_schedule(s: Summary) -> str:
    """What `s`'s runs trained apart from the learning-rate schedule and the seed: the method,
    its settings and every other training setting, neutral ones left out as the run's identity
    leaves them (`RunConfig.digest`), so rows recorded before a setting existed still pair."""
    config = s.rows[0].get("config", {}) if s.rows else {}
    train = without_neutral({k: v for k, v in (config.get("train") or {}).items()
                             if k != "schedule"}, TRAIN_DIGEST_NEUTRAL)
    method_args = method_args_without_neutral(config.get("method_args") or {})
    return json.dumps({"method": config.get("method"), "method_args": method_args,
                       "train": train}, sort_keys=True)


def method_schedule_table(frontier: Frontier, summaries: Sequence[Summary]) -> str | None:
    """A method trained with the same settings under more than one learning-rate schedule (the
    recipe's, and e.g. Li et al.'s linear decay to zero, arXiv 1905.04753), its rows side by
    side: top-1, time and training FLOPs against the model's dense, and the distance to the
    dense frontier on each axis. None where no method ran under two schedules."""
    ref = frontier.reference
    frontiers = {(ref.suite, ref.dataset, ref.model, ref.recipe): frontier}
    groups: dict[str, list[Summary]] = {}
    for s in summaries:
        if s.method != "none" and s.rows and frontier_of(s, frontiers) is frontier:
            groups.setdefault(_without_schedule(s), []).append(s)
    paired = [g for g in groups.values() if len({str(s.train.get("schedule")) for s in g}) > 1]
    if not paired:
        return None
    lines = ["| Method | Schedule | Top-1 % (mean ± std, n) | Time ÷ dense | Train TFLOPs | "
             "vs dense frontier (time / FLOPs) |",
             "|---|---|---:|---:|---:|---:|"]
    for group in paired:
        # the recipe's own schedule first: the "before" of the comparison
        group.sort(key=lambda s: (s.train.get("schedule") != ref.train.get("schedule"), s.label))
        for s in group:
            flops = s.mean("train_flops")
            lines.append(
                f"| {s.label} | {s.train.get('schedule', '–')} | {_acc(s)} | "
                f"{_fmt(s.time_ratio, '.2f', '×')} | "
                f"{_fmt(None if flops is None else flops / 1e12, '.1f')} | "
                f"{_frontier_cell(s, frontiers, both=True)} |")
    return "\n".join(lines)


def _measured_beside(p: Point) -> str:
    """The ratio measured against dense on the same machine, beside a point placed at dense's
    pace (`leantrain.harness.frontier._placed`)."""
    if p.measured is not None:
        return f" (measured {p.measured:.2f}×)"
    if p.at_pace:
        return " (no dense timed on its machine)"
    return ""


def stream_table(summaries: list[Summary]) -> str | None:
    """Runs whose data arrived in chunks (`TrainConfig.stream`): top-1 after each chunk, the
    training time each chunk took, and the whole stream's time against dense's on the same
    stream (mean over seeds). None when no run streamed."""
    streamed = [s for s in summaries if any(r.get("stream") for r in s.rows)]
    if not streamed:
        return None
    chunks = max(len(r["stream"]) for s in streamed for r in s.rows if r.get("stream"))
    lines = [
        "| Model | Method | Seeds | " + " | ".join(f"Top-1 % after chunk {k + 1}"
                                                 for k in range(chunks))
        + " | Train s per chunk | Whole stream vs dense |",
        "|---|---|---:|" + "---:|" * chunks + "---|---:|",
    ]
    for s in streamed:
        rows = [r["stream"] for r in s.rows if r.get("stream")]
        accs, times = [], []
        for k in range(chunks):
            at = [row[k] for row in rows if len(row) > k]
            accs.append(_fmt(statistics.fmean(100 * c["test_acc"] for c in at), ".2f")
                        if at else "–")
            spent = [row[k]["train_s"] - (row[k - 1]["train_s"] if k else 0.0)
                     for row in rows if len(row) > k]
            times.append(f"{statistics.fmean(spent):.0f}" if spent else "–")
        ratio = s.time_ratio
        lines.append(f"| {s.model} | {s.label} | {len(rows)} | " + " | ".join(accs)
                     + f" | {' / '.join(times)} | {_fmt(ratio, '.2f', '×')} |")
    return "\n".join(lines)


def _time_cell(s: Summary, letters: dict[str, str]) -> str:
    """Mean training time; per machine (lettered) when the table spans several."""
    if not letters:
        return _fmt(s.mean("time_s"), ".1f")
    times: dict[str, list[float]] = {}
    for r in s.rows:
        if (v := row_value(r, "time_s")) is not None:
            times.setdefault(str(hardware_name(r.get("env", {}))), []).append(v)
    cells = [f"{statistics.fmean(v):.1f} ({letters[hw]})" for hw, v in times.items()]
    return ", ".join(cells) or "–"


# ------------------------------------------------------------------------ documents


def _settings(rows: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    counts = run_counts(rows)
    if len(counts) > 1:  # a suite spread over sessions that landed on different machines
        hw = "; ".join(f"{name} ({n} run{'s' if n > 1 else ''})" for name, n in counts.items())
    else:
        hw = next(iter(counts))
    commits = sorted({str(r.get("env", {}).get("git_commit")) for r in rows} - {"None"})
    out = [
        f"- **Hardware:** {hw} ({env.get('device')}, {env.get('cores')} cores, "
        f"{env.get('threads')} torch threads)",
        f"- **Software:** torch {env.get('torch')}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f", Python {env.get('python')}"
        + (f"; leantrain commit {', '.join(commits)}" if commits else ""),
        f"- **Time:** {TIME_NOTE} Speed-up = dense time / method time, against the dense rows "
        "of the same suite, machine, data set, model and recipe; where a method's runs ran on "
        "several machines (a suite spread over sessions), each run's time is divided by dense's "
        "on its own machine and the speed-up is the inverse of the mean ratio. Accuracy and "
        "FLOPs pool over machines.",
        "- **FLOPs:** measured with `torch.utils.flop_counter` (2 FLOPs per MAC) and integrated "
        "over the live network; *cut* = 1 − method / dense (R_cum: forward FLOPs over training; "
        "train: forward + backward; final MACs: the architecture handed back).",
        "- **Memory:** *activations* are the tensors a training step saves for backward (each "
        "storage once, parameters excluded; counted with autograd's saved-tensor hooks), the "
        "part of training memory that dropping layers and slicing channels cut, independent of "
        "the allocator: the largest step (peak) and the average step (mean). Methods that start "
        "dense (warm-up) have dense's peak; their saving shows in the mean. *Peak RSS* is the "
        "peak resident set size of the run's process during training (on Linux the high-water "
        "mark is reset when training starts, so data loading does not count); it "
        "includes the interpreter, torch, the model and the data tensors; (+ …) is what training "
        "added on top of what was resident when it began; it also holds the allocator's cached "
        "blocks, which grow when tensor shapes change every step (DCP). On GPU also the peak "
        "allocated CUDA memory.",
    ]
    for name in sorted({r["dataset"] for r in rows}):
        if name in DATA_NOTES:
            out.append(f"- **Data:** {DATA_NOTES[name]}")
    return out


def _machine_time(rows: list[dict[str, Any]]) -> str:
    """What the suite's runs cost in machine time: each run's training, surgery, evaluation and
    checkpoint laps (carried across resumes, so a run spread over sessions counts whole), summed."""
    laps = ("train_s", "surgery_s", "eval_s", "checkpoint_s")
    total = sum(float(r.get(k) or 0.0) for r in rows for k in laps)
    runs = "1 run" if len(rows) == 1 else f"{len(rows)} runs"
    return (f"Machine time: {total / 3600:.1f} h over {runs} (training, evaluation and "
            "checkpoint time; data loading and start-up not counted).")


def _recipes(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Data set | Model | Train / test images | Epochs | Batch | LR (schedule, warm-up) "
        "| Weight decay | Seeds |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    seen: dict[tuple[str, str, str], set[int]] = {}
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["dataset"], r["model"], recipe_key(r))
        seen.setdefault(key, set()).add(r.get("seed", 0))
        first.setdefault(key, r)
    for key, r in first.items():
        t = r.get("config", {}).get("train", {})
        lines.append(
            f"| {key[0]} | {key[1]} | {r.get('train_images', '–')} / {r.get('test_images', '–')} | "
            f"{t.get('epochs')} | {t.get('batch_size')} | {t.get('lr')} ({t.get('schedule')}, "
            f"{t.get('warmup')}) | {t.get('weight_decay')} | "
            f"{', '.join(map(str, sorted(seen[key])))} |"
        )
    return "\n".join(lines)


def _readme_block(summaries: list[Summary], suites: list[str], chosen: Sequence[str] | None,
                  out_dir: Path, readme: Path) -> str:
    """The README's results: the first suite's table and its story in words, then each further
    suite's table, each with its machine and the command that reproduces it."""
    default = [n for n in TARGETS.readme_suites if n in suites] or suites[:1]
    names = list(chosen) if chosen else default
    missing = [n for n in names if n not in suites]
    if missing:
        raise ValueError(
            f"no results of suite {missing[0]!r} for the README; have: {', '.join(suites)}."
        )
    parts: list[str] = []
    files: list[str] = []
    for i, name in enumerate(names):
        mine = [s for s in summaries if s.suite == name]
        env = mine[0].rows[0].get("env", {})
        section = section_key(mine[0].rows[0])  # CPU and GPU rows stay apart
        mine = [s for s in mine if section_key(s.rows[0]) == section]
        hardware = hardware_names([r for s in mine for r in s.rows])
        several = len(hardware) > 1
        seeds = sorted({r.get("seed", 0) for s in mine for r in s.rows})
        files += sorted({Path(r["_file"]).as_posix() for s in mine for r in s.rows})
        title = (f"**{TARGETS.suite_titles[name]}.** "
                 if i > 0 and name in TARGETS.suite_titles else "")
        parts += [
            f"{title}Suite `{name}` on {' and '.join(hardware)} ({env.get('cores')} cores"
            f"{' each' if several else ''}), torch {env.get('torch')}, "
            f"seeds {', '.join(map(str, seeds))}."
            + (" Times are compared only within one machine: each run's against dense's on the "
               "same machine" + (
                   " (where dense never trained its full length on a machine, its time there "
                   "inferred from its shorter runs on it: `leantrain.harness.pace."
                   "infer_dense_times`)." if any(s.inferred_times for s in mine) else ".")
               if several else "")
            + (f" {TIME_NOTE}" if i == 0 else ""),
            "",
        ]
        if i == 0 and name in TARGETS.story_suites and (short := headline(mine)):
            parts += ["In short (generated from the rows below):", "", *short, ""]
        parts += [markdown_table(mine, headline=True), ""]
        if i == 0 and name in TARGETS.story_suites:
            parts += ["What these rows say (sentences generated from the same rows):", "",
                      *story(mine), ""]
    benches = " && ".join(f"leantrain bench {n}" for n in names)
    chosen_flags = "".join(f" --readme-suite {n}" for n in names) if chosen else ""
    parts += [
        "Reproduce (data sets under `$LEANTRAIN_DATA`; this block is written back here):",
        "",
        f"    {benches} && leantrain report {' '.join(dict.fromkeys(files))} "
        f"--out {out_dir.as_posix()} --readme {readme.as_posix()}{chosen_flags}",
    ]
    return "\n".join(parts)


def replace_between_markers(text: str, block: str) -> str:
    """Replace what lies between the README's results markers with `block`."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"the README has no `{START}` … `{END}` block to fill; add both markers.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def write_report(
    paths: list[str | Path],
    out_dir: str | Path,
    benchmarks: str | Path | None = None,
    readme: str | Path | None = None,
    readme_suites: Sequence[str] | None = None,
    compile_rows: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Write ``report.md`` and plots into `out_dir`; optionally BENCHMARKS.md and the README block.

    `compile_rows`: ``benchmarks/compile_cost.py`` result files (or folders of them), rendered
    as the documents' torch.compile section.

    Returns:
        ``{"summaries", "markdown", "images"}``.
    """
    rows = load_rows(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted({Path(r["_file"]).as_posix() for r in rows})
    command = f"leantrain report {' '.join(files)} --out {Path(out_dir).as_posix()}"
    # One section per environment: times are compared only within one machine and torch.
    sections = []
    for env, env_rows in by_environment(rows):
        summaries = summarize(env_rows)
        infer_dense_times(summaries)  # before anything reads a time ratio
        pareto = plot_pareto(summaries, out)
        order = {p.name.removesuffix("-pareto.png"): i for i, p in enumerate(pareto)}
        images = sorted(  # each (data set, model): its Pareto plot, then its FLOPs curves
            pareto + plot_flops_curves(summaries, out),
            key=lambda p: (
                order.get(p.name.rsplit("-", 1)[0], len(order)),
                p.name.endswith("flops.png"),
            ),
        )
        sections.append((env, env_rows, summaries, images, check_targets(summaries)))
    all_summaries = [s for section in sections for s in section[2]]
    all_images = [p for section in sections for p in section[3]]
    suites = list(dict.fromkeys(s.suite for s in all_summaries))

    def section_parts(base: Path, env: dict[str, Any], rows: list[dict[str, Any]],
                      summaries: list[Summary], images: list[Path], checks: Any, level: str,
                      explained: set[str]) -> list[str]:
        """One environment's part of a document. `explained`: what the document has already
        said how to read (a dense frontier and a pace check are explained before the first of
        each only)."""
        parts = [f"{level} Settings", "", *_settings(rows, env), ""]
        if checks:
            parts += [
                f"{level} Targets",
                "",
                "The papers' claims and our acceptance bars, checked against the rows below at "
                "this machine's scale (`leantrain.harness.targets` cites where each target comes "
                "from). ✓ met, **✗** missed, no mark: not judged (a time target only the paper's "
                "ResNets carry, one seed where noise must be estimated, or a time share of a "
                f"training-FLOPs cut under {100 * TARGETS.min_judged_flops_saving:.0f}%, "
                "within the timing noise). The DCP table's "
                "*Control* and *Bound* columns are context, never judged: `static` rows trained "
                "densely from the first step at a DCP run's final widths (the same architecture "
                "from scratch: its accuracy drop) and at those widths rounded up to DCP's "
                "`compute_multiple` (the network DCP's slice mode computes: the fastest any "
                "per-step selection of those widths could train here).",
                "",
            ]
            for method, table in targets_tables(checks).items():
                parts += [f"{level}# {method}", "", table, ""]
        for suite in dict.fromkeys(s.suite for s in summaries):
            mine = [s for s in summaries if s.suite == suite]
            suite_rows = [r for s in mine for r in s.rows]
            parts += [
                f"{level} Suite `{suite}`",
                "",
                _machine_time(suite_rows),
                "",
                *([inferred, ""] if (inferred := inferred_dense_sentence(mine)) else []),
                "Recipes:",
                "",
                _recipes(suite_rows),
                "",
                markdown_table(mine),
                "",
            ]
            for frontier in build_frontiers(mine).values():
                ref = frontier.reference
                parts += [
                    _frontier_intro(frontier, explained="frontier" in explained),
                    "",
                    frontier_table(frontier),
                    "",
                ]
                explained.add("frontier")
                if schedules := schedule_comparison(frontier):
                    parts += [schedules, ""]
                if paired := method_schedule_table(frontier, mine):
                    parts += [
                        f"Methods on {ref.model} trained with the same settings under more than "
                        "one learning-rate schedule, side by side (the recipe's first: before "
                        "and after):",
                        "",
                        paired,
                        "",
                    ]
            if streams := stream_table(mine):
                parts += [
                    "Data that arrive in sequence (`train.stream`): the training split came in "
                    "equal chunks, each trained for the recipe's epochs with its own schedule "
                    "and then evaluated; the methods' state spans the stream. Top-1 after each "
                    "chunk, the training seconds each chunk took (mean over seeds), and the whole "
                    "stream's time against dense on the same stream and machine.",
                    "",
                    streams,
                    "",
                ]
            if pace := pace_table(mine):
                parts += [
                    "Pace check (`leantrain.harness.pace`); how it is read: the first pace "
                    "check above." if "pace" in explained else
                    "Pace check (`leantrain.harness.pace`): a run's epochs that did exactly "
                    "dense's work (the same training FLOPs, e.g. Learn&Drop before its first "
                    "removal) against dense's time for the same epochs on the same machine. "
                    "1.00× is expected; a different pace is the machine's speed moving between "
                    "the two runs, and the run's time ratio above carries it. *At dense's pace* "
                    "divides the run's time ratio by its pace: what the ratio would be had the "
                    "machine kept the speed it had for dense (an estimate: it assumes the pace "
                    "of the early epochs held for the whole run). On a machine dense never "
                    "trained its full length on, dense's time for those epochs is its inferred "
                    "time there × their share of dense's time, so *at dense's pace* is the "
                    "run's time against dense's as the run itself measured it, the same day.",
                    "",
                    pace,
                    "",
                ]
                explained.add("pace")
            parts += [
                f"![{p.stem}]({_rel(p, base)})"
                for p in images
                if p.name.startswith(slug(suite) + "-")
            ]
            parts.append("")
        return parts

    compile_lines = compile_section(load_compile_rows(list(compile_rows)))
    if compile_rows:
        command += " --compile-rows " + " ".join(Path(p).as_posix() for p in compile_rows)

    def document(base: Path, title: str, command: str) -> str:
        parts = [f"# {title}", "", f"<!-- generated by `{command}`; do not edit by hand -->", ""]
        explained: set[str] = set()
        if len(sections) == 1:
            env, env_rows, summaries, images, checks = sections[0]
            return "\n".join(parts + section_parts(base, env, env_rows, summaries, images, checks,
                                                  "##", explained)
                             + compile_lines)
        parts += [
            "These results come from several environments (device kind, cores, torch version); "
            "each has its own section, and no time is compared across machines.",
            "",
        ]
        for env, env_rows, summaries, images, checks in sections:
            hw = " and ".join(hardware_names(env_rows))
            names = ", ".join(f"`{n}`" for n in dict.fromkeys(s.suite for s in summaries))
            parts += [f"## On {hw}, torch {env.get('torch')}: {names}", ""]
            parts += section_parts(base, env, env_rows, summaries, images, checks, "###",
                                   explained)
        return "\n".join(parts + compile_lines)

    markdown = document(out, "Benchmark report", command)
    write_atomic(out / "report.md", markdown)
    if benchmarks:
        bpath = Path(benchmarks)
        write_atomic(
            bpath,
            document(bpath.parent, "Benchmarks", f"{command} --write-benchmarks {bpath.as_posix()}"),
        )
    if readme:
        block = _readme_block(all_summaries, suites, readme_suites, Path(out_dir), Path(readme))
        rpath = Path(readme)
        write_atomic(rpath, replace_between_markers(rpath.read_text(), block))
    return {"summaries": all_summaries, "markdown": markdown, "images": all_images}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``report`` subcommand's arguments."""
    p = sub.add_parser(
        "report",
        help="tables and plots from benchmark results",
        description="Aggregate benchmark results (one environment) into Markdown tables and plots.",
    )
    p.add_argument("results", nargs="+", help="results .jsonl files (or folders of them)")
    p.add_argument("--out", required=True, help="folder for report.md and the PNG plots")
    p.add_argument(
        "--write-benchmarks",
        metavar="BENCHMARKS_MD",
        help="also write this BENCHMARKS.md (settings, tables, plots)",
    )
    p.add_argument("--readme", help="fill the README's results block (between the markers)")
    p.add_argument("--compile-rows", nargs="+", default=[], metavar="PATH",
                   help="benchmarks/compile_cost.py results (compile-*.jsonl files or their "
                   "folder): the torch.compile section")
    p.add_argument(
        "--readme-suite",
        action="append",
        help="suite shown in the README, repeatable: the first gets the headline and its story "
        f"(default: {', then '.join(TARGETS.readme_suites)}, where they have results; else the "
        "first suite)",
    )


def main(args: argparse.Namespace) -> int:
    """Entry of ``leantrain report``."""
    result = write_report(
        args.results,
        args.out,
        benchmarks=args.write_benchmarks,
        readme=args.readme,
        readme_suites=args.readme_suite,
        compile_rows=args.compile_rows,
    )
    print(markdown_table(result["summaries"]))
    print(f"wrote {Path(args.out) / 'report.md'} and {len(result['images'])} plot(s)")
    return 0
