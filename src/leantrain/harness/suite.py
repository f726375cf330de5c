"""Benchmark suites: TOML grids of data sets × models × methods × seeds, parsed into runs.

A suite is a TOML file (``src/leantrain/harness/suites/<name>.toml``, or any path) with

* ``seeds`` and an optional ``[defaults]`` table in the `RunConfig` layout (``train``/``data``
  tables) applied to every run;
* ``[recipe.<dataset>]``: the data and training settings of each data set
  (``data = {train_subset = 2000}``, ``train = {epochs = 3, lr = 0.1}``);
* ``[methods]``: label → ``{method = "dcp", args = {dcp = {p = 0.5}}}`` (``method = "none"`` is
  the dense baseline; ``"learndrop+dcp"`` composes), with an optional ``train`` table for settings
  that belong to the row, e.g. ``"dense-b0.5" = {method = "none", train = {budget = 0.5}}``;
* ``[[grid]]`` entries: ``datasets``, ``models``, ``methods`` (labels from ``[methods]`` or inline
  ``{label, method, args}`` tables), and optional ``seeds``, ``data``, ``train`` and
  ``method_args`` overrides for that entry.

Settings merge in that order (defaults → recipe → grid entry → method). For each (grid entry,
data set, model, seed) the dense runs come first and the method runs follow back to back, so a
method and its baseline meet the same machine load. Every run's configuration is validated when
the suite is loaded, before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import (
    ConfigError, coerce_value, describe_type, load_toml, merge, split_method, toml_repr,
)
from ..runs.config import RunConfig, from_dict

__all__ = ["BenchRun", "Suite", "load_suite", "suite_names"]


@dataclass(frozen=True)
class BenchRun:
    """One run of a suite: its method label and full configuration."""

    suite: str
    label: str
    config: RunConfig

    @property
    def name(self) -> str:
        """``dataset/model/label/seedN``, what ``--only`` matches and progress lines show."""
        c = self.config
        return f"{c.data.dataset}/{c.model.name}/{self.label}/seed{c.seed}"

    @property
    def key(self) -> str:
        """Identity in the results file: a changed config (digest) is a new run."""
        return f"{self.suite}|{self.name}|{self.config.digest()}"


@dataclass(frozen=True)
class Suite:
    """A parsed suite file: its name, source path and runs in execution order."""

    name: str
    path: Path
    description: str
    runs: list[BenchRun]


def suite_names() -> list[str]:
    """Suites shipped with leantrain."""
    folder = resources.files("leantrain.harness") / "suites"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _suite_path(suite: str) -> Path:
    path = Path(suite)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"suite file {path} does not exist.")
        return path
    shipped = resources.files("leantrain.harness") / "suites" / f"{suite}.toml"
    if not shipped.is_file():
        raise ConfigError(
            f"unknown suite {suite!r}; choose one of {', '.join(suite_names())} or give a "
            ".toml path."
        )
    return Path(str(shipped))


# The suite file's own fields, their types and an example of each for messages. Tables hold
# `RunConfig` settings, which `from_dict` checks field by field once they are merged.
_SUITE_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (str, 'name = "quick"'),
    "description": (str, 'description = "two models, two data sets"'),
    "seeds": (list[int], "seeds = [0, 1]"),
    "defaults": (dict, "[defaults] with train = { threads = 2 }"),
    "recipe": (dict, "[recipe.cifar10] with train = { epochs = 3 }"),
    "methods": (dict, '[methods] with dense = { method = "none" }'),
    "grid": (list, '[[grid]] with datasets = ["cifar10"]'),
}
_GRID_FIELDS: dict[str, tuple[Any, str]] = {
    "datasets": (list[str], 'datasets = ["cifar10"]'),
    "models": (list[str], 'models = ["resnet20"]'),
    "methods": (list, 'methods = ["dense", "dcp-p0.5"]'),
    "seeds": (list[int], "seeds = [0, 1]"),
    "data": (dict, "data = { train_subset = 2000 }"),
    "model": (dict, 'model = { init = "source.safetensors", init_skip = ["fc.*"] }'),
    "train": (dict, "train = { epochs = 3 }"),
    "method_args": (dict, "method_args = { dcp = { warmup = 0.1 } }"),
}


def _check(value: Any, tp: Any, where: str, key: str, example: str) -> None:
    """`value` of suite field `key` has type `tp` (``dict``: a table), else one sentence."""
    ok = isinstance(value, dict) if tp is dict else (
        isinstance(value, list) if tp is list else coerce_value(value, tp)[0]
    )
    if not ok:
        what = {dict: "a table", list: "a list"}.get(tp) or describe_type(tp)
        raise ConfigError(f"{where}: {key} = {toml_repr(value)} must be {what}, e.g. {example}.")


def _check_tables(doc: dict[str, Any], where: str) -> None:
    """Tables of tables: each recipe and its sections, the defaults' sections, each [methods]
    entry (the settings inside are `from_dict`'s to check, once merged)."""
    for key, value in doc.get("methods", {}).items():
        _check(value, dict, where, f"methods.{key}", 'dense = { method = "none" }')
    for key, value in doc.get("recipe", {}).items():
        _check(value, dict, where, f"recipe.{key}", f"[recipe.{key}] with train = {{ epochs = 3 }}")
    tables = {"defaults": doc.get("defaults", {}),
              **{f"recipe.{k}": v for k, v in doc.get("recipe", {}).items()}}
    for prefix, table in tables.items():
        for section in ("data", "model", "train", "method_args"):
            if section in table:
                _check(table[section], dict, where, f"{prefix}.{section}",
                       f"{section} = {{ ... }} inside [{prefix}]")


def _method_spec(
    entry: Any, library: dict[str, Any], where: str
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    if isinstance(entry, str):
        if entry not in library:
            raise ConfigError(
                f"{where}: method label {entry!r} is not in [methods] "
                f"({', '.join(library) or 'empty'})."
            )
        label, spec = entry, library[entry]
    elif isinstance(entry, dict) and "label" in entry:
        label, spec = entry["label"], entry
    else:
        raise ConfigError(f"{where}: a method is a label or a {{label, method, args}} table.")
    unknown = set(spec) - {"label", "method", "args", "train"}
    if unknown or "method" not in spec:
        raise ConfigError(
            f"{where}: method {label!r} needs `method` (and optional `args`, `train`); "
            f"unknown keys {sorted(unknown)}."
        )
    _check(label, str, where, "label", 'label = "dcp-p0.5"')
    _check(spec["method"], str, f"{where}, method {label!r}", "method", 'method = "dcp"')
    args = spec.get("args", {})
    _check(args, dict, f"{where}, method {label!r}", "args", "args = { dcp = { p = 0.5 } }")
    train = spec.get("train", {})
    _check(train, dict, f"{where}, method {label!r}", "train", "train = { budget = 0.5 }")
    return label, spec["method"], dict(args), dict(train)


def load_suite(
    suite: str | Path, seeds: list[int] | None = None, out_dir: str | None = None
) -> Suite:
    """Parse and validate a suite; every run's config is checked before anything trains.

    Args:
        suite: a shipped suite name (see `suite_names`) or a path to a TOML file.
        seeds: override the suite's seeds.
        out_dir: parent of the run folders (default ``runs/bench/<suite>``).
    """
    path = _suite_path(str(suite))
    doc = load_toml(path)
    unknown = sorted(set(doc) - set(_SUITE_FIELDS))
    if unknown:
        raise ConfigError(
            f"suite file {path}: unknown key(s) {unknown}; valid keys are: "
            f"{', '.join(_SUITE_FIELDS)}."
        )
    for key, value in doc.items():
        tp, example = _SUITE_FIELDS[key]
        _check(value, tp, f"suite file {path}", key, example)
    _check_tables(doc, f"suite file {path}")
    name = doc.get("name", path.stem)
    library = doc.get("methods", {})
    recipes = doc.get("recipe", {})
    defaults = doc.get("defaults", {})
    if not doc.get("grid"):
        raise ConfigError(f"suite {path} has no [[grid]] entry.")
    runs: list[BenchRun] = []
    for g, entry in enumerate(doc["grid"], 1):
        where = f"suite file {path}, [[grid]] #{g}"
        _check(entry, dict, f"suite file {path}", f"grid #{g}", '[[grid]] with datasets = ["cifar10"]')
        unknown = sorted(set(entry) - set(_GRID_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}.")
        for key, value in entry.items():
            _check(value, _GRID_FIELDS[key][0], where, key, _GRID_FIELDS[key][1])
        specs = [_method_spec(m, library, where) for m in entry.get("methods", [])]
        # Dense first, so its time is taken right before the methods it is compared with.
        specs.sort(key=lambda s: s[1] not in ("none", "dense"))
        for dataset in entry.get("datasets", []):
            for model in entry.get("models", []):
                for seed in (
                    seeds if seeds is not None else entry.get("seeds", doc.get("seeds", [0]))
                ):
                    for label, method, args, train in specs:
                        names = split_method(method)
                        extra = {
                            k: v for k, v in entry.get("method_args", {}).items() if k in names
                        }
                        try:
                            d = merge(defaults, recipes.get(dataset, {}))
                            d = merge(d, {"data": entry.get("data", {}),
                                          "model": entry.get("model", {}),
                                          "train": entry.get("train", {})})
                            d = merge(
                                d,
                                {
                                    "data": {"dataset": dataset},
                                    "model": {"name": model},
                                    "train": train,
                                    "method": method,
                                    "method_args": merge(args, extra),
                                    "seed": int(seed),
                                    "out_dir": out_dir or f"runs/bench/{name}",
                                },
                            )
                            cfg = from_dict(d)
                        except ConfigError as e:
                            raise ConfigError(f"{where}, {dataset}/{model}/{label}: {e}") from None
                        runs.append(BenchRun(name, label, cfg))
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[0]
        raise ConfigError(
            f"suite {name}: run {dup.split('|')[1]} appears twice; give it another label."
        )
    return Suite(name, path, doc.get("description", ""), runs)
