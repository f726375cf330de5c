"""Misuse of `attach` caught at once, and methods that say when they can do nothing (issue #26).

Every case ends in one exception naming the mistake and the fix, or in one leantrain warning;
tiny models and a few steps each, so the module stays fast.
"""

from __future__ import annotations

import gc
import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks

import leantrain
from test_attach import _Counter  # the step-recording method those tests use
from leantrain.training.attach import AttachError, AttachWarning
from leantrain.methods.base import MethodWarning
from leantrain.structure import ExampleInputError, StructureError

SIZE = 16
attach_module = importlib.import_module("leantrain.training.attach")  # `leantrain.attach` is the function


def _model() -> nn.Module:
    torch.manual_seed(0)
    return leantrain.create_model("test_resnet", input_size=SIZE)


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 10, (8,), generator=g)
        out.append((torch.randn(8, 3, SIZE, SIZE, generator=g) + y.view(-1, 1, 1, 1) * 0.2, y))
    return out


def _train(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 0) -> None:
    model.train()
    for x, y in _batches(n, seed):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _dropping(**kw) -> leantrain.LearnDrop:
    """Learn&Drop that drops at the first checkpoints it may (tests of what is dropped)."""
    args = dict(tau=1.0, warmup=0.0, stop=1.0, every_steps=2, window=2, min_units_per_stage=0)
    return leantrain.LearnDrop(**{**args, **kw})


# ------------------------------------------------------------------------------ the optimizer


def test_an_optimizer_of_another_model_is_refused_at_attach() -> None:
    model, other = _model(), _model()
    with pytest.raises(AttachError) as err:
        leantrain.attach(model, _sgd(other.parameters()), leantrain.DCP(), 10)
    assert isinstance(err.value, ValueError)
    assert "parameters that are not this ResNet's" in str(err.value)
    assert "torch.optim.SGD(model.parameters(), ...)" in str(err.value)


def test_an_extra_unrelated_param_group_is_refused_at_attach() -> None:
    model = _model()
    opt = _sgd(model.parameters())
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    with pytest.raises(AttachError, match=r"holds 1 parameters .*\(param group 1\)"):
        leantrain.attach(model, opt, leantrain.DCP(), 10)


def test_an_optimizer_missing_trainable_parameters_is_refused() -> None:
    model = _model()
    opt = _sgd([p for n, p in model.named_parameters() if not n.startswith("fc.")])
    with pytest.raises(AttachError, match="misses 2 trainable parameters of the model "
                                          r"\(fc.weight, fc.bias\)"):
        leantrain.attach(model, opt, leantrain.DCP(), 10)


def test_frozen_parameters_may_be_in_the_optimizer_or_not() -> None:
    for include_frozen in (True, False):
        model = _model()
        for p in model.conv1.parameters():
            p.requires_grad_(False)
        params = model.parameters() if include_frozen else (
            p for p in model.parameters() if p.requires_grad)
        opt = _sgd(params)
        handle = leantrain.attach(model, opt, leantrain.DCP(p=0.5, warmup=0.0), 4)
        _train(model, opt, 4)
        assert handle.step == 4
        handle.finish()


# ------------------------------------------------------------------------------ one attach


def test_a_second_attach_on_the_same_model_is_refused_until_detach() -> None:
    model = _model()
    opt = _sgd(model.parameters())
    first = leantrain.attach(model, opt, leantrain.DCP(), 10)
    for again in (opt, _sgd(model.parameters())):
        with pytest.raises(AttachError) as err:
            leantrain.attach(model, again, _dropping(), 10)
        assert str(err.value) == (
            "this ResNet is already attached (to a SGD with methods ['dcp']); call "
            "handle.finish() or handle.detach() on that handle first, or pass all the methods to "
            "one attach."
        )
    first.detach()
    second = leantrain.attach(model, opt, _Counter(), 10)  # detached: free again
    second.finish()
    third = leantrain.attach(model, opt, _Counter(), 10)  # finished: free again
    _train(model, opt, 1)
    assert third.step == 1 and second.step == 0  # the old handles' hooks are gone


