"""Fixed-width baseline (`static`): the cut before the first step, its equivalence to training a
narrow network from the start, and clear errors (a model without prunable channels is tested
for both methods in tests/test_dcp.py)."""

from __future__ import annotations

import pytest
import torch

from leantrain.config import TrainConfig
from leantrain.cost import count_macs
from leantrain.data.loaders import TensorLoader
from leantrain.methods import build_methods
from leantrain.methods.base import Progress
from leantrain.methods.static import StaticWidths
from leantrain.models.factory import create_model
from leantrain.structure import channel_sets_of
from leantrain.structure.surgery import prune_channels
from leantrain.training.fit import fit


def test_uniform_widths_round_up_to_the_multiple_and_stay_within_the_layer() -> None:
    model = create_model("resnet20")  # inner widths 16, 32, 64 (three blocks each)
    assert StaticWidths(p=0.5).target_widths(model) == [8] * 3 + [16] * 3 + [32] * 3
    # 16·0.7 = 11.2 → 11 → 16; 32·0.7 = 22.4 → 22 → 24; 64·0.7 = 44.8 → 45 → 48
    assert StaticWidths(p=0.3, multiple=8).target_widths(model) == [16] * 3 + [24] * 3 + [48] * 3
    assert StaticWidths(p=0.9, min_channels=4).target_widths(model) == [4] * 3 + [4] * 3 + [6] * 3


def test_setup_cuts_every_set_and_returns_the_change() -> None:
    model = create_model("resnet20")
    dense_macs = count_macs(model, (3, 32, 32))
    change = StaticWidths(p=0.5).setup(model, Progress(0, 10, 5))
    assert change and len(change.removed) == 9
    assert [len(s) for s in channel_sets_of(model)] == [8] * 3 + [16] * 3 + [32] * 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Halving every block's inner width halves both of its convs: the blocks' MACs halve.
    assert count_macs(model, (3, 32, 32)) < 0.6 * dense_macs


def test_explicit_widths() -> None:
    model = create_model("test_resnet")
    widths = [len(s) - 1 for s in channel_sets_of(model)]
    StaticWidths(widths=widths).setup(model, Progress(0, 10, 5))
    assert [len(s) for s in channel_sets_of(model)] == widths
    resnet = create_model("resnet20")
    dcp_final = [2, 2, 8, 11, 12, 13, 14, 30, 21]
    padded = StaticWidths(widths=dcp_final, multiple=8).target_widths(resnet)
    assert padded == [8, 8, 8, 16, 16, 16, 16, 32, 24]


def test_fit_equals_training_the_narrow_network_from_the_start(tiny_cifar) -> None:
    """The cut before step one, with the optimizer re-keyed, is the same run as building the
    narrow network first: same weights after training, same FLOP totals."""
    train, test, spec = tiny_cifar
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)

    def run(static: bool):
        torch.manual_seed(0)
        model = create_model("test_resnet")
        methods = build_methods(["static"], {"static": {"p": 0.5}}) if static else []
        if not static:
            prune_channels(model, {s.name: torch.arange(round(len(s) * 0.5))
                                   for s in channel_sets_of(model)})
        result = fit(model, TensorLoader(train, spec, 16, train=True, seed=0),
                     TensorLoader(test, spec, 32, train=False), cfg, methods, show_progress=False)
        return model, result

    cut, got = run(True)
    narrow, want = run(False)
    assert list(cut.state_dict()) == list(narrow.state_dict())
    for k, v in narrow.state_dict().items():
        assert torch.equal(cut.state_dict()[k], v), k
    for key in ("forward_flops", "backward_flops", "train_flops", "samples"):
        assert got.costs[key] == want.costs[key], key
    # The dense reference is the network handed to fit(): the uncut one for `static`.
    assert got.costs["dense_train_flops"] > 1.5 * want.costs["dense_train_flops"]
    assert [e["kind"] for e in got.events] == ["static_cut"]


@pytest.mark.parametrize("kwargs, message", [
    ({"p": 1.0}, r"outside \[0, 1\)"),
    ({"p": -0.1}, r"outside \[0, 1\)"),
    ({"multiple": 0}, "must be ≥ 1"),
])
def test_rejects_impossible_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        StaticWidths(**kwargs)


def test_rejects_widths_that_do_not_fit_the_model() -> None:
    model = create_model("test_resnet")
    n = len(channel_sets_of(model))
    with pytest.raises(ValueError, match=f"lists 2 widths but this model has {n} channel sets"):
        StaticWidths(widths=[1, 1]).setup(model, Progress(0, 10, 5))
    too_wide = [len(s) + 1 for s in channel_sets_of(model)]
    with pytest.raises(ValueError, match="is outside 1.."):
        StaticWidths(widths=too_wide).setup(model, Progress(0, 10, 5))
