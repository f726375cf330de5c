"""`attach`: plug methods into any training loop through the optimizer's own step hooks.

    handle = leantrain.attach(model, optimizer, [leantrain.DCP(p=0.5)], total_steps)
    ... the unchanged loop: forward, zero_grad, backward, optimizer.step() ...
    handle.finish()                                    # e.g. DCP's cut to the compact model

``optimizer.register_step_pre_hook`` runs every method's ``after_backward`` (gradients are there,
the update has not happened; with ``step(closure)`` right after the closure's backward) and ``register_step_post_hook`` counts the step and runs the
methods' ``step``: decisions, surgery, and the optimizer remap of every `Change`. A step that
never reaches ``optimizer.step()`` (a gradient scaler skipping an overflow) is not counted, nor is
one with no gradient at all (no ``backward()`` ran).
The built-in `leantrain.fit` uses the same `attach`, so both loops share one code path.

`attach` checks what it can at once (`AttachError`, one sentence naming the fix): the optimizer
holds every trainable parameter of the model and nothing else, one attach per model, whole step
counts, method objects, an example batch the model accepts. While training it warns once
(`AttachWarning`) when steps run past ``total_steps``, when the optimizer steps without a
backward, and when another optimizer steps the model's parameters instead of the attached one.

In a ``torch.distributed`` job (`leantrain.training.distributed`) the local statistics a method names in
`Method.sync_tensors` are averaged over the processes before ``after_backward`` uses them, and
every step checks that all processes made the same structural decisions.
"""

from __future__ import annotations

import contextlib
import gc
import numbers
import warnings
import weakref
from collections import Counter
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..methods.base import Method, Progress
from ..structure import Structure, prepare, structure_of
from ..structure.record import cut_history
from ..structure.surgery import Change, replay_cuts, repoint_optimizer
from . import distributed

__all__ = ["Attached", "attach", "AttachError", "AttachTypeError", "AttachWarning",
           "OptimizerMismatch"]


class OptimizerMismatch(RuntimeError):
    """After a cut the optimizer does not hold exactly the model's live trainable parameters."""


class AttachError(ValueError):
    """`attach` was called in a way that cannot work; the message names the fix."""


class AttachTypeError(AttachError, TypeError):
    """An argument of `attach` has the wrong type (a float step count, a method's name)."""


class AttachWarning(UserWarning):
    """The training loop does not drive the attached methods as `attach` expects."""


