"""Layers whose width can change every step: the compute side of channel pruning.

`SliceConv2d`, `SliceBatchNorm2d` and `SelectLinear` are drop-in subclasses of ``nn.Conv2d``,
``nn.BatchNorm2d`` and ``nn.Linear``. With no selection set they *are* those layers (the same
forward, one attribute check more). `leantrain.prepare` turns a model's own layers into them in
place, by changing the class of the existing module object, so the user's model keeps its
forward, its parameter tensors and its state-dict keys.

With a selection set, a `SliceConv2d` gathers weight slices and computes only the selected output
channels (and reads only the selected input channels). This is what makes Dynamic Channel
Propagation (arXiv 2007.01486) save real time: the authors' code multiplies full-width
activations by a 0/1 mask, which costs as much as dense training. A masked mode is kept so tests
can prove the two compute the same function, gradients and statistics.

Attribute contract (set through `leantrain.structure.ChannelSet.select`, never by hand):
  * ``out_index``: sorted int64 indices of the computed output channels, or None for all.
  * ``gate_mode``: ``"slice"`` computes only ``out_index`` (the output has ``len(out_index)``
    channels); ``"mask"`` computes all channels and the BN zeroes the unselected ones.
  * ``in_index``: the input tensor holds only these input channels (consumers, slice mode only;
    None means the input is full width).
  * ``depthwise_follow``: a depthwise conv that follows its input's selection: ``out_index``
    then also selects its input channels and its groups.
  * ``out_active`` (BN, slice mode, optional): positions within ``out_index`` of the channels
    that are really selected. The others pad the computed width (to a multiple of 8, say, where
    the convolution kernels are fast) and are gated to zero by a zero BN scale and shift, without
    moving their BN statistics, so the function equals computing the selected channels alone.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvBN",
    "SliceConv2d",
    "SliceBatchNorm2d",
    "SelectLinear",
    "SliceNormAct",
    "is_norm_act",
    "make_sliceable",
    "init_weights",
]


class SliceConv2d(nn.Conv2d):
    """``nn.Conv2d`` that can compute a subset of its output channels and read a subset of its
    input channels (see the module docstring for the attributes)."""

    out_index: Tensor | None = None
    in_index: Tensor | None = None
    gate_mode: str = "slice"
    depthwise_follow: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if (self.out_index is None and self.in_index is None) or self.gate_mode == "mask":
            return super().forward(x)
        weight, bias, groups = self.weight, self.bias, self.groups
        if self.out_index is not None:
            weight = weight.index_select(0, self.out_index)
            bias = None if bias is None else bias.index_select(0, self.out_index)
            if self.depthwise_follow:
                groups = len(self.out_index)
        if self.in_index is not None:
            weight = weight.index_select(1, self.in_index)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class SliceBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the computed channels, gating the unselected ones.

    ``observer``: called during backward with ``(bn, a, ∂L/∂a)`` for this BN's output ``a``
    (DCP's saliency), when set.

    ``saliency_sink``: the same saliency for a compiled model, where a hook that writes Python
    state cannot be traced: a leaf tensor of ``num_features`` zeros whose gradient becomes the
    per-channel Taylor saliency ``1/(B·H·W) Σ_b |Σ_hw a·∂L/∂a|`` of the computed channels (0 for
    the others; see `SaliencyTap`). Read and reset by its owner after each backward.
    """

    out_index: Tensor | None = None
    out_active: Tensor | None = None
    gate_mode: str = "slice"
    observer: Callable[[nn.Module, Tensor, Tensor], None] | None = None
    saliency_sink: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.out_index is None:
            # BatchNorm2d's own forward, named rather than super(): a fused norm+act layer's
            # sliceable class (`SliceNormAct`) inherits this and applies its activation after.
            y = nn.BatchNorm2d.forward(self, x)
        elif self.gate_mode == "mask":
            y = _masked_bn(self, x, self.out_index)
            y = y * _mask(self.out_index, self.num_features, y)
        else:
            y = _sliced_bn(self, x, self.out_index, self.out_active)
        if self.observer is not None and y.requires_grad:
            # The hook keeps a view of `a`, not a copy. When an in-place ReLU/ReLU6 follows, the
            # view then reads relu(a), but the hook receives ∂L/∂a of the pre-ReLU value, which
            # is 0 wherever relu(a) ≠ a, so relu(a)·∂L/∂a = a·∂L/∂a exactly, at no extra memory.
            y.register_hook(lambda g, a=y.detach(): self.observer(self, a, g))  # type: ignore[misc]
        elif self.saliency_sink is not None and y.requires_grad:
            sliced = self.out_index is not None and self.gate_mode == "slice"
            y = SaliencyTap.apply(y, self.saliency_sink, self.out_index if sliced else None)
        return y


