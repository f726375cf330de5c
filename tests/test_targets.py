"""The generated targets tables: each paper target judged from hand-made result rows."""

from __future__ import annotations

import copy

from leantrain.harness.report import summarize
from leantrain.harness.targets import check_targets, targets_tables

from test_report import _row  # tests/ is on sys.path (pytest rootdir conftest)


def _with(row: dict, suite: str, **method_args) -> dict:
    row = copy.deepcopy(row)
    row["suite"], row["_file"] = suite, f"{suite}.jsonl"
    row["config"]["method_args"] = method_args
    return row


def _checks(rows: list[dict]) -> dict[tuple[str, str], tuple[str, bool | None]]:
    return {(c.where, c.column.split(" (")[0]): (c.measured, c.met)
            for c in check_targets(summarize(rows))}


def test_learndrop_targets_judge_time_accuracy_and_time_per_flops() -> None:
    rows = [
        _with(_row("dense", "none", 0, 0.90, 10.0, model="resnet56"), "learndrop"),
        # 0.4× the time, 2 points lower, 70% of training FLOPs saved for 60% of time saved
        _with(_row("learndrop", "learndrop", 0, 0.88, 4.0, model="resnet56", train=90.0),
              "learndrop", learndrop={"tau": 0.5}),
        _with(_row("dense", "none", 0, 0.90, 10.0, model="vgg11"), "learndrop"),
        _with(_row("learndrop", "learndrop", 0, 0.85, 9.0, model="vgg11", train=150.0),
              "learndrop"),
    ]
    c = _checks(rows)
    r56, vgg = "learndrop: cifar10 / resnet56 / learndrop", "learndrop: cifar10 / vgg11 / learndrop"
    assert c[(r56, "Time vs dense")] == ("0.40×", True)
    assert c[(r56, "Accuracy drop")] == ("+2.00", True)  # ResNet bar: 3.2 points
    assert c[(r56, "Time saving / train-FLOPs saving")] == ("60% / 70% = 0.86×", True)
    assert c[(vgg, "Time vs dense")] == ("0.90×", None)  # the paper's time claim is on ResNets
    assert c[(vgg, "Accuracy drop")] == ("+5.00", False)  # VGG bar: 2.38 points
    assert c[(vgg, "Time saving / train-FLOPs saving")] == ("10% / 50% = 0.20×", False)


def test_time_share_of_a_flops_cut_within_the_timing_noise_is_not_judged() -> None:
    rows = [
        _with(_row("dense", "none", 0, 0.90, 10.0, model="resnet32"), "paper"),
        # 3% fewer training FLOPs, 1% more time: the share's sign is noise
        _with(_row("learndrop", "learndrop", 0, 0.90, 10.1, model="resnet32", train=291.0),
              "paper", learndrop={"tau": 0.5}),
        # 11%: judged
        _with(_row("learndrop-b", "learndrop", 0, 0.90, 9.5, model="resnet32", train=267.0),
              "paper", learndrop={"mode": "budget"}),
    ]
    c = _checks(rows)
    assert c[("paper: cifar10 / resnet32 / learndrop", "Time saving / train-FLOPs saving")] \
        == ("-1% / 3%", None)
    assert c[("paper: cifar10 / resnet32 / learndrop-b", "Time saving / train-FLOPs saving")] \
        == ("5% / 11% = 0.45×", False)