@pytest.mark.parametrize("kind", [leantrain.LearnDrop, leantrain.DCP])
def test_the_same_method_twice_in_one_attach_is_refused(kind) -> None:
    model = _model()
    with pytest.raises(AttachError) as err:
        leantrain.attach(model, _sgd(model.parameters()), [kind(), kind()], 10)
    name = kind.__name__
    assert str(err.value) == (
        f"methods lists {name} 2 times, and each would score and cut the model on its own; "
        f"pass one {name}(...) with the settings you want."
    )


# ------------------------------------------------------------------------------ step counts


@pytest.mark.parametrize("bad", [20.7, True, "20", None])
def test_total_steps_must_be_a_whole_number(bad) -> None:
    model = _model()
    with pytest.raises(TypeError) as err:
        leantrain.attach(model, _sgd(model.parameters()), leantrain.DCP(), bad)
    assert str(err.value) == (
        "total_steps must be a whole number of optimizer steps (an int such as "
        f"epochs * len(loader)), not {bad!r}."
    )
    assert isinstance(err.value, ValueError)  # the CLI's user errors: one line, exit 2


def test_steps_per_epoch_and_start_step_are_checked_too() -> None:
    model = _model()
    opt = _sgd(model.parameters())
    with pytest.raises(TypeError, match="steps_per_epoch must be a whole number .* not 2.5"):
        leantrain.attach(model, opt, leantrain.DCP(), 10, steps_per_epoch=2.5)
    with pytest.raises(AttachError, match=r"start_step = 11 must lie in \[0, total_steps = 10\]"):
        leantrain.attach(model, opt, leantrain.DCP(), 10, start_step=11)
    with pytest.raises(AttachError, match="start_step = -1"):
        leantrain.attach(model, opt, leantrain.DCP(), 10, start_step=-1)
    # numpy-style integers are whole numbers
    leantrain.attach(model, opt, leantrain.DCP(), torch.tensor(10).numpy()[()]).detach()


# ------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("methods, message", [
    ("dcp", "methods holds the name 'dcp', not a method object; pass one such as "
            "leantrain.DCP(), or build it by name with leantrain.METHODS[name]()."),
    (leantrain.DCP, "methods holds the class DCP, not a method object; create one: DCP() (with "
                    "its settings as arguments)."),
    ([leantrain.LearnDrop], "methods holds the class LearnDrop, not a method object; create "
                            "one: LearnDrop() (with its settings as arguments)."),
])
def test_methods_must_be_method_objects(methods, message) -> None:
    model = _model()
    with pytest.raises(TypeError) as err:
        leantrain.attach(model, _sgd(model.parameters()), methods, 10)
    assert str(err.value) == message


def test_an_arbitrary_object_is_not_a_method() -> None:
    model = _model()
    with pytest.raises(TypeError, match=r"methods holds <object object at .*> \(object\), which "
                                        "is not a leantrain Method; pass method objects"):
        leantrain.attach(model, _sgd(model.parameters()), object(), 10)


def test_no_method_is_refused_but_fit_still_trains_dense(tiny_cifar) -> None:
    model = _model()
    with pytest.raises(AttachError, match="methods is empty, so attach would change nothing"):
        leantrain.attach(model, _sgd(model.parameters()), [], 10)
    # fit() with method "none" attaches no method on purpose
    from leantrain.config import TrainConfig
    from leantrain.data.loaders import TensorLoader

    train, test, spec = tiny_cifar
    loaders = [TensorLoader(s, spec, batch_size=32, train=t, seed=0) for s, t in
               ((train, True), (test, False))]
    result = leantrain.fit(leantrain.create_model("test_resnet"), *loaders,
                           TrainConfig(epochs=1, batch_size=32, lr=0.05), show_progress=False)
    assert result.history[-1]["step"] == 2


