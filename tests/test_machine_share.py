"""Whether a run had the machine to itself is recorded, and judged by one rule."""

from __future__ import annotations

import time

from leantrain.runs.machine_share import MachineShare, is_quiet, stretches, whole_run


def test_is_quiet_needs_cpu_share_and_no_other_load() -> None:
    quiet = {"cpu_share": 0.93, "threads": 2, "load_end": [2.3, 2.0, 1.5]}
    assert is_quiet(quiet) is True
    assert is_quiet({**quiet, "cpu_share": 0.6}) is False  # another busy process took the cores
    assert is_quiet({**quiet, "load_end": [3.4, 2.0, 1.5]}) is False  # 1.4 cores of other work
    assert is_quiet(None) is None and is_quiet({"threads": 2}) is None  # older rows: unknown


def test_an_accelerator_run_is_judged_by_the_other_processes_load_alone() -> None:
    # a GPU run's process mostly waits on the device: 1.1 busy cores of 16 threads
    gpu = {"cpu_s": 110.0, "wall_s": 100.0, "cpu_share": 0.07, "threads": 16, "device": "cuda",
           "load_end": [1.5, 1.2, 1.0]}
    assert is_quiet(gpu) is True
    assert is_quiet({**gpu, "load_end": [3.0, 2.0, 1.0]}) is False  # ~2 cores of other work
    assert is_quiet({**gpu, "device": "cpu"}) is False  # on the CPU that share means starved


def test_the_other_processes_of_one_job_are_not_counted_as_other_work() -> None:
    rank = {"cpu_share": 0.97, "threads": 1, "load_end": [4.1, 4.0, 3.5], "processes": 4}
    assert is_quiet(rank) is True
    assert is_quiet({**rank, "processes": 1}) is False


def test_share_of_a_sleeping_process_is_low_and_recorded() -> None:
    share = MachineShare(threads=2)
    time.sleep(0.2)  # wall time passes, no CPU time: what a starved process looks like
    record = share.finish()
    assert record["wall_s"] >= 0.2 and record["cpu_share"] < 0.5
    assert len(record["load_start"]) == len(record["load_end"]) == 3
    if "wait_share" in record:  # it slept, it was not kept from a core: judged by the wait
        assert record["wait_share"] < 0.05
    else:  # judged by the share alone, it looks starved
        assert record["quiet"] is False
    assert is_quiet({k: v for k, v in record.items() if k not in ("wait_s", "wait_share",
                                                                  "quiet")}) is False


def test_a_resumed_run_is_quiet_only_if_every_segment_was() -> None:
    quiet = {"cpu_share": 0.93, "threads": 2, "load_end": [2.3, 2.0, 1.5], "quiet": True}
    shared = {**quiet, "cpu_share": 0.5, "quiet": False}
    # epoch rows as checkpoints keep them: epoch 1 in a segment that shared the machine
    history = [{"epoch": 1, "machine": shared}, {"epoch": 2, "machine": quiet}]
    assert whole_run(quiet, history)["quiet"] is False
    assert whole_run(quiet, history[1:])["quiet"] is True
    assert whole_run(quiet, [{"epoch": 1}])["quiet"] is True  # rows from before the record


def _segment(load: list[float], laps: list[tuple[float, float]]) -> list[dict]:
    """Cumulative epoch records of one segment from (cpu_s, wall_s) per epoch."""
    rows, cpu, wall = [], 0.0, 0.0
    for c, w in laps:
        cpu, wall = cpu + c, wall + w
        rows.append({"cpu_s": cpu, "wall_s": wall, "threads": 2, "cpu_share": cpu / (2 * wall),
                     "load_start": load, "load_end": [2.0, 2.0, 2.0]})
    return rows


def test_a_contended_epoch_inside_a_long_quiet_segment_is_caught() -> None:
    # nine quiet epochs, then one where another process took a core: the segment's average
    # (0.96) passes, the stretch of the tenth epoch (0.55) does not
    rows = _segment([1.0, 1.0, 1.0], [(198.0, 100.0)] * 9 + [(110.0, 100.0)])
    assert rows[-1]["cpu_share"] > 0.9 and is_quiet(rows[-1]) is True
    shares = [p["cpu_share"] for p in stretches(rows)]
    assert len(shares) == 10 and abs(shares[-1] - 0.55) < 1e-9 and min(shares[:9]) > 0.98
    verdict = whole_run(rows[-1], [{"epoch": i + 1, "machine": r} for i, r in enumerate(rows)])
    assert verdict["quiet"] is False and abs(verdict["min_epoch_cpu_share"] - 0.55) < 1e-9
    assert is_quiet(verdict) is False  # the report reads the verdict, not just the last share


def test_an_epoch_that_waited_for_its_cores_is_contended_whatever_its_cpu_share() -> None:
    # a test run took a core for about a minute of a 227 s epoch: CPU share 0.87 passes the
    # share rule, but the threads waited 20% of the time for a core
    rows = _segment([1.0, 1.0, 1.0], [(340.0, 172.0), (397.0, 227.0)])
    rows[0]["wait_s"], rows[1]["wait_s"] = 3.0, 3.0 + 0.2 * 2 * 227.0
    parts = stretches(rows)
    assert parts[0]["wait_share"] < 0.01 and abs(parts[1]["wait_share"] - 0.2) < 1e-9
    assert is_quiet(parts[0]) is True and parts[1]["cpu_share"] > 0.75
    assert is_quiet(parts[1]) is False
    # an evaluation-heavy quiet epoch: a low CPU share, no wait: quiet
    assert is_quiet({**parts[0], "cpu_share": 0.6}) is True
    verdict = whole_run(rows[-1], [{"machine": r} for r in rows])
    assert verdict["quiet"] is False and verdict["max_epoch_wait_share"] > 0.19


def test_stretches_restart_with_each_segment_of_a_resumed_run() -> None:
    first = _segment([1.0, 1.0, 1.0], [(190.0, 100.0)] * 3)
    second = _segment([0.2, 0.5, 0.9], [(180.0, 100.0)] * 2)  # counters start again
    shares = [p["cpu_share"] for p in stretches(first + second)]
    assert [round(s, 2) for s in shares] == [0.95, 0.95, 0.95, 0.9, 0.9]
    verdict = whole_run(second[-1], [{"machine": r} for r in first + second])
    assert verdict["quiet"] is True and verdict["segments_checked"] == 5


def test_the_wait_for_cores_is_recorded_where_the_system_reports_it() -> None:
    import sys

    share = MachineShare(threads=1)
    sum(i * i for i in range(200_000))  # some work of our own
    record = share.finish()
    if sys.platform.startswith("linux"):
        assert 0.0 <= record["wait_s"] <= record["wall_s"]
        assert record["wait_share"] == record["wait_s"] / record["wall_s"]
    else:
        assert "wait_s" not in record


def test_the_runner_records_machine_share_per_epoch_and_for_the_run(tmp_path) -> None:
    import json

    from leantrain.runs.config import from_dict
    from leantrain.runs.runner import run

    cfg = from_dict({"data": {"dataset": "mnist-sample", "train_subset": 64, "test_subset": 32},
                     "model": {"name": "test_resnet"}, "out_dir": str(tmp_path),
                     "train": {"epochs": 2, "batch_size": 32}})
    _, folder = run(cfg, show_progress=False)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert all("cpu_share" in r["machine"] for r in rows)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["machine"]["segments_checked"] == 2 and "quiet" in summary["machine"]
