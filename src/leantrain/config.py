"""Run configuration: dataclasses whose fields are the hyperparameters, TOML files, CLI flags.

A run is described by one `RunConfig` (data, model, training recipe, methods and their
hyperparameters, seed). It is read from TOML with `tomllib`, overridden by command-line flags
generated from the same dataclass fields (`leantrain.config_flags`), checked against the fields'
types, validated, and written back to the run folder.

The configuration is *resolved*: ``method_args`` holds every field of every method in use, its
defaults filled in, so ``config.json`` records what ran and `RunConfig.digest` (the run's
identity) changes when a default does, while two commands that mean the same run share it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .registry import Registry  # imports torch; a config is read without it

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "RunConfig",
    "ConfigError",
    "load_toml",
    "from_dict",
    "merge",
    "split_method",
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
    """The training recipe. The LR is a pure function of progress (see `leantrain.train.lr_at`)."""

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


def _default(f: dataclasses.Field) -> Any:
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
    if unknown and section in _SECTIONS:
        raise ConfigError(
            f"unknown key(s) {unknown} in [{section}]; valid keys are: {', '.join(sorted(types_))}."
        )
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} for method {section!r}; valid: {', '.join(sorted(types_))}."
        )
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
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


# ------------------------------------------------------------------------------------ methods


def _registry() -> "Registry[type]":
    from .methods import METHODS  # lazily: methods import torch, reading a config need not

    return METHODS


def split_method(method: str) -> list[str]:
    """Method names of a ``method`` setting: ``"none"``/``"dense"`` → [], ``"a+b"`` → [a, b]."""
    names = [n.strip() for n in method.split("+")]
    return [] if names in ([""], ["none"], ["dense"]) else names


def _resolve_methods(method: Any, method_args: Any) -> tuple[str, dict[str, dict[str, Any]]]:
    """The normalised method setting and every used method's settings with defaults filled in.

    Each method is instantiated once, so its own checks (``dcp.p`` in [0, 1), ...) run when the
    configuration is read, not when training starts.
    """
    if not isinstance(method, str):
        raise ConfigError(f'method = {toml_repr(method)} must be a string, e.g. method = "dcp".')
    if not isinstance(method_args, dict) or not all(isinstance(v, dict) for v in method_args.values()):
        raise ConfigError(
            f"method_args = {toml_repr(method_args)} must be a table of tables of method settings, "
            'e.g. method_args = {dcp = {p = 0.5}}.'
        )
    registry = _registry()
    names = split_method(method)
    for name in names:
        if name not in registry:
            raise ConfigError(
                f"unknown method {name!r}; choose none or one of: {', '.join(sorted(registry))} "
                "(combine with '+')."
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"method {method!r} names a method twice; give each method once.")
    normalised = "+".join(names) or "none"
    for name in method_args:
        if name not in registry:
            raise ConfigError(
                f"settings given for unknown method {name!r}; known methods: "
                f"{', '.join(sorted(registry)) or 'none'}."
            )
        if name not in names:
            use = "+".join([*names, name])
            raise ConfigError(
                f"[{name}] settings were given but {name} is not among the methods in use "
                f'({normalised}); add it with method = "{use}" or remove the [{name}] table.'
            )
    resolved = {}
    for name in names:
        cls = registry[name]
        given = check_fields(cls, method_args.get(name, {}), name)
        try:
            instance = cls(**given)
        except ValueError as e:  # the method's own range checks; one sentence already
            raise ConfigError(str(e)) from None
        resolved[name] = {n: getattr(instance, n) for n in field_types(cls)}
    return normalised, resolved


# ---------------------------------------------------------------------------------- the run


@dataclass
class RunConfig:
    """Everything that defines one training run.

    On construction ``method`` is normalised (``"dense"`` → ``"none"``) and ``method_args`` is
    resolved: every field of every method in use, defaults filled in; settings of a method not
    in use are an error.

    Attributes:
        method: ``"none"`` (dense), a registered method name, or several joined by ``+``
            (e.g. ``"learndrop+dcp"``).
        method_args: per method in use, all its hyperparameters (fields of its dataclass).
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

    def __post_init__(self) -> None:
        self.method, self.method_args = _resolve_methods(self.method, self.method_args)

    def method_names(self) -> list[str]:
        return split_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of the resolved settings that decide what is trained (open_lth style).

        Left out: the seed (each seed is a subfolder), the output folder, how often to
        checkpoint (a run resumed with another frequency stays in its folder), and where the data
        lives and whether it may be downloaded (the same data set from another folder is the
        same run).
        """
        d = self.to_dict()
        for key in ("seed", "out_dir", "checkpoint_every", "checkpoint_minutes"):
            d.pop(key)
        d["data"].pop("data_dir"), d["data"].pop("download")
        for (method, key), before in DIGEST_NEUTRAL.items():
            args = d["method_args"].get(method, {})
            if key in args and args[key] == before:
                args.pop(key)
        for key, before in TRAIN_DIGEST_NEUTRAL.items():
            if d["train"].get(key) == before:
                d["train"].pop(key)
        for key, before in MODEL_DIGEST_NEUTRAL.items():
            if d["model"].get(key) == before:
                d["model"].pop(key)
        if d["model"].get("init") is not None:  # the weights, wherever the file lives
            d["model"]["init"] = file_identity(d["model"]["init"])
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    def run_dir(self) -> Path:
        label = "dense" if not self.method_names() else self.method
        # A model reference (torchvision:resnet18) names the folder without its colon, which
        # some file systems refuse.
        model = self.model.name.replace(":", "_")
        return Path(self.out_dir) / (
            f"{self.data.dataset}-{model}-{label}-{self.digest()}"
        ) / f"seed{self.seed}"


def file_identity(path: str) -> str:
    """``sha256:<hex>`` of the file at `path`: the same weights copied elsewhere are the same
    run. A file that cannot be read keeps its path (the run then fails with a clear error)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return str(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version: the digest is asked for several times per run."""
    del size, mtime_ns  # part of the cache key only
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return path


# Method settings added after runs were recorded, with the value that does what the method did
# before the setting existed: at that value a setting is left out of the digest, so those runs
# keep their identity (their folders resume, their result rows stay current) and can be set
# beside the new default.
DIGEST_NEUTRAL: dict[tuple[str, str], Any] = {
    ("learndrop", "peer_reference"): "max",
}
# The same for training settings: a full budget is what every run did before `budget` existed.
TRAIN_DIGEST_NEUTRAL: dict[str, Any] = {"budget": 1.0, "head_lr_mult": 1.0, "freeze_bn": False,
                                         "freeze": [], "stream": 1, "stream_replay": False}
MODEL_DIGEST_NEUTRAL: dict[str, Any] = {"init": None, "init_skip": []}

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_TOP = {f.name: f for f in dataclasses.fields(RunConfig)}
_TOP_KEYS = {"method", "seed", "out_dir", "checkpoint_every", "checkpoint_minutes"}


def _table(key: str, value: Any, source: str | None) -> dict[str, Any]:
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
            out[k] = merge(_table(k, out[k], source) if k in out else {}, v, source)
        else:
            out[k] = v
    return out


def from_dict(
    d: dict[str, Any], method_fields: Any = None, *, source: str | None = None
) -> RunConfig:
    """Build a resolved `RunConfig` from a nested dict (TOML layout), checking keys and types.

    Args:
        d: ``{"seed": 0, "method": "learndrop", "data": {...}, "train": {...}, "learndrop": {...}}``
            (method tables may also come under ``method_args``, as `RunConfig.to_dict` writes).
        method_fields: ignored; methods are looked up in `leantrain.methods.METHODS`. Kept so
            callers written for the older signature keep working.
        source: where `d` came from (a file name), named in messages.
    """
    del method_fields
    registry = _registry()
    kwargs: dict[str, Any] = {}
    method_args: dict[str, dict[str, Any]] = {}
    top_types = field_types(RunConfig)
    for key, value in d.items():
        if key in _SECTIONS:
            kwargs[key] = _SECTIONS[key](**check_fields(_SECTIONS[key], _table(key, value, source),
                                                        key, source))
        elif key in _TOP_KEYS:
            ok, kwargs[key] = coerce_value(value, top_types[key])
            if not ok:
                where = f" in {source}" if source else ""
                example = toml_repr(_default(_TOP[key]))
                raise ConfigError(
                    f"{key} = {toml_repr(value)}{where} must be {describe_type(top_types[key])}, "
                    f"e.g. {key} = {example}."
                )
        elif key == "method_args":
            for name, args in _table(key, value, source).items():
                method_args.setdefault(name, {}).update(_table(f"method_args.{name}", args, source))
        elif key in registry:
            method_args.setdefault(key, {}).update(_table(key, value, source))
        else:
            valid = sorted([*_SECTIONS, *_TOP_KEYS, *registry])
            raise ConfigError(f"unknown config key {key!r}; valid top-level keys: {', '.join(valid)}.")
    for name, args in method_args.items():  # types first, so the message can name the file
        if name in registry:
            method_args[name] = check_fields(registry[name], args, name, source)
    cfg = RunConfig(**kwargs, method_args=method_args)
    cfg.train.validate()
    if cfg.seed < 0:  # numpy's seeding would refuse it deep inside the data loading
        raise ConfigError(f"seed {cfg.seed} is negative; seeds are whole numbers ≥ 0 (--seed N).")
    if cfg.checkpoint_every < 0:
        raise ConfigError(
            "checkpoint_every must be a whole number of steps ≥ 0 (0: epoch ends only)."
        )
    if not 0 <= cfg.checkpoint_minutes < 1e9:
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
    except UnicodeDecodeError:  # tomllib reads text: a binary or non-UTF-8 file fails to decode
        raise ConfigError(
            f"config file {path} is not UTF-8 text, so it cannot be TOML; save it as UTF-8."
        ) from None
