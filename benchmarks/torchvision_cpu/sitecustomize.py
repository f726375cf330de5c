"""Benchmark set-up for this project's CPU machines only: torchvision's model definitions under
a torch build the torchvision wheel was not made for.

The torchvision wheel on the package registry is built against CUDA torch; with the CPU build of
torch 2.13.0, ``import torchvision`` fails in ``torchvision._meta_registrations`` (its compiled
operators are missing). ``torchvision.models`` is pure Python and needs none of them, so two
empty modules registered under those names make the model definitions usable, exactly as the
tests do (tests/torchvision_stub.py).

Python imports ``sitecustomize`` at start-up from any folder on PYTHONPATH, so
``PYTHONPATH=benchmarks/torchvision_cpu leantrain bench zoo`` applies it to the bench and to every
run it starts. Users with a working torchvision need none of this.
"""

import importlib.util
import sys
import types

if importlib.util.find_spec("torchvision") is not None:
    try:
        import torchvision  # noqa: F401  (a working torchvision: leave it alone)
    except Exception:
        for _name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[_name]
        for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[_name] = types.ModuleType(_name)
