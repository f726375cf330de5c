"""A run's whole configuration: `RunConfig` (data, model, recipe, methods and their settings,
seed) and `from_dict`, which reads it from TOML's layout with every key and type checked.

A run is read from TOML with `tomllib`, overridden by command-line flags generated from the same
dataclass fields (`leantrain.runs.flags`), checked against the fields' types, validated, and
written back to the run folder. The configuration is *resolved*: ``method_args`` holds every
field of every method in use, its defaults filled in, so ``config.json`` records what ran and
`RunConfig.digest` (the run's identity) changes when a default does, while two commands that mean
the same run share it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    SECTIONS, ConfigError, DataConfig, ModelConfig, TrainConfig, as_table, check_fields, coerce_value,
    describe_type, field_default, field_types, split_method, toml_repr,
)
from ..methods import METHODS

__all__ = ["DIGEST_NEUTRAL", "RunConfig", "file_identity", "from_dict",
           "method_args_without_neutral", "without_neutral"]


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
    registry = METHODS
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
        d["method_args"] = method_args_without_neutral(d["method_args"])
        d["train"] = without_neutral(d["train"], TRAIN_DIGEST_NEUTRAL)
        d["model"] = without_neutral(d["model"], MODEL_DIGEST_NEUTRAL)
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
    ("dcp", "export_at"): None,
}
# The same for training settings: a full budget is what every run did before `budget` existed.
TRAIN_DIGEST_NEUTRAL: dict[str, Any] = {"budget": 1.0, "head_lr_mult": 1.0, "freeze_bn": False,
                                         "freeze": [], "stream": 1, "stream_replay": False,
                                         "compile": None}
MODEL_DIGEST_NEUTRAL: dict[str, Any] = {"init": None, "init_skip": []}


def without_neutral(table: dict[str, Any], neutral: dict[str, Any]) -> dict[str, Any]:
    """`table` without the settings at their neutral value (what runs did before the setting
    existed): the run's identity (`RunConfig.digest`) and a benchmark recipe leave them out."""
    return {k: v for k, v in table.items() if k not in neutral or neutral[k] != v}


def method_args_without_neutral(method_args: dict[str, dict[str, Any]]
                                ) -> dict[str, dict[str, Any]]:
    """Each method's settings without those at their `DIGEST_NEUTRAL` value: the run's identity
    and the report's pairing of runs that differ only in schedule leave them out alike."""
    return {method: {k: v for k, v in args.items()
                     if (method, k) not in DIGEST_NEUTRAL or DIGEST_NEUTRAL[(method, k)] != v}
            for method, args in method_args.items()}

_TOP = {f.name: f for f in dataclasses.fields(RunConfig)}
_TOP_KEYS = {"method", "seed", "out_dir", "checkpoint_every", "checkpoint_minutes"}


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
    registry = METHODS
    kwargs: dict[str, Any] = {}
    method_args: dict[str, dict[str, Any]] = {}
    top_types = field_types(RunConfig)
    for key, value in d.items():
        if key in SECTIONS:
            section = SECTIONS[key]
            kwargs[key] = section(**check_fields(section, as_table(key, value, source), key,
                                                 source))
        elif key in _TOP_KEYS:
            ok, kwargs[key] = coerce_value(value, top_types[key])
            if not ok:
                where = f" in {source}" if source else ""
                example = toml_repr(field_default(_TOP[key]))
                raise ConfigError(
                    f"{key} = {toml_repr(value)}{where} must be {describe_type(top_types[key])}, "
                    f"e.g. {key} = {example}."
                )
        elif key == "method_args":
            for name, args in as_table(key, value, source).items():
                method_args.setdefault(name, {}).update(
                    as_table(f"method_args.{name}", args, source))
        elif key in registry:
            method_args.setdefault(key, {}).update(as_table(key, value, source))
        else:
            valid = sorted([*SECTIONS, *_TOP_KEYS, *registry])
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


