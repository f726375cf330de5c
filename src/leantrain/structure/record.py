"""A model's leantrain bookkeeping, reached through these functions only (no other module names
the attributes): how it was built (``model.arch``), its cut history (``model.surgery_log``,
``model.dropped_units``), a cut made outside leantrain (``model.external_surgery``), the
per-sample input shape discovery traces it with, the structure version that surgery bumps, and
the cached `Structure` of the live network.

All live in the model's ``__dict__`` (not as submodules or buffers), so they never reach its
``state_dict``, its ``parameters()`` or its ``repr``. ``arch``, ``surgery_log`` and
``dropped_units`` are plain attributes a user may read; the rest are private.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .types import Structure

__all__ = [
    "arch_of", "bump_version", "cached_structure", "cut_history", "dropped_units", "example_shape",
    "external_surgery", "mark_external_surgery", "record_arch", "record_cut", "record_drop",
    "record_input_shape", "remember_structure", "structure_key",
]

_INPUT, _VERSION, _STRUCTURE = "_leantrain_input", "_leantrain_version", "_leantrain_structure"


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """How `create_model` built the model (name and arguments), or None for a user's instance."""
    arch = model.__dict__.get("arch")
    return arch if isinstance(arch, dict) else None


def record_arch(model: nn.Module, arch: dict[str, Any]) -> None:
    """Record how the model was built (`leantrain.models.create_model`)."""
    model.__dict__["arch"] = arch


def cut_history(model: nn.Module) -> list[dict[str, Any]]:
    """Every cut made so far, in order (``{"op": "drop" | "prune", ...}``): what replays them."""
    return list(model.__dict__.get("surgery_log", []))


def dropped_units(model: nn.Module) -> list[dict[str, Any]]:
    """The units dropped so far, in order: ``{"name", "kind"}``."""
    return list(model.__dict__.get("dropped_units", []))


def record_cut(model: nn.Module, entry: dict[str, Any]) -> None:
    """Append one cut to the history (surgery calls this)."""
    model.__dict__["surgery_log"] = [*cut_history(model), entry]


def record_drop(model: nn.Module, name: str, kind: str) -> None:
    """Append one dropped unit (surgery calls this)."""
    model.__dict__["dropped_units"] = [*dropped_units(model), {"name": name, "kind": kind}]


def external_surgery(model: nn.Module) -> str | None:
    """Why the model's cuts cannot be replayed (a cut made by another library), or None."""
    return model.__dict__.get("external_surgery")


def mark_external_surgery(model: nn.Module, reason: str) -> None:
    """Record that a cut was made outside leantrain: the model can then be saved as weights only
    and checkpointed no more."""
    model.__dict__["external_surgery"] = reason


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
    arch = arch_of(model)
    if arch is not None and "in_channels" in arch and "input_size" in arch:
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
