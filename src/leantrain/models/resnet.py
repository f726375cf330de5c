"""ResNets: CIFAR-style (He et al. 2016, §4.2) and ImageNet-style (torchvision layout, v1.5).

Every conv+BN is a `ConvBN` and the classifier a `SelectLinear`, so channel pruning can compute
only the selected channels. Shortcuts that change shape are 1×1 conv+BN projections (option B),
which the golden counts assume (CIFAR ResNet-56: 855,770 parameters, 125,747,850 MACs at 32 px).

The model implements the `leantrain.structure.Prunable` protocol:
  * droppable units: blocks with an identity shortcut (optionally also downsampling blocks, which
    are then replaced by their projection shortcut followed by ReLU);
  * prunable channels: the inner widths of a block (BasicBlock conv1; Bottleneck conv1 and conv2),
    never the residual path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Module import, not `from ..structure import Unit`: structure imports models.layers, which runs
# this package's __init__ first, so the names may not exist yet while structure is loading.
from .. import structure
from ..registry import MODELS
from .layers import ConvBN, SelectLinear, init_weights

if TYPE_CHECKING:
    from ..structure import ChannelSet, Unit

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
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


def _init_depth_gate(block: nn.Module) -> None:
    """Stochastic-depth state of a block (Huang et al. 2016, arXiv 1603.09382).

    ``skip``: in training mode, the residual branch is not computed for this step (the block is
    its identity shortcut; only set on identity-shortcut blocks). ``residual_scale``: in eval mode
    the residual branch is multiplied by it (the survival probability p_l, its expected value in
    training). Both are plain attributes, not state: defaults leave the block unchanged.
    """
    block.skip = False
    block.residual_scale = 1.0


def _scaled(block: nn.Module, residual: Tensor) -> Tensor:
    if block.residual_scale != 1.0 and not block.training:
        return residual * block.residual_scale
    return residual


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers with a shortcut: ``relu(conv2(conv1(x)) + shortcut(x))``.

    Args:
        in_channels: block input width.
        width: width of both convs (the output width, expansion 1).
        stride: stride of the first conv (and of the projection).
    """

    expansion = 1
    skip: bool  # stochastic depth, see _init_depth_gate
    residual_scale: float

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, width, 3, stride, act=True)
        self.conv2 = ConvBN(width, width, 3, 1, act=False)
        self.downsample = _projection(in_channels, width, stride)
        _init_depth_gate(self)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.skip and self.training:
            return shortcut  # = relu(0 + x): x is post-ReLU already (identity blocks only)
        return F.relu(_scaled(self, self.conv2(self.conv1(x))) + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride, torchvision v1.5) → 1×1 expand ×4, plus shortcut.

    Args:
        in_channels: block input width.
        width: inner width; the output width is ``4 * width``.
        stride: stride of the 3×3 conv (and of the projection).
    """

    expansion = 4
    skip: bool  # stochastic depth, see _init_depth_gate
    residual_scale: float

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvBN(in_channels, width, 1, 1, act=True)
        self.conv2 = ConvBN(width, width, 3, stride, act=True)
        self.conv3 = ConvBN(width, out_channels, 1, 1, act=False)
        self.downsample = _projection(in_channels, out_channels, stride)
        _init_depth_gate(self)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.skip and self.training:
            return shortcut  # = relu(0 + x): x is post-ReLU already (identity blocks only)
        return F.relu(_scaled(self, self.conv3(self.conv2(self.conv1(x)))) + shortcut)


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
        self.fc = SelectLinear(channels, num_classes)
        init_weights(self)

    def stages(self) -> list[tuple[str, nn.Sequential]]:
        """The residual stages as ``(name, module)`` pairs, in order."""
        return [(f"layer{s + 1}", getattr(self, f"layer{s + 1}")) for s in range(self.num_stages)]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        for _, stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _live_blocks(self) -> list[tuple[str, str, BasicBlock | Bottleneck]]:
        # Dropped blocks are nn.Identity (or a projection replacement) now; skip them.
        return [
            (f"{stage_name}.{i}", stage_name, m)
            for stage_name, stage in self.stages()
            for i, m in enumerate(stage)
            if isinstance(m, (BasicBlock, Bottleneck))
        ]

    def droppable_units(self, include_downsampling: bool = False) -> list[Unit]:
        """Live blocks with an identity shortcut, plus downsampling blocks on request.

        Dropping an identity block is exact when its residual branch is zero, since its input is
        already post-ReLU. A downsampling block with a zero residual branch computes
        ``relu(downsample(x))``, so that is its replacement (sharing the same projection module,
        so its trained parameters carry over).

        Args:
            include_downsampling: also list blocks with a projection shortcut (kind
                ``"projection"``).

        Returns:
            Units named like ``"layer2.3"`` with stage ``"layer2"``.
        """
        units = []
        for name, stage_name, block in self._live_blocks():
            if block.downsample is None:
                units.append(
                    structure.Unit(
                        name=name, stage=stage_name, module=block, replacement=nn.Identity()
                    )
                )
            elif include_downsampling:
                units.append(
                    structure.Unit(
                        name=name,
                        stage=stage_name,
                        module=block,
                        replacement=nn.Sequential(block.downsample, nn.ReLU()),
                        kind="projection",
                    )
                )
        return units

    def channel_sets(self) -> list[ChannelSet]:
        """Inner block widths: BasicBlock conv1; Bottleneck conv1 and conv2.

        The outputs of the stem, of a block's last conv and of the projections all feed the
        residual sum, whose width must stay equal across the stage, so they are never listed.
        """
        sets = []
        for name, _, block in self._live_blocks():
            sets.append(
                structure.ChannelSet(f"{name}.conv1", producer=block.conv1, consumers=(block.conv2,))
            )
            if isinstance(block, Bottleneck):
                sets.append(
                    structure.ChannelSet(
                        f"{name}.conv2", producer=block.conv2, consumers=(block.conv3,)
                    )
                )
        return sets


# --- CIFAR-style: 3 stages of n = (depth - 2) / 6 BasicBlocks, widths 16/32/64 -----------------


def _cifar_resnet(depth: int, num_classes: int, in_channels: int) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [16, 32, 64], num_classes, in_channels, stem_width=16)


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


@MODELS.register
def test_resnet(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> ResNet:
    """Tiny CIFAR-style ResNet: widths 8/16/32, 2 BasicBlocks per stage (4 identity blocks)."""
    return ResNet(BasicBlock, [2, 2, 2], [8, 16, 32], num_classes, in_channels, stem_width=8)


@MODELS.register
def test_resnet_bottleneck(
    num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> ResNet:
    """Tiny ImageNet-style ResNet: Bottleneck [1, 2, 1, 1], widths 8/16/32/64 (1 identity block)."""
    return _imagenet_resnet(
        Bottleneck, [1, 2, 1, 1], num_classes, in_channels, input_size, widths=(8, 16, 32, 64)
    )
