"""Training checkpoints that survive any interruption: safetensors + JSON, written atomically.

A checkpoint in a run folder is a pair of files:

* ``checkpoint-<step>.safetensors``: every tensor: the model's state dict (``model/…``), the
  optimizer's state (``optim/<slot>/<key>``), method tensors (DCP utilities and selections,
  Learn&Drop score snapshots), the epoch's running loss and the torch RNG states (uint8).
* ``checkpoint.json``: everything else: the architecture (`leantrain.models.files.architecture`: dropped
  units and kept channel indices), where training stands (step, epoch, batch), the optimizer's
  hyperparameters and which model parameter each optimizer slot holds (by name), the methods'
  plain values, cost and time totals, the history and events so far, Python/NumPy RNG states,
  and the tensor file's name, size and sha256.

The JSON is the commit record and is written last: a new tensor file gets a new name, then
``checkpoint-prev.json`` is pointed at the last good checkpoint, then ``checkpoint.json`` at the
new one, each with `leantrain.atomic.write_atomic` (temporary file, fsync, rename, fsync). Whenever the process dies, at least
one of the two JSON files names a complete, verified checkpoint; tensor files that neither names
are removed after each save. Loading checks size and sha256 and falls back to the previous
checkpoint with a warning; the JSON's fields are checked one by one (an edited record fails with
a sentence naming the field). Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from ..atomic import write_atomic
from ..cost import CostMeter
from ..methods.base import Method
from ..models.files import ModelFileError, apply_architecture, architecture, load_state
from ..structure.surgery import repoint_optimizer
from .timing import Stopwatch
from .trainstate import TrainState

__all__ = [
    "FORMAT",
    "LATEST",
    "PREVIOUS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointWriteError",
    "Checkpointer",
    "TrainState",
    "has_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "remove_checkpoints",
    "snapshot",
]

FORMAT = "leantrain-checkpoint/1"
LATEST = "checkpoint.json"
PREVIOUS = "checkpoint-prev.json"
_TENSOR_GLOB = "checkpoint-*.safetensors"


class CheckpointError(ValueError):
    """No usable checkpoint: missing, truncated, corrupt, or written for another run."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, unwritable folder); the last one is intact."""


class CheckpointFallbackWarning(UserWarning):
    """The latest checkpoint was unusable and the previous one was loaded instead."""


# What to do about a checkpoint that cannot be used.
_FIX = "resume from the previous checkpoint (checkpoint-prev.json) or train again without --resume."


# ---------------------------------------------------------------------------------- (de)serialise


def _flatten(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
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
        return {k: _flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} in a checkpoint.")


def _unflatten(obj: Any, tensors: dict[str, Tensor], device: torch.device | None) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            t = tensors[obj["__tensor__"]]
            return t.to(device) if device is not None else t
        return {k: _unflatten(v, tensors, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, device) for v in obj]
    return obj


def _rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    cuda = 0
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state.cpu()
            cuda += 1
    np_state = np.random.get_state()
    return {
        "python": _flatten(random.getstate(), "rng/python", tensors),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "cuda_devices": cuda,
    }


def _set_rng_state(meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda = int(meta.get("cuda_devices", 0))
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == cuda:
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(cuda)])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_state(
    opt: torch.optim.Optimizer, model: nn.Module, tensors: dict[str, Tensor]
) -> dict[str, Any]:
    names = {id(p): n for n, p in model.named_parameters()}
    sd = opt.state_dict()  # state keyed by slot: the position over all groups' params
    params = []
    for group in opt.param_groups:
        missing = [i for i, p in enumerate(group["params"]) if id(p) not in names]
        if missing:
            raise ValueError(
                "the optimizer holds parameters that are not in the model; after a cut, call "
                "change.apply_to(optimizer) so it follows the live parameters."
            )
        params.append([names[id(p)] for p in group["params"]])
    return {
        "class": type(opt).__name__,
        "params": params,
        "groups": [
            _flatten({k: v for k, v in g.items() if k != "params"}, f"optim_group/{i}", tensors)
            for i, g in enumerate(sd["param_groups"])
        ],
        "state": {
            str(slot): _flatten(state, f"optim/{slot}", tensors)
            for slot, state in sd["state"].items()
        },
    }


