"""The structure's types: droppable `Unit`s, prunable `ChannelSet`s, `Excluded` parts with their
reasons, the `Structure` that holds them, and the errors of finding one.

Methods read only these (arXiv 2604.23403's units for Learn&Drop, arXiv 2007.01486's channels for
DCP), never a model's internals; `leantrain.structure.discover` builds them from a traced forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "ChannelSet", "Excluded", "ExampleInputError", "ExampleInputTypeError", "Structure",
    "StructureError", "Unit", "format_structure",
]


class StructureError(ValueError):
    """A model's structure cannot be found (untraceable forward, no example input)."""


class ExampleInputError(StructureError):
    """The example input is not a float batch ``(N, C, H, W)`` nor a sample shape ``(C, H, W)``."""


class ExampleInputTypeError(ExampleInputError, TypeError):
    """The example input has the wrong type (an integer tensor, a string, an array)."""


@dataclass(frozen=True)
class Unit:
    """A piece of the network that Learn&Drop may remove (arXiv 2604.23403).

    Attributes:
        name: dotted path of the unit (its first member), e.g. ``"layer2.3"`` or ``"features.7"``.
        stage: the group the per-stage minimum counts over, e.g. ``"layer2"``.
        members: dotted paths of the modules the unit consists of: one residual block, or the
            conv, BN and activation children of a Sequential (a torchvision VGG layer).
        modules: the live member modules, in forward order.
        replacements: what takes each member's place when the unit is dropped (``nn.Identity``,
            an activation for ``act(x + branch(x))``, or the projection shortcut for a
            downsampling block).
        kind: ``"identity"`` or ``"projection"`` (a block with a projection shortcut, listed
            only when asked for).
        branch_bn: the BatchNorm whose output is the residual branch added to the shortcut,
            when there is one (stochastic depth scales it); None for VGG layers.
        residual: True for a residual block, False for a conv → BN → activation run.
        branch_only: the members compute the residual branch ``f(x)`` alone and the add
            ``x + f(x)`` is written outside them (in a parent's forward or a loop); dropped, each
            member becomes a `ZeroBranch`, so the add passes ``x`` on.
    """

    name: str
    stage: str
    members: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    replacements: tuple[nn.Module, ...]
    kind: str = "identity"
    branch_bn: nn.Module | None = None
    residual: bool = True
    branch_only: bool = False

    @property
    def module(self) -> nn.Module:
        """The unit as one module (a container view when it has several members)."""
        return self.modules[0] if len(self.modules) == 1 else nn.ModuleList(self.modules)

    @property
    def replacement(self) -> nn.Module:
        """The replacement as one module (a container view when it has several members)."""
        if len(self.replacements) == 1:
            return self.replacements[0]
        return nn.Sequential(*self.replacements)

    @property
    def first(self) -> nn.Module:
        """The member that receives the unit's input."""
        return self.modules[0]

    @property
    def last(self) -> nn.Module:
        """The member that returns the unit's output."""
        return self.modules[-1]

    def parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of every member (each once)."""
        seen: set[int] = set()
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p


@dataclass(frozen=True)
class ChannelSet:
    """Output channels of one conv+BN that DCP selects, and every layer that reads them.

    Attributes:
        name: dotted path of the producer (its conv, or the conv+BN wrapper holding it).
        conv: the producing convolution.
        bn: the BatchNorm right after it (DCP's utilities are measured at its output).
        followers: ``(depthwise conv, its BN)`` pairs that follow the selection channel by
            channel (MobileNet's expansion channels through the depthwise conv).
        consumers: convolutions and linear layers whose input channels are these channels.
        gates: convolutions whose output channels scale these channels one to one (the
            expanding conv of a squeeze-and-excitation gate, ``x * sigmoid(conv(...))``): they
            compute only the selected outputs.
    """

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    followers: tuple[tuple[nn.Conv2d, nn.BatchNorm2d], ...] = ()
    consumers: tuple[nn.Module, ...] = ()
    gates: tuple[nn.Conv2d, ...] = ()

    def __len__(self) -> int:
        return self.conv.out_channels

    @property
    def device(self) -> torch.device:
        return self.conv.weight.device

    def layers(self) -> Iterator[nn.Module]:
        """Every module that takes part in the selection."""
        yield self.conv
        yield self.bn
        for conv, bn in self.followers:
            yield conv
            yield bn
        yield from self.consumers
        yield from self.gates

    def select(
        self, index: Tensor | None, active: Tensor | None = None, mode: str = "slice"
    ) -> None:
        """Compute only channels ``index`` (None: all) from the next forward on.

        Args:
            index: sorted channel indices to compute.
            active: positions within ``index`` of the selected channels; the rest are padding,
                gated to zero (slice mode).
            mode: ``"slice"`` gathers the weights; ``"mask"`` computes all channels and zeroes
                the unselected ones after BN (the authors' reference computation).
        """
        for conv, bn in ((self.conv, self.bn), *self.followers):
            conv.out_index = index
            conv.gate_mode = mode
            bn.out_index = index
            bn.out_active = active if mode == "slice" else None
            bn.gate_mode = mode
        for conv, _ in self.followers:
            conv.depthwise_follow = True
        for c in self.consumers:
            c.in_index = index if mode == "slice" else None
        for gate in self.gates:  # in mask mode the full gate scales zeroed channels: the same
            gate.out_index = index
            gate.gate_mode = mode

    def clear(self) -> None:
        """Back to full width (no selection)."""
        self.select(None)


@dataclass(frozen=True)
class Excluded:
    """A part of the model that is not pruned or dropped, and why.

    Attributes:
        name: dotted module path.
        what: ``"channels"`` (its output channels are not a prunable set) or ``"unit"`` (it
            cannot be dropped).
        reason: one line.
    """

    name: str
    what: str
    reason: str


@dataclass
class Structure:
    """Everything a method may change in a model.

    Attributes:
        units: droppable units in forward order, downsampling ones (kind ``"projection"``)
            included; `droppable` filters them.
        channel_sets: prunable channel sets in forward order.
        excluded: what was left out, with reasons.
        stages: stage name → names of its live blocks, droppable or not (for per-stage minimums).
        input_shape: ``(C, H, W)`` of one sample, as given to `leantrain.prepare`.
        macs: forward MACs per sample of each unit and of the whole model (for inspection).
        layers: every parameterised part in forward order as ``(name, member paths)``: each
            unit or block whole, a conv with its BN, any other layer alone (FreezeOut's layers).
        classifier: path of the last layer before the output (never pruned by peers).
        notes: what the user should know about how the model was read (e.g. that its forward
            branches on ``self.training`` and the training branch was traced).
    """

    units: list[Unit]
    channel_sets: list[ChannelSet]
    excluded: list[Excluded] = field(default_factory=list)
    stages: dict[str, list[str]] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    macs: dict[str, int] = field(default_factory=dict)
    layers: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    classifier: str | None = None
    notes: list[str] = field(default_factory=list)

    def droppable(self, include_downsampling: bool = False) -> list[Unit]:
        """Units whose removal keeps every shape (plus downsampling blocks on request)."""
        return [u for u in self.units if include_downsampling or u.kind == "identity"]

    def channel_set(self, name: str) -> ChannelSet:
        """The channel set called `name`."""
        for s in self.channel_sets:
            if s.name == name:
                return s
        raise KeyError(f"no channel set {name!r}; this model has {[s.name for s in self.channel_sets]}")

    def __str__(self) -> str:
        return format_structure(self)


def format_structure(s: Structure) -> str:
    """A readable listing: units with their share of MACs, channel sets, exclusions."""
    total = s.macs.get("", 0)
    lines = [f"Units ({len(s.units)}):"]
    for u in s.units:
        share = f"{100 * s.macs.get(u.name, 0) / total:5.1f}% MACs" if total else ""
        extra = "" if u.kind == "identity" else "  (downsampling: only with include_downsampling)"
        lines.append(f"  {u.name:<28} stage {u.stage:<14} {share}{extra}")
    lines.append(f"Channel sets ({len(s.channel_sets)}, {sum(len(c) for c in s.channel_sets)} channels):")
    for c in s.channel_sets:
        follow = f", follows through {len(c.followers)} depthwise" if c.followers else ""
        lines.append(f"  {c.name:<28} {len(c):5d} channels → {len(c.consumers)} consumer(s){follow}")
    lines.append(f"Excluded ({len(s.excluded)}):")
    for e in s.excluded:
        lines.append(f"  {e.name:<28} [{e.what}] {e.reason}")
    lines += [f"Note: {note}" for note in s.notes]
    return "\n".join(lines)
