"""``METHODS``: the pruning methods by name, so a run's config stays serialisable.

Each method module registers its dataclass here with `register_method` when it is imported;
importing `leantrain.methods` imports them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..registry import Registry
from .base import Method

__all__ = ["METHODS", "build_methods", "method_fields", "register_method"]

# name → Method dataclass; each method module registers itself on import.
METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method dataclass available by its ``name``.

    Raises:
        ValueError: if another method already has that name.
    """
    return METHODS.register(cls, name=cls.name)


def method_fields() -> dict[str, set[str]]:
    """Hyperparameter names of every registered method (to validate configs)."""
    return {name: {f.name for f in dataclasses.fields(cls)} for name, cls in METHODS.items()}


def build_methods(names: list[str], args: dict[str, dict[str, Any]]) -> list[Method]:
    """Instantiate methods by name with their hyperparameters, with clear errors."""
    methods = []
    for name in names:
        if name not in METHODS:
            raise ValueError(
                f"unknown method {name!r}; choose none or one of: {', '.join(METHODS.names())} "
                "(combine with '+')."
            )
        methods.append(METHODS[name](**args.get(name, {})))
    return methods
