"""fit(): LR schedule, training changes the model, cost and time accounting, clear failures."""

from __future__ import annotations

import math

import pytest
import torch

from leantrain.config import ConfigError, TrainConfig
from leantrain.data import TensorLoader
from leantrain.registry import create_model
from leantrain.train import TrainingDiverged, fit, lr_at


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


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1), dict(schedule="linear"), dict(warmup=1.0),
                                 dict(momentum=1.0), dict(device="tpu")])
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
