"""The checkpoint format: its names and errors, and how values become JSON plus tensors
(`flatten`/`unflatten`) and how the RNG states are kept."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor



FORMAT = "leantrain-checkpoint/1"
LATEST = "checkpoint.json"
PREVIOUS = "checkpoint-prev.json"
TENSOR_GLOB = "checkpoint-*.safetensors"


class CheckpointError(ValueError):
    """No usable checkpoint: missing, truncated, corrupt, or written for another run."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, unwritable folder); the last one is intact."""


class CheckpointFallbackWarning(UserWarning):
    """The latest checkpoint was unusable and the previous one was loaded instead."""


# What to do about a checkpoint that cannot be used.
FIX = "resume from the previous checkpoint (checkpoint-prev.json) or train again without --resume."




def flatten(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able copy of `obj`, with tensors moved into `tensors` and replaced by references."""
    if isinstance(obj, Tensor):
        key = prefix
        n = 1
        while key in tensors:  # never overwrite: two paths can flatten to one name
            key, n = f"{prefix}#{n}", n + 1
        # A private contiguous CPU copy: safetensors refuses tensors that share storage.
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"state at {prefix!r} has non-string keys {bad[:3]}; use string keys.")
        return {k: flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} in a checkpoint.")


def unflatten(obj: Any, tensors: dict[str, Tensor], device: torch.device | None) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            t = tensors[obj["__tensor__"]]
            return t.to(device) if device is not None else t
        return {k: unflatten(v, tensors, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors, device) for v in obj]
    return obj


def rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    cuda = 0
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state.cpu()
            cuda += 1
    np_state = np.random.get_state()
    return {
        "python": flatten(random.getstate(), "rng/python", tensors),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "cuda_devices": cuda,
    }


def set_rng_state(meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = int(meta.get("cuda_devices", 0))
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == cuda:
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(cuda)])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
