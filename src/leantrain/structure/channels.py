"""Prunable channel sets: a conv (groups 1) whose only reader is a BatchNorm (or a fused
norm+act layer such as timm's BatchNormAct2d), and whose channels reach only layers that can read
a subset of them (convs of groups 1, and linear layers after a global pool or a flatten of a 1×1
map), through element-wise activations, dropout and pooling. A depthwise conv (with its BN) on the
way follows the selection channel by channel, and so does the expanding conv of a
squeeze-and-excitation gate that scales the channels (``x * sigmoid(conv(relu(conv(mean(x)))))``).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .trace import (
    ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS, ELEMENTWISE_MODULES, POOL_FUNCTIONS, POOL_MODULES,
    RESHAPE_FUNCTIONS, RESHAPE_METHODS, Refused, Traced, derived_from_metadata, exact_types,
    fmt_shape, reads_metadata,
)
from .types import ChannelSet, Excluded


class ChannelFinder(Traced):
    """Finds the `ChannelSet`s of a traced model (see the module docstring)."""

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
            except Refused as r:
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
            raise Refused("is called more than once in the forward, so its channels are shared")
        if conv.groups != 1:
            raise Refused(f"is a grouped convolution (groups={conv.groups}); its outputs cannot be "
                           "selected freely")
        users = list(node.users)
        if len(users) != 1 or not self._is_bn(users[0]):
            raise Refused("is not followed by a BatchNorm alone (DCP measures channel utility at "
                           "a BatchNorm output)")
        bn_node = users[0]
        if self.calls[bn_node.target] > 1:
            raise Refused(f"its BatchNorm {bn_node.target} is called more than once")
        gates: list[fx.Node] = []
        followers, consumers = self._follow(bn_node, conv.out_channels, gates)
        if not consumers:
            raise Refused("its channels reach no layer that reads them")
        fmods = tuple((self._module(c), self._module(b)) for c, b in followers)
        cs = ChannelSet(
            name=name, conv=conv, bn=self._module(bn_node),  # type: ignore[arg-type]
            followers=fmods,  # type: ignore[arg-type]
            consumers=tuple(self._module(c) for c in consumers),  # type: ignore[misc]
            gates=tuple(self._module(g) for g in gates),  # type: ignore[misc]
        )
        return cs, {str(c.target) for c, _ in followers}

    def _follow(self, start: fx.Node, width: int, gates: list[fx.Node]) -> tuple[list[tuple[fx.Node, fx.Node]], list[fx.Node]]:
        """Walk the readers of ``start``'s channels; refuse anything that cannot read a subset.
        Gate convs met on the way (``x * sigmoid(conv(...))``) are appended to ``gates``."""
        followers: list[tuple[fx.Node, fx.Node]] = []
        consumers: list[fx.Node] = []
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            for user in node.users:
                if user in seen:
                    continue
                seen.add(user)
                if reads_metadata(user):
                    continue  # x.size(0) and the like read the shape, not the channels
                if self._is_product(user):
                    gate = self._gate_conv(user, node, width)
                    if gate is None:
                        raise Refused(f"its channels reach {self._describe(user)}, a product "
                                      "with something other than a per-channel gate")
                    gates.append(gate)
                    stack.append(user)  # x * gate keeps channel c as channel c
                    continue
                if user.args[:1] != (node,) or any(
                    isinstance(a, fx.Node) and not derived_from_metadata(a)
                    for a in [*user.args[1:], *user.kwargs.values()]
                ):
                    raise Refused(f"its channels reach {self._describe(user)}")
                shape = self._shape(user)
                mod = self._module(user)
                if self._is(user, nn.Conv2d):
                    assert isinstance(mod, nn.Conv2d)
                    if self.calls[user.target] > 1:
                        raise Refused(f"its channels reach {user.target}, which is called more than once")
                    if mod.groups == 1:
                        consumers.append(user)
                        continue
                    if mod.groups == mod.in_channels == mod.out_channels == width:
                        bn_users = list(user.users)
                        if len(bn_users) != 1 or not self._is_bn(bn_users[0]):
                            raise Refused(f"its channels reach the depthwise conv {user.target}, "
                                           "which has no BatchNorm of its own after it")
                        followers.append((user, bn_users[0]))
                        seen.add(bn_users[0])
                        stack.append(bn_users[0])
                        continue
                    raise Refused(f"its channels reach the grouped conv {user.target} "
                                   f"(groups={mod.groups}), which cannot read an arbitrary subset")
                if self._is(user, nn.Linear):
                    if shape is None or len(self._shape(node) or ()) != 2:
                        raise Refused(f"its channels reach {user.target} without a global pool")
                    consumers.append(user)
                    continue
                if self._channel_preserving(user, node):
                    if shape is None or len(shape) < 2 or shape[1] != width:
                        raise Refused(f"its channels are reshaped by {self._describe(user)}")
                    stack.append(user)
                    continue
                if self._is_reshape(user):
                    before = self._shape(node) or ()
                    raise Refused(
                        f"its channels are flattened with their {fmt_shape((0, *before[2:]))} positions "
                        f"by {self._describe(user)} (only a 1×1 map keeps one feature per channel)")
                raise Refused(f"its channels reach {self._describe(user)}, which cannot read a "
                               "subset of them")
        return followers, consumers

    def _is_product(self, node: fx.Node) -> bool:
        """``a * b`` of two tensors."""
        two = len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args)
        return two and ((node.op == "call_function" and node.target in (operator.mul, torch.mul))
                        or (node.op == "call_method" and node.target == "mul"))

    def _gate_conv(self, product: fx.Node, node: fx.Node, width: int) -> fx.Node | None:
        """The conv of a squeeze-and-excitation gate, when ``product`` is ``node * gate`` with
        ``gate = sigmoid(conv(...))`` (or hard-sigmoid), one value per channel, computed for this
        product alone: that conv then computes only the selected channels' gates."""
        a, b = product.args
        gate = b if a is node else a if b is node else None
        if gate is None or not isinstance(gate, fx.Node) or gate is node:
            return None
        shape = self._shape(gate)
        if shape is None or len(shape) != 4 or shape[1] != width or shape[2:] != (1, 1):
            return None
        if list(gate.users) != [product] or not self._is_gate_activation(gate):
            return None
        conv = gate.args[0] if gate.args else None
        if not (isinstance(conv, fx.Node) and self._is(conv, nn.Conv2d)
                and list(conv.users) == [gate] and self.calls[conv.target] == 1):
            return None
        mod = self._module(conv)
        return conv if mod.groups == 1 and mod.out_channels == width else None  # type: ignore[union-attr]

    def _is_gate_activation(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self._module(node)) in (nn.Sigmoid, nn.Hardsigmoid)
        if node.op == "call_function":
            return node.target in (torch.sigmoid, F.sigmoid, F.hardsigmoid)
        return node.op == "call_method" and node.target == "sigmoid"

    def _channel_preserving(self, user: fx.Node, node: fx.Node) -> bool:
        """Element-wise, pooling, or a flatten of a 1×1 map: channel c stays channel c."""
        mod = self._module(user)
        if mod is not None:
            if type(mod) in exact_types(ELEMENTWISE_MODULES + POOL_MODULES):
                return True
            if type(mod) is nn.Flatten:
                return self._flattens_1x1(node, user)
            return False
        if user.op == "call_function":
            if user.target in ELEMENTWISE_FUNCTIONS or user.target in POOL_FUNCTIONS:
                return True
            if user.target in RESHAPE_FUNCTIONS:
                return self._flattens_1x1(node, user)
            if user.target is torch.mean:
                return self._spatial_mean(node, user)
        if user.op == "call_method":
            if user.target in ELEMENTWISE_METHODS:
                return True
            if user.target in RESHAPE_METHODS:
                return self._flattens_1x1(node, user)
            if user.target == "mean":
                return self._spatial_mean(node, user)
        return False

    def _is_reshape(self, user: fx.Node) -> bool:
        return (self._is(user, nn.Flatten)
                or (user.op == "call_function" and user.target in RESHAPE_FUNCTIONS)
                or (user.op == "call_method" and user.target in RESHAPE_METHODS))

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
            and all(issubclass(k, ELEMENTWISE_MODULES) for k in kinds[2:])
        )
        return parent if is_wrapper else conv_path
