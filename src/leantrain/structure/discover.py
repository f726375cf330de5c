"""Find a model's `Structure` from its own forward, by tracing it with torch.fx.

Why torch.fx: a symbolic trace records every call of the forward as a graph node, with the
module path of each node (``nn_module_stack``), without running real data; `ShapeProp` then adds
each node's output shape from one sample. That is exactly the information needed here: which
tensor each conv reads, where a block's input and output are, and where channels meet a residual
add, a concat or a reshape. Torch-Pruning's DependencyGraph answers a different question (which
layers must be pruned together, one-shot) and an autograd walk loses the module boundaries, so
neither fits the per-step slicing and the block dropping we do.

It never guesses: any part it cannot prove safe is left out and listed in `Structure.excluded`.

Droppable units:
  * a submodule whose traced region has one input ``x`` and computes ``x + branch(x)`` (either
    operand order, optionally followed by an element-wise activation) with equal input and
    output shapes: torchvision BasicBlock/Bottleneck without downsample, MobileNetV2's
    InvertedResidual with a residual connection, pre-activation blocks. Replaced by
    ``nn.Identity`` (or the activation, unless ``x`` is already non-negative after a ReLU).
  * the same with a projection on the shortcut (``proj(x) + branch(x)``, ``proj`` a child
    module): kind ``"projection"``, replaced by the projection (+ activation), only when asked.
  * in a ``nn.Sequential``: a conv (stride 1, equal input and output width) → BN → element-wise
    activation run with equal input and output shapes, as three children (torchvision VGG) or
    as one child holding exactly those three (leantrain's `ConvBN`). Replaced by identities.

Prunable channel sets: a conv (groups 1) whose only reader is a BatchNorm, whose channels reach
only layers that can read a subset of them: convs (groups 1) and linear layers (after a global
pool / flatten of a 1×1 map), through element-wise activations, dropout and pooling; a depthwise
conv (with its BN) on the way follows the selection channel by channel.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter, defaultdict
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.stateless import _reparametrize_module

from ..cost import module_macs
from .layers import SelectLinear, SliceBatchNorm2d, SliceConv2d, sliceable_layers
from .record import example_shape
from .types import ChannelSet, Excluded, Structure, StructureError, Unit

__all__ = ["discover"]

# Element-wise maps with f(0) = 0: a channel that is zero stays zero, so computing only the
# selected channels equals zeroing the others (the masked reference).
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU, nn.Hardtanh, nn.ELU,
    nn.Tanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
)
_ELEMENTWISE_FUNCTIONS: set[Callable[..., Any]] = {
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.hardswish, F.silu,
    F.gelu, F.hardtanh, F.elu, torch.tanh, F.mish, F.dropout,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone"}
# Activations whose output is never negative: a block input after one needs no ReLU replacement.
_NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6)
_NONNEGATIVE_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_, F.relu6}
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_RESHAPES_FUNCTIONS = {torch.flatten, torch.squeeze, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
_ADDS = {operator.add, operator.iadd, torch.add}


class _Tracer(fx.Tracer):
    """Treats torch.nn layers as leaves, as fx does, and also leantrain's sliceable subclasses."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (SliceConv2d, SliceBatchNorm2d, SelectLinear)):
            return True
        return super().is_leaf_module(m, qualname)


def discover(model: nn.Module) -> Structure:
    """Trace `model` and return its `Structure` (see the module docstring for the rules).

    A model defining ``droppable_units()`` and ``channel_sets()`` describes itself instead.

    Raises:
        StructureError: no example input shape is known, or the forward cannot be traced.
    """
    own_units, own_sets = getattr(model, "droppable_units", None), getattr(model, "channel_sets", None)
    if callable(own_units) and callable(own_sets):
        units = own_units(True)
        stages: dict[str, list[str]] = {}
        for u in units:
            stages.setdefault(u.stage, []).append(u.name)
        own_stages = getattr(model, "stage_blocks", None)
        return Structure(
            units=units, channel_sets=own_sets(), stages=own_stages() if callable(own_stages) else stages,
            input_shape=example_shape(model),
        )
    shape = example_shape(model)
    if shape is None:
        raise StructureError(
            f"leantrain does not know the input shape of {type(model).__name__}; call "
            "leantrain.prepare(model, example_input) once before training."
        )
    return _Discovery(model, shape).run()


