"""FreezeOut (Brock et al. 2017, arXiv 1706.04983): progressive layer freezing, a peer baseline.

The network is split into layers in forward order, as the discovered `Structure` lists them
(`Structure.layers`): the stem, every residual block (ResNet) or conv (VGG), and the classifier. Layer i of 0..L stops training at

    t_i = f(t_0 + (1 − t_0) · i / L),   f(x) = x, x² or x³ (linear / squared / cubic schedule)

so the classifier (i = L) trains to the end, and its learning rate is annealed to zero by t_i
with its own cosine, α_i(t) = (α / t_i if scaled) · ½(1 + cos(π t / t_i)). Once t ≥ t_i the
layer's parameters get ``requires_grad = False``, leave the optimizer (through the returned
`Change`) and its BatchNorms switch to their running statistics; since freezing goes in forward
order, autograd then stops before the frozen prefix, so the backward pass gets cheaper. The
forward pass is unchanged (FreezeOut saves backward work only).

Defaults follow the authors' code: cubic schedule, scaled learning rates and t_0 = 0.8 "pre-cubed"
(the first layer freezes at 0.8³ ≈ 0.51 of training), the setting whose speed-ups the authors
report as free of accuracy cost. Our own baseline, not the authors' code.

How the per-layer learning rate is applied, without touching the optimizer: `fit()` (or the
user's loop) steps every parameter with the recipe's LR ``lr_at(progress)``; `after_backward`
keeps a copy of each training layer's parameters and `step` (right after ``optimizer.step()``)
scales the update the optimizer just made, p ← p_before + s_i · (p − p_before), with
s_i = (1/t_i) · c(t/t_i) / c(t) and c(x) = ½(1 + cos πx). SGD's update (momentum and weight decay
included; Adam's too) is linear in the LR and its momentum buffer does not depend on the LR, so
this equals stepping the layer with LR s_i · lr_at(t) exactly, and keeps one param group (so
checkpoints and resumes need nothing special). For a pure cosine recipe the layer's LR is exactly
FreezeOut's α_i(t); for other recipes (warm-up, step) it is the recipe reshaped by the same factor.
The copy costs one parameter-sized buffer and is counted as training time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..structure import structure_of
from ..structure.surgery import Change, ParamEdit
from .base import Method, Progress
from .registry import register_method

__all__ = ["FreezeOut", "freeze_times", "layers_in_order"]

_SCHEDULES = {"linear": 1, "squared": 2, "cubic": 3}

# The authors' defaults (ajbrock/FreezeOut README): cubic schedule, LR scaling, t_0 = 0.8 before
# cubing; their summary of the paper gives t_0 ≈ 0.512 (= 0.8³) as the practical default.
DEFAULT_T0 = 0.8


def freeze_times(num_layers: int, t_0: float, schedule: str = "cubic") -> list[float]:
    """t_i for layers i = 0..L (``num_layers`` = L + 1); the last layer gets 1 (never frozen)."""
    last = max(1, num_layers - 1)
    power = _SCHEDULES[schedule]
    return [(t_0 + (1 - t_0) * i / last) ** power for i in range(num_layers)]


def layers_in_order(model: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """FreezeOut's layers, in forward order: ``(name, member module paths)``, stem to classifier."""
    layers = structure_of(model).layers
    if len(layers) < 2:
        raise ValueError(
            f"FreezeOut freezes layers one after another, and {type(model).__name__} has fewer "
            "than two parameterised layers; use another method."
        )
    return layers


def _params(model: nn.Module, members: tuple[str, ...]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for path in members:
        for p in model.get_submodule(path).parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def _cos(x: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(1.0, x)))


def _eval_mode(module: nn.Module, args: Any) -> None:
    # FreezeOut runs frozen layers in eval mode (BN on running statistics), as the authors do.
    if module.training:
        module.train(False)


@register_method
@dataclass
class FreezeOut(Method):
    """FreezeOut: freeze layers one by one, in order, on a fixed schedule (a peer baseline).

    Args:
        t_0: sets when the first layer freezes: at f(t_0) of training (f = the schedule).
        schedule: ``"linear"``, ``"squared"`` or ``"cubic"`` spacing of the freeze times.
        scale_lr: scale each layer's initial LR by 1/t_i, so early-frozen layers move as far.
    """

    name: ClassVar[str] = "freezeout"
    t_0: float = DEFAULT_T0
    schedule: str = "cubic"
    scale_lr: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.t_0 <= 1:
            raise ValueError(f"freezeout.t_0 = {self.t_0} must lie in (0, 1].")
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"freezeout.schedule = {self.schedule!r}; choose one of: {', '.join(_SCHEDULES)}."
            )
        self.times: dict[str, float] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        self.frozen: list[str] = []
        # Per training layer: its LR factor this step and its parameters before the update.
        self._before: dict[str, tuple[float, list[tuple[nn.Parameter, Tensor]]]] = {}
        self._hooks: list[Any] = []

    # ------------------------------------------------------------------ hooks

    def setup(self, model: nn.Module, progress: Progress) -> None:
        layers = layers_in_order(model)
        self.members = dict(layers)
        self.times = dict(
            zip((n for n, _ in layers), freeze_times(len(layers), self.t_0, self.schedule))
        )
        for name in self.frozen:  # a resumed run: freeze again what was frozen
            self._freeze(model, name)
        self._emit({"kind": "fo_setup", "freeze_at": dict(self.times)})

    @torch.no_grad()
    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        self._before = {}
        for name, t_i in self.times.items():
            if t_i >= 1 or name in self.frozen:
                continue  # the classifier follows the recipe (factor 1)
            params = [p for p in _params(model, self.members[name]) if p.requires_grad]
            self._before[name] = (
                self.lr_scale(name, progress.fraction),
                [(p, p.detach().clone()) for p in params],
            )

    def step(self, model: nn.Module, progress: Progress) -> Change | None:
        with torch.no_grad():  # rescale this step's update: LR × s_i for layer i
            for scale, pairs in self._before.values():
                for p, before in pairs:
                    p.sub_(before).mul_(scale).add_(before)
        self._before = {}
        due = [
            n
            for n, t in self.times.items()
            if t < 1 and progress.fraction >= t and n not in self.frozen
        ]
        if not due:
            return None
        edits: list[ParamEdit] = []
        for name in due:
            params = [p for p in _params(model, self.members[name]) if p.requires_grad]
            self._freeze(model, name)
            edits += [ParamEdit(p, None) for p in params]
            self.frozen.append(name)
            self._emit(
                {
                    "kind": "freeze",
                    "unit": name,
                    "step": progress.step,
                    "freeze_at": self.times[name],
                }
            )
        return Change(removed=[f"{n} (frozen)" for n in due], edits=edits)

    def finish(self, model: nn.Module) -> Change | None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        return None

    # ------------------------------------------------------------------ helpers

    def _freeze(self, model: nn.Module, name: str) -> None:
        for p in _params(model, self.members[name]):
            p.requires_grad_(False)
            p.grad = None  # a stale gradient would only hold memory now
        for path in self.members[name]:
            module = model.get_submodule(path)
            self._hooks += [m.register_forward_pre_hook(_eval_mode) for m in module.modules()]

    def lr_scale(self, name: str, fraction: float) -> float:
        """FreezeOut's LR of layer `name` relative to the recipe's cosine at `fraction`."""
        t_i = self.times[name]
        if t_i >= 1:
            return 1.0
        base = 1 / t_i if self.scale_lr else 1.0
        return base * _cos(fraction / t_i) / max(_cos(fraction), 1e-12)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": list(self.frozen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = list(state["frozen"])
