"""Dynamic Channel Propagation (Shen et al., ICPR 2020, arXiv 2007.01486), computing only the
selected channels.

Every prunable channel has a utility. Before each step the channels with the highest utilities
are selected (one global threshold, exactly round(N·p) channels off); selected channels' utilities
are updated from a first-order Taylor saliency of their BN output; at the end the selected
channels are kept and the rest are cut out, giving a compact model.

Unlike the authors' code, which multiplies full-width activations by a 0/1 mask, the selected
channels are gathered into smaller convolutions each step (`leantrain.structure.layers`), so
training gets faster as p grows. ``mode="mask"`` reproduces the authors' computation for tests
and for the benchmark's masked row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..compiled import is_compiled, mark_dynamic_widths
from ..structure import ChannelSet, channel_sets_of
from ..structure.layers import channel_saliency
from ..structure.surgery import Change, prune_channels
from .base import Method, MethodWarning, Progress
from .registry import register_method

__all__ = ["DCP", "computed_width", "select_channels", "select_per_layer"]


def computed_width(selected: int, width: int, multiple: int) -> int:
    """Channels slice mode computes for `selected` channels of a `width`-channel layer: rounded
    up to a multiple of `multiple` (fast kernel widths), never above the layer's width."""
    return min(width, -(-selected // multiple) * multiple)


def select_channels(
    utilities: list[Tensor], prune: int, min_channels: int
) -> list[Tensor]:
    """Kept indices per layer after pruning exactly `prune` lowest-utility channels globally.

    The `min_channels` highest-utility channels of each layer are never candidates, so no layer
    falls below it (the original code could empty a layer and divide by zero). Ties are broken
    by position (stable sort), so the selection is deterministic.
    """
    sizes = [len(u) for u in utilities]
    offsets = torch.tensor([0, *sizes[:-1]], device=utilities[0].device).cumsum(0)
    pool_u, pool_pos = [], []
    for offset, u in zip(offsets, utilities):
        rest = torch.sort(u, descending=True, stable=True).indices[min_channels:]
        pool_u.append(u[rest])
        pool_pos.append(rest + offset)
    candidates = torch.cat(pool_u)
    if prune > len(candidates):
        raise ValueError(f"cannot prune {prune} channels while keeping min_channels per layer.")
    lowest = torch.sort(candidates, stable=True).indices[:prune]
    keep = torch.ones(sum(sizes), dtype=torch.bool, device=candidates.device)
    keep[torch.cat(pool_pos)[lowest]] = False
    return [mask.nonzero().flatten() for mask in keep.split(sizes)]


def select_per_layer(utilities: list[Tensor], p: float, min_channels: int) -> list[Tensor]:
    """Kept indices per layer when every layer prunes its own ``round(C·p)`` lowest-utility
    channels (at least `min_channels` kept). Ties by position (stable sort): deterministic."""
    kept = []
    for u in utilities:
        k = max(min_channels, len(u) - round(len(u) * p))
        kept.append(torch.sort(u, descending=True, stable=True).indices[:k].sort().values)
    return kept


@register_method
@dataclass
class DCP(Method):
    """Dynamic Channel Propagation: prune channels by utility while training, export compact.

    Args:
        p: pruning rate, the fraction of all prunable channels switched off each step, in [0, 1).
        selection: ``"global"`` (the authors'): one threshold over all prunable channels, so
            layer widths emerge from the utilities; ``"layer"`` (ours): every layer switches off
            its own ``round(C·p)`` lowest-utility channels, so every width is cut alike. Time
            follows the widths, not the FLOPs: on CPU a CIFAR ResNet-32's first stage costs the
            most per FLOP, and after 60 steps the global rule had left it 9-13 of 16 channels wide,
            computed as all 16 at a multiple of 8 (`benchmarks/dcp_overhead.py`); ``"layer"``
            computes half of every width at p = 0.5.
        gamma: utility decay factor γ in U ← γ·U + v (authors: 0.6).
        gamma_milestones: fractions of training at which γ rises (e.g. the LR milestones).
        gamma_values: γ after each milestone; 1.0 freezes the selection (authors' ImageNet
            schedule 0.6 → 0.7 → 0.8 → 1.0).
        warmup: fraction of training with every channel on (authors: 10 of 200 epochs on CIFAR;
            we default to 5%).
        min_channels: no layer keeps fewer channels than this.
        mode: ``"slice"`` computes only the selected channels (real savings); ``"mask"`` computes
            all and zeroes the unselected ones, as the authors' code does (reference, no savings).
        compute_multiple: slice mode: each layer computes a multiple of this many channels,
            the selected ones plus the highest-utility unselected ones as padding, gated to zero
            (the function, gradients and statistics are those of the exact selection). CPU
            convolution kernels are much slower at odd widths: a ResNet-32 step with every inner
            width at half + 1 took 1.5× as long as at exactly half (AMD EPYC, channels_last).
            1 computes exactly the selected channels.
        export: at the end, cut the unselected channels out for good (the compact model).
        export_at: cut them out already at this fraction of training (ours, for the dense
            frontier of issue #29): from then on the compact network trains as one network, with
            no selection to compute and every later step at the compact width, each layer at its
            computed width (a multiple of ``compute_multiple``). None: at the end.
        snapshot_every: epochs between utility snapshots logged for the heatmap plot.
    """

    name: ClassVar[str] = "dcp"
    p: float = 0.5
    selection: str = "global"
    gamma: float = 0.6
    gamma_milestones: list[float] = field(default_factory=list)
    gamma_values: list[float] = field(default_factory=list)
    warmup: float = 0.05
    min_channels: int = 1
    mode: str = "slice"
    compute_multiple: int = 8
    export: bool = True
    export_at: float | None = None
    snapshot_every: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.p < 1:
            raise ValueError(f"dcp.p = {self.p} is outside [0, 1): p is the fraction of channels pruned.")
        if not 0 <= self.gamma <= 1 or any(not 0 <= g <= 1 for g in self.gamma_values):
            raise ValueError("dcp.gamma values must lie in [0, 1].")
        if len(self.gamma_milestones) != len(self.gamma_values):
            raise ValueError("dcp.gamma_milestones and dcp.gamma_values need the same length.")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"dcp.warmup = {self.warmup} must be a fraction of training in [0, 1).")
        if self.min_channels < 1:
            raise ValueError("dcp.min_channels must be ≥ 1 (a layer cannot be emptied).")
        if self.selection not in ("global", "layer"):
            raise ValueError(f"dcp.selection = {self.selection!r}; choose 'global' or 'layer'.")
        if self.mode not in ("slice", "mask"):
            raise ValueError(f"dcp.mode = {self.mode!r}; choose 'slice' or 'mask'.")
        if self.export_at is not None and not (self.warmup < self.export_at <= 1):
            raise ValueError(
                f"dcp.export_at = {self.export_at} must be a fraction of training after the "
                f"warm-up ({self.warmup}) and ≤ 1, or left out to cut at the end."
            )
        if self.export_at is not None and not self.export:
            raise ValueError("dcp.export_at cuts the compact model early, but dcp.export = false "
                             "keeps the full model; drop one of the two.")
        if self.compute_multiple < 1:
            raise ValueError(
                f"dcp.compute_multiple = {self.compute_multiple} must be ≥ 1 (1: no padding)."
            )
        self.utilities: dict[str, Tensor] = {}
        self.kept: dict[str, Tensor | None] = {}
        self._saliency: dict[str, Tensor] = {}
        self._computed_widths: list[int] = []  # per set, padding included (-1: full width)
        # Channel sets left out because their conv and BN are frozen (see `_frozen_sets`).
        self.frozen_sets: list[str] = []
        self._warned_frozen: list[str] | None = None
        self.exported = False  # the compact cut is made (`export_at`): nothing left to select
        # A compiled model (`leantrain.compiled`): saliencies come from sink gradients, and once
        # the selection starts every set has index tensors (never None), so the graph's inputs
        # keep one form and only their (dynamic) lengths change.
        self._compiled = False
        self._selecting = False

    # ------------------------------------------------------------------ hooks

    def setup(self, model: nn.Module, progress: Progress) -> None:
        if self.exported:  # a resume after the early cut: the compact network trains as it is
            return
        every = channel_sets_of(model)
        if not every:
            raise ValueError("this model has no prunable channels, so DCP cannot prune it; use --method none.")
        self.frozen_sets = self._frozen_sets(every)
        sets = self._sets(model)
        if not sets:
            raise ValueError(
                f"every prunable channel set of {type(model).__name__} is frozen (its conv and "
                f"BN have requires_grad=False: {', '.join(self.frozen_sets[:3])}), so DCP has no "
                "utility to measure and nothing to prune; unfreeze some layers or train without "
                "DCP."
            )
        self._warn_frozen()
        narrow = min(sets, key=len)
        if self.min_channels > len(narrow):
            raise ValueError(
                f"dcp.min_channels = {self.min_channels} exceeds the width of {narrow.name} "
                f"({len(narrow)} channels); lower min_channels."
            )
        total = sum(len(s) for s in sets)
        too_many = round(total * self.p) > total - self.min_channels * len(sets)
        if self.selection == "global" and too_many:  # "layer" keeps min_channels per layer
            raise ValueError(
                f"dcp.p = {self.p} would prune {round(total * self.p)} of {total} channels, "
                f"leaving fewer than min_channels = {self.min_channels} in some layer; lower p."
            )
        if idle := self._why_idle(sets):
            warnings.warn(f"DCP will prune nothing: {idle}.", MethodWarning, stacklevel=2)
        self._compiled = is_compiled(model)
        self._selecting = progress.fraction >= self.warmup and self.p > 0 and any(
            k is not None for k in self.kept.values())  # a resume mid-selection
        self._track(sets)
        self._apply_selection(sets)

    def _frozen_sets(self, sets: list[ChannelSet]) -> list[str]:
        """Sets DCP leaves alone: those whose conv and BN have no trainable parameter. Their BN
        output has no gradient when nothing before them trains either, so their utilities would
        never move from the start and the selection would cut by position, and a frozen layer
        could not adapt to a cut anyway. On a resume, the sets the first run left out (no
        utilities saved), whatever `requires_grad` says now (Learn&Drop may have frozen more)."""
        if self.utilities:
            return [s.name for s in sets if s.name not in self.utilities]
        return [s.name for s in sets
                if not any(p.requires_grad for m in (s.conv, s.bn) for p in m.parameters())]

    def _sets(self, model: nn.Module) -> list[ChannelSet]:
        """The channel sets DCP selects: every prunable set but the frozen ones."""
        frozen = set(self.frozen_sets)
        return [s for s in channel_sets_of(model) if s.name not in frozen]

    def _warn_frozen(self) -> None:
        if self.frozen_sets and self.frozen_sets != self._warned_frozen:
            self._warned_frozen = list(self.frozen_sets)
            names = ", ".join(self.frozen_sets[:5]) + (", …" if len(self.frozen_sets) > 5 else "")
            warnings.warn(
                f"DCP leaves {len(self.frozen_sets)} channel set(s) whose conv and BN are frozen "
                f"(requires_grad=False) at full width, never pruned: {names}.",
                MethodWarning, stacklevel=3)

    def _why_idle(self, sets: list[ChannelSet]) -> str | None:
        """Why these settings prune no channel at all, or None."""
        if self.p == 0:
            return "dcp.p = 0 switches no channel off; set p > 0 (e.g. 0.5) or train without DCP"
        total = sum(len(s) for s in sets)
        if self.selection == "global" and round(total * self.p) == 0:
            return (f"dcp.p = {self.p} of the {total} prunable channels rounds to 0 channels; "
                    f"raise p to at least {0.5 / total:.3g}")
        if self.selection == "layer" and all(
                max(self.min_channels, len(s) - round(len(s) * self.p)) >= len(s) for s in sets):
            return (f"with selection = 'layer' every layer keeps all its channels (round(C·p) "
                    f"is 0 at p = {self.p}, or min_channels = {self.min_channels} keeps them); "
                    "raise p or lower min_channels")
        return None

    def _track(self, sets: list[ChannelSet]) -> None:
        """Utilities and a saliency observer for every set. Sets can appear mid-training: when
        Learn&Drop drops a block, the channels of the conv before it may reach only convs now
        (MobileNetV2: a projection conv followed by dropped residual blocks)."""
        for s in sets:
            if s.name not in self.utilities:  # keep utilities loaded by load_state_dict
                self.utilities[s.name] = torch.full((len(s),), 1.0 / len(s), device=s.device)
                self.kept[s.name] = None
            if self._compiled:
                s.bn.observer = None
                if s.bn.saliency_sink is None:
                    s.bn.saliency_sink = torch.zeros(len(s), device=s.device, requires_grad=True)
            else:
                s.bn.observer, s.bn.saliency_sink = self._observe, None

    def _observe(self, bn: nn.Module, a: Tensor, g: Tensor) -> None:
        sliced = bn.out_index is not None and bn.gate_mode == "slice"
        self._saliency[id(bn)] = channel_saliency(a, g, bn.out_index if sliced else None,
                                                  bn.num_features)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        if self.exported:
            return
        gamma = self.gamma_at(progress.fraction)
        for s in self._sets(model):
            saliency = self._take_saliency(s)
            if saliency is None:
                continue
            v = saliency / saliency.max().clamp_min(1e-30)  # best channel of the layer gets 1
            u, kept = self.utilities[s.name], self.kept[s.name]
            v = v.to(u.dtype)  # utilities stay float32 whatever the model's precision
            u, kept = self.utilities[s.name], self.kept[s.name]
            if kept is None:
                u.mul_(gamma).add_(v)
            else:  # unselected channels keep their (frozen) utility
                u[kept] = gamma * u[kept] + v[kept]

    def _take_saliency(self, s: ChannelSet) -> Tensor | None:
        """The saliency of set `s` from the last backward (None: none yet), reset for the next."""
        sink = s.bn.saliency_sink
        if sink is None:
            return self._saliency.pop(id(s.bn), None)
        saliency, sink.grad = sink.grad, None
        return saliency

    def step(self, model: nn.Module, progress: Progress) -> Change | None:
        if self.exported:
            return None
        sets = self._sets(model)
        self._compiled = is_compiled(model)  # a user may compile after attach
        self._track(sets)
        self._selecting = progress.fraction >= self.warmup and self.p > 0
        if self._selecting:
            utilities = [self.utilities[s.name] for s in sets]
            if self.selection == "layer":
                kept = select_per_layer(utilities, self.p, self.min_channels)
            else:
                total = sum(len(s) for s in sets)
                kept = select_channels(utilities, round(total * self.p), self.min_channels)
            for s, k in zip(sets, kept):
                self.kept[s.name] = None if len(k) == len(s) else k
        self._apply_selection(sets)
        if progress.epoch_ended and (progress.step // progress.steps_per_epoch) % self.snapshot_every == 0:
            self._emit({
                "kind": "dcp_snapshot",
                "widths": {s.name: self._width(s) for s in sets},
                "utilities": {s.name: self.utilities[s.name].tolist() for s in sets},
            })
        if self.export_at is not None and progress.fraction >= self.export_at:
            return self._cut(model, padded=True)
        return None

    def finish(self, model: nn.Module) -> Change | None:
        if self.exported:
            return None
        return self._cut(model)

    def _cut(self, model: nn.Module, padded: bool = False) -> Change | None:
        """The selection made permanent: unselected channels cut out (`export`), or the full
        model with its selection cleared.

        ``padded`` (a cut before the end, `export_at`): each layer keeps the channels it
        computes, its selection padded to a multiple of ``compute_multiple`` with the next
        highest utilities, because the compact network trains on and odd widths run slow (in
        the finetune suite, ResNet-20 cut to its exact kept widths at 30% trained at 1.18× dense
        time on 2 CPU cores). The padding channels join the network then. At the end the exact
        selection is kept, so the compact model computes what the gated one did."""
        sets = self._sets(model)
        kept = {s.name: (self._computed(s)[0] if padded else self.kept[s.name]) for s in sets}
        width = {s.name: len(s) for s in sets}  # a compiled run's full-width index keeps all
        keep = {name: k for name, k in kept.items() if k is not None and len(k) < width[name]}
        for s in sets:
            s.bn.observer = s.bn.saliency_sink = None
            s.clear()
        self.exported = True
        if not self.export or not keep:
            return None
        change = prune_channels(model, keep)
        self._emit({"kind": "dcp_export", "removed": change.removed})
        return change

    # ------------------------------------------------------------------ helpers

    def gamma_at(self, fraction: float) -> float:
        """γ at a point of training: the last milestone passed sets it."""
        gamma = self.gamma
        for milestone, value in zip(self.gamma_milestones, self.gamma_values):
            if fraction >= milestone:
                gamma = value
        return gamma

    def _width(self, s: ChannelSet) -> int:
        k = self.kept.get(s.name)
        return len(s) if k is None else len(k)

    def _computed(self, s: ChannelSet) -> tuple[Tensor | None, Tensor | None]:
        """The channels layer `s` computes, and the positions of the selected ones among them.

        For a compiled model, once the selection starts: index tensors even where nothing is cut
        or padded, their lengths marked dynamic, so the selection never changes the graph's form.
        """
        kept = self.kept[s.name]
        always = self._compiled and self._selecting and self.mode == "slice"
        if always and kept is None:
            kept = torch.arange(len(s), device=s.device)
        if kept is None or self.mode == "mask":
            return kept, None
        width = (computed_width(len(kept), len(s), self.compute_multiple)
                 if self.compute_multiple > 1 else len(kept))
        index, active = (kept, None) if width == len(kept) else self._padded(s, kept, width)
        if always:
            active = torch.arange(len(index), device=s.device) if active is None else active
            mark_dynamic_widths(index, active)
        return index, active

    def _padded(self, s: ChannelSet, kept: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """`kept` padded to `width` computed channels, and the positions of `kept` among them."""
        # Pad with the unselected channels most likely to be selected next (highest utility),
        # so the computed set changes little from step to step. Stable sort: deterministic.
        u = self.utilities[s.name].clone()
        u[kept] = -torch.inf
        extra = torch.sort(u, descending=True, stable=True).indices[: width - len(kept)]
        index = torch.cat([kept, extra]).sort().values
        return index, torch.isin(index, kept).nonzero().flatten()

    def _apply_selection(self, sets: list[ChannelSet]) -> None:
        self._computed_widths = []
        for s in sets:
            index, active = self._computed(s)
            s.select(index, active, self.mode)
            # -1: full width (a compiled run's arange index too: the same FLOPs, the same key)
            self._computed_widths.append(-1 if index is None or len(index) == len(s) else len(index))

    def sync_tensors(self, model: nn.Module) -> list[Tensor]:
        # Saliencies come from this process's activations and gradients; averaged over the
        # processes they are the whole batch's (up to a scale the per-layer max removes).
        sinks = [cs.bn.saliency_sink for cs in self._sets(model)]
        if any(sink is not None for sink in sinks):
            return [sink.grad for sink in sinks if sink is not None and sink.grad is not None]
        return [s for cs in self._sets(model) if (s := self._saliency.get(id(cs.bn))) is not None]

    def compile_problem(self, backend: str) -> str | None:
        # Inductor lowers a convolution with its weight's shape fixed (torch 2.13,
        # torch/_inductor/kernel/conv.py: guard_int on the weight size, in the forward and the
        # backward lowering), so every width a layer has not had yet compiles the graph again,
        # tens of seconds per step on 2 CPU cores. Backends that do not lower convolutions
        # (aot_eager) keep one graph for every width (tests/test_compile.py) but gain nothing.
        if backend == "inductor" and self.mode == "slice" and self.p > 0:
            return ("DCP computes new widths at every step and inductor compiles a convolution "
                    "for its exact channel counts, so nearly every step would recompile")
        return None

    def cost_key(self, model: nn.Module) -> Any:
        # The computed widths (padding included) set the step's FLOPs.
        return tuple(self._computed_widths)

    def state_dict(self) -> dict[str, Any]:
        return {
            "utilities": {k: v.clone() for k, v in self.utilities.items()},
            "kept": {k: (None if v is None else v.clone()) for k, v in self.kept.items()},
            "exported": self.exported,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.utilities = {k: v.clone() for k, v in state["utilities"].items()}
        self.kept = {k: (None if v is None else v.clone()) for k, v in state["kept"].items()}
        self.exported = bool(state.get("exported", False))
