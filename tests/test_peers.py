"""Peer baselines (stochastic depth, FreezeOut, Torch-Pruning prune-then-fine-tune) and the
learndrop+dcp composition: each property the benchmark relies on, on tiny models."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import Interrupting
from leantrain.config import TrainConfig
from leantrain.cost import count_macs, measure_step_flops
from leantrain.data import TensorLoader
from leantrain.methods import build_methods
from leantrain.methods.base import Progress
from leantrain.methods.dcp import DCP
from leantrain.methods.freezeout import FreezeOut, freeze_times, layers_in_order
from leantrain.methods.learndrop import LearnDrop
from leantrain.methods.stochastic_depth import StochasticDepth, survival_probabilities
from leantrain.models.factory import create_model
from leantrain.training.fit import fit, make_optimizer

SIZE = 16
SHAPE = (3, SIZE, SIZE)


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _own_loop(model, methods, steps: int, total: int | None = None, lr: float = 0.05):
    """The README's own-loop integration, `steps` steps of `total`; returns the optimizer."""
    total = total or steps
    opt = make_optimizer(model, TrainConfig(lr=lr))
    for m in methods:
        m.setup(model, Progress(0, total, total))
    for step in range(steps):
        x, y = _batch(seed=step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for m in methods:
            m.after_backward(model, Progress(step, total, total))
        opt.step()
        for m in methods:
            if change := m.step(model, Progress(step + 1, total, total)):
                change.apply_to(opt)
    return opt


def _optimizer_params(opt) -> set[int]:
    return {id(p) for g in opt.param_groups for p in g["params"]}


# ------------------------------------------------------------------------- stochastic depth


def test_survival_probabilities_decay_linearly_to_p_last() -> None:
    assert survival_probabilities(4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])


def test_skipped_block_is_identity_in_training_and_runs_in_eval() -> None:
    model = create_model("test_resnet", input_size=SIZE)
    ref = copy.deepcopy(model.layer1[1]).eval()  # no gate, no hook
    sd = StochasticDepth(p_last=0.5)
    sd.setup(model, Progress(0, 10, 10))
    block = model.layer1[1]
    x = torch.relu(torch.randn(2, 8, SIZE, SIZE))  # a block's input is post-ReLU
    block.train()
    sd._gates["layer1.1"].skip = True
    assert torch.equal(block(x), x)  # the branch is not computed: the shortcut alone
    model.eval()
    p = sd.survival["layer1.1"]
    with torch.no_grad():
        full = torch.relu(p * ref.conv2(ref.conv1(x)) + x)
        assert torch.allclose(block(x), full, atol=1e-6)


def test_eval_scales_the_residual_branch() -> None:
    model = create_model("test_resnet", input_size=SIZE)
    ref = copy.deepcopy(model.layer2[1])  # no gate, no hook
    sd = StochasticDepth(p_last=0.3)
    sd.setup(model, Progress(0, 10, 10))
    block = model.layer2[1]
    p = sd.survival["layer2.1"]
    assert p < 1
    x = torch.relu(torch.randn(2, 16, SIZE // 2, SIZE // 2))
    model.eval(), ref.eval()
    with torch.no_grad():
        expected = torch.relu(p * ref.conv2(ref.conv1(x)) + x)
        assert torch.allclose(block(x), expected, atol=1e-6)
    model.train(), ref.train()  # training ignores the scale (the Bernoulli gate replaces it)
    with torch.no_grad():
        plain = torch.relu(ref.conv2(ref.conv1(x)) + x)
        assert torch.allclose(block(x), plain, atol=1e-6)


def test_stochastic_depth_samples_identity_blocks_at_their_rates() -> None:
    model = create_model("test_resnet", input_size=SIZE)
    sd = StochasticDepth(p_last=0.5)
    sd.setup(model, Progress(0, 400, 400))
    # 6 blocks, identity ones are layer1.0, layer1.1, layer2.1, layer3.1 (l = 1, 2, 4, 6)
    assert sd.survival == pytest.approx(
        {"layer1.0": 1 - 1 / 12, "layer1.1": 1 - 2 / 12, "layer2.1": 1 - 4 / 12, "layer3.1": 0.5}
    )
    assert "layer2.0" not in sd._gates  # downsampling blocks always run
    skips = {name: 0 for name in sd.survival}
    for step in range(400):
        sd.step(model, Progress(step + 1, 400, 400))
        for name in skips:
            skips[name] += sd._gates[name].skip
    assert 0.40 < skips["layer3.1"] / 400 < 0.60
    assert skips["layer1.0"] / 400 < 0.16


def test_stochastic_depth_saves_flops_and_folds_the_eval_scale(tiny_cifar) -> None:
    train, test, spec = tiny_cifar
    model = create_model("test_resnet")
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    loaders = (
        TensorLoader(train, spec, 16, train=True, seed=0),
        TensorLoader(test, spec, 32, train=False),
    )
    result = fit(model, *loaders, cfg, [StochasticDepth(p_last=0.2)], show_progress=False)
    assert result.costs["train_flops"] < result.costs["dense_train_flops"]
    # finish() folded p_l into the branch BN and removed its gates and hooks: an ordinary ResNet
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3) for b in stage]
    assert all("forward" not in b.__dict__ for b in blocks)
    assert all(not m._forward_hooks for m in model.modules())


