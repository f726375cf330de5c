"""timm's models by name (``timm:NAME``), as most CNN users pick them: twelve families.

timm is the optional extra ``leantrain[timm]``; the tests install it like torchvision (its
wheel with ``--no-deps``, imported with tests/torchvision_stub.py). For each model: the discovered
structure is pinned (droppable units, channel sets, squeeze-and-excitation gates); a sliced DCP
step equals the masked step (outputs, gradients, BN statistics, utilities); the compact export
equals the gated network; a Learn&Drop drop keeps the forward running; save → load by reference
reproduces the outputs.

Where a family has no unit or no channel set, that is the right answer, and the pin says why:
VoVNet-19b and DenseNet have no residual (their blocks concatenate), RepVGG's block adds a
BatchNorm of its input (not the input), ReXNet adds its shortcut into a slice of the channels
(``x[:, :c] += shortcut``), and RegNetX's and GhostNet's convs are grouped.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("timm", reason="the timm extra: pip install 'leantrain[timm]'")

from equivalence import assert_sliced_step_equals_masked, gated_and_compact  # noqa: E402
from leantrain.models.factory import create_model  # noqa: E402
from leantrain.models.files import load_model, save_model  # noqa: E402
from leantrain.structure import prepare, structure_of, units_of  # noqa: E402
from leantrain.structure.layers import SliceNormAct  # noqa: E402
from leantrain.structure.surgery import drop_units  # noqa: E402

SHAPE = (3, 32, 32)

# name → droppable units (count, first, last), channel sets (count, first, last), SE gates.
PINNED = {
    "resnet26d": dict(units=(5, "conv1.3", "layer4.1"), sets=(19, "conv1.0", "layer4.1.conv2"), gates=0),
    "regnetx_002": dict(units=(9, "s3.b2", "s4.b7"), sets=(1, "stem", "stem"), gates=0),
    "efficientnet_b0": dict(units=(9, "blocks.1.1", "blocks.5.3"), sets=(19, "conv_stem", "conv_head"), gates=16),
    "mobilenetv3_small_100": dict(units=(6, "blocks.1.1", "blocks.4.2"), sets=(13, "conv_stem", "blocks.5.0.conv"), gates=9),
    "cspresnet50": dict(units=(13, "stages.0.blocks.0", "stages.3.blocks.1"), sets=(34, "stem.conv1", "stages.3.conv_transition"), gates=0),
    "dla34": dict(units=(9, "level0.0", "level5.tree2"), sets=(16, "base_layer", "level5.root"), gates=0),
    "hrnet_w18_small": dict(units=(18, "stage2.0.branches.0.0", "stage4.0.branches.3.1"), sets=(36, "conv1", "final_layer"), gates=0),
    "ghostnet_100": dict(units=(11, "blocks.0.0", "blocks.8.3"), sets=(1, "blocks.9.0.conv", "blocks.9.0.conv"), gates=0),
    "ese_vovnet19b_dw": dict(units=(0, None, None), sets=(1, "stages.3.blocks.0.conv_concat", "stages.3.blocks.0.conv_concat"), gates=1),
    "repvgg_a0": dict(units=(0, None, None), sets=(0, None, None), gates=0),
    "rexnet_100": dict(units=(0, None, None), sets=(31, "stem", "features.16"), gates=13),
    "densenet121": dict(units=(0, None, None), sets=(58, "features.denseblock1.denselayer1.conv1", "features.denseblock4.denselayer16.conv1"), gates=0),
}
WITH_SETS = [n for n, pin in PINNED.items() if pin["sets"][0]]
WITH_UNITS = [n for n, pin in PINNED.items() if pin["units"][0]]


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(f"timm:{name}", input_size=SHAPE[-1])
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # BN away from its initial identity, so the checks can fail
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # a sliced step draws dropout masks over fewer channels than a masked one
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    prepare(model)
    return model


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", list(PINNED))
def test_structure_is_pinned(name: str) -> None:
    pin = PINNED[name]
    s = structure_of(_build(name))
    units = [u.name for u in s.droppable()]
    sets = [c.name for c in s.channel_sets]
    assert (len(units), units[0] if units else None, units[-1] if units else None) == pin["units"]
    assert (len(sets), sets[0] if sets else None, sets[-1] if sets else None) == pin["sets"]
    assert sum(len(c.gates) for c in s.channel_sets) == pin["gates"]
    assert all(e.reason for e in s.excluded)


def test_fused_norm_act_is_read_as_a_batchnorm() -> None:
    """timm's BatchNormAct2d: one BN node for discovery, sliceable with its activation kept."""
    from timm.layers import BatchNormAct2d

    model = _build("efficientnet_b0")
    assert isinstance(model.bn1, BatchNormAct2d) and isinstance(model.bn1, SliceNormAct)
    assert type(model.bn1.act) is nn.SiLU
    cs = structure_of(model).channel_set("blocks.1.0.conv_pw")
    assert cs.bn is model.blocks[1][0].bn1 and len(cs.gates) == 1
    assert cs.gates[0] is model.blocks[1][0].se.conv_expand


@pytest.mark.parametrize("name", WITH_SETS)
def test_sliced_step_equals_masked_step(name: str) -> None:
    assert_sliced_step_equals_masked(_build(name), *_batch())


@pytest.mark.parametrize("name", WITH_SETS)
def test_compact_export_equals_gated_network(name: str) -> None:
    gated, compact, _ = gated_and_compact(_build(name), _batch()[0])
    assert (compact - gated).abs().max() <= 1e-4 * max(1.0, float(gated.abs().max()))


@pytest.mark.parametrize("name", WITH_UNITS)
def test_a_drop_keeps_the_forward_and_saves_by_reference(name: str, tmp_path) -> None:
    model = _build(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _batch()
    F.cross_entropy(model.train()(x), y).backward()
    opt.step()
    unit = units_of(model)[-1]
    drop_units(model, [unit.name]).apply_to(opt)
    assert {id(p) for p in model.parameters()} == {id(p) for g in opt.param_groups for p in g["params"]}
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    model.eval()
    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(path).eval()  # timm:NAME is a zoo reference: no factory to name
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_timm_references_that_would_load_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="timm has no model 'resnet1000'"):
        create_model("timm:resnet1000")
    with pytest.raises(ValueError, match="with pretrained would load weights"):
        create_model("timm:resnet18", kwargs={"pretrained": True})
    from leantrain.models.factory import check_file_reference

    with pytest.raises(ValueError, match="checkpoint_path=/etc/passwd would load weights"):
        check_file_reference("timm:resnet18", {"checkpoint_path": "/etc/passwd"})
    check_file_reference("timm:resnet18", {"drop_rate": 0.1})


def test_make_test_installs_timm(tmp_path) -> None:
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "-B", "test", f"VENV={tmp_path / 'venv'}"], cwd=root,
                          capture_output=True, text=True, check=True).stdout
    assert 'pip install -q --no-deps "timm==1.0.31"' in plan
