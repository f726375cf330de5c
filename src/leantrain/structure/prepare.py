"""`prepare` and the structure of a live model: discovered once, cached, found again after a cut.

The structure is *discovered* from the model's own forward (`leantrain.structure.discover`,
which traces it with torch.fx), for leantrain's models and a user's alike; a model may instead
describe itself by defining ``droppable_units()`` and ``channel_sets()``. It is cached on the
model (`leantrain.structure.record`) and found again after every structural cut, so it always
describes the live network.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .discover import discover
from .layers import make_sliceable, sliceable_layers
from .record import cached_structure, example_shape, record_input_shape, remember_structure
from .types import (
    ChannelSet, ExampleInputError, ExampleInputTypeError, Structure, StructureError, Unit,
)

__all__ = [
    "channel_sets_of", "check_example_input", "prepare", "set_example_input", "sliceable_layers",
    "stage_blocks_of", "structure_of", "units_of",
]


def set_example_input(model: nn.Module, example: Tensor | Sequence[int]) -> None:
    """Record the per-sample input shape ``(C, H, W)`` discovery traces the model with."""
    shape = tuple(example.shape[1:]) if isinstance(example, Tensor) else tuple(int(d) for d in example)
    if len(shape) < 1 or any(d < 1 for d in shape):
        raise StructureError(f"example input shape {shape} is not a (C, H, W) sample shape.")
    record_input_shape(model, shape)


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


def prepare(model: nn.Module, example_input: Tensor | Sequence[int] | None = None) -> Structure:
    """Find what Learn&Drop and DCP may change in `model`, and make it sliceable, in place.

    Traces the forward once with torch.fx (see `leantrain.structure.discover`). The model keeps its class,
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
    cached = cached_structure(model)
    if cached is not None:
        return cached
    s = discover(model)
    for cs in s.channel_sets:
        for layer in cs.layers():
            make_sliceable(layer)
    remember_structure(model, s)
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
