"""`leantrain report`: aggregation on hand-made rows, environment checks, generated documents."""

from __future__ import annotations

import json
import math

import pytest

from leantrain.cli import main
from leantrain.harness.frontier import build_frontiers
from leantrain.harness.report import (
    END,
    START,
    check_environment,
    load_rows,
    markdown_table,
    method_schedule_table,
    replace_between_markers,
    schedule_comparison,
    summarize,
    write_report,
)

ENV = {
    "device": "cpu",
    "cpu": "Test CPU",
    "cores": 2,
    "threads": 2,
    "torch": "2.13.0",
    "python": "3.11",
    "git_commit": "abc1234",
}


def _row(
    label,
    method,
    seed,
    acc,
    train_s,
    *,
    fwd=100.0,
    train=300.0,
    macs=50,
    epochs=3,
    env=ENV,
    surgery_s=0.0,
    dataset="cifar10",
    model="resnet20",
):
    return {
        "key": f"s|{dataset}/{model}/{label}/seed{seed}|x",
        "suite": "s",
        "label": label,
        "dataset": dataset,
        "model": model,
        "method": method,
        "seed": seed,
        "config": {
            "data": {"dataset": dataset, "train_subset": 2000},
            "model": {"name": model},
            "train": {
                "epochs": epochs,
                "batch_size": 128,
                "lr": 0.1,
                "schedule": "cosine",
                "warmup": 0.1,
                "weight_decay": 5e-4,
            },
            "method": method,
            "method_args": {},
            "seed": seed,
        },
        "env": env,
        "test_acc": acc,
        "train_s": train_s,
        "surgery_s": surgery_s,
        "eval_s": 1.0,
        "forward_flops": fwd,
        "dense_forward_flops": 100.0,
        "train_flops": train,
        "dense_train_flops": 300.0,
        "final_macs": macs,
        "dense_macs": 50,
        "final_params": 1000,
        "dense_params": 1000,
        "peak_rss_mb": 500.0 + seed,
        "rss_start_mb": 400.0,
        "train_images": 2000,
        "test_images": 1000,
        "trace": {
            "epochs": [
                {"epoch": 1, "step": 10, "train_flops": train / 2, "samples": 100},
                {"epoch": 2, "step": 20, "train_flops": train, "samples": 200},
            ],
            "events": [{"kind": "drop", "step": 12}] if method != "none" else [],
        },
    }


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    _row("dense", "none", 0, 0.90, 10.0),
    _row("dense", "none", 1, 0.92, 12.0),
    _row("dcp-p0.5", "dcp", 0, 0.88, 4.0, surgery_s=1.0, fwd=50.0, train=180.0, macs=25),
    _row("dcp-p0.5", "dcp", 1, 0.90, 7.0, fwd=60.0, train=150.0, macs=25),
    _row("learndrop", "learndrop", 0, 0.85, 8.0),
]


@pytest.fixture
def results(tmp_path):
    return _write(tmp_path / "s-cpu2-torch2.13.0.jsonl", ROWS)


def test_summaries_aggregate_over_seeds(results) -> None:
    dense, dcp, ld = summarize(load_rows([results]))
    assert [s.label for s in (dense, dcp, ld)] == ["dense", "dcp-p0.5", "learndrop"]
    assert dcp.n == 2 and dcp.mean("acc") == pytest.approx(89.0)
    assert dcp.std("acc") == pytest.approx(math.sqrt(2))  # sample std of 88 and 90
    assert dcp.mean("time_s") == pytest.approx(6.0)  # (4 + 1 surgery) and 7: eval excluded
    assert dcp.speedup == pytest.approx(11.0 / 6.0)  # mean dense time / mean method time
    assert dcp.mean("r_cum") == pytest.approx(0.45)  # 1 - (50/100 + 60/100) / 2
    assert dcp.mean("r_train") == pytest.approx(1 - (180 + 150) / 600)
    assert dcp.mean("r_final") == pytest.approx(0.5)
    assert dcp.mean("peak_rss_mb") == pytest.approx(500.5)
    assert ld.std("acc") is None and ld.speedup == pytest.approx(11.0 / 8.0)


def test_markdown_marks_single_seeds_and_dense_baseline(results) -> None:
    table = markdown_table(summarize(load_rows([results])))
    lines = table.splitlines()
    assert lines[0].startswith("| Data set | Model | Method | Top-1 %")
    assert "89.00 ± 1.41 (n=2)" in table and "1.83×" in table
    assert "85.00 (n=1, single seed)" in table
    assert "| 500 (+100) |" in table  # peak RSS and what training added
    assert "| dense |" in lines[2] and "1.00×" in lines[2]
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    headline = markdown_table(summarize(load_rows([results])), headline=True)
    assert "Peak RSS" not in headline and "Speed-up vs dense" in headline


