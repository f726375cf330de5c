"""Learn&Drop (Cruciata et al., arXiv 2604.23403): drop layers that stopped learning, in training.

At checkpoints (end of every N epochs, or every N steps) every live droppable unit (an
identity-shortcut residual block, or an equal-width stride-1 VGG conv; see
`leantrain.structure.units_of`) gets a raw score D from a pluggable unit score
(`leantrain.methods.scores.UNIT_SCORES`; the paper's is the relative parameter change), a normalised score
S (own peak or peers) and a continuation score C (slope of D over the last W checkpoints / mean).

* ``mode="threshold"``: after a warm-up, a unit whose S < τ and C ≤ 0 held for P checkpoints in a
  row is dropped, at most K_max per checkpoint, lowest S first.
* ``mode="budget"``: the dropped fraction of eligible units follows a linear ramp from 0 at the
  end of the warm-up to ``budget_target`` at ``budget_end``; each checkpoint drops the lowest-S
  units needed to meet the ramp, skipping units whose C > 0 (still speeding up).

Both keep at least ``min_units_per_stage`` live blocks per stage and respect an overall cap.
A dropped unit is replaced for good (`leantrain.structure.surgery.drop_units`) and its parameters leave the
optimizer through the returned `Change`; ``action="freeze"`` keeps it in the forward pass without
gradients instead. Every checkpoint logs every unit's D, S, C and decision (``ld_checkpoint``
events) and every drop its forward FLOPs before and after, for `leantrain.methods.plots.plot_learndrop`.

Only the paper's abstract is available; the score definitions, rules and defaults are ours
(see ``docs/methods/learndrop.md``) and are meant to be calibrated by the benchmark sweep.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..cost import count_macs
from ..structure import Unit, example_shape, stage_blocks_of, units_of
from ..structure.surgery import Change, drop_units, freeze_units
from .base import Method, MethodWarning, Progress
from .registry import register_method
from .scores import UNIT_SCORES, UnitScore, continuation, normalize

__all__ = ["LearnDrop", "budget_fraction"]

# Spec default K_max = ceil(25% of eligible units): enough to shed a settled stage in a few
# checkpoints, few enough that one noisy checkpoint cannot gut the network.
DEFAULT_MAX_PER_CHECKPOINT_FRACTION = 0.25

# Guards floor() against float error, e.g. 0.7 * 10 = 6.999999999999999.
_FLOOR_SLACK = 1e-9


def budget_fraction(fraction: float, warmup: float, target: float, end: float) -> float:
    """Dropped fraction of eligible units the budget ramp asks for at a point of training.

    Args:
        fraction: training progress in [0, 1].
        warmup: where the ramp starts at 0.
        target: the dropped fraction reached at `end` and kept afterwards.
        end: where the ramp reaches `target` (> warmup).

    Returns:
        The target dropped fraction, linear from 0 at `warmup` to `target` at `end`.
    """
    if fraction <= warmup:
        return 0.0
    return target * min(1.0, (fraction - warmup) / (end - warmup))


@register_method
@dataclass
class LearnDrop(Method):
    """Learn&Drop: remove settled layers while training, so later steps do less forward work.

    Args:
        score: unit score by registry name in `leantrain.methods.scores.UNIT_SCORES`: ``"change"`` (the
            paper's relative parameter change) or ``"residual_norm"`` (‖y − x‖/‖x‖).
        normalize: ``"peers"``: S = D / max over the active units at the same checkpoint;
            ``"self"``: S = D / the unit's own peak so far.
        peer_reference: ``"peers"`` only: which units' largest D is the yardstick.
            ``"settling"``: the units not still picking up (C ≤ 0, or no slope yet), all of
            them when none is; ``"max"``: every active unit (as first built).
        tau: threshold τ in (0, 1]; threshold mode drops a unit once S < τ (with C ≤ 0).
        warmup: fraction of training before any drop (scores are still recorded).
        stop: fraction of training after which no unit is removed (ours, not the paper's).
        window: W, the checkpoints the continuation slope is fitted to (≥ 2).
        patience: P, consecutive checkpoints a unit must be settled before it is dropped.
        max_per_checkpoint: K_max, units dropped at one checkpoint at most; None means
            ceil(25% of the eligible units) in threshold mode and no limit in budget mode (the
            ramp itself paces the drops there).
        min_units_per_stage: live blocks a stage keeps at least, counting every block of the
            stage, droppable or not (a ResNet stage's downsampling block, a VGG stage's widening
            conv).
        max_dropped_fraction: overall cap on the dropped fraction of eligible units, in [0, 1].
        action: ``"drop"`` removes the unit from the forward pass; ``"freeze"`` keeps it but
            stops its gradients (saves backward work only).
        include_downsampling: also let downsampling blocks go, replaced by their projection
            shortcut (drop action only).
        every_epochs: checkpoint at the end of every N epochs.
        every_steps: if > 0, checkpoint every N optimizer steps instead.
        mode: ``"threshold"`` (the paper's rule) or ``"budget"`` (follow a dropped-fraction ramp).
        budget_target: budget mode: dropped fraction of eligible units reached at
            ``budget_end``.
        budget_end: budget mode: fraction of training where the ramp reaches its target.
    """

    name: ClassVar[str] = "learndrop"
    score: str = "change"
    # "peers" by default: with a decaying LR every unit's D falls together, so own-peak
    # normalisation tends to fire for all units at once, late in training, when little compute
    # is left to save; peers normalisation finds the *relatively* settled units early and does
    # not depend on the LR schedule. (To be confirmed by the calibration sweep.)
    normalize: str = "peers"
    # "settling" (ours): a block that has just taken over a removed neighbour's work changes
    # fast for a few checkpoints, and as the yardstick it makes every other block look settled.
    # Measured on the `paper` suite (full CIFAR-10 ResNet-32, seed 0, "max"): after layer3.4
    # left at epoch 18, layer3.3's D doubled (0.16 → 0.33, C = +0.34); the four blocks of stage 1
    # fell to S ≈ 0.40 against it and left together at epoch 19, then the lone first-stage
    # block spiked (D 0.52) and four more left at epoch 20: test accuracy fell from 81% to 16%.
    # A unit whose continuation score is positive is by the paper's own reading still learning,
    # so it is no yardstick of settledness; against the others those blocks scored 0.58.
    peer_reference: str = "settling"
    # τ = 0.5, settled by the learndrop-sweep suite (BENCHMARKS.md): with peers normalisation the
    # spec's starting value 0.25 never fired on CIFAR-10 ResNet-20 (scores stayed ≥ 0.38); 0.5 and
    # 0.75 both dropped blocks at the same accuracy there, and 0.5 is the more cautious of the two.
    tau: float = 0.5
    warmup: float = 0.1  # spec: "warm-up 2 epochs (or 10% of training)"
    # Ours, not the paper's: no drop in the last quarter of training. A unit removed that late
    # saves little (little training is left, at a decayed LR) and leaves the network too few
    # steps to adapt: in short runs (quick suite, VGG-11 on MNIST, 45 steps) a VGG conv dropped
    # at 78% or 93% of training took test accuracy from 94% to 38% and 12%.
    stop: float = 0.75
    window: int = 3  # spec's starting default W
    patience: int = 1  # spec's starting default P
    max_per_checkpoint: int | None = None
    # 1, so VGG keeps something to drop (a VGG stage is the convs at one resolution: VGG-11's
    # have one or two). On ResNets a budget wants 2: the third stage's blocks settle first and a
    # rank-only budget empties that stage; on full CIFAR-10 ResNet-32 (paper suite, seed 0) 9
    # blocks removed keeping two per stage cost 1.8 points, 10 removed emptying stage 3 cost 3.9.
    min_units_per_stage: int = 1
    max_dropped_fraction: float = 1.0
    action: str = "drop"
    include_downsampling: bool = False
    every_epochs: int = 1
    every_steps: int = 0
    mode: str = "threshold"
    budget_target: float = 0.5
    budget_end: float = 0.7

    def __post_init__(self) -> None:
        if self.score not in UNIT_SCORES:
            raise ValueError(
                f"learndrop.score = {self.score!r} is unknown; choose one of: "
                f"{', '.join(UNIT_SCORES.names())}."
            )
        if self.normalize not in ("self", "peers"):
            raise ValueError(f"learndrop.normalize = {self.normalize!r}; choose 'self' or 'peers'.")
        if self.peer_reference not in ("settling", "max"):
            raise ValueError(
                f"learndrop.peer_reference = {self.peer_reference!r}; choose 'settling' or 'max'."
            )
        if not 0 < self.tau <= 1:
            raise ValueError(
                f"learndrop.tau = {self.tau} is outside (0, 1]; S is normalised to [0, 1], so "
                "pick a threshold like 0.25."
            )
        if not 0 <= self.warmup <= 1:
            raise ValueError(
                f"learndrop.warmup = {self.warmup} must be a fraction of training in [0, 1]."
            )
        if not 0 <= self.stop <= 1:  # stop ≤ warmup is allowed: it disables dropping
            raise ValueError(
                f"learndrop.stop = {self.stop} must be a fraction of training in [0, 1]."
            )
        if self.window < 2:
            raise ValueError(
                f"learndrop.window = {self.window} must be ≥ 2 (a slope needs two checkpoints)."
            )
        if self.patience < 1:
            raise ValueError(f"learndrop.patience = {self.patience} must be ≥ 1 checkpoint.")
        if self.max_per_checkpoint is not None and self.max_per_checkpoint < 1:
            raise ValueError(
                f"learndrop.max_per_checkpoint = {self.max_per_checkpoint} must be ≥ 1, or None "
                "for ceil(25% of the eligible units)."
            )
        if self.min_units_per_stage < 0:
            raise ValueError(
                f"learndrop.min_units_per_stage = {self.min_units_per_stage} must be ≥ 0."
            )
        if not 0 <= self.max_dropped_fraction <= 1:
            raise ValueError(
                f"learndrop.max_dropped_fraction = {self.max_dropped_fraction} must lie in [0, 1]."
            )
        if self.action not in ("drop", "freeze"):
            raise ValueError(f"learndrop.action = {self.action!r}; choose 'drop' or 'freeze'.")
        if self.action == "freeze" and self.include_downsampling:
            raise ValueError(
                "learndrop.include_downsampling needs action='drop' (a downsampling block is "
                "replaced by its shortcut, not frozen); set one of them back."
            )
        if self.every_epochs < 1:
            raise ValueError(f"learndrop.every_epochs = {self.every_epochs} must be ≥ 1.")
        if self.every_steps < 0:
            raise ValueError(
                f"learndrop.every_steps = {self.every_steps} must be ≥ 0 (0: use every_epochs)."
            )
        if self.mode not in ("threshold", "budget"):
            raise ValueError(f"learndrop.mode = {self.mode!r}; choose 'threshold' or 'budget'.")
        if not 0 <= self.budget_target <= 1:
            raise ValueError(f"learndrop.budget_target = {self.budget_target} must lie in [0, 1].")
        if self.mode == "budget" and not self.warmup < self.budget_end <= self.stop:
            raise ValueError(
                f"learndrop.budget_end = {self.budget_end} must lie in (warmup = {self.warmup}, "
                f"stop = {self.stop}] so the ramp has a length and ends before drops stop; "
                "change budget_end, warmup or stop."
            )
        self._scorer: UnitScore = UNIT_SCORES[self.score]()
        self.histories: dict[str, list[float]] = {}
        self.streaks: dict[str, int] = {}
        self.dropped: list[str] = []  # removed (dropped or frozen) units, in order
        self.n_eligible: int | None = None  # eligible units at the start of training
        self._input_shape: tuple[int, ...] | None = None
        self._flops: int | None = None
        self._warned_frozen: list[str] | None = None  # the frozen units last warned about

    # ------------------------------------------------------------------ hooks

    def setup(self, model: nn.Module, progress: Progress) -> None:
        units = units_of(model, self.include_downsampling)
        fresh = self.n_eligible is None  # a resumed run has it from load_state_dict
        if fresh and not units:
            raise ValueError(
                f"this model ({type(model).__name__}) has no droppable unit (no "
                "identity-shortcut block, no equal-width stride-1 conv), so Learn&Drop cannot "
                "scale it down; use --method none or a model with identity-shortcut blocks / "
                "equal-width convs."
            )
        if not fresh and self.action == "freeze":
            # Frozen units are still in a resumed model, with requires_grad back on: re-freeze.
            # (Their parameters have no gradient, so the optimizer skips them.)
            for u in units:
                if u.name in self.dropped:
                    for p in u.module.parameters():
                        p.requires_grad_(False)
        frozen = [u.name for u in units if u.name not in self.dropped and _all_frozen(u)]
        active = self._active(units)
        if fresh:
            if not active:
                more = ", …" if len(frozen) > 3 else ""
                raise ValueError(
                    f"every droppable unit of {type(model).__name__} is frozen "
                    f"(requires_grad=False: {', '.join(frozen[:3])}{more}), so Learn&Drop has "
                    "nothing to score or drop; unfreeze some blocks or train without Learn&Drop."
                )
            self.n_eligible = len(active)
        if frozen and frozen != self._warned_frozen:
            self._warned_frozen = frozen
            warnings.warn(
                f"Learn&Drop leaves {len(frozen)} unit(s) whose parameters are all frozen "
                f"(requires_grad=False) out, never scored nor dropped: {', '.join(frozen[:5])}"
                f"{', …' if len(frozen) > 5 else ''}.", MethodWarning, stacklevel=2)
        for u in active:
            self.histories.setdefault(u.name, [])
            self.streaks.setdefault(u.name, 0)
        self._scorer.attach(model, active)
        self._input_shape = example_shape(model)
        self._flops = self._forward_flops(model)
        self._emit({
            "kind": "ld_setup",
            "step": progress.step,
            "units": [u.name for u in active],
            "stages": {u.name: u.stage for u in units},
            "eligible": self.n_eligible,
            "frozen": frozen,
            "mode": self.mode,
            "tau": self.tau,
            "forward_flops": self._flops,
        })
        if fresh:
            idle = self._why_idle(model, active, progress)
            if idle:
                warnings.warn(f"Learn&Drop will drop nothing: {idle}.", MethodWarning,
                              stacklevel=2)

    def _why_idle(self, model: nn.Module, active: list[Unit], progress: Progress) -> str | None:
        """Why no unit can ever be dropped with these settings on this model, or None."""
        eligible = self._eligible()
        live = self._stage_sizes(model)
        if not any(live[u.stage] > self.min_units_per_stage for u in active):
            sizes = sorted({live[u.stage] for u in active})
            return (f"each of its {len(active)} units is in a stage of at most {sizes[-1]} "
                    f"block(s) and min_units_per_stage = {self.min_units_per_stage} keeps that "
                    "many, so none can leave (a unit is alone in its stage when it is the only "
                    "block at its resolution); set learndrop.min_units_per_stage lower, e.g. 0")
        if self.stop <= self.warmup:
            return (f"learndrop.stop = {self.stop} is not after warmup = {self.warmup} and drops "
                    "happen only between the two; raise stop or lower warmup")
        cap = math.floor(self.max_dropped_fraction * eligible + _FLOOR_SLACK)
        if cap < 1:
            return (f"learndrop.max_dropped_fraction = {self.max_dropped_fraction} of the "
                    f"{eligible} eligible units rounds down to 0 units; raise it to at least "
                    f"{1 / eligible:.3g}")
        if self.mode == "budget" and math.floor(self.budget_target * eligible + _FLOOR_SLACK) < 1:
            return (f"learndrop.budget_target = {self.budget_target} of the {eligible} eligible "
                    f"units rounds down to 0 units; raise it to at least {1 / eligible:.3g}")
        if not self._checkpoint_in_window(progress):
            return (f"no checkpoint falls between warmup = {self.warmup} and stop = {self.stop} "
                    f"of the {progress.total_steps} steps; checkpoint more often (every_steps / "
                    "every_epochs, or steps_per_epoch in attach) or widen warmup..stop")
        return None

    def _checkpoint_in_window(self, progress: Progress) -> bool:
        """Whether some checkpoint step s ≤ total_steps has warmup ≤ s / total_steps < stop."""
        every = (self.every_steps if self.every_steps > 0
                 else self.every_epochs * progress.steps_per_epoch)
        total = progress.total_steps
        first = max(1, math.ceil(self.warmup * total / every - _FLOOR_SLACK)) * every
        return first <= total and first / total < self.stop

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        self._scorer.after_backward()

    def step(self, model: nn.Module, progress: Progress) -> Change | None:
        if not self._is_checkpoint(progress):
            return None
        # Re-query the units every checkpoint: earlier drops replaced modules.
        active = self._active(units_of(model, self.include_downsampling))
        raw = self._scorer.measure(active)
        for name, d in raw.items():
            self.histories.setdefault(name, []).append(d)
        c = {name: continuation(self.histories[name], self.window) for name in raw}
        reference = (None if self.peer_reference == "max"
                     else {name for name in raw if not c[name] > 0})  # NaN (no slope yet) counts
        s = normalize(raw, self.histories, self.normalize, reference)
        for name in raw:
            settled = s[name] < self.tau and c[name] <= 0  # False for NaN (no slope yet)
            self.streaks[name] = self.streaks.get(name, 0) + 1 if settled else 0

        # No drop during the warm-up, nor after `stop` (too late to pay off or to adapt).
        may_drop = self.warmup <= progress.fraction < self.stop
        if not may_drop:
            label = "warmup" if progress.fraction < self.warmup else "late"
            decisions = {u.name: label for u in active}
            chosen: list[Unit] = []
        elif self.mode == "threshold":
            chosen, decisions = self._choose_threshold(model, active, s)
        else:
            chosen, decisions = self._choose_budget(model, active, s, c, progress.fraction)

        change = self._remove(model, chosen, progress.step, s, c) if chosen else None
        for u in chosen:
            decisions[u.name] = self.action
        self._emit({
            "kind": "ld_checkpoint",
            "step": progress.step,
            "units": {
                name: {
                    "D": _num(raw[name]),
                    "S": _num(s[name]),
                    "C": _num(c[name]),
                    "streak": self.streaks[name],
                    "decision": decisions[name],
                }
                for name in raw
            },
            "dropped": len(self.dropped),
            "forward_flops": self._flops,  # of the live network after this checkpoint's drops
        })
        return change

    def finish(self, model: nn.Module) -> Change | None:
        self._scorer.detach()
        return None

    # ------------------------------------------------------------------ decisions

    def _choose_threshold(
        self, model: nn.Module, active: list[Unit], s: dict[str, float]
    ) -> tuple[list[Unit], dict[str, str]]:
        decisions = {
            u.name: "keep" if self.streaks[u.name] == 0
            else "settling" if self.streaks[u.name] < self.patience
            else "held"
            for u in active
        }
        candidates = [u for u in active if self.streaks[u.name] >= self.patience]
        limit = self.max_per_checkpoint or math.ceil(
            DEFAULT_MAX_PER_CHECKPOINT_FRACTION * self._eligible()
        )
        return self._pick(model, candidates, s, limit), decisions

    def _choose_budget(
        self,
        model: nn.Module,
        active: list[Unit],
        s: dict[str, float],
        c: dict[str, float],
        fraction: float,
    ) -> tuple[list[Unit], dict[str, str]]:
        decisions = {u.name: "veto" if c[u.name] > 0 else "keep" for u in active}
        target = budget_fraction(fraction, self.warmup, self.budget_target, self.budget_end)
        need = math.floor(target * self._eligible() + _FLOOR_SLACK) - len(self.dropped)
        candidates = [u for u in active if not c[u.name] > 0]
        limit = max(0, need)
        if self.max_per_checkpoint is not None:
            limit = min(limit, self.max_per_checkpoint)
        return self._pick(model, candidates, s, limit), decisions

    def _pick(
        self, model: nn.Module, candidates: list[Unit], s: dict[str, float], limit: int
    ) -> list[Unit]:
        """Lowest S first, within the per-checkpoint limit, the overall cap and stage minimum."""
        cap = math.floor(self.max_dropped_fraction * self._eligible() + _FLOOR_SLACK)
        limit = min(limit, cap - len(self.dropped))
        live = self._stage_sizes(model)
        order = sorted(
            range(len(candidates)),
            key=lambda i: (_sort_key(s[candidates[i].name]), i),  # ties: model order
        )
        chosen = []
        for i in order:
            u = candidates[i]
            if len(chosen) >= limit:
                break
            if live[u.stage] - 1 < self.min_units_per_stage:
                continue
            chosen.append(u)
            live[u.stage] -= 1
        return chosen

    # ------------------------------------------------------------------ surgery

    def _remove(
        self,
        model: nn.Module,
        chosen: list[Unit],
        step: int,
        s: dict[str, float],
        c: dict[str, float],
    ) -> Change:
        removed: list[str] = []
        edits = []
        for u in chosen:
            before = self._flops
            if self.action == "drop":
                change = drop_units(model, [u.name], self.include_downsampling)
                self._flops = self._forward_flops(model)
            else:
                change = freeze_units(model, [u.name])
                for e in change.edits:  # a stale gradient would only hold memory now
                    e.old.grad = None
            removed += change.removed
            edits += change.edits
            self.dropped.append(u.name)
            self._emit({
                "kind": self.action,
                "unit": u.name,
                "stage": u.stage,
                "step": step,
                "S": _num(s[u.name]),
                "C": _num(c[u.name]),
                "forward_flops_before": before,
                "forward_flops_after": self._flops,
            })
        names = [u.name for u in chosen]
        self._scorer.forget(names)
        # Re-attach to the live units (never keep references to replaced modules).
        self._scorer.attach(model, self._active(units_of(model, self.include_downsampling)))
        return Change(removed=removed, edits=edits)

    # ------------------------------------------------------------------ helpers

    def _is_checkpoint(self, progress: Progress) -> bool:
        if self.every_steps > 0:
            return progress.step > 0 and progress.step % self.every_steps == 0
        epoch = progress.step // progress.steps_per_epoch
        return progress.epoch_ended and epoch % self.every_epochs == 0

    def _active(self, units: list[Unit]) -> list[Unit]:
        """Units still in play: not removed, and not frozen by the user (a frozen unit does not
        move, so its change score would read as settled)."""
        removed = set(self.dropped)
        return [u for u in units if u.name not in removed and not _all_frozen(u)]

    def _eligible(self) -> int:
        if self.n_eligible is None:
            raise RuntimeError("LearnDrop.setup() must run before the first step.")
        return self.n_eligible

    def _stage_sizes(self, model: nn.Module) -> Counter[str]:
        """Live (not dropped, not frozen) blocks per stage, droppable or not."""
        removed = set(self.dropped)
        return Counter(
            stage
            for stage, names in stage_blocks_of(model).items()
            for name in names
            if name not in removed
        )

    def _forward_flops(self, model: nn.Module) -> int | None:
        if self._input_shape is None:
            return None
        return 2 * count_macs(model, self._input_shape)

    # ------------------------------------------------------------------ state

    def cost_key(self, model: nn.Module) -> Any:
        return None  # structure changes only through returned Changes, which fit() counts

    def state_dict(self) -> dict[str, Any]:
        return {
            "histories": {k: list(v) for k, v in self.histories.items()},
            "streaks": dict(self.streaks),
            "dropped": list(self.dropped),
            "n_eligible": self.n_eligible,
            "score": self._scorer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.histories = {k: [float(x) for x in v] for k, v in state["histories"].items()}
        self.streaks = {k: int(v) for k, v in state["streaks"].items()}
        self.dropped = list(state["dropped"])
        self.n_eligible = None if state["n_eligible"] is None else int(state["n_eligible"])
        self._scorer.load_state_dict(state["score"])


def _all_frozen(unit: Unit) -> bool:
    """True when the unit has parameters and none of them trains (``requires_grad=False``)."""
    flags = [p.requires_grad for p in unit.parameters()]
    return bool(flags) and not any(flags)


def _num(x: float) -> float | None:
    """A float for the JSON event log: NaN (no value yet) or infinity becomes None."""
    return float(x) if math.isfinite(x) else None


def _sort_key(x: float) -> float:
    return math.inf if math.isnan(x) else x