def test_fold_preserves_the_eval_function() -> None:
    model = create_model("test_resnet", input_size=SIZE)
    sd = StochasticDepth(p_last=0.3)
    sd.setup(model, Progress(0, 10, 10))
    model.eval()
    x = torch.randn(2, *SHAPE)
    before = model(x)
    sd.finish(model)
    assert torch.allclose(model(x), before, atol=1e-5)


def test_stochastic_depth_refuses_vgg() -> None:
    with pytest.raises(ValueError, match="residual blocks"):
        StochasticDepth().setup(create_model("test_vgg", input_size=SIZE), Progress(0, 1, 1))


# -------------------------------------------------------------------------------- FreezeOut


def test_freeze_times_cubic_schedule() -> None:
    times = freeze_times(5, 0.8, "cubic")
    assert times[0] == pytest.approx(0.512) and times[-1] == 1.0
    assert times == sorted(times)
    assert freeze_times(3, 0.5, "linear") == pytest.approx([0.5, 0.75, 1.0])


def test_freezeout_freezes_in_order_and_leaves_the_optimizer() -> None:
    model = create_model("test_resnet", input_size=SIZE)
    fo = FreezeOut(t_0=0.5, schedule="linear")
    names = [n for n, _ in layers_in_order(model)]
    assert names[0] == "conv1" and names[-1] == "fc" and len(names) == 8
    opt = _own_loop(model, [fo], steps=15, total=20)  # progress 0.75
    # t_i = 0.5 + 0.5 i / 7: layers 0..3 (t ≤ 0.714) are frozen at 0.75, in order
    assert fo.frozen == names[:4]
    live = _optimizer_params(opt)
    for name, members in layers_in_order(model):
        frozen = name in fo.frozen
        for p in (p for m in members for p in model.get_submodule(m).parameters()):
            assert p.requires_grad is not frozen
            assert (id(p) in live) is not frozen
    # a frozen layer runs in eval mode: its BN statistics no longer move
    stats = model.conv1.bn.running_mean.clone()
    model.train()
    model(torch.randn(4, *SHAPE))
    assert torch.equal(model.conv1.bn.running_mean, stats)


def test_freezeout_anneals_each_layer_lr_and_lowers_backward_flops() -> None:
    model = create_model("test_resnet", input_size=SIZE)
    fo = FreezeOut(t_0=0.5, schedule="linear", scale_lr=True)
    fo.setup(model, Progress(0, 10, 10))
    assert fo.lr_scale("conv1", 0.0) == pytest.approx(2.0)  # 1 / t_0
    assert fo.lr_scale("conv1", 0.499) < 0.01  # annealed to ~0 by t_0
    assert fo.lr_scale("fc", 0.7) == 1.0  # the classifier follows the recipe
    dense = measure_step_flops(model, SHAPE)
    _own_loop(model, [fo], steps=6, total=10)  # the stem (t = 0.5) is frozen
    assert "conv1" in fo.frozen
    frozen = measure_step_flops(model, SHAPE)
    assert frozen.forward_flops == dense.forward_flops
    assert frozen.backward_flops < dense.backward_flops


def test_freezeout_update_scaling_equals_a_per_layer_lr() -> None:
    """Rescaling SGD's update (momentum, weight decay) by s_i is stepping layer i with LR s_i·lr."""
    torch.manual_seed(0)
    a = create_model("test_vgg", input_size=SIZE)
    b = create_model("test_vgg", input_size=SIZE)
    b.load_state_dict(a.state_dict())
    fo = FreezeOut(t_0=0.5, schedule="linear")
    fo.setup(a, Progress(0, 10, 10))
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_a = make_optimizer(a, cfg)
    layers = layers_in_order(b)
    opt_b = torch.optim.SGD(
        [{"params": [p for m in ms for p in b.get_submodule(m).parameters()], "layer": n}
         for n, ms in layers],
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
    )
    for step in range(3):
        x, y = _batch(seed=step)
        progress = Progress(step, 10, 10)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
        fo.after_backward(a, progress)
        opt_a.step()
        fo.step(a, Progress(step + 1, 10, 10))
        for group in opt_b.param_groups:
            group["lr"] = 0.1 * fo.lr_scale(group["layer"], progress.fraction)
        opt_b.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


