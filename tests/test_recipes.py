"""Default recipes per model family: `leantrain train` fills only the train fields left unset."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import leantrain.runs.runner
from leantrain.cli import main
from leantrain.runs.config import RunConfig
from leantrain.config import TrainConfig
from leantrain.runs.recipes import FAMILY_RECIPES, default_recipe, model_family, with_default_recipe
from leantrain.models.factory import list_models


def test_every_built_in_model_has_a_family_recipe() -> None:
    for name in list_models():
        if name.startswith("test_"):  # the test suite's tiny models keep TrainConfig's defaults
            assert default_recipe(name) == {}, name
        else:
            assert model_family(name) in FAMILY_RECIPES, name
            assert default_recipe(name), name


def test_vgg_trains_at_a_lower_lr_than_resnet() -> None:
    assert default_recipe("vgg11") == {"lr": 0.02, "warmup": 0.05}
    assert default_recipe("vgg19") == default_recipe("vgg11")
    assert default_recipe("resnet20") == {"lr": 0.1, "warmup": 0.05}
    assert default_recipe("resnet50") == default_recipe("resnet110") == default_recipe("resnet20")
    assert default_recipe("my_own_net") == {}  # a user's model keeps TrainConfig's defaults
    assert default_recipe("vgg_like") == default_recipe("resnet") == {}


def test_recipes_are_valid_train_configs() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for family, recipe in FAMILY_RECIPES.items():
        assert set(recipe) <= fields, family
        TrainConfig(**recipe).validate()


def test_the_recipes_page_states_the_recipes() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    row = re.compile(r"^\| (VGG|ResNet) \|[^|]*\| ([\d.]+) \| (\d+)% of training \|$", re.M)
    rows = {family: (lr, warmup) for family, lr, warmup in row.findall(page)}
    assert set(rows) == {"VGG", "ResNet"}
    for family, (lr, warmup) in rows.items():
        recipe = FAMILY_RECIPES[family.lower()]
        assert (float(lr), int(warmup) / 100) == (recipe["lr"], recipe["warmup"])


def test_default_recipe_returns_a_copy() -> None:
    default_recipe("vgg11")["lr"] = 1.0
    assert default_recipe("vgg11")["lr"] == 0.02


def test_set_fields_win_even_when_they_equal_the_dataclass_default() -> None:
    config = {"model": {"name": "vgg13"}, "train": {"lr": 0.1, "epochs": 2}}
    assert with_default_recipe(config)["train"] == {"lr": 0.1, "warmup": 0.05, "epochs": 2}
    assert config["train"] == {"lr": 0.1, "epochs": 2}  # the input is not modified


def test_without_a_model_the_default_model_decides() -> None:
    assert RunConfig().model.name == "vgg11"
    assert with_default_recipe({})["train"] == {"lr": 0.02, "warmup": 0.05}


def test_malformed_sections_pass_through_for_from_dict_to_report() -> None:
    for config in ({"train": 3}, {"model": "vgg11"}, {"model": {"name": 7}}):
        assert with_default_recipe(config) == config


@pytest.fixture
def captured(monkeypatch) -> list[RunConfig]:
    """`leantrain train` without training: the RunConfig the CLI resolved."""
    seen: list[RunConfig] = []

    def fake_run(cfg, **kwargs):
        seen.append(cfg)
        result = SimpleNamespace(test_acc=0.5, test_loss=1.0, times={"train_s": 1.0})
        return result, Path("runs/x")

    monkeypatch.setattr(leantrain.runs.runner, "run", fake_run)
    return seen


@pytest.mark.parametrize(
    "args, lr, warmup",
    [
        ([], 0.02, 0.05),  # the default model, vgg11
        (["--model", "vgg13", "--method", "dcp"], 0.02, 0.05),
        (["--model", "resnet20"], 0.1, 0.05),
        (["--model", "vgg11", "--lr", "0.1"], 0.1, 0.05),
        (["--model", "resnet20", "--warmup", "0"], 0.1, 0.0),
    ],
)
def test_cli_fills_unset_train_fields_from_the_recipe(captured, args, lr, warmup) -> None:
    assert main(["train", "--no-progress", *args]) == 0
    [cfg] = captured
    assert (cfg.train.lr, cfg.train.warmup) == (lr, warmup)
    assert cfg.train.epochs == TrainConfig().epochs  # fields outside the recipe keep defaults


def test_cli_keeps_the_toml_files_train_settings(captured, tmp_path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[model]\nname = "vgg16"\n[train]\nlr = 0.1\n')
    assert main(["train", "--no-progress", "-c", str(config)]) == 0
    assert (captured[0].train.lr, captured[0].train.warmup) == (0.1, 0.05)


def test_help_names_the_per_model_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate (default: per model, vgg*: 0.02, resnet*: 0.1)" in help_text
    assert "(default: per model, vgg*: 0.05, resnet*: 0.05)" in help_text
