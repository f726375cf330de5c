"""Learn&Drop (arXiv 2604.23403): the spec's five sanity properties, the drop rules, scores,
errors, resume, fit() against an own loop, and the plot."""

from __future__ import annotations

import dataclasses

import copy
import json
import math
from collections import Counter
from typing import Any, ClassVar, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomise_bn
from leantrain.config import TrainConfig
from leantrain.cost import count_params, measure_step_flops
from leantrain.models.files import load_model, save_model
from leantrain.methods.base import Progress
from leantrain.methods.learndrop import LearnDrop, budget_fraction
from leantrain.models import VGG
from leantrain.models.factory import create_model
from leantrain.methods.scores import (
    UNIT_SCORES, UnitScore, continuation, flat_params, normalize, register_score, relative_change,
)
from leantrain.structure import StructureError, Unit, prepare, stage_blocks_of, units_of
from leantrain.structure.surgery import drop_units
from leantrain.training.fit import fit, lr_at, make_optimizer

SIZE = 16  # small inputs keep every test fast; the tiny models accept any size ≥ 8
SHAPE = (3, SIZE, SIZE)


# ---------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine two OpenMP
    threads contending with other processes made a 0.5 s training run take 30 s or more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class DecayScore(UnitScore):
    """Scripted score for deterministic tests: unit i's k-th value is ``rates[i] ** k``.

    With ``normalize="self"`` S is the value itself (peak 1 at k = 0), so every unit with a rate
    below 1 is settled (S < 1, C < 0) from its second checkpoint on; a rate above 1 keeps C > 0.
    """

    name: ClassVar[str] = "_test_decay"
    rates: ClassVar[dict[str, float]] = {}
    default_rate: ClassVar[float] = 0.5

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def measure(self, units: Sequence[Unit]) -> dict[str, float]:
        out = {}
        for u in units:
            k = self.calls.get(u.name, 0)
            out[u.name] = self.rates.get(u.name, self.default_rate) ** k
            self.calls[u.name] = k + 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"calls": dict(self.calls)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = dict(state["calls"])


@pytest.fixture
def decay_score():
    register_score(DecayScore)
    DecayScore.rates = {}
    yield DecayScore
    UNIT_SCORES.unregister(DecayScore.name)
    DecayScore.rates = {}


def _forced(**kw: Any) -> LearnDrop:
    """A LearnDrop that drops as soon as the scripted score allows (needs `decay_score`)."""
    args = dict(
        score=DecayScore.name, normalize="self", tau=1.0, warmup=0.0, every_steps=1,
        min_units_per_stage=0, max_per_checkpoint=100,
    )
    args.update(kw)
    return LearnDrop(**args)


def _model(name: str = "test_resnet", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, input_size=SIZE)




def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loaders(n: int = 32, batch: int = 8) -> tuple[Any, Any]:
    """Train/test loaders on random uint8 images (leantrain.data when present, else a stand-in)."""
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    try:
        from leantrain.data import DatasetSpec, Split, TensorLoader
    except ImportError:  # the data package is another helper's; fall back to a minimal loader
        return _FakeLoader(images, labels, batch, True), _FakeLoader(images, labels, batch, False)
    spec = DatasetSpec("random", 10, 3, SIZE, (0.5,) * 3, (0.25,) * 3, "none")
    split = Split(images, labels)
    return (
        TensorLoader(split, spec, batch, train=True, seed=0),
        TensorLoader(split, spec, batch, train=False),
    )


class _FakeLoader:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, train: bool) -> None:
        from types import SimpleNamespace

        self.x, self.y, self.batch, self.train = images.float() / 255, labels, batch, train
        self.spec = SimpleNamespace(in_channels=SHAPE[0], image_size=SIZE, name="random")

    def __len__(self) -> int:
        return len(self.y) // self.batch

    def epoch(self, k: int, start_batch: int = 0):
        g = torch.Generator().manual_seed(1000 + k)
        n = len(self.y)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch:(b + 1) * self.batch]
            yield self.x[idx], self.y[idx]


def _cfg(epochs: int = 2) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=0.05, device="cpu", weight_decay=5e-4)


