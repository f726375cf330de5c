"""Checkpoints and resume: an interrupted run (Ctrl-C or kill -9) resumes to the same result.

Equality is exact: on CPU with a fixed seed and thread count, the resumed run's final weights,
metrics and FLOP totals equal those of an uninterrupted run, for dense training, Learn&Drop (the
network shrinks before the checkpoint) and DCP (utilities and selections mid-flight).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import Interrupting
from leantrain.training import checkpoint as ckpt_mod
from leantrain.training.checkpoint import (
    LATEST, PREVIOUS, CheckpointError, CheckpointFallbackWarning, Checkpointer, load_checkpoint,
)
from leantrain.cli import main
from leantrain.config import TrainConfig
from leantrain.data import TensorLoader
from leantrain.methods import build_methods
from leantrain.models.factory import create_model
from leantrain.training.fit import TrainingDiverged, fit

LEARNDROP = {"tau": 1.0, "warmup": 0.0, "every_steps": 2, "window": 2, "normalize": "self",
             "min_units_per_stage": 0}
DCP = {"p": 0.3, "warmup": 0.1}


# ------------------------------------------------------------------------------ fit(), in-process


def _fit(data, model_name, method, folder=None, stop=None, resume=False):
    train, test, spec = data
    torch.manual_seed(0)
    model = create_model(model_name)
    methods = build_methods([method] if method else [],
                            {"learndrop": LEARNDROP, "dcp": DCP, "static": {"p": 0.5}})
    loader = TensorLoader(train, spec, 16, train=True, seed=0)
    if stop is not None:
        loader = Interrupting(loader, stop)
    checkpointer = Checkpointer(folder, every_steps=3) if folder else None
    result = fit(model, loader, TensorLoader(test, spec, 32, train=False),
                 TrainConfig(epochs=3, batch_size=16, lr=0.05), methods, show_progress=False,
                 checkpointer=checkpointer, resume_from=folder if resume else None)
    return model, result


def _same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("model_name, method", [
    ("test_resnet", None), ("test_resnet", "learndrop"), ("test_vgg", "dcp"),
    ("test_resnet", "static"),
])
def test_fit_resume_equals_uninterrupted(tiny_cifar, tmp_path, model_name, method) -> None:
    straight, want = _fit(tiny_cifar, model_name, method)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_cifar, model_name, method, tmp_path, stop=7)  # 4 steps per epoch
    saved = load_checkpoint(tmp_path)
    assert saved.step == 6 and saved.meta["batch"] == 2  # a mid-epoch checkpoint
    if method == "learndrop":  # the network had already shrunk when it was checkpointed
        assert saved.meta["architecture"]["dropped_units"]
    if method == "dcp":  # selections were mid-flight
        assert any(v is not None for v in saved.meta["methods"][0]["state"]["kept"].values())
    resumed, got = _fit(tiny_cifar, model_name, method, tmp_path, resume=True)
    _same_state(straight.state_dict(), resumed.state_dict())
    assert [(h["train_loss"], h["test_loss"], h["test_acc"]) for h in got.history] == [
        (h["train_loss"], h["test_loss"], h["test_acc"]) for h in want.history]
    assert (got.test_acc, got.test_loss) == (want.test_acc, want.test_loss)
    assert got.costs == want.costs  # FLOP totals continue, not restart
    assert got.times["train_s"] > saved.meta["clock"]["train"] > 0  # and so do times
    kinds = [e["kind"] for e in got.events if e["kind"] != "resume"]
    assert kinds == [e["kind"] for e in want.events]


def test_nan_loss_stops_without_checkpointing_garbage(tiny_cifar, tmp_path) -> None:
    class Poisoned(Interrupting):
        def epoch(self, epoch, start_batch=0):
            for x, y in self.inner.epoch(epoch, start_batch):
                self.served += 1
                yield (x * float("nan") if self.served >= self.at else x), y

    train, test, spec = tiny_cifar
    loader = Poisoned(TensorLoader(train, spec, 16, train=True, seed=0), at=5)
    with pytest.raises(TrainingDiverged) as info:
        fit(create_model("test_resnet"), loader, TensorLoader(test, spec, 32, train=False),
            TrainConfig(epochs=3, batch_size=16), show_progress=False,
            checkpointer=Checkpointer(tmp_path, every_steps=1))
    message = str(info.value)
    assert "step 5" in message and "last good checkpoint (step 4)" in message
    assert "--resume-from" in message and "--lr" in message and "\n" not in message
    saved = load_checkpoint(tmp_path)
    assert saved.step == 4
    assert all(torch.isfinite(t).all() for k, t in saved.tensors.items() if k.startswith("model/"))


# --------------------------------------------------------------------------------- files on disk


def _toy_save(checkpointer: Checkpointer, step: int) -> None:
    tensors = {"model/w": torch.full((3,), float(step)), "rng/torch_cpu": torch.get_rng_state(),
               "train/loss_sum": torch.zeros(())}
    meta = {"format": ckpt_mod.FORMAT, "step": step, "epoch": 0, "batch": step,
            **{k: {} for k in ("architecture", "cost", "clock")},
            "optimizer": {"class": "SGD", "params": [], "groups": [], "state": {}},
            "rng": {"python": [3, [], None], "numpy": ["MT19937", [], 0, 0, 0.0]},
            "methods": [], "history": [], "events": [], "total_steps": 10, "steps_per_epoch": 10}
    checkpointer.save(tensors, meta)


def test_saves_rotate_and_keep_only_two(tmp_path) -> None:
    c = Checkpointer(tmp_path)
    for step in (1, 2, 3):
        _toy_save(c, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000002.safetensors", "checkpoint-000000003.safetensors", PREVIOUS, LATEST]
    assert load_checkpoint(tmp_path).step == 3
    assert load_checkpoint(tmp_path / PREVIOUS).step == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "json", "missing"])
def test_damaged_latest_falls_back_to_previous(tmp_path, damage) -> None:
    c = Checkpointer(tmp_path)
    _toy_save(c, 1)
    _toy_save(c, 2)
    tensors = tmp_path / "checkpoint-000000002.safetensors"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "json":
        (tmp_path / LATEST).write_text('{"format": "leantrain-checkpoint/1", "ste')
    else:
        tensors.unlink()
    with pytest.warns(CheckpointFallbackWarning, match="falling back to the previous checkpoint"):
        assert load_checkpoint(tmp_path).step == 1


def test_no_usable_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    c = Checkpointer(tmp_path)
    _toy_save(c, 1)
    (tmp_path / "checkpoint-000000001.safetensors").write_bytes(b"\0" * 7)
    with pytest.raises(CheckpointError, match="no usable checkpoint.*truncated") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


def test_minutes_trigger_with_injected_clock(tmp_path) -> None:
    now = [0.0]
    c = Checkpointer(tmp_path, every_minutes=2, clock=lambda: now[0])
    assert not c.due(1)
    now[0] = 119.0
    assert not c.due(2)
    now[0] = 121.0
    assert c.due(3)
    _toy_save(c, 3)
    assert not c.due(3) and not c.due(4)  # the clock restarts at each save
    assert Checkpointer(tmp_path, every_steps=5).due(10)


def test_loading_never_unpickles(tiny_cifar, tmp_path, monkeypatch) -> None:
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_cifar, "test_resnet", "learndrop", tmp_path, stop=7)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for target, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"),
                         (pickle, "Unpickler")]:
        monkeypatch.setattr(target, name, refuse)
    _fit(tiny_cifar, "test_resnet", "learndrop", tmp_path, resume=True)


# ---------------------------------------------------------------------------- the command line


def _train_args(root, out, method=None, *extra):
    args = ["train", "--model", "test_vgg" if method == "dcp" else "test_resnet", "--dataset",
            "cifar10", "--data-dir", str(root), "--epochs", "3", "--batch-size", "25", "--lr",
            "0.05", "--threads", "1", "--out-dir", str(out), "--no-progress",
            "--checkpoint-every", "2", *extra]
    if method:
        args += ["--method", method]
        table = {"learndrop": LEARNDROP, "dcp": DCP}[method]
        for key, value in table.items():
            args += [f"--{method}.{key}", str(value)]
    return args


def _run_folder(out: Path) -> Path:
    (folder,) = out.glob("*/seed0")
    return folder


def _assert_same_run(a: Path, b: Path) -> None:
    _same_state(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))
    rows = [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()]
            for f in (a, b)]
    keys = ("epoch", "step", "train_loss", "test_loss", "test_acc", "train_flops", "params")
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    for key in ("test_acc", "test_loss", "train_flops", "forward_flops", "final_params"):
        assert sa[key] == sb[key], key
    assert not list(b.glob("checkpoint*"))  # a finished run keeps its model, not checkpoints


@pytest.mark.parametrize("method", [None, "dcp"])
def test_cli_ctrl_c_then_resume_matches(cifar_root, tmp_path, monkeypatch, capsys, method) -> None:
    assert main(_train_args(cifar_root, tmp_path / "straight", method)) == 0
    saves = []
    original = Checkpointer.save

    def interrupted_save(self, tensors, meta):
        saves.append(meta["step"])
        if len(saves) == 4:  # Ctrl-C while the 4th checkpoint (step 8) is being written
            raise KeyboardInterrupt
        return original(self, tensors, meta)

    monkeypatch.setattr(Checkpointer, "save", interrupted_save)
    args = _train_args(cifar_root, tmp_path / "resumed", method)
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(Checkpointer, "save", original)
    folder = _run_folder(tmp_path / "resumed")
    assert load_checkpoint(folder).step == 6
    assert main(args) == 2  # a fresh start would overwrite the unfinished run
    assert "continue it with --resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    _assert_same_run(_run_folder(tmp_path / "straight"), folder)
    assert main([*args, "--resume"]) == 0  # already finished: says so, changes nothing
    assert "already finished" in capsys.readouterr().out


_KILL_DRIVER = textwrap.dedent("""
    import sys, time
    from torchvision_stub import import_torchvision_models  # test set-up only, see that file
    import_torchvision_models()
    from pathlib import Path
    import leantrain.training.checkpoint.writer as c
    real, written = c._write_file, []
    def hang_on_nth(path, data):
        if path.name == "checkpoint.json":
            written.append(path)
            if len(written) == int(sys.argv[2]):  # its tensor file is on disk; the record never
                Path(sys.argv[1]).write_text("now")
                time.sleep(600)
        real(path, data)
    c._write_file = hang_on_nth
    from leantrain.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _kill_at_record(args: list[str], nth: int, tmp_path: Path, while_waiting) -> None:
    """Run `args` in a child, kill -9 it while it writes its `nth` checkpoint record."""
    signal_file = tmp_path / "signal"
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_DRIVER, str(signal_file), str(nth),
                             *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while_waiting()
        deadline = time.monotonic() + 120
        while not signal_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"the run never reached checkpoint {nth}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_mid_checkpoint_resumes_and_matches(cifar_root, tmp_path) -> None:
    """kill -9 during a checkpoint write (Learn&Drop has dropped blocks by then), then resume."""
    args = _train_args(cifar_root, tmp_path / "killed", "learndrop")
    _kill_at_record(args, 4, tmp_path, lambda: main(
        _train_args(cifar_root, tmp_path / "straight", "learndrop")))
    folder = _run_folder(tmp_path / "killed")
    saved = load_checkpoint(folder)
    assert saved.step == 6 and saved.meta["architecture"]["dropped_units"]
    assert main([*args, "--resume"]) == 0
    _assert_same_run(_run_folder(tmp_path / "straight"), folder)


