"""Whether a run had the machine to itself: its threads' CPU time against wall time × threads,
the time they spent runnable but waiting for a core, and the load average at start and end.

Timings taken while other work shares the cores are not comparable (identical runs on the 2-core
benchmark machine differed by 5–10% when other work ran beside them), so every run records this
for every epoch, and the report computes no time ratio from a run that shared the machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MachineShare", "is_quiet", "stretches", "whole_run",
    "QUIET_CPU_SHARE", "QUIET_WAIT_SHARE", "QUIET_OTHER_LOAD",
]

# Where the wait below is not reported (records from before it, other systems): a training
# process using T threads on a quiet machine keeps them busy most of the time; when one more busy
# thread competes for 2 cores, its share falls to about 2/3. 0.75 separates the two for a whole
# run, but the share depends on the workload (small or evaluation-heavy quiet runs measured
# 0.79-0.97), so it cannot catch a contended minute inside an epoch: the wait share does.
QUIET_CPU_SHARE = 0.75
# Time the run's threads spent runnable but waiting for a core (Linux schedstat), as a share of
# wall time × threads: a direct measure of other work taking our cores, whatever the workload.
# Quiet epochs of the `paper` suite on the 2-core machine waited about 1%; one more busy thread
# on 2 cores makes it about 1/3. Above 5% the epoch was measurably slowed by other work.
QUIET_WAIT_SHARE = 0.05
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
    _waits: dict[str, float] | None = field(default_factory=lambda: _thread_waits())

    def finish(self) -> dict[str, Any]:
        """``cpu_s``, ``wall_s``, ``threads``, ``cores``, ``cpu_share``, ``load_start``,
        ``load_end`` (1, 5, 15-minute averages), ``wait_s`` and ``wait_share`` where the system
        reports them, and ``quiet``."""
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        record = {
            "cpu_s": cpu, "wall_s": wall, "threads": self.threads, "cores": os.cpu_count(),
            "cpu_share": cpu / max(1e-9, wall * self.threads),
            "load_start": list(self._load), "load_end": list(_loadavg()),
        }
        now = _thread_waits()
        if self._waits is not None and now is not None:
            # threads that ended since the start took their counts with them: count what the
            # live ones waited since then (new threads from zero)
            wait = sum(max(0.0, w - self._waits.get(tid, 0.0)) for tid, w in now.items())
            record["wait_s"] = wait
            record["wait_share"] = wait / max(1e-9, wall * self.threads)
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
    cumulative, so a contended minute inside a long quiet segment would pass its average: every
    stretch between two epoch rows is judged too (`stretches`)."""
    earlier = [r.get("machine") for r in history if isinstance(r.get("machine"), dict)]
    parts = stretches(earlier)
    quiet = (final.get("quiet") is not False
             and all(is_quiet(m) is not False for m in [*earlier, *parts]))
    record = {**final, "quiet": quiet, "segments_checked": len(earlier)}
    if parts:
        record["min_epoch_cpu_share"] = min(p["cpu_share"] for p in parts)
        waits = [p["wait_share"] for p in parts if "wait_share" in p]
        if waits:
            record["max_epoch_wait_share"] = max(waits)
    return record


def stretches(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record of each stretch between consecutive epoch records of one segment (the first
    epoch of a segment is its own record), to be judged by `is_quiet`. Records of one segment
    share ``load_start`` and grow in ``wall_s``; a new segment starts its counters again."""
    out: list[dict[str, Any]] = []
    prev: dict[str, Any] | None = None
    for rec in records:
        if "cpu_s" not in rec or "wall_s" not in rec:
            prev = None
            continue
        same = (prev is not None and prev.get("load_start") == rec.get("load_start")
                and rec["wall_s"] > prev["wall_s"] and rec["cpu_s"] >= prev["cpu_s"])
        base = prev if same and prev is not None else {}
        wall = rec["wall_s"] - base.get("wall_s", 0.0)
        cpu = rec["cpu_s"] - base.get("cpu_s", 0.0)
        threads = rec.get("threads", 1)
        part = {k: rec[k] for k in ("threads", "load_end", "device", "processes") if k in rec}
        part.update(cpu_s=cpu, wall_s=wall, cpu_share=cpu / max(1e-9, wall * threads))
        if "wait_s" in rec and (not base or "wait_s" in base):
            wait = rec["wait_s"] - base.get("wait_s", 0.0)
            part["wait_share"] = wait / max(1e-9, wall * threads)
        out.append(part)
        prev = rec
    return out


def is_quiet(record: dict[str, Any] | None) -> bool | None:
    """True when the run had the machine to itself, False when not, None when not recorded.
    A record already judged contended (``quiet: false``, e.g. by `whole_run` for an earlier
    epoch) stays contended. The threads' wait for a core is judged where it was recorded (it
    does not depend on how parallel the workload is), else the CPU share (CPU runs only); and
    the load of other processes at the end."""
    if not isinstance(record, dict) or "cpu_share" not in record:
        return None
    if record.get("quiet") is False:
        return False
    processes = record.get("processes", 1)
    load = (record.get("load_end") or [0.0])[0]
    on_cpu = record.get("device", "cpu") == "cpu"
    if "wait_share" in record:  # the direct measure, where the system gives it
        had_cores = record["wait_share"] <= QUIET_WAIT_SHARE
    else:  # a GPU run's process mostly waits on the device: its CPU share says nothing
        had_cores = record["cpu_share"] >= QUIET_CPU_SHARE if on_cpu else True
    if on_cpu:
        own = processes * record.get("threads", 1)
    else:
        own = processes * record.get("cpu_s", 0.0) / max(1e-9, record.get("wall_s", 0.0))
    return had_cores and load - own <= QUIET_OTHER_LOAD


def _thread_waits() -> dict[str, float] | None:
    """Seconds each of this process's threads has spent runnable but waiting for a core, by
    thread id (Linux ``/proc/self/task/*/schedstat``, 2nd field); None where not available."""
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return None
    waits: dict[str, float] = {}
    for task in tasks:
        try:
            waits[task.name] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):  # the thread ended meanwhile, or no schedstat
            continue
    return waits or None


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this system
        return (0.0, 0.0, 0.0)