def _fit(methods: list[LearnDrop], name: str = "test_resnet", epochs: int = 2):
    model = _model(name)
    train, test = _loaders()
    result = fit(model, train, test, _cfg(epochs), methods, show_progress=False)
    return model, result


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 0) -> None:
    model.train()
    for i in range(n):
        x, y = _batch(seed=seed + i)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _checkpoints(method: LearnDrop, model: nn.Module, n: int, total: int = 100,
                 opt: torch.optim.Optimizer | None = None) -> list[dict[str, Any]]:
    """Call `step` at n successive checkpoints without training; apply Changes; return events."""
    events = []
    for k in range(1, n + 1):
        change = method.step(model, Progress(k, total, 10))
        if change and opt is not None:
            change.apply_to(opt)
        events += method.events()
    return events


def _drops(events: list[dict[str, Any]]) -> list[str]:
    return [e["unit"] for e in events if e["kind"] in ("drop", "freeze")]


# ----------------------------------------------------------- property 1: disabled == dense


@pytest.mark.parametrize(
    "kw",
    [dict(warmup=1.0, every_steps=1), dict(tau=1e-9, warmup=0.0, every_steps=1)],
    ids=["warmup=1", "tau-tiny"],
)
def test_disabled_dropping_equals_dense_run(kw: dict[str, Any]) -> None:
    dense, _ = _fit([])
    method = LearnDrop(**kw)
    sparse, result = _fit([method])
    assert not _drops(result.events)
    assert any(e["kind"] == "ld_checkpoint" for e in result.events)  # it did score
    _same_weights(dense, sparse)


# ------------------------------------------- property 2: dropped block == zeroed residual branch


def test_dropped_block_equals_zeroed_residual_branch(decay_score) -> None:
    model = _model("test_resnet")
    randomise_bn(model)
    reference = copy.deepcopy(model)
    method = _forced(max_per_checkpoint=1)
    method.setup(model, Progress(0, 100, 10))
    dropped = _drops(_checkpoints(method, model, 2))
    assert len(dropped) == 1
    block = reference.get_submodule(dropped[0])
    with torch.no_grad():
        block.conv2.bn.weight.zero_()  # the last BN of the residual branch: γ = β = 0
        block.conv2.bn.bias.zero_()
    x, _ = _batch()
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# ---------------------------------------------------- property 3: R_cum ≤ eligible-share bound


@pytest.mark.parametrize("name", ["test_resnet", "test_vgg"])
def test_cumulative_reduction_never_exceeds_eligible_bound(decay_score, name: str) -> None:
    full = _model(name)
    everything = copy.deepcopy(full)
    drop_units(everything, [u.name for u in units_of(everything)])
    dense_flops = measure_step_flops(full, SHAPE).forward_flops
    bound = 1 - measure_step_flops(everything, SHAPE).forward_flops / dense_flops
    assert 0 < bound < 1

    _, result = _fit([_forced()], name)
    costs = result.costs
    r_cum = 1 - costs["forward_flops"] / costs["dense_forward_flops"]
    assert len(_drops(result.events)) == len(units_of(full))  # everything went, early
    assert 0 < r_cum <= bound + 1e-12


# --------------------------------------- property 4: params and optimizer after a drop


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_drop_removes_parameters_from_model_and_optimizer(decay_score, optim: str) -> None:
    model = _model("test_resnet")
    if optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_steps(model, opt, 2)  # populate momentum / Adam moments
    unit_params = {u.name: list(u.module.parameters()) for u in units_of(model)}
    before = count_params(model)

    method = _forced(max_per_checkpoint=1)
    method.setup(model, Progress(0, 100, 10))
    dropped = _drops(_checkpoints(method, model, 2, opt=opt))
    assert len(dropped) == 1
    gone = unit_params[dropped[0]]
    assert count_params(model) == before - sum(p.numel() for p in gone)

    gone_ids = {id(p) for p in gone}
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not gone_ids & in_groups
    assert not gone_ids & {id(p) for p in opt.state}
    assert in_groups == {id(p) for p in model.parameters()}
    _train_steps(model, opt, 1, seed=10)  # one more step runs
    assert all(p in opt.state for p in model.parameters())