class SaliencyTap(torch.autograd.Function):
    """Identity forward; backward passes ∂L/∂a on and returns the Taylor saliency of ``a`` as the
    sink's gradient (scattered to the full width when ``index`` lists the computed channels).

    A gradient is an output a compiled graph can produce, where the observer hook's write into
    its owner's state is a side effect it cannot trace. The forward returns a copy: a view of
    its input would forbid the in-place ReLU that usually follows (autograd refuses in-place
    changes to a custom Function's views); inductor fuses the copy into the BN's kernel.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, sink: Tensor, index: Tensor | None) -> Tensor:
        ctx.save_for_backward(a, *([] if index is None else [index]))
        ctx.width, ctx.dtype = sink.shape[0], sink.dtype
        return a.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None]:
        a, *index = ctx.saved_tensors
        saliency = channel_saliency(a, g, index[0] if index else None, ctx.width)
        return g, saliency.to(ctx.dtype), None


def channel_saliency(a: Tensor, g: Tensor, index: Tensor | None, width: int) -> Tensor:
    """DCP's first-order Taylor saliency of a BN output ``a`` with gradient ``g``,
    ``s_c = 1/(B·H·W) Σ_b |Σ_hw a·g|``, at full `width` (0 for channels outside ``index``, the
    computed ones; None: ``a`` holds every channel). The observer hook and `SaliencyTap` share it.
    """
    b, _, h, w = a.shape
    saliency = (a * g).sum((2, 3)).abs().sum(0) / (b * h * w)
    if index is None:
        return saliency
    return saliency.new_zeros(width).index_copy(0, index, saliency)


# Element-wise maps with f(0) = 0: a channel that is zero stays zero, so computing only the
# selected channels equals zeroing the others (the masked reference). Discovery walks channels
# through them, and a fused norm+act layer may apply one.
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU, nn.Hardtanh, nn.ELU,
    nn.Tanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
)


def is_norm_act(module: nn.Module | None) -> bool:
    """A fused BatchNorm + activation layer: a subclass of ``nn.BatchNorm2d`` whose only
    children are ``drop`` (identity or dropout) and ``act`` (an element-wise activation with
    f(0) = 0), as timm's ``BatchNormAct2d``. Read by duck typing, so timm is never imported.

    Its forward is taken to be BN → drop → act; `SliceNormAct` computes exactly that.
    """
    if not isinstance(module, nn.BatchNorm2d) or type(module) in (nn.BatchNorm2d, SliceBatchNorm2d):
        return False
    children = dict(module.named_children())
    return (set(children) == {"drop", "act"}
            and type(children["drop"]) in (nn.Identity, nn.Dropout, nn.Dropout2d)
            and type(children["act"]) in ELEMENTWISE_MODULES)


class SliceNormAct(SliceBatchNorm2d):
    """The sliceable form of a fused norm+act layer (`is_norm_act`): the sliced BN of
    `SliceBatchNorm2d`, then the layer's own ``drop`` and ``act``. Mixed in before the layer's
    class (``type("Slice" + name, (SliceNormAct, cls), {})``), so the object keeps its class's
    attributes and ``isinstance`` checks."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(SliceBatchNorm2d.forward(self, x)))  # type: ignore[operator]


_NORM_ACT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _norm_act_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _NORM_ACT_CLASSES:
        _NORM_ACT_CLASSES[cls] = type(f"Slice{cls.__name__}", (SliceNormAct, cls), {})
    return _NORM_ACT_CLASSES[cls]


class SelectLinear(nn.Linear):
    """``nn.Linear`` that can read only the input features listed in ``in_index``."""

    in_index: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.in_index is None:
            return super().forward(x)
        return F.linear(x, self.weight.index_select(1, self.in_index), self.bias)


_SLICEABLE: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: SliceConv2d,
    nn.BatchNorm2d: SliceBatchNorm2d,
    nn.Linear: SelectLinear,
}


