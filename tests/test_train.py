"""fit(): LR schedule, training changes the model, cost and time accounting, clear failures."""

from __future__ import annotations

import math
import re

import pytest
import torch

from leantrain.training.checkpoint import Checkpointer, load_checkpoint
from leantrain.config import ConfigError, TrainConfig
from leantrain.data import TensorLoader
from leantrain.models.factory import create_model
from leantrain.training.fit import (
    LOSS_BOUND, TrainingDiverged, _first_nonfinite, fit, lr_at, make_optimizer,
)


def test_lr_schedules() -> None:
    cos = TrainConfig(lr=0.2, schedule="cosine", warmup=0.1)
    assert lr_at(0.0, cos) == 0.0
    assert lr_at(0.05, cos) == pytest.approx(0.1)
    assert lr_at(0.1, cos) == pytest.approx(0.2)
    assert lr_at(0.55, cos) == pytest.approx(0.1)
    assert lr_at(1.0, cos) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(lr=0.1, schedule="step", milestones=[0.5, 0.75], lr_decay=0.1)
    assert [lr_at(p, step) for p in (0.0, 0.49, 0.5, 0.8)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lr_at(0.3, TrainConfig(lr=0.3, schedule="constant")) == 0.3


def test_linear_schedule_decays_to_zero_at_the_budgets_end() -> None:
    lin = TrainConfig(lr=0.2, schedule="linear", warmup=0.1)
    assert lr_at(0.05, lin) == pytest.approx(0.1)  # the warm-up is the same as cosine's
    assert [lr_at(p, lin) for p in (0.1, 0.55, 1.0)] == pytest.approx([0.2, 0.1, 0.0])
    assert lr_at(0.325, lin) == pytest.approx(0.15)  # straight, not a cosine's curve
    assert lr_at(0.325, TrainConfig(lr=0.2, schedule="cosine", warmup=0.1)) > 0.15


@pytest.mark.parametrize("budget, epochs, run_epochs", [
    (1.0, 30, 30), (0.3, 30, 9), (0.45, 30, 14), (0.6, 30, 18), (0.75, 30, 23), (0.9, 30, 27),
    (0.01, 10, 1),  # never zero epochs
])
def test_a_budget_trains_its_share_of_the_epochs_rounded_half_up(budget, epochs, run_epochs) -> None:
    assert TrainConfig(epochs=epochs, budget=budget).run_epochs == run_epochs


def test_a_budgeted_run_compresses_the_schedule_into_its_epochs(tiny_cifar) -> None:
    """budget 0.5 of 4 epochs trains 2 epochs, and the LR reaches 0 at the end of those 2."""
    train, test = _loaders(tiny_cifar)
    cfg = TrainConfig(epochs=4, budget=0.5, batch_size=16, lr=0.05, warmup=0.25)
    model = create_model("test_resnet")
    result = fit(model, train, test, cfg, show_progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.costs["samples"] == 2 * len(train) * 16
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1), dict(schedule="exp"), dict(warmup=1.0),
                                 dict(momentum=1.0), dict(device="tpu"), dict(budget=0.0),
                                 dict(budget=1.5)])
def test_impossible_recipes_are_rejected(bad) -> None:
    with pytest.raises(ConfigError, match="must|train"):
        TrainConfig(**bad).validate()


def _loaders(data, batch_size=16):
    train, test, spec = data
    return (TensorLoader(train, spec, batch_size, train=True, seed=0),
            TensorLoader(test, spec, 32, train=False))


