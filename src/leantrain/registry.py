"""Name → factory registries and `create_model`, in the style of timm's model registry.

A model family registers one factory per architecture name with ``@MODELS.register``; callers
build a model with ``create_model("resnet56", num_classes=10)``. Every model built this way carries
``model.arch``, a plain JSON-serialisable dict from which `create_model` rebuilds the same
architecture (checkpoints store it next to the weights).
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable, Generic, TypeVar, overload

from torch import nn

__all__ = ["Registry", "MODELS", "create_model", "list_models"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """A mapping from names to factories, filled by a `register` decorator.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"model"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}

    @overload
    def register(self, fn: F, *, name: str | None = None) -> F: ...

    @overload
    def register(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def register(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Register a factory under ``name`` (default: the function's ``__name__``).

        Usable bare (``@MODELS.register``) or with a name (``@MODELS.register(name="x")``).

        Args:
            fn: the factory.
            name: the registry name; defaults to ``fn.__name__``.

        Returns:
            The factory itself, unchanged, or a decorator when ``fn`` is omitted.

        Raises:
            ValueError: if the name is already taken.
        """

        def add(factory: F) -> F:
            key = name or factory.__name__
            if key in self._factories:
                raise ValueError(
                    f"{self.kind} '{key}' is already registered; pick another name for the new one."
                )
            self._factories[key] = factory
            return factory

        return add(fn) if fn is not None else add

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._factories)

    def get(self, name: str) -> F:
        """The factory registered under ``name``.

        Raises:
            ValueError: if ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __len__(self) -> int:
        return len(self._factories)


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _load_models() -> None:
    # Imported lazily: the model modules import this one to register themselves, so importing
    # them at the top would be circular. Importing leantrain.models runs every registration.
    importlib.import_module("leantrain.models")


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a class count is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return value


def create_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Module:
    """Build a registered model and record its architecture in ``model.arch``.

    Args:
        name: registry name, e.g. ``"resnet56"`` (see `list_models`).
        num_classes: number of output classes (at least 2).
        in_channels: image channels, 1 (grey) or 3 (RGB).
        input_size: side of the square input in pixels (at least 8); some models adapt their
            stem or pooling to it.

    Returns:
        The model, with ``model.arch = {"name", "num_classes", "in_channels", "input_size"}``.

    Raises:
        ValueError: for an unknown name or an invalid argument.
    """
    _load_models()
    factory = MODELS.get(name)
    if _check_int("num_classes", num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    if _check_int("in_channels", in_channels) not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}.")
    if _check_int("input_size", input_size) < 8:
        raise ValueError(f"input_size must be at least 8 pixels, got {input_size}.")
    model = factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    model.arch = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": input_size,
    }
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style pattern.

    Args:
        pattern: e.g. ``"resnet*"``; None lists every model.
    """
    _load_models()
    names = MODELS.names()
    return names if pattern is None else fnmatch.filter(names, pattern)
