"""The command line end to end on tiny data in the real formats, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from leantrain.cli import main
from leantrain.io import load_model

COMMANDS = ["train", "demo", "cost", "export", "eval"]


def test_module_entry_point_help() -> None:
    out = subprocess.run([sys.executable, "-m", "leantrain", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: leantrain " + command in capsys.readouterr().out


def _train_args(root, out, *extra):
    return ["train", "--model", "test_resnet", "--dataset", "cifar10", "--data-dir", str(root),
            "--epochs", "1", "--batch-size", "25", "--lr", "0.05", "--out-dir", str(out),
            "--no-progress", *extra]


def test_train_writes_a_complete_run_folder(cifar_root, tmp_path, capsys) -> None:
    assert main(_train_args(cifar_root, tmp_path / "runs")) == 0
    folders = list((tmp_path / "runs").glob("cifar10-test_resnet-dense-*/seed0"))
    assert len(folders) == 1
    run = folders[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "dense" and summary["train_images"] == 100
    assert summary["env"]["torch"] and summary["final_params"] == summary["dense_params"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["batch_size"] == 25 and config["data"]["dataset"] == "cifar10"
    model = load_model(run / "model.safetensors")
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    assert "final test accuracy" in capsys.readouterr().out


def test_train_reads_toml_and_flags_override(cifar_root, tmp_path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('seed = 3\n[train]\nepochs = 1\nbatch_size = 50\nlr = 0.01\n'
                      '[model]\nname = "test_vgg"\n')
    args = _train_args(cifar_root, tmp_path / "runs", "--config", str(config), "--model", "test_vgg",
                       "--batch-size", "20")
    assert main(args) == 0
    run = next((tmp_path / "runs").glob("cifar10-test_vgg-dense-*/seed3"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["batch_size"] == 20 and cfg["train"]["lr"] == 0.05 and cfg["seed"] == 3


def test_cost_prints_golden_counts(capsys) -> None:
    assert main(["cost", "resnet20", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert "272,474" in out and "MACs" in out and "train FLOPs" in out


def test_cost_verbose_lists_layers(capsys) -> None:
    assert main(["cost", "test_vgg", "-v"]) == 0
    assert "features.0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["cost", "resnet21"], "unknown model 'resnet21'"),
        (["cost", "resnet20", "--input", "3x32"], "is not CxHxW"),
        (["train", "--dataset", "imagenet1k"], "unknown data set 'imagenet1k'"),
        (["train", "--method", "prune-everything", "--dataset", "mnist-sample"], "unknown method"),
        (["train", "--lr", "-0.1"], "train.lr must be > 0"),
        (["train", "--epochs", "0"], "train.epochs must be"),
        (["train", "--dcp.p", "1.5", "--method", "dcp"], "outside [0, 1)"),
    ],
)
def test_bad_input_gives_one_clear_sentence(args, message, capsys, tmp_path) -> None:
    assert main([*args, "--out-dir", str(tmp_path)] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_folder_says_where_to_put_files(tmp_path, capsys) -> None:
    code = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
                 "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "cifar-10-batches-py" in err and "Traceback" not in err


def test_unknown_config_key_is_rejected(tmp_path, capsys) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nepoch = 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown key(s) ['epoch'] in [train]" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys) -> None:
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unwritable_run_folder(cifar_root, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(_train_args(cifar_root, blocker / "runs")) == 2
    assert "cannot write the run folder" in capsys.readouterr().err


def test_static_widths_from_the_command_line(cifar_root, tmp_path, capsys) -> None:
    from leantrain.registry import create_model
    from leantrain.structure import channel_sets_of

    widths = [max(1, len(s) // 2) for s in channel_sets_of(create_model("test_resnet"))]
    args = _train_args(cifar_root, tmp_path / "runs", "--method", "static",
                       "--static.widths", *map(str, widths))
    assert main(args) == 0
    run = next((tmp_path / "runs").glob("cifar10-test_resnet-static-*/seed0"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_params"] < summary["dense_params"]
    model = load_model(run / "model.safetensors")  # the cut architecture reloads
    assert [len(s) for s in channel_sets_of(model)] == widths
    # One width too few: one sentence naming the count the model needs.
    bad = _train_args(cifar_root, tmp_path / "runs2", "--method", "static",
                      "--static.widths", *map(str, widths[1:]))
    capsys.readouterr()
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert f"lists {len(widths) - 1} widths" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
