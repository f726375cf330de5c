"""Save and load (possibly scaled-down) models without pickling: safetensors + architecture JSON.

The architecture is the registry name and constructor arguments, the units Learn&Drop dropped (in
order) and the live width of every prunable channel set. Loading rebuilds that architecture from
the registry and loads the weights, so no code is ever unpickled from a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from .atomic import write_atomic
from .registry import create_model
from .structure import channel_sets_of, example_shape, set_example_input
from .surgery import drop_units, prune_channels

__all__ = [
    "architecture",
    "apply_architecture",
    "build_architecture",
    "save_model",
    "save_weights",
    "load_model",
    "read_model_metadata",
    "ModelFileError",
]

FORMAT = "leantrain-model/1"


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt or not a leantrain model."""


def architecture(model: nn.Module) -> dict[str, Any]:
    """JSON-serialisable description from which `build_architecture` rebuilds the model's shape.

    Keys: ``format``; ``arch`` (registry name and constructor arguments); ``dropped_units`` (in
    order); ``widths`` (live width of every prunable channel set); ``surgery``, every cut in order
    (``{"op": "drop", "name", "kind"}`` or ``{"op": "prune", "keep": {set: kept indices}}``).
    """
    if reason := getattr(model, "external_surgery", None):
        raise TypeError(f"this model's architecture cannot be described ({reason}); save its weights only.")
    widths = {s.name: len(s) for s in channel_sets_of(model)}
    return {
        "format": FORMAT,
        "arch": dict(getattr(model, "arch", None) or _unnamed_arch(model)),
        "dropped_units": list(getattr(model, "dropped_units", [])),
        "widths": widths,
        "surgery": list(getattr(model, "surgery_log", [])),
    }


def _unnamed_arch(model: nn.Module) -> dict[str, Any]:
    """A model built without a name (a user's instance): its class and input shape, for checks;
    it is rebuilt from a fresh instance the caller gives (`load_model(path, model=...)`)."""
    shape = example_shape(model)
    return {"name": None, "class": type(model).__qualname__,
            "input_shape": None if shape is None else list(shape)}


def apply_architecture(model: nn.Module, desc: dict[str, Any]) -> None:
    """Cut `model`, fresh from `create_model` with the same ``arch``, to the described shape.

    In place, so a caller's model object (already on its device) can be resumed. The weights of
    the cut model are meaningless until a state dict is loaded. A model that already has the
    described shape is left as it is.

    Raises:
        ModelFileError: the description is not a leantrain architecture, was written for another
            model, or cannot be replayed on this one.
    """
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise ModelFileError(f"not a leantrain architecture (format {got!r}, expected {FORMAT!r}).")
    saved = desc.get("arch") if isinstance(desc.get("arch"), dict) else {}
    if saved.get("name") is None and not hasattr(model, "arch"):  # a fresh instance of a user's class
        if saved.get("class") != type(model).__qualname__:
            raise ModelFileError(
                f"the file holds a {saved.get('class')}, but the model given is a "
                f"{type(model).__qualname__}; pass a fresh instance of the saved class."
            )
        if example_shape(model) is None and saved.get("input_shape"):
            set_example_input(model, saved["input_shape"])
        arch = saved
    else:
        arch = dict(getattr(model, "arch", {}))
    if arch != desc.get("arch"):
        raise ModelFileError(
            f"the saved architecture is {desc.get('arch')}, but the model given is "
            f"{arch or 'not from create_model()'}; build the model with the same name, classes, "
            "channels and input size."
        )
    current = architecture(model)
    if all(current[k] == desc.get(k, current[k]) for k in ("dropped_units", "widths", "surgery")):
        return
    if current["surgery"] or current["dropped_units"]:
        raise ValueError("apply_architecture() needs a freshly created, uncut model.")
    try:
        if "surgery" in desc:
            for entry in desc["surgery"]:
                if entry["op"] == "drop":
                    projection = entry.get("kind") == "projection"
                    drop_units(model, [entry["name"]], include_downsampling=projection)
                elif entry["op"] == "prune":
                    keep = {k: torch.tensor(v, dtype=torch.long) for k, v in entry["keep"].items()}
                    prune_channels(model, keep)
                else:
                    raise ValueError(f"unknown surgery op {entry['op']!r}")
        else:  # files written before the surgery log: all drops, then the final widths
            for unit in desc["dropped_units"]:
                projection = unit.get("kind") == "projection"
                drop_units(model, [unit["name"]], include_downsampling=projection)
            sets = {s.name: len(s) for s in channel_sets_of(model)}
            keep = {
                name: torch.arange(width) for name, width in desc["widths"].items()
                if name in sets and width < sets[name]
            }
            if keep:
                prune_channels(model, keep)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(
            f"the saved architecture cannot be rebuilt ({e}); the file is corrupt or from another "
            "version."
        ) from e
    if architecture(model)["widths"] != desc["widths"]:
        raise ModelFileError(
            "the saved architecture is inconsistent (its channel widths do not match its cuts); "
            "the file is corrupt."
        )