# ------------------------------------------------- property 5: save → load of a scaled-down model


@pytest.mark.parametrize("name", ["test_resnet", "test_vgg"])
def test_save_load_scaled_down_model_reproduces_outputs(decay_score, tmp_path, name: str) -> None:
    model = _model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train_steps(model, opt, 2)  # non-trivial weights and BN statistics
    method = _forced(max_per_checkpoint=1)
    method.setup(model, Progress(0, 100, 10))
    assert _drops(_checkpoints(method, model, 2, opt=opt))
    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert count_params(loaded) == count_params(model)
    x, _ = _batch()
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_downsampling_blocks_are_replaced_by_their_shortcut(decay_score, tmp_path) -> None:
    model = _model("test_resnet")
    method = _forced(include_downsampling=True)
    method.setup(model, Progress(0, 100, 10))
    dropped = _drops(_checkpoints(method, model, 3))
    assert {"layer2.0", "layer3.0"} <= set(dropped) and len(dropped) == 6
    x, _ = _batch()
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    loaded.eval()
    with torch.no_grad():
        assert model(x).shape == (8, 10)
        assert torch.equal(model(x), loaded(x))


# ----------------------------------------------------------------------- drop-rule limits


@pytest.mark.parametrize(
    "name,minimum,expected",
    [
        # test_resnet: layer1 = 2 identity blocks; layer2, layer3 = downsampling + identity.
        ("test_resnet", 1, {"layer1": 1, "layer2": 1, "layer3": 1}),
        ("test_resnet", 2, {"layer1": 2, "layer2": 2, "layer3": 2}),
        # test_vgg: stages 2 and 3 = widening conv + one equal-width conv each.
        ("test_vgg", 1, {"features:2": 1, "features:3": 1}),
        ("test_vgg", 2, {"features:2": 2, "features:3": 2}),
    ],
)
def test_per_stage_minimum_holds_when_every_unit_scores_low(
    decay_score, name: str, minimum: int, expected: dict[str, int]
) -> None:
    model = _model(name)
    method = _forced(min_units_per_stage=minimum)
    method.setup(model, Progress(0, 100, 10))
    _checkpoints(method, model, 6)
    live = method._stage_sizes(model)
    assert {s: live[s] for s in expected} == expected


def test_stage_blocks_count_non_droppable_blocks_and_fall_back_to_units() -> None:
    vgg = _model("test_vgg")  # stages 2 and 3: a widening conv and an equal-width conv each
    assert {k: len(v) for k, v in stage_blocks_of(vgg).items()} == {
        "features:1": 1, "features:2": 2, "features:3": 2
    }
    drop_units(vgg, ["features.3"])
    assert stage_blocks_of(vgg)["features:2"] == ["features.2"]

    class OwnModel(nn.Module):  # the protocol without the optional stage_blocks()
        def __init__(self) -> None:
            super().__init__()
            self.inner = create_model("test_resnet")

        def droppable_units(self, include_downsampling: bool = False) -> list[Unit]:
            return [
                dataclasses.replace(u, name=f"inner.{u.name}", members=(f"inner.{u.name}",))
                for u in units_of(self.inner, include_downsampling)
            ]

        def channel_sets(self) -> list[Any]:
            return []

    expected = {"layer1": 2, "layer2": 2, "layer3": 2}  # test_resnet: 2 blocks per stage
    assert {k: len(v) for k, v in stage_blocks_of(_model("test_resnet")).items()} == expected
    assert {k: len(v) for k, v in stage_blocks_of(OwnModel()).items()} == expected


def test_at_most_k_units_per_checkpoint(decay_score) -> None:
    model = _model("test_resnet")
    method = _forced(max_per_checkpoint=2)
    method.setup(model, Progress(0, 100, 10))
    events = _checkpoints(method, model, 6)
    per_step = Counter(e["step"] for e in events if e["kind"] == "drop")
    assert max(per_step.values()) == 2
    assert sum(per_step.values()) == 4  # all four eligible units, two checkpoints
    # Lowest S first: with S equal, model order decides.
    assert _drops(events)[:2] == ["layer1.0", "layer1.1"]


