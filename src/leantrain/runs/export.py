"""Export a trained model (safetensors, a ``torch.export`` program, ONNX) and evaluate model files.

The model exported is a run's final ``model.safetensors``: Learn&Drop's dropped units and DCP's
pruned channels are already gone from it, so every format holds the compact network. After
writing, the file is read back and its outputs are compared with the in-memory model's on a
random batch; a mismatch is an error and the bad file is removed.

`evaluate_model_file` reads leantrain ``.safetensors`` model files only: they are rebuilt from
their architecture JSON and never unpickled, and a file that names a ``package.module:factory``
is built only when the caller names that factory (``factory=``, the CLI's ``--model``). ``.pt2``
files are loaded by unpickling (``torch.export.load``), so they are only read back right after
this module wrote them.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.files import ModelFileError, load_model, save_model
from ..structure import example_shape
from ..structure.record import arch_of
from ..training.checkpoint import has_checkpoint

__all__ = [
    "FORMATS",
    "ONNX_MISSING",
    "ExportError",
    "ExportReport",
    "evaluate_model_file",
    "export_model",
    "resolve_model_file",
]

FORMATS = ("safetensors", "pt2", "onnx")
ONNX_MISSING = "ONNX export needs the onnx and onnxscript packages: pip install 'leantrain[onnx]'."
_SUFFIX = {"safetensors": "-export.safetensors", "pt2": ".pt2", "onnx": ".onnx"}


class ExportError(ValueError):
    """An export could not be written or does not reproduce the model's outputs."""


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and how closely the file reproduces the model.

    Attributes:
        path: the written file.
        format: ``"safetensors"``, ``"pt2"`` or ``"onnx"``.
        max_abs_diff: largest absolute output difference on the check batch (None: not run).
        note: anything the user should know (e.g. a fixed batch size, a skipped check).
    """

    path: Path
    format: str
    max_abs_diff: float | None
    note: str = ""


def resolve_model_file(source: str | Path) -> Path:
    """The model file of a run folder (its ``model.safetensors``) or the file itself.

    Raises:
        ModelFileError: nothing there, or a run folder that has not finished.
    """
    path = Path(source)
    if path.is_dir():
        model_file = path / "model.safetensors"
        if model_file.is_file():
            return model_file
        if has_checkpoint(path):
            raise ModelFileError(
                f"run folder {path} has no model.safetensors because the run has not finished; "
                "finish it with `leantrain train ... --resume` first."
            )
        raise ModelFileError(
            f"{path} holds no model.safetensors; pass a run folder or a model file."
        )
    if not path.is_file():
        raise ModelFileError(
            f"{path} does not exist; pass a run folder or a .safetensors model file."
        )
    return path


def _example(model: nn.Module, batch_size: int, seed: int) -> torch.Tensor:
    """A seeded random batch of the model's per-sample input shape (`example_shape`)."""
    shape = example_shape(model)
    if shape is None:
        raise ValueError("the model records no input shape; save it from a model built by "
                         "create_model() or prepared with an example input.")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *shape, generator=g)


