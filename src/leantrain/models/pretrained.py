"""Start a run from weights (fine-tuning): `load_init` fills a freshly built model from a file.

The file may be a leantrain model file (`leantrain.save_model`; its checksum is verified), any
safetensors file, or a PyTorch state-dict file (``.pt``, ``.pth``, ``.bin``) such as the ImageNet
weights torchvision caches under ``~/.cache/torch/hub/checkpoints``. Those are read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only: a pickle
that asks for anything else (code) is refused, never run.

Layers whose shapes differ from the file's (a classifier for another number of classes) keep the
model's fresh initialisation and are listed in one warning; names that one side has and the other
lacks are an error naming them, unless the user lists them to skip (`init_skip`, glob patterns).
The parameters not loaded are the run's new head (`InitReport.new_parameters`), which
``train.head_lr_mult`` trains at its own learning rate.
"""

from __future__ import annotations

import fnmatch
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .files import ModelFileError, read_weights

__all__ = ["InitError", "InitReport", "InitWarning", "load_init", "read_state_file"]

# More mismatched tensors than this share means the file is for another architecture, not a
# model with a new head: a torchvision ResNet-18 with a new classifier re-initialises 2 of 102.
_MAX_REINIT_SHARE = 0.25
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights")


class InitError(ValueError):
    """An init file that cannot start this model: unreadable, unsafe, or for another model."""


class InitWarning(UserWarning):
    """Layers re-initialised because their shapes differ from the init file's."""


@dataclass(frozen=True)
class InitReport:
    """What `load_init` did: names loaded from the file, re-initialised, and skipped."""

    path: str
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # the shape differs from the file's: fresh initialisation
    skipped: tuple[str, ...]  # matched `init_skip`: fresh initialisation

    def new_parameters(self, model: nn.Module) -> set[str]:
        """Names of `model`'s parameters that did not come from the file: the new head."""
        fresh = set(self.reinitialised) | set(self.skipped)
        return {name for name, _ in model.named_parameters() if name in fresh}


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an init file (see the module docstring), on the CPU, by name."""
    path = Path(path)
    if not path.is_file():
        raise InitError(f"init file {path} does not exist; check the path given to --init.")
    if path.suffix == ".safetensors":
        try:
            state, desc = read_weights(path)
        except ModelFileError as e:
            raise InitError(str(e)) from None
        if desc is not None and (desc.get("surgery") or desc.get("dropped_units")):
            cuts = len(desc.get("surgery") or desc.get("dropped_units"))
            raise InitError(
                f"init file {path} holds a model that training cut ({cuts} cuts), whose layers no "
                "longer match a freshly built one; start from the uncut model's file, or continue "
                "the cut model itself with leantrain.load_model() in your own loop."
            )
        return state
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InitError(
            f"init file {path} holds pickled objects other than tensors, which leantrain does not "
            f"unpickle because that could run code ({str(e).splitlines()[0][:120]}); save a "
            "state dict instead: torch.save(model.state_dict(), path)."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise InitError(
            f"init file {path} is not a readable PyTorch or safetensors file "
            f"({(str(e).splitlines() or [type(e).__name__])[0][:160]}); pass a state dict saved "
            "with torch.save(model.state_dict(), path) or a leantrain model file."
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint's usual wrappers, without DDP's prefix."""
    for _ in range(3):  # {"state_dict": ...}, {"model": {"state_dict": ...}} and the like
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise InitError(f"init file {path} holds a {type(obj).__name__}, not a state dict of "
                        "tensors; save one with torch.save(model.state_dict(), path).")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InitError(f"init file {path} holds no tensors; save the weights with "
                        "torch.save(model.state_dict(), path).")
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _listing(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_init(model: nn.Module, path: str | Path, skip: Sequence[str] = ()) -> InitReport:
    """Fill `model` (freshly built) with the weights in `path`; see the module docstring.

    Raises:
        InitError: an unreadable or unsafe file, names only one side has (not skipped), or a
            file for another architecture.
    """
    state = read_state_file(path)
    own = model.state_dict()

    def skipped(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)

    # BN's batch counter is bookkeeping that older files lack; its absence changes nothing.
    missing = [k for k in own if k not in state and not skipped(k)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not skipped(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"the model has {len(missing)} tensors the file lacks "
                         f"({_listing(missing)})")
        if unexpected:
            parts.append(f"the file has {len(unexpected)} the model lacks "
                         f"({_listing(unexpected)})")
        raise InitError(
            f"init file {path} does not fit this model: {' and '.join(parts)}; check that "
            "--model names the architecture the file was saved from, or leave those tensors "
            "as initialised with --init-skip PATTERN (e.g. --init-skip 'fc.*')."
        )
    reinit = [k for k in own if k in state and not skipped(k) and state[k].shape != own[k].shape]
    if len(reinit) > _MAX_REINIT_SHARE * len(own):
        raise InitError(
            f"init file {path}: {len(reinit)} of {len(own)} tensors have other shapes than this "
            f"model's ({_listing(reinit)}), so it was saved from another architecture or "
            "width; check --model and its arguments."
        )
    load = OrderedDict((k, state[k].to(own[k].dtype)) for k in own
                       if k in state and not skipped(k) and k not in reinit)
    load._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(load, strict=False)
    if reinit:
        shapes = [f"{k} {list(own[k].shape)} vs the file's {list(state[k].shape)}"
                  for k in reinit]
        warnings.warn(
            f"--init {path}: re-initialised {len(reinit)} tensor(s) whose shapes differ from the "
            f"file's ({_listing(shapes)}); they train from scratch.", InitWarning, stacklevel=2)
    return InitReport(str(path), tuple(load), tuple(reinit),
                      tuple(k for k in own if skipped(k)))
