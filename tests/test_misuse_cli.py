"""Misuse of the command line as a new user makes it (issue 26): one sentence, never a traceback.

Each test makes one mistake — a factory that ignores ``num_classes`` or ``in_channels``, a subset
smaller than the classes, a learning rate that blows the model up, the wrong path for
``--resume-from``, a bad ``--input`` — and checks the exact ``leantrain: error:`` sentence and
exit code 2 (or the one ``leantrain: warning:`` line where the run may go on), on tiny data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leantrain.cli import main


def _train(root: Path, out: Path, *extra: str, model: str = "test_resnet",
           dataset: str = "cifar10") -> list[str]:
    return ["train", "--model", model, "--dataset", dataset, "--data-dir", str(root), "--epochs",
            "1", "--batch-size", "25", "--lr", "0.05", "--threads", "1", "--device", "cpu",
            "--out-dir", str(out), "--no-progress", *extra]


def _error(capsys) -> str:
    """The one line on stderr, which must be a leantrain error and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("leantrain: error: "), err
    return err.strip().removeprefix("leantrain: error: ")


# ------------------------------------------------------------- the model against the data set


@pytest.mark.parametrize("factory, message", [
    ("ignores_num_classes", "the model outputs 100 classes but cifar10 has 10; make the factory "
     "take num_classes and build its last layer with it."),
    ("five_classes", "the model outputs 5 classes but cifar10 has 10; make the factory take "
     "num_classes and build its last layer with it."),
    ("returns_tuple", "the model returns a tuple, not a tensor of class scores; make its forward "
     "return the logits, one row per image and one column per class."),
    ("all_frozen", "the model has no trainable parameters (none at all, or every one frozen with "
     "requires_grad=False), so there is nothing to train; check the factory."),
])
def test_model_that_does_not_fit_the_classes(cifar_root, tmp_path, capsys, factory,
                                             message) -> None:
    out = tmp_path / "runs"
    assert main(_train(cifar_root, out, model=f"user_models:{factory}")) == 2
    assert _error(capsys) == message
    assert not out.exists()  # checked before the run folder is written


def test_model_for_rgb_images_on_grey_data(tmp_path, capsys) -> None:
    args = _train(tmp_path, tmp_path / "runs", "--train-subset", "50", "--test-subset", "50",
                  model="user_models:plain_cnn", dataset="mnist-sample")
    assert main(args) == 2
    assert _error(capsys) == (
        "the model's first layer expects 3 input channels but mnist-sample images have 1; make "
        "the factory take in_channels and build its first layer with it, or train on a data set "
        "of 3-channel images.")


def test_model_written_for_another_image_size(cifar_root, tmp_path, capsys) -> None:
    args = _train(cifar_root, tmp_path / "runs", "--image-size", "16", model="user_models:fixed_32px")
    assert main(args) == 2
    assert _error(capsys) == (
        "the model fails on cifar10's 3x16x16 images (RuntimeError: mat1 and mat2 shapes cannot "
        "be multiplied (1x512 and 2048x10)); make the factory build its layers for in_channels "
        "and input_size, or pass the --image-size it was written for.")


def test_probe_leaves_the_model_as_it_was() -> None:
    import torch

    from leantrain.models.factory import create_model
    from leantrain.runs.runner import probe_model

    model = create_model("test_resnet").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert probe_model(model, (3, 32, 32)).shape == (1, 10)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("shape, message", [
    ("1x32x32", "the model's first layer expects 3 input channels but --input gives 1; pass "
     "--input 3x32x32."),
])
def test_cost_with_an_input_the_model_cannot_take(capsys, shape, message) -> None:
    assert main(["cost", "user_models:plain_cnn", "--input", shape]) == 2
    assert _error(capsys) == message


def test_cost_with_an_image_size_the_model_cannot_take(capsys) -> None:
    assert main(["cost", "user_models:fixed_32px", "--input", "3x64x64"]) == 2
    assert _error(capsys) == (
        "the model fails on --input 3x64x64 (RuntimeError: mat1 and mat2 shapes cannot be "
        "multiplied (1x8192 and 2048x10)); pass the input size it was written for.")


# --------------------------------------------------------------------------- silent no-ops


@pytest.mark.parametrize("flag, message", [
    ("--train-subset", "train_subset=5 is smaller than cifar10's 10 classes, so 5 of them are "
     "never trained on; use train_subset ≥ 10."),
    ("--test-subset", "test_subset=5 is smaller than cifar10's 10 classes, so 5 of them are "
     "never tested; use test_subset ≥ 10."),
])
def test_subset_smaller_than_the_classes_warns_once(cifar_root, tmp_path, capsys, flag,
                                                    message) -> None:
    assert main(_train(cifar_root, tmp_path / "runs", flag, "5", "--batch-size", "5")) == 0
    err = capsys.readouterr().err
    assert err == f"leantrain: warning: {message}\n"


