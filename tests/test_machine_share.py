"""Whether a run had the machine to itself is recorded, and judged by one rule."""

from __future__ import annotations

import time

from leantrain.machine_share import MachineShare, is_quiet


def test_is_quiet_needs_cpu_share_and_no_other_load() -> None:
    quiet = {"cpu_share": 0.93, "threads": 2, "load_end": [2.3, 2.0, 1.5]}
    assert is_quiet(quiet) is True
    assert is_quiet({**quiet, "cpu_share": 0.6}) is False  # another busy process took the cores
    assert is_quiet({**quiet, "load_end": [3.4, 2.0, 1.5]}) is False  # 1.4 cores of other work
    assert is_quiet(None) is None and is_quiet({"threads": 2}) is None  # older rows: unknown


def test_share_of_a_sleeping_process_is_low_and_recorded() -> None:
    share = MachineShare(threads=2)
    time.sleep(0.2)  # wall time passes, no CPU time: what a starved process looks like
    record = share.finish()
    assert record["wall_s"] >= 0.2 and record["cpu_share"] < 0.5
    assert record["quiet"] is False
    assert len(record["load_start"]) == len(record["load_end"]) == 3
