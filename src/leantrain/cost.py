"""How much compute a network costs: parameters, forward MACs and measured training FLOPs.

Conventions (every field says which unit it is in):
  * **MACs** are multiply-accumulates. `count_macs` counts them analytically with forward
    hooks, using pycls' formulas: a convolution costs
    ``output elements × in_channels / groups × kh × kw``, a linear layer
    ``in_features × out_features`` per sample, and a bias adds one per output element (pycls
    counts it; this is what makes ResNet-56 on CIFAR 125,747,850 MACs).
  * **FLOPs** are ``2 × MACs``, exactly as `torch.utils.flop_counter.FlopCounterMode` counts
    convolutions and matrix products. FlopCounterMode ignores bias additions, so
    ``2 × count_macs(..., include_bias=False)`` equals its forward count.
  * BatchNorm, ReLU, pooling, the loss and element-wise ops are excluded from both counts: they are
    a few percent of a CNN's arithmetic and FlopCounterMode does not count them either.

Sliceable layers that compute only a subset of their channels (``gate_mode="slice"`` with
``out_index``/``in_index``, see `leantrain.structure.layers`) are counted at their effective width,
read from the tensors each call actually sees; in ``"mask"`` mode they still compute every
channel and are counted at full width. Parameters are always counted at their stored size.

Training cost is measured rather than derived: `measure_step_flops` runs one real forward and
backward under FlopCounterMode, so frozen parameters (no weight gradient) and the first layer
(no input gradient) are accounted for by autograd itself. `CostMeter` integrates that per-sample
cost over a training run whose network shrinks: a method calls `CostMeter.recount` after every
structural change (a dropped layer, removed channels) and `CostMeter.add` every step. For a width
that changes every step (DCP), the caller either recounts every N steps or passes its own
per-step `StepCost` to `add`; re-measuring every step would cost a forward+backward each time.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .compiled import eager


__all__ = [
    "StepCost",
    "CostMeter",
    "count_params",
    "count_macs",
    "measure_step_flops",
    "layer_costs",
    "module_macs",
]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters stored in ``model`` (shared parameters counted once).

    Args:
        model: the network.
        trainable_only: count only parameters with ``requires_grad=True``.

    Returns:
        The parameter count at stored size (channel slicing does not shrink it).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(
    model: nn.Module, input_shape: tuple[int, int, int], *, include_bias: bool = True
) -> int:
    """Forward multiply-accumulates of one sample, counted analytically (pycls formulas).

    Runs one forward pass of a batch of one in eval mode under ``torch.no_grad`` with hooks on
    every ``nn.Conv2d`` and ``nn.Linear``, then restores each module's training flag.

    Args:
        model: the network, in its current (possibly sliced) configuration.
        input_shape: ``(C, H, W)`` of one sample.
        include_bias: count one MAC per output element for each bias addition, as pycls does.
            With ``False`` the result is exactly half of FlopCounterMode's forward FLOPs.

    Returns:
        Forward MACs per sample.
    """
    rows = _trace(model, input_shape)
    return sum(r["macs"] + (r["bias_macs"] if include_bias else 0) for r in rows)


def layer_costs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Per-layer parameters and forward MACs, in execution order (for ``leantrain cost -v``).

    One row per executed ``nn.Conv2d``, ``nn.Linear`` and BatchNorm layer (BatchNorm rows have 0
    MACs but carry parameters, so the rows' ``params`` add up to `count_params` for a typical
    CNN). A module called several times
    appears once with its MACs summed. The rows' ``macs`` add up to `count_macs`.

    Args:
        model: the network.
        input_shape: ``(C, H, W)`` of one sample.

    Returns:
        Dicts with keys ``name`` (dotted module path), ``type`` (class name), ``params``,
        ``macs`` (per sample, bias additions included) and ``output_shape`` (without the batch
        dimension, of the module's last call).
    """
    return [
        {
            "name": r["name"],
            "type": r["type"],
            "params": r["params"],
            "macs": r["macs"] + r["bias_macs"],
            "output_shape": r["output_shape"],
        }
        for r in _trace(model, input_shape)
    ]


@dataclass(frozen=True)
class StepCost:
    """Training FLOPs of one sample through the network as it is now.

    Attributes:
        forward_flops: FLOPs of the forward pass, per sample.
        backward_flops: FLOPs of the backward pass (input and weight gradients), per sample.
    """

    forward_flops: int
    backward_flops: int

    @property
    def train_flops(self) -> int:
        """Forward plus backward FLOPs per sample."""
        return self.forward_flops + self.backward_flops