class _FailingLoader:
    """A training loader whose second batch raises, as a user's broken data pipeline would."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def epoch(self, epoch: int, start_batch: int = 0):
        for i, batch in enumerate(self.loader.epoch(epoch, start_batch)):
            if i == 1:
                raise OSError("disk went away")
            yield batch


def test_a_fit_that_fails_unhooks_the_model_so_fit_can_run_again(tiny_cifar) -> None:
    from leantrain.config import TrainConfig
    from leantrain.data.loaders import TensorLoader

    train, test, spec = tiny_cifar
    train_loader, test_loader = [TensorLoader(s, spec, batch_size=32, train=t, seed=0)
                                 for s, t in ((train, True), (test, False))]
    model = leantrain.create_model("test_resnet")
    opt = _sgd(model.parameters())  # the user's own optimizer, which outlives the failed fit
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    with pytest.raises(OSError, match="disk went away"):
        leantrain.fit(model, _FailingLoader(train_loader), test_loader, cfg,
                      [leantrain.LearnDrop()], optimizer=opt, show_progress=False)
    # without the unhooking, this second attach would be refused as a second owner of the model
    result = leantrain.fit(model, train_loader, test_loader, cfg, [leantrain.LearnDrop()],
                           optimizer=opt, show_progress=False)
    assert result.history[-1]["step"] == 2


# ------------------------------------------------------------------------------ example input


def _user_model() -> nn.Module:
    from user_models import preact_resnet

    torch.manual_seed(0)
    return preact_resnet()


@pytest.mark.parametrize("example, error, message", [
    (torch.zeros(1, 1), ExampleInputError,
     "example_input has shape (1, 1), which is not a batch (N, C, H, W); pass a batch of inputs "
     "such as torch.zeros(1, 3, 32, 32), or one sample's shape (C, H, W) as a tuple of ints."),
    (torch.zeros(3, 32, 32), ExampleInputError,
     "example_input has shape (3, 32, 32), which is not a batch (N, C, H, W); add the batch "
     "dimension: x.unsqueeze(0)."),
    (torch.zeros(2, 3, 32, 32, dtype=torch.long), TypeError,
     "example_input is a torch.int64 tensor, but the model trains on floats; pass a batch as the "
     "model gets it, e.g. images.float() / 255."),
    ((1, 3, 32, 32), ExampleInputError,
     "example_input = (1, 3, 32, 32) has 4 numbers, but a shape is one sample's (C, H, W); drop "
     "the batch size, (3, 32, 32), or pass a batch tensor, torch.zeros(1, 3, 32, 32)."),
    (torch.zeros(2, 1, 32, 32), ExampleInputError,
     "PreActResNet takes 3 input channels (its first convolution conv has in_channels = 3) but "
     "example_input has 1; pass a batch shaped (N, 3, H, W)."),
])
def test_example_input_is_a_float_batch_the_model_accepts(example, error, message) -> None:
    model = _user_model()
    with pytest.raises(error) as err:
        leantrain.attach(model, _sgd(model.parameters()), leantrain.DCP(), 10,
                         example_input=example)
    assert str(err.value) == message
    assert isinstance(err.value, StructureError)
    assert id(model) not in attach_module._ATTACHED  # a refused attach leaves nothing behind


def test_a_per_sample_shape_and_a_batch_are_both_accepted() -> None:
    for example in ((3, 32, 32), torch.zeros(2, 3, 32, 32)):
        model = _user_model()
        leantrain.attach(model, _sgd(model.parameters()), leantrain.DCP(), 4,
                         example_input=example).detach()


# ------------------------------------------------------------------------------ warnings


def test_steps_past_total_steps_warn_once() -> None:
    model = _model()
    opt = _sgd(model.parameters())
    handle = leantrain.attach(model, opt, _Counter(), 2)
    with pytest.warns(AttachWarning) as record:
        _train(model, opt, 4)
    messages = [str(w.message) for w in record if w.category is AttachWarning]
    assert messages == [
        "optimizer step 3 is past total_steps = 2, so the methods' schedules have ended and act "
        "as at the end of training; pass attach the number of optimizer steps the loop really "
        "makes."
    ]
    assert handle.step == 4
    handle.detach()


def test_a_step_without_backward_is_not_counted_and_cannot_cut() -> None:
    model = _model()
    opt = _sgd(model.parameters())
    counter = _Counter()
    dropper = _dropping(every_steps=1)
    handle = leantrain.attach(model, opt, [dropper, counter], 4)
    with pytest.warns(AttachWarning, match=r"optimizer.step\(\) ran at step 0 with no gradient"):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            opt.step()  # forgot loss.backward()
    assert handle.step == 0 and counter.before == [] and counter.after == []
    assert dropper.dropped == [] and handle.changes == 0
    _train(model, opt, 1)  # a real step still counts
    assert handle.step == 1 and counter.after == [1]
    handle.detach()


def test_another_optimizer_stepping_the_model_warns_and_the_global_hook_goes_on_detach() -> None:
    model = _model()
    opt = _sgd(model.parameters())
    handle = leantrain.attach(model, opt, _Counter(), 10)
    assert attach_module._on_any_step in _global_optimizer_post_hooks.values()
    _train(model, opt, 1)
    with warnings.catch_warnings():  # a second optimizer used alongside the first: fine
        warnings.simplefilter("error", AttachWarning)
        side = _sgd(model.fc.parameters())
        for _ in range(2):
            _train(model, side, 1)
            _train(model, opt, 1)
    new = torch.optim.Adam(model.parameters())  # the loop switched optimizers after attach
    with pytest.warns(AttachWarning) as record:
        _train(model, new, 3)
    assert [str(w.message) for w in record if w.category is AttachWarning] == [
        "another optimizer (Adam) steps this model's parameters while the attached one does not, "
        "so no step is counted and the methods do not run; step the attached optimizer, or call "
        "handle.detach() and attach the new one."
    ]
    assert handle.step == 3
    gc.collect()  # handles other tests left attached, unreferenced, wait for the collector
    handle.detach()
    if not attach_module._ATTACHED:  # the last live handle detached: no global hook is left
        assert attach_module._on_any_step not in _global_optimizer_post_hooks.values()


# ------------------------------------------------------------------------------ no-ops


class _LoopNet(nn.Module):
    """``x = x + blk(x)`` once per resolution: every droppable unit alone in its stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            for _ in range(2))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.blocks[0](x)
        x = F.max_pool2d(x, 2)
        x = x + self.blocks[1](x)
        return self.fc(x.mean((2, 3)))


