"""The built-in training loop: `fit()` reads top to bottom; the LR is a pure function of progress.

Methods plug in through `leantrain.attach`, the optimizer hooks a user's own loop uses too, so
both loops run one code path. Time is device-synchronised and split into train / surgery / eval /
checkpoint; training FLOPs are integrated over the live (shrinking) network.

With a `leantrain.training.checkpoint.Checkpointer`, `fit()` checkpoints at every epoch end and every N
steps or minutes, and `resume_from` continues from such a checkpoint exactly: the data order is a
pure function of (seed, epoch), so on CPU a resumed run ends with the same weights and metrics as
an uninterrupted one.

Divergence stops the run with one sentence naming the last good checkpoint: a NaN/inf loss, or
an epoch's running mean loss above `LOSS_BOUND` × the first step's loss (see `_check_loss`). A
checkpoint counts as good only when the loss passes that check and every parameter, buffer (BN
statistics) and optimizer-state tensor is finite, so resuming from it with a lower learning rate
starts from a sane state.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..compiled import compile_model, eager
from ..config import TrainConfig
from ..cost import CostMeter, StepCost, count_params
from ..methods.base import Method, MethodWarning, Progress
from ..structure.record import external_surgery
from ..structure.surgery import Change
from . import distributed
from .attach import attach
from .checkpoint import Checkpoint, Checkpointer, load_checkpoint, snapshot
from .memory import ActivationMeter
from .timing import DEFAULT_LAPS, Stopwatch
from .trainstate import TrainState

__all__ = [
    "LOSS_BOUND", "Callback", "fit", "evaluate", "lr_at", "make_optimizer", "resolve_device",
    "Result",
    "TrainingDiverged",
]

# A run has diverged when an epoch's running mean loss exceeds this many times the loss of its
# first step (floored at 1, so a fine-tuning run that starts near 0 is not stopped at a loss of
# 10). The first step's cross-entropy is about ln(classes), e.g. 2.3 for 10 classes; a run that
# is still learning never gets within orders of magnitude of 1e4 × that, while an exploding one
# passes it within a few steps and would otherwise go on logging losses of 1e20.
LOSS_BOUND = 1e4


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or exploded past `LOSS_BOUND` × the first step's loss."""


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
    # ``peak_activation_mb``/``mean_activation_mb``: saved-for-backward bytes (`leantrain.training.memory`).
    memory: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use --device cpu or auto.")
    return torch.device(device)


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Learning rate at `progress` ∈ [0, 1] of the (budgeted) run: linear warm-up, then cosine,
    linear decay to 0, step or constant. A stream of chunks (`TrainConfig.stream`) runs the
    schedule once per chunk: each chunk is trained as it arrives, as a fine-tuning session."""
    if cfg.stream > 1:
        chunk = min(int(progress * cfg.stream), cfg.stream - 1)
        progress = min(1.0, progress * cfg.stream - chunk)
    if cfg.warmup > 0 and progress < cfg.warmup:
        return cfg.lr * progress / cfg.warmup
    t = min(1.0, (progress - cfg.warmup) / (1 - cfg.warmup))  # fraction of the decay done
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "linear":  # Li et al. (arXiv 1905.04753): to 0 exactly at the budget's end
        return cfg.lr * (1 - t)
    if cfg.schedule == "step":
        return cfg.lr * cfg.lr_decay ** sum(progress >= m for m in cfg.milestones)
    return cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainConfig, head: Collection[str] = ()
                   ) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters. With `head` (parameter
    names, e.g. those `--init` re-initialised) and ``cfg.head_lr_mult`` ≠ 1 the head is a second
    param group whose ``lr_mult`` scales the schedule's rate (`fit` applies it every step;
    surgery keeps each parameter in its group across cuts)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n not in head], "lr_mult": 1.0}]
    if head and cfg.head_lr_mult != 1.0:
        groups.append({"params": [p for n, p in named if n in head],
                       "lr_mult": cfg.head_lr_mult})
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )


def freeze_bn_statistics(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode: its running statistics stay as loaded while its scale
    and shift train (fine-tuning on little data, `TrainConfig.freeze_bn`)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
            m.eval()


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


def _plan(train_loader: Any, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps), with a clear error when an epoch has no step."""
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the batch size {train_loader.batch_size} is larger than the {train_loader.num_samples} "
            "training images, so an epoch has no step; lower --batch-size or use more data."
        )
    return steps_per_epoch, steps_per_epoch * cfg.total_epochs


