"""Stochastic depth (Huang et al., ECCV 2016, arXiv 1603.09382): a peer baseline.

Every training step, each identity-shortcut residual block l survives with probability p_l and
is otherwise skipped for that step: its residual branch is not computed at all (the block is its
shortcut), so a skipped block saves its forward and backward work. The survival probability
decays linearly with depth, p_l = 1 − (l / L)(1 − p_L), from 1 at the input to ``p_last`` = p_L
at the last of the L blocks (the paper's "linear decay rule" with its default p_L = 0.5). At
evaluation every block runs with its residual branch scaled by p_l (its expected value during
training); at the end of training that scale is folded into the branch's last BatchNorm, so the
model handed back is an ordinary ResNet that computes the same function.

Blocks with a projection shortcut are never skipped (they change the tensor shape) and keep
p_l = 1; they still count in l and L, as in the paper. Our own baseline, not the authors' code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..models.layers import ConvBN
from ..models.resnet import BasicBlock, Bottleneck
from . import register_method
from .base import Method, Progress

__all__ = ["StochasticDepth", "survival_probabilities"]

# The paper's default final survival probability p_L (Huang et al. 2016, §4: "p_L = 0.5").
DEFAULT_P_LAST = 0.5


def survival_probabilities(num_blocks: int, p_last: float) -> list[float]:
    """p_l for blocks l = 1..L under the linear decay rule p_l = 1 − (l / L)(1 − p_L)."""
    return [1 - (i / num_blocks) * (1 - p_last) for i in range(1, num_blocks + 1)]


def _residual_blocks(model: nn.Module) -> list[tuple[str, str, BasicBlock | Bottleneck]]:
    """Live residual blocks ``(name, stage, block)`` in forward order (re-read every time)."""
    stages = getattr(model, "stages", None)
    if not callable(stages):
        raise ValueError(
            f"stochastic depth skips residual blocks, and {type(model).__name__} has none (it is "
            "not a leantrain ResNet; VGG has no shortcuts); use a ResNet or another method."
        )
    return [
        (f"{stage_name}.{i}", stage_name, block)
        for stage_name, stage in stages()
        for i, block in enumerate(stage)
        if isinstance(block, (BasicBlock, Bottleneck))
    ]


def _last_bn(block: BasicBlock | Bottleneck) -> nn.BatchNorm2d:
    last: ConvBN = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    return last.bn


@register_method
@dataclass
class StochasticDepth(Method):
    """Stochastic depth: skip random identity-shortcut blocks each step (a peer baseline).

    Args:
        p_last: survival probability p_L of the last block, in (0, 1]; p_l decays linearly from
            1 to it over the blocks (Huang et al.: 0.5).
        seed: offset added to the run's torch seed for the block-sampling generator.
    """

    name: ClassVar[str] = "stochastic_depth"
    p_last: float = DEFAULT_P_LAST
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.p_last <= 1:
            raise ValueError(
                f"stochastic_depth.p_last = {self.p_last} must lie in (0, 1]: it is the survival "
                "probability of the last block (the paper uses 0.5)."
            )
        self.survival: dict[str, float] = {}  # identity block name → p_l
        self._generator: torch.Generator | None = None
        self._resumed_skips: list[str] | None = None
        self._skipped_names: list[str] = []  # skipped in the next step
        self._skipped_sum = 0
        self._steps = 0
        self._events: list[dict[str, Any]] = []

    def setup(self, model: nn.Module, progress: Progress) -> None:
        blocks = _residual_blocks(model)
        probs = survival_probabilities(len(blocks), self.p_last)
        self.survival = {
            name: p for (name, _, block), p in zip(blocks, probs) if block.downsample is None
        }
        if not self.survival:
            raise ValueError("this ResNet has no identity-shortcut block to skip.")
        skips = set(self._resumed_skips or ())  # a resumed run: the next step's draw
        for name, _, block in blocks:
            block.skip = name in skips
            block.residual_scale = self.survival.get(name, 1.0)
        self._resumed_skips = None
        if self._generator is None:
            # Own generator: sampling must not shift the global stream (data order, init).
            self._generator = torch.Generator().manual_seed(torch.initial_seed() + self.seed)
        self._events.append({"kind": "sd_setup", "survival": dict(self.survival)})

    def step(self, model: nn.Module, progress: Progress) -> None:
        """Draw the blocks skipped in the next step (after this step's update)."""
        assert self._generator is not None, "setup() must run first"
        names = []
        for name, _, block in _residual_blocks(model):
            p = self.survival.get(name)
            if p is None:
                continue
            block.skip = bool(torch.rand((), generator=self._generator) >= p)
            if block.skip:
                names.append(name)
        self._skipped_names = names
        skipped = len(names)
        self._skipped_sum += skipped
        self._steps += 1
        if progress.epoch_ended:
            self._events.append(
                {
                    "kind": "sd_epoch",
                    "mean_skipped_blocks": self._skipped_sum / max(1, self._steps),
                    "identity_blocks": len(self.survival),
                }
            )
            self._skipped_sum = self._steps = 0
        return None

    def finish(self, model: nn.Module) -> None:
        """Stop skipping and fold each block's eval scale p_l into its last BN (exact)."""
        with torch.no_grad():
            for _, _, block in _residual_blocks(model):
                block.skip = False
                if block.residual_scale != 1.0:
                    bn = _last_bn(block)
                    bn.weight.mul_(block.residual_scale)
                    bn.bias.mul_(block.residual_scale)
                    block.residual_scale = 1.0
        return None

    def cost_key(self, model: nn.Module) -> Any:
        # Identity blocks of one stage cost the same, so the per-stage count of skipped blocks
        # determines the step's FLOPs: far fewer recounts than one per skip pattern.
        counts = Counter(stage for _, stage, b in _residual_blocks(model) if b.skip)
        return tuple(sorted(counts.items()))

    def events(self) -> list[dict[str, Any]]:
        out, self._events = self._events, []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": None if self._generator is None else self._generator.get_state(),
            "skipped": self._skipped_names,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._generator = torch.Generator()
            self._generator.set_state(state["generator"])
        self._resumed_skips = list(state.get("skipped") or [])
