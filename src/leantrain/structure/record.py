"""A model's leantrain bookkeeping, reached through these functions only: the per-sample input
shape discovery traces it with, the structure version that surgery bumps, and the cached
`Structure` of the live network.

They live in the model's ``__dict__`` (not as submodules or buffers), so they never reach its
``state_dict``, its ``parameters()`` or its ``repr``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .types import Structure

__all__ = ["bump_version", "cached_structure", "example_shape", "record_input_shape",
           "remember_structure", "structure_key"]

_INPUT, _VERSION, _STRUCTURE = "_leantrain_input", "_leantrain_version", "_leantrain_structure"


def record_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Record the per-sample input shape ``(C, H, W)`` (already checked) and mark the structure
    as changed: it is found again for the new shape."""
    model.__dict__[_INPUT] = shape
    bump_version(model)


def example_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The recorded per-sample input shape, or one derived from ``model.arch``, or None."""
    shape = model.__dict__.get(_INPUT)
    if shape is not None:
        return shape
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "in_channels" in arch and "input_size" in arch:
        size = int(arch["input_size"])
        return (int(arch["in_channels"]), size, size)
    return None


def bump_version(model: nn.Module) -> None:
    """Mark the model's structure as changed (surgery calls this after every cut)."""
    model.__dict__[_VERSION] = model.__dict__.get(_VERSION, 0) + 1


def structure_key(model: nn.Module) -> tuple[Any, ...]:
    """What a cached structure must match: surgery's version, and the module identities, which
    catch any other edit of the module tree (a user's own replacement of a layer)."""
    return (model.__dict__.get(_VERSION, 0), tuple(map(id, model.modules())))


def cached_structure(model: nn.Module) -> Structure | None:
    """The cached `Structure`, if it still describes the live network."""
    cached = model.__dict__.get(_STRUCTURE)
    return cached[1] if cached is not None and cached[0] == structure_key(model) else None


def remember_structure(model: nn.Module, structure: Structure) -> None:
    """Cache `structure` for the live network (until the next cut or edit)."""
    model.__dict__[_STRUCTURE] = (structure_key(model), structure)