def _load_optimizer_state(
    opt: torch.optim.Optimizer, model: nn.Module, meta: dict[str, Any], tensors: dict[str, Tensor],
    path: Path,
) -> None:
    if meta["class"] != type(opt).__name__:
        raise CheckpointError(
            f"checkpoint {path} holds {meta['class']} state but the optimizer is "
            f"{type(opt).__name__}; resume with the same optimizer."
        )
    if len(meta["params"]) != len(opt.param_groups):
        raise CheckpointError(
            f"the optimizer in checkpoint {path} has {len(meta['params'])} parameter groups but "
            f"this one has {len(opt.param_groups)}; resume with the same optimizer."
        )
    named = dict(model.named_parameters())
    for names in meta["params"]:
        unknown = [n for n in names if n not in named]
        if unknown:
            raise CheckpointError(
                f"the optimizer in checkpoint {path} refers to parameters {unknown[:3]} that the "
                f"rebuilt model lacks, so the file was edited or belongs to another model; {_FIX}"
            )
    # The groups at the live (rebuilt) parameters in the saved order, so the slots of the saved
    # state line up with them; `load_state_dict` then copies the state over.
    repoint_optimizer(opt, model, meta["params"], trainable_only=False)  # clears its state
    slot = 0
    groups = []
    for names, hyper in zip(meta["params"], meta["groups"]):
        slots = list(range(slot, slot + len(names)))
        groups.append({**_unflatten(hyper, tensors, None), "params": slots})
        slot += len(names)
    state = {int(k): _unflatten(v, tensors, None) for k, v in meta["state"].items()}
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"the optimizer state in checkpoint {path} does not fit the model "
            f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); {_FIX}"
        ) from e
    for param, saved in opt.state.items():  # slots renamed in the JSON would pair wrong shapes
        for key, value in saved.items():
            if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                raise CheckpointError(
                    f"the optimizer state in checkpoint {path} has a {key} of shape "
                    f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)}; {_FIX}"
                )


