"""Wall-clock accounting of a training run, split into laps such as train / surgery / eval.

GPU kernels run asynchronously, so reading the clock without synchronising charges queued work
to whichever lap happens to read the clock next. `Stopwatch` synchronises the device before each
reading, like the ``Timer(synch)`` of cifar10-fast, so that pruning overhead (surgery) and
evaluation are charged to their own laps and the reported training time is honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["Stopwatch"]

# Laps every run reports, even when one never happened (0.0), so result tables keep their columns.
DEFAULT_LAPS = ("train", "surgery", "eval")


class Stopwatch:
    """Device-synchronised wall-clock laps (train / surgery / eval), accumulated per lap name.

    Laps should not nest: a nested lap's time would be counted in both laps.

    Args:
        device: the device whose queued work must finish before the clock is read.
        clock: a monotonic clock in seconds; injectable for tests.
        laps: laps reported even before they first run (0.0), so every row has the same columns.
    """

    def __init__(
        self,
        device: torch.device | str,
        clock: Callable[[], float] = time.perf_counter,
        laps: Sequence[str] = DEFAULT_LAPS,
    ) -> None:
        self.device = torch.device(device)
        self.clock = clock
        self.laps = tuple(laps)
        self._totals: dict[str, float] = {lap: 0.0 for lap in self.laps}

    def synchronize(self) -> None:
        """Wait for the device's queued work (no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    @contextmanager
    def __call__(self, lap: str) -> Iterator[None]:
        """Time the enclosed block and add it to ``lap`` (also when the block raises).

        Args:
            lap: lap name, e.g. ``"train"``; reported as ``lap + "_s"``.
        """
        self.synchronize()
        start = self.clock()
        try:
            yield
        finally:
            self.synchronize()
            self._totals[lap] = self._totals.get(lap, 0.0) + (self.clock() - start)

    def totals(self) -> dict[str, float]:
        """Seconds per lap, keyed ``"<lap>_s"`` (``train_s``, ``surgery_s``, ``eval_s``, …)."""
        return {f"{lap}_s": seconds for lap, seconds in self._totals.items()}

    def state_dict(self) -> dict[str, float]:
        """Lap totals in seconds, for a checkpoint."""
        return dict(self._totals)

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from a checkpoint's lap totals (laps not in ``state`` restart at 0)."""
        self._totals = {lap: 0.0 for lap in self.laps}
        self._totals.update({str(k): float(v) for k, v in state.items()})