def test_learndrop_says_when_every_unit_is_alone_in_its_stage() -> None:
    model = _LoopNet()
    opt = _sgd(model.parameters())
    with pytest.warns(MethodWarning) as record:
        handle = leantrain.attach(model, opt, leantrain.LearnDrop(), 10, example_input=(3, 8, 8),
                                  steps_per_epoch=2)
    assert [str(w.message) for w in record] == [
        "Learn&Drop will drop nothing: each of its 2 units is in a stage of at most 1 block(s) "
        "and min_units_per_stage = 1 keeps that many, so none can leave (a unit is alone in its "
        "stage when it is the only block at its resolution); set "
        "learndrop.min_units_per_stage lower, e.g. 0."
    ]
    handle.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MethodWarning)
        leantrain.attach(model, opt, leantrain.LearnDrop(min_units_per_stage=0), 10,
                         steps_per_epoch=2).detach()


@pytest.mark.parametrize("settings, phrase", [
    (dict(max_dropped_fraction=0.2), "max_dropped_fraction = 0.2 of the 4 eligible units rounds "
                                     "down to 0 units; raise it to at least 0.25"),
    (dict(warmup=0.5, stop=0.5), "learndrop.stop = 0.5 is not after warmup = 0.5"),
    (dict(every_steps=20), "no checkpoint falls between warmup = 0.1 and stop = 0.75 of the 10 "
                           "steps"),
    (dict(mode="budget", budget_target=0.1), "budget_target = 0.1 of the 4 eligible units"),
])
def test_learndrop_settings_that_drop_nothing_warn_at_setup(settings, phrase) -> None:
    model = _model()
    with pytest.warns(MethodWarning, match="Learn&Drop will drop nothing: .*" + phrase):
        leantrain.attach(model, _sgd(model.parameters()), leantrain.LearnDrop(**settings),
                         10).detach()


