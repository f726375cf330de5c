"""`leantrain bench`: suite parsing and run order, result rows, resuming, and the shipped suites."""

from __future__ import annotations

import dataclasses
import json

import pytest

from leantrain.harness.bench import (
    load_suite,
    read_results,
    results_path,
    run_suite,
    suite_names,
)
from leantrain.cli import main
from leantrain.config import ConfigError
from leantrain.methods.dcp import DCP

TINY = """
name = "tiny"
seeds = [0]
[defaults]
train = { threads = 1 }
[recipe.cifar10]
train = { epochs = 1, batch_size = 25, lr = 0.05 }
[methods]
dense = { method = "none" }
"dcp-p0.5" = { method = "dcp", args = { dcp = { p = 0.5 } } }
[[grid]]
datasets = ["cifar10"]
models = ["test_resnet"]
methods = ["dcp-p0.5", "dense"]
"""


def _suite(tmp_path, text: str = TINY):
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_dense_runs_first_and_methods_follow_back_to_back(tmp_path) -> None:
    text = TINY.replace('models = ["test_resnet"]', 'models = ["test_resnet", "test_vgg"]')
    text += (
        '[[grid]]\ndatasets = ["cifar10"]\nmodels = ["test_vgg"]\nseeds = [5]\n'
        'methods = [{label = "dcp-mask", method = "dcp", args = {dcp = {p = 0.5, mode = "mask"}}},'
        ' "dense"]\ntrain = { epochs = 2 }\nmethod_args = { dcp = { warmup = 0.2 } }\n'
    )
    suite = load_suite(_suite(tmp_path, text), seeds=None)
    names = [r.name for r in suite.runs]
    assert names == [
        "cifar10/test_resnet/dense/seed0",
        "cifar10/test_resnet/dcp-p0.5/seed0",
        "cifar10/test_vgg/dense/seed0",
        "cifar10/test_vgg/dcp-p0.5/seed0",
        "cifar10/test_vgg/dense/seed5",
        "cifar10/test_vgg/dcp-mask/seed5",
    ]
    last = suite.runs[-1].config
    assert last.train.epochs == 2 and last.train.threads == 1 and last.train.lr == 0.05
    # every DCP setting is recorded, the given ones over the defaults
    assert last.method_args == {"dcp": {**dataclasses.asdict(DCP()), "p": 0.5, "mode": "mask", "warmup": 0.2}}
    assert suite.runs[0].config.out_dir == "runs/bench/tiny"
    # a different recipe is a different run: its key (config digest) differs
    assert suite.runs[2].key != suite.runs[4].key
    seeds = load_suite(_suite(tmp_path, text), seeds=[1, 2])
    assert {r.config.seed for r in seeds.runs} == {1, 2}


def test_a_method_row_may_set_its_own_budget_and_schedule(tmp_path) -> None:
    """The dense frontier's rows: dense at a share of the recipe's epochs, the schedule compressed
    into them; the row's settings win over the recipe's, and it is another run than dense."""
    text = TINY.replace(
        '[[grid]]',
        '"dense-b0.5" = { method = "none", train = { budget = 0.5, schedule = "linear" } }\n[[grid]]',
    ).replace('methods = ["dcp-p0.5", "dense"]', 'methods = ["dense", "dense-b0.5"]')
    text = text.replace("epochs = 1,", "epochs = 4,")
    dense, half = load_suite(_suite(tmp_path, text)).runs
    assert (dense.config.train.run_epochs, half.config.train.run_epochs) == (4, 2)
    assert half.config.train.schedule == "linear" and half.config.train.lr == 0.05
    assert dense.key != half.key
    bad = text.replace("train = { budget = 0.5", "train = { budget = 2.0")
    with pytest.raises(ConfigError, match="budget"):
        load_suite(_suite(tmp_path, bad))


