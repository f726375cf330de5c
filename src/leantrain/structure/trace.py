"""Tracing for discovery: the model's forward as a torch.fx graph with each node's output shape,
and the graph questions the channel and unit finders share.

Why torch.fx: a symbolic trace records every call of the forward as a graph node, with the
module path of each node (``nn_module_stack``), without running real data; `ShapeProp` then adds
each node's output shape from one sample. That is exactly the information needed here: which
tensor each conv reads, where a block's input and output are, and where channels meet a residual
add, a concat or a reshape. Torch-Pruning's DependencyGraph answers a different question (which
layers must be pruned together, one-shot) and an autograd walk loses the module boundaries, so
neither fits the per-step slicing and the block dropping we do.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.stateless import _reparametrize_module

from ..cost import module_macs
from .layers import (
    ELEMENTWISE_MODULES, SelectLinear, SliceBatchNorm2d, SliceConv2d, is_norm_act, sliceable_layers,
)
from .types import Excluded, StructureError, Unit

__all__ = [
    "ADDS", "ELEMENTWISE_FUNCTIONS", "ELEMENTWISE_METHODS", "ELEMENTWISE_MODULES",
    "NONNEGATIVE_FUNCTIONS", "NONNEGATIVE_MODULES", "POOL_FUNCTIONS", "POOL_MODULES",
    "RESHAPE_FUNCTIONS", "RESHAPE_METHODS", "FunctionModule", "Refused", "Traced", "Tracer",
    "ZeroBranch",
    "derived_from_metadata", "device_dtype", "exact_types", "fmt_shape", "is_leaf",
    "reads_metadata",
]

# Element-wise maps with f(0) = 0 (ELEMENTWISE_MODULES lives beside the fused norm+act check
# in layers.py, which needs it too): a channel that is zero stays zero, so computing only the
# selected channels equals zeroing the others (the masked reference).
ELEMENTWISE_FUNCTIONS: set[Callable[..., Any]] = {
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.hardswish, F.silu,
    F.gelu, F.hardtanh, F.elu, torch.tanh, F.mish, F.dropout,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone"}
# Activations whose output is never negative: a block input after one needs no ReLU replacement.
NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6)
NONNEGATIVE_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6}
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
RESHAPE_FUNCTIONS = {torch.flatten, torch.squeeze, torch.reshape}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
ADDS = {operator.add, operator.iadd, torch.add}
# A sliceable layer's selection and saliency attributes, set aside while shapes are measured.
_SELECTION_ATTRS = ("out_index", "in_index", "out_active", "observer", "saliency_sink")


class Tracer(fx.Tracer):
    """Treats torch.nn layers as leaves, as fx does, and also leantrain's sliceable subclasses."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # A fused norm+act layer (timm's BatchNormAct2d) is one BN node, not its inlined
        # F.batch_norm: discovery reads it as a BN whose output passes an activation.
        if isinstance(m, (SliceConv2d, SliceBatchNorm2d, SelectLinear)) or is_norm_act(m):
            return True
        return super().is_leaf_module(m, qualname)


