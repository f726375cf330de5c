"""Prune-then-fine-tune with Torch-Pruning (Fang et al., CVPR 2023, arXiv 2301.12900): a peer.

The classic recipe, fitted into one run of the same budget as every other row: train densely for
the first ``at`` of training, prune once with Torch-Pruning's dependency graph and Group-L1
importance (``GroupMagnitudeImportance(p=1)``: a channel group's score is the mean L1 norm of all
its coupled weights) until the network's forward MACs fall by ``flops_reduction``, then keep
training the pruned network (fine-tuning) for the rest of the budget with the same LR schedule.

Choices, stated: the classifier's outputs are never pruned (``ignored_layers``); pruning is
uniform (every group loses the same fraction, Torch-Pruning's default) unless
``global_pruning=True``; the FLOPs target is met progressively, as Torch-Pruning's own
reproduction scripts do, by pruning ``1 / iterative_steps`` of the channels per step until the
target is reached. Torch-Pruning replaces the pruned parameters by new, smaller ones and leaves the
optimizer to the user; its prune-then-fine-tune recipe starts the fine-tuning with a fresh
optimizer, so the returned `Change` re-keys the optimizer to the new parameters and clears its
state (momentum restarts for every parameter). Torch-Pruning also prunes the residual stream
(stem, downsampling shortcuts, last convs of blocks), which our saved-architecture format cannot
describe: the model is marked ``external_surgery`` and the run saves its weights only.

Needs the optional dependency: ``pip install 'leantrain[peers]'`` (``torch-pruning``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..cost import count_macs
from ..structure import bump_version, structure_of
from ..structure.record import mark_external_surgery
from ..structure.surgery import Change, ParamEdit, remap_optimizer
from .base import Method, Progress
from .registry import register_method

__all__ = ["TPPrune", "prune_to_flops"]


@dataclass
class _FreshStateChange(Change):
    """Re-key the optimizer to the new parameters, then clear its state (a fresh optimizer)."""

    def apply_to(self, optimizer: torch.optim.Optimizer) -> None:
        remap_optimizer(optimizer, self)
        optimizer.state.clear()


def _classifier(model: nn.Module) -> nn.Module:
    """The last layer before the output, from the discovered structure."""
    name = structure_of(model).classifier
    if name is None:
        raise ValueError(
            f"tp_prune keeps the classifier's outputs, but no layer of {type(model).__name__} "
            "was found before its output."
        )
    return model.get_submodule(name)


def prune_to_flops(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    flops_reduction: float,
    *,
    global_pruning: bool = False,
    iterative_steps: int = 100,
    max_pruning_ratio: float = 0.9,
) -> dict[str, Any]:
    """Prune `model` in place with Torch-Pruning until its forward MACs fall by `flops_reduction`.

    Args:
        model: the network (its training flags are restored afterwards).
        input_shape: ``(C, H, W)`` of one sample, for tracing and counting.
        flops_reduction: fraction of the forward MACs (and FLOPs) to remove, in (0, 1).
        global_pruning: rank channel groups across layers instead of pruning each equally.
        iterative_steps: granularity: each step prunes ``1 / iterative_steps`` of the channels.
        max_pruning_ratio: no group loses more than this fraction of its channels.

    Returns:
        ``macs_before``, ``macs_after``, ``steps`` (pruning steps taken).
    """
    import torch_pruning as tp

    device = next(model.parameters()).device
    training = {m: m.training for m in model.modules()}
    model.eval()  # tracing runs a forward pass: BN running statistics must not move
    try:
        example = torch.randn(1, *input_shape, device=device)
        before = count_macs(model, input_shape)
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            global_pruning=global_pruning,
            pruning_ratio=1.0,
            max_pruning_ratio=max_pruning_ratio,
            iterative_steps=iterative_steps,
            ignored_layers=[_classifier(model)],
        )
        macs, steps = before, 0
        while macs > (1 - flops_reduction) * before and pruner.current_step < iterative_steps:
            pruner.step()
            steps += 1
            macs = count_macs(model, input_shape)
    finally:
        for m, flag in training.items():
            m.training = flag
    return {"macs_before": before, "macs_after": macs, "steps": steps}


@register_method
@dataclass
class TPPrune(Method):
    """Train dense, prune once with Torch-Pruning (Group L1) to a FLOPs target, fine-tune.

    Args:
        at: fraction of training done densely before the one-shot prune, in [0, 1).
        flops_reduction: fraction of the dense forward FLOPs removed by the prune, in (0, 1);
            benchmark suites set it to DCP's compact model at the same p.
        global_pruning: rank channel groups globally instead of pruning every group equally.
        iterative_steps: granularity of the search for the FLOPs target (channels per step).
        max_pruning_ratio: no channel group loses more than this fraction.
    """

    name: ClassVar[str] = "tp_prune"
    at: float = 0.3
    flops_reduction: float = 0.5
    global_pruning: bool = False
    iterative_steps: int = 100
    max_pruning_ratio: float = 0.9

    def __post_init__(self) -> None:
        if importlib.util.find_spec("torch_pruning") is None:
            raise ValueError(
                "method tp_prune needs the optional dependency torch-pruning; install it with "
                "pip install 'leantrain[peers]' (or pip install torch-pruning)."
            )
        if not 0 <= self.at < 1:
            raise ValueError(f"tp_prune.at = {self.at} must be a fraction of training in [0, 1).")
        if not 0 < self.flops_reduction < 1:
            raise ValueError(
                f"tp_prune.flops_reduction = {self.flops_reduction} must lie in (0, 1): the "
                "fraction of forward FLOPs removed."
            )
        if self.iterative_steps < 1 or not 0 < self.max_pruning_ratio < 1:
            raise ValueError("tp_prune needs iterative_steps ≥ 1 and max_pruning_ratio in (0, 1).")
        self.done = False
        self._input_shape: tuple[int, int, int] | None = None

    def setup(self, model: nn.Module, progress: Progress) -> None:
        _classifier(model)
        self._input_shape = structure_of(model).input_shape  # type: ignore[assignment]

    def step(self, model: nn.Module, progress: Progress) -> Change | None:
        if self.done or progress.fraction < self.at:
            return None
        assert self._input_shape is not None, "setup() must run first"
        before = dict(model.named_parameters())
        info = prune_to_flops(
            model,
            self._input_shape,
            self.flops_reduction,
            global_pruning=self.global_pruning,
            iterative_steps=self.iterative_steps,
            max_pruning_ratio=self.max_pruning_ratio,
        )
        self.done = True
        bump_version(model)
        # Recorded on the model: leantrain.models.files cannot rebuild a residual stream pruned this way.
        mark_external_surgery(model, "pruned by torch-pruning (residual widths changed)")
        after = dict(model.named_parameters())
        edits = [ParamEdit(p, after[n]) for n, p in before.items() if after.get(n) is not p]
        self._emit(
            {
                "kind": "tp_prune",
                "step": progress.step,
                "forward_flops_before": 2 * info["macs_before"],
                "forward_flops_after": 2 * info["macs_after"],
                "pruning_steps": info["steps"],
            }
        )
        return _FreshStateChange(
            removed=[
                f"torch-pruning: forward MACs {info['macs_before']:,} → {info['macs_after']:,}"
            ],
            edits=edits,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state["done"])
