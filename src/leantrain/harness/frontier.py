"""The dense time–accuracy frontier: what a user gets by simply training dense for less.

A user who wants training to take 0.6× as long can train the same network densely for 0.6× of
the epochs with the learning-rate schedule compressed into them (`TrainConfig.budget`), or train
a smaller network. Li, Yumer & Ramanan ("Budgeted Training", ICLR 2020, arXiv 1905.04753) and
Kaddour et al. ("No Train No Gain", NeurIPS 2023, arXiv 2307.06440) found such budgeted dense
runs to be a baseline that earlier speed-up methods failed to beat; Composer's
`scale_schedule_ratio` baselines draw the same curve. A speed-up is worth having only where it
lands above it.

The frontier of a model is drawn from every dense row of its suite on the same data set and
training recipe: this model at every budget and every other model (a smaller network, or a
larger one), each row's time divided by this model's full-length dense time on the row's own
machine (`Summary.time_ratio_against`; this model's shorter runs at dense's pace, `_placed`)
and, on a second axis, training FLOPs, which do not
drift between machines. Its accuracy at a time (or FLOPs) is the upper concave envelope of those
points: linear between two envelope points, the best accuracy beyond the slowest (a user can always
stop), and unknown faster than the fastest point, where a method is not judged.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

from .bench import recipe_digest
from .pace import dense_share
from .summary import Summary

__all__ = ["Axis", "Frontier", "Point", "build_frontiers", "frontier_of"]

Axis = Literal["time", "flops"]


@dataclass(frozen=True)
class Point:
    """One dense row of the frontier: a network at one budget, aggregated over its seeds."""

    summary: Summary
    time_ratio: float | None  # its time ÷ the frontier's reference dense time (see `_placed`)
    tflops: float | None  # training TFLOPs (forward + backward, integrated)
    measured: float | None = None  # the time ratio as measured, where `time_ratio` corrects it
    at_pace: bool = False  # placed at dense's pace (`_placed`), not at its measured time

    @property
    def acc(self) -> float | None:
        return self.summary.mean("acc")

    @property
    def std(self) -> float:
        return self.summary.std("acc") or 0.0

    def name(self, model: str) -> str:
        """Its label, with its model when that is not the frontier's own (``resnet20/dense``)."""
        s = self.summary
        return s.label if s.model == model else f"{s.model}/{s.label}"

    def x(self, axis: Axis) -> float | None:
        return self.time_ratio if axis == "time" else self.tflops


@dataclass(frozen=True)
class Frontier:
    """The dense frontier of one (suite, data set, model, recipe): its `reference` is the
    model's full-length dense row, against whose time every point's is measured."""

    reference: Summary
    points: tuple[Point, ...]

    def envelope(self, axis: Axis) -> list[Point]:
        """The frontier's points, sorted by `axis`: each more accurate than every faster
        (cheaper) one, and none below the straight line between a faster and a slower one
        (the upper concave envelope). The frontier is linear between these points, so a point
        under that line would pull it below what its neighbours reach: with it, adding a dense
        run could lower the frontier (in the `paper` suite, ResNet-32 for 0.6 of the epochs
        just faster than a ResNet-20 that is a point more accurate)."""
        placed = sorted((p for p in self.points if p.x(axis) is not None and p.acc is not None),
                        key=lambda p: (p.x(axis), -p.acc))
        out: list[Point] = []
        for p in placed:
            if out and p.acc <= out[-1].acc:
                continue
            while len(out) >= 2 and _below_line(out[-1], out[-2], p, axis):
                out.pop()
            out.append(p)
        return out

    def accuracy_at(self, axis: Axis, x: float | None) -> float | None:
        """Top-1 % the frontier reaches at `x` (a time ratio, or training TFLOPs); None faster
        than its fastest point or without points."""
        env = self.envelope(axis)
        if x is None or not env or x < env[0].x(axis):
            return None
        xs = [p.x(axis) for p in env]
        i = bisect.bisect_right(xs, x) - 1
        if i == len(env) - 1:
            return env[-1].acc
        a, b = env[i], env[i + 1]
        share = (x - xs[i]) / (xs[i + 1] - xs[i])
        return a.acc + share * (b.acc - a.acc)

    def distance(self, s: Summary, axis: Axis = "time") -> float | None:
        """`s`'s mean top-1 minus the frontier's at `s`'s own time (or training FLOPs), in
        points: positive above the frontier. None where it cannot be placed."""
        x = s.time_ratio if axis == "time" else _tflops(s)
        acc, at = s.mean("acc"), self.accuracy_at(axis, x)
        return None if acc is None or at is None else acc - at

    def scratch_of(self, s: Summary) -> Point | None:
        """The point that is the network `s` ended with, another model trained densely from
        scratch for the whole recipe (Liu et al.'s Scratch-E control, arXiv 1810.05270): the
        same architecture, recognised by equal final parameters *and* MACs (either alone is not
        enough: every stage of a CIFAR ResNet costs the same MACs per block, so networks with
        different blocks left can tie on MACs). None where the suite has no such run."""
        ended = {(r.get("final_params"), r.get("final_macs")) for r in s.rows
                 if r.get("final_params") is not None and r.get("final_macs") is not None}
        for p in self.points:
            row = p.summary.rows[0]
            if (p.summary.model != s.model and p.summary.is_baseline
                    and (row.get("final_params"), row.get("final_macs")) in ended):
                return p
        return None

    def span(self, axis: Axis) -> tuple[float, float] | None:
        """The fastest and slowest point on `axis`."""
        xs = [x for p in self.points if (x := p.x(axis)) is not None]
        return (min(xs), max(xs)) if xs else None


