"""The built-in training loop: `fit()` reads top to bottom; the LR is a pure function of progress.

Methods plug in through the same hooks a user calls from their own loop (see
`leantrain.methods.base`). Time is device-synchronised and split into train / surgery / eval;
training FLOPs are integrated over the live (shrinking) network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .cost import CostMeter, count_params
from .methods.base import Method, Progress
from .timing import Stopwatch

__all__ = ["fit", "evaluate", "lr_at", "make_optimizer", "resolve_device", "Result", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Result:
    """What `fit()` returns: final-epoch accuracy (never the best epoch), time and cost."""

    test_acc: float
    test_loss: float
    history: list[dict[str, Any]]
    times: dict[str, float]
    costs: dict[str, Any]
    params: int
    events: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use --device cpu or auto.")
    return torch.device(device)


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Learning rate at `progress` ∈ [0, 1]: linear warm-up, then cosine, step or constant."""
    if cfg.warmup > 0 and progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    if cfg.schedule == "cosine":
        t = (progress - cfg.warmup) / (1 - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.lr_decay ** sum(progress >= m for m in cfg.milestones)
    return cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` over `loader` (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader.epoch(0):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    return loss_sum / max(1, count), correct / max(1, count)


def _cost_key(methods: Sequence[Method], model: nn.Module, version: int) -> Any:
    # The per-sample cost depends only on the live structure: the surgery count plus whatever
    # per-step width a method reports (DCP), so FLOPs are recounted only when that changes.
    return (version, *(m.cost_key(model) for m in methods))


def fit(
    model: nn.Module,
    train_loader: Any,
    test_loader: Any,
    cfg: TrainConfig,
    methods: Sequence[Method] = (),
    *,
    optimizer: torch.optim.Optimizer | None = None,
    log: Callable[[str, dict[str, Any]], None] | None = None,
    show_progress: bool = True,
) -> Result:
    """Train `model` with `methods` plugged in; evaluate every `cfg.eval_every` epochs.

    Args:
        model: a model already on its device (see `resolve_device`).
        train_loader, test_loader: `leantrain.data.TensorLoader`s on the same device.
        cfg: the recipe.
        methods: pruning methods, called through their hooks each step.
        optimizer: defaults to `make_optimizer(model, cfg)`.
        log: called as ``log(kind, row)`` with kind ``"epoch"`` or ``"event"``.
        show_progress: draw a progress bar.
    """
    log = log or (lambda kind, row: None)
    device = next(model.parameters()).device
    opt = optimizer or make_optimizer(model, cfg)
    steps_per_epoch, total = len(train_loader), len(train_loader) * cfg.epochs
    if steps_per_epoch == 0:
        raise ValueError(
            f"the batch size {train_loader.batch_size} is larger than the {train_loader.num_samples} "
            "training images, so an epoch has no step; lower --batch-size or use more data."
        )
    spec = train_loader.spec
    input_shape = (spec.in_channels, spec.image_size, spec.image_size)
    clock, cost = Stopwatch(device), CostMeter(model, input_shape)
    version = 0
    current = cost.recount(model)
    step_costs = {_cost_key(methods, model, version): current}
    history: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for m in methods:
        m.setup(model, Progress(0, total, steps_per_epoch))
    bar = tqdm(total=total, disable=not show_progress, unit="step", leave=False)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        for x, y in train_loader.epoch(epoch):
            progress = Progress(step, total, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr_at(progress.fraction, cfg)
            with clock("train"):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for m in methods:
                    m.after_backward(model, progress)
                opt.step()
            cost.add(len(x), current)
            step += 1
            progress = Progress(step, total, steps_per_epoch)
            with clock("surgery"):
                for m in methods:
                    if change := m.step(model, progress):
                        change.apply_to(opt)
                        version += 1
            key = _cost_key(methods, model, version)
            if key not in step_costs:  # the live network changed: recount (not timed as training)
                step_costs[key] = cost.recount(model)
            current = step_costs[key]
            for m in methods:
                for event in m.events():
                    events.append({"step": step, "epoch": epoch, **event})
                    log("event", events[-1])
            loss_sum += loss.detach()
            bar.update(1)
            if step % 20 == 0 or step == total:
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss became {loss_value} at step {step} (epoch {epoch + 1}); lower "
                        "--lr or check the data; the last checkpoint is unaffected."
                    )
                bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch + 1)
        train_loss = loss_sum.item() / steps_per_epoch
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} in epoch {epoch + 1}; lower --lr or check the data."
            )
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            with clock("eval"):
                test_loss, test_acc = evaluate(model, test_loader)
            row = {
                "epoch": epoch + 1, "step": step, "lr": lr_at(step / total, cfg),
                "train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc,
                **clock.totals(), **cost.totals(), "params": count_params(model),
            }
            history.append(row)
            log("epoch", row)
            bar.write(
                f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {train_loss:.4f}  test acc "
                f"{100 * test_acc:.2f}%  train {row['train_s']:.1f}s"
            ) if show_progress else None
    bar.close()
    final = dict(history[-1])
    changed = False
    with clock("surgery"):
        for m in methods:
            if change := m.finish(model):
                change.apply_to(opt)
                changed = True
        for m in methods:
            for event in m.events():
                events.append({"step": step, "epoch": cfg.epochs, **event})
                log("event", events[-1])
    if changed:  # report the accuracy of the model we hand back (e.g. DCP's compact export)
        with clock("eval"):
            final["test_loss"], final["test_acc"] = evaluate(model, test_loader)
    return Result(
        test_acc=final["test_acc"], test_loss=final["test_loss"], history=history,
        times=clock.totals(), costs=cost.totals(), params=count_params(model), events=events,
    )
