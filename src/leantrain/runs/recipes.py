"""Default training recipe per model family, for the settings a user leaves unset.

`TrainConfig`'s own defaults (LR 0.1, no warm-up) suit a CIFAR ResNet but not a VGG: VGG-11 at
LR 0.1 ended at chance (10%) on CIFAR-10, while the same run at a lower LR learns. So
`leantrain train` fills every train field that neither a flag nor the TOML file sets from
`default_recipe(model name)`; whatever the user sets wins, even when it equals a default.
The Python API (`TrainConfig`, `fit`) and the benchmark suites, whose TOML files state their
recipes, are not changed by it.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FAMILY_RECIPES", "model_family", "default_recipe", "with_default_recipe", "recipe_help"]

# Values measured with `leantrain train --model M --dataset cifar10 --train-subset 2000
# --test-subset 1000` and nothing else (10 epochs, batch 128, cosine; see docs/recipes.md).
FAMILY_RECIPES: dict[str, dict[str, Any]] = {
    # A plain conv stack without shortcuts: at LR 0.1 its first steps blow up the loss and the
    # BN statistics, and it never recovers in a short run; a lower peak after a short linear
    # warm-up trains every VGG depth.
    "vgg": {"lr": 0.02, "warmup": 0.05},
    # The residual path keeps early steps tame: LR 0.1 as in He et al. (2016), with a short
    # warm-up for the deeper and ImageNet-style variants.
    "resnet": {"lr": 0.1, "warmup": 0.05},
}

# The built-in models only (vgg11, resnet20, …): the tiny ``test_*`` models exist for the test
# suite, whose runs state their own recipes and rely on `TrainConfig`'s defaults for the rest.
_FAMILY = re.compile(r"^(vgg|resnet)\d+$")


def model_family(model_name: str) -> str | None:
    """The family (``"vgg"`` or ``"resnet"``) of a built-in model name, None for others."""
    match = _FAMILY.match(model_name)
    return match.group(1) if match else None


def default_recipe(model_name: str) -> dict[str, Any]:
    """`TrainConfig` field values that make `model_name` train well with nothing else set.

    Args:
        model_name: a registered model name, e.g. ``"vgg13"``; a model outside the built-in
            families (one a user registered, the ``test_*`` models) gets ``{}``, i.e.
            `TrainConfig`'s defaults.

    Returns:
        A new dict of `TrainConfig` field names to values.
    """
    family = model_family(model_name)
    return dict(FAMILY_RECIPES[family]) if family else {}


def with_default_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A nested config dict (TOML layout) with its model's recipe under every unset train field.

    The model name is ``config["model"]["name"]``, else `ModelConfig`'s default. A malformed
    ``model`` or ``train`` entry is passed through unchanged, so that `config.from_dict` reports it.
    """
    from ..config import ModelConfig

    model = config.get("model", {})
    train = config.get("train", {})
    if not isinstance(model, dict) or not isinstance(train, dict):
        return config
    name = model.get("name", ModelConfig().name)
    if not isinstance(name, str):
        return config
    return {**config, "train": {**default_recipe(name), **train}}


def recipe_help(field: str) -> str | None:
    """``"vgg*: 0.02, resnet*: 0.1"`` for a field the recipes set, for `--help`; else None."""
    values = [f"{family}*: {r[field]}" for family, r in FAMILY_RECIPES.items() if field in r]
    return ", ".join(values) or None
