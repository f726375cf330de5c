"""`leantrain demo`: dense, Learn&Drop and DCP side by side, on a tiny slice of the sample."""

from __future__ import annotations

import pytest

from leantrain.cli import build_parser, main
from leantrain.runs.demo import demo_configs, format_table, run_demo


def test_demo_configs_are_the_three_rows_with_learndrop_checkpoints() -> None:
    configs = dict(demo_configs(epochs=3, train_subset=2000))
    assert list(configs) == ["dense", "learndrop", "dcp p=0.5"]
    assert configs["dcp p=0.5"].method_args["dcp"]["p"] == 0.5
    # 2000 // 64 = 31 steps per epoch, 93 in all: six checkpoints, every 15 steps
    assert configs["learndrop"].method_args["learndrop"]["every_steps"] == 15
    assert len({cfg.seed for cfg in configs.values()}) == 1


def test_the_default_demo_recipe_trains_on_the_whole_sample() -> None:
    """The recipe that reaches ≥ 97% dense (the slow test below runs it)."""
    configs = dict(demo_configs())
    dense = configs["dense"]
    assert (dense.model.name, dense.data.dataset) == ("resnet20", "mnist-sample")
    assert dense.data.train_subset is None and dense.data.test_subset is None
    train = dense.train
    assert (train.epochs, train.batch_size, train.lr, train.warmup) == (3, 64, 0.1, 0.1)
    assert train.schedule == "cosine"
    # 6000 // 64 = 93 steps per epoch, 279 in all: Learn&Drop checkpoints every 46 steps
    assert configs["learndrop"].method_args["learndrop"]["every_steps"] == 46
    assert all(cfg.train == train and cfg.data == dense.data for cfg in configs.values())


def test_demo_cli_defaults_are_the_demo_recipe() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.epochs, args.train_subset) == (3, None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "demo epochs must be a whole number ≥ 1, got 0; leave --epochs out "
                            "for the default 3."),
        (["--train-subset", "0"], "demo train_subset must be 1 to 6000 (the sample's training "
                                  "images), got 0; leave --train-subset out to use all of them."),
        (["--train-subset", "6001"], "demo train_subset must be 1 to 6000 (the sample's "
                                     "training images), got 6001; leave --train-subset out to "
                                     "use all of them."),
    ],
)
def test_demo_bad_input_gives_one_sentence(args, message, tmp_path, capsys) -> None:
    assert main(["demo", "--no-progress", "--out-dir", str(tmp_path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"leantrain: error: {message}"
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_demo_prints_a_table_with_three_rows(tmp_path, capsys) -> None:
    rows = run_demo(
        epochs=1, out_dir=str(tmp_path), show_progress=False, train_subset=128, test_subset=100
    )
    out = capsys.readouterr().out
    assert [r["label"] for r in rows] == ["dense", "learndrop", "dcp p=0.5"]
    table = out.split("-" * 20)[-1]
    for label in ("dense", "learndrop", "dcp p=0.5"):
        assert label in table
    assert rows[2]["final_macs"] < rows[0]["final_macs"]  # DCP exports a compact model
    assert "speed-up" in out and "×1.00" in out


def test_format_table_speedup_is_dense_over_row_time() -> None:
    rows = [
        dict(label="dense", test_acc=0.9, train_s=10.0, train_flops=2e9, final_macs=4e7, params=10),
        dict(label="dcp", test_acc=0.8, train_s=5.0, train_flops=1e9, final_macs=2e7, params=5),
    ]
    assert "×2.00" in format_table(rows)


def test_demo_cli_accepts_train_subset() -> None:
    args = build_parser().parse_args(["demo", "--train-subset", "64", "--epochs", "1"])
    assert args.train_subset == 64 and args.epochs == 1


@pytest.mark.slow
def test_demo_dense_reaches_97_percent(tmp_path) -> None:
    """The full demo (about two minutes on 2 CPU cores): a newcomer sees a model that works."""
    rows = {r["label"]: r for r in run_demo(out_dir=str(tmp_path), show_progress=False)}
    assert rows["dense"]["test_acc"] >= 0.97
    assert rows["learndrop"]["train_flops"] < rows["dense"]["train_flops"]
    assert rows["dcp p=0.5"]["final_macs"] < rows["dense"]["final_macs"]
