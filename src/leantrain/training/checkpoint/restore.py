"""Reading a checkpoint back: `load_checkpoint` (verified, falling back to the previous one) and
`Checkpoint.restore`, which cuts a fresh model to the saved architecture and restores the
weights, the optimizer, the methods, the clocks and the RNGs."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor, nn

from ...cost import CostMeter
from ...methods.base import Method
from ...models.files import ModelFileError, apply_architecture, load_state
from ...structure.surgery import repoint_optimizer
from ..timing import Stopwatch
from ..trainstate import TrainState
from .format import (
    FIX, FORMAT, LATEST, PREVIOUS, TENSOR_GLOB, CheckpointError, CheckpointFallbackWarning,
    set_rng_state, unflatten,
)
from .schema import record_problem

def load_optimizer_state(
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
                f"rebuilt model lacks, so the file was edited or belongs to another model; {FIX}"
            )
    # The groups at the live (rebuilt) parameters in the saved order, so the slots of the saved
    # state line up with them; `load_state_dict` then copies the state over.
    repoint_optimizer(opt, model, meta["params"], trainable_only=False)  # clears its state
    slot = 0
    groups = []
    for names, hyper in zip(meta["params"], meta["groups"]):
        slots = list(range(slot, slot + len(names)))
        groups.append({**unflatten(hyper, tensors, None), "params": slots})
        slot += len(names)
    state = {int(k): unflatten(v, tensors, None) for k, v in meta["state"].items()}
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"the optimizer state in checkpoint {path} does not fit the model "
            f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); {FIX}"
        ) from e
    for param, saved in opt.state.items():  # slots renamed in the JSON would pair wrong shapes
        for key, value in saved.items():
            if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                raise CheckpointError(
                    f"the optimizer state in checkpoint {path} has a {key} of shape "
                    f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)}; {FIX}"
                )




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
            self.check_run(config)
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

    def check_run(self, config: dict[str, Any]) -> None:
        """Raise `CheckpointError` unless the run `config` describes (`RunConfig.to_dict()`) has
        the data, model, method, seed, epochs and batch size of the checkpoint's writer (when its
        writer recorded a config: the runner does); the learning rate may change."""
        saved = self.extra.get("config")
        if not isinstance(saved, dict):
            return
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
        load_optimizer_state(optimizer, model, self.meta["optimizer"], self.tensors, self.path)
        try:
            for method, saved in zip(methods, self.meta["methods"]):
                method.load_state_dict(unflatten(saved["state"], self.tensors, device))
            cost.load_state_dict(self.meta["cost"])
            clock.load_state_dict(self.meta["clock"])
            set_rng_state(self.meta["rng"], self.tensors)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            # `read_checkpoint` checked the record's shape; what is left is state a method or
            # meter refuses, which only an edited or foreign file holds.
            raise CheckpointError(
                f"checkpoint {self.path} holds state that cannot be restored ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); {FIX}"
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




def corrupt(path: Path, why: str) -> CheckpointError:
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
        raise corrupt(path, "the file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(path, f"not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise corrupt(path, f"not a {FORMAT} record")
    info = meta.get("tensors") or {}
    name = str(info.get("file", ""))
    if not name or Path(name).name != name:  # a bare file name: never read outside the folder
        raise corrupt(path, "it names no tensor file")
    tensor_path = path.parent / name
    try:
        data = tensor_path.read_bytes()
    except OSError as e:
        raise corrupt(path, f"its tensor file {name} cannot be read: {e.strerror or e}") from None
    if len(data) != info.get("bytes"):
        raise corrupt(path, f"{name} is truncated: {len(data)} of {info.get('bytes')} bytes")
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise corrupt(path, f"{name} does not match its sha256, so it is corrupt")
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise corrupt(path, f"{name} is not a valid safetensors file: {e}") from None
    required = ["architecture", "step", "epoch", "batch", "optimizer", "methods", "cost", "clock",
                "history", "events", "rng", "total_steps", "steps_per_epoch"]
    missing = [k for k in required if k not in meta]
    if missing or "rng/torch_cpu" not in tensors or "train/loss_sum" not in tensors:
        raise corrupt(path, f"the record lacks {missing or 'some tensors'}")
    if problem := record_problem(meta, tensors):
        raise corrupt(path, problem)
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
    for p in (folder / LATEST, folder / PREVIOUS, *folder.glob(TENSOR_GLOB)):
        p.unlink(missing_ok=True)