def snapshot(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    methods: Sequence[Method],
    state: TrainState,
    *,
    clock: Stopwatch,
    cost: CostMeter,
    total_steps: int,
    steps_per_epoch: int,
    train_config: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Everything a resumed `fit()` needs, as (tensors, JSON metadata)."""
    tensors: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = v.detach().to("cpu", copy=True).contiguous()
    loss_sum = state.loss_sum if state.loss_sum is not None else torch.zeros(())
    tensors["train/loss_sum"] = loss_sum.detach().to("cpu", copy=True).reshape(())
    meta = {
        "format": FORMAT,
        "architecture": architecture(model),
        "step": state.step,
        "epoch": state.epoch,
        "batch": state.batch,
        "version": state.version,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "optimizer": _optimizer_state(optimizer, model, tensors),
        "methods": [
            {"name": m.name, "state": _flatten(m.state_dict(), f"method/{i}", tensors)}
            for i, m in enumerate(methods)
        ],
        "cost": cost.state_dict(),
        "clock": clock.state_dict(),
        "first_loss": state.first_loss,
        "history": state.history,
        "events": state.events,
        "rng": _rng_state(tensors),
        "train_config": train_config or {},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return tensors, meta


# -------------------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """A verified checkpoint read from disk.

    Attributes:
        path: its JSON file.
        meta: the JSON record.
        tensors: every tensor, on the CPU.
        problems: why newer checkpoints were skipped (empty unless it is a fallback).
    """

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Tensor]
    problems: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        """Optimizer steps done when it was written."""
        return int(self.meta["step"])

    @property
    def extra(self) -> dict[str, Any]:
        """What the writer added (the runner: the run's config and its digest)."""
        return dict(self.meta.get("extra") or {})

    def restore_model(self, model: nn.Module) -> None:
        """Cut a fresh model to the saved architecture, in place, and load the saved weights."""
        try:
            apply_architecture(model, self.meta["architecture"])
        except ModelFileError as e:
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: {e}") from e
        prefix = "model/"
        state = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        try:
            load_state(model, state)  # with the modules' versions, which safetensors drops
        except RuntimeError as e:
            raise CheckpointError(
                f"the weights in checkpoint {self.path} do not match its architecture "
                f"({str(e).splitlines()[0][:200]}); the checkpoint is corrupt."
            ) from e

    def check_compatible(
        self,
        total_steps: int,
        steps_per_epoch: int,
        methods: Sequence[Method],
        config: dict[str, Any] | None = None,
    ) -> None:
        """Raise `CheckpointError` unless this run is the checkpoint's run.

        The step plan and the methods must match; when both this run and the checkpoint's
        writer give a run config (`RunConfig.to_dict()`), so must its data, model, method,
        seed, epochs and batch size (the learning rate may change: that is how a diverged run
        is continued).
        """
        saved_config = self.extra.get("config")
        # The settings are named when the writer's config is there (the runner's); fit() alone
        # knows only the step plan and the methods, checked below either way.
        if isinstance(saved_config, dict) and config is not None:
            self._check_config(saved_config, config)
        saved = (int(self.meta["total_steps"]), int(self.meta["steps_per_epoch"]))
        if saved != (total_steps, steps_per_epoch):
            raise CheckpointError(
                f"checkpoint {self.path} was written for {saved[0]} steps of {saved[1]} per epoch "
                f"but this run has {total_steps} of {steps_per_epoch}; resume with the same "
                "epochs, batch size and training subset."
            )
        names = [m["name"] for m in self.meta["methods"]]
        if names != [m.name for m in methods]:
            raise CheckpointError(
                f"checkpoint {self.path} was written with methods {names or ['none']} but this run "
                f"uses {[m.name for m in methods] or ['none']}; resume with the same --method."
            )

    def _check_config(self, saved: dict[str, Any], config: dict[str, Any]) -> None:
        fields = [("data", k) for k in ("dataset", "train_subset", "test_subset", "image_size")]
        fields += [("model", "name"), ("train", "epochs"), ("train", "batch_size")]
        differ = [
            f"{a}.{b}" for a, b in fields
            if (saved.get(a) or {}).get(b) != (config.get(a) or {}).get(b)
        ]
        differ += [k for k in ("method", "seed") if saved.get(k) != config.get(k)]
        if differ:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to a run with another {', '.join(differ)}; a run "
                "continues only with the same data, model, method, seed, epochs and batch size."
            )

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        methods: Sequence[Method],
        *,
        clock: Stopwatch,
        cost: CostMeter,
        total_steps: int,
        steps_per_epoch: int,
        config: dict[str, Any] | None = None,
    ) -> TrainState:
        """The one resume path: check the run (`check_compatible`), then restore everything.

        Cuts `model` (fresh from `create_model`, already on its device) to the saved
        architecture and loads its weights, points `optimizer` at the live parameters and gives
        it the saved state, then restores the methods (before their `setup`), cost and time
        totals and the RNG states.

        Returns:
            Where training stands, with the epoch's running loss on the model's device.

        Raises:
            CheckpointError: another run's checkpoint, or saved state that does not fit.
        """
        self.check_compatible(total_steps, steps_per_epoch, methods, config)
        self.restore_model(model)
        device = next(model.parameters()).device
        _load_optimizer_state(optimizer, model, self.meta["optimizer"], self.tensors, self.path)
        try:
            for method, saved in zip(methods, self.meta["methods"]):
                method.load_state_dict(_unflatten(saved["state"], self.tensors, device))
            cost.load_state_dict(self.meta["cost"])
            clock.load_state_dict(self.meta["clock"])
            _set_rng_state(self.meta["rng"], self.tensors)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            # `read_checkpoint` checked the record's shape; what is left is state a method or
            # meter refuses, which only an edited or foreign file holds.
            raise CheckpointError(
                f"checkpoint {self.path} holds state that cannot be restored ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); {_FIX}"
            ) from e
        first = self.meta.get("first_loss")
        return TrainState(
            step=self.step,
            epoch=int(self.meta["epoch"]),
            batch=int(self.meta["batch"]),
            version=int(self.meta.get("version", 0)),
            loss_sum=self.tensors["train/loss_sum"].to(device),
            first_loss=float(first) if first is not None else None,
            history=list(self.meta["history"]),
            events=list(self.meta["events"]),
        )


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


