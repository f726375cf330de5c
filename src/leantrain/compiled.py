"""torch.compile with the methods: what it takes for a compiled model to keep paying as it shrinks.

`compile_model` compiles a model in place (``nn.Module.compile``: the object, its state-dict keys
and every method's hold on its modules stay) with the settings the methods need:

* **Learn&Drop** changes the module tree at each drop, which fails a guard of the compiled graph:
  one recompile per drop (the next step), expected. Dynamo gives up on a function after
  ``recompile_limit`` (8) compiles and runs it eager from then on, silently; a ResNet-56 can drop
  up to 27 blocks, so the limit is raised to `RECOMPILE_LIMIT`.
* **DCP** computes other widths every step. The selection's index tensors are graph inputs whose
  lengths are marked dynamic (`mark_dynamic_widths`), so one graph with symbolic widths serves
  every width: one compile before the selection starts (full width) and one after, instead of one
  per step, with backends that keep the widths symbolic (aot_eager). Inductor fixes each
  convolution's channel counts, so `fit` trains DCP eager under it (`Method.compile_problem`,
  docs/compile.md). Duck sizing (two widths equal at trace time sharing one symbol, so a later difference
  recompiles) is switched off for the same reason. Its saliency is read from the gradient of a
  sink tensor rather than by a backward hook that writes a dict, which a compiled graph cannot do
  (`leantrain.structure.layers.SliceBatchNorm2d.saliency_sink`).
* Cost counting (FLOPs, MACs) and the evaluation in `fit` run eager (`eager`): a batch of one,
  ``no_grad`` or eval mode would each compile graphs of their own, and FlopCounterMode counts
  the eager operators.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

__all__ = ["RECOMPILE_LIMIT", "backend_problem", "compile_model", "eager", "is_compiled",
           "mark_dynamic_widths"]

# Compiles per function before dynamo falls back to eager: every Learn&Drop drop is one, and the
# deepest model in the suites (ResNet-56, 27 blocks) drops at most 27; DCP adds 2 (before and
# after its selection starts) and the export 1.
RECOMPILE_LIMIT = 64


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile `model` in place for training with leantrain's methods and return it.

    Call it before or after `leantrain.attach`; the methods see the compiled state at their next
    step. Sets two process-wide dynamo settings (see the module docstring): the recompile limit
    (raised to `RECOMPILE_LIMIT`, never lowered) and duck sizing (off).

    Raises:
        ValueError: `backend` is not a torch.compile backend.
    """
    if problem := backend_problem(backend):
        raise ValueError(problem)
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                             4 * RECOMPILE_LIMIT)
    torch.fx.experimental._config.use_duck_shape = False
    model.compile(backend=backend)
    return model


def backend_problem(backend: str) -> str | None:
    """Why `backend` cannot compile (one sentence), or None."""
    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend in backends:
        return None
    return (f"{backend!r} is not a torch.compile backend; choose one of {', '.join(backends)} "
            "(inductor is torch's default).")


def is_compiled(model: nn.Module) -> bool:
    """Whether `model` was compiled in place (``model.compile()`` or `compile_model`)."""
    return getattr(model, "_compiled_call_impl", None) is not None


def eager() -> contextlib.AbstractContextManager[None]:
    """Run compiled models eager inside this block (cost counting, evaluation)."""
    return torch.compiler.set_stance("force_eager")


def mark_dynamic_widths(*tensors: Tensor | None) -> None:
    """Mark the length of each index tensor dynamic, so a compiled graph takes any width."""
    for t in tensors:
        if t is not None:
            torch._dynamo.maybe_mark_dynamic(t, 0)
