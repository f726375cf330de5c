"""One run from a `RunConfig`: data, model, methods, `fit()`, and the run folder it writes.

Run folder ``<out_dir>/<dataset>-<model>-<method>-<digest>/seed<k>/`` holds ``config.json``,
``env.json``, ``metrics.jsonl`` (one row per evaluated epoch), ``events.jsonl`` (drops, prunes),
``summary.json`` and ``model.safetensors`` (the final, scaled-down model). While it trains it
also holds ``checkpoint.json`` and ``checkpoint-<step>.safetensors`` (see `leantrain.training.checkpoint`),
from which ``run(cfg, resume=True)`` continues after any interruption; they are deleted once the
run has finished and saved its model.
"""

from __future__ import annotations

import fnmatch
import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import remove_stale_temps, write_atomic
from ..config import ConfigError
from ..cost import count_macs, count_params
from ..data import DatasetSpec, TensorLoader, load_dataset
from ..data.stream import StreamLoader
from ..methods import build_methods
from ..methods.plots import plot_run_events
from ..models.factory import create_model
from ..models.files import save_model, save_weights
from ..models.pretrained import load_init
from ..structure.record import external_surgery
from ..training import distributed
from ..training.checkpoint import (
    Checkpoint, CheckpointError, Checkpointer, has_checkpoint, load_checkpoint, remove_checkpoints,
)
from ..training.fit import Callback, Result, fit, make_optimizer, resolve_device
from ..training.trainstate import TrainState
from .config import RunConfig
from .env import environment, machine_key, memory_summary, reset_peak_memory
from .machine_share import MachineShare, whole_run

__all__ = [
    "run", "seed_everything", "finished_summary", "RunFinishedError", "RunFolderError",
    "RestartWarning", "ModelMismatchError", "ProbeError", "check_model_fits", "probe_model",
]


class RunFolderError(OSError):
    """The run folder cannot be created or written."""


class RunFinishedError(ValueError):
    """The run folder holds a finished run, which a new attempt would overwrite."""


class RestartWarning(UserWarning):
    """``resume=True`` found a run stopped before its first checkpoint and starts it over."""


class ModelMismatchError(ValueError):
    """The model cannot take the data's images, or does not give one score per class."""


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


def _check_resume_source(source: Path) -> None:
    """Clear errors for a `resume_from` that is neither a run folder nor a checkpoint record.

    Without them a run's other files (its model, its summary) would be read as a corrupt
    checkpoint, and the advice would be to delete the folder they belong to.
    """
    if not source.exists():
        raise CheckpointError(
            f"{source} does not exist; --resume-from takes the folder of an unfinished run."
        )
    if source.is_dir() and not has_checkpoint(source):
        # The folder above the seeds (``<dataset>-<model>-<method>-<digest>/``) is a common slip.
        if seeds := sorted(p for p in source.glob("seed*") if has_checkpoint(p)):
            raise CheckpointError(
                f"{source} holds one run folder per seed, not a checkpoint; pass one of them, "
                f"e.g. --resume-from {seeds[0]}."
            )
    if source.is_dir() or (source.name.startswith("checkpoint") and source.suffix == ".json"):
        return
    run_folder = source.parent
    if finished_summary(run_folder) is not None:
        raise CheckpointError(
            f"{source} belongs to a finished run, which keeps its model but no checkpoint; "
            "--resume-from continues an unfinished run's folder."
        )
    if has_checkpoint(run_folder):
        raise CheckpointError(
            f"--resume-from takes a run folder, not one of its files; pass --resume-from "
            f"{run_folder} (it continues from that folder's latest good checkpoint)."
        )
    raise CheckpointError(
        f"{source} is not a run folder or its checkpoint.json; --resume-from takes the folder "
        "of an unfinished run."
    )


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
        _check_resume_source(source)
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


# --------------------------------------------------------------------- the model against the data


class ProbeError(ModelMismatchError):
    """The model's forward failed on one image (see `probe_model`).

    Attributes:
        expected_channels: the input channels of the model's first convolution, when the image
            it was given has another number of channels (the usual cause), else None.
        reason: the failure in a few words (the exception's type and first line).
    """

    def __init__(self, message: str, expected_channels: int | None, reason: str) -> None:
        super().__init__(message)
        self.expected_channels, self.reason = expected_channels, reason


def _first_line(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or ["no detail"])[0]
    return f"{type(e).__name__}: {line[:200]}"


