"""Saved-for-backward activation memory: exact on a known graph, and cut by dropping and slicing."""

from __future__ import annotations

import copy

import torch
from torch import nn

from leantrain.training.memory import ActivationMeter, saved_activation_bytes
from leantrain.methods.base import Progress
from leantrain.methods.dcp import DCP
from leantrain.models.factory import create_model
from leantrain.structure import units_of
from leantrain.structure.surgery import drop_units


def test_linear_saves_only_its_input() -> None:
    # nn.Linear saves its input for the weight gradient and its weight (a parameter, not counted).
    assert saved_activation_bytes(nn.Linear(4, 3), torch.randn(2, 4)) == 2 * 4 * 4


def test_a_tensor_saved_twice_is_counted_once() -> None:
    # ReLU saves its output; the next Linear saves the same tensor as its input.
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(2, 4)
    assert saved_activation_bytes(model, x) == 2 * 4 * 4 + 2 * 5 * 4


def test_peak_is_the_largest_step() -> None:
    model = nn.Linear(4, 3)
    meter = ActivationMeter(model)
    for n in (2, 6, 3):
        with meter.step():
            model(torch.randn(n, 4)).sum().backward()
    assert meter.last_bytes == 3 * 4 * 4 and meter.peak_bytes == 6 * 4 * 4
    assert meter.summary() == {
        "peak_activation_mb": 6 * 4 * 4 / 2**20, "mean_activation_mb": 11 * 4 * 4 / 3 / 2**20
    }


def test_dropping_units_cuts_saved_activations() -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet").train()
    x = torch.randn(4, 3, 32, 32)
    before = saved_activation_bytes(model, x)
    drop_units(model, [u.name for u in units_of(model)[:2]])
    assert 0 < saved_activation_bytes(model, x) < before


def test_sliced_dcp_saves_less_than_masked_and_dense() -> None:
    torch.manual_seed(0)
    dense = create_model("test_vgg").train()
    sliced, masked = copy.deepcopy(dense), copy.deepcopy(dense)
    for model, mode in ((sliced, "slice"), (masked, "mask")):
        method = DCP(p=0.5, mode=mode, warmup=0.0, compute_multiple=1)
        method.setup(model, Progress(0, 100, 10))
        g = torch.Generator().manual_seed(1)  # same random utilities → same selection
        for u in method.utilities.values():
            u.copy_(torch.rand(len(u), generator=g))
        method.step(model, Progress(1, 100, 10))
    x = torch.randn(4, 3, 32, 32)
    full = saved_activation_bytes(dense, x)
    assert saved_activation_bytes(sliced, x) < 0.8 * full
    assert saved_activation_bytes(masked, x) >= full  # the authors' way keeps every channel