def _diverged(
    what: str, step: int, epoch: int, ckpt: Checkpointer | None, note: str = ""
) -> TrainingDiverged:
    """The one-sentence error for a diverged run, naming the checkpoint to resume from."""
    where = f"{what} at step {step} (epoch {epoch + 1}){note}"
    if ckpt is not None and ckpt.last_step is not None:
        folder = ckpt.last_folder or ckpt.folder
        return TrainingDiverged(
            f"{where}; the last good checkpoint (step {ckpt.last_step}) in {folder} is kept, "
            f"so resume from it with a lower --lr: add --resume-from {folder} --lr LOWER."
        )
    return TrainingDiverged(f"{where}; lower --lr or check the data, then train again.")


def _check_loss(state: TrainState, epoch: int, ckpt: Checkpointer | None) -> float:
    """The epoch's running mean loss; raises `TrainingDiverged` when it is NaN/inf or exploded.

    The running sum holds every step of the epoch so far, so one check catches a NaN or a
    spike in any of them (a spike of x raises the mean by x / steps) without a device sync per
    step. The bound is `LOSS_BOUND` × max(1, the run's first step's loss).
    """
    batches = max(1, state.batch)
    mean = state.loss_sum.item() / batches if state.loss_sum is not None else 0.0
    if not math.isfinite(mean):
        raise _diverged(f"the training loss became {mean}", state.step, epoch, ckpt)
    reference = max(1.0, state.first_loss or 0.0)
    if mean > LOSS_BOUND * reference:
        raise _diverged(
            f"the training loss reached {mean:.3g}", state.step, epoch, ckpt,
            f", over {LOSS_BOUND:g} × the first step's loss ({reference:.3g})")
    return mean


def _confirm_checkpoint(
    loss: float, state: TrainState, epoch: int, ckpt: Checkpointer
) -> None:
    """Keep the checkpoint just written only if the step after it computed a sane loss.

    A checkpoint's own losses were computed *before* its last update, so a state wrecked by
    that update (weights, BN statistics, momentum in the thousands) passes every check at save
    time and diverges again as soon as it is resumed, whatever the learning rate. The next
    step's loss is the first one computed with the saved weights: over the bound, the
    checkpoint is withdrawn and the run stops, naming the one before it (or none).
    """
    reference = max(1.0, state.first_loss or 0.0)
    if math.isfinite(loss) and loss <= LOSS_BOUND * reference:
        return
    bad = ckpt.last_step
    ckpt.discard_last()
    raise _diverged(
        f"the training loss was {loss:.3g}", state.step, epoch, ckpt,
        f", one step after the checkpoint of step {bad}, which was deleted as diverged")


