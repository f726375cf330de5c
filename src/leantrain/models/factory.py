"""The model zoo's factory: ``MODELS`` and `create_model`, in the style of timm's model registry.

A model family registers one factory per architecture name with ``@MODELS.register`` (importing
`leantrain.models` imports every family, so every name is there); callers
build a model with ``create_model("resnet56", num_classes=10)``. Every model built this way carries
``model.arch``, a plain JSON-serialisable dict from which `create_model` rebuilds the same
architecture (checkpoints store it next to the weights).

Models from elsewhere are named by reference, never unpickled:
  * ``"torchvision:resnet50"``: ``torchvision.models.get_model("resnet50", num_classes=…)``;
  * ``"package.module:factory"``: the user's own factory function, imported and called with the
    keyword arguments given (``num_classes`` too, when the factory takes it).

A name the user types is trusted. A name read from a model file is not: `check_file_reference`
lets a file name only leantrain's models and zoo models (`ZOOS`) with checked arguments, because a
``package.module:factory`` is an import and a call with the file's arguments (``os:system``).
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from typing import Any, Callable, NamedTuple

from torch import nn

from ..registry import Registry
from ..structure.record import record_arch

__all__ = [
    "MODELS", "ZOOS", "Zoo", "check_file_reference", "create_model", "list_models",
    "reference_kind",
]


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a class count is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return value


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered model, a torchvision model or a user's factory, and record ``model.arch``.

    Args:
        name: registry name, e.g. ``"resnet56"`` (see `list_models`), ``"torchvision:NAME"`` or
            ``"package.module:factory"``.
        num_classes: number of output classes (at least 2).
        in_channels: image channels, 1 (grey) or 3 (RGB).
        input_size: side of the square input in pixels (at least 8); some models adapt their
            stem or pooling to it.
        kwargs: extra keyword arguments for a torchvision model or a factory (JSON values).

    Returns:
        The model, with ``model.arch = {"name", "num_classes", "in_channels", "input_size"}``
        (plus ``"kwargs"`` when given), from which the same model can be built again.

    Raises:
        ValueError: for an unknown name, a factory that cannot be imported or fails (any
            exception, named in one sentence), or an invalid argument.
    """
    if _check_int("num_classes", num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    if _check_int("in_channels", in_channels) not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}.")
    if _check_int("input_size", input_size) < 8:
        raise ValueError(f"input_size must be at least 8 pixels, got {input_size}.")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"model kwargs must be a table of keyword arguments, got {kwargs!r}.")
    if ":" in name:
        model = _from_reference(name, num_classes, in_channels, dict(kwargs or {}))
    else:
        if kwargs:
            raise ValueError(
                f"model '{name}' is a leantrain model and takes no extra keyword arguments "
                f"({', '.join(sorted(kwargs))}); remove them."
            )
        factory = MODELS.get(name)
        model = factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    arch: dict[str, Any] = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": input_size,
    }
    if kwargs:
        arch["kwargs"] = dict(kwargs)
    record_arch(model, arch)
    return model


def _from_reference(
    ref: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    source, _, attr = ref.partition(":")
    if not source or not attr:
        raise ValueError(
            f"model reference {ref!r} is incomplete; write torchvision:NAME or package.module:factory."
        )
    if source in ZOOS:
        return ZOOS[source].build(attr, num_classes, in_channels, kwargs)
    factory = _import_factory(ref)
    params = _parameters(factory)
    takes_any = params is None or any(p.kind is p.VAR_KEYWORD for p in params.values())
    params = params or {}
    if "num_classes" in params or takes_any:
        kwargs.setdefault("num_classes", num_classes)
    if unknown := ([] if takes_any else sorted(set(kwargs) - set(params))):
        raise ValueError(
            f"{ref} takes no argument {', '.join(unknown)}; check the model keyword arguments."
        )
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"calling {ref} failed ({e}); check the model keyword arguments.") from None
    except Exception as e:  # noqa: BLE001 - the user's code: name its failure in one sentence
        raise ValueError(
            f"{ref} raised {type(e).__name__} ({_first_line(e)}); fix the factory or its keyword "
            "arguments."
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """`fn`'s parameters, or None when Python cannot tell (some builtins)."""
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or ["no detail"])[0][:200]