def measure_step_flops(
    model: nn.Module, input_shape: tuple[int, int, int], batch_size: int = 2
) -> StepCost:
    """Measure one training step's FLOPs per sample with FlopCounterMode, leaving the model as is.

    Runs a forward pass in train mode and a cross-entropy backward on random labels, counting the
    two phases separately. Afterwards every buffer (BN running statistics,
    ``num_batches_tracked``), every ``.grad`` and every module's training flag are put back, and
    the global RNG state is untouched, so calling this mid-training changes nothing. BN
    observers (DCP saliency hooks) are switched off during the measurement.

    Args:
        model: the network; the input is created on its device and dtype.
        input_shape: ``(C, H, W)`` of one sample.
        batch_size: samples in the measured batch (≥ 2, so BatchNorm in train mode works).

    Returns:
        The per-sample forward and backward FLOPs.
    """
    device, dtype = _device_dtype(model)
    training = {m: m.training for m in model.modules()}
    buffers = [
        (mod, name, buf, buf.detach().clone())
        for mod in model.modules()
        for name, buf in mod.named_buffers(recurse=False)
    ]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    # DCP's BN observers and saliency sinks (`leantrain.structure.layers.SliceBatchNorm2d`)
    # must not see the measuring batch; found by the attribute, so this ground-floor module
    # imports no layer.
    observers = {m: (m.observer, getattr(m, "saliency_sink", None))
                 for m in model.modules() if hasattr(m, "observer")}
    try:
        for p in params:
            # Detach the old .grad so backward allocates fresh tensors instead of accumulating
            # into the caller's; the original objects are put back untouched below.
            p.grad = None
        for m in observers:
            m.observer = m.saliency_sink = None
        model.train()
        with ExitStack() as stack:
            # Fork the RNG so the random batch (and any dropout) does not shift the training run's
            # random stream: a recount mid-run must not change what the run does next.
            stack.enter_context(_fork_rng(device))
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(eager())  # a compiled model: count the eager operators
            x = torch.randn(batch_size, *input_shape, device=device, dtype=dtype)
            with FlopCounterMode(display=False) as forward_counter:
                logits = model(x)
            labels = torch.randint(0, logits.shape[1], (batch_size,), device=logits.device)
            loss = F.cross_entropy(logits, labels)
            backward = 0
            if loss.requires_grad:  # False when every parameter is frozen
                with FlopCounterMode(display=False) as backward_counter:
                    loss.backward()
                backward = backward_counter.get_total_flops()
        forward = forward_counter.get_total_flops()
    finally:
        with torch.no_grad():
            for mod, name, buf, saved in buffers:
                mod._buffers[name] = buf  # in case a module rebound the attribute
                buf.copy_(saved)
        for p, g in zip(params, grads):
            p.grad = g
        for m, (obs, sink) in observers.items():
            m.observer, m.saliency_sink = obs, sink
        for m, flag in training.items():
            m.training = flag
    # Counts are linear in the batch for conv/linear layers, so integer division is exact.
    return StepCost(forward_flops=forward // batch_size, backward_flops=backward // batch_size)


class CostMeter:
    """Integrates the training FLOPs of the live network over steps (the network shrinks).

    Usage: build it on the dense model before training, call `recount` after every structural
    change, and `add` after every step with the batch size. For per-step dynamic width, either
    recount every N steps or pass a per-step ``cost`` to `add`.

    Args:
        model: the network at the start of training; its cost is measured immediately.
        input_shape: ``(C, H, W)`` of one sample.
        dense_reference: per-sample cost of the unpruned network; defaults to the first count.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        dense_reference: StepCost | None = None,
    ) -> None:
        self.input_shape = tuple(input_shape)
        self.current = measure_step_flops(model, self.input_shape)
        self.dense = dense_reference if dense_reference is not None else self.current
        self._forward = 0
        self._backward = 0
        self._samples = 0

    def recount(self, model: nn.Module) -> StepCost:
        """Re-measure the per-sample cost after a structural change; later `add` calls use it."""
        self.current = measure_step_flops(model, self.input_shape)
        return self.current

    def add(self, batch_size: int, cost: StepCost | None = None) -> None:
        """Accumulate one step of ``batch_size`` samples.

        Args:
            batch_size: samples trained in this step.
            cost: this step's per-sample cost, overriding the last `recount` (dynamic width).
        """
        c = cost if cost is not None else self.current
        self._forward += c.forward_flops * batch_size
        self._backward += c.backward_flops * batch_size
        self._samples += batch_size

    def totals(self) -> dict[str, int]:
        """Accumulated FLOPs and what the dense reference would have cost for the same samples.

        Returns:
            ``forward_flops``, ``backward_flops``, ``train_flops``, ``samples``,
            ``dense_forward_flops``, ``dense_backward_flops``, ``dense_train_flops``; e.g. the
            cumulative forward reduction is ``1 - forward_flops / dense_forward_flops``.
        """
        n = self._samples
        return {
            "forward_flops": self._forward,
            "backward_flops": self._backward,
            "train_flops": self._forward + self._backward,
            "samples": n,
            "dense_forward_flops": self.dense.forward_flops * n,
            "dense_backward_flops": self.dense.backward_flops * n,
            "dense_train_flops": self.dense.train_flops * n,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers for a checkpoint, so a resumed run continues the same integral."""
        return {
            "input_shape": list(self.input_shape),
            "forward_flops": self._forward,
            "backward_flops": self._backward,
            "samples": self._samples,
            "current_forward_flops": self.current.forward_flops,
            "current_backward_flops": self.current.backward_flops,
            "dense_forward_flops": self.dense.forward_flops,
            "dense_backward_flops": self.dense.backward_flops,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore totals and the current/dense per-sample costs from `state_dict`."""
        self.input_shape = tuple(int(v) for v in state["input_shape"])
        self._forward = int(state["forward_flops"])
        self._backward = int(state["backward_flops"])
        self._samples = int(state["samples"])
        self.current = StepCost(
            int(state["current_forward_flops"]), int(state["current_backward_flops"])
        )
        self.dense = StepCost(int(state["dense_forward_flops"]), int(state["dense_backward_flops"]))


# ----------------------------------------------------------------------------------------------
# internals


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype for a synthetic input: those of the first parameter/buffer."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device, torch.get_default_dtype()
    return torch.device("cpu"), torch.get_default_dtype()


def _fork_rng(device: torch.device) -> Any:
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index
    if index is None and device.type == "cuda":
        index = torch.cuda.current_device()
    return torch.random.fork_rng(devices=[index or 0], device_type=device.type)


def _trace(model: nn.Module, input_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Run a batch of one in eval mode and record the MACs of every compute layer."""
    device, dtype = _device_dtype(model)
    rows: dict[int, dict[str, Any]] = {}  # insertion order = first call order
    handles = []

    def hook(name: str, module: nn.Module) -> Any:
        def fn(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            x = args[0]
            macs, bias = module_macs(mod, x, out)
            row = rows.get(id(mod))
            if row is None:
                row = rows[id(mod)] = {
                    "name": name,
                    "type": type(mod).__name__,
                    "params": sum(p.numel() for p in mod.parameters()),
                    "macs": 0,
                    "bias_macs": 0,
                }
            row["macs"] += macs
            row["bias_macs"] += bias
            row["output_shape"] = tuple(out.shape[1:])

        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            handles.append(m.register_forward_hook(hook(name or type(m).__name__, m)))

    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), eager():  # a compiled model: no graph for a batch of one
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
    return list(rows.values())


def module_macs(mod: nn.Module, x: Tensor, out: Tensor) -> tuple[int, int]:
    """(MACs, bias MACs) of one call, from the tensors actually seen (so slicing is respected)."""
    batch = x.shape[0]
    out_per_sample = out.numel() // batch
    if isinstance(mod, nn.Conv2d):
        # x holds only the in_index channels and out only the out_index ones in slice mode (in
        # mask mode both are full width, as is the compute); a depthwise conv that follows a
        # selection has as many groups as channels it computes.
        kh, kw = mod.kernel_size
        groups = out.shape[1] if getattr(mod, "depthwise_follow", False) and mod.out_index is not None else mod.groups
        macs = out_per_sample * (x.shape[1] // groups) * kh * kw
        return macs, out_per_sample if mod.bias is not None else 0
    if isinstance(mod, nn.Linear):
        # x.shape[-1] is the effective in_features (SelectLinear reads only in_index).
        return out_per_sample * x.shape[-1], out_per_sample if mod.bias is not None else 0
    return 0, 0
