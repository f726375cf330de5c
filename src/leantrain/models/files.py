"""Save and load (possibly scaled-down) models without pickling: safetensors + architecture JSON.

The architecture is the registry name and constructor arguments, the units Learn&Drop dropped (in
order) and the live width of every prunable channel set. Loading rebuilds that architecture from
the registry and loads the weights, so no code is ever unpickled from a file.

Opening a file runs no code of the file's choosing: the name it stores may be a leantrain model or
a zoo model (``torchvision:NAME``, arguments checked); a ``package.module:factory`` is imported
and called only when the user names that same factory (``load_model(path, factory=...)``,
``--model`` on the command line). The header carries a sha256 of every byte of the file but its
own digits (`CHECKSUM`), which loading verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ..atomic import write_atomic
from ..structure import channel_sets_of, example_shape, set_example_input
from ..structure.record import arch_of, cut_history, dropped_units, external_surgery
from ..structure.surgery import CutLogError, check_cut_log, replay_cuts
from .factory import check_file_reference, create_model, reference_kind

__all__ = [
    "architecture",
    "apply_architecture",
    "build_architecture",
    "save_model",
    "save_weights",
    "load_model",
    "read_model_metadata",
    "read_weights",
    "load_state",
    "ModelFileError",
]

FORMAT = "leantrain-model/1"
CHECKSUM = "leantrain_sha256"  # metadata key of the file's sha256 (see `_canonical`)
_BLANK = "0" * 64  # the checksum's place while the checksum is computed


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupt or not a leantrain model."""


def architecture(model: nn.Module) -> dict[str, Any]:
    """JSON-serialisable description from which `build_architecture` rebuilds the model's shape.

    Keys: ``format``; ``arch`` (registry name and constructor arguments); ``dropped_units`` (in
    order); ``widths`` (the width of every channel set the cuts narrowed; the others keep the
    width ``arch`` builds); ``surgery``, every cut in order (``{"op": "drop", "name", "kind"}``
    or ``{"op": "prune", "keep": {set: kept indices}}``).

    Read from the model's record alone: describing (and so saving) a model never traces it.
    """
    if reason := external_surgery(model):
        raise TypeError(f"this model's architecture cannot be described ({reason}); save its weights only.")
    history = cut_history(model)
    return {
        "format": FORMAT,
        "arch": dict(arch_of(model) or _unnamed_arch(model)),
        "dropped_units": dropped_units(model),
        "widths": _narrowed_widths(history),
        "surgery": history,
    }


def _narrowed_widths(history: list[dict[str, Any]]) -> dict[str, int]:
    """Each pruned channel set's width after the last cut that narrowed it."""
    widths: dict[str, int] = {}
    for entry in history:
        if entry["op"] == "prune":
            widths.update({name: len(kept) for name, kept in entry["keep"].items()})
    return widths


def _unnamed_arch(model: nn.Module) -> dict[str, Any]:
    """A model built without a name (a user's instance): its class and input shape, for checks;
    it is rebuilt from a fresh instance the caller gives (`load_model(path, model=...)`)."""
    shape = example_shape(model)
    return {"name": None, "class": type(model).__qualname__,
            "input_shape": None if shape is None else list(shape)}


