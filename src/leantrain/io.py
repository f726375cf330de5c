"""Save and load (possibly scaled-down) models without pickling: safetensors + architecture JSON.

The architecture is the registry name and constructor arguments, the units Learn&Drop dropped (in
order) and the live width of every prunable channel set. Loading rebuilds that architecture from
the registry and loads the weights, so no code is ever unpickled from a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .registry import create_model
from .structure import Prunable
from .surgery import drop_units, prune_channels

__all__ = ["architecture", "build_architecture", "save_model", "load_model", "ModelFileError"]

FORMAT = "leantrain-model/1"


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt or not a leantrain model."""


def architecture(model: nn.Module) -> dict[str, Any]:
    """JSON-serialisable description from which `build_architecture` rebuilds the model's shape."""
    if not hasattr(model, "arch"):
        raise TypeError("only models made by leantrain.create_model() can be saved with their architecture.")
    widths = {}
    if isinstance(model, Prunable):
        widths = {s.name: len(s) for s in model.channel_sets()}
    return {
        "format": FORMAT,
        "arch": dict(model.arch),
        "dropped_units": list(getattr(model, "dropped_units", [])),
        "widths": widths,
    }


def build_architecture(desc: dict[str, Any]) -> nn.Module:
    """A freshly initialised model with the described architecture (drops and widths applied)."""
    if desc.get("format") != FORMAT:
        raise ModelFileError(f"not a leantrain architecture (format {desc.get('format')!r}, expected {FORMAT!r}).")
    arch = dict(desc["arch"])
    model = create_model(arch.pop("name"), **arch)
    for unit in desc["dropped_units"]:
        drop_units(model, [unit["name"]], include_downsampling=unit.get("kind") == "projection")
    sets = {s.name: len(s) for s in model.channel_sets()} if isinstance(model, Prunable) else {}
    keep = {
        name: torch.arange(width) for name, width in desc["widths"].items()
        if name in sets and width < sets[name]
    }
    if keep:
        prune_channels(model, keep)
    return model


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors) with the architecture JSON in the file's metadata, atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"leantrain_arch": json.dumps(architecture(model))}
    if metadata:
        meta["leantrain_meta"] = json.dumps(metadata)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


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
    return json.loads(meta["leantrain_arch"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the saved architecture and load its weights (no unpickling)."""
    path = Path(path)
    desc = read_model_metadata(path)
    model = build_architecture(desc)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"model file {path} is truncated or corrupt ({e}); re-export it.") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"weights in {path} do not match its architecture ({str(e)[:200]}).") from e
    return model.to(device)