@pytest.mark.parametrize("settings, phrase", [
    (dict(p=0.0), "dcp.p = 0 switches no channel off"),
    (dict(p=0.004), "dcp.p = 0.004 of the 112 prunable channels rounds to 0 channels"),
    (dict(p=0.01, selection="layer"), "with selection = 'layer' every layer keeps all its"),
])
def test_dcp_settings_that_prune_nothing_warn_at_setup(settings, phrase) -> None:
    model = _model()
    with pytest.warns(MethodWarning, match="DCP will prune nothing: " + phrase):
        leantrain.attach(model, _sgd(model.parameters()), leantrain.DCP(**settings),
                         10).detach()


# ------------------------------------------------------------------------------ frozen layers


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def test_learndrop_never_drops_frozen_units_but_drops_settled_ones() -> None:
    model = _model()
    _freeze(model.layer1[1])  # its change score would be 0: "settled", dropped first
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # no momentum: the scores settle at once
    method = _dropping()
    with pytest.warns(MethodWarning, match=r"Learn&Drop leaves 1 unit\(s\) whose parameters are "
                                           r"all frozen \(requires_grad=False\) out, never scored "
                                           "nor dropped: layer1.1."):
        handle = leantrain.attach(model, opt, method, 12)
    setup = next(e for e in method.events() if e["kind"] == "ld_setup")
    assert setup["frozen"] == ["layer1.1"] and "layer1.1" not in setup["units"]
    assert setup["eligible"] == 3
    _train(model, opt, 12)
    handle.finish()
    assert method.dropped, "the unfrozen units should go, or the test proves little"
    assert "layer1.1" not in method.dropped
    checkpoints = [e for e in method.events() if e["kind"] == "ld_checkpoint"]
    assert checkpoints and all("layer1.1" not in e["units"] for e in checkpoints)


def test_a_partly_frozen_unit_is_scored_on_its_trainable_parameters() -> None:
    from leantrain.methods.scores import ChangeScore, relative_change

    model = _model()
    _freeze(model.layer1[0].conv1)
    unit = next(u for u in leantrain.units_of(model) if u.name == "layer1.0")
    trainable = [p for p in unit.parameters() if p.requires_grad]
    score = ChangeScore()
    score.attach(model, [unit])
    before = torch.cat([p.detach().flatten() for p in trainable])
    opt = _sgd(p for p in model.parameters() if p.requires_grad)
    _train(model, opt, 1)
    after = torch.cat([p.detach().flatten() for p in trainable])
    d = score.measure([unit])["layer1.0"]
    assert d == pytest.approx(relative_change(before, after), rel=1e-5)


def test_every_unit_frozen_is_an_error() -> None:
    model = _model()
    for layer in (model.layer1, model.layer2, model.layer3):
        _freeze(layer)
    with pytest.raises(ValueError, match="every droppable unit of ResNet is frozen"):
        leantrain.attach(model, _sgd(model.parameters()), _dropping(), 8)


def test_dcp_leaves_frozen_channel_sets_at_full_width() -> None:
    model = _model()
    _freeze(model.layer1)  # the first two channel sets: no gradient reaches their BN outputs
    opt = _sgd(model.parameters())
    dcp = leantrain.DCP(p=0.5, warmup=0.0)
    with pytest.warns(MethodWarning, match=r"DCP leaves 2 channel set\(s\) whose conv and BN are "
                                           "frozen .* never pruned: layer1.0.conv1, "
                                           "layer1.1.conv1."):
        handle = leantrain.attach(model, opt, dcp, 4)
    _train(model, opt, 4)
    handle.finish()
    widths = {s.name: len(s) for s in leantrain.channel_sets_of(model)}
    assert widths["layer1.0.conv1"] == widths["layer1.1.conv1"] == 8
    assert sum(widths.values()) < 112  # the trainable sets were pruned


def test_learndrop_logs_forward_flops_of_an_own_model() -> None:
    model = _user_model()
    method = _dropping()
    leantrain.attach(model, _sgd(model.parameters()), method, 8,
                     example_input=torch.zeros(1, 3, 32, 32)).detach()
    setup = next(e for e in method.events() if e["kind"] == "ld_setup")
    assert setup["forward_flops"] == 2 * leantrain.count_macs(model, (3, 32, 32))