def test_fit_trains_and_accounts(tiny_cifar) -> None:
    model = create_model("test_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = _loaders(tiny_cifar)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    rows = []
    result = fit(model, train, test, cfg, log=lambda kind, row: rows.append((kind, row)), show_progress=False)
    assert len(result.history) == 2 and [k for k, _ in rows] == ["epoch", "epoch"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert 0 <= result.test_acc <= 1 and math.isfinite(result.test_loss)
    assert result.times["train_s"] > 0 and result.times["eval_s"] > 0
    steps = 2 * len(train)
    assert result.costs["samples"] == steps * 16
    # dense run: integrated FLOPs equal the per-sample cost times the samples seen
    assert result.costs["forward_flops"] == result.costs["dense_forward_flops"]
    assert result.costs["train_flops"] > 2 * result.costs["forward_flops"]


def test_first_warmup_step_has_zero_lr(tiny_cifar) -> None:
    """With lr = tiny warm-up at step 0 only, the first step is a no-op on the weights."""
    model = create_model("test_resnet")
    conv_before = model.conv1.conv.weight.clone()
    train, test = _loaders(tiny_cifar, batch_size=64)  # exactly one step per epoch
    fit(model, train, test, TrainConfig(epochs=1, lr=0.1, warmup=0.5, weight_decay=0.0), show_progress=False)
    assert torch.equal(model.conv1.conv.weight, conv_before)  # lr_at(0) = 0 with warm-up


def test_fit_stops_on_nan_loss(tiny_cifar) -> None:
    model = create_model("test_resnet")
    train, test = _loaders(tiny_cifar)
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        fit(model, train, test, TrainConfig(epochs=3, lr=1e12, schedule="constant"), show_progress=False)


def test_fit_rejects_batch_larger_than_data(tiny_cifar) -> None:
    train, test = _loaders(tiny_cifar, batch_size=1000)
    with pytest.raises(ValueError, match="batch size"):
        fit(create_model("test_resnet"), train, test, TrainConfig(epochs=1), show_progress=False)


class _Sabotage:
    """A train loader that calls `act()` once, before serving its `at`-th batch (0-based)."""

    def __init__(self, inner, at, act):
        self.inner, self.at, self.act, self.served = inner, at, act, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def epoch(self, epoch, start_batch=0):
        for batch in self.inner.epoch(epoch, start_batch):
            if self.served == self.at:
                self.act()
            self.served += 1
            yield batch


def test_non_finite_bn_statistics_are_never_checkpointed(tiny_cifar, tmp_path) -> None:
    """Train-mode BN never reads its running_var, so only the save-time check can catch it."""
    model = create_model("test_resnet")
    bn = model.conv1.bn
    train, test = _loaders(tiny_cifar)
    loader = _Sabotage(train, 4, lambda: bn.running_var.fill_(float("inf")))
    with pytest.raises(TrainingDiverged) as info:
        fit(model, loader, test, TrainConfig(epochs=3, lr=0.05), show_progress=False,
            checkpointer=Checkpointer(tmp_path, every_steps=1))
    assert str(info.value) == (
        "the buffer conv1.bn.running_var became non-finite at step 5 (epoch 2); the last good "
        f"checkpoint (step 4) in {tmp_path} is kept, so resume from it with a lower --lr: add "
        f"--resume-from {tmp_path} --lr LOWER.")
    saved = load_checkpoint(tmp_path)
    assert saved.step == 4 and all(torch.isfinite(t).all() for t in saved.tensors.values()
                                   if t.is_floating_point())


def test_non_finite_optimizer_state_is_named(tiny_cifar) -> None:
    model = create_model("test_resnet")
    opt = make_optimizer(model, TrainConfig())
    assert _first_nonfinite(model, opt) is None
    opt.state[model.fc.weight]["momentum_buffer"] = torch.full_like(model.fc.weight, float("nan"))
    assert _first_nonfinite(model, opt) == "the optimizer's momentum_buffer of fc.weight"


def test_exploding_but_finite_loss_stops_the_run(tiny_cifar) -> None:
    """Logits blown up 1e8-fold give a finite loss of ~1e8: the bound stops it in that epoch."""
    model = create_model("test_resnet")
    train, test = _loaders(tiny_cifar)
    loader = _Sabotage(train, 1, lambda: model.fc.weight.data.mul_(1e8))
    rows = []
    with pytest.raises(TrainingDiverged) as info:
        fit(model, loader, test, TrainConfig(epochs=3, lr=0.05), show_progress=False,
            log=lambda kind, row: rows.append(row))
    message = str(info.value)
    assert re.fullmatch(
        r"the training loss reached [0-9.e+]+ at step 4 \(epoch 1\), over 10000 × the first "
        r"step's loss \([0-9.]+\); lower --lr or check the data, then train again\.", message
    ), message
    assert float(message.split()[4]) > LOSS_BOUND * 2.3 and rows == []  # no epoch was logged


def test_method_events_are_queued_once_by_the_base() -> None:
    """`Method._emit` queues, `events()` hands each event over once; instances never share."""
    from dataclasses import dataclass
    from typing import ClassVar

    from leantrain.methods import METHODS, Method

    @dataclass
    class Toy(Method):
        name: ClassVar[str] = "toy"
        p: float = 0.5

    a, b = Toy(), Toy()
    assert a.events() == []
    a._emit({"kind": "x", "step": 1})
    a._emit({"kind": "y", "step": 2})
    assert b.events() == []
    assert a.events() == [{"kind": "x", "step": 1}, {"kind": "y", "step": 2}]
    assert a.events() == []
    # One source of truth: no built-in method keeps its own copy of the queue.
    assert [n for n, cls in METHODS.items() if "events" in vars(cls)] == []
