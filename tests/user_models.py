"""Hand-written models that are not in leantrain's registry, as a user would bring them.

Each is built by a plain factory function, so the CLI can name it as ``user_models:plain_cnn``
(this folder on PYTHONPATH) and saved models can be rebuilt by that reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PlainCNN(nn.Module):
    """No residuals: conv-BN-ReLU layers with equal-width pairs, flattened with ``view``."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.head(x.view(x.size(0), -1))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016, identity mappings): ``x + conv(relu(bn(...)))``."""

    def __init__(self, channels: int, stride: int = 1, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or out_channels != channels:
            self.shortcut = nn.Conv2d(channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """A small pre-activation ResNet: 2 stages of 2 blocks, another block layout than ours."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stage1 = nn.Sequential(PreActBlock(16), PreActBlock(16))
        self.stage2 = nn.Sequential(PreActBlock(16, 2, 32), PreActBlock(32))
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.stage1(self.conv(x)))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MixBlock(nn.Module):
    """Two branches concatenated, then a channel shuffle: parts discovery must refuse."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.a = nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), nn.BatchNorm2d(half),
                               nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(channels, half, 3, padding=1, bias=False),
                               nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # shuffle


class ConcatNet(nn.Module):
    """A prunable stem and head around a concat + channel-shuffle block (refused, reported)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.mix = MixBlock(16)
        self.conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mix(self.stem(x))
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class GroupedBlock(nn.Module):
    """ResNeXt-style bottleneck: 1×1 reduce, grouped 3×3, 1×1 expand, identity shortcut."""

    def __init__(self, channels: int, inner: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + x)


class GroupedNet(nn.Module):
    """Grouped convolutions: Learn&Drop drops the blocks, DCP must refuse the grouped layers."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(GroupedBlock(32, 16, 4), GroupedBlock(32, 16, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def plain_cnn(num_classes: int = 10, width: int = 16) -> PlainCNN:
    return PlainCNN(num_classes, width)


def preact_resnet(num_classes: int = 10) -> PreActResNet:
    return PreActResNet(num_classes)


def concat_net(num_classes: int = 10) -> ConcatNet:
    return ConcatNet(num_classes)


def grouped_net(num_classes: int = 10) -> GroupedNet:
    return GroupedNet(num_classes)


# Misuse (tests/test_misuse_cli.py): factories that ignore what leantrain asks of them.


def ignores_num_classes(num_classes: int = 10) -> PlainCNN:
    """Always 100 outputs, whatever `num_classes` asks for."""
    return PlainCNN(100, width=8)


def five_classes() -> PlainCNN:
    """5 outputs, and no `num_classes` argument at all."""
    return PlainCNN(5, width=8)


class _WithFeatures(PlainCNN):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return super().forward(x), x


def returns_tuple(num_classes: int = 10) -> PlainCNN:
    """Returns ``(logits, input)``, not the logits."""
    return _WithFeatures(num_classes, width=8)


def all_frozen(num_classes: int = 10) -> PlainCNN:
    """Every parameter frozen: nothing to train."""
    model = PlainCNN(num_classes, width=8)
    model.requires_grad_(False)
    return model


class _Fixed32(nn.Module):
    """Written for 32 px inputs: its classifier takes a hard-coded 8 × 16 × 16 features."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.max_pool2d(self.conv(x), 2).flatten(1))


def fixed_32px(num_classes: int = 10) -> _Fixed32:
    """Runs on 32 px RGB images only."""
    return _Fixed32(num_classes)
