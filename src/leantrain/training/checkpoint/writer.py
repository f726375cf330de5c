"""Writing checkpoints: `snapshot` (the state as JSON plus tensors) and `Checkpointer`, which
decides when and writes atomically, keeping the previous checkpoint until the new one is
committed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from ...atomic import write_atomic
from ...cost import CostMeter
from ...methods.base import Method
from ...models.files import architecture
from ..timing import Stopwatch
from ..trainstate import TrainState
from .format import (
    FORMAT, LATEST, PREVIOUS, TENSOR_GLOB, CheckpointWriteError, flatten, rng_state,
)
from .restore import Checkpoint

def optimizer_state(
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
            flatten({k: v for k, v in g.items() if k != "params"}, f"optim_group/{i}", tensors)
            for i, g in enumerate(sd["param_groups"])
        ],
        "state": {
            str(slot): flatten(state, f"optim/{slot}", tensors)
            for slot, state in sd["state"].items()
        },
    }




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
        "optimizer": optimizer_state(optimizer, model, tensors),
        "methods": [
            {"name": m.name, "state": flatten(m.state_dict(), f"method/{i}", tensors)}
            for i, m in enumerate(methods)
        ],
        "cost": cost.state_dict(),
        "clock": clock.state_dict(),
        "first_loss": state.first_loss,
        "history": state.history,
        "events": state.events,
        "rng": rng_state(tensors),
        "train_config": train_config or {},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return tensors, meta




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
        for stale in self.folder.glob(TENSOR_GLOB):
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
