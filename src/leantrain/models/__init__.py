"""Model families (VGG, ResNet): plain modules whose removable structure discovery finds.

Importing this package registers every architecture in `leantrain.registry.MODELS`; build one
with `leantrain.registry.create_model`.
"""

from .layers import ConvBN, SelectLinear, SliceBatchNorm2d, SliceConv2d
from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGG

__all__ = ["ConvBN", "SelectLinear", "SliceConv2d", "SliceBatchNorm2d", "VGG", "ResNet", "BasicBlock", "Bottleneck"]
