"""`leantrain.attach`: methods on the optimizer's step hooks, in a plain loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leantrain
from leantrain.training.attach import OptimizerMismatch
from leantrain.methods.base import Method
from leantrain.structure.surgery import Change, drop_units

STEPS = 12


def _batches(n: int = STEPS, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 10, (16,), generator=g)
        x = torch.randn(16, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1) * 0.2
        out.append((x, y))
    return out


def _methods(kind: str) -> list[Method]:
    if kind == "dcp":
        return [leantrain.DCP(p=0.5, warmup=0.1)]
    if kind == "freeze":
        return [leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2, action="freeze")]
    if kind == "both":
        return [leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2),
                leantrain.DCP(p=0.5, warmup=0.1)]
    return [leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2)]


def _setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = leantrain.create_model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, _methods(kind)


def _train(model, opt, batches) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", ["learndrop", "freeze", "dcp", "both"])
def test_optimizer_holds_exactly_the_live_parameters_after_every_change(kind) -> None:
    model, opt, methods = _setup(kind)
    seen: list[list[str]] = []

    def check(change: Change) -> None:
        live = {id(p) for p in model.parameters() if p.requires_grad}
        held = [id(p) for g in opt.param_groups for p in g["params"]]
        assert len(held) == len(set(held)), "a parameter is in the optimizer twice"
        assert set(held) == live
        # momentum only for parameters still in the optimizer, shaped like them
        for p, state in opt.state.items():
            assert id(p) in live and state["momentum_buffer"].shape == p.shape
        seen.append(change.removed)

    handle = leantrain.attach(model, opt, methods, STEPS, on_change=check)
    _train(model, opt, _batches())
    handle.finish()
    assert handle.step == STEPS
    assert seen, "the run should cut, or the check proves nothing"
    _train(model, opt, _batches(2, seed=1))  # fine-tuning after the cut trains every live param


def test_fine_tuning_after_dcp_finish_updates_every_pruned_conv() -> None:
    # The failure: after DCP.finish without the remap, half of the live parameters were
    # missing from the optimizer and a fine-tuning step left pruned convs unchanged.
    model, opt, methods = _setup("dcp")
    handle = leantrain.attach(model, opt, methods, STEPS)
    _train(model, opt, _batches())
    assert handle.finish()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt, _batches(1, seed=2))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


class _Careless(Method):
    """Cuts a block but describes none of the parameters it removed."""

    name = "careless"

    def step(self, model, progress):
        if progress.step == 2:
            change = drop_units(model, ["layer1.1"])
            return Change(removed=change.removed, edits=[])
        return None


def test_an_incomplete_change_is_caught_at_once() -> None:
    torch.manual_seed(0)
    model = leantrain.create_model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    leantrain.attach(model, opt, _Careless(), STEPS)
    with pytest.raises(OptimizerMismatch) as err:
        _train(model, opt, _batches(3))
    assert str(err.value) == (
        "after the cut ['layer1.1'] the optimizer holds 6 removed parameters and misses 0 live "
        "ones ([]); the cut's Change does not describe every parameter it replaced, which is a "
        "bug in the method."
    )


class _Counter(Method):
    name = "counter"

    def __init__(self) -> None:
        self.before: list[int] = []
        self.after: list[int] = []

    def after_backward(self, model, progress):
        self.before.append(progress.step)

    def step(self, model, progress):
        self.after.append(progress.step)


def test_steps_a_gradient_scaler_skips_are_not_counted() -> None:
    torch.manual_seed(0)
    model = leantrain.create_model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    counter = _Counter()
    handle = leantrain.attach(model, opt, counter, 4)
    scaler = torch.amp.GradScaler("cpu")
    for i, (x, y) in enumerate(_batches(4)):
        opt.zero_grad(set_to_none=True)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if i == 1:  # an overflow: the scaler skips this step
            next(model.parameters()).grad.fill_(float("inf"))
        scaler.step(opt)
        scaler.update()
    assert handle.step == 3
    assert counter.before == [0, 1, 2] and counter.after == [1, 2, 3]


@pytest.mark.parametrize("kind", ["both", "freeze"])
def test_own_checkpoint_resumes_exactly(kind, tmp_path) -> None:
    batches = _batches()
    whole, opt, methods = _setup(kind)
    handle = leantrain.attach(whole, opt, methods, STEPS)
    _train(whole, opt, batches)
    handle.finish()

    model, opt, methods = _setup(kind)
    handle = leantrain.attach(model, opt, methods, STEPS)
    _train(model, opt, batches[:11])
    assert handle.changes, "cut before the checkpoint, or it proves little"
    torch.save({"leantrain": handle.state_dict(), "model": model.state_dict(),
                "opt": opt.state_dict()}, tmp_path / "ck.pt")

    resumed, opt2, methods2 = _setup(kind, seed=1)  # other initial weights: all must come back
    handle2 = leantrain.attach(resumed, opt2, methods2, STEPS)
    saved = torch.load(tmp_path / "ck.pt", weights_only=False)
    handle2.load_state_dict(saved["leantrain"])
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert handle2.step == 11
    _train(resumed, opt2, batches[11:])
    handle2.finish()
    want, got = whole.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_bad_inputs_get_one_sentence() -> None:
    model, opt, methods = _setup("dcp")
    with pytest.raises(ValueError) as err:
        leantrain.attach(model, opt, methods, 0)
    assert str(err.value) == (
        "total_steps = 0 and steps_per_epoch = 0 must be ≥ 1; pass the number of optimizer steps "
        "the loop will make."
    )
    handle = leantrain.attach(model, opt, methods, STEPS)
    other, opt2, _ = _setup("dcp")
    handle2 = leantrain.attach(other, opt2, _methods("learndrop"), STEPS)
    with pytest.raises(ValueError) as err:
        handle2.load_state_dict(handle.state_dict())
    assert str(err.value) == (
        "this state was saved with methods ['dcp'] but ['learndrop'] are attached; attach the "
        "same methods to resume."
    )


def test_a_closure_step_runs_the_methods_after_its_backward() -> None:
    # Lightning and LBFGS call step(closure): forward and backward happen inside the step.
    torch.manual_seed(0)
    model = leantrain.create_model("test_resnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: list[bool] = []

    class Grads(Method):
        name = "grads"

        def after_backward(self, model, progress):
            seen.append(all(p.grad is not None for p in model.parameters()))

    handle = leantrain.attach(model, opt, Grads(), 2)
    for x, y in _batches(2):
        def closure():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    assert seen == [True, True] and handle.step == 2


def test_own_model_with_an_example_input() -> None:
    from user_models import preact_resnet

    torch.manual_seed(0)
    model = preact_resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = _batches(4)
    handle = leantrain.attach(model, opt, leantrain.DCP(p=0.5, warmup=0.0), 4,
                              example_input=batches[0][0])
    _train(model, opt, batches)
    assert handle.finish()  # the compact cut, with the optimizer following it
    assert {id(p) for p in model.parameters()} == {id(p) for g in opt.param_groups for p in g["params"]}


def test_without_an_example_input_an_own_model_gets_one_sentence() -> None:
    from user_models import preact_resnet

    model = preact_resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(leantrain.StructureError) as err:
        leantrain.attach(model, opt, leantrain.DCP(), 4)
    assert str(err.value) == (
        "leantrain does not know the input shape of PreActResNet; call "
        "leantrain.prepare(model, example_input) once before training."
    )