def _live(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _held(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


# id(model) → its live handle: one attach per model. Weak, so a handle that nothing references
# any more (its optimizer gone too) frees the model for a new attach.
_ATTACHED: weakref.WeakValueDictionary[int, Attached] = weakref.WeakValueDictionary()
# One process-wide optimizer post-step hook serves every live handle (see `Attached._saw_step`).
_GLOBAL_HOOK: Any = None


def _on_any_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for handle in list(_ATTACHED.values()):
        handle._saw_step(optimizer)


def _register(handle: Attached) -> None:
    global _GLOBAL_HOOK
    _ATTACHED[id(handle.model)] = handle
    if _GLOBAL_HOOK is None:
        _GLOBAL_HOOK = register_optimizer_step_post_hook(_on_any_step)


def _unregister(handle: Attached) -> None:
    global _GLOBAL_HOOK
    if _ATTACHED.get(id(handle.model)) is handle:
        del _ATTACHED[id(handle.model)]
    if not _ATTACHED and _GLOBAL_HOOK is not None:
        _GLOBAL_HOOK.remove()
        _GLOBAL_HOOK = None


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
        optimizer_scope: nn.Module | None = None,
    ) -> None:
        self.model, self.optimizer, self.methods = model, optimizer, list(methods)
        self.total_steps, self.steps_per_epoch, self.step = total_steps, steps_per_epoch, step
        self.changes = 0
        self._on_change = on_change
        # `fit()` passes its Stopwatch: the update is charged to "train", decisions and cuts
        # to "surgery", as before the hooks existed.
        self._lap = lap or (lambda name: contextlib.nullcontext())
        self._open_lap: ContextManager[Any] | None = None
        # What the optimizer may hold: the model's parameters, or those of a module around it
        # (a LightningModule whose optimizer also trains parameters outside the pruned `net`).
        self._scope = optimizer_scope if optimizer_scope is not None else model
        # `attach` checks full coverage before the methods' setup (after it, on a resume whose
        # frozen units are frozen again only by setup); the check after each cut then asks it.
        self._covers_all = False
        self._hooks: list[Any] = []
        self._finished = False
        self._skip = False  # this step had no gradient: neither counted nor shown to the methods
        self._others_in_a_row = 0  # steps of other optimizers on this model since our last one
        self._holds_model: weakref.WeakKeyDictionary[Any, tuple[int, bool]] = (
            weakref.WeakKeyDictionary())
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ the hooks

    def progress(self) -> Progress:
        """Where training stands for the methods (``step`` = optimizer steps done)."""
        return Progress(self.step, self.total_steps, self.steps_per_epoch)

    def _install(self) -> None:
        self._hooks = [
            self.optimizer.register_step_pre_hook(self._before_step),
            self.optimizer.register_step_post_hook(self._after_step),
        ]
        _register(self)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        self._skip = False
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

    def _has_gradients(self) -> bool:
        # Stops at the first parameter with a gradient: one look in a normal step.
        return any(p.grad is not None for g in self.optimizer.param_groups for p in g["params"])

    def _after_backward(self) -> None:
        if not self._has_gradients():
            # Nothing to update (torch skips parameters without a gradient): a step that cannot
            # train must not advance the schedules or let a method cut on stale scores.
            self._skip = True
            self._warn_once(
                "no_backward",
                f"optimizer.step() ran at step {self.step} with no gradient on any trainable "
                "parameter, so leantrain neither counted it nor ran the methods; call "
                "loss.backward() between optimizer.zero_grad() and optimizer.step().",
            )
            return
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
        self._others_in_a_row = 0
        if self._skip:
            self._skip = False
            return
        self.step += 1
        if self.step > self.total_steps:
            self._warn_once(
                "past_total",
                f"optimizer step {self.step} is past total_steps = {self.total_steps}, so the "
                "methods' schedules have ended and act as at the end of training; pass attach "
                "the number of optimizer steps the loop really makes.",
            )
        progress = self.progress()
        with self._lap("surgery"):
            for m in self.methods:
                self.apply(m.step(self.model, progress))
            if distributed.world_size() > 1:
                distributed.check_same_structure(self.model, self.step)

    def _saw_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Any optimizer in the process stepped (the global hook): notice when another one
        trains this model while the attached one no longer steps."""
        if optimizer is self.optimizer:
            return
        known = self._holds_model.get(optimizer)
        if known is None or known[0] != self.changes:  # cuts replace parameters: look again
            ours = {id(p) for p in self.model.parameters()}
            holds = any(id(p) in ours for g in optimizer.param_groups for p in g["params"])
            known = (self.changes, holds)
            self._holds_model[optimizer] = known
        if not known[1]:
            return
        self._others_in_a_row += 1
        if self._others_in_a_row >= 2:  # two in a row: not a second optimizer used alongside
            self._warn_once(
                "other_optimizer",
                f"another optimizer ({type(optimizer).__name__}) steps this model's parameters "
                "while the attached one does not, so no step is counted and the methods do not "
                "run; step the attached optimizer, or call handle.detach() and attach the new one.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, AttachWarning, stacklevel=3)

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
        dead = held - {id(p) for p in self._scope.parameters()}
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
        """Remove the optimizer hooks (training then goes on without the methods); the model
        may then be attached again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        _unregister(self)

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
            "surgery": cut_history(self.model),
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
        if (done := cut_history(self.model)) and done != state["surgery"]:
            raise ValueError(
                "load_state_dict() needs the model as created, before any cut; make a fresh "
                "model and optimizer, attach, then load."
            )
        names = {id(p): n for n, p in self.model.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        replay_cuts(self.model, state["surgery"])
        for method, saved in zip(self.methods, state["methods"]):
            method.load_state_dict(saved["state"])
        self.step = int(state["step"])
        for m in self.methods:
            m.setup(self.model, self.progress())  # re-freezes frozen units, re-selects channels
            m.events()  # a resume's setup events repeat what was already logged
        # The surviving trainable parameters, by name and in the order the cuts left them, so
        # the saved optimizer state (loaded next) lines up slot by slot.
        repoint_optimizer(self.optimizer, self.model, groups)


# ---------------------------------------------------------------------------------- checks


def _method_list(methods: Any, allow_empty: bool) -> list[Method]:
    """`methods` as a list of Method objects, or an `AttachError` naming what was passed."""
    if isinstance(methods, Method):
        return [methods]
    if isinstance(methods, (str, type)) or not isinstance(methods, Iterable):
        _check_method(methods)  # raises with the right sentence
    found = list(methods)
    for m in found:
        _check_method(m)
    if not found and not allow_empty:
        raise AttachError(
            "methods is empty, so attach would change nothing; pass at least one method such as "
            "leantrain.DCP() or leantrain.LearnDrop(), or train without attach for a dense run."
        )
    kinds = Counter(type(m) for m in found)
    twice = [k for k, n in kinds.items() if n > 1]
    if twice:
        name = twice[0].__name__
        raise AttachError(
            f"methods lists {name} {kinds[twice[0]]} times, and each would score and cut the "
            f"model on its own; pass one {name}(...) with the settings you want."
        )
    return found


def _check_method(m: Any) -> None:
    if isinstance(m, Method):
        return
    if isinstance(m, type) and issubclass(m, Method):
        raise AttachTypeError(
            f"methods holds the class {m.__name__}, not a method object; create one: "
            f"{m.__name__}() (with its settings as arguments)."
        )
    if isinstance(m, str):
        raise AttachTypeError(
            f"methods holds the name {m!r}, not a method object; pass one such as "
            "leantrain.DCP(), or build it by name with leantrain.METHODS[name]()."
        )
    raise AttachTypeError(
        f"methods holds {m!r} ({type(m).__name__}), which is not a leantrain Method; pass method "
        "objects such as leantrain.DCP() or leantrain.LearnDrop(), alone or in a list."
    )


def _whole(name: str, value: Any) -> int:
    """`value` as an int step count, or an `AttachTypeError` (floats, bools, strings, None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AttachTypeError(
            f"{name} must be a whole number of optimizer steps (an int such as "
            f"epochs * len(loader)), not {value!r}."
        )
    return int(value)


def _check_not_attached(model: nn.Module) -> None:
    if id(model) not in _ATTACHED:
        return
    gc.collect()  # a handle left by an interrupted loop may only wait for the cycle collector
    old = _ATTACHED.get(id(model))
    if old is None:
        return
    raise AttachError(
        f"this {type(model).__name__} is already attached (to a {type(old.optimizer).__name__} "
        f"with methods {[m.name for m in old.methods]}); call handle.finish() or "
        "handle.detach() on that handle first, or pass all the methods to one attach."
    )


def _check_optimizer_holds(
    model: nn.Module, optimizer: torch.optim.Optimizer, scope: nn.Module, missing_too: bool
) -> None:
    """The optimizer holds nothing outside `scope` and (when asked) every trainable parameter
    of `model`; frozen parameters of the model may be in it or not."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise AttachTypeError(
            f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer; pass the "
            "optimizer the loop steps, e.g. torch.optim.SGD(model.parameters(), lr=0.1)."
        )
    ours = {id(p) for p in scope.parameters()}
    foreign = [i for i, g in enumerate(optimizer.param_groups)
               if any(id(p) not in ours for p in g["params"])]
    if foreign:
        count = sum(id(p) not in ours for g in optimizer.param_groups for p in g["params"])
        raise AttachError(
            f"the optimizer holds {count} parameters that are not this {type(scope).__name__}'s "
            f"(param group{'s' if len(foreign) > 1 else ''} {', '.join(map(str, foreign))}), e.g. "
            "another model's; build it from the attached model's parameters, "
            "torch.optim.SGD(model.parameters(), ...)."
        )
    if missing_too:
        _check_covers(model, optimizer)


def _check_covers(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    held = _held(optimizer)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise AttachError(
            f"the optimizer misses {len(missing)} trainable parameters of the model "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}), which would then "
            "never train nor follow a cut; build it from model.parameters(), or set "
            "requires_grad=False on the parameters meant to stay fixed."
        )


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
    optimizer_scope: nn.Module | None = None,
    allow_empty: bool = False,
) -> Attached:
    """Hook `methods` onto `optimizer` so a plain training loop trains with them.

    Checks the arguments first (see Raises), then prepares the model (`leantrain.prepare`) and
    runs every method's ``setup``, remapping the optimizer when one cuts up front. In a DDP job
    attach to the *unwrapped* model, before wrapping it (see `leantrain.training.distributed.ShrinkingDDP`).
    One attach per model: `Attached.finish` or `Attached.detach` frees it for the next.

    Args:
        model: the model being trained (not its DDP wrapper).
        optimizer: its optimizer, holding every trainable parameter of `model` (frozen ones may
            be in it or not) and no other; ``optimizer.step()`` then drives the methods.
        methods: one method object or several (called in order), at most one of each kind.
        total_steps: optimizer steps of the whole run (schedules are fractions of it).
        example_input: a float batch ``(N, C, H, W)`` the model accepts, or the per-sample shape
            ``(C, H, W)``, for models not from `create_model`.
        steps_per_epoch: optimizer steps per epoch (per-epoch events); default `total_steps`.
        start_step: steps already done (a loop resumed from a `fit` checkpoint).
        on_change: called with every `Change` after the optimizer is remapped.
        lap: a timer such as `leantrain.training.timing.Stopwatch`, charged ``"train"`` / ``"surgery"``.
        optimizer_scope: a module around `model` whose other parameters the optimizer also
            trains (Lightning: the LightningModule around the pruned submodule).
        allow_empty: accept no method at all (`fit` counts and times a dense run this way).

    Raises:
        AttachTypeError: a step count that is not an int, methods that are not method objects.
        AttachError: step counts below 1, no method, the same method kind twice, the model
            already attached, an optimizer that misses a trainable parameter of the model or
            holds another's.
        leantrain.StructureError: the model cannot be traced, or `example_input` is not a float
            batch it accepts.
    """
    methods = _method_list(methods, allow_empty)
    total_steps = _whole("total_steps", total_steps)
    steps_per_epoch = total_steps if steps_per_epoch is None else _whole("steps_per_epoch",
                                                                           steps_per_epoch)
    start_step = _whole("start_step", start_step)
    if total_steps < 1 or steps_per_epoch < 1:
        raise AttachError(
            f"total_steps = {total_steps} and steps_per_epoch = {steps_per_epoch} must be ≥ 1; "
            "pass the number of optimizer steps the loop will make."
        )
    if not 0 <= start_step <= total_steps:
        raise AttachError(
            f"start_step = {start_step} must lie in [0, total_steps = {total_steps}]; pass the "
            "optimizer steps this run has already made (0 for a fresh run)."
        )
    _check_not_attached(model)
    scope = model if optimizer_scope is None else optimizer_scope
    # A resumed loop's optimizer lacks the units its methods froze, which are trainable in the
    # fresh model until the methods' setup freezes them again: check coverage after setup then.
    _check_optimizer_holds(model, optimizer, scope, missing_too=start_step == 0)
    if example_input is not None:  # otherwise the methods discover the structure as they need
        prepare(model, example_input)
    handle = Attached(model, optimizer, methods, total_steps, steps_per_epoch, start_step,
                      on_change=on_change, lap=lap, optimizer_scope=optimizer_scope)
    handle._covers_all = start_step == 0
    for m in handle.methods:
        handle.apply(m.setup(model, handle.progress()))
    if start_step > 0:
        _check_covers(model, optimizer)
        handle._covers_all = True
    handle._install()
    return handle