def test_default_k_is_a_quarter_of_eligible_units(decay_score) -> None:
    model = _model("test_resnet")
    method = _forced(max_per_checkpoint=None)
    method.setup(model, Progress(0, 100, 10))
    events = _checkpoints(method, model, 3)
    assert max(Counter(e["step"] for e in events if e["kind"] == "drop").values()) == 1  # ceil(4/4)


def test_overall_cap_and_patience(decay_score) -> None:
    model = _model("test_resnet")
    method = _forced(max_dropped_fraction=0.5, patience=3)
    method.setup(model, Progress(0, 100, 10))
    events = _checkpoints(method, model, 8)
    drops = [e for e in events if e["kind"] == "drop"]
    assert len(drops) == 2  # floor(0.5 · 4)
    # Settled from checkpoint 2 on (C needs two points), dropped after 3 in a row: checkpoint 4.
    assert {e["step"] for e in drops} == {4}


def test_lowest_score_goes_first(decay_score) -> None:
    decay_score.rates = {"layer3.1": 0.1, "layer2.1": 0.2}
    model = _model("test_resnet")
    method = _forced(max_per_checkpoint=1)
    method.setup(model, Progress(0, 100, 10))
    assert _drops(_checkpoints(method, model, 3)) == ["layer3.1", "layer2.1"]


def test_no_drop_during_warmup_nor_after_stop(decay_score) -> None:
    model = _model("test_resnet")
    method = _forced(warmup=0.5)
    method.setup(model, Progress(0, 10, 10))
    for k in range(1, 5):  # fraction < 0.5
        assert method.step(model, Progress(k, 10, 10)) is None
    events = method.events()
    rows = [r for e in events if e["kind"] == "ld_checkpoint" for r in e["units"].values()]
    assert {r["decision"] for r in rows} == {"warmup"}
    late = _forced()
    late.setup(model, Progress(0, 3, 3))
    late.step(model, Progress(2, 3, 3))
    assert late.step(model, Progress(3, 3, 3)) is None  # final step: dropping saves nothing
    stopped = _forced(stop=0.5)
    stopped.setup(model, Progress(0, 10, 10))
    for k in range(5, 10):  # every unit settled, but fraction ≥ stop
        assert stopped.step(model, Progress(k, 10, 10)) is None
    rows = [r for e in stopped.events() if e["kind"] == "ld_checkpoint" for r in e["units"].values()]
    assert {r["decision"] for r in rows} == {"late"} and not stopped.dropped


# ------------------------------------------------------------------------------- freeze