def make_sliceable(module: nn.Module) -> nn.Module:
    """Turn a plain ``Conv2d``/``BatchNorm2d``/``Linear`` (or a fused norm+act layer,
    `is_norm_act`) into its sliceable subclass, in place.

    Only the class changes: the object, its parameters, buffers, hooks and state-dict keys stay.
    Subclasses of those layers (a user's own conv) are refused, since their forward may differ.

    Raises:
        TypeError: for any other module type.
    """
    if type(module) in _SLICEABLE.values() or isinstance(module, SliceNormAct):
        return module
    if is_norm_act(module):
        module.__class__ = _norm_act_class(type(module))
        return module
    target = _SLICEABLE.get(type(module))
    if target is None:
        raise TypeError(f"{type(module).__name__} cannot compute a subset of its channels.")
    module.__class__ = target
    return module


class ConvBN(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → optional ReLU: the conv unit of leantrain's own models.

    A plain composite: `leantrain.prepare` finds it by tracing like any user's conv+BN pair.

    Args:
        in_channels: input channels of the convolution.
        out_channels: output channels of the convolution and the BN.
        kernel_size: square kernel size.
        stride: convolution stride.
        act: apply ReLU after BN.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        # In place: BN's backward does not need its output, and an in-place ReLU lets DCP's
        # observer on the BN output share the activation's memory (see SliceBatchNorm2d).
        return F.relu(y, inplace=True) if self.act else y


def _mask(index: Tensor, size: int, like: Tensor) -> Tensor:
    mask = torch.zeros(size, dtype=like.dtype, device=like.device)
    mask[index] = 1
    return mask.view(1, -1, 1, 1)


def _sliced_bn(
    bn: nn.BatchNorm2d, y: Tensor, index: Tensor, active: Tensor | None = None
) -> Tensor:
    """BatchNorm over the computed channels ``index``; only the ``active`` ones' statistics move.

    ``active`` (positions within ``index``; None: all) marks the selected channels; the others
    are padding, gated to zero by a zero BN scale and shift: their output is exactly 0, no
    gradient reaches their conv filters or BN parameters, and their statistics stay put. Gating
    the per-channel parameters instead of multiplying the output by a mask saves a pass over the
    activation forward and backward.
    """
    weight = None if bn.weight is None else bn.weight.index_select(0, index)
    bias = None if bn.bias is None else bn.bias.index_select(0, index)
    if active is not None:
        gate = _mask(active, len(index), y).flatten()
        weight = gate if weight is None else weight * gate
        bias = torch.zeros_like(gate) if bias is None else bias * gate
    if bn.running_mean is None or bn.running_var is None:
        return F.batch_norm(y, None, None, weight, bias, True, 0.0, bn.eps)
    mean, var = bn.running_mean.index_select(0, index), bn.running_var.index_select(0, index)
    if not bn.training:
        return F.batch_norm(y, mean, var, weight, bias, False, 0.0, bn.eps)
    # F.batch_norm updates the gathered copies in place; write them back to the full buffers.
    out = F.batch_norm(y, mean, var, weight, bias, True, _momentum(bn), bn.eps)
    with torch.no_grad():
        if active is not None:
            index, mean, var = index[active], mean[active], var[active]
        bn.running_mean.index_copy_(0, index, mean)
        bn.running_var.index_copy_(0, index, var)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
    return out


def _masked_bn(bn: nn.BatchNorm2d, y: Tensor, index: Tensor) -> Tensor:
    """Full-width BatchNorm (reference path) whose unselected channels keep their statistics."""
    if not bn.training or bn.running_mean is None or bn.running_var is None:
        return nn.BatchNorm2d.forward(bn, y)
    # Run on copies of the statistics (autograd saves them, so the buffers must not be edited
    # after the op), then write back only the selected channels.
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = F.batch_norm(y, mean, var, bn.weight, bn.bias, True, _momentum(bn), bn.eps)
    with torch.no_grad():
        bn.running_mean.index_copy_(0, index, mean.index_select(0, index))
        bn.running_var.index_copy_(0, index, var.index_select(0, index))
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
    return out


def _momentum(bn: nn.BatchNorm2d) -> float:
    # momentum=None means a cumulative average in torch; selected channels are updated a varying
    # number of times, so that average is not defined per channel. 0.1 is torch's default.
    return 0.1 if bn.momentum is None else bn.momentum


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs and BN γ = 1, β = 0, as torchvision's VGG and ResNet do.

    No zero-init of a block's last BN: the golden counts don't depend on it, and a zero residual
    branch would make every block look "settled" to Learn&Drop's change score at the start.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def sliceable_layers(model: nn.Module) -> Iterator[nn.Module]:
    """Every sliceable layer of the model (to clear selections)."""
    for m in model.modules():
        if isinstance(m, (SliceConv2d, SliceBatchNorm2d, SelectLinear)):
            yield m