@pytest.mark.parametrize(
    "bad, message",
    [
        ('methods = ["dcp-p0.5", "nope"]', "not in \\[methods\\]"),
        ('methods = ["dense"]\nlr = 3', "unknown keys"),
    ],
)
def test_suite_errors_name_the_problem(tmp_path, bad, message) -> None:
    text = TINY.replace('methods = ["dcp-p0.5", "dense"]', bad)
    with pytest.raises(ConfigError, match=message):
        load_suite(_suite(tmp_path, text))


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("seeds = [0]", 'seeds = "0"',
         'suite file {path}: seeds = "0" must be a list of whole numbers, e.g. seeds = [0, 1].'),
        ("seeds = [0]", "seeds = [true]",
         "suite file {path}: seeds = [true] must be a list of whole numbers, e.g. seeds = [0, 1]."),
        ('name = "tiny"', "name = 5",
         'suite file {path}: name = 5 must be a string, e.g. name = "quick".'),
        ('name = "tiny"', 'nmae = "tiny"',
         "suite file {path}: unknown key(s) ['nmae']; valid keys are: name, description, seeds, "
         "defaults, recipe, methods, grid."),
        ('datasets = ["cifar10"]', 'datasets = "cifar10"',
         'suite file {path}, [[grid]] #1: datasets = "cifar10" must be a list of strings, e.g. '
         'datasets = ["cifar10"].'),
        ('models = ["test_resnet"]', "models = [5]",
         'suite file {path}, [[grid]] #1: models = [5] must be a list of strings, e.g. models = '
         '["resnet20"].'),
        ('methods = ["dcp-p0.5", "dense"]', 'methods = "dense"',
         'suite file {path}, [[grid]] #1: methods = "dense" must be a list, e.g. methods = '
         '["dense", "dcp-p0.5"].'),
        ('models = ["test_resnet"]', 'models = ["test_resnet"]\ntrain = 5',
         "suite file {path}, [[grid]] #1: train = 5 must be a table, e.g. train = { epochs = 3 }."),
        ('dense = { method = "none" }', "dense = 5",
         'suite file {path}: methods.dense = 5 must be a table, e.g. dense = { method = "none" }.'),
        ('dense = { method = "none" }', "dense = { method = 5 }",
         "suite file {path}, [[grid]] #1, method 'dense': method = 5 must be a string, e.g. "
         'method = "dcp".'),
        ("args = { dcp = { p = 0.5 } }", "args = 5",
         "suite file {path}, [[grid]] #1, method 'dcp-p0.5': args = 5 must be a table, e.g. "
         "args = { dcp = { p = 0.5 } }."),
        ("train = { threads = 1 }", "train = 5",
         "suite file {path}: defaults.train = 5 must be a table, e.g. train = { ... } inside "
         "[defaults]."),
        ("train = { epochs = 1, batch_size = 25, lr = 0.05 }", 'train = { epochs = "one" }',
         "suite file {path}, [[grid]] #1, cifar10/test_resnet/dense: train.epochs = \"one\" "
         "must be a whole number, e.g. epochs = 10."),
        ("p = 0.5", 'p = "half"',
         "suite file {path}, [[grid]] #1, cifar10/test_resnet/dcp-p0.5: dcp.p = \"half\" must be "
         "a finite number, e.g. p = 0.5."),
        ("args = { dcp = { p = 0.5 } }", "args = { learndrop = { tau = 0.5 } }",
         "suite file {path}, [[grid]] #1, cifar10/test_resnet/dcp-p0.5: [learndrop] settings were "
         "given but learndrop is not among the methods in use (dcp); add it with method = "
         '"dcp+learndrop" or remove the [learndrop] table.'),
    ],
)
def test_suite_values_of_the_wrong_type_name_file_and_field(tmp_path, old, new, message) -> None:
    assert old in TINY
    path = _suite(tmp_path, TINY.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    assert str(e.value) == message.replace("{path}", str(path))


def test_bench_command_reports_a_bad_suite_in_one_line(tmp_path, capsys) -> None:
    path = _suite(tmp_path, TINY.replace("seeds = [0]", 'seeds = "0"'))
    assert main(["bench", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f'leantrain: error: suite file {path}: seeds = "0" must be a list of whole numbers, '
        "e.g. seeds = [0, 1].\n"
    )


def test_unknown_method_setting_is_caught_before_running(tmp_path) -> None:
    text = TINY.replace("p = 0.5", "q = 0.5")
    with pytest.raises(ConfigError, match="dcp-p0.5.*unknown key"):
        load_suite(_suite(tmp_path, text))


def test_shipped_suites_parse() -> None:
    names = suite_names()
    assert {"quick", "learndrop", "dcp", "peers", "learndrop-sweep"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert suite.runs and suite.name == name
        assert suite.runs[0].config.method == "none"  # every group starts with its dense run
    quick = load_suite("quick")
    assert len(quick.runs) == 20
    assert {r.label for r in quick.runs} >= {"dense", "dcp-p0.5", "dcp-mask-p0.5"}
    assert any(r.config.method == "learndrop+dcp" for r in quick.runs)
    sweep = load_suite("learndrop-sweep")
    taus = {r.config.method_args["learndrop"]["tau"] for r in sweep.runs if r.config.method_args}
    assert taus == {0.1, 0.25, 0.5, 0.75}


def test_unknown_suite_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="quick"):
        load_suite("no-such-suite")


def test_bench_writes_rows_and_resumes(tmp_path, cifar_root, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    suite = load_suite(_suite(tmp_path))
    path, failures = run_suite(
        suite, tmp_path / "results", data_dir=str(cifar_root), show_progress=False
    )
    assert failures == 0 and path.name.startswith("tiny-cpu")
    rows = read_results(path)
    assert [r["label"] for r in rows] == ["dense", "dcp-p0.5"]
    dense, dcp = rows
    for r in rows:
        assert r["env"]["torch"] and r["env_key"] in path.name
        assert r["peak_rss_mb"] > 10 and r["train_s"] > 0 and 0 <= r["test_acc"] <= 1
        assert r["peak_rss_scope"] in ("training", "process")
        assert r["peak_activation_mb"] > 0
        assert (
            r["config"]["data"]["data_dir"] is None
        )  # the data folder is not part of a run's identity
        assert (tmp_path / r["run_dir"] / "summary.json").is_file()
        assert [e["epoch"] for e in r["trace"]["epochs"]] == [1]
    assert dcp["final_macs"] < dense["final_macs"] == dense["dense_macs"]
    assert any(e["kind"] == "dcp_export" for e in dcp["trace"]["events"])
    out = capsys.readouterr().out
    assert "2 to run" in out and "dcp-p0.5/seed0: acc" in out

    # resume: nothing left to run, nothing appended
    path2, _ = run_suite(suite, tmp_path / "results", data_dir=str(cifar_root), show_progress=False)
    assert path2 == path and len(read_results(path)) == 2
    assert "0 to run" in capsys.readouterr().out

    # a run interrupted mid-way (no row, a checkpoint left in its folder) starts over cleanly
    path.write_text(json.dumps(dense) + "\n")
    (tmp_path / dcp["run_dir"] / "checkpoint.json").write_text("{}")
    _, failures = run_suite(
        suite, tmp_path / "results", data_dir=str(cifar_root), show_progress=False
    )
    assert failures == 0 and [r["label"] for r in read_results(path)] == ["dense", "dcp-p0.5"]
    rows = read_results(path)
    # DCP's warm-up steps are dense, so its peak is dense's; its later, sliced steps save less
    assert rows[1]["peak_activation_mb"] == pytest.approx(rows[0]["peak_activation_mb"])
    assert rows[1]["mean_activation_mb"] < rows[0]["mean_activation_mb"]

    # an edited recipe: the old rows leave the results file (kept aside), the runs are redone
    edited = load_suite(_suite(tmp_path, TINY.replace("lr = 0.05", "lr = 0.04")))
    run_suite(edited, tmp_path / "results", data_dir=str(cifar_root), show_progress=False)
    assert "2 rows of runs no longer in suite tiny" in capsys.readouterr().out
    assert [r["key"] for r in read_results(path)] == [r.key for r in edited.runs[::-1]][::-1] or (
        {r["key"] for r in read_results(path)} == {r.key for r in edited.runs}
    )
    assert read_results(path.with_name(path.name + ".stale")) == rows


def test_dry_run_and_only_select_runs(tmp_path, capsys) -> None:
    code = main(
        [
            "bench",
            str(_suite(tmp_path)),
            "--dry-run",
            "--only",
            "dcp",
            "--results-dir",
            str(tmp_path / "results"),
        ]
    )
    out = capsys.readouterr().out
    assert (
        code == 0 and "1 runs selected" in out and "todo  cifar10/test_resnet/dcp-p0.5/seed0" in out
    )
    assert not (tmp_path / "results").exists()


def test_method_runs_without_a_dense_run_timed_on_this_machine_are_announced(
    tmp_path, capsys
) -> None:
    from leantrain.runs.env import environment

    suite = load_suite(_suite(tmp_path), seeds=None)
    dense = next(r for r in suite.runs if r.label == "dense")
    results = tmp_path / "results"
    here = environment("cpu")

    def dry_run_output(rows) -> str:
        path = results_path(suite, results, here)
        results.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run_suite(suite, results, only="dcp", dry_run=True)
        return capsys.readouterr().out

    elsewhere = {"key": dense.key, "config": dense.config.to_dict(), "env": {**here, "cpu": "X"}}
    out = dry_run_output([elsewhere])  # dense timed, but on another machine (an earlier session)
    assert "no dense run of cifar10/test_resnet with this recipe has been timed on this" in out
    assert "1 method run(s)" in out and "--only cifar10/test_resnet/dense" in out
    assert "has been timed" not in dry_run_output([{**elsewhere, "env": here}])
    # dense trained for fewer epochs here: the report infers dense's full time from it
    config = dense.config.to_dict()
    shorter = {"key": "tiny|cifar10/test_resnet/dense-b0.5/seed0|x", "env": here,
               "config": {**config, "train": {**config["train"], "budget": 0.5}}}
    out = dry_run_output([elsewhere, shorter])
    assert ("1 of the 1 method run(s) selected will be timed against dense's time inferred from "
            "its shorter runs here") in out and "--only cifar10/test_resnet/dense" in out
    # a dense run selected beside the method runs will time them
    run_suite(suite, results / "empty", dry_run=True)
    assert "has been timed" not in capsys.readouterr().out


def test_torn_last_line_is_ignored(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"key": "a"}) + "\n" + '{"key": "b", "te')
    assert read_results(path) == [{"key": "a"}]


@pytest.mark.parametrize("command", ["bench", "report"])
def test_commands_have_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: leantrain " + command in capsys.readouterr().out


def test_rows_of_seeds_not_run_now_are_not_stale(tmp_path) -> None:
    """`bench SUITE --seeds 0` after `--seeds 0 1`: the seed-1 rows keep their settings (the
    digest holds no seed), so they stay; a changed digest sets every seed's row aside."""
    from leantrain.harness.bench import _set_aside_stale

    path = tmp_path / "s-env.jsonl"
    rows = [{"key": f"s|cifar10/resnet20/dense/seed{k}|abcd1234"} for k in (0, 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _set_aside_stale(path, {"s|cifar10/resnet20/dense/seed0|abcd1234"}) == 0
    assert read_results(path) == rows
    assert _set_aside_stale(path, {"s|cifar10/resnet20/dense/seed0|ffff0000"}) == 2
    assert read_results(path) == [] and read_results(path.with_name(path.name + ".stale")) == rows


DENSE_ONLY = TINY.replace('methods = ["dcp-p0.5", "dense"]', 'methods = ["dense"]')


def test_a_failed_run_is_one_line_and_its_log_is_kept(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    suite = load_suite(_suite(tmp_path, DENSE_ONLY))
    _, failures = run_suite(suite, tmp_path / "results", data_dir=str(tmp_path / "no-data"),
                            show_progress=False)
    assert failures == 1
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "FAILED" in x]
    log = tmp_path / "results" / "logs" / "cifar10-test_resnet-dense-seed0.log"
    assert line.startswith("[1/1] cifar10/test_resnet/dense/seed0: FAILED: ")
    assert line.endswith(f" (full log in {log})") and "leantrain: error:" not in line
    full = log.read_text()
    assert line.split("FAILED: ", 1)[1].rsplit(" (full log", 1)[0] in full
    assert "Traceback" not in line


def test_a_trained_run_keeps_its_row_and_files_whatever_happens(tmp_path, cifar_root,
                                                                monkeypatch, capsys) -> None:
    import errno

    import leantrain.harness.bench as bench

    monkeypatch.chdir(tmp_path)
    suite = load_suite(_suite(tmp_path, DENSE_ONLY))
    real_append = bench._append_row

    def unwritable(path, row):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(bench, "_append_row", unwritable)
    path, failures = run_suite(suite, tmp_path / "results", data_dir=str(cifar_root),
                               show_progress=False)
    folder = suite.runs[0].config.run_dir()
    assert failures == 1 and read_results(path) == []
    assert (f"[1/1] cifar10/test_resnet/dense/seed0: could not append its row to {path} "
            f"(Permission denied); the row is kept in {folder / 'bench-row.json'} and the next "
            "call adds it.") in capsys.readouterr().out
    kept = json.loads((folder / "bench-row.json").read_text())
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(bench, "_append_row", real_append)
    monkeypatch.setattr(bench, "_execute", lambda *a: pytest.fail("a finished run was retrained"))
    _, failures = run_suite(suite, tmp_path / "results", data_dir=str(cifar_root),
                            show_progress=False)
    assert failures == 0 and read_results(path) == [kept] and kept["wall_s"] > 0
    assert "finished earlier in" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files  # nothing overwritten


def _interrupted_after_one_epoch(tmp_path, cifar_root, monkeypatch):
    """A 2-epoch dense suite whose run was killed after its first epoch's checkpoint."""
    from leantrain.training.checkpoint import Checkpointer
    from leantrain.runs.runner import run

    monkeypatch.chdir(tmp_path)
    text = TINY.replace('methods = ["dcp-p0.5", "dense"]', 'methods = ["dense"]').replace(
        "epochs = 1,", "epochs = 2,")
    suite = load_suite(_suite(tmp_path, text))
    (only,) = suite.runs
    cfg = dataclasses.replace(only.config, data=dataclasses.replace(
        only.config.data, data_dir=str(cifar_root)))
    real = Checkpointer.save

    def save(self, tensors, meta):  # the first epoch's checkpoint lands, then a "kill"
        real(self, tensors, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, show_progress=False)
    monkeypatch.setattr(Checkpointer, "save", real)
    assert only.config.run_dir() == cfg.run_dir()  # the data folder is not part of the identity
    return suite, cfg


def _resume_steps(cfg) -> list[int]:
    events = [json.loads(line) for line in (cfg.run_dir() / "events.jsonl").read_text().splitlines()]
    return [e["step"] for e in events if e["kind"] == "resume"]


def test_an_interrupted_run_continues_from_its_checkpoint(tmp_path, cifar_root, monkeypatch) -> None:
    """A long suite spans sessions: the run killed mid-way continues at its last checkpoint, and
    its row's training time includes the first segment's (carried by the checkpoint)."""
    suite, cfg = _interrupted_after_one_epoch(tmp_path, cifar_root, monkeypatch)
    first = json.loads((cfg.run_dir() / "checkpoint.json").read_text())
    path, failures = run_suite(suite, tmp_path / "results", data_dir=str(cifar_root),
                               show_progress=False)
    (row,) = read_results(path)
    assert failures == 0 and [e["epoch"] for e in row["trace"]["epochs"]] == [1, 2]
    assert _resume_steps(cfg) == [first["step"]]


def test_a_run_checkpointed_on_another_machine_starts_over(tmp_path, cifar_root, monkeypatch,
                                                           capsys) -> None:
    """Two machines' seconds in one training time would make its ratio to dense meaningless."""
    import leantrain.harness.bench as bench

    suite, cfg = _interrupted_after_one_epoch(tmp_path, cifar_root, monkeypatch)
    record = cfg.run_dir() / "checkpoint.json"
    meta = json.loads(record.read_text())
    here = meta["extra"]["machine"]
    assert here[0] == "cpu" and here[3] > 0  # device, cpu, gpu, cores, torch
    assert bench._resume_mode(cfg) == "auto"  # same machine: continue
    meta["extra"]["machine"] = ["cpu", "Another CPU", None, here[3], here[4]]
    record.write_text(json.dumps(meta))
    capsys.readouterr()
    assert bench._resume_mode(cfg) == "restart"
    assert ("its checkpoint was written on another machine (['cpu', 'Another CPU'"
            in capsys.readouterr().err)
    path, failures = run_suite(suite, tmp_path / "results", data_dir=str(cifar_root),
                               show_progress=False)
    (row,) = read_results(path)
    assert failures == 0 and [e["epoch"] for e in row["trace"]["epochs"]] == [1, 2]
    assert _resume_steps(cfg) == []  # trained from the first step
