"""ResNets: CIFAR-style (He et al. 2016, §4.2) and ImageNet-style (torchvision layout, v1.5).

Plain modules: `leantrain.prepare` finds what can be removed by tracing the forward, as for any
user's model (blocks with an identity shortcut are droppable units; the inner widths of a block,
BasicBlock conv1 and Bottleneck conv1 and conv2, are prunable channel sets; the residual path
never is). Shortcuts that change shape are 1×1 conv+BN projections (option B), which the golden
counts assume (CIFAR ResNet-56: 855,770 parameters, 125,747,850 MACs at 32 px).
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..structure.layers import ConvBN, init_weights
from .factory import MODELS

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "test_resnet",
    "test_resnet_bottleneck",
]


def _projection(in_channels: int, out_channels: int, stride: int) -> ConvBN | None:
    """1×1 conv+BN shortcut when the block changes shape, else None (identity shortcut)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvBN(in_channels, out_channels, 1, stride, act=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers with a shortcut: ``relu(conv2(conv1(x)) + shortcut(x))``.

    Args:
        in_channels: block input width.
        width: width of both convs (the output width, expansion 1).
        stride: stride of the first conv (and of the projection).
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, width, 3, stride, act=True)
        self.conv2 = ConvBN(width, width, 3, 1, act=False)
        self.downsample = _projection(in_channels, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(self.conv1(x)) + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride, torchvision v1.5) → 1×1 expand ×4, plus shortcut.

    Args:
        in_channels: block input width.
        width: inner width; the output width is ``4 * width``.
        stride: stride of the 3×3 conv (and of the projection).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBN(in_channels, width, 1, 1, act=True)
        self.conv2 = ConvBN(width, width, 3, stride, act=True)
        self.conv3 = ConvBN(width, out_channels, 1, 1, act=False)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class ResNet(nn.Module):
    """A stem, stages ``layer1..layerN`` of residual blocks, global average pool and ``fc``.

    The first stage keeps the resolution, every later stage halves it in its first block.

    Args:
        block: `BasicBlock` or `Bottleneck`.
        layers: number of blocks per stage.
        widths: block width per stage (before expansion).
        num_classes: classifier outputs.
        in_channels: image channels.
        stem_width: output width of the stem conv.
        large_stem: 7×7 stride-2 conv + 3×3 stride-2 max-pool (ImageNet); otherwise a 3×3
            stride-1 conv and no pool (small images).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        stem_width: int = 16,
        large_stem: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(
                f"layers and widths need one entry per stage, got {len(layers)} and {len(widths)}."
            )
        if large_stem:
            self.conv1 = ConvBN(in_channels, stem_width, 7, 2, act=True)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, padding=1)
        else:
            self.conv1 = ConvBN(in_channels, stem_width, 3, 1, act=True)
            self.maxpool = nn.Identity()
        self.num_stages = len(layers)
        channels = stem_width
        for s, (n, width) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def stages(self) -> list[tuple[str, nn.Sequential]]:
        """The residual stages as ``(name, module)`` pairs, in order."""
        return [(f"layer{s + 1}", getattr(self, f"layer{s + 1}")) for s in range(self.num_stages)]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        for _, stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- CIFAR-style: 3 stages of n = (depth - 2) / 6 BasicBlocks, widths 16/32/64 -----------------


def _cifar_resnet(depth: int, num_classes: int, in_channels: int) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [16, 32, 64], num_classes, in_channels, stem_width=16)


@MODELS.register
def resnet14(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """CIFAR ResNet-14 (3×2 BasicBlocks, 175,258 parameters for 10 classes): the network a
    ResNet-32 Learn&Drop run keeping two blocks per stage ends with, so the same architecture
    can be trained from scratch as its control (Liu et al., arXiv 1810.05270)."""
    return _cifar_resnet(14, num_classes, in_channels)


@MODELS.register
def resnet20(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """CIFAR ResNet-20 (3×3 BasicBlocks, 272,474 parameters for 10 classes)."""
    return _cifar_resnet(20, num_classes, in_channels)


@MODELS.register
def resnet32(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """CIFAR ResNet-32 (3×5 BasicBlocks)."""
    return _cifar_resnet(32, num_classes, in_channels)


@MODELS.register
def resnet44(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """CIFAR ResNet-44 (3×7 BasicBlocks)."""
    return _cifar_resnet(44, num_classes, in_channels)


@MODELS.register
def resnet56(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """CIFAR ResNet-56 (3×9 BasicBlocks, 855,770 parameters for 10 classes)."""
    return _cifar_resnet(56, num_classes, in_channels)


@MODELS.register
def resnet110(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """CIFAR ResNet-110 (3×18 BasicBlocks, 1,730,714 parameters for 10 classes)."""
    return _cifar_resnet(110, num_classes, in_channels)


# --- ImageNet-style: 4 stages, widths 64/128/256/512, torchvision names ------------------------

# Inputs at least this large get the ImageNet stem (7×7/2 conv + 3×3/2 pool, ÷4); smaller ones
# keep full resolution in the stem so 28/32 px images are not reduced to a few pixels. 64 px
# (Imagenette-64, downsampled ImageNet photos) takes the ImageNet stem: ResNet-50 then costs
# 0.33 GMACs per image (ends at 2×2) instead of 5.2 GMACs with a stride-1 stem, which is what
# makes an ImageNet-style ResNet-50 at small input trainable on a few CPU cores.
LARGE_STEM_MIN_SIZE = 64


def _imagenet_resnet(
    block: type[BasicBlock | Bottleneck],
    layers: Sequence[int],
    num_classes: int,
    in_channels: int,
    input_size: int,
    widths: Sequence[int] = (64, 128, 256, 512),
) -> ResNet:
    return ResNet(
        block,
        layers,
        widths,
        num_classes,
        in_channels,
        stem_width=widths[0],
        large_stem=input_size >= LARGE_STEM_MIN_SIZE,
    )


@MODELS.register
def resnet18(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]; 11,689,512 parameters at 224 px, 1000 classes)."""
    return _imagenet_resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, input_size)


@MODELS.register
def resnet34(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-34 (BasicBlock [3, 4, 6, 3])."""
    return _imagenet_resnet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, input_size)


@MODELS.register
def resnet50(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-50 (Bottleneck [3, 4, 6, 3]; 25,557,032 parameters at 224 px, 1000 classes)."""
    return _imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, input_size)


@MODELS.register
def resnet101(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-101 (Bottleneck [3, 4, 23, 3])."""
    return _imagenet_resnet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, input_size)


@MODELS.register
def resnet152(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """ResNet-152 (Bottleneck [3, 8, 36, 3])."""
    return _imagenet_resnet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels, input_size)


# --- Tiny variants for fast tests -------------------------------------------------------------


@MODELS.register(hidden=True)  # for tests; not in list_models()
def test_resnet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """Tiny CIFAR-style ResNet: widths 8/16/32, 2 BasicBlocks per stage (4 identity blocks)."""
    return ResNet(BasicBlock, [2, 2, 2], [8, 16, 32], num_classes, in_channels, stem_width=8)


@MODELS.register(hidden=True)  # for tests; not in list_models()
def test_resnet_bottleneck(
    num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> ResNet:
    """Tiny ImageNet-style ResNet: Bottleneck [1, 2, 1, 1], widths 8/16/32/64 (1 identity block)."""
    return _imagenet_resnet(
        Bottleneck, [1, 2, 1, 1], num_classes, in_channels, input_size, widths=(8, 16, 32, 64)
    )
