"""Set-up of the project's own environment only: make torchvision's *model definitions*
importable with the CPU torch.

Why: the torchvision wheel on the package registry is built against CUDA torch. With the CPU build
of torch 2.13.0, ``import torchvision`` fails inside ``torchvision._meta_registrations`` (its
compiled operators, e.g. ``torchvision::nms``, do not exist). ``torchvision.models`` is pure
Python and needs none of them, so letting the two registration modules
``torchvision._meta_registrations`` and ``torchvision._autograd_registrations`` fail quietly
lets the tests, the examples and the CLI build torchvision's ResNet, VGG and MobileNet exactly as
users do (Lightning imports torchvision too, through torchmetrics).

Two ways in:

* `install_fallback` registers an import hook that runs each registration module and, only if
  it raises, leaves it empty. ``make test`` installs this file into the project's ``.venv``
  with a ``.pth`` line (``python tests/torchvision_stub.py --install``), so every Python started
  from ``.venv`` has it: ``python examples/lightning_example.py`` runs as it is.
* `import_torchvision_models` does the same for one process (the tests' conftest, for a
  checkout whose environment was made another way).

Real users have a working torchvision; leantrain itself never does this (nor needs torchvision).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

_STUBS = ("torchvision._meta_registrations", "torchvision._autograd_registrations")
_MODULE = "_leantrain_torchvision_stub"


class _RunOrLeaveEmpty(importlib.abc.Loader):
    """Runs the real registration module; if it raises, the module stays (partly) empty."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        try:
            self.real.exec_module(module)
        except Exception:  # the CUDA-built wheel under a CPU torch: its operators do not exist
            pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _STUBS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RunOrLeaveEmpty(spec.loader)
        return spec


def install_fallback() -> None:
    """Let torchvision's two registration modules fail quietly in this process (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


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


def install_into_environment() -> Path:
    """Copy this file into the running Python's site-packages with a ``.pth`` line that calls
    `install_fallback` at start-up. Returns the ``.pth`` file."""
    import shutil
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    shutil.copyfile(__file__, site / f"{_MODULE}.py")
    pth = site / f"{_MODULE}.pth"
    pth.write_text(f"import {_MODULE}; {_MODULE}.install_fallback()\n")
    return pth


if __name__ == "__main__":
    if sys.argv[1:] != ["--install"]:
        sys.exit("usage: python tests/torchvision_stub.py --install")
    print(f"torchvision's registration modules may fail quietly in {install_into_environment()}")