def test_speedup_only_against_dense_of_the_same_recipe(tmp_path) -> None:
    rows = [_row("dense", "none", 0, 0.9, 10.0), _row("dcp", "dcp", 0, 0.9, 5.0, epochs=5)]
    _, dcp = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    assert dcp.speedup is None
    assert "| – |" in markdown_table([dcp])


def _budgeted(row, budget, schedule="cosine"):
    row["config"]["train"].update(budget=budget, schedule=schedule)
    return row


def test_dense_at_a_budget_is_a_frontier_point_measured_against_full_length_dense(tmp_path) -> None:
    """A dense row trained for part of the epochs (or with another decaying schedule) shares the
    recipe's full-length dense baseline, whatever order the rows come in; it is never the
    baseline itself."""
    rows = [
        _budgeted(_row("dense-b0.3", "none", 0, 0.80, 3.0), 0.3),
        _budgeted(_row("dense-linear-b0.3", "none", 0, 0.81, 3.3), 0.3, "linear"),
        _row("dense", "none", 0, 0.90, 10.0),
        _row("dcp", "dcp", 0, 0.85, 6.0),
    ]
    summaries = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    assert [s.label for s in summaries][0] == "dense"
    by = {s.label: s for s in summaries}
    assert all(s.dense is by["dense"] for s in summaries)
    assert by["dense-b0.3"].budget == 0.3 and by["dense-b0.3"].time_ratio == pytest.approx(0.3)
    assert by["dense-linear-b0.3"].time_ratio == pytest.approx(0.33)
    table = markdown_table(summaries)
    assert [line.split("|")[3].strip() for line in table.splitlines()[2:] if "1.00×" in line] == ["dense"]


def test_the_report_names_the_stronger_schedule_where_a_budget_ran_under_two(tmp_path) -> None:
    rows = [
        _budgeted(_row("dense-b0.3", "none", 0, 0.80, 3.0, epochs=10), 0.3),
        _budgeted(_row("dense-b0.3", "none", 1, 0.82, 3.0, epochs=10), 0.3),
        _budgeted(_row("dense-linear-b0.3", "none", 0, 0.83, 3.0, epochs=10), 0.3, "linear"),
        _budgeted(_row("dense-linear-b0.3", "none", 1, 0.84, 3.0, epochs=10), 0.3, "linear"),
        _budgeted(_row("dense-linear-b0.6", "none", 0, 0.86, 6.0, epochs=10), 0.6, "linear"),
        _row("dense", "none", 0, 0.90, 10.0, epochs=10),
    ]

    def frontier_of(rows, name):
        (frontier,) = build_frontiers(summarize(load_rows([_write(tmp_path / name, rows)]))).values()
        return frontier

    text = schedule_comparison(frontier_of(rows, "r.jsonl"))
    # only the budget that ran under both schedules is compared
    assert text == (
        "Schedules compared at the same budget (the frontier takes the stronger point): at 3 "
        "epochs, linear 83.50 ± 0.71 (n=2), cosine 81.00 ± 1.41 (n=2): linear is 2.50 points "
        "stronger.")
    one_schedule = [r for r in rows if r["label"] != "dense-b0.3"]
    assert schedule_comparison(frontier_of(one_schedule, "one.jsonl")) is None


def test_a_method_under_two_schedules_is_set_side_by_side_recipe_schedule_first(tmp_path) -> None:
    """The same method and settings under the recipe's cosine and under linear decay pair up;
    a run whose method settings differ, or that ran under one schedule only, does not."""
    def ld(label, seed, acc, schedule="cosine", args=None):
        row = _budgeted(_row(label, "learndrop", seed, acc, 5.0, epochs=10, train=150.0),
                        1.0, schedule)
        row["config"]["method_args"] = {"learndrop": args or {"tau": 0.5}}
        return row

    rows = [
        _row("dense", "none", 0, 0.90, 10.0, epochs=10),
        _row("dense", "none", 1, 0.92, 10.0, epochs=10),
        _budgeted(_row("dense-linear-b0.3", "none", 0, 0.80, 3.0, epochs=10, train=90.0), 0.3,
                  "linear"),
        ld("ld-linear", 0, 0.88, "linear"),
        ld("ld-linear", 1, 0.86, "linear"),
        ld("ld", 0, 0.84),
        ld("ld", 1, 0.85),
        ld("ld-tau0.3-linear", 0, 0.87, "linear", {"tau": 0.3}),
        ld("dcp-like", 0, 0.83, args={"tau": 0.9}),
    ]
    summaries = summarize(load_rows([_write(tmp_path / "m.jsonl", rows)]))
    (frontier,) = build_frontiers(summaries).values()
    lines = method_schedule_table(frontier, summaries).splitlines()
    cosine = next(s for s in summaries if s.label == "ld")
    assert [line.split("|")[1:3] for line in lines[2:]] == [
        [" ld ", " cosine "], [" ld-linear ", " linear "]]
    assert lines[2] == ("| ld | cosine | 84.50 ± 0.71 (n=2) | 0.50× | 0.0 | "
                        f"{frontier.distance(cosine, 'time'):+.2f} / "
                        f"{frontier.distance(cosine, 'flops'):+.2f} |")
    assert " 87.00 ± 1.41 (n=2) " in lines[3]
    # only one schedule per setting: nothing to compare
    alone = [r for r in rows if r["label"] != "ld"]
    summaries = summarize(load_rows([_write(tmp_path / "alone.jsonl", alone)]))
    (frontier,) = build_frontiers(summaries).values()
    assert method_schedule_table(frontier, summaries) is None