# ---------------------------------------------------------------------- Torch-Pruning peer
# No skip when torch-pruning is missing: the peer is part of the benchmark, so its tests must run
# (`make test` installs the `peers` extra); a missing package fails them with the fix.


@pytest.fixture
def torch_pruning() -> None:
    assert importlib.util.find_spec("torch_pruning") is not None, (
        "torch-pruning is not installed; run `make test` or pip install -e '.[peers]'."
    )


def test_make_test_installs_the_peers_extra(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(
        ["make", "-n", "-B", "test", f"VENV={tmp_path / 'venv'}"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout
    assert 'pip install -q -e ".[dev,peers]"' in plan
    # torchvision's model definitions for the own-model tests, never replacing the CPU torch
    assert 'pip install -q --no-deps "torchvision==0.28.0"' in plan
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    peers = pyproject["project"]["optional-dependencies"]["peers"]
    assert [r.split(">")[0] for r in peers] == ["torch-pruning"]


@pytest.mark.parametrize("name", ["test_resnet", "test_vgg"])
@pytest.mark.usefixtures("torch_pruning")
def test_tp_prune_reaches_the_flops_target(name: str) -> None:
    from leantrain.methods.tp_prune import prune_to_flops

    model = create_model(name, input_size=SIZE)
    info = prune_to_flops(model, SHAPE, 0.5)
    assert info["macs_after"] == count_macs(model, SHAPE)
    assert 0.40 <= info["macs_after"] / info["macs_before"] <= 0.5
    assert model(torch.randn(2, *SHAPE)).shape == (2, 10)  # the classifier keeps its outputs


@pytest.mark.usefixtures("torch_pruning")
def test_tp_prune_rekeys_the_optimizer_and_marks_the_model() -> None:
    from leantrain.models.files import architecture

    model = create_model("test_resnet", input_size=SIZE)
    [tp_prune] = build_methods(["tp_prune"], {"tp_prune": {"at": 0.5, "flops_reduction": 0.4}})
    opt = _own_loop(model, [tp_prune], steps=6, total=10)
    assert tp_prune.done
    assert _optimizer_params(opt) == {id(p) for p in model.parameters()}
    assert all(s["momentum_buffer"].shape == p.shape for p, s in opt.state.items())
    with pytest.raises(TypeError, match="torch-pruning"):
        architecture(model)


def test_tp_prune_names_the_extra_when_missing(monkeypatch) -> None:
    from leantrain.methods import tp_prune

    monkeypatch.setattr(tp_prune.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"leantrain\[peers\]"):
        tp_prune.TPPrune()


# ------------------------------------------------------------------------ learndrop + dcp


def test_learndrop_plus_dcp_drops_and_selects_in_one_run(tiny_cifar) -> None:
    train, test, spec = tiny_cifar
    model = create_model("test_resnet")
    methods = [
        LearnDrop(mode="budget", warmup=0.2, budget_target=0.5, budget_end=0.6, every_steps=2),
        DCP(p=0.5, warmup=0.1),
    ]
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    loaders = (
        TensorLoader(train, spec, 16, train=True, seed=0),
        TensorLoader(test, spec, 32, train=False),
    )
    result = fit(model, *loaders, cfg, methods, show_progress=False)
    kinds = [e["kind"] for e in result.events]
    assert "drop" in kinds and "dcp_export" in kinds
    assert len(methods[0].dropped) == 2  # half of the 4 identity blocks
    assert result.costs["forward_flops"] < 0.8 * result.costs["dense_forward_flops"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "method, args",
    [
        ("stochastic_depth", {"p_last": 0.3}),
        ("freezeout", {"t_0": 0.5, "schedule": "linear"}),
    ],
)
def test_peers_resume_equals_uninterrupted(tiny_cifar, tmp_path, method, args) -> None:
    from leantrain.training.checkpoint import Checkpointer

    train, test, spec = tiny_cifar

    def run(folder=None, stop=None, resume=False):
        torch.manual_seed(0)
        model = create_model("test_resnet")
        loader = TensorLoader(train, spec, 16, train=True, seed=0)
        result = fit(
            model,
            Interrupting(loader, stop) if stop else loader,
            TensorLoader(test, spec, 32, train=False),
            TrainConfig(epochs=3, batch_size=16, lr=0.05),
            build_methods([method], {method: args}),
            show_progress=False,
            checkpointer=Checkpointer(folder, every_steps=3) if folder else None,
            resume_from=folder if resume else None,
        )
        return model, result

    straight, want = run()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop=8)  # 4 steps per epoch: FreezeOut froze its first layers at step 6
    resumed, got = run(tmp_path, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert (got.test_acc, got.costs) == (want.test_acc, want.costs)