def test_freeze_keeps_forward_stops_grads_and_leaves_optimizer(decay_score) -> None:
    model = _model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train_steps(model, opt, 2)
    x, y = _batch(seed=5)
    model.eval()
    with torch.no_grad():
        out_before = model(x)
    params_before = count_params(model)
    method = _forced(action="freeze", max_per_checkpoint=1)
    method.setup(model, Progress(0, 100, 10))
    events = _checkpoints(method, model, 2, opt=opt)
    frozen = _drops(events)
    assert len(frozen) == 1
    assert [e["kind"] for e in events if e["kind"] in ("drop", "freeze")] == ["freeze"]
    with torch.no_grad():
        assert torch.equal(model(x), out_before)  # still in the forward pass
    assert count_params(model) == params_before
    module = model.get_submodule(frozen[0])
    frozen_ids = {id(p) for p in module.parameters()}
    assert not frozen_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not frozen_ids & {id(p) for p in opt.state}
    saved = [p.detach().clone() for p in module.parameters()]
    _train_steps(model, opt, 1, seed=9)
    assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(saved, module.parameters()))
    # Frozen units are no longer scored.
    later = _checkpoints(method, model, 1)
    checkpoint = [e for e in later if e["kind"] == "ld_checkpoint"][0]
    assert frozen[0] not in checkpoint["units"]


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_tau_outside_unit_interval_is_a_clear_error(tau: float) -> None:
    with pytest.raises(ValueError, match=r"learndrop\.tau = .* outside \(0, 1\]"):
        LearnDrop(tau=tau)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(score="nope"), "learndrop.score"),
        (dict(normalize="rank"), "learndrop.normalize"),
        (dict(window=1), "learndrop.window"),
        (dict(action="freeze", include_downsampling=True), "include_downsampling"),
        (dict(mode="budget", warmup=0.5, budget_end=0.4), "budget_end"),
        (dict(mode="budget", budget_end=0.9, stop=0.8), "budget_end"),
        (dict(stop=1.5), "learndrop.stop"),
        (dict(max_per_checkpoint=0), "max_per_checkpoint"),
        (dict(mode="greedy"), "learndrop.mode"),
    ],
)
def test_invalid_settings_are_clear_errors(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LearnDrop(**kw)


def test_model_without_droppable_unit_is_a_clear_error() -> None:
    vgg = VGG([8, "M", 16], num_classes=10, in_channels=3, input_size=SIZE)  # no equal-width pair
    prepare(vgg, (3, SIZE, SIZE))
    with pytest.raises(ValueError, match="no droppable unit.*--method none"):
        LearnDrop().setup(vgg, Progress(0, 10, 10))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(StructureError, match=r"call leantrain.prepare\(model, example_input\)"):
        LearnDrop().setup(plain, Progress(0, 10, 10))


# ------------------------------------------------------------------------------- scores


def test_continuation_slope_sign_on_synthetic_histories() -> None:
    assert continuation([0.4, 0.3, 0.2], 3) < 0
    assert continuation([0.1, 0.2, 0.4], 3) > 0
    assert continuation([0.2, 0.2, 0.2], 3) == 0
    assert continuation([5.0, 0.1, 0.2, 0.3], 3) > 0  # only the last W count
    assert continuation([0.1, 0.2, 0.3, 0.05], 2) < 0
    assert continuation([0.0, 0.0], 3) == 0.0
    assert math.isnan(continuation([0.3], 3))
    # slope 0.1 per checkpoint over mean 0.2
    assert continuation([0.1, 0.2, 0.3], 3) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        continuation([1.0, 2.0], 1)


def test_relative_change_and_normalisation() -> None:
    prev = torch.tensor([3.0, 4.0])
    assert relative_change(prev, torch.tensor([3.0, 5.0])) == pytest.approx(0.2)
    assert relative_change(prev, prev) == 0.0
    values = {"a": 0.1, "b": 0.4}
    assert normalize(values, {}, "peers") == pytest.approx({"a": 0.25, "b": 1.0})
    histories = {"a": [0.5, 0.1], "b": [0.4]}
    assert normalize(values, histories, "self") == pytest.approx({"a": 0.2, "b": 1.0})
    assert math.isnan(normalize({"a": math.nan, "b": 0.5}, {}, "peers")["a"])
    # a yardstick of some units: the others are scored against their largest value (S ≤ 1)
    values = {"a": 0.1, "b": 0.4, "c": 0.2}
    assert normalize(values, {}, "peers", {"a", "c"}) == pytest.approx(
        {"a": 0.5, "b": 1.0, "c": 1.0})
    assert normalize(values, {}, "peers", set()) == normalize(values, {}, "peers")  # no one: all


def test_peers_yardstick_leaves_out_a_block_still_picking_up(decay_score, monkeypatch) -> None:
    # layer2.1 took over a dropped neighbour's work: its change grows (C > 0) while the other
    # blocks settle at the same pace. Against it they look settled (0.9/1.5)^k and all leave
    # ("max", the cascade of the paper suite); against each other they are alike and stay.
    monkeypatch.setattr(decay_score, "default_rate", 0.9)
    decay_score.rates = {"layer2.1": 1.5}
    dropped = {}
    for reference in ("max", "settling"):
        model = _model("test_resnet")
        method = _forced(normalize="peers", tau=0.5, window=2, peer_reference=reference)
        method.setup(model, Progress(0, 100, 10))
        dropped[reference] = _drops(_checkpoints(method, model, 5))
    assert sorted(dropped["max"]) == ["layer1.0", "layer1.1", "layer3.1"]
    assert dropped["settling"] == []
    with pytest.raises(ValueError, match="peer_reference = 'peak'; choose 'settling' or 'max'"):
        LearnDrop(peer_reference="peak")


def test_change_score_matches_relative_change() -> None:
    model = _model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = LearnDrop(every_steps=1, warmup=1.0)
    method.setup(model, Progress(0, 100, 10))
    units = units_of(model)
    before = {u.name: flat_params(u.module) for u in units}
    _train_steps(model, opt, 1)
    method.step(model, Progress(1, 100, 10))
    event = [e for e in method.events() if e["kind"] == "ld_checkpoint"][0]
    for u in units:
        after = torch.cat([p.detach().flatten() for p in u.module.parameters()])
        expected = relative_change(before[u.name], after)
        assert event["units"][u.name]["D"] == pytest.approx(expected, rel=1e-5)


def test_residual_norm_is_zero_for_an_identity_unit() -> None:
    model = _model("test_resnet")
    block = model.get_submodule("layer1.1")
    with torch.no_grad():
        block.conv2.bn.weight.zero_()  # residual branch is 0: the block is the identity
        block.conv2.bn.bias.zero_()
    method = LearnDrop(score="residual_norm", every_steps=1, warmup=1.0)
    method.setup(model, Progress(0, 100, 10))
    model.train()
    x, _ = _batch()
    model(x)
    method.after_backward(model, Progress(0, 100, 10))
    method.step(model, Progress(1, 100, 10))
    units = [e for e in method.events() if e["kind"] == "ld_checkpoint"][0]["units"]
    assert units["layer1.1"]["D"] == 0.0
    assert units["layer1.0"]["D"] > 0.1
    method.finish(model)


def test_residual_norm_scores_downsampling_units_against_their_shortcut() -> None:
    model = _model("test_resnet")
    method = LearnDrop(score="residual_norm", every_steps=1, warmup=1.0, include_downsampling=True)
    method.setup(model, Progress(0, 100, 10))
    model.train()
    model(_batch()[0])
    method.after_backward(model, Progress(0, 100, 10))
    method.step(model, Progress(1, 100, 10))
    units = [e for e in method.events() if e["kind"] == "ld_checkpoint"][0]["units"]
    assert {"layer2.0", "layer3.0"} <= set(units)
    assert all(math.isfinite(r["D"]) and r["D"] > 0 for r in units.values())


# ------------------------------------------------------------------------------- budget mode


def test_budget_fraction_ramp() -> None:
    assert budget_fraction(0.1, 0.1, 0.5, 0.7) == 0.0
    assert budget_fraction(0.4, 0.1, 0.5, 0.7) == pytest.approx(0.25)
    assert budget_fraction(0.9, 0.1, 0.5, 0.7) == 0.5


def test_budget_mode_reaches_target_and_vetoes_rising_units(decay_score) -> None:
    decay_score.rates = {"layer1.0": 1.5}  # still speeding up: C > 0, never chosen
    model = _model("test_resnet")
    method = _forced(mode="budget", budget_target=0.75, budget_end=0.5, max_per_checkpoint=None)
    method.setup(model, Progress(0, 10, 10))
    dropped_at = {}
    for k in range(1, 10):
        method.step(model, Progress(k, 10, 10))
        events = method.events()
        dropped_at[k] = len(method.dropped)
        assert len(method.dropped) <= math.floor(budget_fraction(k / 10, 0.0, 0.75, 0.5) * 4 + 1e-9)
        for e in events:
            if e["kind"] == "ld_checkpoint" and "layer1.0" in e["units"] and 1 < k < 7.5:
                assert e["units"]["layer1.0"]["decision"] == "veto"
    assert dropped_at[5] == 3 and dropped_at[9] == 3  # floor(0.75 · 4), reached at budget_end
    assert "layer1.0" not in method.dropped


# ------------------------------------------------------------------- fit() == own loop, resume


def _own_loop(model: nn.Module, method: LearnDrop, epochs: int = 2) -> None:
    cfg = _cfg(epochs)
    train, _ = _loaders()
    opt = make_optimizer(model, cfg)
    steps_per_epoch, total = len(train), len(train) * epochs
    method.setup(model, Progress(0, total, steps_per_epoch))
    step = 0
    for epoch in range(epochs):
        model.train()
        for x, y in train.epoch(epoch):
            progress = Progress(step, total, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr_at(progress.fraction, cfg)
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            method.after_backward(model, progress)
            opt.step()
            step += 1
            if change := method.step(model, Progress(step, total, steps_per_epoch)):
                change.apply_to(opt)
    method.finish(model)


@pytest.mark.parametrize("score", ["change", "residual_norm"])
def test_fit_equals_own_loop(score: str) -> None:
    def make() -> LearnDrop:
        return LearnDrop(score=score, normalize="self", tau=1.0, warmup=0.0, every_steps=1,
                         min_units_per_stage=0)

    fitted, result = _fit([make()])
    own = _model("test_resnet")
    _own_loop(own, make())
    assert getattr(fitted, "dropped_units", []) == getattr(own, "dropped_units", [])
    assert getattr(fitted, "dropped_units", [])  # the comparison covers a real drop
    _same_weights(fitted, own)


@pytest.mark.parametrize("score", ["change", "residual_norm"])
def test_state_dict_resumes_mid_run(score: str) -> None:
    """Swapping in a fresh LearnDrop loaded from state_dict mid-run changes nothing."""

    def make() -> LearnDrop:
        return LearnDrop(score=score, normalize="self", tau=1.0, warmup=0.0, every_steps=1,
                         min_units_per_stage=0)

    def run(resume_at: int | None) -> tuple[nn.Module, list[str]]:
        model = _model("test_resnet")
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        method = make()
        total = 10
        method.setup(model, Progress(0, total, 5))
        for step in range(total):
            if step == resume_at:
                state = copy.deepcopy(method.state_dict())
                method.finish(model)
                method = make()
                method.load_state_dict(state)
                method.setup(model, Progress(step, total, 5))
            x, y = _batch(seed=step)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            method.after_backward(model, Progress(step, total, 5))
            opt.step()
            if change := method.step(model, Progress(step + 1, total, 5)):
                change.apply_to(opt)
        return model, list(method.dropped)

    straight, dropped = run(None)
    resumed, dropped_resumed = run(5)
    assert dropped == dropped_resumed
    _same_weights(straight, resumed)


# ------------------------------------------------------------------------------- events, plot


def test_events_log_scores_decisions_and_flops(decay_score, tmp_path) -> None:
    _, result = _fit([_forced(max_per_checkpoint=1)])
    checkpoints = [e for e in result.events if e["kind"] == "ld_checkpoint"]
    drops = [e for e in result.events if e["kind"] == "drop"]
    assert checkpoints and drops
    for e in checkpoints:
        for row in e["units"].values():
            assert {"D", "S", "C", "decision"} <= row.keys()
    for e in drops:
        assert e["forward_flops_after"] < e["forward_flops_before"]
        assert {"unit", "step", "S", "C"} <= e.keys()
    assert drops[0]["unit"] in checkpoints[1]["units"]  # scored up to its drop
    assert checkpoints[1]["units"][drops[0]["unit"]]["decision"] == "drop"

    json.dumps(result.events, allow_nan=False)  # the event log is strict JSON

    from leantrain.methods.plots import forward_flops_curve, plot_learndrop

    steps, flops = forward_flops_curve(result.events)
    assert steps[0] == 0 and flops[0] > flops[-1]
    assert all(a >= b for a, b in zip(flops, flops[1:]))
    out = plot_learndrop(result.events, tmp_path / "ld.png")
    assert out.exists() and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no Learn&Drop checkpoint"):
        plot_learndrop([], tmp_path / "none.png")


def test_method_is_registered() -> None:
    from leantrain.methods import METHODS

    assert METHODS["learndrop"] is LearnDrop


def test_score_names_are_taken_once() -> None:
    with pytest.raises(ValueError, match=r"^unit score 'change' is already registered; pick another "
                       r"name for the new one\.$"):
        register_score(type("Again", (UnitScore,), {"name": "change"}))
    assert UNIT_SCORES.names() == ["change", "residual_norm"]
