"""Building blocks whose width can change every step: the compute side of channel pruning.

`ConvBN` is a conv → BatchNorm → optional ReLU unit that can compute only a subset of its output
channels and read only a subset of its input channels, by gathering weight slices each step. This
is what makes Dynamic Channel Propagation (arXiv 2007.01486) save real time: the authors' code
multiplies full-width activations by a 0/1 mask, which costs as much as dense training. A masked
mode is kept so tests can prove the two compute the same function, gradients and statistics.

`SelectLinear` is an `nn.Linear` that can read a subset of its input features (the classifier of
a VGG whose last conv is pruned).

Attribute contract (set by a method, e.g. DCP, before a forward pass):
  * ``out_index``: sorted int64 indices of the selected output channels, or None for all.
  * ``gate_mode``: ``"slice"`` computes only ``out_index`` (the output has ``len(out_index)``
    channels); ``"mask"`` computes all channels and zeroes the unselected ones after BN.
  * ``in_index``: the input tensor holds only these input channels (set on consumers in slice
    mode only; None means the input is full width).
  * ``out_active``: slice mode, optional: positions within ``out_index`` of the channels that
    are really selected. The others pad the computed width (to a multiple of 8, say, where the
    convolution kernels are fast) and are gated to zero after BN, without moving their BN
    statistics, so the function equals computing the selected channels alone.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBN", "SelectLinear", "init_weights"]


class ConvBN(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → optional ReLU, computing all or a subset of its channels.

    Args:
        in_channels: input channels of the convolution.
        out_channels: output channels of the convolution and the BN.
        kernel_size: square kernel size.
        stride: convolution stride.
        act: apply ReLU after BN (after the channel gate, so a gated channel stays zero).
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
        self.out_index: Tensor | None = None
        self.in_index: Tensor | None = None
        self.out_active: Tensor | None = None
        self.gate_mode: str = "slice"
        # Called during backward with (a, ∂L/∂a) for the BN output a, when set (DCP saliency);
        # for act=True the post-ReLU pair is passed, whose product a·∂L/∂a is the same.
        self.observer: Callable[[ConvBN, Tensor, Tensor], None] | None = None

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.out_index is None and self.in_index is None:
            y = self.bn(self.conv(x))
        elif self.gate_mode == "mask":
            y = _masked_bn(self.bn, self.conv(x), self.out_index)
        else:
            y = self._sliced(x)
        observe = self.observer is not None and y.requires_grad
        if observe and not self.act:
            self._observe(y)
        if self.gate_mode == "mask" and self.out_index is not None:
            y = y * _mask(self.out_index, self.out_channels, y)
        if not self.act:
            return y
        out = F.relu(y)
        if observe:
            # a·∂L/∂a of the BN output a equals r·∂L/∂r of the ReLU output r, exactly: where
            # a ≤ 0 (or the channel is gated off) both products are 0, elsewhere r = a and the
            # gradient passes through unchanged. ReLU keeps r for its backward anyway, so
            # observing r costs no extra activation memory, unlike keeping a alive.
            self._observe(out)
        return out

    def _observe(self, t: Tensor) -> None:
        t.register_hook(lambda g, a=t.detach(): self.observer(self, a, g))  # type: ignore[misc]

    def _sliced(self, x: Tensor) -> Tensor:
        weight = self.conv.weight
        if self.out_index is not None:
            weight = weight.index_select(0, self.out_index)
        if self.in_index is not None:
            weight = weight.index_select(1, self.in_index)
        y = F.conv2d(x, weight, None, self.conv.stride, self.conv.padding)
        return _sliced_bn(self.bn, y, self.out_index, self.out_active)


class SelectLinear(nn.Linear):
    """`nn.Linear` that can read only the input features listed in ``in_index``."""

    in_index: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.in_index is None:
            return super().forward(x)
        return F.linear(x, self.weight.index_select(1, self.in_index), self.bias)


def _mask(index: Tensor, size: int, like: Tensor) -> Tensor:
    mask = torch.zeros(size, dtype=like.dtype, device=like.device)
    mask[index] = 1
    return mask.view(1, -1, 1, 1)


def _sliced_bn(
    bn: nn.BatchNorm2d, y: Tensor, index: Tensor | None, active: Tensor | None = None
) -> Tensor:
    """BatchNorm over the computed channels ``index``; only the ``active`` ones' statistics move.

    ``active`` (positions within ``index``; None: all) marks the selected channels; the others
    are padding, gated to zero by a zero BN scale and shift: their output is exactly 0, no
    gradient reaches their conv filters or BN parameters, and their statistics stay put. Gating
    the per-channel parameters instead of multiplying the output by a mask saves a pass over the
    activation forward and backward.
    """
    if index is None:
        return bn(y)
    weight, bias = bn.weight.index_select(0, index), bn.bias.index_select(0, index)
    if active is not None:
        gate = _mask(active, len(index), weight).flatten()
        weight, bias = weight * gate, bias * gate
    assert bn.running_mean is not None and bn.running_var is not None
    mean, var = bn.running_mean.index_select(0, index), bn.running_var.index_select(0, index)
    if not bn.training:
        return F.batch_norm(y, mean, var, weight, bias, False, 0.0, bn.eps)
    # F.batch_norm updates the gathered copies in place; write them back to the full buffers.
    out = F.batch_norm(y, mean, var, weight, bias, True, bn.momentum or 0.1, bn.eps)
    with torch.no_grad():
        if active is not None:
            index, mean, var = index[active], mean[active], var[active]
        bn.running_mean.index_copy_(0, index, mean)
        bn.running_var.index_copy_(0, index, var)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
    return out


def _masked_bn(bn: nn.BatchNorm2d, y: Tensor, index: Tensor | None) -> Tensor:
    """Full-width BatchNorm (reference path) whose unselected channels keep their statistics."""
    if index is None or not bn.training:
        return bn(y)
    assert bn.running_mean is not None and bn.running_var is not None
    # Run on copies of the statistics (autograd saves them, so the buffers must not be edited
    # after the op), then write back only the selected channels.
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = F.batch_norm(y, mean, var, bn.weight, bn.bias, True, bn.momentum or 0.1, bn.eps)
    with torch.no_grad():
        bn.running_mean.index_copy_(0, index, mean.index_select(0, index))
        bn.running_var.index_copy_(0, index, var.index_select(0, index))
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
    return out


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
