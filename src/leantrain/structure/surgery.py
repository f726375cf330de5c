"""Permanent surgery: pure functions that cut a model and describe the cut as a `Change`.

No decisions are made here (that is a `Method`'s job). Every cut returns a `Change` that maps old
parameters to new ones, so the optimizer's state (momentum, Adam moments) follows the surviving
parameters instead of being orphaned (design decision 3: re-key and slice, don't rebuild).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .prepare import channel_sets_of, sliceable_layers, units_of
from .record import bump_version, record_cut, record_drop
from .types import ChannelSet

__all__ = [
    "ParamEdit",
    "Change",
    "drop_units",
    "freeze_units",
    "prune_channels",
    "remap_optimizer",
    "repoint_optimizer",
    "set_submodule",
    "clear_selections",
    "CutLogError",
    "check_cut_log",
    "replay_cuts",
]


@dataclass(frozen=True)
class ParamEdit:
    """How one parameter changed: deleted (``new is None``) or sliced along some dims.

    Attributes:
        old: the parameter before the cut.
        new: the parameter after the cut, or None when it left the model/optimizer.
        keep: kept indices per dimension (None = the whole dimension).
    """

    old: nn.Parameter
    new: nn.Parameter | None
    keep: tuple[Tensor | None, ...] = ()


@dataclass
class Change:
    """A structural edit: what was removed, and how old parameters map to new ones."""

    removed: list[str]
    edits: list[ParamEdit] = field(default_factory=list)

    def apply_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-key and slice the optimizer's state to the surviving parameters."""
        remap_optimizer(optimizer, self)

    def __bool__(self) -> bool:
        return bool(self.removed)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` by `module`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def drop_units(model: nn.Module, names: Iterable[str], include_downsampling: bool = False) -> Change:
    """Remove units from the forward graph for good, replacing each by its `Unit.replacement`.

    Parameters of a dropped unit leave the model (and, through `Change.apply_to`, the optimizer);
    a projection replacement keeps its shortcut parameters.
    """
    names = list(names)
    units = {u.name: u for u in units_of(model, include_downsampling)}
    unknown = [n for n in names if n not in units]
    if unknown:
        raise ValueError(
            f"cannot drop {unknown}: not a live droppable unit of this model; "
            f"droppable now: {sorted(units)}"
        )
    edits: list[ParamEdit] = []
    for name in names:
        unit = units[name]
        kept = {id(p) for r in unit.replacements for p in r.parameters()}
        edits += [ParamEdit(p, None) for p in unit.parameters() if id(p) not in kept]
        for member, replacement in zip(unit.members, unit.replacements):
            set_submodule(model, member, replacement)
        # Recorded on the model so its architecture can be rebuilt (`replay_cuts`).
        record_drop(model, name, unit.kind)
        _log_surgery(model, {"op": "drop", "name": name, "kind": unit.kind})
    clear_selections(model)
    bump_version(model)
    return Change(removed=names, edits=edits)


def clear_selections(model: nn.Module) -> None:
    """Reset every per-step channel selection (DCP) to full width.

    Dropping a unit re-wires which layer consumes which channels (a VGG conv's consumer becomes
    the layer after the dropped one), so a selection set before the drop may no longer fit. The
    model runs at full width until the channel method selects again on its next `step`.
    """
    for module in sliceable_layers(model):
        for attr in ("out_index", "in_index", "out_active"):
            module.__dict__.pop(attr, None)  # back to the class default: None


def freeze_units(model: nn.Module, names: Iterable[str]) -> Change:
    """Keep units in the forward pass but stop their gradients (and remove them from the optimizer).

    Freezing saves backward work (no weight gradients) but no forward work; BN layers of a frozen
    unit still normalise with batch statistics, as every other layer does in training mode.
    """
    names = list(names)
    units = {u.name: u for u in units_of(model)}
    edits: list[ParamEdit] = []
    for name in names:
        if name not in units:
            raise ValueError(f"cannot freeze {name!r}: not a droppable unit of this model")
        for p in units[name].parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                edits.append(ParamEdit(p, None))
    return Change(removed=[f"{n} (frozen)" for n in names], edits=edits)


def _slice_param(p: nn.Parameter, dim: int, index: Tensor) -> nn.Parameter:
    new = nn.Parameter(p.detach().index_select(dim, index).clone(), requires_grad=p.requires_grad)
    if p.grad is not None:
        new.grad = p.grad.index_select(dim, index).clone()
    return new


def _slice_out(conv: nn.Conv2d, bn: nn.BatchNorm2d, keep: Tensor, edits: list[ParamEdit],
               depthwise: bool = False) -> None:
    """Keep output channels `keep` of a conv (and of its input too for a depthwise one) and BN."""
    _slice_conv_out(conv, keep, edits)
    if depthwise:
        conv.in_channels = conv.groups = len(keep)
    for pname in ("weight", "bias"):
        old = getattr(bn, pname)
        if old is None:
            continue
        new = _slice_param(old, 0, keep)
        edits.append(ParamEdit(old, new, (keep,)))
        setattr(bn, pname, new)
    if bn.running_mean is not None and bn.running_var is not None:
        bn.running_mean = bn.running_mean.index_select(0, keep).clone()
        bn.running_var = bn.running_var.index_select(0, keep).clone()
    bn.num_features = len(keep)


def _slice_in(layer: nn.Module, keep: Tensor, edits: list[ParamEdit]) -> None:
    """Keep input channels (features) `keep` of a conv or linear consumer."""
    assert isinstance(layer, (nn.Conv2d, nn.Linear))
    new_w = _slice_param(layer.weight, 1, keep)
    keep_dims = (None, keep) + (None,) * (layer.weight.dim() - 2)
    edits.append(ParamEdit(layer.weight, new_w, keep_dims))
    layer.weight = new_w
    if isinstance(layer, nn.Conv2d):
        layer.in_channels = len(keep)
    else:
        layer.in_features = len(keep)


def prune_channels(model: nn.Module, keep: Mapping[str, Tensor]) -> Change:
    """Physically remove channels: ``keep`` maps a channel-set name to its sorted kept indices.

    Slices the producer's conv filters, BN weight, bias, running mean and var, and every consumer's
    input channels (grads included), so the model computes exactly what the gated model did.
    """
    sets = {s.name: s for s in channel_sets_of(model)}
    unknown = [n for n in keep if n not in sets]
    if unknown:
        raise ValueError(f"unknown channel sets {unknown}; this model has {sorted(sets)}")
    edits: list[ParamEdit] = []
    removed: list[str] = []
    kept: dict[str, list[int]] = {}
    clear_selections(model)
    for name, index in keep.items():
        cs = sets[name]
        index = torch.as_tensor(index, dtype=torch.long, device=cs.device)
        index = index.sort().values
        width = len(cs)
        if len(index) == 0 or int(index.max()) >= width or len(index.unique()) != len(index):
            raise ValueError(f"invalid kept channels for {name}: need 1..{width} distinct indices")
        if len(index) == width:
            continue
        _cut_set(cs, index, edits)
        removed.append(f"{name}: {width - len(index)} of {width}")
        kept[name] = index.tolist()
    if kept:
        _log_surgery(model, {"op": "prune", "keep": kept})
        bump_version(model)
    return Change(removed=removed, edits=edits)


def _cut_set(cs: ChannelSet, index: Tensor, edits: list[ParamEdit]) -> None:
    _slice_out(cs.conv, cs.bn, index, edits)
    for conv, bn in cs.followers:
        _slice_out(conv, bn, index, edits, depthwise=True)
    for consumer in cs.consumers:
        _slice_in(consumer, index, edits)
    for gate in cs.gates:
        _slice_conv_out(gate, index, edits)


def _slice_conv_out(conv: nn.Conv2d, keep: Tensor, edits: list[ParamEdit]) -> None:
    """Keep output channels `keep` of a conv: its filters and bias (a producer's, or a
    squeeze-and-excitation gate's, which has no BN of its own)."""
    new_w = _slice_param(conv.weight, 0, keep)
    edits.append(ParamEdit(conv.weight, new_w, (keep, None, None, None)))
    conv.weight = new_w
    if conv.bias is not None:
        old = conv.bias
        conv.bias = _slice_param(old, 0, keep)
        edits.append(ParamEdit(old, conv.bias, (keep,)))
    conv.out_channels = len(keep)


def _log_surgery(model: nn.Module, entry: dict) -> None:
    # Every structural cut, in order, with the kept channel indices: `leantrain.models.files` replays this
    # log to rebuild the architecture. Replaying (rather than applying "all drops, then final
    # widths") matters because a cut can enable the next one, e.g. a VGG conv pruned to equal
    # input and output width becomes droppable.
    record_cut(model, entry)


def remap_optimizer(optimizer: torch.optim.Optimizer, change: Change) -> None:
    """Re-key and slice optimizer state (momentum, Adam moments …) after a `Change`.

    Deleted parameters leave their param group and state; sliced ones take the matching slice of
    every state tensor shaped like the parameter. Scalars such as Adam's ``step`` are kept.
    """
    by_old = {id(e.old): e for e in change.edits}
    for group in optimizer.param_groups:
        new_params = []
        for p in group["params"]:
            edit = by_old.get(id(p))
            if edit is None:
                new_params.append(p)
                continue
            # Follow chains: one cut can edit a parameter twice, e.g. pruning two VGG channel
            # sets at once slices a conv's input (as a consumer), then its output (as a producer).
            chain = [edit]
            while chain[-1].new is not None and id(chain[-1].new) in by_old:
                chain.append(by_old[id(chain[-1].new)])
            state = optimizer.state.pop(p, None)
            final = chain[-1].new
            if final is None:
                continue
            new_params.append(final)
            if state is not None:
                for e in chain:
                    state = {k: _slice_like(v, e.old, e.keep) for k, v in state.items()}
                optimizer.state[final] = state
        group["params"] = new_params


def repoint_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module,
    groups: Sequence[Sequence[str]] | None = None, *, trainable_only: bool = True,
) -> None:
    """Point the optimizer's param groups at `model`'s live parameters by name, after a resume
    replayed the cut history on a fresh model: the one re-pointing that `attach`'s resume,
    checkpoints and Lightning use.

    Each group gets the parameters `groups` names for it (default: the names its parameters have
    now), in that order, leaving out names the cuts removed and, with `trainable_only`, frozen
    parameters, so an optimizer state saved at the cut (loaded next) lines up slot by slot. The
    optimizer's state is cleared: it belongs to the parameters it was saved with.
    """
    named = dict(model.named_parameters())
    if groups is None:
        ids = {id(p): n for n, p in named.items()}
        groups = [[ids[id(p)] for p in g["params"] if id(p) in ids] for g in optimizer.param_groups]
    optimizer.state.clear()
    for group, names in zip(optimizer.param_groups, groups):
        group["params"] = [named[n] for n in names
                           if n in named and (named[n].requires_grad or not trainable_only)]


def _slice_like(value: object, param: Tensor, keep: tuple[Tensor | None, ...]) -> object:
    if not isinstance(value, Tensor) or value.shape != param.shape:
        return value
    for dim, index in enumerate(keep):
        if index is not None:
            value = value.index_select(dim, index.to(value.device))
    return value.clone()


# ------------------------------------------------------------------------- the cut history


class CutLogError(ValueError):
    """A cut history (``model.surgery_log``, as a file or checkpoint stores it) that is not
    well-formed: the message names the bad entry."""


def _is_index_list(value: Any) -> bool:
    """A non-empty list of distinct ints (not bools) ≥ 0."""
    return (isinstance(value, list) and bool(value)
            and all(type(v) is int and v >= 0 for v in value)
            and len(set(value)) == len(value))


def check_cut_log(log: Any) -> None:
    """Raise `CutLogError` unless `log` is a list of well-formed drop and prune entries.

    Checked before any cut, so an edited or corrupt file gets a sentence naming the bad entry
    rather than an IndexError from deep in the surgery (a negative index slices from the end).
    """
    if not isinstance(log, list):
        raise CutLogError(f"surgery is malformed ({log!r:.100} is not a list)")
    for i, entry in enumerate(log):
        op = entry.get("op") if isinstance(entry, dict) else None
        if op == "drop":
            if not isinstance(entry.get("name"), str) or not isinstance(entry.get("kind", ""), str):
                raise CutLogError(f"surgery[{i}] is malformed (a drop needs a unit name and kind "
                                  "that are strings)")
        elif op == "prune":
            keep = entry.get("keep")
            if not isinstance(keep, dict) or not keep:
                raise CutLogError(f"surgery[{i}] is malformed (keep {keep!r:.100} is not a table "
                                  "of channel sets)")
            for name, index in keep.items():
                if not _is_index_list(index):
                    raise CutLogError(
                        f"surgery[{i}] is malformed (the channels kept of {name} "
                        f"({index!r:.100}) are not distinct integer indices ≥ 0)")
        else:
            raise CutLogError(f"surgery[{i}] is malformed ({entry!r:.100} is not a drop or "
                              "prune entry)")


def replay_cuts(model: nn.Module, log: list[dict[str, Any]]) -> None:
    """Make the cuts of a cut history (``model.surgery_log`` of a cut model) on a fresh model,
    in order: the one replay that model files, checkpoints, `attach`'s resume and Lightning use.

    Raises:
        CutLogError: the history is not well-formed (checked before the first cut).
    """
    check_cut_log(log)
    for entry in log:
        if entry["op"] == "drop":
            drop_units(model, [entry["name"]], include_downsampling=entry.get("kind") == "projection")
        else:
            prune_channels(model, {k: torch.tensor(v, dtype=torch.long)
                                   for k, v in entry["keep"].items()})
