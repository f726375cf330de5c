"""Property: any sequence of unit drops and channel prunes survives save → load unchanged.

Hypothesis drives random `drop_units` (identity and, sometimes, projection units) and
`prune_channels` (random kept indices per channel set) on the tiny ResNet, bottleneck ResNet and
VGG, interleaved with SGD-momentum steps. After every cut the optimizer, remapped by the cut's
`Change`, must still step, and `save_model` → `load_model` must give a model with identical
outputs and the same architecture record.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leantrain.models.files import architecture, load_model, save_model
from leantrain.models.factory import create_model
from leantrain.structure import channel_sets_of, units_of
from leantrain.structure.surgery import drop_units, prune_channels

MODELS = ["test_resnet", "test_vgg", "test_resnet_bottleneck"]


def _step(model, opt, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    model.train()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _cut(data, model):
    """Draw and perform one cut; returns its Change (None when nothing could be cut)."""
    if data.draw(st.booleans(), label="drop"):
        units = units_of(model, include_downsampling=data.draw(st.booleans(), label="projection"))
        if units:
            name = data.draw(st.sampled_from([u.name for u in units]), label="unit")
            return drop_units(model, [name], include_downsampling=True)
    sets = channel_sets_of(model)
    some_sets = st.lists(st.sampled_from(sets), min_size=1, max_size=3, unique_by=lambda s: s.name)
    chosen = data.draw(some_sets, label="sets")
    keep = {}
    for s in chosen:
        width = len(s)
        indices = st.lists(st.integers(0, width - 1), min_size=1, max_size=width, unique=True)
        kept = data.draw(indices, label=f"keep {s.name}")
        keep[s.name] = torch.tensor(kept)
    return prune_channels(model, keep)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(MODELS), cuts=st.integers(1, 4), data=st.data())
def test_random_cuts_survive_save_and_load(name: str, cuts: int, data) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    _step(model, opt, seed=0)  # momentum buffers exist, so the remap has state to slice
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        for i in range(cuts):
            change = _cut(data, model)
            if change:
                change.apply_to(opt)
            live = {id(p) for p in model.parameters()}
            assert all(id(p) in live for g in opt.param_groups for p in g["params"])
            _step(model, opt, seed=i + 1)  # the remapped optimizer steps without shape errors
            save_model(model, path)
            loaded = load_model(path)
            assert architecture(loaded) == architecture(model)
            model.eval()
            loaded.eval()
            with torch.no_grad():
                assert torch.equal(model(x), loaded(x))


def test_pruning_chained_channel_sets_remaps_the_optimizer_once_through() -> None:
    """VGG: features.2 consumes features.0's channels and produces its own; prune both at once."""
    model = create_model("test_vgg")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _step(model, opt, seed=0)
    momentum = opt.state[model.features[2].conv.weight]["momentum_buffer"].clone()
    keep0, keep2 = torch.tensor([1, 3, 5]), torch.tensor([0, 2, 4, 6])
    prune_channels(model, {"features.0": keep0, "features.2": keep2}).apply_to(opt)
    weight = model.features[2].conv.weight
    assert weight.shape == (4, 3, 3, 3)
    assert torch.equal(opt.state[weight]["momentum_buffer"], momentum[keep2][:, keep0])
    _step(model, opt, seed=1)


def test_a_conv_made_droppable_by_pruning_rebuilds(tmp_path) -> None:
    """features.2 (8 → 16 channels) becomes equal-width, so droppable, once its output is cut."""
    model = create_model("test_vgg")
    assert "features.2" not in [u.name for u in units_of(model)]
    prune_channels(model, {"features.2": torch.arange(8)})
    drop_units(model, ["features.2"])
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert architecture(loaded) == architecture(model)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
