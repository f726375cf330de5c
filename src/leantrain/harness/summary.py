"""Rows → summaries: one `Summary` per (results file, data set, model, recipe, method label),
aggregated over seeds and linked to its dense baseline.

Every report module reads runs through `Summary` (the tables, the targets, the story, the pace
check, the plots); none of them reads another's helpers for it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..runs.env import machine_key
from ..runs.machine_share import is_quiet
from .bench import recipe_digest

__all__ = ["Summary", "recipe_key", "row_value", "summarize"]

Row = dict[str, Any]


@dataclass
class Summary:
    """One table row: a method on a (data set, model, recipe), aggregated over seeds."""

    suite: str
    dataset: str
    model: str
    label: str
    method: str
    recipe: str
    rows: list[Row] = field(default_factory=list)
    dense: Summary | None = None
    # A full-length dense row's training time on machines it never ran on, inferred from the
    # same model's budgeted dense runs there (`leantrain.harness.pace.infer_dense_times`).
    inferred_times: dict[tuple[Any, ...], list[float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def where(self) -> str:
        """The run's name in the targets tables and the story: ``suite: data / model / label``."""
        return f"{self.suite}: {self.dataset} / {self.model} / {self.label}"

    def args(self, method: str) -> dict[str, Any]:
        """The settings these runs gave `method` (``config.method_args[method]``; the seeds of a
        summary share one config, so the first row speaks for all)."""
        return self.rows[0].get("config", {}).get("method_args", {}).get(method, {})

    @property
    def train(self) -> dict[str, Any]:
        """The training settings these runs were given (``config.train``, as written in the row;
        the seeds of a summary share one config, so the first row speaks for all)."""
        return (self.rows[0].get("config", {}).get("train") or {}) if self.rows else {}

    @property
    def budget(self) -> float:
        """The fraction of the recipe's epochs these runs trained (`TrainConfig.budget`)."""
        return float(self.train.get("budget", 1.0))

    @property
    def is_baseline(self) -> bool:
        """Dense at the recipe's full length: what every other row's time is divided by. Dense
        at a reduced budget is a point of the dense frontier, not the baseline."""
        return self.method == "none" and self.budget == 1.0 and not self.train.get("freeze")

    def mean(self, key: str) -> float | None:
        values = [v for r in self.rows if (v := row_value(r, key)) is not None]
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        values = [v for r in self.rows if (v := row_value(r, key)) is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def accuracy_drop(self) -> float | None:
        """Dense's mean top-1 minus this row's, in points; None without both."""
        dense = self.dense.mean("acc") if self.dense else None
        acc = self.mean("acc")
        return None if dense is None or acc is None else dense - acc

    @property
    def contended(self) -> int:
        """Rows whose run shared the machine with other work (`leantrain.runs.machine_share`)."""
        return sum(is_quiet(r.get("machine")) is False for r in self.rows)

    def quiet_times(self) -> dict[tuple[Any, ...], list[float]]:
        """Training times of the rows that did not share the machine, by machine (rows from
        before the record existed count as quiet: nothing says otherwise)."""
        out: dict[tuple[Any, ...], list[float]] = {}
        for r in self.rows:
            quiet = is_quiet(r.get("machine")) is not False
            if quiet and (v := row_value(r, "time_s")) is not None:
                out.setdefault(machine_key(r.get("env", {})), []).append(v)
        return out

    def time_ratio_of(self, row: Row, dense: Summary | None = None) -> float | None:
        """`row`'s training time / the mean quiet time of `dense` (default: this row's own dense
        baseline, same file, data set, model and recipe) on its machine, or where dense never
        ran there, its time inferred from the budgeted dense runs that did (`inferred_times`;
        not for those runs themselves, whose ratio would be their own time over itself); None
        for a time taken while other work shared the cores, or on a machine with neither."""
        dense = self.dense if dense is None else dense
        if dense is None or is_quiet(row.get("machine")) is False:
            return None
        machine = machine_key(row.get("env", {}))
        times = dense.quiet_times().get(machine)
        if not times and not (self.method == "none" and self.model == dense.model):
            times = dense.inferred_times.get(machine)
        time = row_value(row, "time_s")
        if not times or time is None or (mean := statistics.fmean(times)) <= 0:
            return None
        return time / mean

    def time_ratio_against(self, dense: Summary | None = None) -> float | None:
        """The mean of `time_ratio_of` over the rows that have one; against another model's
        dense (a smaller network on the dense frontier) when `dense` is given."""
        ratios = [r for row in self.rows if (r := self.time_ratio_of(row, dense)) is not None]
        return statistics.fmean(ratios) if ratios else None

    @property
    def time_ratios(self) -> list[float]:
        """`time_ratio_of` each row that has one."""
        return [r for row in self.rows if (r := self.time_ratio_of(row)) is not None]

    @property
    def time_ratio(self) -> float | None:
        """Training time as a multiple of dense's: the mean of `time_ratios` (on one machine,
        this row's mean quiet time / dense's)."""
        return self.time_ratio_against()

    @property
    def speedup(self) -> float | None:
        """Dense time / this method's time (1 / `time_ratio`), from quiet rows only."""
        ratio = self.time_ratio
        return 1 / ratio if ratio else None


def row_value(row: Row, key: str) -> float | None:
    """A per-run quantity, derived from the row's raw fields; None when absent or not finite."""

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


def recipe_key(row: Row) -> str:
    """The row's recipe (`bench.recipe_digest`): runs compare times only within one."""
    return recipe_digest(row.get("config", {}))


def summarize(rows: list[Row]) -> list[Summary]:
    """Group rows into `Summary`s in suite order, dense first, each linked to its dense row."""
    groups: dict[tuple[str, ...], Summary] = {}
    for r in rows:
        method = r.get("config", {}).get("method", r.get("method", "none"))
        key = (r["_file"], r["dataset"], r["model"], recipe_key(r), r["label"])
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
