"""One run from a `RunConfig`: data, model, methods, `fit()`, and the run folder it writes.

Run folder ``<out_dir>/<dataset>-<model>-<method>-<digest>/seed<k>/`` holds ``config.json``,
``env.json``, ``metrics.jsonl`` (one row per evaluated epoch), ``events.jsonl`` (drops, prunes),
``summary.json`` and ``model.safetensors`` (the final, scaled-down model).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .cost import count_macs, count_params
from .data import TensorLoader, load_dataset
from .env import environment
from .io import save_model
from .methods import build_methods
from .plots import plot_run_events
from .registry import create_model
from .train import Result, fit, resolve_device

__all__ = ["run", "seed_everything", "RunFolderError"]


class RunFolderError(OSError):
    """The run folder cannot be created or written."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run is repeatable on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


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


def run(cfg: RunConfig, *, show_progress: bool = True) -> tuple[Result, Path]:
    """Train as `cfg` says and write the run folder; returns the result and the folder."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    methods = build_methods(cfg.method_names(), cfg.method_args)
    train_split, test_split, spec = load_dataset(
        cfg.data.dataset, cfg.data.data_dir, train_subset=cfg.data.train_subset,
        test_subset=cfg.data.test_subset, image_size=cfg.data.image_size, seed=cfg.seed,
        download=cfg.data.download,
    )
    folder = cfg.run_dir()
    _prepare_folder(folder)
    seed_everything(cfg.seed)
    model = create_model(
        cfg.model.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
        input_size=spec.image_size,
    ).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader_args = dict(device=device, channels_last=cfg.train.channels_last)
    train_loader = TensorLoader(
        train_split, spec, cfg.train.batch_size, train=True, seed=cfg.seed, **loader_args
    )
    test_loader = TensorLoader(test_split, spec, 500, train=False, **loader_args)
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    dense_params, dense_macs = count_params(model), count_macs(model, input_shape)
    env = environment(device)
    _write_json(folder / "config.json", cfg.to_dict())
    _write_json(folder / "env.json", env)
    metrics, events = folder / "metrics.jsonl", folder / "events.jsonl"
    metrics.write_text("")
    events.write_text("")

    def log(kind: str, row: dict[str, Any]) -> None:
        with (metrics if kind == "epoch" else events).open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    result = fit(model, train_loader, test_loader, cfg.train, methods, log=log,
                 show_progress=show_progress)
    summary = {
        "dataset": cfg.data.dataset, "model": cfg.model.name,
        "method": "dense" if not cfg.method_names() else cfg.method, "seed": cfg.seed,
        "epochs": cfg.train.epochs, "train_images": len(train_split.labels),
        "test_images": len(test_split.labels),
        "test_acc": result.test_acc, "test_loss": result.test_loss, **result.times,
        **result.costs,
        "dense_params": dense_params, "dense_macs": dense_macs,
        "final_params": count_params(model), "final_macs": count_macs(model, input_shape),
        "events": len(result.events), "env": env,
    }
    save_model(model, folder / "model.safetensors", metadata={"test_acc": result.test_acc})
    _write_json(folder / "summary.json", summary)
    plot_run_events(result.events, folder)
    return result, folder
