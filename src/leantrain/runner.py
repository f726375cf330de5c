"""One run from a `RunConfig`: data, model, methods, `fit()`, and the run folder it writes.

Run folder ``<out_dir>/<dataset>-<model>-<method>-<digest>/seed<k>/`` holds ``config.json``,
``env.json``, ``metrics.jsonl`` (one row per evaluated epoch), ``events.jsonl`` (drops, prunes),
``summary.json`` and ``model.safetensors`` (the final, scaled-down model). While it trains it
also holds ``checkpoint.json`` and ``checkpoint-<step>.safetensors`` (see `leantrain.checkpoint`),
from which ``run(cfg, resume=True)`` continues after any interruption; they are deleted once the
run has finished and saved its model.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import remove_stale_temps, write_atomic
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    Checkpointer,
    has_checkpoint,
    load_checkpoint,
    remove_checkpoints,
)
from . import distributed
from .config import RunConfig
from .cost import count_macs, count_params
from .data import TensorLoader, load_dataset
from .env import environment, machine_key, memory_summary, reset_peak_memory
from .machine_share import MachineShare, whole_run
from .io import save_model, save_weights
from .methods import build_methods
from .plots import plot_run_events
from .registry import create_model
from .train import Result, fit, resolve_device
from .trainstate import TrainState

__all__ = [
    "run", "seed_everything", "finished_summary", "RunFinishedError", "RunFolderError",
    "RestartWarning",
]


class RunFolderError(OSError):
    """The run folder cannot be created or written."""


class RunFinishedError(ValueError):
    """The run folder holds a finished run, which a new attempt would overwrite."""


class RestartWarning(UserWarning):
    """``resume=True`` found a run stopped before its first checkpoint and starts it over."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run is repeatable on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write(path: Path, content: str | bytes, then: str = "continue with --resume") -> None:
    """Write a run-folder file atomically; a full disk or unwritable folder names the file."""
    try:
        write_atomic(path, content)
    except OSError as e:
        raise RunFolderError(
            f"could not write {path} ({e.strerror or e}); free disk space or make the folder "
            f"writable, then {then}."
        ) from e


def _write_json(path: Path, obj: Any) -> None:
    _write(path, json.dumps(obj, indent=2, default=str))


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(
            f"cannot write the run folder {folder} ({e.strerror or e}); choose a writable "
            "--out-dir with free space."
        ) from e


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    _write(path, "".join(json.dumps(row, default=float) + "\n" for row in rows))


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    try:
        with path.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
    except OSError as e:
        raise RunFolderError(
            f"could not append to {path} ({e.strerror or e}); free disk space or make the folder "
            "writable, then continue with --resume (the last good checkpoint is kept)."
        ) from e


def finished_summary(folder: str | Path) -> dict[str, Any] | None:
    """The ``summary.json`` of a finished run in `folder`, or None when it has not finished.

    A folder holding both a summary and a checkpoint has a newer attempt under way (finished
    runs delete their checkpoints), so it counts as unfinished.
    """
    if has_checkpoint(folder):
        return None
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _resume_point(
    folder: Path, resume: bool | str, resume_from: str | Path | None
) -> Checkpoint | None:
    """The checkpoint this run continues from, or None to start; clear errors otherwise."""
    if resume not in (True, False, "auto", "restart"):
        raise ValueError(f"resume={resume!r}; use True, False, 'auto' or 'restart'.")
    if finished_summary(folder) is not None:
        if resume is True or resume_from is not None:
            raise CheckpointError(
                f"the run in {folder} has already finished; there is nothing to resume."
            )
        raise RunFinishedError(
            f"the run in {folder} has already finished and a new attempt would overwrite its "
            "results; to train it again choose another --seed or --out-dir, or delete the folder."
        )
    if resume_from is not None:
        source = Path(resume_from)
        if source.resolve() != folder.resolve() and has_checkpoint(folder):
            raise CheckpointError(
                f"{folder} already holds a checkpoint of its own; continue it with --resume "
                "instead of --resume-from, or delete it."
            )
        if source.is_dir() and not has_checkpoint(source) and finished_summary(source):
            raise CheckpointError(
                f"{source} is a finished run, which keeps its model but no checkpoint; "
                "--resume-from continues an unfinished run's folder."
            )
        return load_checkpoint(source)  # `fit` checks that it is this run's, as it restores it
    if resume is True and not has_checkpoint(folder):
        if (folder / "config.json").is_file():  # started here, stopped before its 1st checkpoint
            warnings.warn(
                f"{folder} holds no checkpoint because the run was stopped before writing its "
                "first one; starting it from the beginning.", RestartWarning, stacklevel=3,
            )
            return None
        raise CheckpointError(
            f"nothing to resume: {folder} holds no checkpoint (was a run with exactly these "
            "settings and seed started?); run without --resume to start it."
        )
    if has_checkpoint(folder):
        if resume in (True, "auto"):
            return load_checkpoint(folder)
        if resume == "restart":  # the old checkpoint stays until the new run writes its first
            return None
        raise CheckpointError(
            f"{folder} holds the checkpoint of an unfinished run; continue it with --resume, or "
            "delete the folder to start over."
        )
    return None


