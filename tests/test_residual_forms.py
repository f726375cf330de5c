"""Residuals however the add is written: in a block's forward, in the parent's, in a loop, with
an identity shortcut module, behind ``if self.training``.

For each form: the units discovery finds (and that no conv → BN → ReLU run inside a branch is
taken for a unit of its own), that a dropped unit computes exactly what the model computes with
that branch's output zeroed, that training goes on after the drop, and that save → load
reproduces the cut model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leantrain.methods.scores import ResidualNormScore
from leantrain.models.files import load_model, save_model
from leantrain.structure import prepare, structure_of, units_of
from leantrain.structure.surgery import drop_units
from leantrain.structure.trace import ZeroBranch

SHAPE = (3, 8, 8)


def _branch(width: int, inner: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(width, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
        nn.Conv2d(inner, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
    )


class _Net(nn.Module):
    """Stem and head shared by the forms below."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def classify(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ParentAdd(_Net):
    """``torch.relu(x + self.block(x))`` in the parent, the branch 16 → 32 → 16 wide."""

    def __init__(self) -> None:
        super().__init__()
        self.block = _branch(16, 32)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.classify(x)


class LoopAdd(_Net):
    """``for blk in self.blocks: x = x + blk(x)``, equal widths (conv → BN → ReLU inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_branch(16, 16) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            x = x + blk(x)
        return self.classify(x)


class InlineBranch(_Net):
    """The branch's layers called one by one in the parent's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + 0.5 * self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.classify(x)


class ShortcutBlock(nn.Module):
    """The most copied CIFAR ResNet block: an identity shortcut written as a module."""

    def __init__(self, width: int, shortcut: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ShortcutNet(_Net):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(ShortcutBlock(16, nn.Identity()), ShortcutBlock(16, nn.Sequential()))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.layer(self.stem(x)))


class TrainingBranch(_Net):
    """``if self.training:`` in the forward, the residual add in the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_branch(16, 16) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            y = blk(x)
            if self.training:
                y = y * 1.0  # e.g. a regulariser only while training
            x = x + y
        return self.classify(x)


class SharedValue(_Net):
    """A branch value also used outside the branch: not a unit, with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(16), nn.ReLU())
        self.second = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        inner = self.first(x)
        y = x + self.second(inner)
        return self.classify(y) + inner.mean()


FORMS = {
    "parent": (ParentAdd, ["block"], {"block": ("block",)}),
    "loop": (LoopAdd, ["blocks.0", "blocks.1", "blocks.2"], {}),
    "inline": (InlineBranch, ["conv1"], {"conv1": ("conv1", "bn1", "conv2", "bn2")}),
    "shortcut": (ShortcutNet, ["layer.0", "layer.1"], {}),
    "training": (TrainingBranch, ["blocks.0", "blocks.1"], {}),
}


def _built(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    for m in model.modules():  # BN away from the identity, so a zeroed branch is no no-op
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    prepare(model, SHAPE)
    return model


@pytest.mark.parametrize("form", sorted(FORMS))
def test_discovery_finds_the_residual_units(form) -> None:
    cls, names, members = FORMS[form]
    model = _built(cls)
    units = units_of(model)
    assert [u.name for u in units] == names
    assert all(u.kind == "identity" and u.residual for u in units)
    for name, want in members.items():
        assert next(u for u in units if u.name == name).members == want
    if form in ("parent", "loop", "training", "inline"):
        # staged by the graph: the units of one forward at one shape form one stage
        assert {u.stage for u in units} == {"model:16×8×8"}
        assert all(u.branch_only for u in units)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_dropped_unit_equals_its_branch_zeroed(form, tmp_path) -> None:
    cls, names, _ = FORMS[form]
    model = _built(cls)
    unit = next(u for u in units_of(model) if u.name == names[-1])
    reference = copy.deepcopy(model).eval()
    ref_units = {u.name: u for u in units_of(reference)}
    ref_unit = ref_units[unit.name]
    if unit.branch_only:  # zero the branch's output: its last member's
        ref_unit.last.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    else:  # a whole block: its output becomes its input (after the block's own ReLU)
        ref_unit.module.register_forward_hook(lambda m, a, out: F.relu(a[0]))
    drop_units(model, [unit.name])
    model.eval()
    x = torch.randn(4, *SHAPE)
    assert torch.allclose(model(x), reference(x), atol=1e-6)
    assert unit.name not in [u.name for u in units_of(model)]
    if unit.branch_only:
        assert all(isinstance(model.get_submodule(m), ZeroBranch) for m in unit.members)

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()

    save_model(model, tmp_path / "cut.safetensors")  # a user's class: rebuilt from a fresh one
    fresh = cls()
    prepare(fresh, SHAPE)
    loaded = load_model(tmp_path / "cut.safetensors", model=fresh)
    model.eval()
    loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_training_branch_is_traced_and_said() -> None:
    model = _built(TrainingBranch)
    notes = structure_of(model).notes
    assert len(notes) == 1 and "self.training" in notes[0] and "training branch" in notes[0]
    assert "Note: the forward branches on self.training" in str(structure_of(model))
    assert structure_of(_built(LoopAdd)).notes == []


def test_a_branch_value_used_elsewhere_is_no_unit() -> None:
    model = _built(SharedValue)
    s = structure_of(model)
    assert [u.name for u in s.units if u.residual] == []  # `first` alone is a conv → BN → ReLU run
    [why] = [e for e in s.excluded if e.name == "add in forward"]
    assert why.what == "unit" and "also used outside it" in why.reason


def test_residual_norm_of_a_branch_only_unit() -> None:
    """‖(x + f(x)) − x‖ / ‖x‖ = ‖f(x)‖ / ‖x‖, measured on the branch alone."""
    model = _built(ParentAdd)
    [unit] = units_of(model)
    score = ResidualNormScore()
    score.attach(model, [unit])
    model.train()
    x = torch.randn(4, *SHAPE)
    model(x)
    with torch.no_grad():
        inp = model.stem(x)
        want = model.block(inp).norm() / inp.norm()
    assert torch.allclose(score._pending[unit.name], want, rtol=1e-5)
    score.detach()


class _Block(nn.Module):
    def __init__(self, width: int, out: int | None = None) -> None:
        super().__init__()
        out = out or width
        stride = 2 if out != width else 1
        self.branch = nn.Sequential(
            nn.Conv2d(width, out, 3, stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
            nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = (nn.Sequential() if out == width else
                         nn.Sequential(nn.Conv2d(width, out, 1, stride, bias=False), nn.BatchNorm2d(out)))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class OneSequential(_Net):
    """Every block in one Sequential, across two resolutions."""

    def __init__(self) -> None:
        super().__init__(width=16)
        self.blocks = nn.Sequential(_Block(16), _Block(16), _Block(16, 32), _Block(32), _Block(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.blocks(self.stem(x)))


def test_stages_follow_the_graph_in_one_sequential() -> None:
    s = structure_of(_built(OneSequential))
    stages = {u.name: u.stage for u in s.units}
    assert stages == {"blocks.0": "blocks:16×8×8", "blocks.1": "blocks:16×8×8",
                      "blocks.2": "blocks:32×4×4", "blocks.3": "blocks:32×4×4",
                      "blocks.4": "blocks:32×4×4"}
    assert s.stages["blocks:32×4×4"] == ["blocks.2", "blocks.3", "blocks.4"]  # the downsampling
    # block counts in its stage, as torchvision's layer2.0 does in layer2
    assert [u.kind for u in s.units].count("projection") == 1