def _import_factory(ref: str) -> Callable[..., Any]:
    """The callable a ``package.module:factory`` reference names (importing its module)."""
    source, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(source)
    except ImportError as e:
        raise ValueError(
            f"cannot import {source!r} for model {ref!r} ({e}); check the module name and that "
            "it is on PYTHONPATH."
        ) from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed while importing
        raise ValueError(
            f"importing {source!r} for model {ref!r} raised {type(e).__name__} "
            f"({_first_line(e)}); fix that module."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{source} has no callable {attr!r}; name a factory function that builds the model.")
    return factory


# ------------------------------------------------------------------------------------ model zoos


class Zoo(NamedTuple):
    """A model zoo named as ``ZOO:NAME`` (e.g. ``torchvision:resnet18``).

    Attributes:
        build: ``build(name, num_classes, in_channels, kwargs)``, the model.
        check_file: ``check_file(name, kwargs)`` raises ValueError unless a model *file* may ask
            for this model: a name the zoo lists, keyword arguments its builder takes (JSON
            scalars and lists only) and no pretrained weights (the file holds the weights, and
            opening a file never downloads).
    """

    build: Callable[[str, int, int, dict[str, Any]], nn.Module]
    check_file: Callable[[str, dict[str, Any]], None]


def _torchvision_models(name: str) -> Any:
    try:
        models = importlib.import_module("torchvision.models")
    except Exception as e:  # ImportError, or a torchvision built for another torch
        raise ValueError(
            f"model 'torchvision:{name}' needs torchvision, which cannot be imported here ({e}); "
            "install the torchvision that matches your torch."
        ) from None
    if name not in models.list_models():
        raise ValueError(
            f"torchvision has no model {name!r}; choose one of torchvision.models.list_models()."
        )
    return models


def _build_torchvision(
    name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    models = _torchvision_models(name)
    if in_channels != 3:
        raise ValueError(
            f"torchvision models take RGB input, but this data has {in_channels} channel; "
            "use an RGB data set (cifar10, imagenette) or your own factory."
        )
    _check_weights(models, name, kwargs.get("weights"))
    try:
        return models.get_model(name, num_classes=num_classes, **kwargs)
    except Exception as e:  # noqa: BLE001 - bad kwargs, unknown weights, an offline download
        raise ValueError(
            f"building torchvision:{name} failed ({type(e).__name__}: {_first_line(e)}); check "
            "its keyword arguments ([model.kwargs])."
        ) from None


def _check_weights(models: Any, name: str, weights: Any) -> None:
    """Raise ValueError unless `weights` is None or names pretrained weights of model `name`."""
    if weights is None:
        return
    try:
        known = list(dict.fromkeys(["DEFAULT", *models.get_model_weights(name).__members__]))
    except Exception:  # noqa: BLE001 - a model without published weights
        known = []
    # Anything but a name (a number, true) is torchvision's deprecated "pretrained" switch, which
    # downloads and fails deep inside torch.load when offline.
    if not isinstance(weights, str) or weights.rpartition(".")[2] not in known:
        choices = f"one of {', '.join(known)}" if known else "nothing: it has none"
        raise ValueError(
            f"torchvision:{name} has no pretrained weights {weights!r}; set weights to {choices}, "
            "or leave it out for random initial weights."
        )


def _torchvision_parameters(models: Any, name: str) -> tuple[dict[str, inspect.Parameter], bool]:
    """The builder's parameters, plus its model class's when the builder passes ``**kwargs`` on;
    and whether any name goes (that class takes ``**kwargs`` too)."""
    builder = models.get_model_builder(name)
    try:
        signature = inspect.signature(builder, eval_str=True)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: read it unresolved
        signature = inspect.signature(builder)
    params = dict(signature.parameters)
    cls = signature.return_annotation
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()) or not isinstance(cls, type):
        return params, False  # without a class to look names up in, only the builder's own
    extra = dict(inspect.signature(cls.__init__).parameters)
    return {**params, **extra}, any(p.kind is p.VAR_KEYWORD for p in extra.values())


def _check_torchvision_file(name: str, kwargs: dict[str, Any]) -> None:
    _check_json_values(f"torchvision:{name}", kwargs)
    params, open_ = _torchvision_parameters(_torchvision_models(name), name)
    named = {k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if not open_ and (unknown := sorted(set(kwargs) - named - {"self"})):
        raise ValueError(f"torchvision:{name} takes no argument {', '.join(unknown)}")
    for key, param in params.items():
        # weights, weights_backbone, …: any of them set means a download, never right for a
        # file whose weights are in the file.
        value = kwargs.get(key, param.default)
        if key.startswith("weights") and value is not None and value is not param.empty:
            raise ValueError(f"torchvision:{name} with {key}={value!s} would download weights")


def _check_json_values(name: str, kwargs: dict[str, Any]) -> None:
    def plain(v: Any) -> bool:
        return v is None or isinstance(v, (bool, int, float, str)) or (
            isinstance(v, list) and all(plain(x) for x in v))

    if bad := sorted(k for k, v in kwargs.items() if not plain(v)):
        raise ValueError(f"{name} argument {', '.join(bad)} is not a number, string or list")


def _timm() -> Any:
    try:
        return importlib.import_module("timm")
    except Exception as e:  # ImportError, or a timm whose torchvision import fails
        raise ValueError(
            f"timm models need timm, which cannot be imported here ({_first_line(e)}); install "
            "it: pip install 'leantrain[timm]'."
        ) from None


def _timm_name(timm: Any, name: str) -> None:
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; choose one of timm.list_models().")


# timm.create_model arguments that load weights from the hub or a file: a model named in a run
# or a model file starts from its own weights (the file's, or `--init`), never a download.
_TIMM_LOADS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
               "cache_dir")


def _build_timm(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    timm = _timm()
    _timm_name(timm, name)
    if loads := [k for k in _TIMM_LOADS if kwargs.get(k)]:
        raise ValueError(
            f"timm:{name} with {loads[0]} would load weights from the hub or a file; leave it "
            "out and start from your weights with --init (or [model] init)."
        )
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)
    except Exception as e:  # noqa: BLE001 - bad kwargs
        raise ValueError(
            f"building timm:{name} failed ({type(e).__name__}: {_first_line(e)}); check its "
            "keyword arguments ([model.kwargs])."
        ) from None


def _check_timm_file(name: str, kwargs: dict[str, Any]) -> None:
    _check_json_values(f"timm:{name}", kwargs)
    _timm_name(_timm(), name)
    if loads := [k for k in _TIMM_LOADS if kwargs.get(k)]:
        raise ValueError(f"timm:{name} with {loads[0]}={kwargs[loads[0]]!s} would load weights")


# The zoos a model file may name, each with its own build and check.
ZOOS: dict[str, Zoo] = {
    "torchvision": Zoo(_build_torchvision, _check_torchvision_file),
    "timm": Zoo(_build_timm, _check_timm_file),
}


def reference_kind(name: str) -> str:
    """What a model name refers to: ``"leantrain"`` (a registered model), ``"zoo"``
    (``torchvision:NAME``, see `ZOOS`) or ``"factory"`` (``package.module:factory``, code that
    importing and calling runs)."""
    source, colon, _ = name.partition(":")
    if not colon:
        return "leantrain"
    return "zoo" if source in ZOOS else "factory"


def check_file_reference(name: str, kwargs: dict[str, Any] | None) -> None:
    """Raise ValueError unless a model file may ask for model `name` with `kwargs` by itself.

    A leantrain model may be named (it takes no keyword arguments), and a zoo model with
    arguments its builder takes and no pretrained weights. A ``package.module:factory`` is
    never allowed here: it runs code of the file's choosing (the caller allows it only when the
    user names the same factory). Nothing is imported but leantrain and the zoo.
    """
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"the arguments of {name} are not a table")
    kind = reference_kind(name)
    if kind == "factory":
        raise ValueError(f"{name} is code, which a file may not choose to run")
    if kind == "zoo":
        source, _, attr = name.partition(":")
        ZOOS[source].check_file(attr, dict(kwargs or {}))


def list_models(pattern: str | None = None) -> list[str]:
    """Public model names, sorted, optionally filtered by a shell-style pattern.

    The tiny test models (``test_resnet``, ``test_vgg``, …) are hidden: `create_model` builds
    them by name, but they are not listed.

    Args:
        pattern: e.g. ``"resnet*"``; None lists every public model.
    """
    names = MODELS.names()
    return names if pattern is None else fnmatch.filter(names, pattern)
