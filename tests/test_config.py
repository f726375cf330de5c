"""`leantrain.config`: the resolved configuration, the run identity, and type checks on TOML values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from leantrain.config import ConfigError, merge
from leantrain.runs.config import RunConfig, from_dict
from leantrain.methods import METHODS, Method
from leantrain.methods.dcp import DCP
from leantrain.methods.learndrop import LearnDrop


def test_method_args_hold_every_setting_of_every_method_in_use() -> None:
    cfg = from_dict({"method": "learndrop+dcp", "dcp": {"p": 0.3}})
    assert cfg.method_args == {
        "learndrop": dataclasses.asdict(LearnDrop()),
        "dcp": {**dataclasses.asdict(DCP()), "p": 0.3},
    }
    assert cfg.to_dict()["method_args"] == cfg.method_args  # what config.json receives
    # constructed directly, the same resolution happens
    assert RunConfig(method="dcp").method_args == {"dcp": dataclasses.asdict(DCP())}
    assert RunConfig(method="dense").method_args == {}


def test_resolving_twice_changes_nothing() -> None:
    cfg = from_dict({"method": "dcp", "train": {"lr": 1}, "dcp": {"warmup": 0}})
    again = from_dict(cfg.to_dict())  # bench's child process rebuilds the config like this
    assert again == cfg and again.digest() == cfg.digest()


@pytest.mark.parametrize(
    "a, b",
    [
        ({"method": "dcp"}, {"method": "dcp", "dcp": {"p": 0.5}}),  # a default given explicitly
        ({"method": "dcp"}, {"method": "dcp", "method_args": {"dcp": {"p": 0.5}}}),
        ({"method": "none"}, {"method": "dense"}),
        ({"method": "none"}, {}),
        ({"train": {"lr": 1}}, {"train": {"lr": 1.0}}),  # an int for a float field is that float
        ({"data": {"data_dir": "/a"}}, {"data": {"data_dir": "/b", "download": True}}),
        ({"seed": 0}, {"seed": 1, "checkpoint_every": 5, "out_dir": "elsewhere"}),
    ],
)
def test_equivalent_settings_are_one_run(a, b) -> None:
    assert from_dict(a).digest() == from_dict(b).digest()


@pytest.mark.parametrize(
    "a, b",
    [
        ({"method": "dcp"}, {"method": "dcp", "dcp": {"p": 0.3}}),
        ({"method": "dcp"}, {"method": "learndrop+dcp"}),
        ({"method": "learndrop+dcp"}, {"method": "dcp+learndrop"}),  # hooks run in this order
        ({"train": {"threads": 1}}, {"train": {"threads": 2}}),
    ],
)
def test_different_settings_are_different_runs(a, b) -> None:
    assert from_dict(a).digest() != from_dict(b).digest()


def test_a_changed_default_is_a_different_run() -> None:
    """The digest hashes resolved values, so a method whose default changed (τ 0.25 → 0.5) is not
    mistaken for the runs made before, while a run that sets the old value stays the same run."""

    @dataclass
    class Before(Method):
        name: ClassVar[str] = "toy"
        tau: float = 0.25

    @dataclass
    class After(Method):
        name: ClassVar[str] = "toy"
        tau: float = 0.5

    def resolve(cls: type[Method], d: dict) -> RunConfig:
        METHODS.register(cls, name="toy")
        try:
            return from_dict(d)
        finally:
            METHODS.unregister("toy")

    old = resolve(Before, {"method": "toy"})
    new = resolve(After, {"method": "toy"})
    assert old.method_args == {"toy": {"tau": 0.25}} and new.method_args == {"toy": {"tau": 0.5}}
    assert new.digest() != old.digest() and new.run_dir() != old.run_dir()
    assert resolve(After, {"method": "toy", "toy": {"tau": 0.25}}).digest() == old.digest()


def test_a_setting_added_later_keeps_the_runs_made_before_at_its_neutral_value() -> None:
    """A new setting at the value that reproduces what ran before it existed is left out of the
    digest (`DIGEST_NEUTRAL`): the paper suite's Learn&Drop run recorded before
    `peer_reference` existed (digest 34c025fe, its folder and row) stays that run."""
    from leantrain.runs.config import DIGEST_NEUTRAL
    from leantrain.harness.suite import load_suite

    assert DIGEST_NEUTRAL[("learndrop", "peer_reference")] == "max"
    runs = {r.name: r for r in load_suite("paper").runs}
    before = runs["cifar10/resnet32/learndrop-peers-max/seed0"].config
    assert before.method_args["learndrop"]["peer_reference"] == "max"  # recorded in config.json
    assert before.digest() == "34c025fe"
    after = runs["cifar10/resnet32/learndrop/seed0"].config
    assert after.method_args["learndrop"]["peer_reference"] == "settling"
    assert after.digest() != before.digest()


def test_a_full_budget_keeps_the_identity_of_runs_made_before_budget_existed() -> None:
    """`train.budget` = 1 is what every run did before the setting: left out of the digest, so the
    paper suite's recorded runs keep their folders and rows; any other budget is another run."""
    full = from_dict({"method": "none", "train": {"epochs": 30}})
    assert from_dict({"method": "none", "train": {"epochs": 30, "budget": 1.0}}).digest() == full.digest()
    assert from_dict({"method": "none", "train": {"epochs": 30, "budget": 0.5}}).digest() != full.digest()
    assert "budget" in full.to_dict()["train"]  # still recorded in config.json