def _record_problem(meta: dict[str, Any], tensors: dict[str, Tensor]) -> str | None:
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


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is unusable ({why})")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify one checkpoint (its JSON file and the tensor file it names).

    Raises:
        CheckpointError: missing, truncated, corrupt or not a leantrain checkpoint.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise _corrupt(path, "the file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _corrupt(path, f"not a {FORMAT} record")
    info = meta.get("tensors") or {}
    name = str(info.get("file", ""))
    if not name or Path(name).name != name:  # a bare file name: never read outside the folder
        raise _corrupt(path, "it names no tensor file")
    tensor_path = path.parent / name
    try:
        data = tensor_path.read_bytes()
    except OSError as e:
        raise _corrupt(path, f"its tensor file {name} cannot be read: {e.strerror or e}") from None
    if len(data) != info.get("bytes"):
        raise _corrupt(path, f"{name} is truncated: {len(data)} of {info.get('bytes')} bytes")
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise _corrupt(path, f"{name} does not match its sha256, so it is corrupt")
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise _corrupt(path, f"{name} is not a valid safetensors file: {e}") from None
    required = ["architecture", "step", "epoch", "batch", "optimizer", "methods", "cost", "clock",
                "history", "events", "rng", "total_steps", "steps_per_epoch"]
    missing = [k for k in required if k not in meta]
    if missing or "rng/torch_cpu" not in tensors or "train/loss_sum" not in tensors:
        raise _corrupt(path, f"the record lacks {missing or 'some tensors'}")
    if problem := _record_problem(meta, tensors):
        raise _corrupt(path, problem)
    return Checkpoint(path=path, meta=meta, tensors=tensors)


def has_checkpoint(folder: str | Path) -> bool:
    """True when `folder` holds a checkpoint record (usable or not)."""
    folder = Path(folder)
    return (folder / LATEST).is_file() or (folder / PREVIOUS).is_file()


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The latest usable checkpoint of a run folder (or the given ``checkpoint*.json`` file).

    Falls back to ``checkpoint-prev.json`` with a `CheckpointFallbackWarning` when the latest is
    truncated or corrupt.

    Raises:
        CheckpointError: no checkpoint there, or none usable; the message says which and why.
    """
    path = Path(path)
    if path.is_file():
        candidates = [path]
        folder = path.parent
    else:
        folder = path
        candidates = [p for p in (folder / LATEST, folder / PREVIOUS) if p.exists()]
        if not candidates:
            raise CheckpointError(
                f"{folder} holds no checkpoint ({LATEST}); check the folder, or run without "
                "--resume to start training from the beginning."
            )
    problems: list[str] = []
    for candidate in candidates:
        try:
            ckpt = read_checkpoint(candidate)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            ckpt.problems = problems
            warnings.warn(
                f"{problems[0]}; falling back to the previous checkpoint (step {ckpt.step}).",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        return ckpt
    if path.is_file() and path.name != PREVIOUS and (folder / PREVIOUS).is_file():
        fix = f"resume from {folder / PREVIOUS} instead, or train again without --resume."
    else:
        fix = "delete the folder and train again without --resume."
    raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(problems)}; {fix}")


def remove_checkpoints(folder: str | Path) -> None:
    """Delete a run folder's checkpoint files (after the run finished and saved its model)."""
    folder = Path(folder)
    for p in (folder / LATEST, folder / PREVIOUS, *folder.glob(_TENSOR_GLOB)):
        p.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------- writing


# The one place checkpoint bytes hit the disk (fault-injection tests replace it).
_write_file = write_atomic


class Checkpointer:
    """Decides when to checkpoint and writes checkpoints into a run folder, atomically.

    Args:
        folder: the run folder.
        every_steps: also checkpoint every N optimizer steps (0: only at epoch ends).
        every_minutes: also checkpoint when this many minutes passed since the last one (0: off).
        extra: JSON-able values stored with every checkpoint (the runner stores the config).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        folder: str | Path,
        every_steps: int = 0,
        every_minutes: float = 0.0,
        extra: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_steps < 0 or every_minutes < 0 or not math.isfinite(every_minutes):
            raise ValueError(
                "checkpoint_every and checkpoint_minutes must be ≥ 0 (0 turns them off)."
            )
        self.folder = Path(folder)
        self.every_steps = int(every_steps)
        self.every_minutes = float(every_minutes)
        self.extra = dict(extra or {})
        self.clock = clock
        self.last_step: int | None = None  # step of the last good checkpoint, None before one
        self.last_folder: Path | None = None  # where it is (another run's, after --resume-from)
        self._last_time = clock()
        self._good: tuple[str, str] | None = None  # (JSON text, tensor file) of the last good one
        self._previous: tuple[str, str] | None = None  # the one before it, while on disk
        self._previous_step: int | None = None

    def resumed_from(self, ckpt: Checkpoint) -> None:
        """Treat `ckpt` (the checkpoint a run resumed from) as the last good checkpoint."""
        self.last_step = ckpt.step
        self.last_folder = ckpt.path.parent
        if ckpt.path.parent.resolve() == self.folder.resolve():
            self._good = (json.dumps(ckpt.meta), ckpt.meta["tensors"]["file"])

    def discard_last(self) -> None:
        """Withdraw the checkpoint just written: the step after it showed its state diverged.

        ``checkpoint.json`` points at the one before again (or is removed when there was none),
        so neither ``--resume`` nor the divergence advice ever names the bad state.
        """
        if self._good is None:
            return
        bad = self.folder / self._good[1]
        if self._previous is not None:
            _write_file(self.folder / LATEST, self._previous[0].encode())
        else:
            (self.folder / LATEST).unlink(missing_ok=True)
        (self.folder / PREVIOUS).unlink(missing_ok=True)
        bad.unlink(missing_ok=True)
        self._good, self._previous = self._previous, None
        self.last_step, self._previous_step = self._previous_step, None
        self.last_folder = self.folder if self._good is not None else None

    def due(self, step: int) -> bool:
        """Whether a periodic (mid-epoch) checkpoint is due after optimizer step `step`."""
        if step == self.last_step:
            return False
        if self.every_steps and step % self.every_steps == 0:
            return True
        elapsed = self.clock() - self._last_time
        return bool(self.every_minutes) and elapsed >= 60 * self.every_minutes

    def save(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
        """Write one checkpoint; the previous good one stays usable until this one is complete.

        Raises:
            CheckpointWriteError: the folder is full or unwritable; one sentence, and the last
                good checkpoint is untouched.
        """
        step = int(meta["step"])
        name = f"checkpoint-{step:09d}.safetensors"
        created: Path | None = None
        target: Path | None = None
        try:
            data = save_safetensors_bytes(tensors)
            meta = {**meta, "extra": self.extra, "tensors": {
                "file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            }}
            text = json.dumps(meta, default=float)
            self.folder.mkdir(parents=True, exist_ok=True)
            created = self.folder / name
            target = created
            _write_file(created, data)
            target = self.folder / PREVIOUS
            if self._good is not None:
                _write_file(target, self._good[0].encode())
            else:  # a stale record from an earlier attempt must not outlive its tensor file
                target.unlink(missing_ok=True)
            target = self.folder / LATEST
            _write_file(target, text.encode())
        except OSError as e:
            keep = {self._good[1]} if self._good else set()
            if created is not None and created.name not in keep:
                # Clean-up must not replace the error the user needs (a read-only folder
                # refuses the unlink too).
                with contextlib.suppress(OSError):
                    created.unlink(missing_ok=True)
            where = (
                f"the last good checkpoint (step {self.last_step}) is intact, so continue with "
                "--resume" if self.last_step is not None else "no checkpoint was written yet"
            )
            error = CheckpointWriteError(
                f"could not write a checkpoint to {target or self.folder} ({e.strerror or e}); "
                f"free disk space or make the folder writable ({where})."
            )
            error.errno = e.errno
            raise error from e
        keep = {name} | ({self._good[1]} if self._good else set())
        for stale in self.folder.glob(_TENSOR_GLOB):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        self._previous, self._previous_step = self._good, self.last_step
        if self._previous is None:
            self._previous_step = None  # a resumed-from checkpoint of another folder
        self._good = (text, name)
        self.last_step = step
        self.last_folder = self.folder
        self._last_time = self.clock()
        return self.folder / LATEST

