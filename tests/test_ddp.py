"""``torchrun -m leantrain train`` with 2 CPU processes (gloo on loopback): a process killed
mid-run takes the job down with a clear message, ``--resume`` continues it, and the result equals
one process computing the same global batch.

Reference: without SyncBatchNorm each DDP process normalises with its own half batch's
statistics, and DDP broadcasts process 0's BN running statistics before each forward. The
single-process reference computes exactly that (each half batch through the model in turn,
gradients averaged, running statistics from the first half), so weights agree to rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import leantrain
from leantrain.cli import build_parser, main
from leantrain.runs.flags import config_from_args
from leantrain.data import TensorLoader, load_dataset
from leantrain.models.files import load_model
from leantrain.methods import build_methods
from leantrain.runs.runner import seed_everything
from leantrain.training.fit import lr_at, make_optimizer

ENTRY = Path(__file__).with_name("ddp_entry.py")
ARGS = ["train", "--model", "test_resnet", "--dataset", "mnist-sample", "--train-subset", "256",
        "--test-subset", "100", "--epochs", "2", "--batch-size", "32",
        "--method", "learndrop+dcp", "--learndrop.tau", "1.0", "--learndrop.warmup", "0",
        "--learndrop.every-steps", "2", "--dcp.warmup", "0.1", "--no-progress", "--threads", "1",
        "--checkpoint-every", "4"]
WORLD = 2


def _torchrun(out: Path, kill_at: int = 0, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEANTRAIN_TEST_KILL_AT": str(kill_at)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(WORLD), str(ENTRY), *ARGS, "--out-dir", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _reference() -> torch.nn.Module:
    """One process, the same global batch, each process's half through the model in turn."""
    # The command line's settings, per-family default recipe included.
    cfg = config_from_args(build_parser().parse_args([*ARGS, "--out-dir", "unused"]))
    train, _, spec = load_dataset("mnist-sample", train_subset=256, test_subset=100, seed=0)
    seed_everything(0)
    model = leantrain.create_model("test_resnet", num_classes=spec.num_classes,
                                   in_channels=spec.in_channels, input_size=spec.image_size)
    model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(train, spec, 32, train=True, seed=0, channels_last=True)
    opt = make_optimizer(model, cfg.train)
    methods = build_methods(cfg.method_names(), cfg.method_args)
    total = len(loader) * cfg.train.epochs
    dcp, observe = methods[1], methods[1]._observe

    def observe_halves(bn, a, g):  # the saliencies of the halves add up, as DDP's are averaged
        before = dcp._saliency.get(id(bn))
        observe(bn, a, g)
        if before is not None:
            dcp._saliency[id(bn)] = dcp._saliency[id(bn)] + before

    dcp._observe = observe_halves  # DCP hands `self._observe` to every BN it tracks
    handle = leantrain.attach(model, opt, methods, total, steps_per_epoch=len(loader))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for epoch in range(cfg.train.epochs):
        model.train()
        for x, y in loader.epoch(epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(handle.step / total, cfg.train)
            opt.zero_grad(set_to_none=True)
            half = len(y) // WORLD
            for r in range(WORLD):
                for bn in bns:  # running statistics: process 0's, as DDP broadcasts them
                    bn.momentum = 0.1 if r == 0 else 0.0
                out = model(x[r * half:(r + 1) * half])
                loss = F.cross_entropy(out, y[r * half:(r + 1) * half],
                                       label_smoothing=cfg.train.label_smoothing)
                (loss / WORLD).backward()
            for bn in bns:
                bn.momentum = 0.1
            opt.step()
    handle.finish()
    return model


def test_two_processes_kill_resume_and_equal_one_process(tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    killed = _torchrun(out, kill_at=6)
    assert killed.returncode != 0
    assert ("leantrain: error: process 0 of 2 stopped: another process of the job died ("
            in killed.stderr), killed.stderr
    assert "; the job stops, continue it with the same torchrun command plus --resume." \
        in killed.stderr
    (folder,) = out.glob("*/seed0")
    assert (folder / "checkpoint.json").is_file() and not (folder / "model.safetensors").exists()

    # one process cannot continue a 2-process job
    assert main([*ARGS, "--out-dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"leantrain: error: checkpoint {folder / 'checkpoint.json'} was written by a job of 2 "
        "processes but this one has 1; resume with the same number (torchrun --nproc-per-node 2)."
    )

    resumed = _torchrun(out, 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "final test accuracy" in resumed.stdout
    summary = (folder / "summary.json").read_text()
    assert '"processes": 2' in summary
    events = (folder / "events.jsonl").read_text()
    assert '"kind": "resume"' in events and '"kind": "drop"' in events

    ddp = load_model(folder / "model.safetensors")
    ref = _reference()
    assert ddp.surgery_log == ref.surgery_log  # the same drops and the same kept channels
    want, got = ref.state_dict(), ddp.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        if not key.endswith("num_batches_tracked"):  # counted per half in the reference
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


def test_each_process_reads_its_slice_of_every_global_batch(tiny_cifar) -> None:
    from leantrain.training.distributed import ShardedLoader

    train, _, spec = tiny_cifar
    loader = TensorLoader(train, spec, 16, train=True, seed=3)
    shards = [ShardedLoader(loader, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(loader) and shards[0].batch_size == 16
    for epoch in range(2):
        for (x, y), (x0, y0), (x1, y1) in zip(loader.epoch(epoch), shards[0].epoch(epoch),
                                              shards[1].epoch(epoch)):
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_a_batch_that_does_not_split_gets_one_sentence(tiny_cifar) -> None:
    from leantrain.training.distributed import ShardedLoader

    train, _, spec = tiny_cifar
    with pytest.raises(ValueError) as err:
        ShardedLoader(TensorLoader(train, spec, 15, train=True), 0, 2)
    assert str(err.value) == (
        "the batch size 15 does not split over 2 processes; use a --batch-size divisible by 2."
    )