def apply_architecture(model: nn.Module, desc: dict[str, Any]) -> None:
    """Cut `model`, fresh from `create_model` with the same ``arch``, to the described shape.

    In place, so a caller's model object (already on its device) can be resumed. The weights of
    the cut model are meaningless until a state dict is loaded. A model that already has the
    described shape is left as it is.

    Raises:
        ModelFileError: the description is not a leantrain architecture, was written for another
            model, or cannot be replayed on this one.
    """
    _check_format(desc)
    _check_cuts(desc)
    saved = desc.get("arch") if isinstance(desc.get("arch"), dict) else {}
    if saved.get("name") is None and arch_of(model) is None:  # a fresh instance of a user's class
        if saved.get("class") != type(model).__qualname__:
            raise ModelFileError(
                f"the file holds a {saved.get('class')}, but the model given is a "
                f"{type(model).__qualname__}; pass a fresh instance of the saved class."
            )
        if example_shape(model) is None and saved.get("input_shape"):
            shape = saved["input_shape"]
            if not isinstance(shape, list) or not shape or not all(
                type(d) is int and d >= 1 for d in shape
            ):
                raise ModelFileError(
                    f"the saved input shape {saved['input_shape']!r} is not a list of positive "
                    "sizes; the file is corrupt."
                )
            set_example_input(model, saved["input_shape"])
        arch = saved
    else:
        arch = dict(arch_of(model) or {})
    if arch != desc.get("arch"):
        raise ModelFileError(
            f"the saved architecture is {desc.get('arch')}, but the model given is "
            f"{arch or 'not from create_model()'}; build the model with the same name, classes, "
            "channels and input size."
        )
    current = architecture(model)
    if all(current[k] == desc.get(k, current[k]) for k in ("dropped_units", "surgery")):
        return  # already cut this way (a resume into the live model)
    if current["surgery"] or current["dropped_units"]:
        raise ValueError("apply_architecture() needs a freshly created, uncut model.")
    try:
        replay_cuts(model, desc["surgery"])
    # IndexError and RuntimeError too: torch's own errors for cuts `_check_cuts` let through.
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise ModelFileError(
            f"the saved architecture cannot be rebuilt ({str(e).strip()[:300]}); the file is "
            "corrupt or from another version."
        ) from e
    # The one check that reads the live network (so loading may trace; saving never does): the
    # widths the file states must be those its cuts made.
    live = {s.name: len(s) for s in channel_sets_of(model)}
    # A set that a later drop took out of the network (a pruned conv inside a dropped block)
    # has no live width left to compare.
    if any(name in live and live[name] != width for name, width in desc["widths"].items()):
        raise ModelFileError(
            "the saved architecture is inconsistent (its channel widths do not match its cuts); "
            "the file is corrupt."
        )


def _check_format(desc: Any) -> None:
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        got = desc.get("format") if isinstance(desc, dict) else type(desc).__name__
        raise ModelFileError(f"not a leantrain architecture (format {got!r}, expected {FORMAT!r}).")


def _check_cuts(desc: dict[str, Any]) -> None:
    """Raise ModelFileError unless the description's widths and cut history are well-formed
    (`leantrain.structure.surgery.check_cut_log`), before any cut is made."""
    widths = desc.get("widths")
    if not isinstance(widths, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 1 for k, v in widths.items()
    ):
        _bad_cut("widths", f"{widths!r:.100} is not a table of channel-set names and widths ≥ 1")
    if "surgery" not in desc:  # written before the cut history existed (we are before 1.0)
        raise ModelFileError(
            "the model file has no cut history (\"surgery\"), so it was written by a leantrain "
            "older than its format; re-export it with this version."
        )
    try:
        check_cut_log(desc["surgery"])
    except CutLogError as e:
        raise ModelFileError(
            f"the saved architecture's {e}; the file is corrupt or was not written by leantrain."
        ) from None


def _bad_cut(where: str, problem: str) -> None:
    raise ModelFileError(
        f"the saved architecture's {where} is malformed ({problem}); the file is corrupt or was "
        "not written by leantrain."
    )