def test_dcp_targets_compare_with_the_authors_and_the_masked_twin() -> None:
    def dcp(label, seed, acc, t, mode="slice", p=0.5):
        return _with(_row(label, "dcp", seed, acc, t, model="resnet32", macs=24), "dcp",
                     dcp={"p": p, "mode": mode})

    rows = [
        _with(_row("dense", "none", 0, 0.90, 10.0, model="resnet32"), "dcp"),
        _with(_row("dense", "none", 1, 0.90, 10.0, model="resnet32"), "dcp"),
        dcp("dcp-p0.5", 0, 0.895, 7.0), dcp("dcp-p0.5", 1, 0.885, 7.0),
        dcp("dcp-mask-p0.5", 0, 0.86, 11.0, "mask"), dcp("dcp-mask-p0.5", 1, 0.86, 11.0, "mask"),
    ]
    c = _checks(rows)
    sliced, masked = "dcp: cifar10 / resnet32 / dcp-p0.5", "dcp: cifar10 / resnet32 / dcp-mask-p0.5"
    assert c[(sliced, "Compact FLOPs cut")] == ("52.0% (authors 50.2%)", True)
    assert c[(sliced, "Accuracy drop at authors' p")] == ("+1.00", True)
    assert c[(sliced, "Sliced time at p = 0.5")] == ("0.70×", True)
    assert c[(masked, "Masked time")] == ("1.10×", True)
    measured, met = c[(sliced, "Sliced − masked accuracy")]
    assert measured.startswith("+3.00 (2σ = 1.41)") and met is False
    table = targets_tables(check_targets(summarize(rows)))["DCP"]
    assert "52.0% (authors 50.2%) ✓" in table and "| 2 |" in table
    # No static controls in these rows: their columns stay empty.
    assert not any(col.startswith(("Control", "Bound")) for _, col in c)


def test_dcp_row_shows_its_static_controls() -> None:
    """Static rows at a DCP run's final widths (same final MACs) sit beside it: exact widths
    give the accuracy control, the same widths padded to a multiple the time bound; neither is
    judged. Another DCP run (other widths) gets neither."""
    widths = [3, 4, 8]
    rows = [
        _with(_row("dense", "none", 0, 0.90, 10.0, model="resnet32"), "dcp"),
        _with(_row("dcp-p0.5", "dcp", 0, 0.86, 9.0, model="resnet32", macs=24), "dcp",
              dcp={"p": 0.5}),
        _with(_row("dcp-p0.3", "dcp", 0, 0.87, 9.5, model="resnet32", macs=35), "dcp",
              dcp={"p": 0.3}),
        _with(_row("static-dcp-widths", "static", 0, 0.87, 8.5, model="resnet32", macs=24),
              "dcp", static={"widths": widths}),
        _with(_row("static-dcp-computed", "static", 0, 0.88, 8.0, model="resnet32", macs=30),
              "dcp", static={"widths": widths, "multiple": 8}),
        _with(_row("static-p0.5", "static", 0, 0.80, 7.0, model="resnet32", macs=24), "dcp",
              static={"p": 0.5}),  # uniform widths: no control, even at equal MACs
    ]
    c = _checks(rows)
    sliced = "dcp: cifar10 / resnet32 / dcp-p0.5"
    assert c[(sliced, "Sliced time at p = 0.5")] == ("0.90×", False)
    assert c[(sliced, "Control: its widths from scratch, drop")] == ("+3.00 (n=1)", None)
    assert c[(sliced, "Bound: static net at its computed widths, time")] == ("0.80× (n=1)", None)
    other = "dcp: cifar10 / resnet32 / dcp-p0.3"
    assert not any(where == other and col.startswith(("Control", "Bound")) for where, col in c)


def test_one_seed_is_not_judged_for_noise() -> None:
    rows = [
        _with(_row("dense", "none", 0, 0.90, 10.0, model="resnet20"), "quick"),
        _with(_row("dcp-p0.5", "dcp", 0, 0.80, 6.0, model="resnet20"), "quick", dcp={"p": 0.5}),
        _with(_row("dcp-mask-p0.5", "dcp", 0, 0.81, 10.0, model="resnet20"), "quick",
              dcp={"p": 0.5, "mode": "mask"}),
    ]
    rows.append(_with(_row("dcp-p0.5-gamma0.9", "dcp", 0, 0.70, 6.0, model="resnet20"), "quick",
                      dcp={"p": 0.5, "gamma": 0.9}))
    c = _checks(rows)
    assert c[("quick: cifar10 / resnet20 / dcp-p0.5", "Sliced − masked accuracy")] == ("-1.00", None)
    # Another γ is another method: the γ = 0.6 masked row is not its twin.
    assert ("quick: cifar10 / resnet20 / dcp-p0.5-gamma0.9", "Sliced − masked accuracy") not in c
    table = targets_tables(check_targets(summarize(rows)))["DCP"]
    assert "1 (single seed)" in table