def run(
    cfg: RunConfig,
    *,
    show_progress: bool = True,
    resume: bool | str = False,
    resume_from: str | Path | None = None,
) -> tuple[Result, Path]:
    """Train as `cfg` says and write the run folder; returns the result and the folder.

    Args:
        cfg: the run.
        show_progress: draw a progress bar.
        resume: True: continue from the run folder's last good checkpoint (an error when there
            is none, unless the run was stopped before its first one: then it starts over, with
            a `RestartWarning`); ``"auto"``: continue when there is one, else start;
            ``"restart"``: start over even if there is one (e.g. benchmarks, whose timings
            should come from one process); False: start, and refuse a folder holding an
            unfinished run's checkpoint (so nothing is lost by accident). No mode trains over
            a finished run.
        resume_from: continue from another run folder's checkpoint (or a ``checkpoint.json``),
            e.g. with a lower learning rate after a divergence; results go to `cfg`'s folder.

    Raises:
        leantrain.checkpoint.CheckpointError: nothing (usable) to resume, or a checkpoint of
            another run.
        RunFinishedError: the folder holds a finished run (resume is not True).
        RunFolderError: a file of the run folder cannot be written (the message names it).
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # Under torchrun (WORLD_SIZE > 1) this process joins the job: its own GPU or gloo on CPU.
    ours = distributed.world_size() == 1  # a group set up by the caller stays the caller's
    device, rank, world = distributed.init_from_env(resolve_device(cfg.train.device))
    try:
        result = _run(cfg, device, rank, world, show_progress and rank == 0, resume, resume_from)
        if world > 1 and ours:
            # Leave together: a rank that tears its gloo group down while another still writes
            # or evaluates can abort that one ("terminate called without an active exception").
            torch.distributed.barrier()
        return result
    finally:
        if world > 1 and ours:
            torch.distributed.destroy_process_group()


def _run(
    cfg: RunConfig, device: torch.device, rank: int, world: int, show_progress: bool,
    resume: bool | str, resume_from: str | Path | None,
) -> tuple[Result, Path]:
    """`run` for this process (`rank` of `world`); process 0 alone writes the folder."""
    methods = build_methods(cfg.method_names(), cfg.method_args)
    train_split, test_split, spec = load_dataset(
        cfg.data.dataset, cfg.data.data_dir, train_subset=cfg.data.train_subset,
        test_subset=cfg.data.test_subset, image_size=cfg.data.image_size, seed=cfg.seed,
        download=cfg.data.download,
    )
    folder = cfg.run_dir()
    ckpt = _resume_point(folder, resume, resume_from)
    if ckpt is not None and (saved := int(ckpt.extra.get("world_size", 1))) != world:
        # DDP's per-process batch statistics (BN) depend on the split, so a run continues only
        # as it was started.
        raise CheckpointError(
            f"checkpoint {ckpt.path} was written by a job of {saved} processes but this one has "
            f"{world}; resume with the same number (torchrun --nproc-per-node {saved}"
            f"{', or without torchrun' if saved == 1 else ''})."
        )
    seed_everything(cfg.seed)
    model = create_model(
        cfg.model.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
        input_size=spec.image_size, kwargs=cfg.model.kwargs or None,
    )
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    dense_params, dense_macs = count_params(model), count_macs(model, input_shape)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader_args = dict(device=device, channels_last=cfg.train.channels_last)
    train_loader = TensorLoader(
        train_split, spec, cfg.train.batch_size, train=True, seed=cfg.seed, **loader_args
    )
    test_loader = TensorLoader(test_split, spec, 500, train=False, **loader_args)
    if world > 1:  # each process trains on its slice of every global batch
        train_loader = distributed.ShardedLoader(train_loader, rank, world)
    env = environment(device)
    metrics, events = folder / "metrics.jsonl", folder / "events.jsonl"
    checkpointer = Checkpointer(
        folder, cfg.checkpoint_every, cfg.checkpoint_minutes,
        # The machine goes with the checkpoint: a benchmark resumed elsewhere would mix two
        # machines' seconds in one training time, so `leantrain bench` starts such a run over.
        extra={"config": cfg.to_dict(), "digest": cfg.digest(), "world_size": world,
               "machine": list(machine_key(env))},
    ) if rank == 0 else None  # process 0 alone writes the run folder

    def start(state: TrainState) -> None:
        """Write the folder's files once `fit` has accepted the checkpoint (if any)."""
        if rank != 0:
            return
        _prepare_folder(folder)
        remove_stale_temps(folder)  # left by a process killed mid-write; this run owns the folder
        _write_json(folder / "config.json", cfg.to_dict())
        _write_json(folder / "env.json", env)
        # A resumed run rewrites both logs as of its checkpoint: rows written after it, before
        # the interruption, are redone by the resumed run and must not appear twice.
        _write_jsonl(metrics, state.history)
        _write_jsonl(events, state.events)

    def log(kind: str, row: dict[str, Any]) -> None:
        if rank == 0:
            _append_jsonl(metrics if kind == "epoch" else events, row)

    memory = reset_peak_memory(device)  # peaks of the training phase, not of data loading
    # did this run have the machine to itself?
    share = MachineShare(device=device.type, processes=world)
    result = fit(model, train_loader, test_loader, cfg.train, methods, log=log,
                 show_progress=show_progress, checkpointer=checkpointer, resume_from=ckpt,
                 run_config=cfg.to_dict(), on_start=start,
                 epoch_extra=lambda: {"machine": share.finish()})
    summary = {
        "dataset": cfg.data.dataset, "model": cfg.model.name,
        "method": "dense" if not cfg.method_names() else cfg.method, "seed": cfg.seed,
        "epochs": cfg.train.epochs, "train_images": len(train_split.labels),
        "test_images": len(test_split.labels),
        "test_acc": result.test_acc, "test_loss": result.test_loss, **result.times,
        **result.costs,
        "dense_params": dense_params, "dense_macs": dense_macs,
        "final_params": count_params(model), "final_macs": count_macs(model, input_shape),
        "events": len(result.events), "env": env, **memory_summary(device, memory),
        **result.memory, "machine": whole_run(share.finish(), result.history),
    }
    if world > 1:  # the job's one model: every process must hold the same (checked)
        distributed.check_same_weights(model)
        summary["processes"] = world
    if rank != 0:
        return result, folder
    model_file = folder / "model.safetensors"
    finish = "finish the run with --resume (its final checkpoint is kept)"
    try:
        if reason := getattr(model, "external_surgery", None):  # e.g. Torch-Pruning (tp_prune)
            summary["model_file"] = f"weights only: {reason}"
            save_weights(model, model_file, metadata={"test_acc": result.test_acc})
        else:
            save_model(model, model_file, metadata={"test_acc": result.test_acc})
    except OSError as e:
        raise RunFolderError(
            f"could not write {model_file} ({e.strerror or e}); free disk space or make the "
            f"folder writable, then {finish}."
        ) from e
    _write(folder / "summary.json", json.dumps(summary, indent=2, default=str), finish)
    remove_checkpoints(folder)  # the run is complete: its model and summary replace them
    plot_run_events(result.events, folder)
    return result, folder
