"""Find a model's `Structure` from its own forward, by tracing it with torch.fx
(`leantrain.structure.trace` says why fx) and reading the graph for units
(`leantrain.structure.units`) and channel sets (`leantrain.structure.channels`).

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

from collections import Counter, defaultdict

import torch.fx as fx
from torch import nn

from .channels import ChannelFinder
from .record import example_shape
from .types import Structure, StructureError, Unit
from .units import UnitFinder

__all__ = ["discover"]


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


class _Discovery(ChannelFinder, UnitFinder):
    """Channel sets and units of one traced model, and its layers in forward order."""

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
            classifier=layers[-1][0] if layers else None, notes=self.notes,
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
            unit = next((u for u in residual
                         if any(path == m or path.startswith(m + ".") for m in u.members)), None)
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
