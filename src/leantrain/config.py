"""The settings' dataclasses every layer reads: data, model and training recipe, and the type
checks, TOML reading and merging that turn a file or flags into them.

`leantrain.runs.config.RunConfig` puts them together with the methods and their settings; this
module imports nothing of leantrain (nor torch; a run that compiles checks its backend with
`leantrain.compiled`, on the same floor), so the training loop, the methods and the command line
all read the same `TrainConfig` without climbing a layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "ConfigError",
    "load_toml",
    "merge",
    "split_method",
    "as_table",
    "field_default",
    "check_fields",
    "field_types",
    "coerce_value",
    "describe_type",
    "toml_repr",
]


SCHEDULES = ("cosine", "linear", "step", "constant")


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
    """Which model to build.

    Args:
        name: a registered name (``leantrain cost --list``), ``torchvision:NAME`` (e.g.
            ``torchvision:resnet50``) or ``package.module:factory`` for your own factory function.
        kwargs: keyword arguments for a torchvision model or your factory (TOML table
            ``[model.kwargs]``); ``num_classes`` comes from the data set.
    """

    name: str = "vgg11"
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Weights to start from (fine-tuning): a leantrain model file or a PyTorch state-dict file
    # (.pt/.pth, read with weights_only=True). Layers whose shapes differ (a new classifier) are
    # re-initialised; the file's sha256, not its path, is part of the run's identity.
    init: str | None = None
    # Parameter names (glob patterns, e.g. "fc.*") left as initialised although the init file
    # has them or lacks them.
    init_skip: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """The training recipe. The LR is a pure function of progress (see `leantrain.training.fit.lr_at`)."""

    epochs: int = 10
    # Fraction of `epochs` actually trained (Li et al., "Budgeted Training", arXiv 1905.04753):
    # the run trains `run_epochs` = round(budget × epochs) epochs and every landmark that is a
    # fraction of training (warm-up, milestones, the schedule's end, the methods' timings) stays
    # a fraction of the shortened run. 1 = the full recipe.
    budget: float = 1.0
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | linear (to 0, Li et al.) | step | constant
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
    # torch.compile the model for training with this backend (--compile alone: inductor); the
    # methods keep it compiled as it shrinks (leantrain.compiled). None: eager.
    compile: str | None = field(default=None, metadata={
        "flag": {"nargs": "?", "const": "inductor", "metavar": "BACKEND"}})
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    # Fine-tuning: the learning rate of the layers --init re-initialised (the new head) is
    # lr × head_lr_mult; the pretrained body trains at lr.
    head_lr_mult: float = 1.0
    # Fine-tuning: keep BN's running statistics as loaded (BN layers in eval mode while training;
    # their scale and shift still train).
    freeze_bn: bool = False
    # Parameter names (glob patterns) that do not train: ["conv1.*", "layer*"] trains the head
    # only, ["conv1.*", "layer1.*"] freezes the first stage (the fine-tuner's simple speed-ups).
    freeze: list[str] = field(default_factory=list)
    # Data that arrive in sequence: the training split comes in `stream` equal chunks, each
    # trained for `epochs` (× budget) epochs with its own LR schedule, then evaluated.
    stream: int = 1
    # With the earlier chunks: each epoch draws a chunk's worth of images from every chunk so
    # far (same cost per chunk); without (default), only the newest chunk is trained on.
    stream_replay: bool = False

    def validate(self) -> None:
        """Raise `ConfigError` for impossible settings."""
        checks = [
            (self.epochs >= 1, "train.epochs must be ≥ 1"),
            (0 < self.budget <= 1, "train.budget is the fraction of the epochs trained, in (0, 1]"),
            (self.batch_size >= 1, "train.batch_size must be ≥ 1"),
            (self.lr > 0, "train.lr must be > 0"),
            (0 <= self.momentum < 1, "train.momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "train.weight_decay must be ≥ 0"),
            (self.schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup < 1, "train.warmup is a fraction of training in [0, 1)"),
            (all(0 < m < 1 for m in self.milestones), "train.milestones are fractions in (0, 1)"),
            (0 < self.lr_decay <= 1, "train.lr_decay must be in (0, 1]"),
            (0 <= self.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "train.device must be auto, cpu or cuda"),
            (self.threads is None or self.threads >= 1,
             "train.threads must be ≥ 1, or left out for torch's default"),
            (self.eval_every >= 1, "train.eval_every must be ≥ 1"),
            (not self.nesterov or self.momentum > 0, "train.nesterov needs momentum > 0"),
            (self.head_lr_mult > 0, "train.head_lr_mult must be > 0 (1: the head at lr)"),
            (self.stream >= 1, "train.stream is a number of chunks ≥ 1 (1: all data at once)"),
            (self.stream > 1 or not self.stream_replay,
             "train.stream_replay needs train.stream ≥ 2 chunks"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (check your config or command line).")
        if self.compile is not None:
            from .compiled import backend_problem  # imports torch: only for a run that compiles

            if problem := backend_problem(self.compile):
                raise ConfigError(f"train.compile: {problem}")

    @property
    def run_epochs(self) -> int:
        """Epochs this run trains: ``budget × epochs``, rounded half up (0.75 × 30 = 23), ≥ 1."""
        # Half up rather than Python's round-half-even, so a budget never rounds down to an
        # even count by accident (0.45 × 30 = 13.5 → 14, 0.75 × 30 = 22.5 → 23).
        return max(1, math.floor(self.budget * self.epochs + 0.5 + 1e-9))

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: `run_epochs` per chunk of the stream (one chunk: all data)."""
        return self.run_epochs * self.stream