@pytest.mark.parametrize(
    "d, message",
    [
        ({"train": {"epochs": "ten"}},
         'train.epochs = "ten" in run.toml must be a whole number, e.g. epochs = 10.'),
        ({"train": {"epochs": True}},
         "train.epochs = true in run.toml must be a whole number, e.g. epochs = 10."),
        ({"train": {"lr": "fast"}},
         'train.lr = "fast" in run.toml must be a finite number, e.g. lr = 0.1.'),
        ({"train": {"lr": float("nan")}},
         "train.lr = NaN in run.toml must be a finite number, e.g. lr = 0.1."),
        ({"train": {"milestones": "half"}},
         'train.milestones = "half" in run.toml must be a list of numbers, e.g. milestones = '
         "[0.5, 0.75]."),
        ({"train": {"milestones": [0.5, "x"]}},
         'train.milestones = [0.5, "x"] in run.toml must be a list of numbers, e.g. milestones = '
         "[0.5, 0.75]."),
        ({"train": {"nesterov": 1}},
         "train.nesterov = 1 in run.toml must be true or false, e.g. nesterov = false."),
        ({"train": {"threads": 1.5}},
         "train.threads = 1.5 in run.toml must be a whole number or left out."),
        ({"data": {"train_subset": 25.5}},
         "data.train_subset = 25.5 in run.toml must be a whole number or left out."),
        ({"model": {"name": 5}},
         'model.name = 5 in run.toml must be a string, e.g. name = "vgg11".'),
        ({"train": 5},
         "train = 5 in run.toml must be a table of settings; put them under a [train] header."),
        ({"model": "resnet"},
         'model = "resnet" in run.toml must be a table of settings; put them under a [model] '
         "header."),
        ({"seed": "0"}, 'seed = "0" in run.toml must be a whole number, e.g. seed = 0.'),
        ({"method": 5}, 'method = 5 in run.toml must be a string, e.g. method = "none".'),
        ({"checkpoint_every": 1.5},
         "checkpoint_every = 1.5 in run.toml must be a whole number, e.g. checkpoint_every = 0."),
        ({"method": "dcp", "dcp": {"p": "half"}},
         'dcp.p = "half" in run.toml must be a finite number, e.g. p = 0.5.'),
        ({"method": "learndrop", "learndrop": {"tau": True}},
         "learndrop.tau = true in run.toml must be a finite number, e.g. tau = 0.5."),
        ({"method": "learndrop", "learndrop": {"max_per_checkpoint": "2"}},
         'learndrop.max_per_checkpoint = "2" in run.toml must be a whole number or left out.'),
        ({"method": "static", "static": {"widths": [4, 4.5]}},
         "static.widths = [4, 4.5] in run.toml must be a list of whole numbers."),
        ({"method": "dcp", "dcp": 0.5},
         "dcp = 0.5 in run.toml must be a table of settings; put them under a [dcp] header."),
        ({"method": "learndrop", "dcp": {"p": 0.3}},
         "[dcp] settings were given but dcp is not among the methods in use (learndrop); add it "
         'with method = "learndrop+dcp" or remove the [dcp] table.'),
        ({"dcp": {"p": 0.3}},
         "[dcp] settings were given but dcp is not among the methods in use (none); add it with "
         'method = "dcp" or remove the [dcp] table.'),
        ({"method": "dcp+dcp"}, "method 'dcp+dcp' names a method twice; give each method once."),
        ({"method": "dcp+nope"},
         f"unknown method 'nope'; choose none or one of: {', '.join(sorted(METHODS))} (combine "
         "with '+')."),
        ({"method": "dcp", "dcp": {"p": 1.5}},
         "dcp.p = 1.5 is outside [0, 1): p is the fraction of channels pruned."),
        ({"train": {"threads": 0}},
         "train.threads must be ≥ 1, or left out for torch's default (check your config or "
         "command line)."),
        ({"train": {"label_smoothing": 1.0}},
         "train.label_smoothing must be in [0, 1) (check your config or command line)."),
    ],
)
def test_bad_values_give_one_sentence(d, message) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(d, source="run.toml")
    assert str(e.value) == message


def test_settings_of_an_unused_method_are_refused_however_the_config_is_made() -> None:
    with pytest.raises(ConfigError, match=r"^\[dcp\] settings were given but dcp is not among"):
        RunConfig(method="learndrop", method_args={"dcp": {"p": 0.3}})


def test_merge_keeps_tables_and_refuses_to_overwrite_a_non_table() -> None:
    assert merge({"train": {"lr": 0.1, "epochs": 3}}, {"train": {"lr": 0.2}, "seed": 1}) == {
        "train": {"lr": 0.2, "epochs": 3},
        "seed": 1,
    }
    with pytest.raises(ConfigError, match=r"^train = 5 in a.toml must be a table of settings"):
        merge({"train": 5}, {"train": {"epochs": 3}}, source="a.toml")
