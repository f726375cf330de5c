"""examples/own_loop.py runs, and gives exactly what `leantrain train` gives for the same seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from leantrain.config import DataConfig, ModelConfig, TrainConfig
from leantrain.runs.config import RunConfig
from leantrain.models.files import load_model
from leantrain.runs.runner import run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"


def _example(path: Path = EXAMPLE):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method, args", [
    ("dcp", {"dcp": {"p": 0.5, "warmup": 0.1}}),
    # the example's own settings, normalize = "self" included (the default is "peers")
    ("learndrop", {"learndrop": {"tau": 1.0, "warmup": 0.0, "stop": 1.0, "every_steps": 2,
                                 "normalize": "self"}}),
])
def test_own_loop_equals_fit(method, args, tmp_path) -> None:
    own = _example().main(["--method", method, "--model", "test_resnet", "--train-subset", "1024", "--epochs", "3",
                           "--out", str(tmp_path / "own.safetensors")])
    cfg = RunConfig(
        data=DataConfig(dataset="mnist-sample", train_subset=1024, test_subset=500),
        model=ModelConfig(name="test_resnet"),
        train=TrainConfig(epochs=3, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4,
                          schedule="constant"),
        method=method, method_args=args, seed=0, out_dir=str(tmp_path / "runs"),
    )
    _, folder = run(cfg, show_progress=False)
    fitted = load_model(folder / "model.safetensors")
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    removed = [e for e in events if e["kind"] in ("drop", "dcp_export")]
    assert removed, "the run should change the structure, or the comparison proves little"
    assert getattr(fitted, "dropped_units", []) == getattr(own, "dropped_units", [])
    own_state, fit_state = own.state_dict(), fitted.state_dict()
    assert own_state.keys() == fit_state.keys()
    for key in own_state:
        torch.testing.assert_close(own_state[key], fit_state[key], rtol=0, atol=0, msg=key)
    assert list(folder.glob("*.png")), "the run should draw its method's plot"


@pytest.mark.parametrize("stream", [1, 3])
def test_finetune_example_equals_train_with_init(stream, tmp_path) -> None:
    """examples/finetune.py (load_state_dict, a head param group, attach, chunks) gives what
    `leantrain train --init … --head-lr-mult 10 --stream K` gives, bit for bit."""
    from leantrain import create_model

    pretrained = tmp_path / "pretrained.pth"
    torch.manual_seed(5)  # another task's classifier: 100 classes, so the head is new
    torch.save(create_model("test_resnet", num_classes=100, in_channels=1).state_dict(),
               pretrained)
    own = _example(EXAMPLE.with_name("finetune.py")).main([
        "--init", str(pretrained), "--model", "test_resnet", "--stream", str(stream)])
    args = {"learndrop": {"tau": 1.0, "warmup": 0.0, "stop": 1.0, "every_steps": 2,
                          "normalize": "self"}}
    cfg = RunConfig(
        data=DataConfig(dataset="mnist-sample", train_subset=1000, test_subset=500),
        model=ModelConfig(name="test_resnet", init=str(pretrained)),
        train=TrainConfig(epochs=3, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4,
                          schedule="constant", head_lr_mult=10.0, stream=stream),
        method="learndrop", method_args=args, seed=0, out_dir=str(tmp_path / "runs"),
    )
    _, folder = run(cfg, show_progress=False)
    fitted = load_model(folder / "model.safetensors")
    assert getattr(own, "dropped_units", None), "the run should drop, or the comparison proves little"
    assert fitted.dropped_units == own.dropped_units
    own_state, fit_state = own.state_dict(), fitted.state_dict()
    for key in own_state:
        torch.testing.assert_close(own_state[key], fit_state[key], rtol=0, atol=0, msg=key)


def test_ddp_example_runs_on_two_processes(tmp_path) -> None:
    # examples/lightning_example.py is run by tests/test_lightning.py.
    import subprocess
    import sys

    script = EXAMPLE.with_name("ddp_example.py")
    out = tmp_path / "model.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), "--method", "learndrop", "--epochs", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "learndrop on 2 processes: test accuracy" in done.stdout
    model = load_model(out)
    assert [e["op"] for e in model.surgery_log] == ["drop", "drop"]
    assert "DDP built 3 times" in done.stdout  # once, then after each cut