def probe_model(model: nn.Module, input_shape: tuple[int, int, int]) -> Any:
    """The model's output for one all-zero image of `input_shape` ``(C, H, W)``.

    Runs as `leantrain.cost.count_macs` does: eval mode, no gradients, training flags restored
    (BN statistics are untouched), on the model's device; torch's CPU random state is restored
    too, so a seeded run trains exactly as it would without the probe.

    Raises:
        ProbeError: the forward raised; ``expected_channels`` is set when the first convolution
            was given another number of channels than it takes.
    """
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
    first: list[tuple[int, int]] = []  # (channels the first conv takes, channels it was given)

    def note(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not first and args and isinstance(args[0], Tensor) and args[0].dim() >= 2:
            first.append((module.in_channels, args[0].shape[1]))

    handles = [m.register_forward_pre_hook(note) for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    training = {m: m.training for m in model.modules()}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            return model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - the user's forward: name its failure in one sentence
        expected = first[0][0] if first and first[0][0] != first[0][1] else None
        raise ProbeError(
            f"the model fails on a {'x'.join(map(str, input_shape))} input ({_first_line(e)})",
            expected, _first_line(e),
        ) from e  # the user's traceback, for LEANTRAIN_DEBUG=1
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag


def check_model_fits(model: nn.Module, spec: DatasetSpec) -> None:
    """Raise `ModelMismatchError` unless `model` trains on `spec`'s images and classes.

    One forward of one image (`probe_model`) before anything is written: a factory that ignores
    ``in_channels`` or ``num_classes`` would otherwise fail at the first step with a torch
    traceback (too few outputs: "Target 5 is out of bounds") or, worse, train and exit 0 with
    outputs that are not the data set's classes (too many).

    Args:
        model: the model as the factory built it.
        spec: the data set's `leantrain.data.DatasetSpec` (at the image size in use).
    """
    c, size, k = spec.in_channels, spec.image_size, spec.num_classes
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelMismatchError(
            "the model has no trainable parameters (none at all, or every one frozen with "
            "requires_grad=False), so there is nothing to train; check the factory."
        )
    try:
        out = probe_model(model, (c, size, size))
    except ProbeError as e:
        if e.expected_channels is not None:
            raise ModelMismatchError(
                f"the model's first layer expects {e.expected_channels} input channels but "
                f"{spec.name} images have {c}; make the factory take in_channels and build its "
                f"first layer with it, or train on a data set of {e.expected_channels}-channel "
                "images."
            ) from e
        raise ModelMismatchError(
            f"the model fails on {spec.name}'s {c}x{size}x{size} images ({e.reason}); make the "
            "factory build its layers for in_channels and input_size, or pass the --image-size "
            "it was written for."
        ) from e
    if not isinstance(out, Tensor):
        raise ModelMismatchError(
            f"the model returns a {type(out).__name__}, not a tensor of class scores; make its "
            "forward return the logits, one row per image and one column per class."
        )
    if out.dim() != 2 or out.shape[0] != 1:
        raise ModelMismatchError(
            f"the model turns one {c}x{size}x{size} image into an output of shape "
            f"{tuple(out.shape)}, not 1 x classes; flatten the features per image (e.g. "
            "torch.flatten(x, 1)) before its classifier."
        )
    if out.shape[1] != k:
        raise ModelMismatchError(
            f"the model outputs {out.shape[1]} classes but {spec.name} has {k}; make the "
            "factory take num_classes and build its last layer with it."
        )


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
        leantrain.training.checkpoint.CheckpointError: nothing (usable) to resume, or a checkpoint of
            another run.
        RunFinishedError: the folder holds a finished run (resume is not True).
        RunFolderError: a file of the run folder cannot be written (the message names it).
        ModelMismatchError: the model cannot take the data set's images or does not output
            one score per class (checked with one forward before the folder is written).
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


class _RunFolder(Callback):
    """The run folder's files, written once `fit` has accepted the checkpoint (if any), and the
    machine record added to every evaluated epoch's row."""

    def __init__(self, folder: Path, cfg: RunConfig, env: dict[str, Any], rank: int,
                 share: MachineShare) -> None:
        self.folder, self.cfg, self.env, self.rank, self.share = folder, cfg, env, rank, share

    def on_start(self, state: TrainState) -> None:
        if self.rank != 0:  # process 0 alone writes the run folder
            return
        folder = self.folder
        _prepare_folder(folder)
        remove_stale_temps(folder)  # left by a process killed mid-write; this run owns the folder
        _write_json(folder / "config.json", self.cfg.to_dict())
        _write_json(folder / "env.json", self.env)
        # A resumed run rewrites both logs as of its checkpoint: rows written after it, before
        # the interruption, are redone by the resumed run and must not appear twice.
        _write_jsonl(folder / "metrics.jsonl", state.history)
        _write_jsonl(folder / "events.jsonl", state.events)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        row["machine"] = self.share.finish()  # did this epoch have the machine to itself?


def _start_from_init(model: nn.Module, cfg: RunConfig) -> set[str]:
    """Load ``model.init`` into the fresh `model` (fine-tuning); the names of the parameters it
    did not provide (the new head), which ``train.head_lr_mult`` trains at its own rate."""
    if cfg.model.init is None:
        if cfg.train.head_lr_mult != 1.0:
            raise ConfigError(
                "train.head_lr_mult sets the learning rate of the layers --init re-initialises, "
                "but no --init was given; start from pretrained weights with --init PATH, or "
                "leave head_lr_mult at 1."
            )
        return set()
    report = load_init(model, cfg.model.init, cfg.model.init_skip)
    head = report.new_parameters(model)
    if cfg.train.head_lr_mult != 1.0 and not head:
        raise ConfigError(
            f"train.head_lr_mult = {cfg.train.head_lr_mult:g} applies to the layers --init "
            f"re-initialises, but {cfg.model.init} fits every layer of the model; name the head "
            "to train afresh with --init-skip PATTERN (e.g. 'fc.*'), or leave head_lr_mult at 1."
        )
    return head


def _freeze(model: nn.Module, patterns: list[str]) -> None:
    """``requires_grad = False`` on the parameters `patterns` name (``train.freeze``)."""
    if not patterns:
        return
    names = [n for n, _ in model.named_parameters()]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused:
        raise ConfigError(
            f"train.freeze pattern {unused[0]!r} names no parameter of the model (its names look "
            f"like {', '.join(names[:3])}); see them with leantrain inspect."
        )
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)


def _stream_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream's per-chunk results: accuracy after each chunk and the training time so far."""
    ends = [r for r in history if r.get("chunk_end")]
    if not ends:
        return {}
    return {"stream": [{"chunk": r["chunk"], "test_acc": r["test_acc"],
                        "train_s": r.get("train_s", 0.0) + r.get("surgery_s", 0.0)}
                       for r in ends]}


def _run(
    cfg: RunConfig, device: torch.device, rank: int, world: int, show_progress: bool,
    resume: bool | str, resume_from: str | Path | None,
) -> tuple[Result, Path]:
    """`run` for this process (`rank` of `world`); process 0 alone writes the folder."""
    if cfg.seed < 0:  # numpy's seeding would refuse it deep inside the data loading
        raise ValueError(f"seed {cfg.seed} is negative; seeds are whole numbers ≥ 0 (--seed N).")
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
    if ckpt is not None:  # another run's checkpoint: refused before anything is built
        ckpt.check_run(cfg.to_dict())
    seed_everything(cfg.seed)
    model = create_model(
        cfg.model.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
        input_size=spec.image_size, kwargs=cfg.model.kwargs or None,
    )
    check_model_fits(model, spec)  # before the folder is written: a mismatch leaves nothing
    head = _start_from_init(model, cfg)
    _freeze(model, cfg.train.freeze)
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    dense_params, dense_macs = count_params(model), count_macs(model, input_shape)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader_args = dict(device=device, channels_last=cfg.train.channels_last)
    if cfg.train.stream > 1:  # the training data arrive in chunks, one after another
        train_loader = StreamLoader(
            train_split, spec, cfg.train.batch_size, chunks=cfg.train.stream,
            epochs_per_chunk=cfg.train.run_epochs, replay=cfg.train.stream_replay,
            seed=cfg.seed, **loader_args,
        )
    else:
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

    def log(kind: str, row: dict[str, Any]) -> None:
        if rank == 0:
            _append_jsonl(metrics if kind == "epoch" else events, row)

    memory = reset_peak_memory(device)  # peaks of the training phase, not of data loading
    # did this run have the machine to itself?
    share = MachineShare(device=device.type, processes=world)
    folder_files = _RunFolder(folder, cfg, env, rank, share)
    optimizer = make_optimizer(model, cfg.train, head=head)
    result = fit(model, train_loader, test_loader, cfg.train, methods, optimizer=optimizer,
                 log=log, show_progress=show_progress, checkpointer=checkpointer,
                 resume_from=ckpt, callbacks=[folder_files])
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
        **_stream_summary(result.history),
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
        if reason := external_surgery(model):  # e.g. Torch-Pruning (tp_prune)
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
