"""Model families (VGG, ResNet) that describe their own removable structure.

Importing this package registers every architecture in `leantrain.registry.MODELS`; build one
with `leantrain.registry.create_model`.
"""

from .layers import ConvBN, SelectLinear
from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGG

__all__ = ["ConvBN", "SelectLinear", "VGG", "ResNet", "BasicBlock", "Bottleneck"]
