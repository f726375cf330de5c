"""Run configuration: dataclasses whose fields are the hyperparameters, TOML files, CLI flags.

A run is described by one `RunConfig` (data, model, training recipe, methods and their
hyperparameters, seed). It is read from TOML with `tomllib`, overridden by command-line flags
generated from the same dataclass fields, validated, and written back to the run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "RunConfig",
    "ConfigError",
    "load_toml",
    "from_dict",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and how to fix it."""


@dataclass
class DataConfig:
    """Which data set, where it lives and how much of it to use."""

    dataset: str = "mnist-sample"
    data_dir: str | None = None  # else $LEANTRAIN_DATA, else the per-user cache folder
    train_subset: int | None = None  # seeded random subset of the training split
    test_subset: int | None = None
    image_size: int | None = None  # Imagenette: decode to this size (default 64)
    download: bool = False  # fetch the official archives when missing (needs internet)


@dataclass
class ModelConfig:
    """Which registered model to build."""

    name: str = "vgg11"


@dataclass
class TrainConfig:
    """The training recipe. The LR is a pure function of progress (see `leantrain.train.lr_at`)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of training
    lr_decay: float = 0.1  # step: factor at each milestone
    warmup: float = 0.0  # fraction of training with a linear LR ramp from 0
    label_smoothing: float = 0.0
    device: str = "auto"  # auto | cpu | cuda
    # NHWC activations and weights: oneDNN then skips its layout reorders. Measured on the 2-core
    # AMD EPYC (family 26), batch 128 training steps: VGG-11 1.17×, VGG-16 1.32×, ResNet-20
    # (28 px) 1.18×, ResNet-50 (64 px) 1.25× faster than NCHW.
    channels_last: bool = True
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)

    def validate(self) -> None:
        """Raise `ConfigError` for impossible settings."""
        checks = [
            (self.epochs >= 1, "train.epochs must be ≥ 1"),
            (self.batch_size >= 1, "train.batch_size must be ≥ 1"),
            (self.lr > 0, "train.lr must be > 0"),
            (0 <= self.momentum < 1, "train.momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "train.weight_decay must be ≥ 0"),
            (self.schedule in ("cosine", "step", "constant"),
             "train.schedule must be one of cosine, step, constant"),
            (0 <= self.warmup < 1, "train.warmup is a fraction of training in [0, 1)"),
            (all(0 < m < 1 for m in self.milestones), "train.milestones are fractions in (0, 1)"),
            (0 < self.lr_decay <= 1, "train.lr_decay must be in (0, 1]"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "train.device must be auto, cpu or cuda"),
            (self.eval_every >= 1, "train.eval_every must be ≥ 1"),
            (not self.nesterov or self.momentum > 0, "train.nesterov needs momentum > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (check your config or command line).")


@dataclass
class RunConfig:
    """Everything that defines one training run.

    Attributes:
        method: ``"none"`` (dense), a registered method name, or several joined by ``+``
            (e.g. ``"learndrop+dcp"``).
        method_args: per method name, its hyperparameters (fields of the method's dataclass).
        out_dir: parent folder of run folders.
        checkpoint_every: steps between checkpoints (0 = only at epoch ends).
        checkpoint_minutes: also checkpoint when this many minutes passed since the last one
            (0 = off); epoch ends are always checkpointed.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: str = "none"
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    out_dir: str = "runs"
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0

    def method_names(self) -> list[str]:
        return [] if self.method in ("", "none", "dense") else self.method.split("+")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of everything except the seed and output folder (open_lth style)."""
        d = self.to_dict()
        # How often to checkpoint does not change what is trained, so it is not in the digest
        # (a run resumed with another frequency stays in its folder).
        d.pop("seed"), d.pop("out_dir"), d.pop("checkpoint_every"), d.pop("checkpoint_minutes")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def run_dir(self) -> Path:
        label = "dense" if not self.method_names() else self.method
        return Path(self.out_dir) / (
            f"{self.data.dataset}-{self.model.name}-{label}-{self.digest()}"
        ) / f"seed{self.seed}"


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_TOP = {"method", "seed", "out_dir", "checkpoint_every", "checkpoint_minutes"}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{where}]; valid keys are: {', '.join(sorted(known))}."
        )
    return cls(**values)


def from_dict(d: dict[str, Any], method_fields: dict[str, set[str]] | None = None) -> RunConfig:
    """Build a `RunConfig` from a nested dict (TOML layout), rejecting unknown keys.

    Args:
        d: ``{"seed": 0, "method": "learndrop", "data": {...}, "train": {...}, "learndrop": {...}}``.
        method_fields: valid hyperparameter names per registered method, to check method tables.
    """
    method_fields = method_fields or {}
    kwargs: dict[str, Any] = {}
    method_args: dict[str, dict[str, Any]] = {}
    for key, value in d.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] must be a table of settings, got {value!r}.")
            kwargs[key] = _build(_SECTIONS[key], value, key)
        elif key in _TOP:
            kwargs[key] = value
        elif key == "method_args" and isinstance(value, dict):
            method_args.update(value)
        elif key in method_fields:
            method_args[key] = dict(value)
        else:
            valid = sorted([*_SECTIONS, *_TOP, *method_fields])
            raise ConfigError(f"unknown config key {key!r}; valid top-level keys: {', '.join(valid)}.")
    for name, args in method_args.items():
        if name not in method_fields:
            raise ConfigError(
                f"settings given for unknown method {name!r}; known methods: "
                f"{', '.join(sorted(method_fields)) or 'none'}."
            )
        unknown = sorted(set(args) - method_fields[name])
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown} for method {name!r}; valid: "
                f"{', '.join(sorted(method_fields[name]))}."
            )
    cfg = RunConfig(**kwargs, method_args=method_args)
    cfg.train.validate()
    every, minutes = cfg.checkpoint_every, cfg.checkpoint_minutes
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(
            "checkpoint_every must be a whole number of steps ≥ 0 (0: epoch ends only)."
        )
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 <= minutes < 1e9:
        raise ConfigError("checkpoint_minutes must be a number of minutes ≥ 0 (0: off).")
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path given to --config.")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML ({e}); fix the syntax.") from e
