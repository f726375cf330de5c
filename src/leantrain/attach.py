"""`attach`: plug methods into any training loop through the optimizer's own step hooks.

    handle = leantrain.attach(model, optimizer, [leantrain.DCP(p=0.5)], total_steps)
    ... the unchanged loop: forward, zero_grad, backward, optimizer.step() ...
    handle.finish()                                    # e.g. DCP's cut to the compact model

``optimizer.register_step_pre_hook`` runs every method's ``after_backward`` (gradients are there,
the update has not happened; with ``step(closure)`` right after the closure's backward) and ``register_step_post_hook`` counts the step and runs the
methods' ``step``: decisions, surgery, and the optimizer remap of every `Change`. A step that
never reaches ``optimizer.step()`` (a gradient scaler skipping an overflow) is not counted.
The built-in `leantrain.fit` uses the same `attach`, so both loops share one code path.

In a ``torch.distributed`` job (`leantrain.distributed`) the local statistics a method names in
`Method.sync_tensors` are averaged over the processes before ``after_backward`` uses them, and
every step checks that all processes made the same structural decisions.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor, nn

from . import distributed
from .methods.base import Method, Progress
from .structure import Structure, prepare, structure_of
from .surgery import Change

__all__ = ["Attached", "attach", "OptimizerMismatch"]


class OptimizerMismatch(RuntimeError):
    """After a cut the optimizer does not hold exactly the model's live trainable parameters."""