def test_run_ending_with_a_nan_test_loss_fails_and_keeps_its_folder(cifar_root, tmp_path,
                                                                    capsys) -> None:
    # 1 step (100 images, batch 100) at lr 1e6: the training loss is that of the first step,
    # so fit's divergence guard has nothing to see, but the eval-mode outputs overflow.
    args = _train(cifar_root, tmp_path / "runs", "--batch-size", "100", "--lr", "1e6")
    assert main(args) == 2
    (folder,) = (tmp_path / "runs").glob("*/seed0")
    assert _error(capsys) == (
        "training diverged: the final test loss is nan (test accuracy 10.00%), so the saved model "
        f"is useless; its run folder {folder} keeps the model, metrics and summary to inspect; "
        "train again with a lower --lr than 1e+06 or with a warm-up (e.g. --warmup 0.05).")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "env.json", "events.jsonl", "metrics.jsonl",
                     "model.safetensors", "summary.json"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_loss"] != summary["test_loss"]  # NaN, as it was
    assert main([*args, "--resume"]) == 2  # "nothing to resume" would hide it: the same sentence
    assert _error(capsys).startswith("training diverged: the final test loss is nan")


# ---------------------------------------------------------------------------- --resume-from


def _finished_run(cifar_root: Path, tmp_path: Path) -> Path:
    assert main(_train(cifar_root, tmp_path / "a")) == 0
    (folder,) = (tmp_path / "a").glob("*/seed0")
    return folder


def test_resume_from_a_finished_runs_model_file(cifar_root, tmp_path, capsys) -> None:
    folder = _finished_run(cifar_root, tmp_path)
    capsys.readouterr()
    model = folder / "model.safetensors"
    assert main(_train(cifar_root, tmp_path / "b", "--resume-from", str(model))) == 2
    assert _error(capsys) == (
        f"{model} belongs to a finished run, which keeps its model but no checkpoint; "
        "--resume-from continues an unfinished run's folder.")
    assert (folder / "model.safetensors").is_file()  # nothing was advised away, nothing lost
    assert not (tmp_path / "b").exists()


def _sample(tmp_path: Path, *extra: str) -> list[str]:
    """Train on the embedded MNIST sample: no data folder to write."""
    return _train(tmp_path, tmp_path / "b", "--train-subset", "50", "--test-subset", "50", *extra,
                  dataset="mnist-sample")


def test_resume_from_a_file_of_an_unfinished_run(tmp_path, capsys) -> None:
    folder = tmp_path / "a" / "mnist-sample-test_resnet-dense-00000000" / "seed0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text("{}")  # an unfinished run (never read here)
    tensors = folder / "checkpoint-000002.safetensors"
    tensors.write_bytes(b"")
    assert main(_sample(tmp_path, "--resume-from", str(tensors))) == 2
    assert _error(capsys) == (
        f"--resume-from takes a run folder, not one of its files; pass --resume-from {folder} "
        "(it continues from that folder's latest good checkpoint).")
    # The folder above the seeds: the seed's folder is named.
    assert main(_sample(tmp_path, "--resume-from", str(folder.parent))) == 2
    assert _error(capsys) == (
        f"{folder.parent} holds one run folder per seed, not a checkpoint; pass one of them, e.g. "
        f"--resume-from {folder}.")


def test_resume_from_a_missing_path(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(_sample(tmp_path, "--resume-from", str(missing))) == 2
    assert _error(capsys) == (
        f"{missing} does not exist; --resume-from takes the folder of an unfinished run.")


# ------------------------------------------------------------------ other bad input to train


def test_config_file_that_is_not_text(tmp_path, capsys) -> None:
    config = tmp_path / "run.toml"
    config.write_bytes(b"\x00\xff\xfe[train]")
    assert main(["train", "-c", str(config), "--out-dir", str(tmp_path / "runs")]) == 2
    assert _error(capsys) == (
        f"config file {config} is not UTF-8 text, so it cannot be TOML; save it as UTF-8.")


def test_negative_seed(tmp_path, capsys) -> None:
    assert main(["train", "--seed", "-1", "--out-dir", str(tmp_path / "runs")]) == 2
    assert _error(capsys) == "seed -1 is negative; seeds are whole numbers ≥ 0 (--seed N)."
    assert not (tmp_path / "runs").exists()


def test_image_size_too_large_for_memory(cifar_root, tmp_path, capsys) -> None:
    assert main(_train(cifar_root, tmp_path / "runs", "--image-size", "1000000")) == 2
    assert _error(capsys).startswith("image_size=1000000 needs 279,396.8 GiB for 100 images")


def test_flip_of_a_batch_where_no_coin_came_up() -> None:
    import torch

    from leantrain.data import flip_where

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    assert torch.equal(flip_where(x, torch.zeros(2, dtype=torch.bool)), x)  # was a RuntimeError
    assert torch.equal(flip_where(x, torch.tensor([True, False]))[0], x[0].flip(2))
