"""Fixed-width baseline: train a network whose prunable channels are cut before the first step.

The control every in-training channel-pruning result needs. Liu et al. ("Rethinking the Value of
Network Pruning", ICLR 2019, arXiv 1810.05270) showed that a pruned architecture trained from
scratch often matches the pruned-and-fine-tuned network, so a method's accuracy gap should be read
against a network of the same widths trained densely from the start. It also bounds a method's
speed: no per-step selection can train faster than a static network of the widths it computes.

The widths are either uniform (every channel set keeps ``round(C · (1 - p))`` channels) or given
per channel set (e.g. the final widths of a DCP run), optionally rounded up to a multiple. Which
channels are kept does not matter at initialisation (the first ones are). The cut happens in
`setup`, which returns the `Change`, so `fit()` re-keys the optimizer; in an own loop, build the
optimizer after `setup` or apply it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..structure import ChannelSet, channel_sets_of
from ..structure.surgery import Change, prune_channels
from .base import Method, Progress
from .dcp import computed_width
from .registry import register_method

__all__ = ["StaticWidths"]


@register_method
@dataclass
class StaticWidths(Method):
    """Cut every prunable channel set to a fixed width before training; train it densely.

    Args:
        p: fraction of each channel set's channels removed (uniform), in [0, 1).
        widths: explicit kept width per channel set, in the model's channel-set order (see
            ``leantrain.structure.channel_sets_of``); overrides ``p`` when given.
        multiple: round each width up to a multiple of this, never above the layer width.
            With a DCP run's final widths and 8, this is the network DCP's slice mode computes
            (``DCP.compute_multiple``): the speed bound of that run.
        min_channels: no channel set keeps fewer than this (uniform widths only).
    """

    name: ClassVar[str] = "static"
    p: float = 0.5
    widths: list[int] = field(default_factory=list)
    multiple: int = 1
    min_channels: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.p < 1:
            raise ValueError(f"static.p = {self.p} is outside [0, 1): p is the fraction of channels removed.")
        if self.multiple < 1 or self.min_channels < 1:
            raise ValueError("static.multiple and static.min_channels must be ≥ 1.")
        self._cut = False

    def target_widths(self, model: nn.Module) -> list[int]:
        """The kept width of every channel set of `model`, in `channel_sets_of` order."""
        return self._widths(channel_sets_of(model))

    def _widths(self, sets: list[ChannelSet]) -> list[int]:
        if not sets:
            raise ValueError("this model has no prunable channels, so there is nothing to cut; use --method none.")
        if self.widths:
            if len(self.widths) != len(sets):
                raise ValueError(
                    f"static.widths lists {len(self.widths)} widths but this model has {len(sets)} "
                    f"channel sets ({sets[0].name} … {sets[-1].name}); give one width per set."
                )
            for s, w in zip(sets, self.widths):
                if not 1 <= w <= len(s):
                    raise ValueError(f"static.widths: {w} for {s.name} is outside 1..{len(s)}.")
            wanted = list(self.widths)
        else:
            wanted = [max(self.min_channels, round(len(s) * (1 - self.p))) for s in sets]
        # The same rounding as DCP's slice mode, so DCP's final widths with its compute_multiple
        # give exactly the network it computed.
        return [computed_width(w, len(s), self.multiple) for s, w in zip(sets, wanted)]

    def setup(self, model: nn.Module, progress: Progress) -> Change | None:
        if self._cut:  # resumed: the checkpoint's model is already cut
            return None
        sets = channel_sets_of(model)
        widths = self._widths(sets)
        self._cut = True
        keep = {
            s.name: torch.arange(w, device=s.device)
            for s, w in zip(sets, widths)
            if w < len(s)
        }
        if not keep:
            return None
        change = prune_channels(model, keep)
        self._emit({"kind": "static_cut", "widths": widths, "removed": change.removed})
        return change

    def state_dict(self) -> dict[str, Any]:
        return {"cut": self._cut}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cut = bool(state["cut"])
