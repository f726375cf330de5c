"""Stochastic depth (Huang et al., ECCV 2016, arXiv 1603.09382): a peer baseline.

Every training step, each identity-shortcut residual block l survives with probability p_l and
is otherwise skipped for that step: its residual branch is not computed at all (the block is its
replacement, the shortcut), so a skipped block saves its forward and backward work. The survival
probability decays linearly with depth, p_l = 1 − (l / L)(1 − p_L), from 1 at the input to
``p_last`` = p_L at the last of the L blocks (the paper's "linear decay rule" with its default
p_L = 0.5). At evaluation every block runs with its residual branch scaled by p_l (its expected
value during training); at the end of training that scale is folded into the branch's last
BatchNorm, so the model handed back computes the same function with no hooks.

Blocks come from the discovered `Structure` (residual units, in forward order). Blocks with a
projection shortcut are never skipped (they change the tensor shape) and keep p_l = 1; they still
count in l and L, as in the paper. A block whose branch does not end in a BatchNorm cannot be
scaled for evaluation, so it is never skipped either (listed in the setup event). Our own
baseline, not the authors' code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..structure import Unit, structure_of
from .base import Method, Progress
from .registry import register_method

__all__ = ["StochasticDepth", "survival_probabilities"]

# The paper's default final survival probability p_L (Huang et al. 2016, §4: "p_L = 0.5").
DEFAULT_P_LAST = 0.5


def survival_probabilities(num_blocks: int, p_last: float) -> list[float]:
    """p_l for blocks l = 1..L under the linear decay rule p_l = 1 − (l / L)(1 − p_L)."""
    return [1 - (i / num_blocks) * (1 - p_last) for i in range(1, num_blocks + 1)]


def _residual_blocks(model: nn.Module) -> list[Unit]:
    """Live residual blocks in forward order, downsampling ones included."""
    blocks = [u for u in structure_of(model).units if u.residual and len(u.modules) == 1]
    if not blocks:
        raise ValueError(
            f"stochastic depth skips residual blocks, and {type(model).__name__} has none "
            "(a VGG has no shortcuts); use a ResNet-like model or another method."
        )
    return blocks


class _Skippable:
    """A block's forward that returns its replacement's output while ``skip`` is set (training
    only): the residual branch is then not computed at all."""

    def __init__(self, block: nn.Module, replacement: nn.Module) -> None:
        self.block = block
        self.forward = block.forward
        self.replacement = replacement
        self.skip = False

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.skip and self.block.training:
            return self.replacement(*args, **kwargs)
        return self.forward(*args, **kwargs)


def _scale_in_eval(p: float) -> Any:
    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor | None:
        return None if module.training else out * p

    return hook


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
        self.survival: dict[str, float] = {}  # skippable block name → p_l
        self._generator: torch.Generator | None = None
        self._resumed_skips: list[str] | None = None
        self._skipped_names: list[str] = []  # skipped in the next step
        self._skipped_sum = 0
        self._steps = 0
        self._gates: dict[str, _Skippable] = {}
        self._stages: dict[str, str] = {}
        self._handles: list[Any] = []

    def setup(self, model: nn.Module, progress: Progress) -> None:
        blocks = _residual_blocks(model)
        probs = survival_probabilities(len(blocks), self.p_last)
        skippable = [(u, p) for u, p in zip(blocks, probs) if u.kind == "identity" and u.branch_bn is not None]
        if not skippable:
            raise ValueError("this model has no identity-shortcut block whose branch ends in a "
                             "BatchNorm, so stochastic depth has nothing to skip.")
        self.survival = {u.name: p for u, p in skippable}
        skips = set(self._resumed_skips or ())  # a resumed run: the next step's draw
        self._detach()
        for u, p in skippable:
            gate = _Skippable(u.module, u.replacement)
            gate.skip = u.name in skips
            u.module.forward = gate  # instance attribute: the class and parameters stay
            self._gates[u.name] = gate
            self._stages[u.name] = u.stage
            assert u.branch_bn is not None
            self._handles.append(u.branch_bn.register_forward_hook(_scale_in_eval(p)))
        self._skipped_names = sorted(skips)
        self._resumed_skips = None
        if self._generator is None:
            # Own generator: sampling must not shift the global stream (data order, init).
            self._generator = torch.Generator().manual_seed(torch.initial_seed() + self.seed)
        self._emit({
            "kind": "sd_setup", "survival": dict(self.survival),
            "never_skipped": [u.name for u in blocks if u.name not in self.survival],
        })

    def step(self, model: nn.Module, progress: Progress) -> None:
        """Draw the blocks skipped in the next step (after this step's update)."""
        assert self._generator is not None, "setup() must run first"
        names = []
        for name, gate in self._gates.items():
            gate.skip = bool(torch.rand((), generator=self._generator) >= self.survival[name])
            if gate.skip:
                names.append(name)
        self._skipped_names = names
        self._skipped_sum += len(names)
        self._steps += 1
        if progress.epoch_ended:
            self._emit(
                {
                    "kind": "sd_epoch",
                    "mean_skipped_blocks": self._skipped_sum / max(1, self._steps),
                    "identity_blocks": len(self.survival),
                }
            )
            self._skipped_sum = self._steps = 0
        return None

    def finish(self, model: nn.Module) -> None:
        """Stop skipping and fold each block's eval scale p_l into its branch's BN (exact)."""
        blocks = {u.name: u for u in _residual_blocks(model)}
        self._detach()
        with torch.no_grad():
            for name, p in self.survival.items():
                bn = blocks[name].branch_bn
                if p != 1.0 and bn is not None:
                    bn.weight.mul_(p)
                    bn.bias.mul_(p)
        self.survival = {}
        return None

    def _detach(self) -> None:
        for gate in self._gates.values():
            gate.block.__dict__.pop("forward", None)
        for h in self._handles:
            h.remove()
        self._gates, self._handles = {}, []

    def cost_key(self, model: nn.Module) -> Any:
        # Identity blocks of one stage cost the same, so the per-stage count of skipped blocks
        # determines the step's FLOPs: far fewer recounts than one per skip pattern.
        counts = Counter(self._stages[n] for n, g in self._gates.items() if g.skip)
        return tuple(sorted(counts.items()))

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
