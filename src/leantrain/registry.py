"""`Registry`: the name → factory tables of leantrain (models, methods, unit scores).

Each table is filled by a ``register`` decorator where its entries are defined: the model zoo in
`leantrain.models` (``MODELS``, with `leantrain.models.create_model`), the pruning methods in
`leantrain.methods.registry` (``METHODS``), Learn&Drop's unit scores in
`leantrain.methods.scores`. It imports nothing of leantrain: every layer may use it.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar, overload

__all__ = ["Registry"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """A mapping from names to factories (functions or classes), filled by a `register` decorator.

    One type for every name → thing table of leantrain: models, methods and unit scores. A name
    is taken once; a *hidden* entry (e.g. a tiny test model) is built by name like any other but
    left out of `names`, the public list shown to users. Reading works like a read-only dict
    (``name in reg``, ``reg[name]``, ``reg.items()``, iteration over every name, sorted).

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"model"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}
        self._hidden: set[str] = set()

    @overload
    def register(self, fn: F, *, name: str | None = None, hidden: bool = False) -> F: ...

    @overload
    def register(
        self, fn: None = None, *, name: str | None = None, hidden: bool = False
    ) -> Callable[[F], F]: ...

    def register(
        self, fn: F | None = None, *, name: str | None = None, hidden: bool = False
    ) -> F | Callable[[F], F]:
        """Register a factory under ``name`` (default: the function's ``__name__``).

        Usable bare (``@MODELS.register``) or with arguments (``@MODELS.register(name="x")``).

        Args:
            fn: the factory.
            name: the registry name; defaults to ``fn.__name__``.
            hidden: keep the name out of `names` (still buildable by name).

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
            if hidden:
                self._hidden.add(key)
            return factory

        return add(fn) if fn is not None else add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a plug-in a test registered), so the name can be taken again.

        Raises:
            ValueError: if ``name`` is unknown.
        """
        self.get(name)
        del self._factories[name]
        self._hidden.discard(name)

    def names(self, *, include_hidden: bool = False) -> list[str]:
        """The public names, sorted (with ``include_hidden``: every name)."""
        return sorted(n for n in self._factories if include_hidden or n not in self._hidden)

    def get(self, name: str) -> F:
        """The factory registered under ``name`` (hidden ones too).

        Raises:
            ValueError: if ``name`` is unknown; the message lists the public names.
        """
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}."
            ) from None

    __getitem__ = get

    def items(self) -> list[tuple[str, F]]:
        """``(name, factory)`` of every name, hidden ones too, sorted by name."""
        return [(n, self._factories[n]) for n in self.names(include_hidden=True)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names(include_hidden=True))

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __len__(self) -> int:
        return len(self._factories)
