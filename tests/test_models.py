"""Models: registry, golden parameter/MAC counts, forward shapes and the Prunable structure."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import Tensor, nn

from leantrain.models import VGG, BasicBlock, Bottleneck, ResNet
from leantrain.models.factory import create_model, list_models
from leantrain.registry import Registry
from leantrain.structure import channel_sets_of, prepare, units_of
from leantrain.structure.layers import ConvBN, SelectLinear, SliceBatchNorm2d, SliceConv2d

SMALL = ["vgg11", "resnet20", "test_vgg", "test_resnet", "test_resnet_bottleneck"]
# Only constructed: a CPU forward of these is too slow for the unit suite.
NO_FORWARD = {"resnet101", "resnet152"}


@functools.lru_cache(maxsize=None)
def _shared(name: str) -> nn.Module:
    """A default-built model shared by tests that only read its structure (construction of the
    big ones dominates this file's run time)."""
    torch.manual_seed(0)
    return create_model(name)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, x: Tensor) -> int:
    """Conv + linear multiply-accumulates of one forward, counted with hooks (batch of 1).

    Conv: output elements × (in_channels / groups) × k × k (no conv biases here; BN not counted).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, _inp: tuple[Tensor, ...], _out: Tensor) -> None:
        nonlocal total
        # pycls's convention, which the golden numbers use: the bias add counts as one MAC each.
        total += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval mode is not the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_all_families() -> None:
    names = list_models()
    expected = {f"vgg{d}" for d in (11, 13, 16, 19)}
    expected |= {f"resnet{d}" for d in (14, 20, 32, 44, 56, 110, 18, 34, 50, 101, 152)}
    assert expected <= set(names)
    assert names == sorted(names)
    assert list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19"]


TEST_MODELS = ["test_resnet", "test_resnet_bottleneck", "test_vgg"]


def test_test_models_are_hidden_but_buildable() -> None:
    """The tiny test models stay out of the public list (and `cost --list`), yet build by name."""
    from leantrain.models.factory import MODELS

    assert not [n for n in list_models() if n.startswith("test_")]
    assert list_models("test_*") == []
    assert set(TEST_MODELS) <= set(MODELS.names(include_hidden=True))
    for name in TEST_MODELS:
        assert create_model(name).arch["name"] == name
    with pytest.raises(ValueError) as e:
        create_model("test_nope")
    assert "test_" not in str(e.value).split("choose one of:")[1]


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose one of: .*resnet20"):
        create_model("nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 2}, "in_channels"),
        ({"input_size": 4}, "input_size"),
        ({"num_classes": True}, "num_classes"),
    ],
)
def test_create_model_validates_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("test_resnet", **kwargs)


def test_registry_rejects_duplicates() -> None:
    reg: Registry = Registry("widget")

    @reg.register
    def a() -> int:
        return 1

    reg.register(a, name="b")
    reg.register(a, name="h", hidden=True)
    assert reg.names() == ["a", "b"] and reg.names(include_hidden=True) == ["a", "b", "h"]
    assert "a" in reg and "h" in reg and len(reg) == 3 and reg["h"] is a and list(reg) == ["a", "b", "h"]
    with pytest.raises(ValueError, match=r"^widget 'a' is already registered; pick another name "
                       r"for the new one\.$"):
        reg.register(a)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(name="h")(a)
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; choose one of: a, b\.$"):
        reg.get("c")
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; choose one of: a, b\.$"):
        reg["c"]
    reg.unregister("h")
    assert "h" not in reg and reg.register(a, name="h") is a  # the name is free again


def test_method_names_are_taken_once() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    from leantrain.methods import METHODS, Method, register_method

    @dataclass
    class Impostor(Method):
        name: ClassVar[str] = "dcp"

    with pytest.raises(ValueError, match=r"^method 'dcp' is already registered; pick another name "
                       r"for the new one\.$"):
        register_method(Impostor)
    assert METHODS["dcp"] is not Impostor


def test_arch_is_json_and_rebuilds_the_same_model() -> None:
    torch.manual_seed(0)
    model = create_model("test_resnet_bottleneck", num_classes=7, in_channels=1, input_size=28)
    arch = json.loads(json.dumps(model.arch))
    assert arch == {"name": "test_resnet_bottleneck", "num_classes": 7, "in_channels": 1,
                    "input_size": 28}
    rebuilt = create_model(arch.pop("name"), **arch)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


# --- golden counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, params",
    [
        ("resnet14", {}, 175_258),
        ("resnet20", {}, 272_474),
        ("resnet56", {}, 855_770),
        ("resnet110", {}, 1_730_714),
        ("resnet18", {"num_classes": 1000, "input_size": 224}, 11_689_512),
        ("resnet50", {"num_classes": 1000, "input_size": 224}, 25_557_032),
    ],
)
def test_golden_parameter_counts(name: str, kwargs: dict, params: int) -> None:
    assert _params(create_model(name, **kwargs)) == params


def test_golden_resnet56_macs() -> None:
    model = create_model("resnet56")
    assert _macs(model, torch.zeros(1, 3, 32, 32)) == 125_747_850


def test_imagenet_stem_adapts_to_input_size() -> None:
    # Same factory path as resnet18/50, at a fraction of the construction cost.
    # 64 px (Imagenette-64) already takes the ImageNet ÷4 stem; 28/32 px keep full resolution.
    large = create_model("test_resnet_bottleneck", input_size=64)
    small = create_model("test_resnet_bottleneck", input_size=32)
    assert large.conv1.conv.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)
    assert small.conv1.conv.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)


def test_vgg_skips_pools_on_small_inputs() -> None:
    def pools(model: nn.Module) -> int:
        return sum(isinstance(m, nn.MaxPool2d) for m in model.features)

    assert pools(_shared("vgg11")) == 5  # built for 32 px
    assert pools(create_model("vgg11", input_size=28)) == 4  # 28→14→7→3→1, then no more


# --- forward shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, input_size=16)
    assert isinstance(model, (VGG, ResNet))
    assert prepare(model).units  # discovery traces every model of the zoo
    if name in NO_FORWARD:
        return
    # 16 px keeps the big ones fast; the small models run at 28/32 px in the next test.
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 16, 16)).shape == (1, 5)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_small_models_forward_shapes(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=channels, input_size=size)
    out = model(torch.randn(2, channels, size, size))  # train mode: BN needs batch > 1
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet18_forward_64px() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=100, input_size=64)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 100)


# --- droppable units --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, identity, projection",
    [
        ("vgg11", 4, 0),
        ("vgg16", 9, 0),
        ("resnet20", 7, 2),
        ("resnet50", 12, 4),
        ("test_vgg", 2, 0),
        ("test_resnet", 4, 2),
        ("test_resnet_bottleneck", 1, 4),
    ],
)
def test_unit_counts(name: str, identity: int, projection: int) -> None:
    model = _shared(name)
    units = units_of(model)
    assert len(units) == identity
    assert all(u.kind == "identity" and isinstance(u.replacement, nn.Identity) for u in units)
    with_down = units_of(model, include_downsampling=True)
    assert len(with_down) == identity + projection
    assert sum(u.kind == "projection" for u in with_down) == projection
    for u in with_down:
        assert model.get_submodule(u.name) is u.module
        expected_stage = u.stage + "." if isinstance(model, ResNet) else "features."
        assert u.name.startswith(expected_stage)


def test_unit_names_and_stages() -> None:
    units = units_of(_shared("resnet20"), include_downsampling=True)
    names = [u.name for u in units]
    assert names[:3] == ["layer1.0", "layer1.1", "layer1.2"]
    assert {u.name: u.stage for u in units}["layer2.0"] == "layer2"
    # The stem and the classifier never appear.
    assert not any(n.startswith(("conv1", "fc")) for n in names)
    vgg_units = units_of(_shared("test_vgg"))
    assert [(u.name, u.stage) for u in vgg_units] == [("features.3", "features:2"),
                                                      ("features.6", "features:3")]


@pytest.mark.parametrize("name", ["test_resnet", "test_resnet_bottleneck"])
def test_dropping_a_zero_branch_block_preserves_the_function(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    units = units_of(model, include_downsampling=True)
    assert {u.kind for u in units} == {"identity", "projection"}
    for unit in units:
        # Zero the residual branch's last BN: the block now computes relu(shortcut(x)).
        block = unit.module
        last = block.conv2 if isinstance(block, BasicBlock) else block.conv3
        with torch.no_grad():
            last.bn.weight.zero_()
            last.bn.bias.zero_()
            expected = model(x)
        _set_module(model, unit.name, unit.replacement)
        with torch.no_grad():
            assert torch.allclose(model(x), expected, atol=1e-5), unit.name
        if unit.kind == "projection":
            # The projection's parameters carry over: the same module object.
            assert model.get_submodule(unit.name)[0] is block.downsample
    # Replaced blocks are no longer listed. With every block gone, the stem and the projections
    # feed only convs (and the classifier), so their channels become prunable: found again.
    assert units_of(model, include_downsampling=True) == []
    projections = [u.name for u in units if u.kind == "projection"]
    assert [s.name for s in channel_sets_of(model)] == ["conv1"] + [f"{n}.0" for n in projections]


def test_vgg_drop_keeps_shapes_and_relinks_channel_sets() -> None:
    torch.manual_seed(0)
    model = create_model("test_vgg")
    x = torch.randn(2, 3, 32, 32)
    before = [s.name for s in channel_sets_of(model)]
    assert before == ["features.0", "features.2", "features.3", "features.5", "features.6"]
    for unit in units_of(model):
        _set_module(model, unit.name, unit.replacement)
    assert model(x).shape == (2, 10)
    assert units_of(model) == []
    sets = {s.name: s for s in channel_sets_of(model)}
    assert list(sets) == ["features.0", "features.2", "features.5"]
    # Consumers link across the dropped convs.
    assert sets["features.2"].consumers == (model.features[5].conv,)
    assert sets["features.5"].consumers == (model.classifier,)


# --- channel sets -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "resnet50", "test_vgg", "test_resnet",
                                  "test_resnet_bottleneck"])
def test_channel_sets_are_consistent(name: str) -> None:
    model = _shared(name)
    sets = channel_sets_of(model)
    assert sets
    producers = [s.conv for s in sets]
    assert len({id(p) for p in producers}) == len(producers)  # each producer listed once
    for s in sets:
        assert isinstance(s.conv, SliceConv2d) and isinstance(s.bn, SliceBatchNorm2d)
        holder = model.get_submodule(s.name)
        assert holder.conv is s.conv and holder.bn is s.bn  # named by its ConvBN
        assert len(s) == s.conv.out_channels == s.bn.num_features
        assert s.consumers
        for c in s.consumers:
            assert isinstance(c, (SliceConv2d, SelectLinear))
            width = c.in_channels if isinstance(c, nn.Conv2d) else c.in_features
            assert width == s.conv.out_channels
    if isinstance(model, ResNet):
        # Residual-path producers (block output conv, projection) are never listed; the stem
        # only when it feeds no add directly (a first block with a projection: ImageNet-style).
        blocks = [b for _, st in model.named_children() if isinstance(st, nn.Sequential)
                  for b in st if isinstance(b, (BasicBlock, Bottleneck))]
        residual = set()
        for block in blocks:
            residual.add(id((block.conv2 if isinstance(block, BasicBlock) else block.conv3).conv))
            if block.downsample is not None:
                residual.add(id(block.downsample.conv))
        assert not residual & {id(p) for p in producers}
        per_block = 2 if isinstance(model.layer1[0], Bottleneck) else 1
        stem = int(model.layer1[0].downsample is not None)
        assert (id(model.conv1.conv) in {id(p) for p in producers}) == bool(stem)
        assert len(sets) == per_block * len(blocks) + stem
    else:
        # VGG: every conv is prunable; the last one feeds the classifier.
        assert len(sets) == sum(isinstance(m, ConvBN) for m in model.features)
        assert sets[-1].consumers == (model.classifier,)
