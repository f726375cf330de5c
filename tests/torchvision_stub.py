"""Test set-up only: make torchvision's *model definitions* importable with the CPU torch.

Why: the torchvision wheel on the package registry is built against CUDA torch. With the CPU build
of torch 2.13.0, ``import torchvision`` fails inside ``torchvision._meta_registrations`` (its
compiled operators, e.g. ``torchvision::nms``, do not exist). ``torchvision.models`` is pure
Python and needs none of them, so registering two empty modules under the names
``torchvision._meta_registrations`` and ``torchvision._autograd_registrations`` before the import
lets the tests build torchvision's ResNet, VGG and MobileNet exactly as users do.

Real users have a working torchvision; leantrain itself never does this (nor needs torchvision).
"""

from __future__ import annotations

import importlib
import sys
import types

_STUBS = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def import_torchvision_models() -> types.ModuleType:
    """``torchvision.models``, with the two registration modules stubbed when they fail."""
    try:
        return importlib.import_module("torchvision.models")
    except Exception:  # the CUDA-built wheel under a CPU torch: stub and retry
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        for name in _STUBS:
            sys.modules[name] = types.ModuleType(name)
        return importlib.import_module("torchvision.models")