def _first_nonfinite(model: nn.Module, opt: torch.optim.Optimizer) -> str | None:
    """What in the training state is NaN/inf (parameters, BN statistics, optimizer state)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"the weight {name}"
    for name, b in model.named_buffers():  # BN running_var goes to inf before the weights do
        if b.is_floating_point() and not bool(torch.isfinite(b).all()):
            return f"the buffer {name}"
    names = {id(p): n for n, p in model.named_parameters()}
    for p, saved in opt.state.items():
        for key, value in saved.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() \
                    and not bool(torch.isfinite(value).all()):
                return f"the optimizer's {key} of {names.get(id(p), 'a parameter')}"
    return None


def _drain_events(methods: Sequence[Method], state: TrainState, epoch: int, log: Callable) -> None:
    for m in methods:
        for event in m.events():
            state.events.append({"step": state.step, "epoch": epoch, **event})
            log("event", state.events[-1])


def _save_checkpoint(
    checkpointer: Checkpointer, model: nn.Module, opt: torch.optim.Optimizer,
    methods: Sequence[Method], state: TrainState, clock: Stopwatch, cost: CostMeter,
    cfg: TrainConfig, total: int, steps_per_epoch: int,
) -> bool:
    """Write a checkpoint of a good state (raises `TrainingDiverged` otherwise); False: none."""
    if reason := external_surgery(model):
        # Cuts made outside leantrain (torch-pruning) cannot be replayed on a fresh model, so
        # this state cannot be checkpointed; the last checkpoint before the cut stays usable.
        warnings.warn(f"no checkpoints after this point: the model was {reason}.", stacklevel=2)
        return False
    # Never checkpoint a diverged state: a NaN or exploded loss this epoch, or weights, BN
    # statistics or momentum an unlucky last step blew up would make the "last good"
    # checkpoint garbage that diverges again as soon as it is resumed.
    epoch = state.epoch - 1 if state.batch == 0 else state.epoch  # batch 0: just ended
    _check_loss(state, epoch, checkpointer)
    if bad := _first_nonfinite(model, opt):
        raise _diverged(f"{bad} became non-finite", state.step, epoch, checkpointer)
    tensors, meta = snapshot(
        model, opt, methods, state, clock=clock, cost=cost, total_steps=total,
        steps_per_epoch=steps_per_epoch, train_config=dataclasses.asdict(cfg),
    )
    checkpointer.save(tensors, meta)
    return True


class Callback:
    """What a caller adds to `fit` without `fit` knowing it (the runner: its run folder and its
    record of the machine). Override either hook."""

    def on_start(self, state: TrainState) -> None:
        """The training state is known (a resume's checks and restore are done); no step yet."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """An evaluated epoch's row, before it is logged and kept; fields added here stay."""


class _LossGuard:
    """The divergence guard: the epoch's running loss (summed on the device, one sync per check),
    the first step's loss that scales the bound, and the one-step-late test of a checkpoint just
    written (`_confirm_checkpoint`)."""

    def __init__(self, state: TrainState, checkpointer: Checkpointer | None) -> None:
        self.state, self.checkpointer = state, checkpointer
        self.unconfirmed = False  # a checkpoint was just written; the next step's loss tests it

    def start_epoch(self, device: torch.device) -> None:
        if self.state.batch == 0 or self.state.loss_sum is None:
            self.state.loss_sum = torch.zeros((), device=device)

    def add(self, loss: Tensor, x: Tensor, epoch: int) -> None:
        state = self.state
        state.loss_sum += loss.detach()
        if state.first_loss is None:  # the scale of the divergence bound (one sync per run)
            state.first_loss = loss.item()
        elif self.unconfirmed:  # one sync per checkpoint: the loss of the state it saved
            self.unconfirmed = False
            # Non-finite images make any state's loss NaN: that is the data's fault, caught by
            # the running-loss check, and no reason to withdraw a good checkpoint.
            if bool(torch.isfinite(x).all()):
                _confirm_checkpoint(loss.item(), state, epoch, self.checkpointer)

    def mean(self, epoch: int) -> float:
        """The epoch's running mean loss, or `TrainingDiverged`."""
        return _check_loss(self.state, epoch, self.checkpointer)


class _CostTracker:
    """Training FLOPs integrated over the live network; the per-sample cost is recounted (not
    timed as training) only when the structure or a method's per-step width changes."""

    def __init__(self, cost: CostMeter, model: nn.Module, methods: Sequence[Method],
                 state: TrainState) -> None:
        self.cost, self.model, self.methods, self.state = cost, model, methods, state
        self.current: StepCost = cost.recount(model)
        self.known = {self._key(): self.current}

    def _key(self) -> Any:
        return _cost_key(self.methods, self.model, self.state.version)

    def add(self, images: int) -> None:
        """Charge a step of `images` at the cost of the network that computed it."""
        self.cost.add(images, self.current)

    def refresh(self) -> None:
        """After a step: the cost of the network the next step computes."""
        key = self._key()
        if key not in self.known:
            self.known[key] = self.cost.recount(self.model)
        self.current = self.known[key]


@dataclass
class _Loop:
    """One `fit` call's parts, so that its epochs read as steps of their own."""

    model: nn.Module
    net: nn.Module  # the model, or its ShrinkingDDP under torchrun
    opt: torch.optim.Optimizer
    methods: Sequence[Method]
    handle: Any  # the `Attached` hooks
    cfg: TrainConfig
    state: TrainState
    clock: Stopwatch
    activations: ActivationMeter
    costs: _CostTracker
    guard: _LossGuard
    checkpointer: Checkpointer | None
    callbacks: Sequence[Callback]
    log: Callable[[str, dict[str, Any]], None]
    bar: Any
    test_loader: Any
    total: int
    steps_per_epoch: int
    world: int

    def train_epoch(self, epoch: int, train_loader: Any) -> None:
        model, state, cfg, opt = self.model, self.state, self.cfg, self.opt
        model.train()
        if cfg.freeze_bn:
            freeze_bn_statistics(model)
        self.guard.start_epoch(next(model.parameters()).device)
        for x, y in train_loader.epoch(epoch, start_batch=state.batch):
            progress = Progress(state.step, self.total, self.steps_per_epoch)
            lr = lr_at(progress.fraction, cfg)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            with self.clock("train"):
                with self.activations.step():
                    loss = F.cross_entropy(self.net(x), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()  # the hooks: after_backward and the update ("train"), cuts ("surgery")
            self.costs.add(len(x) * self.world)  # the whole job's images (1/world each here)
            state.step, state.batch = self.handle.step, state.batch + 1
            self.costs.refresh()
            _drain_events(self.methods, state, epoch, self.log)
            self.guard.add(loss, x, epoch)
            self.bar.update(1)
            if state.step % 20 == 0 or state.step == self.total:
                self.bar.set_postfix(loss=f"{self.guard.mean(epoch):.3f}", epoch=epoch + 1)
            # Mid-epoch checkpoints only: the epoch's last step is checkpointed after its eval.
            if (self.checkpointer and state.batch < self.steps_per_epoch
                    and self.checkpointer.due(state.step)):
                self.save_checkpoint()

    def end_epoch(self, epoch: int) -> None:
        cfg, state = self.cfg, self.state
        train_loss = self.guard.mean(epoch)
        # A stream is evaluated after every chunk as well: what the model knows when the next
        # chunk arrives.
        chunk_end = cfg.stream > 1 and (epoch + 1) % cfg.run_epochs == 0
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.total_epochs or chunk_end:
            with self.clock("eval"), eager():  # compiled: no eval graph per structure
                test_loss, test_acc = evaluate(self.model, self.test_loader)
            row = {
                "epoch": epoch + 1, "step": state.step,
                "lr": lr_at(state.step / self.total, cfg), "train_loss": train_loss,
                "test_loss": test_loss, "test_acc": test_acc, **self.clock.totals(),
                **self.costs.cost.totals(), "params": count_params(self.model),
            }
            for callback in self.callbacks:
                callback.on_epoch_end(row)
            if cfg.stream > 1:
                row.update(chunk=epoch // cfg.run_epochs + 1, chunk_end=chunk_end)
            state.history.append(row)
            self.log("epoch", row)
            self.bar.write(
                f"epoch {epoch + 1:3d}/{cfg.total_epochs}  loss {train_loss:.4f}  test acc "
                f"{100 * test_acc:.2f}%  train {row['train_s']:.1f}s"
            ) if not self.bar.disable else None
        state.epoch, state.batch, state.loss_sum = epoch + 1, 0, None
        if self.checkpointer is not None:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        with self.clock("checkpoint"):
            self.guard.unconfirmed = _save_checkpoint(
                self.checkpointer, self.model, self.opt, self.methods, self.state, self.clock,
                self.costs.cost, self.cfg, self.total, self.steps_per_epoch)

    def finish(self) -> Result:
        """The methods' last word (DCP's cut to its compact model) and the final result."""
        self.bar.close()
        final = dict(self.state.history[-1])
        with self.clock("surgery"):
            changed = bool(self.handle.finish())
            _drain_events(self.methods, self.state, self.cfg.total_epochs, self.log)
        if changed:  # report the accuracy of the model we hand back (e.g. DCP's compact export)
            with self.clock("eval"), eager():
                final["test_loss"], final["test_acc"] = evaluate(self.model, self.test_loader)
        return Result(
            test_acc=final["test_acc"], test_loss=final["test_loss"], history=self.state.history,
            times=self.clock.totals(), costs=self.costs.cost.totals(),
            params=count_params(self.model), events=self.state.events,
            memory=self.activations.summary(),
        )


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
    checkpointer: Checkpointer | None = None,
    resume_from: Checkpoint | str | Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> Result:
    """Train `model` with `methods` plugged in; evaluate every `cfg.eval_every` epochs.

    Args:
        model: a model already on its device (see `resolve_device`); when resuming, a fresh
            model from `create_model` (it is cut to the checkpoint's architecture in place).
        train_loader, test_loader: `leantrain.data.TensorLoader`s on the same device.
        cfg: the recipe.
        methods: pruning methods, called through their hooks each step.
        optimizer: defaults to `make_optimizer(model, cfg)`; when resuming it is pointed at the
            rebuilt model's parameters and given the saved state.
        log: called as ``log(kind, row)`` with kind ``"epoch"`` or ``"event"``.
        show_progress: draw a progress bar.
        checkpointer: writes a checkpoint at every epoch end and as it says mid-epoch.
        resume_from: a checkpoint (or a run folder / ``checkpoint.json``) to continue from.
        callbacks: `Callback`s told when training starts and at each evaluated epoch.

    Raises:
        TrainingDiverged: the loss became NaN/inf or exploded (see `LOSS_BOUND`), or the state
            became non-finite; no checkpoint of that state is written.
        leantrain.training.checkpoint.CheckpointError: `resume_from` is unusable or belongs to
            another run.
    """
    steps_per_epoch, total = _plan(train_loader, cfg)
    opt = optimizer or make_optimizer(model, cfg)
    device = next(model.parameters()).device
    laps = (*DEFAULT_LAPS, "checkpoint") if checkpointer is not None else DEFAULT_LAPS
    clock = Stopwatch(device, laps=laps)
    spec = train_loader.spec
    cost = CostMeter(model, (spec.in_channels, spec.image_size, spec.image_size))
    ckpt = load_checkpoint(resume_from) if isinstance(resume_from, (str, Path)) else resume_from
    state = _start(model, opt, methods, ckpt, checkpointer, clock, cost, total, steps_per_epoch)
    for callback in callbacks:
        callback.on_start(state)

    def changed(change: Change) -> None:
        state.version += 1  # part of the FLOP cache key
        if cfg.freeze_bn:  # a cut may build new BN modules, which start in training mode
            freeze_bn_statistics(model)

    if cfg.compile:  # before attach, so the methods set up for a compiled model from step one
        problems = [p for m in methods if (p := m.compile_problem(cfg.compile))]
        if problems:
            warnings.warn(f"--compile {cfg.compile} is off for this run: {'; '.join(problems)} "
                          "(docs/compile.md); it trains eager.", MethodWarning, stacklevel=2)
        else:
            compile_model(model, cfg.compile)
    # The methods run from the optimizer's step hooks, exactly as in a user's own loop: setup
    # now (a static cut before step one), after_backward and step around every opt.step().
    handle = attach(model, opt, methods, total, steps_per_epoch=steps_per_epoch,
                    start_step=state.step, on_change=changed, lap=clock, allow_empty=True)
    try:
        loop = _loop(model, opt, methods, handle, cfg, state, clock, cost, checkpointer,
                     callbacks, log or (lambda kind, row: None), show_progress, test_loader,
                     total, steps_per_epoch, resumed=ckpt is not None)
        for epoch in range(state.epoch, cfg.total_epochs):
            loop.train_epoch(epoch, train_loader)
            loop.end_epoch(epoch)
    except BaseException:  # a failed fit leaves the user's optimizer unhooked, to attach again
        handle.detach()
        raise
    return loop.finish()


def _start(model: nn.Module, opt: torch.optim.Optimizer, methods: Sequence[Method],
           ckpt: Checkpoint | None, checkpointer: Checkpointer | None, clock: Stopwatch,
           cost: CostMeter, total: int, steps_per_epoch: int) -> TrainState:
    """A fresh state, or the one path of a resume: check the step plan and the methods, cut the
    model, restore all (the runner checked that the checkpoint is its run's: `check_run`)."""
    if ckpt is None:
        return TrainState()
    state = ckpt.restore(model, opt, methods, clock=clock, cost=cost, total_steps=total,
                         steps_per_epoch=steps_per_epoch)
    if checkpointer is not None:
        checkpointer.resumed_from(ckpt)
    return state


def _loop(model: nn.Module, opt: torch.optim.Optimizer, methods: Sequence[Method], handle: Any,
          cfg: TrainConfig, state: TrainState, clock: Stopwatch, cost: CostMeter,
          checkpointer: Checkpointer | None, callbacks: Sequence[Callback],
          log: Callable[[str, dict[str, Any]], None], show_progress: bool, test_loader: Any,
          total: int, steps_per_epoch: int, resumed: bool) -> _Loop:
    """The loop's parts, once the methods are attached (a resume's events logged)."""
    world = distributed.world_size()
    if resumed:
        for m in methods:
            m.events()  # setup events of a resume repeat those the log already has
        state.events.append({"kind": "resume", "step": state.step, "epoch": state.epoch})
        log("event", state.events[-1])
    return _Loop(
        model=model,
        # Under torchrun the forward goes through DDP, rebuilt after every cut.
        net=distributed.ShrinkingDDP(model) if world > 1 else model,
        opt=opt, methods=methods, handle=handle, cfg=cfg, state=state, clock=clock,
        activations=ActivationMeter(model), costs=_CostTracker(cost, model, methods, state),
        guard=_LossGuard(state, checkpointer), checkpointer=checkpointer, callbacks=callbacks,
        log=log, test_loader=test_loader, total=total, steps_per_epoch=steps_per_epoch,
        world=world,
        bar=tqdm(total=total, initial=state.step, disable=not show_progress, unit="step",
                 leave=False),
    )
