"""`leantrain demo`: dense, Learn&Drop and DCP side by side, on a tiny slice of the sample."""

from __future__ import annotations

from leantrain.cli import build_parser
from leantrain.demo import demo_configs, format_table, run_demo


def test_demo_configs_are_the_three_rows_with_learndrop_checkpoints() -> None:
    configs = dict(demo_configs(epochs=3, train_subset=2000))
    assert list(configs) == ["dense", "learndrop", "dcp p=0.5"]
    assert configs["dcp p=0.5"].method_args["dcp"]["p"] == 0.5
    # 2000 // 128 = 15 steps per epoch, 45 in all: six checkpoints, every 7 steps
    assert configs["learndrop"].method_args["learndrop"]["every_steps"] == 7
    assert len({cfg.seed for cfg in configs.values()}) == 1


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