def test_kill_9_on_a_torchvision_model_resumes_bit_identical(cifar_root, tmp_path) -> None:
    """The same for a user's model named by reference: torchvision's ResNet-18, Learn&Drop."""
    def args_for(out: Path) -> list[str]:
        args = _train_args(cifar_root, out, "learndrop")
        args[args.index("--model") + 1] = "torchvision:resnet18"
        return args

    args = args_for(tmp_path / "killed")
    _kill_at_record(args, 4, tmp_path, lambda: main(args_for(tmp_path / "straight")))
    folder = _run_folder(tmp_path / "killed")
    saved = load_checkpoint(folder)
    assert saved.meta["architecture"]["arch"]["name"] == "torchvision:resnet18"
    assert saved.meta["architecture"]["dropped_units"]  # Learn&Drop has cut it by then
    assert main([*args, "--resume"]) == 0
    _assert_same_run(_run_folder(tmp_path / "straight"), folder)


def test_kill_9_during_the_first_checkpoint_then_resume_starts_cleanly(cifar_root, tmp_path,
                                                                       capsys) -> None:
    """No record was ever committed: --resume starts over (one warning) instead of refusing,
    removes what the killed process left (its orphan tensor file, stale temp files) and ends
    with the uninterrupted run's result."""
    args = _train_args(cifar_root, tmp_path / "killed", None)
    _kill_at_record(args, 1, tmp_path, lambda: None)
    folder = _run_folder(tmp_path / "killed")
    assert not (folder / LATEST).exists() and list(folder.glob("checkpoint-*.safetensors"))
    stale = folder / ".model.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"half a model")
    assert main(_train_args(cifar_root, tmp_path / "straight", None)) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"leantrain: warning: {folder} holds no checkpoint because the run was stopped "
                   "before writing its first one; starting it from the beginning.")
    assert not stale.exists() and not list(folder.glob(".*.tmp"))
    _assert_same_run(_run_folder(tmp_path / "straight"), folder)


