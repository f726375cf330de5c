"""The model zoo: VGG and CIFAR ResNet families and the factory that builds any model by name.

Importing this package registers every architecture in ``MODELS`` (the factory first, then each
family, which registers into it); build one with `create_model`. The sliceable layers the families
are made of belong to `leantrain.structure.layers`.
"""

from .factory import (
    MODELS, ZOOS, Zoo, check_file_reference, create_model, list_models, reference_kind,
)
from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGG

__all__ = [
    "MODELS", "ZOOS", "Zoo", "check_file_reference", "create_model", "list_models",
    "reference_kind", "VGG", "ResNet", "BasicBlock", "Bottleneck",
]
