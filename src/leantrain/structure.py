"""What can be removed from a model: droppable units and prunable channel sets, as a `Structure`.

The structure is *discovered* from the model's own forward by `leantrain.prepare` (see
`leantrain.discover`, which traces it with torch.fx), for leantrain's models and a user's alike.
A model may instead describe itself by defining ``droppable_units()`` and ``channel_sets()``
(the override for what tracing cannot see). Methods read only the `Structure`, never a model's
internals.

The structure is cached on the model and found again after every structural cut (surgery bumps
the model's structure version), so it always describes the live network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from .models.layers import SelectLinear, SliceBatchNorm2d, SliceConv2d, make_sliceable

__all__ = [
    "prepare",
    "Unit",
    "ChannelSet",
    "Excluded",
    "Structure",
    "StructureError",
    "ExampleInputError",
    "ExampleInputTypeError",
    "check_example_input",
    "structure_of",
    "units_of",
    "channel_sets_of",
    "stage_blocks_of",
    "bump_version",
    "set_example_input",
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
    """

    name: str
    stage: str
    members: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    replacements: tuple[nn.Module, ...]
    kind: str = "identity"
    branch_bn: nn.Module | None = None
    residual: bool = True

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
    """

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    followers: tuple[tuple[nn.Conv2d, nn.BatchNorm2d], ...] = ()
    consumers: tuple[nn.Module, ...] = ()

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
    """

    units: list[Unit]
    channel_sets: list[ChannelSet]
    excluded: list[Excluded] = field(default_factory=list)
    stages: dict[str, list[str]] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    macs: dict[str, int] = field(default_factory=dict)
    layers: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    classifier: str | None = None

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
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the cache


def set_example_input(model: nn.Module, example: Tensor | Sequence[int]) -> None:
    """Record the per-sample input shape ``(C, H, W)`` discovery traces the model with."""
    shape = tuple(example.shape[1:]) if isinstance(example, Tensor) else tuple(int(d) for d in example)
    if len(shape) < 1 or any(d < 1 for d in shape):
        raise StructureError(f"example input shape {shape} is not a (C, H, W) sample shape.")
    model.__dict__["_leantrain_input"] = shape
    bump_version(model)


def check_example_input(example: object) -> None:
    """Refuse what cannot be an example input, with the fix: an integer tensor, a tensor that is
    not a batch ``(N, C, H, W)``, a shape that is not three positive ints ``(C, H, W)``.

    Raises:
        ExampleInputTypeError: neither a tensor nor a sequence of ints, or an integer tensor.
        ExampleInputError: the wrong number of dimensions, or an empty one.
    """
    if isinstance(example, Tensor):
        _check_example_tensor(example)
    elif isinstance(example, Sequence) and not isinstance(example, (str, bytes)):
        _check_example_shape(tuple(example))
    else:
        raise ExampleInputTypeError(
            f"example_input is a {type(example).__name__}; pass a float batch tensor such as "
            "torch.zeros(1, 3, 32, 32), or one sample's shape (C, H, W) as a tuple of ints."
        )


def _check_example_tensor(x: Tensor) -> None:
    shape = tuple(x.shape)
    if not x.is_floating_point():
        raise ExampleInputTypeError(
            f"example_input is a {x.dtype} tensor, but the model trains on floats; pass a batch "
            "as the model gets it, e.g. images.float() / 255."
        )
    if x.dim() != 4:
        fix = ("add the batch dimension: x.unsqueeze(0)" if x.dim() == 3 else
               "pass a batch of inputs such as torch.zeros(1, 3, 32, 32), or one sample's "
               "shape (C, H, W) as a tuple of ints")
        raise ExampleInputError(
            f"example_input has shape {shape}, which is not a batch (N, C, H, W); {fix}."
        )
    if any(d < 1 for d in shape):
        raise ExampleInputError(
            f"example_input has shape {shape} with an empty dimension; pass a batch of at "
            "least one input, e.g. torch.zeros(1, 3, 32, 32)."
        )


def _check_example_shape(shape: tuple[object, ...]) -> None:
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ExampleInputTypeError(
            f"example_input = {shape} is not a shape of ints; pass one sample's shape (C, H, W) "
            "such as (3, 32, 32), or a float batch tensor."
        )
    if len(shape) == 4:
        raise ExampleInputError(
            f"example_input = {shape} has 4 numbers, but a shape is one sample's (C, H, W); drop "
            f"the batch size, {shape[1:]}, or pass a batch tensor, torch.zeros{shape}."
        )
    if len(shape) != 3 or any(d < 1 for d in shape):  # type: ignore[operator]
        raise ExampleInputError(
            f"example_input = {shape} is not one sample's shape (C, H, W) of three positive "
            "ints; pass e.g. (3, 32, 32), or a float batch such as torch.zeros(1, 3, 32, 32)."
        )


