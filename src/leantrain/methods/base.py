"""The unit users plug in: a `Method` with two hooks, and the `Progress` it is told about.

A method changes a model while it trains. `leantrain.attach` calls its hooks from the
optimizer's step hooks, for the built-in `fit()` and a user's own loop alike, so both give
identical results for the same seed; the order is:

    loss.backward()
    method.after_backward(model, progress)   # accumulate scores / utilities from gradients
    optimizer.step()
    change = method.step(model, progress)    # decide; perform surgery; select for the next step
    if change: change.apply_to(optimizer)

and once at the end ``change = method.finish(model)`` (e.g. DCP's compact export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from ..structure.surgery import Change

__all__ = ["Method", "MethodWarning", "Progress"]


class MethodWarning(UserWarning):
    """A method can do less than asked on this model: nothing it may cut, or parts it leaves
    alone (frozen layers); said once, at setup, with the reason."""


@dataclass(frozen=True)
class Progress:
    """Where training stands: ``step`` optimizer steps done of ``total_steps``.

    Attributes:
        step: optimizer steps completed so far (after the current one, in `Method.step`).
        total_steps: optimizer steps of the whole run.
        steps_per_epoch: optimizer steps per pass over the data (for epoch-based checkpoints).
    """

    step: int
    total_steps: int
    steps_per_epoch: int

    @property
    def fraction(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch_ended(self) -> bool:
        """True right after the last step of an epoch."""
        return self.step > 0 and self.step % self.steps_per_epoch == 0


class Method:
    """Changes a model while it trains. Override any of the hooks; all are optional."""

    name: str = "none"

    def setup(self, model: nn.Module, progress: Progress) -> Change | None:
        """Called once before the first step (and again after a resume); returns the `Change`
        when it cut the model (the optimizer must then be re-keyed)."""

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        """Called after ``loss.backward()`` and before ``optimizer.step()``."""

    def step(self, model: nn.Module, progress: Progress) -> Change | None:
        """Called after ``optimizer.step()``; returns the `Change` when it cut the model."""
        return None

    def finish(self, model: nn.Module) -> Change | None:
        """Called once after the last step; returns the final `Change`, if any."""
        return None

    def sync_tensors(self, model: nn.Module) -> list[Tensor]:
        """Statistics computed from this process's batch alone, which ``after_backward`` uses.

        In a multi-process job (`leantrain.training.distributed`) they are averaged over the processes,
        in place and in this order, before ``after_backward``, so every process decides alike
        (DCP: the saliencies). Weights-based scores need none: DDP keeps weights identical.
        """
        return []

    def cost_key(self, model: nn.Module) -> Any:
        """A hashable summary of per-step widths that change the step's FLOPs (None: none)."""
        return None

    def compile_problem(self, backend: str) -> str | None:
        """Why compiling the model with this torch.compile backend would cost more than it
        saves with this method (one clause, for `fit`'s warning), or None: compile it."""
        return None

    def events(self) -> list[dict[str, Any]]:
        """Structural events since the last call, each returned once (logged by `fit()` to
        ``events.jsonl``). Methods queue them with `_emit`."""
        return self.__dict__.pop("_pending_events", [])

    def _emit(self, event: dict[str, Any]) -> None:
        """Queue a structural event for the next `events` call."""
        # Kept in the instance dict, created on first use: methods are dataclasses whose
        # generated __init__ never calls this class's, so no constructor could set it up.
        self.__dict__.setdefault("_pending_events", []).append(event)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the method mid-run (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