def build_architecture(desc: dict[str, Any], *, factory: str | None = None) -> nn.Module:
    """A freshly initialised model with the described architecture (drops and widths applied).

    Args:
        desc: an `architecture` record, e.g. read from a file by `read_model_metadata`.
        factory: the ``package.module:factory`` the user trusts; a record naming a factory is
            built only when it names this one (see `check_file_reference`).

    Raises:
        ModelFileError: a record that is malformed, names code it may not run, or cannot be built.
    """
    _check_format(desc)
    if isinstance(desc.get("arch"), dict) and desc["arch"].get("name", "") is None:
        raise ModelFileError(
            f"the file holds a {desc['arch'].get('class')} that was not built by name, so it "
            "cannot be rebuilt alone; pass a fresh instance: load_model(path, model=YourModel())."
        )
    if not isinstance(desc.get("arch"), dict) or not isinstance(desc["arch"].get("name"), str):
        raise ModelFileError(
            f"the saved architecture {desc.get('arch')!r:.200} is not a table of a model name and "
            "its arguments; the file is corrupt or was not written by leantrain."
        )
    _check_cuts(desc)  # before building: a malformed file costs no model
    arch = dict(desc["arch"])
    _check_reference(arch, factory)
    try:
        model = create_model(arch.pop("name"), **arch)
    except (KeyError, TypeError) as e:
        raise ModelFileError(
            f"the saved architecture {desc.get('arch')!r:.200} is incomplete ({e}); the file is "
            "corrupt."
        ) from e
    except ValueError as e:
        raise ModelFileError(f"the saved model cannot be built: {e}") from e
    apply_architecture(model, desc)
    return model


def _check_reference(arch: dict[str, Any], factory: str | None) -> None:
    """Raise ModelFileError unless building ``arch`` runs only code the user chose.

    A ``package.module:factory`` stored in a file is an import and a call with the file's
    arguments (``os:system`` with a command): it is run only when the user named it.
    """
    name, kwargs = arch["name"], arch.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ModelFileError(
            f"the saved model arguments {kwargs!r:.100} are not a table; the file is corrupt."
        )
    if reference_kind(name) == "factory":
        if factory == name:
            return
        if factory is None:
            raise ModelFileError(
                f"the model file asks to build its model by calling {name}, code that a file may "
                f"not choose to run; if you trust {name}, allow it with --model {name} (command "
                f"line) or load_model(path, factory={name!r})."
            )
    if factory is not None and factory != name:
        raise ModelFileError(
            f"the model file holds {name}, not {factory}; leave out --model (factory=) or name "
            "the model the file holds."
        )
    try:
        check_file_reference(name, kwargs)
    except ValueError as e:
        raise ModelFileError(
            f"the model file asks for a model it may not ({str(e).rstrip('.')}); the file is "
            "corrupt or was not written by leantrain."
        ) from e


def _field(digest: str) -> bytes:
    """The checksum's bytes in the header JSON: ``"leantrain_sha256":"<hex>"``."""
    return json.dumps({CHECKSUM: digest}, separators=(",", ":"))[1:-1].encode()


def _digest(header: bytes, body: memoryview | bytes) -> str:
    """sha256 of a header (checksum blanked) and the tensor bytes after it."""
    h = hashlib.sha256(header)
    h.update(body)
    return h.hexdigest()


