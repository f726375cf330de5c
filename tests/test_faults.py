"""Bad input and faults through the command line: one clear sentence, exit code 2, nothing lost.

Each test breaks one thing (a data file, a checkpoint, a model file, the disk, the network, the
config) and checks that the user gets a single line naming the problem and the fix, a non-zero
exit code, and that files saved before are still there and intact.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import urllib.request
from pathlib import Path

import pytest
import torch

from leantrain.training import checkpoint as ckpt_mod
from leantrain.training.checkpoint import writer as ckpt_writer  # where the bytes are written
from leantrain.training.checkpoint import load_checkpoint
from leantrain.cli import main
from leantrain.models.files import save_model
from leantrain.models.factory import create_model
from test_data import write_mnist


def _train(root, out, *extra, model="test_resnet", dataset="cifar10"):
    return ["train", "--model", model, "--dataset", dataset, "--data-dir", str(root), "--epochs",
            "2", "--batch-size", "25", "--threads", "1", "--out-dir", str(out), "--no-progress",
            *extra]


def _one_sentence(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.rsplit("\r", 1)[-1].strip()  # after a cleared progress bar
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("leantrain: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


# ------------------------------------------------------------------------------------ data files


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b[: len(b) // 2], "data_batch_3"),  # truncated
    (lambda b: b"\x80\x02garbage" + b[10:40], "data_batch_3"),  # corrupt
])
def test_damaged_cifar_batch(cifar_root, tmp_path, capsys, damage, needle) -> None:
    batch = cifar_root / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(damage(batch.read_bytes()))
    before = _snapshot(cifar_root)
    assert main(_train(cifar_root, tmp_path / "runs")) == 2
    _one_sentence(capsys, needle)
    assert _snapshot(cifar_root) == before  # the data is not touched
    assert not (tmp_path / "runs").exists()  # no half-made run folder


def test_truncated_mnist_idx(tmp_path, capsys) -> None:
    raw = tmp_path / "data" / "mnist" / "raw"
    write_mnist(raw)
    images = raw / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    assert main(_train(tmp_path / "data", tmp_path / "runs", dataset="mnist")) == 2
    _one_sentence(capsys, "train-images-idx3-ubyte")


def test_wrong_data_shape(cifar_root, tmp_path, capsys) -> None:
    import pickle

    batch = cifar_root / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
    with open(batch, "wb") as f:  # 3000 values per image instead of 3·32·32 = 3072
        data = torch.zeros(20, 3000, dtype=torch.uint8).numpy()
        pickle.dump({b"labels": [0] * 20, b"data": data}, f, protocol=2)
    assert main(_train(cifar_root, tmp_path / "runs")) == 2
    _one_sentence(capsys, "data_batch_2")


class _BrokenStream(io.BytesIO):
    """An HTTP response that dies after its first chunk (a dropped connection)."""

    headers = {"Content-Length": str(1 << 21)}

    def read(self, size: int = -1) -> bytes:
        if self.tell() > 0:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return super().read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _BrokenStream(b"\0" * (1 << 21)))
    data = tmp_path / "data"
    assert main([*_train(data, tmp_path / "runs"), "--download"]) == 2
    _one_sentence(capsys, "could not download", "Connection reset", "cifar-10-batches-py")
    assert [p for p in data.rglob("*") if p.is_file()] == []


# ------------------------------------------------------------------------- names and settings


@pytest.mark.parametrize("extra, needle", [
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--batch-size", "1000"], "larger than the 100 training images"),
    (["--train-subset", "5000"], "train_subset=5000 is out of range"),
    (["--momentum", "1.5"], "train.momentum must be in [0, 1)"),
    (["--checkpoint-every", "-1"], "checkpoint_every must be"),
    (["--method", "learndrop", "--learndrop.tau", "0"], "learndrop.tau = 0.0 is outside (0, 1]"),
    (["--method", "dcp", "--dcp.min_channels", "99"], "exceeds the width"),
])
def test_impossible_settings_and_unknown_names(cifar_root, tmp_path, capsys, extra, needle) -> None:
    assert main([*_train(cifar_root, tmp_path / "runs"), *extra]) == 2
    _one_sentence(capsys, needle)


@pytest.mark.parametrize("text, needle", [
    ('[trian]\nepochs = 1\n', "unknown config key 'trian'"),
    ('method = "learndrop"\n[learndrop]\ntaux = 0.5\n',
     "unknown key(s) ['taux'] for method 'learndrop'"),
    ('checkpoint_minutes = -2\n', "checkpoint_minutes must be"),
])
def test_config_with_unknown_keys(tmp_path, capsys, text, needle) -> None:
    config = tmp_path / "run.toml"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out-dir", str(tmp_path / "runs")]) == 2
    _one_sentence(capsys, needle)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- disk and folders


def _fail_on_write(monkeypatch, call: int, error: OSError) -> None:
    real, calls = ckpt_writer._write_file, []

    def write(path, data):
        calls.append(path)
        if len(calls) == call:
            def partial(f):  # a few bytes made it into the temporary file before the disk filled
                f.write(data[:10])
                raise error

            return real(path, partial)
        return real(path, data)

    monkeypatch.setattr(ckpt_writer, "_write_file", write)


def test_full_disk_during_checkpoint_keeps_the_last_good_one(cifar_root, tmp_path, monkeypatch,
                                                              capsys) -> None:
    # Writes per checkpoint: tensors, previous record (from the 2nd on), record; so the 3rd write
    # is step 4's tensor file.
    _fail_on_write(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    args = [*_train(cifar_root, tmp_path / "runs"), "--checkpoint-every", "2"]
    assert main(args) == 2
    _one_sentence(capsys, "could not write a checkpoint", "No space left on device",
                  "last good checkpoint (step 2) is intact", "--resume")
    (folder,) = (tmp_path / "runs").glob("*/seed0")
    assert load_checkpoint(folder).step == 2
    assert not list(folder.glob(".*.tmp")) and len(list(folder.glob("*.safetensors"))) == 1
    monkeypatch.undo()  # space freed: the run continues from step 2 and finishes
    assert main([*args, "--resume"]) == 0
    assert (folder / "model.safetensors").is_file()


def test_unwritable_folder_during_first_checkpoint(cifar_root, tmp_path, monkeypatch,
                                                   capsys) -> None:
    _fail_on_write(monkeypatch, 1, PermissionError(errno.EACCES, "Permission denied"))
    assert main(_train(cifar_root, tmp_path / "runs")) == 2
    _one_sentence(capsys, "Permission denied", "make the folder writable",
                  "no checkpoint was written yet")


def test_damaged_checkpoints_on_resume(cifar_root, tmp_path, monkeypatch, capsys) -> None:
    args, folder = _interrupted_at_step_6(cifar_root, tmp_path, monkeypatch)
    latest = folder / "checkpoint-000000004.safetensors"
    good = latest.read_bytes()
    latest.write_bytes(good[:100])  # truncated latest: falls back to step 2, with a warning
    capsys.readouterr()
    older = folder / "checkpoint-000000002.safetensors"
    saved_older = older.read_bytes()
    older.write_bytes(b"junk")  # ... unless that one is damaged too: a clear error, nothing deleted
    assert main([*args, "--resume"]) == 2
    _one_sentence(capsys, "no usable checkpoint", "truncated", "train again without --resume")
    assert latest.exists() and older.exists()
    older.write_bytes(saved_older)
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "leantrain: warning: " in err
    assert "falling back to the previous checkpoint (step 2)" in err


# ------------------------------------------------------------------------------- model files


@pytest.fixture
def model_file(tmp_path) -> Path:
    return save_model(create_model("test_resnet"), tmp_path / "model.safetensors")


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b[: len(b) // 2], "truncated or corrupt"),
    (lambda b: b"\xff" * 64, "truncated or corrupt"),
    (lambda b: b[:8] + b"{not json" + b[17:], "truncated or corrupt"),
])
@pytest.mark.parametrize("command", ["eval", "export"])
def test_corrupt_model_file(model_file, capsys, damage, needle, command) -> None:
    model_file.write_bytes(damage(model_file.read_bytes()))
    bad = model_file.read_bytes()
    args = ["--dataset", "mnist-sample"] if command == "eval" else ["--format", "pt2"]
    assert main([command, str(model_file), *args]) == 2
    _one_sentence(capsys, needle, str(model_file))
    assert model_file.read_bytes() == bad and not model_file.with_suffix(".pt2").exists()


def test_eval_rejects_missing_files_exports_and_mismatched_data(model_file, tmp_path,
                                                                capsys) -> None:
    assert main(["eval", str(tmp_path / "nope.safetensors"), "--dataset", "mnist-sample"]) == 2
    _one_sentence(capsys, "does not exist")
    assert main(["eval", str(tmp_path / "model.pt2"), "--dataset", "mnist-sample"]) == 2
    _one_sentence(capsys, "without unpickling")
    assert main(["eval", str(model_file), "--dataset", "mnist-sample"]) == 2
    _one_sentence(capsys, "takes 3-channel images", "mnist-sample has 1-channel")
    assert main(["eval", str(model_file), "--dataset", "imagenet1k"]) == 2
    _one_sentence(capsys, "unknown data set 'imagenet1k'")


def test_export_of_unfinished_run_says_how_to_finish(tmp_path, capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.json").write_text(json.dumps({}))
    assert main(["export", str(folder)]) == 2
    _one_sentence(capsys, "has not finished", "--resume")


def _interrupted_at_step_6(cifar_root, tmp_path, monkeypatch) -> tuple[list[str], Path]:
    args = [*_train(cifar_root, tmp_path / "runs"), "--checkpoint-every", "2"]
    real = ckpt_mod.Checkpointer.save

    def stop_at_third(self, tensors, meta):
        if meta["step"] == 6:
            raise KeyboardInterrupt
        return real(self, tensors, meta)

    monkeypatch.setattr(ckpt_mod.Checkpointer, "save", stop_at_third)
    assert main(args) == 130
    monkeypatch.undo()
    (folder,) = (tmp_path / "runs").glob("*/seed0")
    return args, folder


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m.update(rng={}),
     "its field 'rng' is {} but should be the saved Python and NumPy RNG states"),
    (lambda m: m.update(history=5), "its field 'history' is 5 but should be a list of JSON objects"),
    (lambda m: m["optimizer"]["state"]["0"].update(momentum_buffer={"__tensor__": "optim/gone"}),
     "its field 'optimizer' names tensor 'optim/gone', which its tensor file lacks"),
])
def test_tampered_checkpoint_record(cifar_root, tmp_path, monkeypatch, capsys, edit,
                                    problem) -> None:
    args, folder = _interrupted_at_step_6(cifar_root, tmp_path, monkeypatch)
    record = folder / "checkpoint.json"
    meta = json.loads(record.read_text())
    edit(meta)
    record.write_text(json.dumps(meta))
    capsys.readouterr()
    other = [*_train(cifar_root, tmp_path / "other"), "--checkpoint-every", "2"]
    assert main([*other, "--resume-from", str(record)]) == 2
    err = _one_sentence(capsys)
    assert err == (f"leantrain: error: no usable checkpoint in {folder}: checkpoint {record} is "
                   f"unusable ({problem}); resume from {folder / 'checkpoint-prev.json'} instead, "
                   "or train again without --resume.")
    assert main([*args, "--resume"]) == 0  # the run's own resume falls back by itself
    assert "falling back to the previous checkpoint (step 2)" in capsys.readouterr().err


def test_full_disk_while_appending_metrics_names_the_file(cifar_root, tmp_path, monkeypatch,
                                                          capsys) -> None:
    real_open = Path.open

    def full(self, mode="r", *a, **k):
        if self.name == "metrics.jsonl" and mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *a, **k)

    monkeypatch.setattr(Path, "open", full)
    args = _train(cifar_root, tmp_path / "runs")
    assert main(args) == 2
    (folder,) = (tmp_path / "runs").glob("*/seed0")
    assert _one_sentence(capsys) == (
        f"leantrain: error: could not append to {folder / 'metrics.jsonl'} (No space left on "
        "device); free disk space or make the folder writable, then continue with --resume (the "
        "last good checkpoint is kept).")
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0


def test_clean_up_in_a_read_only_folder_keeps_the_message(cifar_root, tmp_path, monkeypatch,
                                                          capsys) -> None:
    """The folder turns read-only mid-run: writing fails and so does deleting the half file;
    the user still gets the sentence saying the last good checkpoint is intact."""
    _fail_on_write(monkeypatch, 3, PermissionError(errno.EACCES, "Permission denied"))
    real_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self.name.endswith((".safetensors", ".tmp")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    assert main([*_train(cifar_root, tmp_path / "runs"), "--checkpoint-every", "2"]) == 2
    (folder,) = (tmp_path / "runs").glob("*/seed0")
    assert _one_sentence(capsys) == (
        f"leantrain: error: could not write a checkpoint to "
        f"{folder / 'checkpoint-000000004.safetensors'} (Permission denied); free disk space or "
        "make the folder writable (the last good checkpoint (step 2) is intact, so continue "
        "with --resume).")


def test_rerunning_a_finished_run_overwrites_nothing(cifar_root, tmp_path, capsys) -> None:
    args = _train(cifar_root, tmp_path / "runs")
    assert main(args) == 0
    (folder,) = (tmp_path / "runs").glob("*/seed0")
    before = _snapshot(folder)
    capsys.readouterr()
    assert main(args) == 2
    assert _one_sentence(capsys) == (
        f"leantrain: error: the run in {folder} has already finished and a new attempt would "
        "overwrite its results; to train it again choose another --seed or --out-dir, or delete "
        "the folder.")
    assert _snapshot(folder) == before