def build_architecture(desc: dict[str, Any]) -> nn.Module:
    """A freshly initialised model with the described architecture (drops and widths applied)."""
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise ModelFileError(f"not a leantrain architecture (format {got!r}, expected {FORMAT!r}).")
    if isinstance(desc.get("arch"), dict) and desc["arch"].get("name", "") is None:
        raise ModelFileError(
            f"the file holds a {desc['arch'].get('class')} that was not built by name, so it "
            "cannot be rebuilt alone; pass a fresh instance: load_model(path, model=YourModel())."
        )
    if not isinstance(desc.get("arch"), dict) or not isinstance(desc["arch"].get("name"), str):
        raise ModelFileError(
            f"the saved architecture {desc.get('arch')!r} is not a table of a model name and its "
            "arguments; the file is corrupt or was not written by leantrain."
        )
    try:
        arch = dict(desc["arch"])
        model = create_model(arch.pop("name"), **arch)
    except (KeyError, TypeError) as e:
        raise ModelFileError(
            f"the saved architecture {desc.get('arch')!r} is incomplete ({e}); the file is corrupt."
        ) from e
    apply_architecture(model, desc)
    return model


def _canonical(data: bytes) -> bytes:
    """`data` (a safetensors file) with its metadata in sorted key order.

    safetensors keeps the metadata in a hash map, so the same model saved twice (in two
    processes) gets its header keys in a different order; sorting makes identical models give
    byte-identical files (and equal checksums).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _save_tensors(path: Path, model: nn.Module, meta: dict[str, str]) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_atomic(path, _canonical(save_safetensors(tensors, metadata=meta)))


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors) with the architecture JSON in the file's metadata, atomically."""
    meta = {"leantrain_arch": json.dumps(architecture(model))}
    if metadata:
        meta["leantrain_meta"] = json.dumps(metadata)
    return _save_tensors(Path(path), model, meta)


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the weights alone (safetensors, atomically), for models `architecture` cannot describe.

    `load_model` refuses such a file (no architecture); load it into a model of the same shape
    with ``model.load_state_dict(safetensors.torch.load_file(path))``.
    """
    return _save_tensors(Path(path), model, {"leantrain_meta": json.dumps(metadata or {})})


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The architecture JSON stored in a leantrain safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; check the path.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"model file {path} is truncated or corrupt ({e}); re-export it.") from e
    if "leantrain_arch" not in meta:
        raise ModelFileError(f"{path} is a safetensors file without a leantrain architecture; save it with leantrain.save_model().")
    try:
        return json.loads(meta["leantrain_arch"])
    except json.JSONDecodeError as e:
        raise ModelFileError(
            f"model file {path} has a corrupt architecture record ({e}); re-export it."
        ) from e


def load_model(
    path: str | Path, device: str | torch.device = "cpu", model: nn.Module | None = None
) -> nn.Module:
    """Rebuild the saved architecture and load its weights (no unpickling).

    Args:
        path: a file written by `save_model`.
        device: where the weights go.
        model: a fresh instance to cut and fill, for a model that was not built by name (a
            user's own class instance); models built by name are rebuilt without it.
    """
    path = Path(path)
    desc = read_model_metadata(path)
    if model is None:
        model = build_architecture(desc)
    else:
        apply_architecture(model, desc)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"model file {path} is truncated or corrupt ({e}); re-export it.") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"weights in {path} do not match its architecture ({str(e)[:200]}).") from e
    return model.to(device)