def _export_program(
    model: nn.Module, example: torch.Tensor
) -> tuple[torch.export.ExportedProgram, str]:
    """``torch.export`` with a dynamic batch size, or a fixed one if tracing cannot keep it."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), ""
    except Exception:  # noqa: BLE001 - any tracing failure: fall back to the static shape
        program = torch.export.export(model, (example,))
        return program, f"the program takes batches of exactly {len(example)} images"


def _write_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> tuple[float | None, str]:
    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript")):
        raise ExportError(ONNX_MISSING)
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    # Its notes (e.g. "torchvision is not installed") are noise for a user exporting a CNN.
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model, (example,), str(out), dynamo=True, input_names=["images"],
                output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    onnx.checker.check_model(str(out))
    if importlib.util.find_spec("onnxruntime") is None:
        return None, (
            "onnxruntime is not installed, so outputs were not compared (pip install onnxruntime)"
        )
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = model(example)
    return float((torch.from_numpy(got) - want).abs().max()), ""


def export_model(
    source: str | Path,
    fmt: str = "safetensors",
    out: str | Path | None = None,
    *,
    batch_size: int = 4,
    seed: int = 0,
    factory: str | None = None,
) -> ExportReport:
    """Write the compact final model of a run folder or model file in `fmt` and verify it.

    Args:
        source: a run folder or a leantrain ``.safetensors`` model file.
        fmt: ``"safetensors"``, ``"pt2"`` (``torch.export``) or ``"onnx"`` (needs the ``onnx``
            and ``onnxscript`` packages; outputs are compared when ``onnxruntime`` is there).
        out: the file to write; default next to the model file (``model.pt2``, ``model.onnx``,
            ``model-export.safetensors``).
        batch_size: images in the random check batch.
        seed: seeds the check batch.
        factory: the ``package.module:factory`` the model was built by, when you trust it
            (see `leantrain.models.files.load_model`).

    Raises:
        ExportError: unknown format, missing ONNX packages, or outputs that do not match.
        ModelFileError: the source is missing, corrupt or not a leantrain model.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    model_file = resolve_model_file(source)
    model = load_model(model_file, factory=factory).eval()
    stem = model_file.name.removesuffix(".safetensors")
    out = Path(out) if out is not None else model_file.with_name(stem + _SUFFIX[fmt])
    if out.resolve() == model_file.resolve():
        raise ExportError(f"--out {out} is the model file itself; choose another output path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _example(model, batch_size, seed)
    with torch.no_grad():
        want = model(example)
    note = ""
    try:
        if fmt == "safetensors":
            save_model(model, out, metadata={"exported_from": str(model_file)})
            with torch.no_grad():
                reread = load_model(out, factory=factory).eval()
                diff: float | None = float((reread(example) - want).abs().max())
        elif fmt == "pt2":
            program, note = _export_program(model, example)
            torch.export.save(program, str(out))
            # Unpickling is acceptable here only because this process has just written the file.
            reloaded = torch.export.load(str(out)).module()
            with torch.no_grad():
                diff = float((reloaded(example) - want).abs().max())
        else:
            diff, note = _write_onnx(model, example, out)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - exporters raise many types; name the failure once
        out.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"{fmt} export of {model_file} failed ({first}).") from e
    tolerance = 1e-4 * (1.0 + float(want.abs().max()))
    if diff is not None and not diff <= tolerance:
        out.unlink(missing_ok=True)
        raise ExportError(
            f"the {fmt} export's outputs differ from the model's by {diff:.3g} (tolerance "
            f"{tolerance:.3g}), so it was deleted; please report this."
        )
    return ExportReport(path=out, format=fmt, max_abs_diff=diff, note=note)


def evaluate_model_file(
    source: str | Path,
    dataset: str,
    data_dir: str | None = None,
    *,
    test_subset: int | None = None,
    device: str = "cpu",
    batch_size: int = 500,
    factory: str | None = None,
) -> tuple[float, float, int]:
    """Test accuracy and loss of a saved model on a data set's test split.

    ``factory``: the ``package.module:factory`` the model was built by, when you trust it (see
    `leantrain.models.files.load_model`).

    Returns:
        ``(accuracy, mean cross-entropy, number of test images)``.

    Raises:
        ModelFileError: missing, corrupt or not a leantrain ``.safetensors`` model.
        ValueError: the data set's images or classes do not fit the model.
    """
    from ..data import TensorLoader, get_spec, load_dataset
    from ..training.fit import evaluate, resolve_device

    path = Path(source)
    if path.suffix in (".pt2", ".onnx"):
        raise ModelFileError(
            f"{path} is a {path.suffix} export; `leantrain eval` reads leantrain .safetensors "
            "model files, which load without unpickling, so evaluate the run's model.safetensors."
        )
    model_file = resolve_model_file(path)
    torch_device = resolve_device(device)
    model = load_model(model_file, torch_device, factory=factory)
    arch = arch_of(model) or {}
    spec = get_spec(dataset)
    if spec.in_channels != arch["in_channels"] or spec.num_classes != arch["num_classes"]:
        raise ValueError(
            f"the model takes {arch['in_channels']}-channel images in {arch['num_classes']} "
            f"classes but {dataset} has {spec.in_channels}-channel images in {spec.num_classes} "
            "classes; "
            "evaluate it on the data set it was trained on."
        )
    # Decode/resize to the model's input size, as its training run did.
    _, test, spec = load_dataset(
        dataset, data_dir, test_subset=test_subset, image_size=int(arch["input_size"])
    )
    loader = TensorLoader(test, spec, batch_size, train=False, device=torch_device)
    loss, acc = evaluate(model, loader)
    return acc, loss, len(test)
