"""CIFAR-style VGG with BatchNorm (as open_lth's cifar_vgg): conv stack, global pool, one linear.

Plain modules: `leantrain.prepare` finds by tracing that each equal-width stride-1 conv is a
droppable unit and every conv's output channels are a prunable channel set (the last one read by
the classifier after the global pool).
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from torch import Tensor, nn

from ..structure.layers import ConvBN, init_weights
from .factory import MODELS

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
        channels, size = in_channels, input_size
        for item in plan:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            width = int(item)
            layers.append(ConvBN(channels, width, 3, act=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


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


@MODELS.register(hidden=True)  # for tests; not in list_models()
def test_vgg(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGG:
    """Tiny VGG for tests: widths 8/16/32, 2 droppable convs in 2 stages."""
    return _vgg("test_vgg", num_classes, in_channels, input_size)