def example_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The recorded per-sample input shape, or one derived from ``model.arch``, or None."""
    shape = model.__dict__.get("_leantrain_input")
    if shape is not None:
        return shape
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "in_channels" in arch and "input_size" in arch:
        size = int(arch["input_size"])
        return (int(arch["in_channels"]), size, size)
    return None


def bump_version(model: nn.Module) -> None:
    """Mark the model's structure as changed (surgery calls this after every cut)."""
    model.__dict__["_leantrain_version"] = model.__dict__.get("_leantrain_version", 0) + 1


def prepare(model: nn.Module, example_input: Tensor | Sequence[int] | None = None) -> Structure:
    """Find what Learn&Drop and DCP may change in `model`, and make it sliceable, in place.

    Traces the forward once with torch.fx (see `leantrain.discover`). The model keeps its class,
    forward, parameter tensors and state-dict keys; only the convs, BNs and linears that take part
    in a channel set change class to their sliceable subclasses. Calling it again is cheap.

    Args:
        model: any ``nn.Module`` whose forward torch.fx can trace.
        example_input: a float batch ``(N, C, H, W)`` the model accepts (or the per-sample shape
            ``(C, H, W)``); not needed for models from `leantrain.create_model`.

    Returns:
        The `Structure`; ``print(structure)`` lists units, channel sets and exclusions.

    Raises:
        StructureError: the forward cannot be traced or does not run on the example.
        ExampleInputError: the example is not a float batch ``(N, C, H, W)`` nor a sample
            shape ``(C, H, W)`` (`ExampleInputTypeError`, also a TypeError, for wrong types).
    """
    if example_input is None:
        return structure_of(model)
    check_example_input(example_input)
    set_example_input(model, example_input)
    try:
        return structure_of(model)
    except StructureError:
        clearer = _rejected(model, example_shape(model) or ())
        if clearer is None:
            raise
        raise clearer from None


def _rejected(model: nn.Module, shape: tuple[int, ...]) -> StructureError | None:
    """A clearer error when the model's first convolution takes other channels than the example
    has (the most common rejected input: an RGB batch for a grey model or back)."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or not shape or first[1].in_channels == shape[0]:
        return None
    name, conv = first
    return ExampleInputError(
        f"{type(model).__name__} takes {conv.in_channels} input channels (its first convolution "
        f"{name} has in_channels = {conv.in_channels}) but example_input has {shape[0]}; pass "
        f"a batch shaped (N, {conv.in_channels}, H, W)."
    )


def structure_of(model: nn.Module) -> Structure:
    """The model's current `Structure`, discovered (or described by the model) and cached.

    Raises:
        StructureError: the forward cannot be traced, or no example input shape is known.
    """
    # Surgery bumps the version; the module identities catch any other edit of the module tree
    # (a user's own replacement of a layer), so a stale structure is never returned.
    version = (model.__dict__.get("_leantrain_version", 0), tuple(map(id, model.modules())))
    cached = model.__dict__.get("_leantrain_structure")
    if cached is not None and cached[0] == version:
        return cached[1]
    from .discover import discover  # discovery imports this module

    s = discover(model)
    for cs in s.channel_sets:
        for layer in cs.layers():
            make_sliceable(layer)
    model.__dict__["_leantrain_structure"] = (version, s)
    return s


def units_of(model: nn.Module, include_downsampling: bool = False) -> list[Unit]:
    """The model's droppable units."""
    return structure_of(model).droppable(include_downsampling)


def channel_sets_of(model: nn.Module) -> list[ChannelSet]:
    """The model's prunable channel sets."""
    return structure_of(model).channel_sets


def stage_blocks_of(model: nn.Module) -> dict[str, list[str]]:
    """Names of each stage's live blocks, droppable or not."""
    return structure_of(model).stages


def sliceable_layers(model: nn.Module) -> Iterator[nn.Module]:
    """Every sliceable layer of the model (to clear selections)."""
    for m in model.modules():
        if isinstance(m, (SliceConv2d, SliceBatchNorm2d, SelectLinear)):
            yield m
