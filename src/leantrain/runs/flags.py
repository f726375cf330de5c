"""Command-line flags generated from the configuration dataclasses, and a `RunConfig` from them.

Every field of `DataConfig`, `TrainConfig` and every registered method becomes a flag
(``--epochs``, ``--dcp.p``), its help taken from the class docstring's ``Args:`` entries or the
field's inline comment, so the CLI can never offer a setting the configuration lacks or miss one
it has. Flags override a TOML file given with ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any

from ..config import (
    ConfigError, DataConfig, TrainConfig, field_types, load_toml, merge, split_method,
)
from .config import RunConfig, from_dict
from .recipes import recipe_help, with_default_recipe

__all__ = ["add_config_flags", "add_dataclass_flags", "collect_overrides", "config_from_args"]

_SEP = "::"  # argparse dest: "<section>::<field>", so the flags map back onto the TOML layout


def _flag_kwargs(tp: Any) -> dict[str, Any]:
    """argparse settings for a field of (resolved) annotation `tp`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        return {"type": inner if inner in (int, float) else str, "nargs": "+"}
    return {"type": tp if tp in (int, float) else str}


def _field_help(cls: type) -> dict[str, str]:
    """Help text per field: the class docstring's ``Args:`` entries and inline ``# comments``."""
    helps: dict[str, str] = {}
    doc = inspect.getdoc(cls) or ""
    for match in re.finditer(r"^\s{4}(\w+): (.+?)(?=^\s{4}\w+: |\Z)", doc.split("Args:")[-1], re.M | re.S):
        helps[match.group(1)] = " ".join(match.group(2).split())
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return helps
    for match in re.finditer(r"^\s+(\w+): [^=\n]+=.*?#\s*(.+)$", source, re.M):
        helps.setdefault(match.group(1), match.group(2).strip())
    # A field without an inline comment: the comment lines just above it.
    for match in re.finditer(r"((?:^[ \t]+#.*\n)+)[ \t]+(\w+): [^=\n]+=", source, re.M):
        lines = [line.strip().lstrip("#").strip() for line in match.group(1).splitlines()]
        helps.setdefault(match.group(2), " ".join(lines))
    return helps


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, section: str, prefix: str = ""
) -> None:
    """One flag per field of dataclass `cls`: ``--{prefix}{field}``, stored as ``section::field``."""
    title = f"{section} settings" + (f" (--{prefix}FIELD, also in a [{section}] TOML table)" if prefix else "")
    group = parser.add_argument_group(title)
    helps = _field_help(cls)
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name not in types_:
            continue
        kwargs = _flag_kwargs(types_[f.name])
        flags = [f"--{prefix}{f.name.replace('_', '-')}"]
        if prefix and "_" in f.name:
            flags.append(f"--{prefix}{f.name}")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        if "action" not in kwargs:
            kwargs["metavar"] = f.name.upper()
        kwargs.update(f.metadata.get("flag", {}))  # a field's own argparse settings
        if section == "train" and (per_model := recipe_help(f.name)):
            default = f"per model, {per_model}"
        group.add_argument(
            *flags, dest=f"{section}{_SEP}{f.name}", default=argparse.SUPPRESS,
            help=f"{helps.get(f.name, '')} (default: {default})".strip().replace("%", "%%"),
            **kwargs,
        )


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Every `RunConfig` setting as a flag, plus ``-c/--config`` for a TOML file."""
    from ..methods import METHODS

    parser.add_argument("-c", "--config", help="TOML config file; flags override it")
    parser.add_argument("--model", dest=f"model{_SEP}name", default=argparse.SUPPRESS, metavar="NAME",
                        help="a registered name (see `leantrain cost --list`), torchvision:NAME or "
                        "package.module:factory (default: vgg11); factory arguments go in the "
                        "TOML table [model.kwargs]")
    parser.add_argument("--init", dest=f"model{_SEP}init", default=argparse.SUPPRESS,
                        metavar="PATH", help="start from these weights (fine-tuning): a leantrain "
                        "model file or a PyTorch state-dict file (.pt/.pth, read with "
                        "weights_only=True); layers whose shapes differ, such as a classifier for "
                        "another number of classes, are re-initialised and listed")
    parser.add_argument("--init-skip", dest=f"model{_SEP}init_skip", nargs="+",
                        default=argparse.SUPPRESS, metavar="PATTERN",
                        help="parameter names (glob, e.g. 'fc.*') to leave as initialised, "
                        "whether the --init file has them or not")
    parser.add_argument("--method", dest=f"top{_SEP}method", default=argparse.SUPPRESS,
                        metavar="METHOD", help=f"none, {', '.join(sorted(METHODS))}, or several "
                        "joined by '+' (default: none)")
    parser.add_argument("--seed", dest=f"top{_SEP}seed", type=int, default=argparse.SUPPRESS,
                        metavar="N", help="seeds model init, data order and subsets (default: 0)")
    parser.add_argument("--out-dir", dest=f"top{_SEP}out_dir", default=argparse.SUPPRESS,
                        metavar="DIR", help="parent folder of run folders (default: runs)")
    parser.add_argument("--checkpoint-every", dest=f"top{_SEP}checkpoint_every", type=int,
                        metavar="STEPS", default=argparse.SUPPRESS,
                        help="also checkpoint every N steps (default: 0, epoch ends only)")
    parser.add_argument("--checkpoint-minutes", dest=f"top{_SEP}checkpoint_minutes", type=float,
                        metavar="MIN", default=argparse.SUPPRESS,
                        help="also checkpoint every N minutes (default: 0, off)")
    add_dataclass_flags(parser, DataConfig, "data")
    add_dataclass_flags(parser, TrainConfig, "train")
    for name, cls in sorted(METHODS.items()):
        add_dataclass_flags(parser, cls, name, prefix=f"{name}.")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, in the TOML layout: ``{"seed": 1, "train": {"lr": 0.05}, "dcp": {...}}``."""
    nested: dict[str, Any] = {}
    for key, value in vars(args).items():
        if _SEP in key:
            section, name = key.split(_SEP, 1)
            if section == "top":
                nested[name] = value
            else:
                nested.setdefault(section, {})[name] = value
    return nested


def _check_method_flags(overrides: dict[str, Any], method: Any) -> None:
    """Flags of a method that is not in use are an error: they would silently do nothing."""
    from ..methods import METHODS

    if not isinstance(method, str):
        return  # from_dict names the bad value
    names = split_method(method)
    for section, values in overrides.items():
        if section in METHODS and section not in names:
            flags = ", ".join(f"--{section}.{k.replace('_', '-')}" for k in values)
            verb, them = ("was", "the flag") if len(values) == 1 else ("were", "the flags")
            in_use = "+".join(names) or "none"
            raise ConfigError(
                f"{flags} {verb} given but {section} is not among the methods in use ({in_use}); "
                f"add it with --method {'+'.join([*names, section])} or drop {them}."
            )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The resolved `RunConfig` of a ``train`` command line: its TOML file, then its flags."""
    source = str(args.config) if args.config else None
    base = load_toml(args.config) if args.config else {}
    overrides = collect_overrides(args)
    merged = merge(base, overrides, source)
    _check_method_flags(overrides, merged.get("method", "none"))
    # The model family's recipe fills the train fields that neither the TOML nor a flag sets.
    return from_dict(with_default_recipe(merged), source=source)
