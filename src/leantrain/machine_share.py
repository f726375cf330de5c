"""Whether a run had the machine to itself: its CPU time against wall time × threads, and the
load average at its start and end.

Timings taken while other work shares the cores are not comparable (identical runs on the 2-core
benchmark machine differed by 5–10% when other work ran beside them), so every run records this,
and the report computes no time ratio from a run that shared the machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["MachineShare", "is_quiet", "whole_run", "QUIET_CPU_SHARE", "QUIET_OTHER_LOAD"]

# A training process using T threads on a quiet machine keeps them busy most of the time; when
# one more busy thread competes for 2 cores, its share falls to about 2/3. 0.75 separates the two.
QUIET_CPU_SHARE = 0.75
# Load average minus the run's own threads: the runnable work of *other* processes, averaged
# over the last minute. More than 0.75 of a core means something else was running.
QUIET_OTHER_LOAD = 0.75


@dataclass
class MachineShare:
    """Started before training, finished after it; `finish` returns the record."""

    threads: int = field(default_factory=torch.get_num_threads)
    _wall: float = field(default_factory=time.perf_counter)
    _cpu: float = field(default_factory=time.process_time)
    _load: tuple[float, float, float] = field(default_factory=lambda: _loadavg())

    def finish(self) -> dict[str, Any]:
        """``cpu_s``, ``wall_s``, ``threads``, ``cores``, ``cpu_share``, ``load_start``,
        ``load_end`` (1, 5, 15-minute averages) and ``quiet``."""
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        record = {
            "cpu_s": cpu, "wall_s": wall, "threads": self.threads, "cores": os.cpu_count(),
            "cpu_share": cpu / max(1e-9, wall * self.threads),
            "load_start": list(self._load), "load_end": list(_loadavg()),
        }
        record["quiet"] = is_quiet(record)
        return record


def whole_run(final: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of a run that may have been resumed: its last segment's record, quiet only if
    every earlier epoch row's snapshot was quiet too. Each evaluated epoch row carries the record
    of its segment so far and checkpoints keep the rows, so a contended segment before a resume
    is not forgotten (what a killed segment did after its last checkpoint is redone anyway)."""
    earlier = [r.get("machine") for r in history if isinstance(r.get("machine"), dict)]
    quiet = final.get("quiet") is not False and all(is_quiet(m) is not False for m in earlier)
    return {**final, "quiet": quiet, "segments_checked": len(earlier)}


def is_quiet(record: dict[str, Any] | None) -> bool | None:
    """True when the run had the machine to itself, False when not, None when not recorded."""
    if not isinstance(record, dict) or "cpu_share" not in record:
        return None
    others = (record.get("load_end") or [0.0])[0] - record.get("threads", 1)
    return record["cpu_share"] >= QUIET_CPU_SHARE and others <= QUIET_OTHER_LOAD


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this system
        return (0.0, 0.0, 0.0)
