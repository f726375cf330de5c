"""CIFAR-style VGG with BatchNorm (as open_lth's cifar_vgg): conv stack, global pool, one linear.

Every conv is a `ConvBN` so Dynamic Channel Propagation can compute only the selected channels,
and the classifier is a `SelectLinear` so it can read only the last conv's selected channels. The
model implements the `leantrain.structure.Prunable` protocol: each equal-width stride-1 conv is a
droppable unit, and every conv's output channels are a prunable channel set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

# Module import, not `from ..structure import Unit`: structure imports models.layers, which runs
# this package's __init__ first, so the names may not exist yet while structure is loading.
from .. import structure
from ..registry import MODELS
from .layers import ConvBN, SelectLinear, init_weights

if TYPE_CHECKING:
    from ..structure import ChannelSet, Unit

__all__ = ["VGG", "PLANS", "vgg11", "vgg13", "vgg16", "vgg19", "test_vgg"]

# Widths of the 3×3 convs, "M" = 2×2 max-pool (Simonyan & Zisserman, configurations A, B, D, E).
PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
    # Tiny variant for fast tests: droppable units in two stages (block2 and block3).
    "test_vgg": [8, "M", 16, 16, "M", 32, 32],
}


class VGG(nn.Module):
    """VGG with BN for small images: ``features`` → global average pool → ``classifier``.

    Args:
        plan: conv widths and ``"M"`` for max-pools.
        num_classes: classifier outputs.
        in_channels: image channels.
        input_size: input side in pixels; a max-pool is applied only while the spatial size is at
            least 2, so 28 px MNIST works with plans made for 32 px (skipped pools are omitted).
    """

    def __init__(
        self,
        plan: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        # Stage of each conv, keyed by its index in `features`, numbered by the planned pooling
        # segment so names do not shift when a pool is skipped for a small input.
        self._stage_of: dict[int, str] = {}
        channels, size, segment = in_channels, input_size, 1
        for item in plan:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                segment += 1
                continue
            width = int(item)
            self._stage_of[len(layers)] = f"block{segment}"
            layers.append(ConvBN(channels, width, 3, act=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = SelectLinear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def _live_convs(self) -> list[tuple[int, ConvBN]]:
        # Dropped convs are nn.Identity now; only the remaining ConvBNs describe the structure.
        return [(i, m) for i, m in enumerate(self.features) if isinstance(m, ConvBN)]

    def droppable_units(self, include_downsampling: bool = False) -> list[Unit]:
        """Every live conv with equal input and output width and stride 1.

        Args:
            include_downsampling: no effect for VGG (a VGG has no projection shortcuts).

        Returns:
            One identity `Unit` per eligible conv, named ``"features.<i>"``.
        """
        del include_downsampling  # max-pools are never removed, and widening convs cannot be
        return [
            structure.Unit(
                name=f"features.{i}",
                stage=self._stage_of[i],
                module=m,
                replacement=nn.Identity(),
            )
            for i, m in self._live_convs()
            if m.in_channels == m.out_channels and m.conv.stride == (1, 1)
        ]

    def stage_blocks(self) -> dict[str, list[str]]:
        """Live convs per stage, droppable or not (a stage's widening conv counts too)."""
        out: dict[str, list[str]] = {}
        for i, _ in self._live_convs():
            out.setdefault(self._stage_of[i], []).append(f"features.{i}")
        return out

    def channel_sets(self) -> list[ChannelSet]:
        """One set per live conv; its consumer is the next live conv, or the classifier."""
        convs = self._live_convs()
        sets = []
        for k, (i, m) in enumerate(convs):
            consumer: ConvBN | SelectLinear = (
                convs[k + 1][1] if k + 1 < len(convs) else self.classifier
            )
            sets.append(
                structure.ChannelSet(name=f"features.{i}", producer=m, consumers=(consumer,))
            )
        return sets


def _vgg(plan_name: str, num_classes: int, in_channels: int, input_size: int) -> VGG:
    return VGG(PLANS[plan_name], num_classes, in_channels, input_size)


@MODELS.register
def vgg11(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGG:
    """VGG-11 with BN (8 convs, 4 droppable)."""
    return _vgg("vgg11", num_classes, in_channels, input_size)


@MODELS.register
def vgg13(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGG:
    """VGG-13 with BN (10 convs)."""
    return _vgg("vgg13", num_classes, in_channels, input_size)


@MODELS.register
def vgg16(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGG:
    """VGG-16 with BN (13 convs, 9 droppable)."""
    return _vgg("vgg16", num_classes, in_channels, input_size)


@MODELS.register
def vgg19(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGG:
    """VGG-19 with BN (16 convs)."""
    return _vgg("vgg19", num_classes, in_channels, input_size)


@MODELS.register
def test_vgg(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGG:
    """Tiny VGG for tests: widths 8/16/32, 2 droppable convs in 2 stages."""
    return _vgg("test_vgg", num_classes, in_channels, input_size)