def test_no_time_ratio_from_a_run_that_shared_the_machine(tmp_path) -> None:
    quiet = {"cpu_share": 0.95, "threads": 2, "load_end": [2.1, 2.0, 2.0]}
    shared = {"cpu_share": 0.55, "threads": 2, "load_end": [3.9, 3.0, 2.0]}
    rows = [
        {**_row("dense", "none", 0, 0.9, 10.0), "machine": quiet},
        {**_row("dense", "none", 1, 0.9, 14.0), "machine": shared},  # slowed by other work
        {**_row("dcp", "dcp", 0, 0.9, 5.0), "machine": quiet},
        {**_row("ld", "learndrop", 0, 0.9, 6.0), "machine": shared},
    ]
    dense, dcp, ld = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    assert dcp.speedup == 2.0  # 10 s (the quiet dense row only) / 5 s
    assert ld.speedup is None and ld.contended == 1
    table = markdown_table([dense, dcp, ld])
    assert "| 12.0 (1 shared) | 1.00× |" in table
    assert "| 6.0 (1 shared) | – (shared machine) |" in table


def test_each_environment_is_reported_apart(tmp_path, results) -> None:
    other = _write(
        tmp_path / "s-gpu.jsonl",
        [_row("dense", "none", 0, 0.9, 1.0, env={**ENV, "cpu": "Other CPU", "cores": 16})],
    )
    with pytest.raises(ValueError, match="different environments"):
        check_environment(load_rows([results, other]))
    # The report gives each environment its own section; times are compared within one only.
    assert main(["report", str(results), str(other), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## On Test CPU, torch 2.13.0" in text and "## On Other CPU, torch 2.13.0" in text
    assert text.count("### Settings") == 2


def test_a_suite_spread_over_two_machines_pools_accuracy_and_times_each_machine_apart(
    tmp_path,
) -> None:
    # Seed 0 on a slow machine, seed 1 on one twice as fast (same cores and torch): accuracy is
    # one population, but a second on one machine is not a second on the other.
    fast = {**ENV, "cpu": "Fast CPU"}
    rows = [
        _row("dense", "none", 0, 0.90, 100.0),
        _row("ld", "learndrop", 0, 0.88, 50.0),
        _row("dense", "none", 1, 0.92, 50.0, env=fast),
        _row("ld", "learndrop", 1, 0.90, 40.0, env=fast),
        _row("dcp", "dcp", 1, 0.91, 25.0, env=fast),
        _row("other", "dcp", 0, 0.91, 25.0, env={**ENV, "cpu": "Third CPU"}),  # no dense there
    ]
    dense, ld, dcp, other = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    assert ld.n == 2 and ld.mean("acc") == pytest.approx(89.0) and ld.std("acc") is not None
    # 50/100 on the first machine, 40/50 on the second: mean 0.65 (pooled seconds would say
    # 45 / 75 = 0.6, a number no machine measured).
    assert ld.time_ratios == pytest.approx([0.5, 0.8])
    assert ld.time_ratio == pytest.approx(0.65) and ld.speedup == pytest.approx(1 / 0.65)
    assert dcp.time_ratio == pytest.approx(0.5)
    assert other.speedup is None  # dense never ran on its machine
    assert dense.time_ratio == pytest.approx(1.0)
    table = markdown_table([dense, ld, dcp, other])
    assert "| 100.0 (A), 50.0 (B) | 1.00× |" in table
    assert "| 50.0 (A), 40.0 (B) | 1.54× |" in table
    assert "(A) Test CPU; (B) Fast CPU; (C) Third CPU" in table
    # One section (same cores and torch), both machines named in its settings.
    assert main(["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.count("## Settings") == 1
    assert "Test CPU (2 runs); Fast CPU (3 runs); Third CPU (1 run)" in text


def test_git_commit_and_threads_do_not_split_an_environment(results) -> None:
    rows = load_rows([results])
    rows[0] = {**rows[0], "env": {**ENV, "git_commit": "fffffff"}}
    assert check_environment(rows)["cpu"] == "Test CPU"


def test_report_writes_markdown_plots_benchmarks_and_readme(tmp_path, results) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# leantrain\n\nintro\n\n{START}\nold table\n{END}\n\n## Quick start\n")
    bench_md = tmp_path / "BENCHMARKS.md"
    out = tmp_path / "benchmarks" / "report"
    result = write_report([results], out, benchmarks=bench_md, readme=readme)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["s-cifar10-resnet20-flops.png", "s-cifar10-resnet20-pareto.png"]
    assert all((out / p).stat().st_size > 5000 for p in pngs)
    assert (out / "report.md").read_text() == result["markdown"]
    text = bench_md.read_text()
    settings, tables = text.index("## Settings"), text.index("| Data set | Model | Method")
    assert settings < tables
    assert "Test CPU" in text and "torch 2.13.0" in text and "evaluation" in text
    assert "JPEG" in text  # the CIFAR-10 copy is lossy, said next to its numbers
    assert "](benchmarks/report/s-cifar10-resnet20-pareto.png)" in text
    assert "--write-benchmarks" in text
    assert "Machine time: 0.0 h over 5 runs (training, evaluation and checkpoint time" in text
    new = readme.read_text()
    assert "old table" not in new and new.startswith("# leantrain\n\nintro")
    assert new.endswith("## Quick start\n") and "89.00 ± 1.41 (n=2)" in new
    assert "leantrain bench s && leantrain report" in new


def test_readme_without_markers_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="results:start"):
        replace_between_markers("# no markers here\n", "table")
    assert replace_between_markers(f"a{START}x{END}b", "T") == f"a{START}\nT\n{END}b"


def test_missing_results_file_is_a_user_error(tmp_path, capsys) -> None:
    assert main(["report", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("dataset"), "row 3 has no 'dataset' field"),
        (lambda r: r.pop("test_acc"), "row 3 has no 'test_acc' field"),
        (lambda r: r.update(test_acc="high"), 'row 3 has test_acc = "high", which must be a number'),
        (lambda r: r.update(train_s="1s"), 'row 3 has train_s = "1s", which must be a number'),
        (lambda r: r.update(seed=True), "row 3 has seed = true, which must be a whole number"),
        (lambda r: r.update(env=None), "row 3 has env = null, which must be an object"),
        (lambda r: r["config"].update(data=5), "row 3 has config.data = 5, which must be an object"),
    ],
)
def test_a_row_the_report_cannot_read_is_named(tmp_path, change, message, capsys) -> None:
    rows = [dict(r, config=dict(r["config"])) for r in ROWS]
    change(rows[2])
    path = _write(tmp_path / "s-cpu2-torch2.13.0.jsonl", rows)
    expected = (f"results file {path}: {message}; rerun its suite with `leantrain bench` or "
                "delete that row.")
    with pytest.raises(ValueError) as e:
        load_rows([path])
    assert str(e.value) == expected
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"leantrain: error: {expected}\n"


def test_rows_without_optional_measurements_are_reported(tmp_path) -> None:
    rows = [dict(r, peak_rss_mb=None) for r in ROWS]  # peak RSS unknown on this platform
    [*_, ld] = summarize(load_rows([_write(tmp_path / "s-cpu2-torch2.13.0.jsonl", rows)]))
    assert ld.mean("peak_rss_mb") is None and ld.mean("acc") == pytest.approx(85.0)


def _paper_rows():
    """A `paper`-suite ResNet-32: dense 91.5%, Learn&Drop 0.80× at −1 point, DCP sliced 0.70× at
    −1.5 points with a 50% compact cut, the static half-width network at 0.50×."""
    def row(label, method, seed, acc, train_s, args=None, **kw):
        r = _row(label, method, seed, acc, train_s, model="resnet32", **kw)
        r["suite"] = "paper"
        r["key"] = r["key"].replace("s|", "paper|")
        r["config"]["method_args"] = args or {}
        return r

    return [
        row("dense", "none", 0, 0.91, 10.0),
        row("dense", "none", 1, 0.92, 10.0),
        row("learndrop", "learndrop", 0, 0.90, 8.0, train=240.0, macs=30,
            args={"learndrop": {"tau": 0.5}}),
        row("learndrop", "learndrop", 1, 0.91, 8.0, train=240.0, macs=30,
            args={"learndrop": {"tau": 0.5}}),
        row("dcp-p0.5", "dcp", 0, 0.90, 7.0, train=150.0, macs=25,
            args={"dcp": {"p": 0.5, "warmup": 0.05, "compute_multiple": 8}}),
        row("static-p0.5", "static", 0, 0.89, 5.0, train=150.0, macs=25,
            args={"static": {"p": 0.5, "widths": []}}),
    ]


def test_story_states_each_verdict_and_the_numbers_that_explain_it() -> None:
    from leantrain.harness.story import story

    rows = _paper_rows()
    for r in rows:
        r["_file"] = "paper-cpu2.jsonl"
    dense, ld, dcp, static = story(summarize(rows))
    assert dense.startswith("- **Dense resnet32** (2 seeds): 91.50% ± 0.71 top-1 after 3 epochs")
    assert "the recipe's bar of 90% is met" in dense
    assert "0.80× dense training time (paper: ≤ 0.5×; **missed**)" in ld
    assert "top-1 -1.00 points vs dense (paper: within 3.2; met)" in ld
    # one removal per run at step 12 of 20; the trace's last epoch ends at step 20
    assert "It removed 1 block per run, at 60% of training" in ld
    assert "Training FLOPs fell 20% and time 20%: 1.00× the FLOPs saving" in ld
    assert "halving the time needs a ≥ 50% cut in training FLOPs" in ld
    assert "50.0% fewer FLOPs (authors: 50.2%; not judged yet: one seed)" not in dcp
    assert "50.0% fewer FLOPs (authors: 50.2%; **missed**)" in dcp
    assert "sliced training at 0.70× dense time (≤ 0.75×; met)" in dcp
    assert "top-1 -1.50 points vs dense (≤ 1 point; **missed**)" in dcp
    assert "The static network `static-p0.5`" in dcp and "0.50× dense time at -2.50 points" in dcp
    assert static.startswith("- **static-p0.5** on resnet32 (1 seed): 0.50× dense time")
    assert "control" not in dcp  # no row at DCP's own widths yet


def test_story_sets_the_static_control_at_dcps_widths_beside_dcp() -> None:
    from leantrain.harness.story import story

    rows = _paper_rows()
    control = json.loads(json.dumps(rows[-1]))  # the static row, at DCP's final widths
    control["label"] = "static@dcp-p0.5"
    control["key"] = control["key"].replace("static-p0.5", "static@dcp-p0.5")
    control["config"]["method_args"] = {"static": {"p": 0.5, "widths": [8, 16, 32]}}
    control["test_acc"], control["train_s"] = 0.895, 6.0
    for r in [*rows, control]:
        r["_file"] = "paper-cpu2.jsonl"
    [dcp] = [line for line in story(summarize([*rows, control]))
             if line.startswith("- **dcp-p0.5**")]
    assert ("The control `static@dcp-p0.5`, the network of the widths this run ended with "
            "trained densely from the first step (Liu et al., arXiv 1810.05270), reached "
            "89.50% (-0.50 points vs DCP) at 0.60× dense time.") in dcp
    # the uniform half-width network stays the speed bound, not the control
    assert "The static network `static-p0.5`" in dcp


def test_story_says_how_close_a_threshold_rule_that_never_fired_came(tmp_path) -> None:
    import json

    from leantrain.harness.bench import _trace
    from leantrain.harness.story import story

    # a run folder's files as training writes them: no drop, three Learn&Drop checkpoints
    units = lambda a, b: {"layer1.0": {"S": a, "C": -0.1}, "layer3.4": {"S": b, "C": -0.1},
                          "layer2.0": {"S": None, "C": None}}  # no score yet: ignored
    events = [{"kind": "ld_checkpoint", "step": 1, "epoch": 1, "units": units(0.9, 0.40)},
              {"kind": "ld_checkpoint", "step": 10, "epoch": 5, "units": units(0.8, 0.55)},
              {"kind": "ld_checkpoint", "step": 16, "epoch": 8, "units": units(0.7, 0.52)},
              {"kind": "ld_checkpoint", "step": 18, "epoch": 9, "units": units(0.7, 0.30)}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": i, "step": 2 * i}) + "\n" for i in range(1, 11)))
    trace = _trace(tmp_path)
    assert [(e.get("lowest_S"), e.get("lowest_unit")) for e in trace["events"]] == [
        (0.40, "layer3.4"), (0.55, "layer3.4"), (0.52, "layer3.4"), (0.30, "layer3.4")]

    rows = [r for r in _paper_rows() if r["method"] == "none"]
    ld = _paper_rows()[2]
    ld["config"]["method_args"] = {"learndrop": {"tau": 0.5, "warmup": 0.1, "stop": 0.75,
                                                 "normalize": "peers"}}
    ld["trace"] = trace
    for r in [*rows, ld]:
        r["_file"] = "paper-cpu2.jsonl"
    line = story(summarize([*rows, ld]))[-1]
    # the checkpoints at 5% (S 0.40, in the warm-up) and 80–90% (after the stop) do not count
    assert "It removed no block: no block met the drop rule (τ = 0.5)" in line
    assert "lowest score while drops were allowed (10%–75% of training) was S = 0.52 " \
           "(layer3.4, at 80%)" not in line  # 80% is past the stop
    assert "was S = 0.55 (layer3.4, at 50%)" in line
    assert "changed at 0.55× the rate of the block that changed most" in line


def test_story_says_why_a_threshold_rule_stopped_after_one_drop_and_that_time_rose(
        tmp_path) -> None:
    import json

    from leantrain.harness.bench import _trace
    from leantrain.harness.story import story

    units = lambda **scores: {name.replace("_", "."): {"S": v, "C": -0.1}
                              for name, v in scores.items()}
    events = [{"kind": "ld_checkpoint", "step": 4, "epoch": 2, "units": units(layer1_0=0.8,
                                                                              layer3_4=0.6)},
              {"kind": "ld_checkpoint", "step": 10, "epoch": 5, "units": units(layer1_0=0.7,
                                                                               layer3_4=0.45)},
              {"kind": "drop", "step": 10, "unit": "layer3.4"},
              {"kind": "ld_checkpoint", "step": 12, "epoch": 6, "units": units(layer1_0=0.62)},
              {"kind": "ld_checkpoint", "step": 14, "epoch": 7, "units": units(layer1_0=0.58)},
              {"kind": "ld_checkpoint", "step": 18, "epoch": 9, "units": units(layer1_0=0.3)}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": i, "step": 2 * i}) + "\n" for i in range(1, 11)))
    rows = [r for r in _paper_rows() if r["method"] == "none"]
    ld = _paper_rows()[2]
    ld["config"]["method_args"] = {"learndrop": {"tau": 0.5, "warmup": 0.1, "stop": 0.75}}
    ld["trace"] = _trace(tmp_path)
    ld["train_s"] = 10.2  # dense took 10 s: slower, though it cut FLOPs
    for r in [*rows, ld]:
        r["_file"] = "paper-cpu2.jsonl"
    line = story(summarize([*rows, ld]))[-1]
    assert "It removed 1 block per run, at 50% of training" in line
    # after the drop at 50% and before the stop at 75%: 0.62 at 60%, 0.58 at 70% (0.3 is at 90%)
    assert ("After that no other block met the drop rule: the lowest score until drops stopped "
            "(75% of training) was S = 0.58 (layer1.0, at 70%).") in line
    assert "1.02× dense training time" in line
    assert "Training FLOPs fell 20% and time rose 2%" in line
    assert "reached the clock" not in line
    # budget mode removes by rank, not by the rule: no such sentence
    ld["config"]["method_args"]["learndrop"]["mode"] = "budget"
    assert "After that" not in story(summarize([*rows, ld]))[-1]
    # a score under τ that was kept (still picking up, or a limit): said so, not hidden
    ld["config"]["method_args"]["learndrop"].update(mode="threshold", tau=0.6)
    assert "was S = 0.58 (layer1.0, at 70%), under τ but kept by the rule's other conditions" \
        in story(summarize([*rows, ld]))[-1]


def test_readme_leads_with_the_paper_suite_and_keeps_the_quick_reproducer(tmp_path) -> None:
    quick = [dict(r, suite="quick", key=r["key"].replace("s|", "quick|")) for r in ROWS]
    paper = _write(tmp_path / "paper-cpu2-torch2.13.0.jsonl", _paper_rows())
    quick_file = _write(tmp_path / "quick-cpu2-torch2.13.0.jsonl", quick)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{START}\nold\n{END}\n")
    write_report([paper, quick_file], tmp_path / "out", readme=readme)
    text = readme.read_text()
    assert text.index("Suite `paper`") < text.index("What these rows say") < text.index(
        "**Quick reproducer.** Suite `quick`")
    assert "leantrain bench paper && leantrain bench quick && leantrain report" in text
    assert text.count("What these rows say") == 1  # the quick suite's table stands alone
    with pytest.raises(ValueError, match="no results of suite 'nope'"):
        write_report([paper], tmp_path / "out", readme=readme, readme_suites=["nope"])


def test_headline_says_what_halved_the_time_the_fastest_and_what_held_accuracy(tmp_path) -> None:
    from leantrain.harness.story import headline

    rows = _paper_rows()
    for r in rows:
        r["_file"] = "paper-cpu2.jsonl"
    [line] = headline(summarize(rows))
    assert line.startswith(
        "- **cifar10 / resnet32** (3 epochs, 1–2 seeds per row; dense 91.50%):")
    assert ("halved the training time: `static-p0.5` (a static network trained from the first "
            "step, a control) at 0.50× dense time, -2.50 points.") in line
    assert ("Within 1 point of dense accuracy: `learndrop` at 0.80× dense time, -1.00 points."
            in line)
    [line] = headline(summarize(rows[:-1]))  # without the control nothing halved
    assert ("no method halved the training time; the fastest was `dcp-p0.5` at 0.70× dense "
            "time, -1.50 points. Fastest Learn&Drop run within the paper's 3.2 points: "
            "`learndrop` at 0.80× dense time, -1.00 points.") in line
    # outside the paper's range a Learn&Drop run is not offered as its trade
    far = [dict(r, test_acc=0.8) if r["method"] == "learndrop" else r for r in rows[:-1]]
    assert "Fastest Learn&Drop run" not in headline(summarize(far))[0]
    # when every run was slower than dense, none is called "the fastest"
    slower = [dict(r, train_s=12.0) if r["method"] != "none" else r for r in rows]  # dense: 10 s
    line = headline(summarize(slower))[0]
    assert "no method trained faster than dense: `" in line
    assert "the fastest" not in line and "Fastest" not in line and "Within 1 point" not in line
    slow = [dict(r, test_acc=0.5) if r["method"] != "none" else r for r in rows]
    assert "None stayed within 1 point of dense accuracy." in headline(summarize(slow))[0]
    # a contended dense baseline gives no ratio, so no headline
    shared = [dict(r, machine={"cpu_share": 0.2, "quiet": False}) if r["method"] == "none"
              else r for r in rows]
    assert headline(summarize(shared)) == []


def test_readme_puts_the_headline_above_the_paper_table(tmp_path) -> None:
    paper = _write(tmp_path / "paper-cpu2-torch2.13.0.jsonl", _paper_rows())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{START}\nold\n{END}\n")
    write_report([paper], tmp_path / "out", readme=readme)
    text = readme.read_text()
    assert (text.index("Suite `paper`") < text.index("In short")
            < text.index("| Data set |") < text.index("What these rows say"))


def _epoch_trace(seconds, flops):
    """A trace of whole epochs: each epoch's training seconds and training FLOPs, cumulated."""
    epochs, t, f = [], 0.0, 0.0
    for i, (s, x) in enumerate(zip(seconds, flops), start=1):
        t, f = t + s, f + x
        epochs.append({"epoch": i, "step": 10 * i, "train_s": t, "surgery_s": 0.0,
                       "train_flops": f})
    return {"epochs": epochs, "events": []}


def test_pace_check_measures_drift_where_a_run_did_dense_work(tmp_path) -> None:
    """Learn&Drop's epochs before its first removal compute what dense computes: their time
    against dense's same epochs on the same machine says how far the machine itself moved."""
    from leantrain.harness.pace import drift_sentence, pace_checks, pace_table

    other = {**ENV, "cpu": "Other CPU"}
    rows = [
        _row("dense", "none", 0, 0.90, 40.0),
        _row("ld", "learndrop", 0, 0.90, 32.0),  # 3 epochs of dense work at 0.9×, then a drop
        _row("ld", "learndrop", 1, 0.90, 35.3),  # the same at 1.01×
        _row("ld", "learndrop", 2, 0.90, 30.0, env=other),  # no dense on its machine
        _row("dcp", "dcp", 0, 0.90, 44.0),  # masked: dense's FLOPs, but masking is its own work
        _row("late", "learndrop", 0, 0.90, 30.0),  # only 2 epochs of dense's work: too few
    ]
    rows[0]["trace"] = _epoch_trace([10, 10, 10, 10], [100] * 4)
    rows[1]["trace"] = _epoch_trace([9, 9, 9, 5], [100, 100, 100, 50])
    rows[2]["trace"] = _epoch_trace([10.1, 10.1, 10.1, 5], [100, 100, 100, 50])
    rows[3]["trace"] = _epoch_trace([8, 8, 8, 6], [100, 100, 100, 50])
    rows[4]["trace"] = _epoch_trace([11] * 4, [100] * 4)
    rows[5]["trace"] = _epoch_trace([9, 9, 6, 6], [100, 100, 50, 50])
    for r in rows:
        r["_file"] = "r.jsonl"
    dense, ld, dcp, late = summarize(rows)
    checks = pace_checks(ld)
    assert [(p.seed, p.epochs) for p in checks] == [(0, (1, 2, 3)), (1, (1, 2, 3))]
    assert [p.ratio for p in checks] == pytest.approx([0.9, 1.01])
    assert pace_checks(dcp) == [] and pace_checks(late) == [] and pace_checks(dense) == []
    table = pace_table([dense, ld, dcp, late])
    # seed 0: 32 s against dense's 40 s = 0.80×, at dense's pace 0.80 / 0.9 = 0.89×
    assert [p.time_ratio for p in checks] == pytest.approx([0.8, 35.3 / 40])
    assert "| ld | 0 | Test CPU | 1–3 | 0.900× | 0.80× | 0.89× |" in table
    assert "| ld | 1 | Test CPU | 1–3 | 1.010× | 0.88× | 0.87× |" in table
    assert "Other CPU" not in table
    drift = drift_sentence([dense, ld, dcp, late])
    assert "in 1 of 2 runs checked they did not (`ld` seed 0 on Test CPU: 3 epochs at 0.90×" in drift
    assert drift.endswith("the other 1 were within 3% of 1.00.")
    # In the report, below the suite's table; without traces of seconds there is nothing to say.
    write_report([_write(tmp_path / "r.jsonl", rows)], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Pace check (`leantrain.harness.pace`)" in text and table in text
    assert pace_table(summarize(load_rows([_write(tmp_path / "plain.jsonl", ROWS)]))) is None


def _compile_row(model: str, method: str, backend: str, ms: float, **extra) -> dict:
    return {"model": model, "method": method, "backend": backend, "batch": 128, "steps": 120,
            "timed_steps": 40, "step_ms": ms, "graphs": extra.get("graphs", 0),
            "compile_s": extra.get("compile_s", 0.0), "graph_breaks": 0,
            "env": {"torch": "2.13.0", "device": "cpu", "cpu": "Test CPU", "threads": 2}}


def test_compile_section_judges_dcp_against_compiled_dense_times_its_eager_ratio(tmp_path) -> None:
    from leantrain.harness.compile_table import compile_section, load_compile_rows

    rows = [_compile_row("resnet32", "dense", "eager", 200.0),
            _compile_row("resnet32", "dcp", "eager", 160.0),
            _compile_row("resnet32", "dense", "inductor", 150.0, graphs=1, compile_s=40.0),
            _compile_row("resnet32", "dcp", "inductor", 130.0, graphs=2, compile_s=70.0),
            _compile_row("vgg16", "dense", "eager", 300.0),
            _compile_row("vgg16", "dcp", "eager", 150.0),
            _compile_row("vgg16", "dense", "inductor", 200.0, graphs=1),
            _compile_row("vgg16", "dcp", "inductor", 90.0, graphs=2)]
    path = tmp_path / "compile-test.jsonl"
    stale = _compile_row("resnet32", "dcp", "inductor", 999.0)
    path.write_text("\n".join(json.dumps(r) for r in [stale, *rows]) + "\n")
    loaded = load_compile_rows([tmp_path])
    assert len(loaded) == 8 and 999.0 not in [r["step_ms"] for r in loaded]  # the last row counts
    text = "\n".join(compile_section(loaded))
    assert "| resnet32 | dcp | 160 | 130 | 0.81× | 0.80× | 0.87× | 70 | 2 | 0 |" in text
    # resnet32: bound 150 × 0.80 = 120 < 130: missed; vgg16: bound 200 × 0.50 = 100 > 90: met
    assert "resnet32: compiled DCP 130 ms/step against the bound compiled dense × DCP's eager " \
           "ratio = 150 × 0.80 = 120 ms: misses it (1.08× the bound)" in text
    assert "vgg16: compiled DCP 90 ms/step" in text and "= 100 ms: meets it (0.90× the bound)" in text
    assert compile_section([]) == []


def test_compile_section_says_why_compiled_dcp_has_no_row() -> None:
    from leantrain.harness.compile_table import compile_section

    rows = [_compile_row("resnet32", "dense", "eager", 300.0),
            _compile_row("resnet32", "dense", "inductor", 290.0, graphs=1),
            _compile_row("resnet32", "dcp", "eager", 280.0)]
    text = "\n".join(compile_section(rows))
    assert "| resnet32 | dcp | 280 | – | – | 0.93× | – | – | – | – |" in text
    assert "resnet32: compiled DCP has no step time" in text and "trains DCP eager" in text
