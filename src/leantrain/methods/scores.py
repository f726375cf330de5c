"""Unit scores for Learn&Drop (arXiv 2604.23403): how much a droppable unit is still learning.

A *unit score* turns a unit's training since the last checkpoint into one raw number per unit,
where **low means "settled, can go"**. Learn&Drop then normalises the raw values (`normalize`)
and derives the continuation score from their history (`continuation`), the same way for every
score, so a new score only has to say what it measures.

Scores are registered by name in `UNIT_SCORES`, so a run's config stays plain values
(``score = "change"``). Two are built in:

* ``"change"``: the paper's change score, the relative parameter change
  ``D = ‖θ(t) − θ(t−1)‖₂ / (‖θ(t−1)‖₂ + 1e-12)`` of the unit's trainable parameters (conv weights
  and biases, BN γ and β; not BN running statistics) since the previous checkpoint. Frozen
  parameters (``requires_grad=False``) do not count: a unit is scored on what it can learn.
* ``"residual_norm"``: how much the unit still changes its input, the mean over the training
  steps since the last checkpoint of ``‖y − x‖ / ‖x‖`` (``x`` the unit's input, ``y`` its
  output). Near 0 the unit is close to the identity that replaces it when dropped.

A score object lives for one run. It never keeps module references across a structural change:
`UnitScore.attach` is called again with the live units after every `leantrain.structure.surgery.Change`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..registry import Registry
from ..structure import Unit

__all__ = [
    "EPS",
    "UNIT_SCORES",
    "UnitScore",
    "ChangeScore",
    "ResidualNormScore",
    "register_score",
    "flat_params",
    "relative_change",
    "continuation",
    "normalize",
]

# Denominator guard of the spec's relative change: far below any real parameter norm, so it only
# matters for an all-zero tensor (where it makes D finite instead of NaN).
EPS = 1e-12

# name → UnitScore subclass; `register_score` fills it.
UNIT_SCORES: Registry[type[UnitScore]] = Registry("unit score")


def register_score(cls: type[UnitScore]) -> type[UnitScore]:
    """Class decorator: make a `UnitScore` available to Learn&Drop by its ``name``.

    Raises:
        ValueError: if another score already has that name.
    """
    return UNIT_SCORES.register(cls, name=cls.name)


# ----------------------------------------------------------------------------------------------
# pure functions


def flat_params(module: nn.Module, trainable_only: bool = False) -> Tensor:
    """All parameters of `module` (not its buffers) as one new flat detached tensor.

    Args:
        module: the unit.
        trainable_only: only the parameters with ``requires_grad`` (a frozen one does not move,
            so it would only dilute the relative change of a partly frozen unit).

    Returns:
        A 1-D copy on the parameters' device (empty when the module has none).
    """
    params = [p.detach().reshape(-1) for p in module.parameters()
              if p.requires_grad or not trainable_only]
    if not params:
        return torch.zeros(0)
    return torch.cat(params)  # cat always allocates, so this is a copy, never a view


def relative_change(prev: Tensor, cur: Tensor) -> float:
    """``‖cur − prev‖₂ / (‖prev‖₂ + EPS)``: the relative change between two snapshots.

    Args:
        prev: the earlier flat parameter snapshot.
        cur: the later one, same shape.

    Returns:
        The relative change D ≥ 0.
    """
    prev, cur = prev.float(), cur.float()
    return float((cur - prev).norm() / (prev.norm() + EPS))


def continuation(history: Sequence[float], window: int) -> float:
    """Continuation score C: least-squares slope of the last `window` values over their mean.

    ``C ≤ 0`` means the unit's learning is settling; ``C > 0`` that it is still picking up.
    Fewer than `window` values use all there are.

    Args:
        history: the unit's raw scores D at successive checkpoints (non-negative).
        window: W, the number of most recent checkpoints the slope is fitted to (≥ 2).

    Returns:
        The normalised slope; ``nan`` with fewer than two values (no slope yet), ``0.0`` when the
        values are all zero (a unit that does not move at all is settled).
    """
    if window < 2:
        raise ValueError(f"continuation window = {window} must be ≥ 2 (a slope needs two points).")
    ys = [float(v) for v in list(history)[-window:]]
    n = len(ys)
    if n < 2:
        return math.nan
    x_mean = (n - 1) / 2
    y_mean = sum(ys) / n
    num = sum((x - x_mean) * (y - y_mean) for x, y in enumerate(ys))
    den = sum((x - x_mean) ** 2 for x in range(n))
    slope = num / den
    if y_mean == 0:
        return 0.0 if slope == 0 else math.copysign(math.inf, slope)
    return slope / y_mean


def normalize(
    values: Mapping[str, float],
    histories: Mapping[str, Sequence[float]],
    mode: str,
    reference: Collection[str] | None = None,
) -> dict[str, float]:
    """Normalised scores S in [0, 1] from the raw values of one checkpoint.

    Args:
        values: raw score per active unit at this checkpoint.
        histories: each unit's raw scores so far (including this checkpoint's), for ``"self"``.
        mode: ``"self"``: S = value / the unit's own peak so far; ``"peers"``: S = value / the
            largest value among the reference units at this checkpoint.
        reference: ``"peers"`` only: the units whose largest value is the yardstick (None or
            none of them finite: every active unit); a unit above it gets S = 1.

    Returns:
        S per unit; ``nan`` where the raw value is ``nan``, 0 where the reference is 0.
    """
    if mode == "peers":
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        chosen = [v for k, v in finite.items() if reference is None or k in reference]
        peak = max(chosen or finite.values(), default=0.0)
        return {k: min(1.0, _ratio(v, peak)) if math.isfinite(v) else _ratio(v, peak)
                for k, v in values.items()}
    if mode == "self":
        out = {}
        for k, v in values.items():
            past = [h for h in histories.get(k, ()) if math.isfinite(h)]
            peak = max([*past, v] if math.isfinite(v) else past, default=0.0)
            out[k] = _ratio(v, peak)
        return out
    raise ValueError(f"normalize = {mode!r}; choose 'self' or 'peers'.")


def _ratio(value: float, peak: float) -> float:
    if math.isnan(value):
        return math.nan
    return value / peak if peak > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# score objects


class UnitScore:
    """A pluggable unit score: raw values per unit, measured at checkpoints (low = settled).

    Life cycle (driven by `leantrain.methods.learndrop.LearnDrop`): `attach` with the active
    units at setup and after every structural change; `after_backward` every training step;
    `measure` at every checkpoint (which starts the next interval); `forget` for removed units;
    `detach` at the end.
    """

    name: ClassVar[str] = ""

    def attach(self, model: nn.Module, units: Sequence[Unit]) -> None:
        """Start (or keep) tracking `units`, the model's active units now."""

    def after_backward(self) -> None:
        """Called once per training step, after ``loss.backward()``."""

    def measure(self, units: Sequence[Unit]) -> dict[str, float]:
        """Raw score per unit since the previous checkpoint; starts the next interval."""
        raise NotImplementedError

    def forget(self, names: Sequence[str]) -> None:
        """Drop all state about units that left the model (or were frozen)."""

    def detach(self) -> None:
        """Remove every hook this score put on the model."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values needed to resume mid-run."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@register_score
class ChangeScore(UnitScore):
    """The paper's change score: relative parameter change since the previous checkpoint.

    Keeps one flat detached snapshot of each tracked unit's trainable parameters on the model's
    device. When the trainable set changed since the snapshot (a layer frozen or unfrozen in
    between) the interval has no score (NaN) and the next one starts afresh.
    """

    name: ClassVar[str] = "change"

    def __init__(self) -> None:
        self.snapshots: dict[str, Tensor] = {}

    def attach(self, model: nn.Module, units: Sequence[Unit]) -> None:
        for u in units:
            if u.name not in self.snapshots:  # keep snapshots restored by load_state_dict
                self.snapshots[u.name] = flat_params(u.module, trainable_only=True)

    @torch.no_grad()
    def measure(self, units: Sequence[Unit]) -> dict[str, float]:
        if not units:
            return {}
        changes = []
        for u in units:
            cur = flat_params(u.module, trainable_only=True)
            prev = self.snapshots[u.name].to(cur.device)
            prev32, cur32 = prev.float(), cur.float()
            if prev32.shape != cur32.shape:  # parameters were frozen or unfrozen meanwhile
                changes.append(torch.full((), math.nan, device=cur.device))
            else:
                # Same formula as `relative_change`, kept as tensors so there is one device sync.
                changes.append((cur32 - prev32).norm() / (prev32.norm() + EPS))
            self.snapshots[u.name] = cur
        return dict(zip([u.name for u in units], torch.stack(changes).tolist()))

    def forget(self, names: Sequence[str]) -> None:
        for n in names:
            self.snapshots.pop(n, None)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": {k: v.clone() for k, v in self.snapshots.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = {k: v.clone() for k, v in state["snapshots"].items()}


@register_score
class ResidualNormScore(UnitScore):
    """Mean ``‖y − x‖ / ‖x‖`` over the training steps since the last checkpoint.

    A forward hook on each unit computes the ratio (no gradient, one value per batch); the value
    of the last forward before each ``after_backward`` is the step's value, so evaluation
    forwards (eval mode, skipped) and extra forwards between steps (e.g. a FLOP measurement
    after a cut) do not count. For a downsampling unit (kind ``"projection"``) the reference is
    the projection shortcut's output instead of ``x``, since that is what replaces the unit.
    """

    name: ClassVar[str] = "residual_norm"

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self._pending: dict[str, Tensor] = {}
        self._reference: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def attach(self, model: nn.Module, units: Sequence[Unit]) -> None:
        self.detach()
        for u in units:
            self.counts.setdefault(u.name, 0)
            if u.kind == "projection":
                self._attach_projection(u)
            else:
                self._attach_identity(u)

    def _attach_identity(self, u: Unit) -> None:
        # The unit's input enters its first member and its output leaves its last one (the
        # same module for a residual block; conv and activation for a torchvision VGG layer).
        def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
            if module.training:
                self._reference[u.name] = args[0].detach()

        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            ref = self._reference.pop(u.name, None)
            if module.training and ref is not None:
                # A branch-only unit's members return f(x); the add x + f(x) is the parent's.
                self._pending[u.name] = (_relative_norm(out, ref) if u.branch_only
                                         else _relative_residual(out, ref))

        self._handles.append(u.first.register_forward_pre_hook(capture))
        self._handles.append(u.last.register_forward_hook(hook))

    def _attach_projection(self, u: Unit) -> None:
        repl = u.replacement
        inside = {id(m) for m in u.module.modules()}  # projection units are one block
        if not (isinstance(repl, nn.Sequential) and len(repl) > 0 and id(repl[0]) in inside):
            raise ValueError(
                f"residual_norm cannot score {u.name}: its replacement does not start with a "
                "module of the unit; use score='change' or include_downsampling=False."
            )
        rest = repl[1:]  # parameter-free tail (ReLU) applied to the shared shortcut's output

        def capture(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if module.training:
                self._reference[u.name] = out.detach()

        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            ref = self._reference.pop(u.name, None)
            if module.training and ref is not None:
                with torch.no_grad():
                    self._pending[u.name] = _relative_residual(out, rest(ref))

        self._handles.append(repl[0].register_forward_hook(capture))
        self._handles.append(u.module.register_forward_hook(hook))

    def after_backward(self) -> None:
        for name, value in self._pending.items():
            if name in self.counts:
                self.sums[name] = self.sums[name] + value if name in self.sums else value
                self.counts[name] += 1
        self._pending.clear()

    def measure(self, units: Sequence[Unit]) -> dict[str, float]:
        out: dict[str, float] = {}
        seen = [u.name for u in units if self.counts.get(u.name, 0) > 0]
        if seen:
            means = torch.stack([self.sums[n] / self.counts[n] for n in seen]).tolist()
            out.update(zip(seen, means))
        for u in units:
            out.setdefault(u.name, math.nan)  # no training step since the last checkpoint
            self.sums.pop(u.name, None)
            self.counts[u.name] = 0
        return {u.name: out[u.name] for u in units}

    def forget(self, names: Sequence[str]) -> None:
        for n in names:
            self.sums.pop(n, None)
            self.counts.pop(n, None)
            self._pending.pop(n, None)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending.clear()
        self._reference.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {k: v.clone() for k, v in self.sums.items()},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.clone() for k, v in state["sums"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


@torch.no_grad()
def _relative_norm(f: Tensor, x: Tensor) -> Tensor:
    """``‖f‖ / (‖x‖ + EPS)``: the relative residual of ``y = x + f`` without forming ``y``."""
    return f.detach().float().norm() / (x.detach().float().norm() + EPS)


def _relative_residual(y: Tensor, x: Tensor) -> Tensor:
    """``‖y − x‖ / (‖x‖ + EPS)`` over the whole batch, as a 0-d float32 tensor (no sync)."""
    x, y = x.detach().float(), y.detach().float()
    return (y - x).norm() / (x.norm() + EPS)
