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

__all__ = [
    "MachineShare", "is_quiet", "stretch_shares", "whole_run", "QUIET_CPU_SHARE", "QUIET_OTHER_LOAD",
]

# A training process using T threads on a quiet machine keeps them busy: on the 2-core benchmark
# machine every epoch of the `paper` suite's quiet runs measured a share of 0.986-0.990, while an
# epoch that shared about a minute with a test run measured 0.874 (and took 31% longer); one more
# busy thread on 2 cores for a whole epoch gives about 2/3. 0.9 catches the partial case too.
QUIET_CPU_SHARE = 0.9
# Load average minus the run's own threads: the runnable work of *other* processes, averaged
# over the last minute. More than 0.75 of a core means something else was running.
QUIET_OTHER_LOAD = 0.75


@dataclass
class MachineShare:
    """Started before training, finished after it; `finish` returns the record."""

    threads: int = field(default_factory=torch.get_num_threads)
    # "cpu" or the accelerator's type: a GPU run's process waits on the device, so its CPU share
    # says nothing there and only the other processes' load is judged.
    device: str = "cpu"
    processes: int = 1  # processes of one job on this machine (DDP): their threads are its own
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
        if self.device != "cpu":
            record["device"] = self.device
        if self.processes > 1:
            record["processes"] = self.processes
        record["quiet"] = is_quiet(record)
        return record


def whole_run(final: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of a run that may have been resumed: its last segment's record, quiet only if
    every epoch was. Each evaluated epoch row carries the record of its segment so far and
    checkpoints keep the rows, so a contended segment before a resume is not forgotten (what a
    killed segment did after its last checkpoint is redone anyway). A segment's record is
    cumulative, so a few contended minutes inside a long quiet segment would pass its average:
    the CPU share of every stretch between two epoch rows is checked too (`stretch_shares`)."""
    earlier = [r.get("machine") for r in history if isinstance(r.get("machine"), dict)]
    stretches = stretch_shares([m for m in earlier if m.get("device", "cpu") == "cpu"])
    quiet = (final.get("quiet") is not False
             and all(is_quiet(m) is not False for m in earlier)
             and all(s >= QUIET_CPU_SHARE for s in stretches))
    record = {**final, "quiet": quiet, "segments_checked": len(earlier)}
    if stretches:
        record["min_epoch_cpu_share"] = min(stretches)
    return record


def stretch_shares(records: list[dict[str, Any]]) -> list[float]:
    """CPU share of each stretch between consecutive epoch records of one segment (the first
    epoch of a segment is its own record). Records of one segment share ``load_start`` and grow
    in ``wall_s``; a new segment starts its counters again."""
    shares: list[float] = []
    prev: dict[str, Any] | None = None
    for rec in records:
        if "cpu_s" not in rec or "wall_s" not in rec:
            prev = None
            continue
        same_segment = (prev is not None and prev.get("load_start") == rec.get("load_start")
                        and rec["wall_s"] > prev["wall_s"] and rec["cpu_s"] >= prev["cpu_s"])
        cpu = rec["cpu_s"] - (prev["cpu_s"] if same_segment and prev else 0.0)
        wall = rec["wall_s"] - (prev["wall_s"] if same_segment and prev else 0.0)
        shares.append(cpu / max(1e-9, wall * rec.get("threads", 1)))
        prev = rec
    return shares


def is_quiet(record: dict[str, Any] | None) -> bool | None:
    """True when the run had the machine to itself, False when not, None when not recorded.
    A record already judged contended (``quiet: false``, e.g. by `whole_run` for an earlier
    epoch) stays contended."""
    if not isinstance(record, dict) or "cpu_share" not in record:
        return None
    if record.get("quiet") is False:
        return False
    processes = record.get("processes", 1)
    if record.get("device", "cpu") != "cpu":  # judged by the other processes' load alone
        own = processes * record.get("cpu_s", 0.0) / max(1e-9, record.get("wall_s", 0.0))
        return (record.get("load_end") or [0.0])[0] - own <= QUIET_OTHER_LOAD
    others = (record.get("load_end") or [0.0])[0] - processes * record.get("threads", 1)
    return record["cpu_share"] >= QUIET_CPU_SHARE and others <= QUIET_OTHER_LOAD


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this system
        return (0.0, 0.0, 0.0)
