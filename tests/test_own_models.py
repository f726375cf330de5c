"""Users' own models: torchvision's and hand-written ones, through the same discovery.

For each model: the discovered structure is pinned (units, channel sets, exclusions with their
reasons); a sliced DCP step equals the masked step (outputs, gradients, BN statistics); the
compact export equals the gated network; a Learn&Drop drop keeps the forward running and takes
the parameters and their optimizer state out of the optimizer; save → load gives the same outputs.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import user_models
from conftest import randomise_bn
from equivalence import assert_sliced_step_equals_masked, gated_and_compact, select_randomly
from torchvision_stub import import_torchvision_models
from leantrain.models.files import ModelFileError, load_model, save_model
from leantrain.methods.dcp import DCP
from leantrain.models.factory import create_model
from leantrain.structure import channel_sets_of, prepare, structure_of, units_of
from leantrain.structure.surgery import drop_units

SHAPE = (3, 32, 32)

# name → (model reference, keyword arguments)
MODELS = {
    "resnet18": ("torchvision:resnet18", {}),
    "resnet50": ("torchvision:resnet50", {}),
    "vgg16_bn": ("torchvision:vgg16_bn", {}),
    # Dropout 0: the equality tests compare two networks step by step.
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"dropout": 0.0}),
    "plain_cnn": ("user_models:plain_cnn", {}),
    "preact_resnet": ("user_models:preact_resnet", {}),
    "concat_net": ("user_models:concat_net", {}),
    "grouped_net": ("user_models:grouped_net", {}),
}

# The discovered structure of each model: droppable units, projection units, channel sets
# (count, first and last), and excluded parts with a word of their reason.
PINNED = {
    "resnet18": dict(
        units=["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
        projections=["layer2.0", "layer3.0", "layer4.0"],
        sets=(8, "layer1.0.conv1", "layer4.1.conv1"),
        excluded={"conv1": "residual add in layer1.0", "layer2.0.downsample": "residual add",
                  "layer4.1.conv2": "residual add in layer4.1", "layer2.0": "projection shortcut"},
    ),
    "resnet50": dict(
        units=["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer2.3", "layer3.1",
               "layer3.2", "layer3.3", "layer3.4", "layer3.5", "layer4.1", "layer4.2"],
        projections=["layer1.0", "layer2.0", "layer3.0", "layer4.0"],
        # The stem feeds layer1.0's conv1 and its projection, never an add: prunable.
        sets=(33, "conv1", "layer4.2.conv2"),
        excluded={"layer1.0.conv3": "residual add", "layer3.0.downsample": "residual add"},
    ),
    "vgg16_bn": dict(
        units=["features.3", "features.10", "features.17", "features.20", "features.27",
               "features.30", "features.34", "features.37", "features.40"],
        projections=[],
        sets=(12, "features.0", "features.37"),
        # The last conv's 512 channels are flattened with their 7×7 positions into 25088
        # features of classifier.0: refused.
        excluded={"features.40": "flattened with their 7×7 positions", "features.0": "shape"},
    ),
    "mobilenet_v2": dict(
        units=["features.3", "features.5", "features.6", "features.8", "features.9",
               "features.10", "features.12", "features.13", "features.15", "features.16"],
        projections=[],
        sets=(20, "features.0", "features.18"),
        excluded={"features.3.conv.2": "residual add in features.3"},
    ),
    "plain_cnn": dict(
        units=["body.0", "body.7"], projections=[],
        sets=(4, "stem", "body.7"),
        excluded={"body.4": "changes the shape"},
    ),
    "preact_resnet": dict(
        units=["stage1.0", "stage1.1", "stage2.1"], projections=[],
        sets=(4, "stage1.0.conv1", "stage2.1.conv1"),
        excluded={"conv": "not followed by a BatchNorm", "stage2.0.shortcut": "BatchNorm"},
    ),
    "concat_net": dict(
        units=[], projections=[],
        sets=(2, "stem", "conv"),
        excluded={"mix.a": "concat (torch.cat) in mix", "mix.b": "concat (torch.cat) in mix"},
    ),
    "grouped_net": dict(
        units=["blocks.0", "blocks.1"], projections=[],
        sets=(0, None, None),
        excluded={"blocks.0.conv1": "grouped conv blocks.0.conv2 (groups=4)",
                  "blocks.1.conv2": "grouped convolution (groups=4)"},
    ),
}

# DCP needs prunable channels; these are the models that have them.
WITH_SETS = [n for n, pin in PINNED.items() if pin["sets"][0] > 0]


def _build(name: str, seed: int = 0, small_head: bool = False) -> nn.Module:
    """The model, prepared. ``small_head``: torchvision VGG's 7×7 pool and 25088→4096→4096 head
    replaced by a global pool and one linear layer, as users fine-tuning VGG on small images often
    do (its 134 M head parameters are in no channel set and cost 1 GB per float64 copy; with the
    global pool the last conv becomes prunable too)."""
    torch.manual_seed(seed)
    ref, kwargs = MODELS[name]
    model = create_model(ref, kwargs=kwargs or None)
    if small_head:
        model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 10)
    randomise_bn(model)
    prepare(model)
    return model




def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", list(PINNED))
def test_discovered_structure_is_pinned(name: str) -> None:
    pin = PINNED[name]
    s = structure_of(_build(name))
    assert [u.name for u in s.droppable()] == pin["units"]
    assert [u.name for u in s.units if u.kind == "projection"] == pin["projections"]
    count, first, last = pin["sets"]
    names = [c.name for c in s.channel_sets]
    assert len(names) == count
    if count:
        assert (names[0], names[-1]) == (first, last)
    reasons = {e.name: e.reason for e in s.excluded}
    for part, words in pin["excluded"].items():
        assert words in reasons[part], (part, reasons[part])
    # Nothing is both pruned and excluded, and every exclusion says why.
    assert not set(names) & {e.name for e in s.excluded if e.what == "channels"}
    assert all(e.reason for e in s.excluded)
    assert "Excluded" in str(s) and all(u.name in str(s) for u in s.units)


@pytest.mark.parametrize("name", WITH_SETS)
def test_sliced_step_equals_masked_step(name: str) -> None:
    assert_sliced_step_equals_masked(_build(name, small_head=name == "vgg16_bn"), *_batch())


@pytest.mark.parametrize("name", WITH_SETS)
def test_compact_export_equals_gated_network(name: str) -> None:
    model = _build(name)
    gated, compact, method = gated_and_compact(model, _batch()[0])
    assert (compact - gated).abs().max() <= 1e-5
    for s in channel_sets_of(model):  # the widths are the kept ones, found again by tracing
        kept = method.kept.get(s.name)
        assert kept is None or len(s) == len(kept)


@pytest.mark.parametrize("name", [n for n, pin in PINNED.items() if pin["units"]])
def test_learndrop_drop_keeps_forward_and_leaves_the_optimizer(name: str) -> None:
    model = _build(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _batch()
    F.cross_entropy(model.train()(x), y).backward()
    opt.step()  # momentum buffers exist now
    unit = units_of(model)[0]
    gone = {id(p) for p in unit.parameters()}
    change = drop_units(model, [unit.name])
    change.apply_to(opt)
    live = {id(p) for p in model.parameters()}
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == live and not gone & in_opt
    assert not gone & {id(p) for p in opt.state}
    assert unit.name not in [u.name for u in units_of(model)]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()  # the forward runs without the unit
    opt.step()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "plain_cnn", "preact_resnet"])
def test_save_and_load_by_reference_give_the_same_outputs(name: str, tmp_path) -> None:
    model = _build(name)
    method = DCP(p=0.5)
    select_randomly(method, model)
    if change := method.finish(model):
        assert change.removed
    if units := units_of(model):
        drop_units(model, [units[-1].name])
    model.eval()
    path = save_model(model, tmp_path / "model.safetensors")
    ref = MODELS[name][0]
    # A file's own factory is run only when the user names it (torchvision's zoo needs no name).
    loaded = load_model(path, factory=None if ref.startswith("torchvision:") else ref).eval()
    x, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert type(loaded) is type(model)


def test_model_reference_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="torchvision has no model 'resnet1000'"):
        create_model("torchvision:resnet1000")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        create_model("no_such_module:factory")
    with pytest.raises(ValueError, match="user_models has no callable 'nothing'"):
        create_model("user_models:nothing")
    with pytest.raises(ValueError, match="torchvision models take RGB input"):
        create_model("torchvision:resnet18", in_channels=1)
    with pytest.raises(ValueError, match="check the model keyword arguments"):
        create_model("user_models:plain_cnn", kwargs={"depth": 3})
    with pytest.raises(ValueError, match="leantrain model and takes no extra keyword"):
        create_model("resnet20", kwargs={"depth": 3})


def test_a_model_without_a_name_saves_and_loads_into_a_fresh_instance(tmp_path) -> None:
    torch.manual_seed(0)
    model = user_models.PlainCNN()  # built by the user, not by name
    prepare(model, torch.zeros(2, *SHAPE))
    drop_units(model, [units_of(model)[0].name])
    method = DCP(p=0.5)
    select_randomly(method, model)
    method.finish(model)
    model.eval()
    path = save_model(model, tmp_path / "model.safetensors")
    with pytest.raises(ModelFileError, match=r"PlainCNN that was not built by name.*load_model"
                                             r"\(path, model=YourModel\(\)\)"):
        load_model(path)
    with pytest.raises(ModelFileError, match="holds a PlainCNN, but the model given is a ConcatNet"):
        load_model(path, model=user_models.ConcatNet())
    loaded = load_model(path, model=user_models.PlainCNN()).eval()
    x, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_inspect_lists_units_sets_and_reasons(capsys) -> None:
    from leantrain.cli import main

    assert main(["inspect", "torchvision:resnet18", "--input", "3x64x64"]) == 0
    out = capsys.readouterr().out
    assert "torchvision:resnet18 at 3x64x64" in out
    assert "layer1.1" in out and "% MACs" in out
    assert "layer1.0.conv1" in out and "64 channels" in out
    assert "conv1 " in out and "residual add in layer1.0" in out
    assert main(["inspect", "user_models:nothing"]) == 2
    assert "has no callable 'nothing'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(MODELS))
def test_both_methods_run_in_the_own_loop(name: str) -> None:
    """Learn&Drop (budget mode: drops are certain) and DCP together, through `attach` as the
    README's own loop."""
    from leantrain.training.attach import attach
    from leantrain.methods.learndrop import LearnDrop
    from leantrain.training.fit import make_optimizer, TrainConfig

    model = _build(name)
    methods = []
    if PINNED[name]["units"]:
        methods.append(LearnDrop(mode="budget", budget_target=0.5, warmup=0.0, budget_end=0.6,
                                 stop=1.0, every_steps=2, window=2, min_units_per_stage=0))
    if name in WITH_SETS:
        methods.append(DCP(p=0.5, warmup=0.0))
    # No momentum and one batch: each interval's parameter change shrinks as the batch is fit,
    # so no unit is vetoed by a rising change (Learn&Drop's continuation score).
    opt = make_optimizer(model, TrainConfig(lr=0.02, momentum=0.0))
    total = 8
    handle = attach(model, opt, methods, total)
    x, y = _batch()
    for _ in range(total):
        loss = F.cross_entropy(model.train()(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        live = {id(p) for p in model.parameters() if p.requires_grad}
        assert live == {id(p) for g in opt.param_groups for p in g["params"]}
    handle.finish()
    if PINNED[name]["units"]:
        assert methods[0].dropped, "Learn&Drop dropped nothing"
    assert model.eval()(_batch()[0]).shape == (4, 10)


def test_cli_trains_a_torchvision_model_with_dcp(cifar_root, tmp_path, capsys) -> None:
    from leantrain.cli import main

    args = ["train", "--model", "torchvision:mobilenet_v2", "--dataset", "cifar10",
            "--data-dir", str(cifar_root), "--epochs", "1", "--batch-size", "25", "--threads", "1",
            "--out-dir", str(tmp_path), "--no-progress", "--method", "dcp", "--dcp.warmup", "0.0"]
    assert main(args) == 0
    (folder,) = tmp_path.glob("*/seed0")
    loaded = load_model(folder / "model.safetensors").eval()
    full = create_model("torchvision:mobilenet_v2")
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in full.parameters())
    assert loaded(_batch()[0]).shape == (4, 10)


def test_readme_own_model_snippet_runs() -> None:
    """The README's "Your own model": a torchvision ResNet in five added lines."""
    import leantrain

    tv = import_torchvision_models()
    torch.manual_seed(0)
    model = tv.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    total_steps = 4
    methods = [leantrain.LearnDrop(mode="budget", warmup=0.0, budget_end=0.5, stop=1.0,
                                   every_steps=1, min_units_per_stage=0), leantrain.DCP(p=0.5)]
    handle = leantrain.attach(model, opt, methods, total_steps,
                              example_input=torch.zeros(1, 3, 32, 32))
    listing = str(handle.structure)
    assert "layer1.0.conv1" in listing and "residual add" in listing
    x, y = _batch()
    for _ in range(total_steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    handle.finish()
    assert type(model).__name__ == "ResNet" and model(x).shape == (4, 10)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad}


def test_inspect_prints_a_compact_models_widths_for_the_static_control(tmp_path, capsys) -> None:
    """`leantrain inspect RUN/model.safetensors --widths` gives a DCP run's final widths in the
    order `static.widths` takes them."""
    from leantrain.cli import main
    from leantrain.structure.surgery import prune_channels

    model = create_model("test_resnet")
    sets = channel_sets_of(model)
    keep = {s.name: torch.arange(1 + i % len(s)) for i, s in enumerate(sets)}
    prune_channels(model, keep)
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    assert main(["inspect", str(path), "--widths"]) == 0
    assert capsys.readouterr().out.strip() == f"widths = {[len(k) for k in keep.values()]}"
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leantrain: error:") and "missing.safetensors" in err