def test_divergence_advice_resumes_to_a_finite_run(cifar_root, tmp_path, capsys) -> None:
    """A huge LR (reached by warm-up, so some checkpoints come first) diverges; the printed
    advice, followed literally, continues from a finite state and finishes."""
    def args(out, lr):
        return [*_train_args(cifar_root, out, None), "--batch-size", "10", "--warmup", "0.9",
                "--schedule", "constant", "--lr", lr]

    assert main(args(tmp_path / "a", "1000")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "one step after the checkpoint of step" in err, err
    advice = re.search(r"add --resume-from (\S+) --lr LOWER\.$", err)
    assert advice, err
    named = load_checkpoint(advice.group(1))
    assert named.step >= 2 and all(torch.isfinite(t).all() for t in named.tensors.values()
                                   if t.is_floating_point())
    assert main([*args(tmp_path / "b", "0.05"), "--resume-from", advice.group(1)]) == 0
    folder = _run_folder(tmp_path / "b")
    weights = load_file(folder / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    rows = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    losses = [r["train_loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]  # it recovers


def test_cli_resume_errors(cifar_root, tmp_path, capsys) -> None:
    args = _train_args(cifar_root, tmp_path, None)
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--resume", "--resume-from", str(tmp_path)]) == 2
    assert "give one" in capsys.readouterr().err


def test_resume_from_with_lower_lr_after_divergence(cifar_root, tmp_path, monkeypatch, capsys):
    real_epoch = TensorLoader.epoch

    def poisoned(self, epoch, start_batch=0):  # the 6th training batch turns to NaN
        for b, (x, y) in enumerate(real_epoch(self, epoch, start_batch), start=start_batch):
            bad = self.train and epoch * len(self) + b >= 5
            yield (x * float("nan") if bad else x), y

    monkeypatch.setattr(TensorLoader, "epoch", poisoned)
    args = _train_args(cifar_root, tmp_path / "a", None)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    diverged = _run_folder(tmp_path / "a")
    assert len(err.splitlines()) == 1 and "loss became nan" in err
    assert f"--resume-from {diverged}" in err and "step 4" in err
    assert load_checkpoint(diverged).step == 4
    monkeypatch.setattr(TensorLoader, "epoch", real_epoch)
    lower = [*_train_args(cifar_root, tmp_path / "b", None), "--lr", "0.01"]
    other_plan = [*lower, "--epochs", "4", "--resume-from", str(diverged)]
    assert main(other_plan) == 2
    assert "another train.epochs" in capsys.readouterr().err
    assert main([*lower, "--resume-from", str(diverged)]) == 0
    rows = (_run_folder(tmp_path / "b") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_crash_after_the_last_epoch_resumes_from_the_final_checkpoint(cifar_root, tmp_path,
                                                                      monkeypatch) -> None:
    """Killed while saving the model: the final checkpoint replays DCP's compact export."""
    import leantrain.runs.runner

    assert main(_train_args(cifar_root, tmp_path / "straight", "dcp")) == 0
    args = _train_args(cifar_root, tmp_path / "crashed", "dcp")

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(leantrain.runs.runner, "save_model", crash)
    assert main(args) == 130
    monkeypatch.undo()
    folder = _run_folder(tmp_path / "crashed")
    assert load_checkpoint(folder).step == 12  # the end of the last epoch
    assert main([*args, "--resume"]) == 0
    _assert_same_run(_run_folder(tmp_path / "straight"), folder)


def test_runner_resume_modes(cifar_root, tmp_path, monkeypatch) -> None:
    from leantrain.runs.config import from_dict
    from leantrain.methods import method_fields
    from leantrain.runs.runner import RunFinishedError, run

    cfg = from_dict({"model": {"name": "test_resnet"}, "checkpoint_every": 2,
                     "out_dir": str(tmp_path),
                     "data": {"dataset": "cifar10", "data_dir": str(cifar_root)},
                     "train": {"epochs": 2, "batch_size": 25, "threads": 1}}, method_fields())
    real = Checkpointer.save

    def interrupt_run(config=cfg) -> None:
        def save(self, tensors, meta):
            if meta["step"] == 4:
                raise KeyboardInterrupt
            return real(self, tensors, meta)

        monkeypatch.setattr(Checkpointer, "save", save)
        with pytest.raises(KeyboardInterrupt):
            run(config, show_progress=False, resume="restart")
        monkeypatch.setattr(Checkpointer, "save", real)

    interrupt_run()
    with pytest.raises(CheckpointError, match="continue it with --resume"):
        run(cfg, show_progress=False)
    with pytest.raises(ValueError, match="resume='maybe'"):
        run(cfg, show_progress=False, resume="maybe")
    result, _ = run(cfg, show_progress=False, resume="restart")  # starts over
    assert not [e for e in result.events if e["kind"] == "resume"]
    # A finished run is never overwritten, whatever the mode; its files stay byte for byte.
    folder = cfg.run_dir()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for mode in (False, "restart", "auto"):
        with pytest.raises(RunFinishedError) as info:
            run(cfg, show_progress=False, resume=mode)
        assert str(info.value) == (
            f"the run in {folder} has already finished and a new attempt would overwrite its "
            "results; to train it again choose another --seed or --out-dir, or delete the folder.")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    other = from_dict({**cfg.to_dict(), "seed": 1}, method_fields())
    interrupt_run(other)
    result, _ = run(other, show_progress=False, resume="auto")  # continues from step 2
    assert [e["step"] for e in result.events if e["kind"] == "resume"] == [2]