def _canonical(data: bytes) -> bytes:
    """`data` (a safetensors file) with its metadata in sorted key order and its checksum.

    safetensors keeps the metadata in a hash map, so the same model saved twice (in two
    processes) gets its header keys in a different order; sorting makes identical models give
    byte-identical files (and equal checksums). The checksum (`CHECKSUM`) covers every byte of
    the file but its own 64 hex digits: the header, tensor names, shapes and offsets included,
    so a flipped byte anywhere is caught.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = {**header.get("__metadata__", {}), CHECKSUM: _BLANK}
    header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    body = memoryview(data)[8 + n :]
    text = text.replace(_field(_BLANK), _field(_digest(text, body)))
    return len(text).to_bytes(8, "little") + text + bytes(body)


def _verify(data: bytes, meta: dict[str, str], path: Path) -> None:
    """Raise ModelFileError unless `data` (the whole file) matches its checksum."""
    digest = meta.get(CHECKSUM)
    if digest is None:
        raise ModelFileError(
            f"model file {path} has no weights checksum, so it was written by an older leantrain; "
            "re-save it with this version."
        )
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n]
    field = _field(str(digest))
    if header.count(field) != 1 or _digest(
        header.replace(field, _field(_BLANK)), memoryview(data)[8 + n :]
    ) != digest:
        raise ModelFileError(
            f"model file {path}: the weights do not match their checksum; the file is corrupt, "
            "re-export it."
        )


def _save_tensors(path: Path, model: nn.Module, meta: dict[str, str]) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_atomic(path, _canonical(save_safetensors(tensors, metadata=meta)))


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors) with the architecture JSON in the file's metadata, atomically."""
    meta = {"leantrain_arch": json.dumps(architecture(model))}
    if metadata:
        meta["leantrain_meta"] = json.dumps(metadata)
    return _save_tensors(Path(path), model, meta)


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the weights alone (safetensors, atomically), for models `architecture` cannot describe.

    `load_model` refuses such a file (no architecture); load it into a model of the same shape
    with ``model.load_state_dict(safetensors.torch.load_file(path))``.
    """
    return _save_tensors(Path(path), model, {"leantrain_meta": json.dumps(metadata or {})})


def _corrupt(path: Path, e: BaseException) -> ModelFileError:
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ModelFileError(f"model file {path} is truncated or corrupt ({detail}); re-export it.")


def _file_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of the file at `path` (its header alone is read)."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; check the path.")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from e


def _arch_record(meta: dict[str, str], path: Path) -> dict[str, Any]:
    if "leantrain_arch" not in meta:
        raise ModelFileError(f"{path} is a safetensors file without a leantrain architecture; save it with leantrain.save_model().")
    try:
        return json.loads(meta["leantrain_arch"])
    # ValueError: also an integer of more digits than Python converts; RecursionError: nesting.
    except (ValueError, RecursionError) as e:
        raise ModelFileError(
            f"model file {path} has a corrupt architecture record ({str(e)[:200]}); re-export it."
        ) from e


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The architecture JSON stored in a leantrain safetensors file (only read, never built)."""
    path = Path(path)
    return _arch_record(_file_metadata(path), path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors of a safetensors file and its leantrain architecture record (None for a
    plain safetensors file, e.g. one written by ``safetensors.torch.save_file``). A leantrain
    file's checksum is verified; nothing is built and no code runs."""
    path = Path(path)
    meta = _file_metadata(path)
    desc = _arch_record(meta, path) if "leantrain_arch" in meta else None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _corrupt(path, e) from e
    if desc is not None:
        _verify(data, meta, path)
    try:
        return dict(load_safetensors(data)), desc
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from e


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)`` for a state read from safetensors.

    safetensors keeps no per-module versions (``state_dict()._metadata``); some modules read
    theirs while loading (torchvision's MNASNet refuses a missing one), so the state gets the
    model's own: the file was written from modules of this kind.
    """
    state = OrderedDict(state)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    *,
    factory: str | None = None,
) -> nn.Module:
    """Rebuild the saved architecture and load its weights (no unpickling, no code of the
    file's choosing).

    Args:
        path: a file written by `save_model`.
        device: where the weights go.
        model: a fresh instance to cut and fill, for a model that was not built by name (a
            user's own class instance); models built by name are rebuilt without it.
        factory: the ``package.module:factory`` the file was built by, when you trust it: a file
            that names a factory is refused unless it is this one.

    Raises:
        ModelFileError: a missing, corrupt or foreign file, weights that fail their checksum, or
            a factory not named by `factory`.
    """
    path = Path(path)
    if model is not None and factory is not None:
        raise ValueError("give load_model() either model= or factory=, not both.")
    meta = _file_metadata(path)
    desc = _arch_record(meta, path)
    if model is None:
        model = build_architecture(desc, factory=factory)
    else:
        apply_architecture(model, desc)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _corrupt(path, e) from e
    _verify(data, meta, path)
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from e
    try:
        load_state(model, state)
    except RuntimeError as e:
        raise ModelFileError(f"weights in {path} do not match its architecture ({str(e)[:200]}).") from e
    return model.to(device)
