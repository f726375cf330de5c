"""Droppable units: residual blocks (``x + branch(x)``, optionally with a projection on the
shortcut) and conv → BN → activation runs of equal width in a ``nn.Sequential``.

A residual is found where its add is, in the traced graph:

* a module whose own forward computes ``act(x + branch(x))`` (torchvision's BasicBlock) is the
  unit, replaced whole when dropped (by ``act`` or nothing);
* an add written outside the branch's modules (``x + self.block(x)`` in a parent's forward,
  ``for blk in self.blocks: x = x + blk(x)``) makes the branch's modules the unit
  (`Unit.branch_only`): dropped, they return a broadcasting zero (`ZeroBranch`) and the add passes
  ``x`` on. Such units are staged by the graph: the units of one forward at one tensor shape.

An identity shortcut written as a module (``nn.Identity()``; an empty ``nn.Sequential()`` leaves
no node at all) is the identity.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections import defaultdict

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .trace import (
    ADDS, ELEMENTWISE_FUNCTIONS, ELEMENTWISE_MODULES, NONNEGATIVE_FUNCTIONS, NONNEGATIVE_MODULES,
    ELEMENTWISE_METHODS, POOL_FUNCTIONS, POOL_MODULES, FunctionModule, Traced, ZeroBranch,
    exact_types, fmt_shape, is_leaf,
)
from .types import Excluded, Unit


class UnitFinder(Traced):
    """Finds the droppable `Unit`s of a traced model (see the module docstring)."""

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
            if mod is None or is_leaf(mod):
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
        units, blocks = self._split_stages(units, blocks, regions)
        add_units = self._add_units(regions, claimed)
        for unit in add_units:
            claimed += unit.members
            blocks.append((unit.name, unit.stage))
        units += add_units
        in_branches = {n for u in add_units for m in u.members for n in regions[m]}
        seq_units, seq_blocks = self._sequential_runs(regions, claimed, in_branches)
        units += seq_units
        blocks += seq_blocks
        units.sort(key=lambda u: order[regions[u.members[0]][0]] if u.members[0] in regions else 0)
        return units, blocks

    def _split_stages(self, units: list[Unit], blocks: list[tuple[str, str]],
                      regions: dict[str, list[fx.Node]]) -> tuple[list[Unit], list[tuple[str, str]]]:
        """Stages follow the graph: blocks of one parent at several output shapes (one
        Sequential across resolutions) form one stage per shape, ``parent:C×H×W``; a parent
        whose blocks share one shape (torchvision's ``layer1``) keeps its name."""
        shapes = {}
        for u in units:
            region = set(regions[u.name])
            out = [n for n in regions[u.name] if any(x not in region for x in n.users)]
            shapes[u.name] = self._shape(out[-1]) if out else None
        per_parent: dict[str, set] = defaultdict(set)
        for u in units:
            per_parent[u.stage].add(shapes[u.name])
        split = {parent for parent, found in per_parent.items() if len(found) > 1}
        if not split:
            return units, blocks
        renamed = {u.name: dataclasses.replace(u, stage=f"{u.stage}:{fmt_shape(shapes[u.name])}")
                   for u in units if u.stage in split}
        return ([renamed.get(u.name, u) for u in units],
                [(n, renamed[n].stage if n in renamed else stage) for n, stage in blocks])

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
        if not (core.op == "call_function" and core.target in ADDS and len(core.args) == 2
                and not core.kwargs.get("alpha")):
            return None
        a, b = core.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None
        identity_branch = a if self._peel(b, x) is x else b if self._peel(a, x) is x else None
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

    def _peel(self, node: fx.Node, x: fx.Node | None = None) -> fx.Node:
        """The value an ``nn.Identity`` shortcut module passes on (the node itself otherwise),
        stopping at ``x`` (an identity module may also come before a block, e.g. a stem's
        ``maxpool = nn.Identity()``). A shortcut's identity feeds the add alone; one whose
        output is read elsewhere too is a layer of its own (e.g. a dropped block before the
        next one), not a shortcut."""
        while (node is not x and self._is(node, nn.Identity) and len(node.users) == 1
               and node.args and isinstance(node.args[0], fx.Node)):
            node = node.args[0]
        return node

    # ------------------------------------------------------------------ adds outside modules

    def _add_units(self, regions: dict[str, list[fx.Node]], claimed: list[str]) -> list[Unit]:
        """Residual branches whose add ``x + f(x)`` is written outside ``f``'s modules."""
        units: list[Unit] = []
        taken = list(claimed)
        for add in self.nodes:
            if not (add.op == "call_function" and add.target in ADDS and len(add.args) == 2
                    and not add.kwargs.get("alpha")):
                continue
            scope = self._scope(add)
            if any(scope == c or scope.startswith(c + ".") for c in taken):
                continue  # inside a unit found already (a block's own add)
            found = self._add_unit(add, scope, regions, taken)
            if isinstance(found, Unit):
                units.append(found)
                taken += found.members
            elif found:
                self.excluded.append(Excluded(f"add in {scope or 'forward'}", "unit", found))
        return units

    def _add_unit(self, add: fx.Node, scope: str, regions: dict[str, list[fx.Node]],
                  taken: list[str]) -> Unit | str | None:
        """The unit of ``x + f(x)`` at ``add``; a reason when it is a residual that cannot go;
        None when the add is no residual of one input."""
        a, b = add.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None
        shape = self._shape(add)
        for skip, branch in ((a, b), (b, a)):
            x = skip  # or, when the branch does not read it, what its identity modules pass on
            body = self._branch_body(branch, x) or self._branch_body(branch, x := self._peel(skip))
            if body and self._shape(x) == shape == self._shape(branch):
                break
        else:
            return None
        if add.target is operator.iadd and branch is a:
            # `out += x`: the add writes into the branch's own output, which a dropped branch
            # (a 0-d zero) does not have.
            return ("its add writes in place into the branch's output (out += x), so the branch "
                    "cannot go; write out = out + x")
        if any(u is not add and u not in body for n in body for u in n.users):
            return "a value inside its branch is also used outside it, so the branch cannot go"
        members: list[str] = []
        covered: set[fx.Node] = set()
        for n in self.nodes:
            if n not in body or n in covered or n.op != "call_module":
                continue
            path = self._cover(str(n.target), body, regions)
            if path is None:
                if type(self._module(n)) in exact_types(ELEMENTWISE_MODULES):
                    continue  # a shared activation module: harmless on the zero
                return f"{n.target} is called more than once, so its branch cannot go"
            if any(path == t or path.startswith(t + ".") or t.startswith(path + ".") for t in taken):
                return None
            members.append(path)
            covered |= set(regions[path])
        if not any(p.requires_grad for m in members for p in self.modules[m].parameters()):
            return None  # nothing learned in the branch: no unit
        for n in body - covered:
            if not self._zero_safe(n):
                return (f"its branch computes {self._describe(n)} outside its modules, which a "
                        "dropped branch's zero would not pass")
        branch_bn = self._module(branch) if self._is(branch, nn.BatchNorm2d) else None
        return Unit(
            name=members[0], stage=f"{scope or 'model'}:{fmt_shape(shape)}",
            members=tuple(members), modules=tuple(self.modules[m] for m in members),
            replacements=tuple(ZeroBranch() for _ in members), kind="identity",
            branch_bn=branch_bn, branch_only=True,
        )

    def _branch_body(self, branch: fx.Node, x: fx.Node) -> set[fx.Node]:
        """Every node between ``x`` and ``branch`` (inclusive of ``branch``) when ``branch`` is
        computed from ``x`` alone (parameters aside); empty otherwise."""
        body: set[fx.Node] = set()
        todo, reads_x = [branch], False
        while todo:
            n = todo.pop()
            if n is x:
                reads_x = True
                continue
            if n in body or n.op == "get_attr":
                continue
            if n.op in ("placeholder", "output"):
                return set()  # reads the model's input some other way than through x
            body.add(n)
            todo += n.all_input_nodes
        return body if reads_x else set()

    def _cover(self, path: str, body: set[fx.Node], regions: dict[str, list[fx.Node]]) -> str | None:
        """The outermost module holding ``path`` whose every node is in ``body`` (called once)."""
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            region = regions.get(candidate)
            if region is not None and set(region) <= body:
                return candidate
        return None

    def _zero_safe(self, node: fx.Node) -> bool:
        """An operation outside the branch's modules that maps the dropped members' 0-d zero to
        a zero the add can take: element-wise maps with f(0) = 0, sums and scalings."""
        if node.op == "call_module":
            return type(self._module(node)) in exact_types(ELEMENTWISE_MODULES)
        if node.op == "call_method":
            return node.target in ELEMENTWISE_METHODS or node.target in ("mul", "mul_", "add", "add_")
        if node.op == "call_function":
            return (node.target in ELEMENTWISE_FUNCTIONS or node.target in ADDS
                    or node.target in (operator.mul, torch.mul))
        return False

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
            return type(self._module(node)) in exact_types(ELEMENTWISE_MODULES) and not self._is(node, nn.Identity, nn.Dropout, nn.Dropout2d)
        if node.op == "call_function":
            return node.target in ELEMENTWISE_FUNCTIONS and node.target is not F.dropout
        return node.op == "call_method" and node.target in ("relu", "relu_", "tanh")

    def _replacement_activation(self, act_node: fx.Node | None, x: fx.Node) -> nn.Module | None:
        """The activation a dropped ``act(x + branch)`` leaves: act(x), or nothing when act is a
        ReLU and x is already non-negative (then act(x) = x)."""
        if act_node is None:
            return None
        relu_like = (
            (act_node.op == "call_module" and type(self._module(act_node)) in exact_types(NONNEGATIVE_MODULES))
            or (act_node.op == "call_function" and act_node.target in NONNEGATIVE_FUNCTIONS)
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
        return None if act_node.op != "call_function" else FunctionModule(act_node.target)  # type: ignore[arg-type]

    def _nonnegative(self, node: fx.Node) -> bool:
        """True when ``node``'s value is provably ≥ 0 (a ReLU output, pooled or not)."""
        while True:
            mod = self._module(node)
            if mod is not None and type(mod) in exact_types(NONNEGATIVE_MODULES):
                return True
            if node.op == "call_function" and node.target in NONNEGATIVE_FUNCTIONS:
                return True
            if node.op == "call_method" and node.target in ("relu", "relu_"):
                return True
            if (mod is not None and type(mod) in exact_types(POOL_MODULES + (nn.Identity,))) or (
                node.op == "call_function" and node.target in POOL_FUNCTIONS
            ):
                node = node.args[0]  # type: ignore[assignment]
                continue
            return False

    def _sequential_runs(self, regions: dict[str, list[fx.Node]], claimed: list[str],
                         in_branches: set[fx.Node]) -> tuple[list[Unit], list[tuple[str, str]]]:
        """conv → BN → activation runs with equal shapes inside an nn.Sequential (not inside a
        residual branch, which goes as one unit)."""
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
                if conv_node in self._run_convs or conv_node in in_branches:
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
                        f"changes the shape {fmt_shape(in_shape)} → {fmt_shape(out_shape)}, so it cannot be "
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
            # One child holding conv → BN → activation (ConvBN, Conv2dNormActivation), or
            # conv → fused norm+act (timm's ConvNormAct).
            if len(region) == 3 and self._is_run(region):
                runs.append(([name], region[0], region[2]))
                i += 1
                continue
            if len(region) == 2 and self._is_norm_act_run(region):
                runs.append(([name], region[0], region[1]))
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

    def _is_norm_act_run(self, nodes: list[fx.Node]) -> bool:
        conv, bn = nodes
        act = getattr(self._module(bn), "act", None)
        return (
            self._is(conv, nn.Conv2d) and self._is_bn(bn) and not self._is(bn, nn.BatchNorm2d)
            and type(act) is not nn.Identity and list(conv.users) == [bn]
            and self._module(conv).groups == 1  # type: ignore[union-attr]
        )

    def _is_run(self, nodes: list[fx.Node]) -> bool:
        conv, bn, act = nodes
        return (
            self._is(conv, nn.Conv2d) and self._is(bn, nn.BatchNorm2d) and self._is_activation(act)
            and list(conv.users) == [bn] and list(bn.users) == [act]
            and act.args[:1] == (bn,) and self._module(conv).groups == 1  # type: ignore[union-attr]
        )
