"""Benchmark result rows as the report reads them: loaded from results files, checked field by
field, and grouped by environment (report section) and machine.

A row is one run, written by `leantrain.harness.bench`; `leantrain.harness.summary` aggregates
rows into table rows.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..config import toml_repr
from ..runs.env import hardware_name
from .bench import read_results

__all__ = [
    "SECTION_FIELDS",
    "by_environment",
    "check_environment",
    "hardware_names",
    "load_rows",
    "run_counts",
    "section_key",
]

Row = dict[str, Any]

# A report section: accuracy and FLOPs pool over its machines (a seed's accuracy does not depend
# on the CPU model); device kind and torch version stay apart, as the issue of record asks CPU and
# GPU results to be reported separately.
SECTION_FIELDS = ("device", "cores", "torch")

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


def load_rows(paths: list[str | Path]) -> list[Row]:
    """Rows of every results file (a folder means its ``*.jsonl``), each tagged with its file.

    Raises:
        ValueError: a row lacks a field the report needs or has one of the wrong type (the
            message names the file, the row and the field).
    """
    rows: list[Row] = []
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


def check_environment(rows: list[Row]) -> dict[str, Any]:
    """The one environment all rows share; a clear error when they come from several."""
    groups = by_environment(rows)
    if len(groups) > 1:
        lines = []
        for env, group in groups:
            fields = {k: env.get(k) for k in SECTION_FIELDS}
            files = sorted({Path(r["_file"]).name for r in group})
            lines.append(f"  {fields}: {', '.join(files)}")
        raise ValueError(
            "these results come from different environments (device kind, cores or torch), "
            "which are reported in separate sections:\n" + "\n".join(lines)
        )
    return rows[0].get("env", {})


def by_environment(rows: list[Row]) -> list[tuple[dict[str, Any], list[Row]]]:
    """Rows grouped into report sections (device kind, cores, torch), in order of first
    appearance; within a section, times are still compared per machine (`Summary.time_ratios`)."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(section_key(r), []).append(r)
    return [(group[0].get("env", {}), group) for group in groups.values()]


def section_key(row: Row) -> tuple[Any, ...]:
    """The report section a row belongs to (`SECTION_FIELDS` of its environment)."""
    env = row.get("env", {})
    return tuple(env.get(k) for k in SECTION_FIELDS)


def hardware_names(rows: list[Row]) -> list[str]:
    """The machines (CPU or GPU model) that `rows` ran on, in order of first appearance."""
    return list(run_counts(rows))


def run_counts(rows: list[Row]) -> Counter[str]:
    """Rows per machine (CPU or GPU model), in order of first appearance."""
    return Counter(str(hardware_name(r.get("env", {}))) for r in rows)
