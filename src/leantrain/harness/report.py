"""`leantrain report RESULTS… --out DIR`: tables and plots generated from benchmark result rows.

Rows (one per run, written by `leantrain.harness.bench`) are grouped by (suite, data set, model,
recipe, method label). Each group reports accuracy mean ± std over seeds, training time (train + surgery
laps; evaluation excluded), the speed-up against the dense rows of the *same* results file, data
set, model, recipe and machine, cumulative forward and training FLOPs reductions, the final
architecture's MACs reduction, parameters and peak memory.

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
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..config import toml_repr
from ..machine_share import QUIET_CPU_SHARE, QUIET_OTHER_LOAD, QUIET_WAIT_SHARE, is_quiet
from ..env import hardware_name, machine_key
from .bench import read_results, recipe_digest
from .plots import plot_flops_curves, plot_pareto, slug
from .pace import pace_table
from .story import headline, story
from .targets import MIN_JUDGED_FLOPS_SAVING, check_targets, targets_tables

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
# A report section: accuracy and FLOPs pool over its machines (a seed's accuracy does not depend
# on the CPU model); device kind and torch version stay apart, as the issue of record asks CPU and
# GPU results to be reported separately.
_SECTION_FIELDS = ("device", "cores", "torch")
TIME_NOTE = (
    "Train time = the `train` + `surgery` laps of `fit()` (forward, backward, optimizer "
    "step, the method's hooks and every cut, device-synchronised); evaluation, data "
    "loading and FLOP counting are excluded. Speed-ups use only runs that had the machine to "
    "themselves (`leantrain.machine_share`, judged for every epoch: its threads waited for a "
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


@dataclass
class Summary:
    """One table row: a method on a (data set, model, recipe), aggregated over seeds."""

    suite: str
    dataset: str
    model: str
    label: str
    method: str
    recipe: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    dense: "Summary | None" = None

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def budget(self) -> float:
        """The fraction of the recipe's epochs these runs trained (`TrainConfig.budget`)."""
        return float((self.rows[0].get("config", {}).get("train") or {}).get("budget", 1.0)
                     if self.rows else 1.0)

    @property
    def is_baseline(self) -> bool:
        """Dense at the recipe's full length: what every other row's time is divided by. Dense
        at a reduced budget is a point of the dense frontier, not the baseline."""
        return self.method == "none" and self.budget == 1.0

    def mean(self, key: str) -> float | None:
        values = [v for r in self.rows if (v := _value(r, key)) is not None]
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        values = [v for r in self.rows if (v := _value(r, key)) is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def contended(self) -> int:
        """Rows whose run shared the machine with other work (`leantrain.machine_share`)."""
        return sum(is_quiet(r.get("machine")) is False for r in self.rows)

    def quiet_times(self) -> dict[tuple[Any, ...], list[float]]:
        """Training times of the rows that did not share the machine, by machine (rows from
        before the record existed count as quiet: nothing says otherwise)."""
        out: dict[tuple[Any, ...], list[float]] = {}
        for r in self.rows:
            if is_quiet(r.get("machine")) is not False and (v := _value(r, "time_s")) is not None:
                out.setdefault(machine_key(r.get("env", {})), []).append(v)
        return out

    def time_ratio_of(self, row: dict[str, Any]) -> float | None:
        """`row`'s training time / the mean quiet dense time on its machine (same file, data
        set, model and recipe); None for a time taken while other work shared the cores, or on
        a machine dense never ran on."""
        if self.dense is None or is_quiet(row.get("machine")) is False:
            return None
        dense = self.dense.quiet_times().get(machine_key(row.get("env", {})))
        time = _value(row, "time_s")
        if not dense or time is None or (mean := statistics.fmean(dense)) <= 0:
            return None
        return time / mean

    @property
    def time_ratios(self) -> list[float]:
        """`time_ratio_of` each row that has one."""
        return [r for row in self.rows if (r := self.time_ratio_of(row)) is not None]

    @property
    def time_ratio(self) -> float | None:
        """Training time as a multiple of dense's: the mean of `time_ratios` (on one machine,
        this row's mean quiet time / dense's)."""
        ratios = self.time_ratios
        return statistics.fmean(ratios) if ratios else None

    @property
    def speedup(self) -> float | None:
        """Dense time / this method's time (1 / `time_ratio`), from quiet rows only."""
        ratio = self.time_ratio
        return 1 / ratio if ratio else None


def _value(row: dict[str, Any], key: str) -> float | None:
    """A per-run quantity, derived from the row's raw fields."""

    def ratio(a: str, b: str) -> float | None:
        return 1 - row[a] / row[b] if row.get(a) is not None and row.get(b) else None

    derived = {
        "time_s": lambda: row.get("train_s", 0.0) + row.get("surgery_s", 0.0),
        "acc": lambda: 100 * row["test_acc"],
        # resident memory the training phase added on top of what was resident when it began
        "rss_growth_mb": lambda: (
            row["peak_rss_mb"] - row["rss_start_mb"]
            if row.get("peak_rss_mb") is not None and row.get("rss_start_mb") is not None
            else None
        ),
        "r_cum": lambda: ratio("forward_flops", "dense_forward_flops"),
        "r_train": lambda: ratio("train_flops", "dense_train_flops"),
        "r_final": lambda: ratio("final_macs", "dense_macs"),
    }
    value = derived[key]() if key in derived else row.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# What the report reads from a row: field → (type, required). Rows come from `leantrain bench`;
# one edited by hand or written by another version must fail with its file and field named,
# not with a traceback from deep inside the aggregation.
_NUMBER = (int, float)
_ROW_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "label": (str, True),
    "dataset": (str, True),
    "model": (str, True),
    "test_acc": (_NUMBER, True),
    "suite": (str, False),
    "seed": (int, False),
    "config": (dict, False),
    "env": (dict, False),
    "trace": (dict, False),
    **{k: (_NUMBER, False) for k in (
        "train_s", "surgery_s", "eval_s", "checkpoint_s", "forward_flops", "dense_forward_flops",
        "train_flops", "dense_train_flops", "final_macs", "dense_macs", "final_params",
        "peak_rss_mb", "rss_start_mb", "train_images", "test_images",
    )},
}
_CONFIG_TABLES = ("data", "model", "train", "method_args")
_TYPE_WORDS = {str: "a string", int: "a whole number", dict: "an object", _NUMBER: "a number"}