# ------------------------------------------------------------------------------- type checks


def toml_repr(value: Any) -> str:
    """A value as it would be written in TOML (close enough for messages)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def describe_type(tp: Any) -> str:
    """What a value of annotation `tp` must be, in words."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{describe_type(inner[0])} or left out"
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return {int: "a list of whole numbers", float: "a list of numbers",
                str: "a list of strings"}.get(inner, "a list")
    if typing.get_origin(tp) is dict:
        return "a table of settings"
    return {bool: "true or false", int: "a whole number", float: "a finite number",
            str: "a string"}.get(tp, f"of type {getattr(tp, '__name__', tp)}")


def coerce_value(value: Any, tp: Any) -> tuple[bool, Any]:
    """(fits, value as stored): `value` against annotation `tp`; an int for a float becomes a
    float, so ``lr = 1`` and ``lr = 1.0`` are one setting (and one run identity)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return True, None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce_value(value, inner[0]) if len(inner) == 1 else (True, value)
    if origin is dict:
        return isinstance(value, dict), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        (inner,) = typing.get_args(tp) or (Any,)
        out = [coerce_value(v, inner) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if tp is bool:  # True is an int in Python, but `epochs = true` is a mistake, not 1 epoch
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (ok and math.isfinite(value)), (float(value) if ok else value)
    if tp is str:
        return isinstance(value, str), value
    return True, value  # Any, or a type the configs do not use


def field_types(cls: type) -> dict[str, Any]:
    """Settable fields of dataclass `cls` and their annotations, resolved to types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (its factory called), for messages and flag help."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def check_fields(
    cls: type, values: Mapping[str, Any], section: str, source: str | None = None
) -> dict[str, Any]:
    """`values` checked against dataclass `cls`: no unknown key, every value of its field's type.

    Args:
        cls: the dataclass (a config section or a method).
        values: settings given for it.
        section: its name in messages (``train``, ``dcp``).
        source: where the values came from (a file name), for messages.

    Returns:
        The values, ints given for float fields turned into floats.
    """
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown and section in SECTIONS:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]; valid keys are: {', '.join(sorted(types_))}."
        )
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} for method {section!r}; valid: {', '.join(sorted(types_))}."
        )
    defaults = {f.name: field_default(f) for f in dataclasses.fields(cls)}
    out = {}
    for name, value in values.items():
        ok, out[name] = coerce_value(value, types_[name])
        if not ok:
            where = f" in {source}" if source else ""
            example = defaults[name]
            hint = "" if example is None or example == [] else f", e.g. {name} = {toml_repr(example)}"
            raise ConfigError(
                f"{section}.{name} = {toml_repr(value)}{where} must be {describe_type(types_[name])}{hint}."
            )
    return out


# The run's sections (TOML tables) that these dataclasses are read from.
SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


# -------------------------------------------------------------------------------- helpers


def split_method(method: str) -> list[str]:
    """Method names of a ``method`` setting: ``"none"``/``"dense"`` → [], ``"a+b"`` → [a, b]."""
    names = [n.strip() for n in method.split("+")]
    return [] if names in ([""], ["none"], ["dense"]) else names


def as_table(key: str, value: Any, source: str | None) -> dict[str, Any]:
    """`value`, which must be a TOML table of settings (else a `ConfigError` naming `key`)."""
    if not isinstance(value, dict):
        where = f" in {source}" if source else ""
        raise ConfigError(
            f"{key} = {toml_repr(value)}{where} must be a table of settings; put them under a "
            f"[{key}] header."
        )
    return value


def merge(base: dict[str, Any], over: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """`over` (e.g. command-line flags) laid over `base` (e.g. a TOML file), table by table.

    A value of `base` that should be a table but is not is an error rather than overwritten, so
    ``train = 5`` in a file is reported even when flags set train settings.
    """
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict):
            out[k] = merge(as_table(k, out[k], source) if k in out else {}, v, source)
        else:
            out[k] = v
    return out


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
    except UnicodeDecodeError:  # tomllib reads text: a binary or non-UTF-8 file fails to decode
        raise ConfigError(
            f"config file {path} is not UTF-8 text, so it cannot be TOML; save it as UTF-8."
        ) from None
