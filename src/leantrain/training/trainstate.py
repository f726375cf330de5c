"""`TrainState`: where the built-in training loop (`leantrain.training.fit.fit`) stands.

The loop owns it; `leantrain.training.checkpoint` saves and restores it, so it lives apart from both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Where `leantrain.training.fit.fit` stands, saved in every checkpoint.

    Attributes:
        step: optimizer steps done.
        epoch: the epoch in progress (``epochs`` once training is over).
        batch: batches of ``epoch`` already done (0 at an epoch boundary).
        version: structural changes so far (part of the FLOP cache key).
        loss_sum: sum of this epoch's training losses so far (a 0-d tensor on the device).
        first_loss: the run's first step's loss, the scale the divergence bound is relative to
            (None before the first step).
        history: the evaluated epochs' rows.
        events: every event logged so far.
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    version: int = 0
    loss_sum: Tensor | None = None
    first_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
