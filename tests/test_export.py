"""`leantrain export` and `leantrain eval` on a run whose model lost units and channels."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import write_cifar10
from leantrain.cli import main
from leantrain.runs.export import ONNX_MISSING, export_model
from leantrain.models.files import load_model, read_model_metadata


@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    """A finished Learn&Drop + DCP run on test_vgg: a conv dropped, channels pruned at the end."""
    root = tmp_path_factory.mktemp("export")
    data = write_cifar10(root / "data")
    args = ["train", "--model", "test_vgg", "--dataset", "cifar10", "--data-dir", str(data),
            "--epochs", "2", "--batch-size", "25", "--threads", "1",
            "--out-dir", str(root / "runs"), "--no-progress", "--method", "learndrop+dcp", "--dcp.p", "0.3",
            "--learndrop.tau", "1.0", "--learndrop.warmup", "0", "--learndrop.every_steps", "2",
            "--learndrop.window", "2", "--learndrop.normalize", "self",
            "--learndrop.min_units_per_stage", "0", "--learndrop.stop", "1.0"]
    torch.set_num_threads(1)
    assert main(args) == 0
    (folder,) = (root / "runs").glob("*/seed0")
    arch = read_model_metadata(folder / "model.safetensors")
    assert arch["dropped_units"] and any(e["op"] == "prune" for e in arch["surgery"])
    return folder, data


@pytest.mark.parametrize("fmt, name", [("safetensors", "model-export.safetensors"),
                                       ("pt2", "model.pt2")])
def test_export_writes_the_compact_model_and_checks_it(shrunk_run, capsys, fmt, name) -> None:
    folder, _ = shrunk_run
    assert main(["export", str(folder), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder / name} ({fmt})" in out and "max abs difference" in out
    summary = json.loads((folder / "summary.json").read_text())
    if fmt == "safetensors":
        model = load_model(folder / name)
        assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
        assert summary["final_params"] < summary["dense_params"]
    else:
        assert (folder / name).stat().st_size > 0


def test_export_to_chosen_path_and_bad_format(shrunk_run, tmp_path, capsys) -> None:
    folder, _ = shrunk_run
    report = export_model(folder / "model.safetensors", "pt2", tmp_path / "sub" / "m.pt2")
    assert report.path.is_file() and report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(["export", str(folder), "--format", "tflite"])
    assert main(["export", str(folder), "--out", str(folder / "model.safetensors")]) == 2
    assert "is the model file itself" in capsys.readouterr().err


def test_eval_reproduces_the_runs_accuracy(shrunk_run, capsys) -> None:
    folder, data = shrunk_run
    summary = json.loads((folder / "summary.json").read_text())
    assert main(["eval", str(folder / "model.safetensors"), "--dataset", "cifar10",
                 "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * summary['test_acc']:.2f}%" in out
    assert f"test loss {summary['test_loss']:.4f}" in out and "(20 images of cifar10)" in out


def test_onnx_without_its_packages_says_what_to_install(shrunk_run, monkeypatch, capsys) -> None:
    folder, _ = shrunk_run
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    assert main(["export", str(folder), "--format", "onnx"]) == 2
    assert capsys.readouterr().err.strip() == f"leantrain: error: {ONNX_MISSING}"
    assert not (folder / "model.onnx").exists()


def test_onnx_export(shrunk_run, tmp_path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    folder, _ = shrunk_run
    report = export_model(folder, "onnx", tmp_path / "model.onnx")
    assert report.path.is_file()
    if importlib.util.find_spec("onnxruntime") is not None:
        assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4


def test_identical_models_give_byte_identical_files(tmp_path) -> None:
    """safetensors keeps metadata in a hash map; the header is rewritten in sorted key order."""
    from leantrain.models.files import save_model
    from leantrain.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("test_vgg")
    paths = [save_model(model, tmp_path / f"m{i}.safetensors", metadata={"test_acc": 0.5})
             for i in range(6)]
    first = paths[0].read_bytes()
    assert all(p.read_bytes() == first for p in paths[1:])
    header = json.loads(first[8 : 8 + int.from_bytes(first[:8], "little")])
    assert list(header["__metadata__"]) == ["leantrain_arch", "leantrain_meta", "leantrain_sha256"]
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_model(paths[-1])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values()))


def test_saving_never_traces(tmp_path, monkeypatch) -> None:
    """The file's description comes from the model's record; only loading reads the network."""
    from leantrain.models.factory import create_model
    from leantrain.models.files import save_model
    from leantrain.structure import channel_sets_of, example_shape, prepare
    prepare_module = importlib.import_module("leantrain.structure.prepare")  # not the function
    from leantrain.structure.surgery import drop_units, prune_channels

    torch.manual_seed(0)
    fresh = create_model("test_resnet")
    cut = create_model("test_resnet")
    prepare(cut)
    first = channel_sets_of(cut)[0]
    prune_channels(cut, {first.name: torch.tensor([0, 2, 3])})
    drop_units(cut, ["layer1.1"])

    def no_tracing(model):
        raise AssertionError("saving traced the model")

    monkeypatch.setattr(prepare_module, "discover", no_tracing)
    save_model(fresh, tmp_path / "fresh.safetensors")
    save_model(cut, tmp_path / "cut.safetensors")
    monkeypatch.undo()

    meta = read_model_metadata(tmp_path / "cut.safetensors")
    assert meta["widths"] == {first.name: 3}
    assert [e["op"] for e in meta["surgery"]] == ["prune", "drop"]
    loaded = load_model(tmp_path / "cut.safetensors")
    x = torch.randn(2, *example_shape(cut))
    cut.eval()
    loaded.eval()
    assert torch.equal(cut(x), loaded(x))
