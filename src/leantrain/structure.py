"""How a model describes what can be removed from it: droppable units and prunable channel sets.

Our VGG and ResNet models implement the `Prunable` protocol; a user's own model can implement the
same two methods. The description is rebuilt from the live model every time it is asked, so it
stays correct after earlier cuts (never cache it across a `Change`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from .models.layers import ConvBN, SelectLinear

__all__ = ["Unit", "ChannelSet", "Prunable", "units_of", "channel_sets_of", "stage_blocks_of"]


@dataclass(frozen=True)
class Unit:
    """A piece of the network that Learn&Drop may remove (arXiv 2604.23403).

    Attributes:
        name: dotted module path inside the model, e.g. ``"layer2.3"`` or ``"features.5"``.
        stage: the group the per-stage minimum counts over, e.g. ``"layer2"``.
        module: the live module.
        replacement: what takes the unit's place when dropped: ``nn.Identity()`` for an
            identity-shortcut block or an equal-width VGG conv, the projection shortcut for a
            downsampling block (only listed when asked for).
        kind: ``"identity"`` or ``"projection"``.
    """

    name: str
    stage: str
    module: nn.Module
    replacement: nn.Module
    kind: str = "identity"


@dataclass(frozen=True)
class ChannelSet:
    """Output channels of one conv+BN that DCP selects, and the modules that read them.

    Attributes:
        name: dotted path of the producing `ConvBN`, e.g. ``"layer1.0.conv1"``.
        producer: the `ConvBN` whose output channels are selected.
        consumers: modules whose input channels are exactly these channels (`ConvBN` or
            `SelectLinear`); in slice mode their ``in_index`` follows the selection.
    """

    name: str
    producer: ConvBN
    consumers: tuple[ConvBN | SelectLinear, ...]

    def __len__(self) -> int:
        return self.producer.out_channels


@runtime_checkable
class Prunable(Protocol):
    """The structure protocol: a model that lists its droppable units and prunable channels."""

    def droppable_units(self, include_downsampling: bool = False) -> list[Unit]:
        """Units whose removal leaves every tensor shape unchanged (plus downsampling blocks)."""
        ...

    def channel_sets(self) -> list[ChannelSet]:
        """Prunable channel sets; residual paths, stem and classifier are never listed."""
        ...

    # Optional, for per-stage minimums: ``stage_blocks() -> dict[str, list[str]]``, the names
    # of each stage's live blocks, droppable or not (see `stage_blocks_of`).


def _require_prunable(model: nn.Module) -> Prunable:
    if not isinstance(model, Prunable):
        raise TypeError(
            f"{type(model).__name__} does not describe its structure: implement "
            "droppable_units() and channel_sets() (see leantrain.structure.Prunable), or use a "
            "model from leantrain.create_model()."
        )
    return model


def units_of(model: nn.Module, include_downsampling: bool = False) -> list[Unit]:
    """The model's droppable units, with a clear error for models without the protocol."""
    return _require_prunable(model).droppable_units(include_downsampling)


def channel_sets_of(model: nn.Module) -> list[ChannelSet]:
    """The model's prunable channel sets, with a clear error for models without the protocol."""
    return _require_prunable(model).channel_sets()


def stage_blocks_of(model: nn.Module) -> dict[str, list[str]]:
    """Names of each stage's live blocks, droppable or not.

    Uses the model's own ``stage_blocks()`` when it has one (a VGG stage's widening conv is no
    unit but still a block of its stage); otherwise the units, downsampling ones included,
    grouped by stage, which for a ResNet is every live block.
    """
    own = getattr(model, "stage_blocks", None)
    if callable(own):
        return own()
    out: dict[str, list[str]] = {}
    for u in units_of(model, include_downsampling=True):
        out.setdefault(u.stage, []).append(u.name)
    return out