def _check_row(row: Any, file: Path, index: int) -> None:
    """One sentence naming the file, row and field when a row cannot be reported."""
    fix = "rerun its suite with `leantrain bench` or delete that row"
    if not isinstance(row, dict):
        raise ValueError(f"results file {file}: row {index} is {toml_repr(row)}, not a JSON "
                         f"object; {fix}.")
    for key, (tp, required) in _ROW_FIELDS.items():
        if key not in row:
            if required:
                raise ValueError(f"results file {file}: row {index} has no {key!r} field; {fix}.")
            continue
        value = row[key]
        if value is None and tp is _NUMBER and not required:
            continue  # not measured here (e.g. peak RSS where the platform cannot tell)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ValueError(f"results file {file}: row {index} has {key} = {toml_repr(value)}, "
                             f"which must be {_TYPE_WORDS[tp]}; {fix}.")
    for key in _CONFIG_TABLES:
        value = row.get("config", {}).get(key, {})
        if not isinstance(value, dict):
            raise ValueError(f"results file {file}: row {index} has config.{key} = "
                             f"{toml_repr(value)}, which must be an object; {fix}.")


def load_rows(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Rows of every results file (a folder means its ``*.jsonl``), each tagged with its file.

    Raises:
        ValueError: a row lacks a field the report needs or has one of the wrong type (the
            message names the file, the row and the field).
    """
    rows: list[dict[str, Any]] = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"results file {f} does not exist.")
            for i, r in enumerate(read_results(f), 1):
                _check_row(r, f, i)
                rows.append({**r, "_file": str(f)})
    if not rows:
        raise ValueError(
            f"no result rows in {', '.join(map(str, paths))}; run `leantrain bench` first."
        )
    return rows


def check_environment(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one environment all rows share; a clear error when they come from several."""
    groups = by_environment(rows)
    if len(groups) > 1:
        lines = [
            f"  {dict((k, env.get(k)) for k in _SECTION_FIELDS)}: "
            + ", ".join(sorted({Path(r["_file"]).name for r in group}))
            for env, group in groups
        ]
        raise ValueError(
            "these results come from different environments (device kind, cores or torch), "
            "which are reported in separate sections:\n" + "\n".join(lines)
        )
    return rows[0].get("env", {})


def by_environment(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Rows grouped into report sections (device kind, cores, torch), in order of first
    appearance; within a section, times are still compared per machine (`Summary.time_ratios`)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        env = r.get("env", {})
        groups.setdefault(_section_key(r), []).append(r)
    return [(group[0].get("env", {}), group) for group in groups.values()]


def _section_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The report section a row belongs to (`_SECTION_FIELDS` of its environment)."""
    env = row.get("env", {})
    return tuple(env.get(k) for k in _SECTION_FIELDS)


def hardware_names(rows: list[dict[str, Any]]) -> list[str]:
    """The machines (CPU or GPU model) that `rows` ran on, in order of first appearance."""
    return list(_run_counts(rows))


def _run_counts(rows: list[dict[str, Any]]) -> Counter[str]:
    """Rows per machine (CPU or GPU model), in order of first appearance."""
    return Counter(str(hardware_name(r.get("env", {}))) for r in rows)


def _recipe(row: dict[str, Any]) -> str:
    return recipe_digest(row.get("config", {}))


def summarize(rows: list[dict[str, Any]]) -> list[Summary]:
    """Group rows into `Summary`s in suite order, dense first, each linked to its dense row."""
    groups: dict[tuple[str, ...], Summary] = {}
    for r in rows:
        method = r.get("config", {}).get("method", r.get("method", "none"))
        key = (r["_file"], r["dataset"], r["model"], _recipe(r), r["label"])
        if key not in groups:
            groups[key] = Summary(
                r.get("suite", "?"),
                r["dataset"],
                r["model"],
                r["label"],
                "none" if method in ("none", "dense", "") else method,
                key[3],
            )
        groups[key].rows.append(r)
    dense: dict[tuple[str, ...], Summary] = {}
    for k, s in groups.items():  # the first full-length dense row (suites put "dense" first)
        if s.is_baseline:
            dense.setdefault(k[:4], s)
    for k, s in groups.items():
        s.dense = dense.get(k[:4])
    order = {k: i for i, k in enumerate(groups)}
    first = {}
    for k in groups:
        first.setdefault(k[:4], order[k])
    return [
        groups[k]
        for k in sorted(groups, key=lambda k: (first[k[:4]], groups[k] is not dense.get(k[:4]),
                                               order[k]))
    ]


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


def markdown_table(summaries: list[Summary], headline: bool = False) -> str:
    """A Markdown table of `summaries`; ``headline`` keeps the README's columns only."""
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


def _time_cell(s: Summary, letters: dict[str, str]) -> str:
    """Mean training time; per machine (lettered) when the table spans several."""
    if not letters:
        return _fmt(s.mean("time_s"), ".1f")
    times: dict[str, list[float]] = {}
    for r in s.rows:
        if (v := _value(r, "time_s")) is not None:
            times.setdefault(str(hardware_name(r.get("env", {}))), []).append(v)
    cells = [f"{statistics.fmean(v):.1f} ({letters[hw]})" for hw, v in times.items()]
    return ", ".join(cells) or "–"


# ------------------------------------------------------------------------ documents


def _settings(rows: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    counts = _run_counts(rows)
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
        key = (r["dataset"], r["model"], _recipe(r))
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


# The README's suites when none are named: the full-scale evidence first, then the quick
# reproducer (a few minutes on a laptop).
README_SUITES = ("paper", "quick")
# Suites whose scale the generated sentences are written for: at the quick suite's few hundred
# steps a verdict on the papers' claims says little, so its table stands alone.
STORY_SUITES = ("paper",)


def _readme_block(summaries: list[Summary], suites: list[str], chosen: Sequence[str] | None,
                  out_dir: Path, readme: Path) -> str:
    """The README's results: the first suite's table and its story in words, then each further
    suite's table, each with its machine and the command that reproduces it."""
    names = list(chosen) if chosen else [n for n in README_SUITES if n in suites] or suites[:1]
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
        section = _section_key(mine[0].rows[0])  # CPU and GPU rows stay apart
        mine = [s for s in mine if _section_key(s.rows[0]) == section]
        hardware = hardware_names([r for s in mine for r in s.rows])
        several = len(hardware) > 1
        seeds = sorted({r.get("seed", 0) for s in mine for r in s.rows})
        files += sorted({Path(r["_file"]).as_posix() for s in mine for r in s.rows})
        title = "**Quick reproducer.** " if i > 0 and name == "quick" else ""
        parts += [
            f"{title}Suite `{name}` on {' and '.join(hardware)} ({env.get('cores')} cores"
            f"{' each' if several else ''}), torch {env.get('torch')}, "
            f"seeds {', '.join(map(str, seeds))}."
            + (" Times are compared only within one machine: each run's against dense's on the "
               "same machine." if several else "")
            + (f" {TIME_NOTE}" if i == 0 else ""),
            "",
        ]
        if i == 0 and name in STORY_SUITES and (short := headline(mine)):
            parts += ["In short (generated from the rows below):", "", *short, ""]
        parts += [markdown_table(mine, headline=True), ""]
        if i == 0 and name in STORY_SUITES:
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
) -> dict[str, Any]:
    """Write ``report.md`` and plots into `out_dir`; optionally BENCHMARKS.md and the README block.

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
                      summaries: list[Summary], images: list[Path], checks: Any, level: str) -> list[str]:
        parts = [f"{level} Settings", "", *_settings(rows, env), ""]
        if checks:
            parts += [
                f"{level} Targets",
                "",
                "The papers' claims and our acceptance bars, checked against the rows below at "
                "this machine's scale (`leantrain.harness.targets` cites where each target comes "
                "from). ✓ met, **✗** missed, no mark: not judged (a time target only the paper's "
                "ResNets carry, one seed where noise must be estimated, or a time share of a "
                f"training-FLOPs cut under {100 * MIN_JUDGED_FLOPS_SAVING:.0f}%, within the "
                "timing noise). The DCP table's "
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
                "Recipes:",
                "",
                _recipes(suite_rows),
                "",
                markdown_table(mine),
                "",
            ]
            if pace := pace_table(mine):
                parts += [
                    "Pace check (`leantrain.harness.pace`): a run's epochs that did exactly "
                    "dense's work (the same training FLOPs, e.g. Learn&Drop before its first "
                    "removal) against dense's time for the same epochs on the same machine. "
                    "1.00× is expected; a different pace is the machine's speed moving between "
                    "the two runs, and the run's time ratio above carries it. *At dense's pace* "
                    "divides the run's time ratio by its pace: what the ratio would be had the "
                    "machine kept the speed it had for dense (an estimate: it assumes the pace "
                    "of the early epochs held for the whole run).",
                    "",
                    pace,
                    "",
                ]
            parts += [
                f"![{p.stem}]({_rel(p, base)})"
                for p in images
                if p.name.startswith(slug(suite) + "-")
            ]
            parts.append("")
        return parts

    def document(base: Path, title: str, command: str) -> str:
        parts = [f"# {title}", "", f"<!-- generated by `{command}`; do not edit by hand -->", ""]
        if len(sections) == 1:
            env, env_rows, summaries, images, checks = sections[0]
            return "\n".join(parts + section_parts(base, env, env_rows, summaries, images, checks, "##"))
        parts += [
            "These results come from several environments (device kind, cores, torch version); "
            "each has its own section, and no time is compared across machines.",
            "",
        ]
        for env, env_rows, summaries, images, checks in sections:
            hw = " and ".join(hardware_names(env_rows))
            names = ", ".join(f"`{n}`" for n in dict.fromkeys(s.suite for s in summaries))
            parts += [f"## On {hw}, torch {env.get('torch')}: {names}", ""]
            parts += section_parts(base, env, env_rows, summaries, images, checks, "###")
        return "\n".join(parts)

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
    p.add_argument(
        "--readme-suite",
        action="append",
        help="suite shown in the README, repeatable: the first gets the headline and its story "
        "(default: paper, then quick, where they have results; else the first suite)",
    )


def main(args: argparse.Namespace) -> int:
    """Entry of ``leantrain report``."""
    result = write_report(
        args.results,
        args.out,
        benchmarks=args.write_benchmarks,
        readme=args.readme,
        readme_suites=args.readme_suite,
    )
    print(markdown_table(result["summaries"]))
    print(f"wrote {Path(args.out) / 'report.md'} and {len(result['images'])} plot(s)")
    return 0
