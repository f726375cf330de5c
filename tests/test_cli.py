"""The command line end to end on tiny data in the real formats, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from leantrain.cli import main
from leantrain.models.files import load_model

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


def test_train_help_explains_fields_commented_above_them(capsys) -> None:
    """A setting documented by the comment lines above its field gets that text as its help."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--head-lr-mult HEAD_LR_MULT Fine-tuning: the learning rate of the layers --init" in out
    assert "--compile [BACKEND] torch.compile the model for training with this backend" in out


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


def test_cost_list_shows_public_models_only(capsys) -> None:
    from leantrain.models.factory import list_models

    assert main(["cost", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == list_models() and "resnet56" in listed and "test_vgg" not in listed


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
    from leantrain.models.factory import create_model
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


# ------------------------------------------------------------------ one resolved configuration


def _config_of(*argv: str):
    """The resolved `RunConfig` a ``train`` command line would run (nothing is trained)."""
    from leantrain.cli import build_parser
    from leantrain.runs.flags import config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(
    "a, b",
    [
        (["--method", "dcp"], ["--method", "dcp", "--dcp.p", "0.5"]),
        (["--method", "learndrop"], ["--method", "learndrop", "--learndrop.tau", "0.5"]),
        (["--method", "dense"], []),
        (["--lr", "1"], ["--lr", "1.0"]),
        (["--data-dir", "/a"], ["--data-dir", "/b"]),
    ],
)
def test_equivalent_command_lines_map_to_one_run_folder(a, b) -> None:
    assert _config_of(*a).run_dir() == _config_of(*b).run_dir()


def test_toml_and_flags_give_the_same_run(tmp_path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('method = "dcp"\n[dcp]\np = 0.3\n[train]\nepochs = 2\n')
    flags = _config_of("--method", "dcp", "--dcp.p", "0.3", "--epochs", "2")
    assert _config_of("-c", str(config)).run_dir() == flags.run_dir()
    assert _config_of("-c", str(config), "--dcp.p", "0.4").method_args["dcp"]["p"] == 0.4


def test_config_json_records_the_resolved_settings(cifar_root, tmp_path) -> None:
    import dataclasses

    from leantrain.methods.dcp import DCP

    assert main(_train_args(cifar_root, tmp_path / "runs", "--method", "dcp", "--dcp.p", "0.25")) == 0
    run = next((tmp_path / "runs").glob("cifar10-test_resnet-dcp-*/seed0"))
    config = json.loads((run / "config.json").read_text())
    assert config["method_args"] == {"dcp": {**dataclasses.asdict(DCP()), "p": 0.25}}
    assert config["method"] == "dcp" and config["train"]["threads"] is None
    same = _config_of(*_train_args(cifar_root, tmp_path / "runs", "--method", "dcp",
                                   "--dcp.p", "0.25")[1:])
    assert run == same.run_dir() and run.parent.name.endswith(same.digest())


@pytest.mark.parametrize(
    "toml, flags, message",
    [
        ('[train]\nepochs = "ten"\n', [],
         'train.epochs = "ten" in {path} must be a whole number, e.g. epochs = 10.'),
        ("[train]\nepochs = true\n", [],
         "train.epochs = true in {path} must be a whole number, e.g. epochs = 10."),
        ('[train]\nlr = "fast"\n', [],
         'train.lr = "fast" in {path} must be a finite number, e.g. lr = 0.1.'),
        ('method = "dcp"\n[dcp]\np = "half"\n', [],
         'dcp.p = "half" in {path} must be a finite number, e.g. p = 0.5.'),
        ('method = "learndrop"\n[learndrop]\ntau = true\n', [],
         "learndrop.tau = true in {path} must be a finite number, e.g. tau = 0.5."),
        ("train = 5\n", ["--epochs", "3"],
         "train = 5 in {path} must be a table of settings; put them under a [train] header."),
        ('model = "resnet"\n', ["--model", "vgg11"],
         'model = "resnet" in {path} must be a table of settings; put them under a [model] '
         "header."),
        ('[train]\nmilestones = "half"\n', [],
         'train.milestones = "half" in {path} must be a list of numbers, e.g. milestones = '
         "[0.5, 0.75]."),
        ("[data]\ntrain_subset = 25.5\n", [],
         "data.train_subset = 25.5 in {path} must be a whole number or left out."),
        ('method = "learndrop"\n[dcp]\np = 0.3\n', [],
         "[dcp] settings were given but dcp is not among the methods in use (learndrop); add it "
         'with method = "learndrop+dcp" or remove the [dcp] table.'),
        ("", ["--threads", "0"],
         "train.threads must be ≥ 1, or left out for torch's default (check your config or "
         "command line)."),
        ("", ["--threads", "-1"],
         "train.threads must be ≥ 1, or left out for torch's default (check your config or "
         "command line)."),
        ("", ["--method", "learndrop", "--dcp.p", "0.3"],
         "--dcp.p was given but dcp is not among the methods in use (learndrop); add it with "
         "--method learndrop+dcp or drop the flag."),
        ("", ["--dcp.p", "0.3", "--dcp.min-channels", "2"],
         "--dcp.p, --dcp.min-channels were given but dcp is not among the methods in use (none); "
         "add it with --method dcp or drop the flags."),
        ('method = "learndrop"\n', ["--static.p", "0.3"],
         "--static.p was given but static is not among the methods in use (learndrop); add it "
         "with --method learndrop+static or drop the flag."),
    ],
)
def test_bad_settings_give_one_exact_sentence(toml, flags, message, tmp_path, capsys) -> None:
    config = tmp_path / "run.toml"
    config.write_text(toml)
    assert main(["train", "-c", str(config), "--out-dir", str(tmp_path), *flags]) == 2
    assert capsys.readouterr().err == f"leantrain: error: {message.format(path=config)}\n"
    assert not (tmp_path / "runs").exists()


def test_model_file_with_a_malformed_architecture(tmp_path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from leantrain.models.files import save_model
    from leantrain.models.factory import create_model

    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_model(create_model("test_vgg"), good)
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["leantrain_arch"] = json.dumps({**json.loads(meta["leantrain_arch"]), "arch": "resnet"})
    save_file(tensors, str(bad), metadata=meta)
    assert main(["eval", str(bad), "--dataset", "mnist-sample"]) == 2
    assert capsys.readouterr().err == (
        "leantrain: error: the saved architecture 'resnet' is not a table of a model name and its "
        "arguments; the file is corrupt or was not written by leantrain.\n"
    )


def test_train_help_comes_from_the_dataclass_docs(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ("--dcp.p P pruning rate, the fraction of all prunable channels switched off each "
            "step, in [0, 1). (default: 0.5)") in out  # the DCP docstring's Args entry
    # TrainConfig's inline comment, and the per-family recipe's default
    assert "--lr LR peak learning rate (default: per model, vgg*: 0.02, resnet*: 0.1)" in out
    assert "dcp settings (--dcp.FIELD, also in a [dcp] TOML table)" in out