class Traced:
    """A model's forward traced once: its graph nodes, their modules and output shapes."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = shape
        self.modules = dict(model.named_modules())
        self.excluded: list[Excluded] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------ trace

    def _trace(self) -> fx.GraphModule:
        flags = {m: m.training for m in self.model.modules()}
        try:
            self.model.train()  # trace the training forward: `if self.training` is concrete
            graph = Tracer().trace(self.model)
        except Exception as e:  # fx raises many types for untraceable code
            raise StructureError(
                f"torch.fx cannot trace {type(self.model).__name__}.forward ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else e}); make the forward traceable or define "
                "droppable_units() and channel_sets() on the model (see leantrain.structure)."
            ) from None
        else:
            self.model.eval()
            branches = self._eval_graph_differs(graph)
        finally:
            for m, flag in flags.items():
                m.training = flag
        if branches:
            self.notes.append(
                "the forward branches on self.training: discovery traced the training branch, "
                "so the units and channel sets are those of the training forward")
        gm = fx.GraphModule(self.model, graph)
        _, dtype = device_dtype(self.model)
        saved = [(m, dict(m.__dict__)) for m in sliceable_layers(self.model)]
        try:
            for m, _ in saved:  # full width while measuring shapes
                for attr in _SELECTION_ATTRS:
                    m.__dict__.pop(attr, None)
            self.model.eval()
            # On the meta device (parameters and buffers swapped for meta copies for the call):
            # shapes without arithmetic. A real sample cost ~1 s for ResNet-50 on 2 CPU cores,
            # and fake tensors were slower still (dispatch overhead).
            meta = {k: torch.empty_like(v, device="meta") for k, v in
                    [*gm.named_parameters(), *gm.named_buffers()]}
            with torch.no_grad(), _reparametrize_module(gm, meta):
                ShapeProp(gm).propagate(torch.zeros(1, *self.shape, device="meta", dtype=dtype))
        except Exception as e:
            raise StructureError(
                f"{type(self.model).__name__} does not run on an input of shape "
                f"{(1, *self.shape)} ({type(e).__name__}: {str(e).splitlines()[0]}); give "
                "leantrain.prepare an example input the model accepts."
            ) from None
        finally:
            for m, attrs in saved:
                m.__dict__.update({k: v for k, v in attrs.items() if k in _SELECTION_ATTRS})
            for m, flag in flags.items():
                m.training = flag
        return gm

    def _eval_graph_differs(self, train_graph: fx.Graph) -> bool:
        """Whether the model (in eval mode) traces to another graph than the training one."""
        try:
            eval_graph = Tracer().trace(self.model)
        except Exception:  # only the training forward must trace
            return True

        def calls(graph: fx.Graph) -> list[tuple[str, str]]:
            return [(n.op, str(n.target)) for n in graph.nodes]

        return calls(eval_graph) != calls(train_graph)

    # ------------------------------------------------------------------ helpers

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]

    def _is(self, node: fx.Node, *types: type[nn.Module]) -> bool:
        m = self._module(node)
        return m is not None and type(m) in exact_types(types)

    def _is_bn(self, node: fx.Node) -> bool:
        """A BatchNorm2d, or a fused norm+act layer (`leantrain.structure.layers.is_norm_act`)."""
        return self._is(node, nn.BatchNorm2d) or is_norm_act(self._module(node))

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        return self._scope(node) or "the model's forward"

    def _scope(self, node: fx.Node) -> str:
        """The innermost module whose forward holds ``node`` ('' for the model's own)."""
        paths = [v[0] if isinstance(v, tuple) else str(v)
                 for v in (node.meta.get("nn_module_stack") or {}).values()]
        return paths[-1] if paths else ""

    def _describe(self, node: fx.Node) -> str:
        if node.op == "output":
            return "the model's output"
        if node.op == "call_module":
            return f"{node.target} ({type(self._module(node)).__name__})"
        if node.op == "call_function" and node.target in ADDS:
            return f"a residual add in {self._where(node)}"
        name = getattr(node.target, "__name__", str(node.target))
        if name == "cat":
            return f"a concat (torch.cat) in {self._where(node)}"
        return f"{name} in {self._where(node)}"

    def _shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    # ------------------------------------------------------------------ cost

    def _macs(self, units: list[Unit]) -> dict[str, int]:
        """Forward MACs per sample of the whole model and of each unit, from the traced shapes
        (`leantrain.cost`'s per-layer formula on meta tensors of those shapes; for inspection)."""
        per_module: dict[str, int] = defaultdict(int)
        for n in self.nodes:
            mod, out = self._module(n), self._shape(n)
            if not isinstance(mod, (nn.Conv2d, nn.Linear)) or out is None:
                continue
            inp = self._shape(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
            if inp is None:
                continue
            macs, bias = module_macs(mod, torch.empty(inp, device="meta"),
                                      torch.empty(out, device="meta"))
            per_module[str(n.target)] += macs + bias
        out_macs = {"": sum(per_module.values())}
        for u in units:
            out_macs[u.name] = sum(
                v for k, v in per_module.items()
                if any(k == m or k.startswith(m + ".") for m in u.members)
            )
        return out_macs


class Refused(Exception):
    """A part of the model that discovery leaves out, with the reason (`Excluded`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FunctionModule(nn.Module):
    """A parameter-free function as a module (the activation a dropped block leaves)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class ZeroBranch(nn.Module):
    """What takes a dropped residual branch's place when the add ``x + f(x)`` is written outside
    the branch's modules (in a parent's forward or a loop): a zero that broadcasts, so the add
    passes ``x`` on and none of ``f``'s work is done."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x.new_zeros(())


def reads_metadata(node: fx.Node) -> bool:
    """A node that reads a tensor's shape (``x.size()``, ``x.shape``, ``x.dim()``)."""
    return (node.op == "call_method" and node.target in ("size", "dim")) or (
        node.op == "call_function" and node.target is getattr
        and node.args[1:2] in (("shape",), ("ndim",))
    )


def derived_from_metadata(node: fx.Node) -> bool:
    """A value computed only from tensor shapes (``x.size(0)``, ``x.shape[0]``)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if reads_metadata(n):
            continue
        if n.op != "call_function" or n.target not in (operator.getitem, operator.mul, operator.floordiv):
            return False
        todo += n.all_input_nodes
    return True


def exact_types(types: tuple[type[nn.Module], ...]) -> set[type[nn.Module]]:
    """The types and leantrain's sliceable subclasses of them (a user's own subclass of
    Conv2d may compute something else, so only exact types are trusted)."""
    out = set(types)
    for base, sub in ((nn.Conv2d, SliceConv2d), (nn.BatchNorm2d, SliceBatchNorm2d), (nn.Linear, SelectLinear)):
        if base in out:
            out.add(sub)
    return out


def is_leaf(m: nn.Module) -> bool:
    """A module without children."""
    return not any(True for _ in m.children())


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's floating-point tensors live, and their dtype."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()



def fmt_shape(shape: tuple[int, ...] | None) -> str:
    """A per-sample shape as ``C×H×W`` for messages."""
    return "?" if shape is None else "×".join(str(d) for d in shape[1:])