class _Discovery:
    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = shape
        self.modules = dict(model.named_modules())
        self.excluded: list[Excluded] = []

    # ------------------------------------------------------------------ trace

    def _trace(self) -> fx.GraphModule:
        flags = {m: m.training for m in self.model.modules()}
        try:
            self.model.train()  # trace the training forward: `if self.training` is concrete
            graph = _Tracer().trace(self.model)
        except Exception as e:  # fx raises many types for untraceable code
            raise StructureError(
                f"torch.fx cannot trace {type(self.model).__name__}.forward ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else e}); make the forward traceable or define "
                "droppable_units() and channel_sets() on the model (see leantrain.structure)."
            ) from None
        finally:
            for m, flag in flags.items():
                m.training = flag
        gm = fx.GraphModule(self.model, graph)
        _, dtype = _device_dtype(self.model)
        saved = [(m, dict(m.__dict__)) for m in sliceable_layers(self.model)]
        try:
            for m, _ in saved:  # full width while measuring shapes
                for attr in ("out_index", "in_index", "out_active", "observer"):
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
                m.__dict__.update({k: v for k, v in attrs.items() if k in
                                   ("out_index", "in_index", "out_active", "observer")})
            for m, flag in flags.items():
                m.training = flag
        return gm

    def run(self) -> Structure:
        gm = self._trace()
        self.nodes = list(gm.graph.nodes)
        self.calls = Counter(n.target for n in self.nodes if n.op == "call_module")
        sets = self._channel_sets()
        units, blocks = self._units()
        stages: dict[str, list[str]] = defaultdict(list)
        for name, stage in blocks:
            stages[stage].append(name)
        macs = self._macs(units)
        layers = self._layers(units)
        return Structure(
            units=units, channel_sets=sets, excluded=self.excluded, stages=dict(stages),
            input_shape=self.shape, macs=macs, layers=layers,
            classifier=layers[-1][0] if layers else None,
        )

    def _layers(self, units: list[Unit]) -> list[tuple[str, tuple[str, ...]]]:
        """Parameterised parts in forward order: units and blocks whole, conv + its BN, others."""
        residual = [u for u in units if u.residual]
        runs = {m: (r[0], tuple(r)) for r in self._all_runs for m in r}
        groups: dict[str, tuple[str, ...]] = {}
        group_of_node: dict[fx.Node, str] = {}
        for n in self.nodes:
            mod = self._module(n)
            if mod is None or not any(True for _ in mod.parameters(recurse=False)):
                continue
            path = str(n.target)
            unit = next((u for u in residual if path.startswith(u.name + ".")), None)
            if unit is not None:
                name, members = unit.name, unit.members
            elif path in runs:
                name, members = runs[path]
            elif any(path.startswith(r + ".") for r in runs):
                run = next(r for r in runs if path.startswith(r + "."))
                name, members = runs[run]
            elif isinstance(mod, nn.BatchNorm2d) and n.args and n.args[0] in group_of_node:
                name = group_of_node[n.args[0]]  # type: ignore[index]
                groups[name] = (*groups[name], path)
                continue
            else:
                name = self._wrapper_name(path) if isinstance(mod, nn.Conv2d) else path
                members = (name,)
            group_of_node[n] = name
            groups.setdefault(name, members)
        return list(groups.items())

    # ------------------------------------------------------------------ helpers

    def _module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]

    def _is(self, node: fx.Node, *types: type[nn.Module]) -> bool:
        m = self._module(node)
        return m is not None and type(m) in _exact(types)

    def _where(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_module":
            return str(node.target)
        paths = [v[0] for v in stack.values()]
        return paths[-1] if paths else "the model's forward"

    def _describe(self, node: fx.Node) -> str:
        if node.op == "output":
            return "the model's output"
        if node.op == "call_module":
            return f"{node.target} ({type(self._module(node)).__name__})"
        if node.op == "call_function" and node.target in _ADDS:
            return f"a residual add in {self._where(node)}"
        name = getattr(node.target, "__name__", str(node.target))
        if name == "cat":
            return f"a concat (torch.cat) in {self._where(node)}"
        return f"{name} in {self._where(node)}"

    def _shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    # ------------------------------------------------------------------ channel sets

    def _channel_sets(self) -> list[ChannelSet]:
        sets: list[ChannelSet] = []
        followed: set[str] = set()
        convs = [n for n in self.nodes if self._is(n, nn.Conv2d)]
        pending: list[tuple[str, str]] = []
        for node in convs:
            conv = self._module(node)
            assert isinstance(conv, nn.Conv2d)
            name = self._wrapper_name(str(node.target))
            try:
                cs, follower_names = self._channel_set(node, conv, name)
            except _Refused as r:
                pending.append((str(node.target), r.reason))
                continue
            sets.append(cs)
            followed |= follower_names
        for target, reason in pending:
            if target not in followed:
                self.excluded.append(Excluded(self._wrapper_name(target), "channels", reason))
        return sets

    def _channel_set(self, node: fx.Node, conv: nn.Conv2d, name: str) -> tuple[ChannelSet, set[str]]:
        if self.calls[node.target] > 1:
            raise _Refused("is called more than once in the forward, so its channels are shared")
        if conv.groups != 1:
            raise _Refused(f"is a grouped convolution (groups={conv.groups}); its outputs cannot be "
                           "selected freely")
        users = list(node.users)
        if len(users) != 1 or not self._is(users[0], nn.BatchNorm2d):
            raise _Refused("is not followed by a BatchNorm alone (DCP measures channel utility at "
                           "a BatchNorm output)")
        bn_node = users[0]
        if self.calls[bn_node.target] > 1:
            raise _Refused(f"its BatchNorm {bn_node.target} is called more than once")
        followers, consumers = self._follow(bn_node, conv.out_channels)
        if not consumers:
            raise _Refused("its channels reach no layer that reads them")
        fmods = tuple((self._module(c), self._module(b)) for c, b in followers)
        cs = ChannelSet(
            name=name, conv=conv, bn=self._module(bn_node),  # type: ignore[arg-type]
            followers=fmods,  # type: ignore[arg-type]
            consumers=tuple(self._module(c) for c in consumers),  # type: ignore[misc]
        )
        return cs, {str(c.target) for c, _ in followers}

    def _follow(self, start: fx.Node, width: int) -> tuple[list[tuple[fx.Node, fx.Node]], list[fx.Node]]:
        """Walk the readers of ``start``'s channels; refuse anything that cannot read a subset."""
        followers: list[tuple[fx.Node, fx.Node]] = []
        consumers: list[fx.Node] = []
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            for user in node.users:
                if user in seen:
                    continue
                seen.add(user)
                if _reads_metadata(user):
                    continue  # x.size(0) and the like read the shape, not the channels
                if user.args[:1] != (node,) or any(
                    isinstance(a, fx.Node) and not _derived_from_metadata(a)
                    for a in [*user.args[1:], *user.kwargs.values()]
                ):
                    raise _Refused(f"its channels reach {self._describe(user)}")
                shape = self._shape(user)
                mod = self._module(user)
                if self._is(user, nn.Conv2d):
                    assert isinstance(mod, nn.Conv2d)
                    if self.calls[user.target] > 1:
                        raise _Refused(f"its channels reach {user.target}, which is called more than once")
                    if mod.groups == 1:
                        consumers.append(user)
                        continue
                    if mod.groups == mod.in_channels == mod.out_channels == width:
                        bn_users = list(user.users)
                        if len(bn_users) != 1 or not self._is(bn_users[0], nn.BatchNorm2d):
                            raise _Refused(f"its channels reach the depthwise conv {user.target}, "
                                           "which has no BatchNorm of its own after it")
                        followers.append((user, bn_users[0]))
                        seen.add(bn_users[0])
                        stack.append(bn_users[0])
                        continue
                    raise _Refused(f"its channels reach the grouped conv {user.target} "
                                   f"(groups={mod.groups}), which cannot read an arbitrary subset")
                if self._is(user, nn.Linear):
                    if shape is None or len(self._shape(node) or ()) != 2:
                        raise _Refused(f"its channels reach {user.target} without a global pool")
                    consumers.append(user)
                    continue
                if self._channel_preserving(user, node):
                    if shape is None or len(shape) < 2 or shape[1] != width:
                        raise _Refused(f"its channels are reshaped by {self._describe(user)}")
                    stack.append(user)
                    continue
                if self._is_reshape(user):
                    before = self._shape(node) or ()
                    raise _Refused(
                        f"its channels are flattened with their {_fmt((0, *before[2:]))} positions "
                        f"by {self._describe(user)} (only a 1×1 map keeps one feature per channel)")
                raise _Refused(f"its channels reach {self._describe(user)}, which cannot read a "
                               "subset of them")
        return followers, consumers

    def _channel_preserving(self, user: fx.Node, node: fx.Node) -> bool:
        """Element-wise, pooling, or a flatten of a 1×1 map: channel c stays channel c."""
        mod = self._module(user)
        if mod is not None:
            if type(mod) in _exact(_ELEMENTWISE_MODULES + _POOL_MODULES):
                return True
            if type(mod) is nn.Flatten:
                return self._flattens_1x1(node, user)
            return False
        if user.op == "call_function":
            if user.target in _ELEMENTWISE_FUNCTIONS or user.target in _POOL_FUNCTIONS:
                return True
            if user.target in _RESHAPES_FUNCTIONS:
                return self._flattens_1x1(node, user)
            if user.target is torch.mean:
                return self._spatial_mean(node, user)
        if user.op == "call_method":
            if user.target in _ELEMENTWISE_METHODS:
                return True
            if user.target in _RESHAPE_METHODS:
                return self._flattens_1x1(node, user)
            if user.target == "mean":
                return self._spatial_mean(node, user)
        return False

    def _is_reshape(self, user: fx.Node) -> bool:
        return (self._is(user, nn.Flatten)
                or (user.op == "call_function" and user.target in _RESHAPES_FUNCTIONS)
                or (user.op == "call_method" and user.target in _RESHAPE_METHODS))

    def _flattens_1x1(self, node: fx.Node, user: fx.Node) -> bool:
        before, after = self._shape(node), self._shape(user)
        return (
            before is not None and after is not None and len(before) >= 2
            and all(d == 1 for d in before[2:]) and after[:2] == before[:2]
            and all(d == 1 for d in after[2:])
        )

    def _spatial_mean(self, node: fx.Node, user: fx.Node) -> bool:
        before, after = self._shape(node), self._shape(user)
        return before is not None and after is not None and len(after) >= 2 and after[:2] == before[:2]

    def _wrapper_name(self, conv_path: str) -> str:
        """A conv inside a conv+BN(+act) wrapper (leantrain's ConvBN, torchvision's
        Conv2dNormActivation) is named by the wrapper, as users know it."""
        parent = conv_path.rpartition(".")[0]
        if not parent:
            return conv_path
        children = list(self.modules[parent].children())
        kinds = [type(c) for c in children]
        is_wrapper = (
            1 < len(children) <= 3 and children[0] is self.modules[conv_path]
            and issubclass(kinds[1], nn.BatchNorm2d)
            and all(issubclass(k, _ELEMENTWISE_MODULES) for k in kinds[2:])
        )
        return parent if is_wrapper else conv_path

    # ------------------------------------------------------------------ units

    def _regions(self) -> dict[str, list[fx.Node]]:
        """Nodes per (non-root) module path, for modules called exactly once."""
        regions: dict[str, list[fx.Node]] = defaultdict(list)
        keys: dict[str, set[str]] = defaultdict(set)
        for n in self.nodes:
            for key, value in (n.meta.get("nn_module_stack") or {}).items():
                path = value[0] if isinstance(value, tuple) else str(value)
                if path:
                    regions[path].append(n)
                    keys[path].add(key)
        return {p: ns for p, ns in regions.items() if len(keys[p]) == 1}

    def _units(self) -> tuple[list[Unit], list[tuple[str, str]]]:
        regions = self._regions()
        units: list[Unit] = []
        blocks: list[tuple[str, str]] = []  # (block name, stage) of every block, droppable or not
        claimed: list[str] = []
        order = {n: i for i, n in enumerate(self.nodes)}
        candidates = sorted(regions, key=lambda p: order[regions[p][0]])
        for path in candidates:
            if any(path.startswith(c + ".") for c in claimed):
                continue
            mod = self.modules.get(path)
            if mod is None or _is_leaf(mod):
                continue
            children = [f"{path}.{k}" for k, c in mod.named_children()]
            if len(children) == 1 and len(regions.get(children[0], ())) == len(regions[path]):
                continue  # a container of one block: the block itself is the unit
            found = self._residual(path, regions[path])
            if found is not None:
                unit, droppable_reason = found
                claimed.append(path)
                blocks.append((unit.name, unit.stage))
                units.append(unit)
                if droppable_reason:
                    self.excluded.append(Excluded(path, "unit", droppable_reason))
        seq_units, seq_blocks = self._sequential_runs(regions, claimed)
        units += seq_units
        blocks += seq_blocks
        units.sort(key=lambda u: order[regions[u.members[0]][0]] if u.members[0] in regions else 0)
        return units, blocks

    def _residual(self, path: str, region: list[fx.Node]) -> tuple[Unit, str] | None:
        inside = set(region)
        inputs = {i for n in region for i in n.all_input_nodes if i not in inside and i.op != "get_attr"}
        outputs = [n for n in region if any(u not in inside for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            return None
        (x,), out = tuple(inputs), outputs[0]
        act_node, core = None, out
        if self._is_activation(out) and out.args[:1] and out.args[0] in inside:
            act_node, core = out, out.args[0]  # type: ignore[assignment]
        if not (core.op == "call_function" and core.target in _ADDS and len(core.args) == 2
                and not core.kwargs.get("alpha")):
            return None
        a, b = core.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None
        identity_branch = a if b is x else b if a is x else None
        if (identity_branch is not None and self._shape(x) == self._shape(out)
                and self._branch_reads_x(identity_branch, x, x, inside)):
            kind, proj_path, branch = "identity", None, identity_branch
        else:
            found = self._projection(path, x, a, b, inside)
            if found is None:
                return None
            kind, (proj_path, branch) = "projection", found
        skip_value = x if kind == "identity" else (a if branch is b else b)
        act = self._replacement_activation(act_node, skip_value)
        if kind == "identity":
            replacement: nn.Module = act or nn.Identity()
        else:
            proj = self.modules[proj_path]  # type: ignore[index]
            replacement = nn.Sequential(proj, act) if act is not None else proj
        branch_bn = self._module(branch) if self._is(branch, nn.BatchNorm2d) else None
        unit = Unit(
            name=path, stage=path.rpartition(".")[0] or "model", members=(path,),
            modules=(self.modules[path],), replacements=(replacement,), kind=kind,
            branch_bn=branch_bn,
        )
        reason = ""
        if kind == "projection":
            reason = (f"changes the tensor shape (projection shortcut {proj_path}); dropped only "
                      "with include_downsampling, replaced by the projection")
        return unit, reason

    def _projection(self, path: str, x: fx.Node, a: fx.Node, b: fx.Node, inside: set[fx.Node]) -> tuple[str, fx.Node] | None:
        """``proj(x) + branch(x)`` with ``proj`` one child module: (proj path, branch node)."""
        for shortcut, branch in ((a, b), (b, a)):
            child = self._single_child_chain(path, x, shortcut, inside)
            if child is not None and self._branch_reads_x(branch, x, shortcut, inside):
                return child, branch
        return None

    def _branch_reads_x(self, branch: fx.Node, x: fx.Node, shortcut: fx.Node, inside: set[fx.Node]) -> bool:
        """The branch is computed from ``x`` itself, not through the shortcut (which would make
        a Sequential of two blocks look like one block with a projection)."""
        todo, seen, reads_x = [branch], set(), False
        while todo:
            n = todo.pop()
            if n is x:
                reads_x = True
                continue
            if n in seen or n not in inside:
                continue
            if n is shortcut:
                return False
            seen.add(n)
            todo += [i for i in n.all_input_nodes if i.op != "get_attr"]
        return reads_x

    def _single_child_chain(self, path: str, x: fx.Node, node: fx.Node, inside: set[fx.Node]) -> str | None:
        """The child module of `path` that alone computes ``node`` from ``x``, if there is one."""
        chain: set[fx.Node] = set()
        todo = [node]
        while todo:
            n = todo.pop()
            if n is x or n in chain:
                continue
            if n not in inside:
                return None
            chain.add(n)
            todo += [i for i in n.all_input_nodes if i.op != "get_attr"]
        children = set()
        for n in chain:
            paths = [v[0] for v in (n.meta.get("nn_module_stack") or {}).values()]
            below = [p for p in paths if p.startswith(path + ".") and "." not in p[len(path) + 1:]]
            if not below:
                return None
            children.add(below[0])
        return children.pop() if len(children) == 1 else None

    def _is_activation(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self._module(node)) in _exact(_ELEMENTWISE_MODULES) and not self._is(node, nn.Identity, nn.Dropout, nn.Dropout2d)
        if node.op == "call_function":
            return node.target in _ELEMENTWISE_FUNCTIONS and node.target is not F.dropout
        return node.op == "call_method" and node.target in ("relu", "relu_", "tanh")

    def _replacement_activation(self, act_node: fx.Node | None, x: fx.Node) -> nn.Module | None:
        """The activation a dropped ``act(x + branch)`` leaves: act(x), or nothing when act is a
        ReLU and x is already non-negative (then act(x) = x)."""
        if act_node is None:
            return None
        relu_like = (
            (act_node.op == "call_module" and type(self._module(act_node)) in _exact(_NONNEGATIVE_MODULES))
            or (act_node.op == "call_function" and act_node.target in _NONNEGATIVE_FUNCTIONS)
            or (act_node.op == "call_method" and act_node.target in ("relu", "relu_"))
        )
        if relu_like and self._nonnegative(x):
            return None
        if act_node.op == "call_module":
            act = copy.deepcopy(self._module(act_node))
            if hasattr(act, "inplace"):
                act.inplace = False  # type: ignore[union-attr]
            return act
        if act_node.target in (F.relu6,):
            return nn.ReLU6()
        if relu_like:
            return nn.ReLU()
        return None if act_node.op != "call_function" else _FunctionModule(act_node.target)  # type: ignore[arg-type]

    def _nonnegative(self, node: fx.Node) -> bool:
        """True when ``node``'s value is provably ≥ 0 (a ReLU output, pooled or not)."""
        while True:
            mod = self._module(node)
            if mod is not None and type(mod) in _exact(_NONNEGATIVE_MODULES):
                return True
            if node.op == "call_function" and node.target in _NONNEGATIVE_FUNCTIONS:
                return True
            if node.op == "call_method" and node.target in ("relu", "relu_"):
                return True
            if (mod is not None and type(mod) in _exact(_POOL_MODULES + (nn.Identity,))) or (
                node.op == "call_function" and node.target in _POOL_FUNCTIONS
            ):
                node = node.args[0]  # type: ignore[assignment]
                continue
            return False

    def _sequential_runs(self, regions: dict[str, list[fx.Node]], claimed: list[str]) -> tuple[list[Unit], list[tuple[str, str]]]:
        """conv → BN → activation runs with equal shapes inside an nn.Sequential."""
        units: list[Unit] = []
        blocks: list[tuple[str, str]] = []
        self._run_convs: set[fx.Node] = set()
        self._all_runs: list[list[str]] = []
        for seq_path, seq in self.modules.items():
            if not isinstance(seq, nn.Sequential):
                continue
            if any(seq_path == c or seq_path.startswith(c + ".") for c in claimed):
                continue
            names = [f"{seq_path}.{k}" if seq_path else k for k in seq._modules]
            runs = self._runs_in(names, regions)
            if not runs:
                continue
            resolution, stage_no = None, 0
            for members, conv_node, act_node in runs:
                if conv_node in self._run_convs:
                    continue  # a wrapper Sequential's run, already found from its parent
                self._run_convs.add(conv_node)
                self._all_runs.append(members)
                in_shape = self._shape(conv_node.args[0])  # type: ignore[arg-type]
                out_shape = self._shape(act_node)
                if in_shape is not None and in_shape[2:] != resolution:
                    resolution, stage_no = in_shape[2:], stage_no + 1
                stage = f"{seq_path or 'model'}:{stage_no}"
                blocks.append((members[0], stage))
                conv = self._module(conv_node)
                assert isinstance(conv, nn.Conv2d)
                if in_shape != out_shape or conv.stride != (1, 1):
                    self.excluded.append(Excluded(members[0], "unit", (
                        f"changes the shape {_fmt(in_shape)} → {_fmt(out_shape)}, so it cannot be "
                        "removed")))
                    continue
                mods = tuple(self.modules[m] for m in members)
                units.append(Unit(
                    name=members[0], stage=stage, members=tuple(members), modules=mods,
                    replacements=tuple(nn.Identity() for _ in members), residual=False,
                ))
        return units, blocks

    def _runs_in(self, names: list[str], regions: dict[str, list[fx.Node]]) -> list[tuple[list[str], fx.Node, fx.Node]]:
        runs = []
        i = 0
        while i < len(names):
            name = names[i]
            region = regions.get(name, [])
            # One child holding conv → BN → activation (ConvBN, Conv2dNormActivation).
            if len(region) == 3 and self._is_run(region):
                runs.append(([name], region[0], region[2]))
                i += 1
                continue
            # Three children: conv, BN, activation.
            if i + 2 < len(names):
                trio = [regions.get(n, []) for n in names[i:i + 3]]
                if all(len(r) == 1 for r in trio) and self._is_run([r[0] for r in trio]):
                    runs.append((names[i:i + 3], trio[0][0], trio[2][0]))
                    i += 3
                    continue
            i += 1
        return runs

    def _is_run(self, nodes: list[fx.Node]) -> bool:
        conv, bn, act = nodes
        return (
            self._is(conv, nn.Conv2d) and self._is(bn, nn.BatchNorm2d) and self._is_activation(act)
            and list(conv.users) == [bn] and list(bn.users) == [act]
            and act.args[:1] == (bn,) and self._module(conv).groups == 1  # type: ignore[union-attr]
        )

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


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _FunctionModule(nn.Module):
    """A parameter-free function as a module (the activation a dropped block leaves)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _reads_metadata(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in ("size", "dim")) or (
        node.op == "call_function" and node.target is getattr
        and node.args[1:2] in (("shape",), ("ndim",))
    )


def _derived_from_metadata(node: fx.Node) -> bool:
    """A value computed only from tensor shapes (``x.size(0)``, ``x.shape[0]``)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if _reads_metadata(n):
            continue
        if n.op != "call_function" or n.target not in (operator.getitem, operator.mul, operator.floordiv):
            return False
        todo += n.all_input_nodes
    return True


def _exact(types: tuple[type[nn.Module], ...]) -> set[type[nn.Module]]:
    """The types and leantrain's sliceable subclasses of them (a user's own subclass of
    Conv2d may compute something else, so only exact types are trusted)."""
    out = set(types)
    for base, sub in ((nn.Conv2d, SliceConv2d), (nn.BatchNorm2d, SliceBatchNorm2d), (nn.Linear, SelectLinear)):
        if base in out:
            out.add(sub)
    return out


def _is_leaf(m: nn.Module) -> bool:
    return not any(True for _ in m.children())


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()



def _fmt(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "×".join(str(d) for d in shape[1:])
