"""The checks of a checkpoint's JSON record, field by field: an edited or corrupt record fails
with a sentence naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

from torch import Tensor


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_refs(obj: Any) -> list[str]:
    """Every tensor name that a flattened record refers to."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return [str(obj["__tensor__"])]
        return [ref for v in obj.values() for ref in _tensor_refs(v)]
    if isinstance(obj, list):
        return [ref for v in obj for ref in _tensor_refs(v)]
    return []


def record_problem(meta: dict[str, Any], tensors: dict[str, Tensor]) -> str | None:
    """Why the record's fields cannot be restored (an edited or foreign file), or None.

    The sha256 covers the tensor file only, so the JSON is checked field by field here: a
    resume must fail with a sentence naming the field, not with a traceback halfway through.
    """
    def bad(name: str, expected: str) -> str:
        shown = json.dumps(meta.get(name), default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return f"its field {name!r} is {shown} but should be {expected}"

    for name in ("step", "epoch", "batch", "total_steps", "steps_per_epoch"):
        if not _is_count(meta[name]):
            return bad(name, "a whole number ≥ 0")
    if "version" in meta and not _is_count(meta["version"]):
        return bad("version", "a whole number ≥ 0")
    spe = meta["steps_per_epoch"]
    if spe == 0 or meta["batch"] >= spe or meta["step"] != meta["epoch"] * spe + meta["batch"] \
            or meta["step"] > meta["total_steps"]:
        return bad("step", f"epoch × steps_per_epoch + batch (≤ {meta['total_steps']})")
    if meta.get("first_loss") is not None and not (
        isinstance(meta["first_loss"], (int, float)) and math.isfinite(meta["first_loss"])
    ):
        return bad("first_loss", "a finite number or null")
    for name in ("architecture", "cost", "clock"):
        if not isinstance(meta[name], dict):
            return bad(name, "a JSON object")
    for name in ("history", "events"):
        if not isinstance(meta[name], list) or not all(isinstance(r, dict) for r in meta[name]):
            return bad(name, "a list of JSON objects")
    rng = meta["rng"]
    if not (isinstance(rng, dict) and isinstance(rng.get("python"), list)
            and len(rng["python"]) == 3 and isinstance(rng.get("numpy"), list)
            and len(rng["numpy"]) == 5):
        return bad("rng", "the saved Python and NumPy RNG states")
    opt = meta["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("class"), str)
            and isinstance(opt.get("params"), list)
            and all(isinstance(g, list) and all(isinstance(n, str) for n in g)
                    for g in opt["params"])
            and isinstance(opt.get("groups"), list) and len(opt["groups"]) == len(opt["params"])
            and all(isinstance(g, dict) for g in opt["groups"])
            and isinstance(opt.get("state"), dict)):
        return bad("optimizer", "the optimizer's class, parameter names, groups and state")
    slots = sum(len(g) for g in opt["params"])
    if not all(k.isdigit() and int(k) < slots and isinstance(v, dict)
               for k, v in opt["state"].items()):
        return bad("optimizer", f"state for parameter slots 0…{slots - 1}")
    methods = meta["methods"]
    if not isinstance(methods, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and "state" in m for m in methods
    ):
        return bad("methods", "a list of {name, state} records")
    for name in ("optimizer", "methods", "rng"):
        if missing := [ref for ref in _tensor_refs(meta[name]) if ref not in tensors]:
            return f"its field {name!r} names tensor {missing[0]!r}, which its tensor file lacks"
    return None