def _live(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _held(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class Attached:
    """Methods hooked onto an optimizer; made by `attach`. See the module docstring.

    Attributes:
        model, optimizer, methods: what was attached.
        total_steps, steps_per_epoch: the step plan the methods see in `Progress`.
        step: optimizer steps counted so far.
        changes: structural changes applied so far (each one remapped the optimizer).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        methods: Sequence[Method],
        total_steps: int,
        steps_per_epoch: int,
        step: int = 0,
        *,
        on_change: Callable[[Change], None] | None = None,
        lap: Callable[[str], ContextManager[Any]] | None = None,
    ) -> None:
        self.model, self.optimizer, self.methods = model, optimizer, list(methods)
        self.total_steps, self.steps_per_epoch, self.step = total_steps, steps_per_epoch, step
        self.changes = 0
        self._on_change = on_change
        # `fit()` passes its Stopwatch: the update is charged to "train", decisions and cuts
        # to "surgery", as before the hooks existed.
        self._lap = lap or (lambda name: contextlib.nullcontext())
        self._open_lap: ContextManager[Any] | None = None
        # The optimizer may hold only some of the trainable parameters (a frozen backbone left
        # out on purpose); the check after each cut then asks only that nothing dead stays.
        self._covers_all = _live(model) <= _held(optimizer)
        self._hooks: list[Any] = []
        self._finished = False

    # ------------------------------------------------------------------ the hooks

    def progress(self) -> Progress:
        """Where training stands for the methods (``step`` = optimizer steps done)."""
        return Progress(self.step, self.total_steps, self.steps_per_epoch)

    def _install(self) -> None:
        self._hooks = [
            self.optimizer.register_step_pre_hook(self._before_step),
            self.optimizer.register_step_post_hook(self._after_step),
        ]

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        # `args` starts with the optimizer itself; a closure is the next one or a keyword.
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is not None:
            # ``step(closure)`` (Lightning, LBFGS) runs forward and backward inside the step, so
            # the gradients exist only after the closure: run the methods right after it.
            def after_closure() -> Any:
                loss = closure()
                self._after_backward()
                return loss

            return tuple(args[:1]), {**kwargs, "closure": after_closure}
        self._after_backward()
        self._open_lap = self._lap("train")  # the update itself, closed in `_after_step`
        self._open_lap.__enter__()
        return None

    def _after_backward(self) -> None:
        progress = self.progress()
        with self._lap("train"):
            if distributed.world_size() > 1:
                distributed.average([t for m in self.methods for t in m.sync_tensors(self.model)])
            for m in self.methods:
                m.after_backward(self.model, progress)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._open_lap is not None:
            self._open_lap.__exit__(None, None, None)
            self._open_lap = None
        self.step += 1
        progress = self.progress()
        with self._lap("surgery"):
            for m in self.methods:
                self.apply(m.step(self.model, progress))
            if distributed.world_size() > 1:
                distributed.check_same_structure(self.model, self.step)

    def apply(self, change: Change | None) -> None:
        """Remap the optimizer to a `Change` (None or empty: nothing) and check the result.

        Raises:
            OptimizerMismatch: the optimizer kept a removed parameter or misses a live one.
        """
        if not change:
            return
        change.apply_to(self.optimizer)
        self.changes += 1
        self._check_optimizer(change)
        if self._on_change is not None:
            self._on_change(change)

    def _check_optimizer(self, change: Change) -> None:
        live, held = _live(self.model), _held(self.optimizer)
        names = {id(p): n for n, p in self.model.named_parameters()}
        dead = held - {id(p) for p in self.model.parameters()}
        missing = live - held if self._covers_all else set()
        if dead or missing:
            raise OptimizerMismatch(
                f"after the cut {change.removed[:3]} the optimizer holds {len(dead)} removed "
                f"parameters and misses {len(missing)} live ones "
                f"({sorted(names.get(i, '?') for i in missing)[:3]}); the cut's Change does not "
                "describe every parameter it replaced, which is a bug in the method."
            )

    # ------------------------------------------------------------------ end, state

    def finish(self) -> list[Change]:
        """Run every method's ``finish`` (DCP: the cut to the compact model), remap the
        optimizer, and remove the hooks. Returns the changes made."""
        changes = []
        if not self._finished:
            if distributed.world_size() > 1:
                # DDP hands process 0's BN statistics to the others at each forward only, so
                # after the last step each process still holds its own: take process 0's.
                distributed.broadcast_buffers(self.model)
            for m in self.methods:
                change = m.finish(self.model)
                if change:
                    self.apply(change)
                    changes.append(change)
            self._finished = True
        self.detach()
        return changes

    def detach(self) -> None:
        """Remove the optimizer hooks (training then goes on without the methods)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def structure(self) -> Structure:
        """The live model's `Structure` (units, channel sets, exclusions with reasons)."""
        return structure_of(self.model)

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume the methods: step, the cuts so far, every method's state.

        Save it beside the model's and optimizer's state dicts; on resume call
        `load_state_dict` *before* loading those, because it rebuilds the shrunk architecture.
        """
        return {
            "step": self.step,
            "surgery": list(getattr(self.model, "surgery_log", [])),
            "methods": [{"name": m.name, "state": m.state_dict()} for m in self.methods],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: replay the saved cuts on the (fresh) model, point the optimizer at the
        surviving parameters, restore every method and set them up again at the saved step.

        Raises:
            ValueError: the state was saved with other methods, or on a model that has been
                cut already.
        """
        names = [m["name"] for m in state["methods"]]
        if names != [m.name for m in self.methods]:
            raise ValueError(
                f"this state was saved with methods {names} but {[m.name for m in self.methods]} "
                "are attached; attach the same methods to resume."
            )
        if getattr(self.model, "surgery_log", []) and self.model.surgery_log != state["surgery"]:
            raise ValueError(
                "load_state_dict() needs the model as created, before any cut; make a fresh "
                "model and optimizer, attach, then load."
            )
        names = {id(p): n for n, p in self.model.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        replay(self.model, state["surgery"])
        for method, saved in zip(self.methods, state["methods"]):
            method.load_state_dict(saved["state"])
        self.step = int(state["step"])
        for m in self.methods:
            m.setup(self.model, self.progress())  # re-freezes frozen units, re-selects channels
            m.events()  # a resume's setup events repeat what was already logged
        # Point the optimizer at the surviving trainable parameters, by name and in the order
        # the cuts left them, so the saved optimizer state (loaded next) lines up slot by slot.
        named = dict(self.model.named_parameters())
        self.optimizer.state.clear()
        for group, group_names in zip(self.optimizer.param_groups, groups):
            group["params"] = [named[n] for n in group_names
                               if n in named and named[n].requires_grad]


def replay(model: nn.Module, surgery: list[dict[str, Any]]) -> None:
    """Replay a surgery log (``model.surgery_log`` of a cut model) on a fresh model."""
    from .surgery import drop_units, prune_channels

    for entry in surgery:
        if entry["op"] == "drop":
            drop_units(model, [entry["name"]], include_downsampling=entry.get("kind") == "projection")
        elif entry["op"] == "prune":
            keep = {k: torch.tensor(v, dtype=torch.long) for k, v in entry["keep"].items()}
            prune_channels(model, keep)
        else:
            raise ValueError(f"unknown surgery op {entry['op']!r} in the saved state.")


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    methods: Method | Sequence[Method],
    total_steps: int,
    example_input: Tensor | Sequence[int] | None = None,
    steps_per_epoch: int | None = None,
    *,
    start_step: int = 0,
    on_change: Callable[[Change], None] | None = None,
    lap: Callable[[str], ContextManager[Any]] | None = None,
) -> Attached:
    """Hook `methods` onto `optimizer` so a plain training loop trains with them.

    Prepares the model (`leantrain.prepare`) and runs every method's ``setup``, remapping the
    optimizer when one cuts up front. In a DDP job attach to the *unwrapped* model, before
    wrapping it (see `leantrain.distributed.ShrinkingDDP`).

    Args:
        model: the model being trained (not its DDP wrapper).
        optimizer: its optimizer; ``optimizer.step()`` then drives the methods.
        methods: one method or several (called in order).
        total_steps: optimizer steps of the whole run (schedules are fractions of it).
        example_input: a batch (or per-sample shape) for models not from `create_model`.
        steps_per_epoch: optimizer steps per epoch (per-epoch events); default `total_steps`.
        start_step: steps already done (a loop resumed from a `fit` checkpoint).
        on_change: called with every `Change` after the optimizer is remapped.
        lap: a timer such as `leantrain.timing.Stopwatch`, charged ``"train"`` / ``"surgery"``.

    Raises:
        ValueError: `total_steps` or `steps_per_epoch` below 1.
        leantrain.StructureError: the model cannot be traced.
    """
    if isinstance(methods, Method):
        methods = [methods]
    steps_per_epoch = total_steps if steps_per_epoch is None else steps_per_epoch
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"total_steps = {total_steps} and steps_per_epoch = {steps_per_epoch} must be ≥ 1; "
            "pass the number of optimizer steps the loop will make."
        )
    if example_input is not None:  # otherwise the methods discover the structure as they need
        prepare(model, example_input)
    handle = Attached(model, optimizer, methods, total_steps, steps_per_epoch, start_step,
                      on_change=on_change, lap=lap)
    for m in handle.methods:
        handle.apply(m.setup(model, handle.progress()))
    handle._install()
    return handle
