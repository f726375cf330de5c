"""torch.compile with the methods (`leantrain.compiled`): a compiled run computes what the eager
run does, DCP's changing widths cost no recompile, Learn&Drop recompiles once per drop, and the
CLI's --compile runs end to end. The backend is ``aot_eager`` (dynamo and AOTAutograd without
inductor's code generation): the graphs, guards and recompiles are those of inductor, in seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import leantrain as lt
from leantrain.cli import main
from leantrain.compiled import RECOMPILE_LIMIT, compile_model, is_compiled
from leantrain.cost import measure_step_flops

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"].get("unique_graphs", 0)


def _train(method: lt.Method, steps: int, compiled: bool, *, compile_after_attach: bool = False,
           model_name: str = "test_resnet") -> tuple[torch.nn.Module, lt.Method, list]:
    """`steps` steps of a plain loop on fixed random batches; the widths DCP computed per step."""
    torch.manual_seed(0)
    model = lt.create_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if compiled and not compile_after_attach:
        compile_model(model, BACKEND)
    handle = lt.attach(model, opt, [method], steps)
    if compiled and compile_after_attach:
        compile_model(model, BACKEND)
    g = torch.Generator().manual_seed(1)
    widths = []
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        widths.append(tuple(getattr(method, "_computed_widths", ())))
    handle.finish()
    return model, method, widths


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()  # compiled in place: no "_orig_mod." prefix
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


def test_compiled_dcp_equals_eager_with_two_graphs_for_every_width() -> None:
    eager_model, eager_dcp, eager_widths = _train(lt.DCP(p=0.5, warmup=0.2), 16, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    model, dcp, widths = _train(lt.DCP(p=0.5, warmup=0.2), 16, compiled=True)
    assert is_compiled(model)
    assert widths == eager_widths
    assert len(set(widths[4:])) >= 4  # the selection really moved the widths
    for name, u in eager_dcp.utilities.items():
        torch.testing.assert_close(dcp.utilities[name], u)
    _assert_same_weights(model, eager_model)
    # One graph at full width (warm-up), one with symbolic widths for every selection after it,
    # and the export to the compact model adds none (finish runs no forward). No graph breaks.
    assert _graphs() == 2
    assert not counters["graph_break"]


def test_dcp_switches_to_sink_saliencies_when_compiled_after_attach() -> None:
    _, eager_dcp, eager_widths = _train(lt.DCP(p=0.5, warmup=0.1), 10, compiled=False)
    torch._dynamo.reset()
    _, dcp, widths = _train(lt.DCP(p=0.5, warmup=0.1), 10, compiled=True, compile_after_attach=True)
    assert widths == eager_widths
    for name, u in eager_dcp.utilities.items():
        torch.testing.assert_close(dcp.utilities[name], u)


@pytest.mark.parametrize("score", ["change", "residual_norm"])
def test_compiled_learndrop_equals_eager_and_recompiles_once_per_drop(score) -> None:
    def method() -> lt.LearnDrop:
        return lt.LearnDrop(score=score, mode="budget", budget_target=0.5, budget_end=0.6,
                            warmup=0.0, every_steps=2)

    # resnet20: blocks enough for two drops under the per-stage minimum
    eager_model, eager_ld, _ = _train(method(), 24, compiled=False, model_name="resnet20")
    torch._dynamo.reset()
    counters.clear()
    model, ld, _ = _train(method(), 24, compiled=True, model_name="resnet20")
    assert ld.dropped == eager_ld.dropped and len(ld.dropped) >= 2
    _assert_same_weights(model, eager_model)
    # One graph per structure that trained a step: the start and each drop before the last
    # step. Counting the FLOPs of each new structure compiles nothing (it runs eager).
    assert len(ld.dropped) <= _graphs() <= len(ld.dropped) + 1
    assert not counters["graph_break"]


def test_counting_a_compiled_model_runs_eager_and_counts_the_same() -> None:
    model = lt.create_model("test_resnet")
    expected = measure_step_flops(model, (3, 32, 32))
    compile_model(model, BACKEND)
    assert measure_step_flops(model, (3, 32, 32)) == expected
    assert lt.count_macs(model, (3, 32, 32)) == lt.count_macs(lt.create_model("test_resnet"),
                                                               (3, 32, 32))
    assert _graphs() == 0


def test_compile_model_raises_the_recompile_limit_and_refuses_an_unknown_backend() -> None:
    model = lt.create_model("test_resnet")
    compile_model(model, BACKEND)
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    with pytest.raises(ValueError, match=r"^'inductr' is not a torch.compile backend; choose one "
                                         r"of .*inductor.*\(inductor is torch's default\)\.$"):
        compile_model(model, "inductr")


def test_cli_trains_a_compiled_model_with_both_methods(cifar_root, tmp_path, capsys) -> None:
    args = ["train", "--model", "test_resnet", "--dataset", "cifar10", "--data-dir",
            str(cifar_root), "--epochs", "2", "--batch-size", "25", "--lr", "0.05", "--out-dir",
            str(tmp_path / "runs"), "--no-progress", "--method", "learndrop+dcp",
            "--compile", BACKEND, "--learndrop.mode", "budget", "--learndrop.budget-target",
            "0.5", "--learndrop.warmup", "0.0", "--learndrop.every-steps", "1",
            "--dcp.warmup", "0.1"]
    assert main(args) == 0
    [run] = (tmp_path / "runs").glob("cifar10-test_resnet-learndrop+dcp-*/seed0")
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["compile"] == BACKEND
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_params"] < summary["dense_params"]
    model = lt.load_model(run / "model.safetensors")
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    assert not counters["graph_break"]


def test_cli_names_an_unknown_backend(cifar_root, tmp_path, capsys) -> None:
    args = ["train", "--model", "test_resnet", "--dataset", "cifar10", "--data-dir",
            str(cifar_root), "--epochs", "1", "--out-dir", str(tmp_path / "runs"),
            "--no-progress", "--compile", "inductr"]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "'inductr' is not a torch.compile backend" in err and "Traceback" not in err


def test_compile_flag_alone_means_inductor_and_leaves_an_eager_run_its_identity() -> None:
    from leantrain.cli import build_parser
    from leantrain.runs.flags import config_from_args

    def config(*argv: str):
        return config_from_args(build_parser().parse_args(["train", "--model", "resnet20",
                                                           *argv]))

    assert config("--compile").train.compile == "inductor"
    assert config("--compile", BACKEND).train.compile == BACKEND
    eager = config()
    assert eager.train.compile is None
    # Not compiling is what every recorded run did: it stays out of their identity.
    assert config("--compile").digest() != eager.digest()
    from leantrain.runs.config import TRAIN_DIGEST_NEUTRAL

    assert TRAIN_DIGEST_NEUTRAL["compile"] is None


def test_dcp_under_inductor_trains_eager_and_says_why(cifar_root, tmp_path, capsys) -> None:
    """Inductor fixes a convolution's channel counts, so DCP's moving widths would recompile at
    nearly every step: `fit` warns and trains eager (Learn&Drop and dense compile)."""
    args = ["train", "--model", "test_resnet", "--dataset", "cifar10", "--data-dir",
            str(cifar_root), "--epochs", "1", "--batch-size", "25", "--out-dir",
            str(tmp_path / "runs"), "--no-progress", "--method", "dcp", "--compile"]
    assert main(args) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert ("leantrain: warning: --compile inductor is off for this run: DCP computes new widths "
            "at every step and inductor compiles a convolution for its exact channel counts, so "
            "nearly every step would recompile (docs/compile.md); it trains eager.") in err
    assert _graphs() == 0
    assert lt.DCP(mode="mask").compile_problem("inductor") is None
    assert lt.DCP().compile_problem(BACKEND) is None
