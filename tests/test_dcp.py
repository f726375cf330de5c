"""DCP: the spec's five sanity properties, selection rules and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import randomise_bn
from leantrain.cost import count_macs, count_params
from leantrain.models.files import load_model, save_model
from leantrain.methods.base import Progress
from leantrain.methods.dcp import DCP, select_channels
from leantrain.methods.static import StaticWidths
from leantrain.models.factory import create_model
from leantrain.structure import StructureError, channel_sets_of

MODELS = ["test_resnet", "test_vgg", "test_resnet_bottleneck"]


def _batch(n: int = 8, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)




def _select(method: DCP, model: torch.nn.Module, seed: int = 1) -> None:
    """Random utilities, then one selection step past the warm-up."""
    method.setup(model, Progress(0, 100, 10))
    g = torch.Generator().manual_seed(seed)
    for name, u in method.utilities.items():
        u.copy_(torch.rand(len(u), generator=g))
    method.step(model, Progress(50, 100, 10))


def _assert_same_step(
    a: torch.nn.Module, a_method: DCP, b: torch.nn.Module, b_method: DCP, **utility_tol: float
) -> None:
    """One training forward/backward of both: outputs, gradients, BN statistics, utilities agree."""
    x, y = _batch()
    outs = []
    for model, method in ((a, a_method), (b, b_method)):
        model.train()
        out = model(x)
        F.cross_entropy(out, y).backward()
        method.after_backward(model, Progress(51, 100, 10))
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for (n, p1), (_, p2) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5, msg=n)
    for (n, b1), (_, b2) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(b1, b2, rtol=1e-4, atol=1e-5, msg=n)
    for key in a_method.utilities:
        torch.testing.assert_close(a_method.utilities[key], b_method.utilities[key], **utility_tol)


@pytest.mark.parametrize("selection", ["global", "layer"])
@pytest.mark.parametrize("name", MODELS)
def test_sliced_equals_masked(name: str, selection: str) -> None:
    """Property 1: outputs, parameter gradients, utilities and BN statistics agree."""
    torch.manual_seed(0)
    sliced = create_model(name)
    randomise_bn(sliced)
    masked = copy.deepcopy(sliced)
    m_slice = DCP(p=0.4, mode="slice", selection=selection)
    m_mask = DCP(p=0.4, mode="mask", selection=selection)
    _select(m_slice, sliced)
    _select(m_mask, masked)
    assert any(k is not None for k in m_slice.kept.values())
    _assert_same_step(sliced, m_slice, masked, m_mask, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_unselected_channels_get_zero_gradient_and_frozen_utility(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    method = DCP(p=0.5)
    _select(method, model)
    before = {k: v.clone() for k, v in method.utilities.items()}
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    method.after_backward(model, Progress(51, 100, 10))
    for s in channel_sets_of(model):
        kept = method.kept[s.name]
        if kept is None:
            continue
        off = torch.ones(len(s), dtype=torch.bool)
        off[kept] = False
        assert s.conv.weight.grad[off].abs().max() == 0
        assert s.bn.weight.grad[off].abs().max() == 0
        torch.testing.assert_close(method.utilities[s.name][off], before[s.name][off])
        assert not torch.equal(method.utilities[s.name][kept], before[s.name][kept])


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("name", MODELS)
def test_compact_export_equals_gated_model(name: str, multiple: int) -> None:
    """Property 2: the compact model reproduces the gated model; counts follow kept widths."""
    torch.manual_seed(0)
    model = create_model(name)
    randomise_bn(model)
    method = DCP(p=0.5, min_channels=2, compute_multiple=multiple)
    _select(method, model)
    model.eval()
    x, _ = _batch()
    with torch.no_grad():
        gated = model(x)
    widths = {k: (len(v) if v is not None else None) for k, v in method.kept.items()}
    gated_macs = count_macs(model, (3, 32, 32))
    change = method.finish(model)
    assert change is not None and change.removed
    with torch.no_grad():
        compact = model(x)
    torch.testing.assert_close(compact, gated, rtol=1e-4, atol=1e-5)
    for s in channel_sets_of(model):
        if widths[s.name] is not None:
            assert len(s) == widths[s.name]
            assert all(c.weight.shape[1] == widths[s.name] for c in s.consumers)
    if multiple == 1:  # the gated model computed exactly the kept channels
        assert count_macs(model, (3, 32, 32)) == gated_macs
    else:  # it also computed padding channels, gated off
        assert count_macs(model, (3, 32, 32)) <= gated_macs
    assert count_params(model) < count_params(create_model(name))


def test_computed_widths_are_padded_to_the_multiple_and_gated() -> None:
    """Slice mode computes multiples of 8 channels, yet equals the exact selection."""
    torch.manual_seed(0)
    exact_model = create_model("test_vgg")
    randomise_bn(exact_model)
    padded_model = copy.deepcopy(exact_model)
    exact, padded = DCP(p=0.3, compute_multiple=1), DCP(p=0.3, compute_multiple=8)
    _select(exact, exact_model)
    _select(padded, padded_model)
    assert {k: None if v is None else v.tolist() for k, v in exact.kept.items()} == {
        k: None if v is None else v.tolist() for k, v in padded.kept.items()
    }
    widths = []
    for s in channel_sets_of(padded_model):
        index, kept = s.conv.out_index, padded.kept[s.name]
        if kept is not None:
            assert len(index) % 8 == 0 or len(index) == len(s)
            assert set(kept.tolist()) <= set(index.tolist())
            widths.append((len(kept), len(index)))
    assert any(k < n for k, n in widths), "some layer should be padded, or this proves little"
    _assert_same_step(exact_model, exact, padded_model, padded)


def _train_steps(method: DCP | None, steps: int = 6, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if method:
        method.setup(model, Progress(0, steps, steps))
    for step in range(steps):
        x, y = _batch(seed=step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if method:
            method.after_backward(model, Progress(step, steps, steps))
        opt.step()
        if method:
            method.step(model, Progress(step + 1, steps, steps))
    return model


def test_p_zero_equals_dense_training() -> None:
    """Property 3: p = 0 keeps every channel and trains exactly like dense."""
    dense = _train_steps(None)
    dcp = _train_steps(DCP(p=0.0, warmup=0.0))
    for (n, a), (_, b) in zip(dense.state_dict().items(), dcp.state_dict().items()):
        assert torch.equal(a, b), n


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 24), min_size=1, max_size=6),
    p=st.floats(0, 0.95),
    min_channels=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_select_prunes_exactly_round_np(widths, p, min_channels, seed) -> None:
    """Property 4: exactly round(N·p) channels off, none of the layers below min_channels."""
    g = torch.Generator().manual_seed(seed)
    utilities = [torch.rand(w, generator=g).round(decimals=1) for w in widths]  # ties on purpose
    total, prune = sum(widths), round(sum(widths) * p)
    feasible = prune <= sum(max(0, w - min_channels) for w in widths)
    if not feasible:
        with pytest.raises(ValueError):
            select_channels(utilities, prune, min_channels)
        return
    kept = select_channels(utilities, prune, min_channels)
    assert sum(len(k) for k in kept) == total - prune
    for k, u in zip(kept, utilities):
        assert len(k) >= min(min_channels, len(u))
        assert torch.equal(k, k.sort().values)
    # the pruned channels are the lowest-utility candidates: every kept candidate ≥ every pruned one
    pruned_u = torch.cat([u[~torch.isin(torch.arange(len(u)), k)] for k, u in zip(kept, utilities)])
    if len(pruned_u):
        floor = [u[k].sort(descending=True).values[min_channels:] for k, u in zip(kept, utilities)]
        floor = torch.cat(floor)
        if len(floor):
            assert floor.min() >= pruned_u.max()


def test_selection_prunes_round_np_in_model() -> None:
    model = create_model("test_vgg")
    method = DCP(p=0.3, min_channels=3)
    _select(method, model)
    sets = channel_sets_of(model)
    total = sum(len(s) for s in sets)
    kept = sum(len(method.kept[s.name]) if method.kept[s.name] is not None else len(s) for s in sets)
    assert total - kept == round(total * 0.3)
    assert all(s.conv.out_index is None or len(s.conv.out_index) >= 3 for s in sets)


@pytest.mark.parametrize("p, min_channels", [(0.5, 1), (0.3, 1), (0.9, 3)])
def test_layer_selection_cuts_every_width_alike(p: float, min_channels: int) -> None:
    """selection='layer': each set keeps its own round(C·(1 − p)) highest-utility channels."""
    model = create_model("test_resnet")
    method = DCP(p=p, selection="layer", min_channels=min_channels)
    _select(method, model)
    for s in channel_sets_of(model):
        want = max(min_channels, len(s) - round(len(s) * p))
        u = method.utilities[s.name]
        top = torch.sort(u, descending=True, stable=True).indices[:want].sort().values
        kept = method.kept[s.name]
        assert torch.equal(kept if kept is not None else torch.arange(len(s)), top), s.name


@pytest.mark.parametrize("name", MODELS)
def test_save_load_compact_model(tmp_path, name: str) -> None:
    """Property 5: save → load of a compact model reproduces its outputs exactly."""
    torch.manual_seed(0)
    model = create_model(name)
    randomise_bn(model)
    method = DCP(p=0.5)
    _select(method, model)
    method.finish(model)
    model.eval()
    path = save_model(model, tmp_path / "compact.safetensors")
    loaded = load_model(path).eval()
    x, _ = _batch()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert count_params(loaded) == count_params(model)


def test_gamma_schedule_and_warmup() -> None:
    method = DCP(gamma=0.6, gamma_milestones=[0.5, 0.75], gamma_values=[0.8, 1.0], warmup=0.2)
    assert [method.gamma_at(f) for f in (0.1, 0.5, 0.8)] == [0.6, 0.8, 1.0]
    model = create_model("test_resnet")
    method.setup(model, Progress(0, 10, 5))
    method.step(model, Progress(1, 10, 5))  # inside the warm-up: every channel on
    assert all(k is None for k in method.kept.values())
    method.step(model, Progress(3, 10, 5))
    assert any(k is not None for k in method.kept.values())


def test_rejects_an_unknown_selection_rule() -> None:
    with pytest.raises(ValueError, match="dcp.selection = 'per-layer'; choose 'global' or 'layer'"):
        DCP(selection="per-layer")


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_rejects_p_outside_unit_interval(p: float) -> None:
    with pytest.raises(ValueError, match=r"dcp.p .* outside \[0, 1\)"):
        DCP(p=p)


def test_rejects_min_channels_larger_than_a_layer() -> None:
    with pytest.raises(ValueError, match="min_channels = 999 exceeds the width"):
        DCP(min_channels=999).setup(create_model("test_resnet"), Progress(0, 10, 5))


@pytest.mark.parametrize("method", [DCP, StaticWidths])
def test_rejects_model_without_prunable_channels(method) -> None:
    class NoChannels(torch.nn.Module):
        def droppable_units(self, include_downsampling=False):
            return []

        def channel_sets(self):
            return []

    with pytest.raises(ValueError, match="no prunable channels"):
        method().setup(NoChannels(), Progress(0, 10, 5))
    with pytest.raises(StructureError, match=r"call leantrain.prepare\(model, example_input\)"):
        method().setup(torch.nn.Linear(2, 2), Progress(0, 10, 5))


@pytest.mark.parametrize("mode", ["slice", "mask"])
def test_saliency_equals_taylor_term_of_the_bn_output(mode: str) -> None:
    """The observer's a·g (its view of a is overwritten by the in-place ReLU, to save memory)
    equals the spec's BN-output term."""
    from leantrain.structure.layers import ConvBN, make_sliceable
    from leantrain.structure import ChannelSet

    torch.manual_seed(0)
    unit = ConvBN(3, 8, 3)
    index = torch.tensor([0, 2, 3, 6])
    ChannelSet("unit", make_sliceable(unit.conv), make_sliceable(unit.bn)).select(index, mode=mode)
    seen = {}
    unit.bn.observer = lambda u, a, g: seen.update(s=(a * g).sum((2, 3)).abs().sum(0))
    x = torch.randn(4, 3, 8, 8)
    w = torch.randn(4, len(index) if mode == "slice" else 8, 8, 8)
    (unit(x) * w).sum().backward()
    # reference: the BN output a (before gate and ReLU) and ∂L/∂a, by plain autograd
    ref = ConvBN(3, 8, 3)
    ref.load_state_dict(unit.state_dict())
    a = ref.bn(ref.conv(x))
    a.retain_grad()
    gate = torch.zeros(8)
    gate[index] = 1
    out = torch.relu(a * gate.view(1, -1, 1, 1))
    if mode == "slice":
        out = out[:, index]
    (out * w).sum().backward()
    expected = (a * a.grad).sum((2, 3)).abs().sum(0)
    got = seen["s"]
    if mode == "slice":
        expected = expected[index]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_export_at_cuts_the_compact_model_early_and_trains_it_as_one(tiny_cifar) -> None:
    """`export_at`: the selection made permanent mid-training; the later steps train the
    compact network (fewer parameters in every later row), and the end cuts nothing more."""
    import leantrain
    from leantrain.config import TrainConfig
    from leantrain.data.loaders import TensorLoader

    train, test, spec = tiny_cifar
    loaders = [TensorLoader(s, spec, batch_size=16, train=t, seed=0)
               for s, t in ((train, True), (test, False))]
    torch.manual_seed(0)
    model = create_model("test_resnet")
    dense_params = count_params(model)
    result = leantrain.fit(model, *loaders, TrainConfig(epochs=2, batch_size=16, lr=0.05),
                           [DCP(p=0.5, warmup=0.1, export_at=0.5)], show_progress=False)
    exports = [e for e in result.events if e["kind"] == "dcp_export"]
    assert len(exports) == 1 and exports[0]["step"] == 4  # half of the 8 steps
    assert result.history[0]["params"] < dense_params  # the first epoch ended cut
    assert result.history[0]["params"] == result.history[-1]["params"] == result.params
    # Cut early, each layer keeps its computed width, a multiple of compute_multiple (8): the
    # compact network trains on, and odd widths run slow.
    from leantrain.structure import channel_sets_of

    assert all(len(s) % 8 == 0 for s in channel_sets_of(model))
    with pytest.raises(ValueError, match="dcp.export_at = 0.05 must be a fraction of training "
                                         "after the warm-up"):
        DCP(warmup=0.1, export_at=0.05)
