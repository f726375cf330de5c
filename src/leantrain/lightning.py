"""`LeanTrain`: leantrain's methods in a Lightning ``Trainer`` (``pip install 'leantrain[lightning]'``).

    trainer = lightning.Trainer(max_epochs=10, callbacks=[LeanTrain([leantrain.DCP(p=0.5)])])
    trainer.fit(module)                              # a LightningModule with one optimizer
    trainer.fit(module, ckpt_path="last.ckpt")       # resume: the shrunk architecture is rebuilt

The callback attaches the methods to the module's optimizer (`leantrain.attach`: they run from
the optimizer's step hooks, after the closure's backward), keeps their state in Lightning
checkpoints, and on resume replays the saved cuts on the freshly built module *before* Lightning
loads the weights, so the state dict fits. At the end of training it runs the methods' ``finish``
(DCP's cut to the compact model).
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
from torch import Tensor, nn

from .methods.base import Method
from .structure import prepare
from .structure.surgery import replay_cuts, repoint_optimizer
from .training.attach import Attached, _method_list, attach

__all__ = ["LeanTrain"]


class LeanTrain(pl.Callback):
    """Train a `LightningModule` with leantrain methods.

    Args:
        methods: one method or several, e.g. ``[leantrain.LearnDrop(), leantrain.DCP()]``.
        module: attribute name of the submodule the methods change (e.g. ``"net"``); default the
            LightningModule itself.
        example_input: a batch (or per-sample shape) when that module is not from
            `leantrain.create_model`.
    """

    def __init__(
        self,
        methods: Method | Sequence[Method],
        module: str | None = None,
        example_input: Tensor | Sequence[int] | None = None,
    ) -> None:
        self.methods = _method_list(methods, allow_empty=False)  # the errors attach gives
        self.module_name = module
        self.example_input = example_input
        self.handle: Attached | None = None
        self._resume_step = 0
        self._resumed = False

    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        return pl_module.get_submodule(self.module_name) if self.module_name else pl_module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        prepare(self._target(pl_module), self.example_input)
        # Lightning calls the module's on_load_checkpoint before it loads the weights (and the
        # callbacks' own hooks only after), so the architecture is rebuilt from there.
        original = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            state = (checkpoint.get("callbacks") or {}).get(self.state_key)
            if state:
                self._restore(pl_module, state)
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def _restore(self, pl_module: pl.LightningModule, state: dict[str, Any]) -> None:
        names = [m["name"] for m in state["methods"]]
        if names != [m.name for m in self.methods]:
            raise ValueError(
                f"this checkpoint was trained with methods {names} but LeanTrain has "
                f"{[m.name for m in self.methods]}; resume with the same methods."
            )
        replay_cuts(self._target(pl_module), state["surgery"])
        for method, saved in zip(self.methods, state["methods"]):
            method.load_state_dict(saved["state"])
        self._resume_step, self._resumed = int(state["step"]), True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"LeanTrain needs exactly one optimizer, but configure_optimizers returned "
                f"{len(trainer.optimizers)}; return one optimizer."
            )
        if trainer.world_size > 1:
            # Lightning's own DDP wrapper cannot follow parameters that are cut out.
            raise ValueError(
                f"LeanTrain runs in a single-process Trainer, but this one has "
                f"{trainer.world_size} processes; for several use `torchrun -m leantrain train` "
                "or leantrain.training.distributed.ShrinkingDDP in your own loop."
            )
        opt = trainer.optimizers[0]
        total = int(trainer.estimated_stepping_batches)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        per_epoch = max(1, total // epochs)
        # The optimizer may also train parameters of the LightningModule outside `module`.
        self.handle = attach(self._target(pl_module), opt, self.methods, total,
                             steps_per_epoch=per_epoch, start_step=self._resume_step,
                             optimizer_scope=pl_module)
        if self._resumed:
            for m in self.methods:
                m.events()  # setup events of a resume repeat the first run's
            # Frozen units left the optimizer in the first run; leave the rebuilt one alike, so
            # Lightning's saved optimizer state (loaded next) lines up slot by slot.
            repoint_optimizer(opt, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.handle is not None:
            self.handle.finish()

    def state_dict(self) -> dict[str, Any]:
        return self.handle.state_dict() if self.handle is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # restored before the weights, in the module's on_load_checkpoint (see `setup`)
