"""Tests of leantrain.cost (parameter / MAC / FLOP counting, CostMeter) and leantrain.training.timing."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from leantrain.cost import (
    CostMeter,
    StepCost,
    count_macs,
    count_params,
    layer_costs,
    measure_step_flops,
)
from leantrain.structure.layers import ConvBN, SelectLinear
from leantrain.structure import prepare, structure_of
from leantrain.training.timing import Stopwatch

SHAPE = (3, 8, 8)

# Hand-derived per-sample MACs of `Net` at 3×8×8 (out elements × in_ch × k×k; linear in × out).
C1_MACS = 8 * 8 * 8 * 3 * 9  # 13,824
C2_MACS = 16 * 4 * 4 * 8 * 9  # 18,432 (stride 2 → 4×4)
C3_MACS = 16 * 4 * 4 * 16 * 9  # 36,864
FC_MACS = 16 * 10  # 160
BIAS_MACS = 16 * 4 * 4 + 10  # c3 bias adds one per output element, fc bias one per output
DENSE_MACS = C1_MACS + C2_MACS + C3_MACS + FC_MACS


class Net(nn.Module):
    """ConvBN → ConvBN(stride 2) → Conv2d+BN (biased) → global mean → SelectLinear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = ConvBN(3, 8, 3)
        self.c2 = ConvBN(8, 16, 3, stride=2)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(16)
        self.fc = SelectLinear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c2(self.c1(x))
        x = torch.relu(self.bn(self.c3(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    prepare(model, SHAPE)
    return model


def _select(net: Net, name: str, index: Tensor | None, mode: str = "slice") -> None:
    structure_of(net).channel_set(name).select(index, mode=mode)


def _forward_flops_by_counter(model: nn.Module, shape: tuple[int, int, int]) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randn(1, *shape))
    return fc.get_total_flops()


# ---------------------------------------------------------------------------------------- params


def test_count_params_all_and_trainable(net: Net) -> None:
    total = sum(p.numel() for p in net.parameters())
    # conv weights + BN affine pairs + c3 bias + fc weight and bias
    by_hand = 3 * 8 * 9 + 16 + 8 * 16 * 9 + 32 + 16 * 16 * 9 + 16 + 32 + 170
    assert count_params(net) == total == by_hand
    net.c1.conv.weight.requires_grad_(False)
    assert count_params(net, trainable_only=True) == total - 3 * 8 * 9
    assert count_params(net) == total


# ------------------------------------------------------------------------------------------ MACs


def test_count_macs_matches_hand_formula(net: Net) -> None:
    assert count_macs(net, SHAPE, include_bias=False) == DENSE_MACS
    assert count_macs(net, SHAPE) == DENSE_MACS + BIAS_MACS


def test_analytic_macs_equal_half_of_flop_counter(net: Net) -> None:
    # BN/ReLU/pooling are excluded from both counts; FlopCounterMode ignores bias adds.
    assert 2 * count_macs(net, SHAPE, include_bias=False) == _forward_flops_by_counter(net, SHAPE)


def test_count_macs_restores_training_flags(net: Net) -> None:
    net.train()
    net.c2.eval()  # a per-module flag must survive, not just the root's
    count_macs(net, SHAPE)
    assert net.training and net.c1.training and net.c3.training
    assert not net.c2.training and not net.c2.bn.training


def test_sliced_convbn_reduces_macs_exactly(net: Net) -> None:
    half = torch.arange(0, 8, 2)
    _select(net, "c1", half)
    expected = DENSE_MACS - C1_MACS // 2 - C2_MACS // 2
    assert count_macs(net, SHAPE, include_bias=False) == expected
    # The sliced path really computes less: FlopCounterMode sees the gathered-weight conv.
    assert _forward_flops_by_counter(net, SHAPE) == 2 * expected
    assert measure_step_flops(net, SHAPE).forward_flops == 2 * expected

    # Slicing the last layer's input features shrinks the classifier too.
    _select(net, "c1", None)
    quarter = torch.arange(4)
    net.c2.conv.out_index = net.c2.bn.out_index = quarter  # c2's reader c3 is narrowed by hand
    net.c3.weight.data = net.c3.weight.data[:, :4].clone()  # hand-narrowed plain consumer
    net.c3.in_channels = 4
    assert count_macs(net, SHAPE, include_bias=False) == (
        C1_MACS + C2_MACS // 4 + C3_MACS // 4 + FC_MACS
    )


def test_masked_convbn_costs_full_width(net: Net) -> None:
    _select(net, "c1", torch.arange(4), mode="mask")
    assert count_macs(net, SHAPE, include_bias=False) == DENSE_MACS


def test_select_linear_in_index() -> None:
    # A head that reads 4 of its 16 input features costs 4 × out, plus its bias adds.
    head = SelectLinear(16, 10)
    head.in_index = torch.arange(4)
    model = nn.Sequential(nn.Flatten(), head)
    assert count_macs(model, (4, 1, 1), include_bias=False) == 4 * 10
    assert count_macs(model, (4, 1, 1)) == 4 * 10 + 10


def test_layer_costs_rows_add_up(net: Net) -> None:
    rows = layer_costs(net, SHAPE)
    assert [r["name"] for r in rows] == ["c1.conv", "c1.bn", "c2.conv", "c2.bn", "c3", "bn", "fc"]
    types = ["SliceConv2d", "SliceBatchNorm2d"] * 2 + ["SliceConv2d", "SliceBatchNorm2d", "SelectLinear"]
    assert [r["type"] for r in rows] == types
    assert rows[0]["macs"] == C1_MACS and rows[0]["output_shape"] == (8, 8, 8)
    assert rows[2]["output_shape"] == (16, 4, 4)
    assert rows[-1]["output_shape"] == (10,)
    assert sum(r["macs"] for r in rows) == count_macs(net, SHAPE)
    assert sum(r["params"] for r in rows) == count_params(net)


# ------------------------------------------------------------------------------ training FLOPs


def test_backward_is_twice_forward_minus_first_input_grad(net: Net) -> None:
    cost = measure_step_flops(net, SHAPE)
    assert cost.forward_flops == 2 * DENSE_MACS
    # Every conv/linear computes an input grad and a weight grad, each as costly as its forward,
    # except the first conv, whose input (the data) needs no gradient.
    assert cost.backward_flops == 2 * cost.forward_flops - 2 * C1_MACS
    assert cost.train_flops == cost.forward_flops + cost.backward_flops
    assert cost.train_flops < 3 * cost.forward_flops


def test_batch_size_does_not_change_per_sample_cost(net: Net) -> None:
    two, five = (measure_step_flops(net, SHAPE, batch_size=b) for b in (2, 5))
    assert two == five


def test_freezing_first_conv_weight_removes_its_weight_grad(net: Net) -> None:
    dense = measure_step_flops(net, SHAPE)
    net.c1.conv.weight.requires_grad_(False)
    frozen = measure_step_flops(net, SHAPE)
    assert frozen.forward_flops == dense.forward_flops
    assert dense.backward_flops - frozen.backward_flops == 2 * C1_MACS


def test_freezing_whole_first_unit_also_removes_next_input_grad(net: Net) -> None:
    dense = measure_step_flops(net, SHAPE)
    net.c1.requires_grad_(False)  # conv and BN affine: c1's output no longer needs a gradient
    frozen = measure_step_flops(net, SHAPE)
    assert dense.backward_flops - frozen.backward_flops == 2 * C1_MACS + 2 * C2_MACS


def test_all_frozen_has_no_backward(net: Net) -> None:
    net.requires_grad_(False)
    cost = measure_step_flops(net, SHAPE)
    assert cost == StepCost(2 * DENSE_MACS, 0)


def test_measure_step_flops_leaves_model_unchanged(net: Net) -> None:
    net.eval()
    net.c2.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    net.c1.out_index = torch.tensor([0, 2, 5])  # sliced BN writes into its buffers too
    net.c2.in_index = torch.tensor([0, 2, 5])
    calls: list[int] = []
    net.c2.observer = lambda *_: calls.append(1)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    net.c3.bias.grad = None  # a None grad must stay None
    grads = {
        n: (p.grad, None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()
    }
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    flags = {n: m.training for n, m in net.named_modules()}
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    rng = torch.get_rng_state()

    measure_step_flops(net, SHAPE)

    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for n, p in net.named_parameters():
        obj, value = grads[n]
        assert p.grad is obj, n
        if value is not None:
            assert torch.equal(p.grad, value), n
        assert torch.equal(p, params[n]), n
    assert {n: m.training for n, m in net.named_modules()} == flags
    assert net.c2.observer is not None and calls == []
    assert torch.equal(torch.get_rng_state(), rng)


def test_measure_step_flops_under_no_grad(net: Net) -> None:
    with torch.no_grad():
        assert measure_step_flops(net, SHAPE).backward_flops > 0


# -------------------------------------------------------------------------------------- meter


def test_cost_meter_integrates_piecewise(net: Net) -> None:
    meter = CostMeter(net, SHAPE)
    dense = meter.current
    assert dense == measure_step_flops(net, SHAPE)
    for _ in range(10):
        meter.add(8)
    half = torch.arange(0, 8, 2)
    _select(net, "c1", half)
    small = meter.recount(net)
    assert small.forward_flops < dense.forward_flops
    for _ in range(5):
        meter.add(4)
    override = StepCost(100, 200)
    meter.add(3, cost=override)  # dynamic width: the caller's own per-step cost

    totals = meter.totals()
    fwd = 80 * dense.forward_flops + 20 * small.forward_flops + 3 * 100
    bwd = 80 * dense.backward_flops + 20 * small.backward_flops + 3 * 200
    assert totals == {
        "forward_flops": fwd,
        "backward_flops": bwd,
        "train_flops": fwd + bwd,
        "samples": 103,
        "dense_forward_flops": 103 * dense.forward_flops,
        "dense_backward_flops": 103 * dense.backward_flops,
        "dense_train_flops": 103 * dense.train_flops,
    }
    assert meter.current == small  # the override applies to one step only


def test_cost_meter_dense_reference_and_resume(net: Net) -> None:
    reference = StepCost(1_000_000, 2_000_000)
    meter = CostMeter(net, SHAPE, dense_reference=reference)
    meter.add(10)
    state = json.loads(json.dumps(meter.state_dict()))  # plain numbers only

    other = CostMeter(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)), SHAPE)
    other.load_state_dict(state)
    assert other.totals() == meter.totals()
    assert other.current == meter.current and other.dense == reference
    other.add(2)
    assert other.totals()["dense_forward_flops"] == 12 * 1_000_000
    assert other.totals()["forward_flops"] == 12 * meter.current.forward_flops


# ------------------------------------------------------------------------------------- golden


def _registry_model(name: str) -> nn.Module:
    # No skip: a golden model that fails to build is a failure, not a missing feature.
    from leantrain.models.factory import create_model

    return create_model(name)


def test_golden_resnet20_params() -> None:
    assert count_params(_registry_model("resnet20")) == 272_474


def test_golden_resnet56_macs() -> None:
    model = _registry_model("resnet56")
    assert count_macs(model, (3, 32, 32)) == 125_747_850
    assert 2 * count_macs(model, (3, 32, 32), include_bias=False) == _forward_flops_by_counter(
        model, (3, 32, 32)
    )


# ------------------------------------------------------------------------------------- timing


class FakeClock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def test_stopwatch_accumulates_laps() -> None:
    watch = Stopwatch("cpu", clock=FakeClock(0.0, 1.5, 2.0, 2.25, 3.0, 4.0, 10.0, 10.5))
    assert watch.totals() == {"train_s": 0.0, "surgery_s": 0.0, "eval_s": 0.0}
    with watch("train"):
        pass
    with watch("surgery"):
        pass
    with watch("train"):
        pass
    with pytest.raises(RuntimeError), watch("eval"):
        raise RuntimeError("a failing lap is still charged")
    assert watch.totals() == {"train_s": 2.5, "surgery_s": 0.25, "eval_s": 0.5}


def test_stopwatch_resume_and_custom_lap() -> None:
    watch = Stopwatch(torch.device("cpu"), clock=FakeClock(0.0, 2.0))
    with watch("train"):
        pass
    resumed = Stopwatch("cpu", clock=FakeClock(0.0, 1.0, 0.0, 3.0))
    resumed.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    with resumed("train"):
        pass
    with resumed("data"):
        pass
    assert resumed.totals() == {"train_s": 3.0, "surgery_s": 0.0, "eval_s": 0.0, "data_s": 3.0}