def _below_line(p: Point, a: Point, b: Point, axis: Axis) -> bool:
    """Whether `p` lies strictly under the straight line from `a` to `b` on `axis` (a point on
    it stays: it lowers nothing)."""
    xa, xp, xb = a.x(axis), p.x(axis), b.x(axis)
    on_line = a.acc + (b.acc - a.acc) * (xp - xa) / (xb - xa)
    return p.acc < on_line - 1e-9


def _tflops(s: Summary) -> float | None:
    flops = s.mean("train_flops")
    return None if flops is None else flops / 1e12


def _training_recipe(s: Summary) -> str:
    """The recipe without the network: a smaller network trained the same way shares it. The
    starting weights stay in it: fine-tuning from one pretrained source is not on the frontier
    of another source's fine-tuning (the finetune suite's ResNet-20 and ResNet-18 start from
    different CIFAR-10 models)."""
    config = s.rows[0].get("config", {}) if s.rows else {}
    init = (config.get("model") or {}).get("init")
    return recipe_digest({**config, "model": None if init is None else {"init": init}})


def _placed(s: Summary, ref: Summary) -> tuple[float | None, float | None, bool]:
    """(time ratio to place `s` at, the measured one where that differs, whether it is placed
    at dense's pace). The model's own shorter runs go at dense's pace: every epoch of theirs is
    dense's work, so they stand at the share of dense's time their epochs take
    (`leantrain.harness.pace.dense_share`, their time ÷ their pace). The raw ratio would carry
    the machine's drift between sessions (the `paper` suite's ResNet-32 epochs took 102-130 s
    on one machine model, quiet every time), and needs a dense run on the same machine.
    Another network's pace cannot be measured: its ratio stays as measured."""
    measured = s.time_ratio_against(ref)
    share = None if s is ref or s.model != ref.model else dense_share(s)
    return (measured, None, False) if share is None else (share, measured, True)


def build_frontiers(summaries: list[Summary]) -> dict[tuple[str, str, str, str], Frontier]:
    """A `Frontier` per (suite, data set, model, recipe) that has one: its full-length dense
    row plus at least one other dense row (a reduced budget or another network). Times are
    compared within the summaries given (one environment section of the report)."""
    dense_rows = [s for s in summaries if s.method == "none" and s.rows]
    out: dict[tuple[str, str, str, str], Frontier] = {}
    for ref in dense_rows:
        if not ref.is_baseline or ref.dense is not ref:
            continue
        recipe = _training_recipe(ref)
        members = [s for s in dense_rows
                   if (s.suite, s.dataset) == (ref.suite, ref.dataset)
                   and _training_recipe(s) == recipe]
        if len(members) < 2:
            continue
        points = []
        for s in members:
            ratio, measured, at_pace = _placed(s, ref)
            points.append(Point(s, ratio, _tflops(s), measured, at_pace))
        out[(ref.suite, ref.dataset, ref.model, ref.recipe)] = Frontier(ref, tuple(points))
    return out


def frontier_of(s: Summary, frontiers: dict[tuple[str, str, str, str], Frontier]
                ) -> Frontier | None:
    """The frontier `s` is judged against: its own model's, on its data set and recipe."""
    return frontiers.get((s.suite, s.dataset, s.model, s.recipe))
