"""Fine-tuning and data that arrive in sequence: --init (state dicts and model files, safely),
the new head's learning rate, frozen BN statistics, and the stream of chunks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import leantrain
from leantrain.cli import main
from leantrain.config import ModelConfig, TrainConfig
from leantrain.runs.config import RunConfig
from leantrain.data.loaders import TensorLoader
from leantrain.data.stream import StreamLoader
from leantrain.models.pretrained import InitError, InitWarning, load_init
from leantrain.training.fit import fit, lr_at, make_optimizer


def _model(classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return leantrain.create_model("test_resnet", num_classes=classes)


@pytest.fixture
def pretrained(tmp_path) -> Path:
    """A state dict as torchvision and most training code save it: torch.save(state_dict)."""
    path = tmp_path / "pretrained.pth"
    torch.save(_model(classes=100, seed=1).state_dict(), path)
    return path


# ------------------------------------------------------------------------------------ --init


def test_a_state_dict_loads_with_a_new_head_listed_in_one_warning(pretrained) -> None:
    model = _model(classes=10)
    fresh_fc = model.fc.weight.detach().clone()
    with pytest.warns(InitWarning, match=r"re-initialised 2 tensor\(s\) whose shapes differ from "
                      r"the file's \(fc.weight \[10, 32\] vs the file's \[100, 32\], fc.bias"):
        report = load_init(model, pretrained)
    source = torch.load(pretrained, weights_only=True)
    assert torch.equal(model.conv1.conv.weight, source["conv1.conv.weight"])  # from the file
    assert torch.equal(model.fc.weight, fresh_fc)  # the head kept its fresh initialisation
    assert report.reinitialised == ("fc.weight", "fc.bias")
    assert report.new_parameters(model) == {"fc.weight", "fc.bias"}


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(InitError, match="which leantrain does not unpickle because that could "
                                        "run code"):
        load_init(_model(), path)
    assert not marker.exists()


def test_names_only_one_side_has_are_an_error_unless_skipped(tmp_path) -> None:
    state = _model().state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["layer1.0.conv1.conv.weight"]
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(InitError, match=r"the model has 1 tensors the file lacks "
                       r"\(layer1.0.conv1.conv.weight\) and the file has 1 the model lacks "
                       r"\(extra.weight\); .* --init-skip PATTERN"):
        load_init(_model(), path)
    report = load_init(_model(), path, skip=["extra.*", "layer1.0.conv1.conv.*"])
    assert report.skipped == ("layer1.0.conv1.conv.weight",)


def test_a_checkpoint_wrapper_and_ddps_prefix_are_unwrapped(tmp_path) -> None:
    source = _model(seed=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in
                                            source.state_dict().items()}}, path)
    model = _model()
    load_init(model, path)
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_a_file_of_another_architecture_is_an_error(tmp_path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(leantrain.create_model("resnet20").state_dict(), path)
    with pytest.raises(InitError, match="does not fit this model: the file has 36 the model "
                                        r"lacks \(layer1.2.conv1.conv.weight"):
        load_init(_model(), path)  # ResNet-20 has a third block per stage
    with pytest.raises(InitError, match="have other shapes than this model's"):
        load_init(_model(), path, skip=["layer*.2.*"])  # and twice the widths


def test_a_leantrain_model_file_loads_and_a_cut_one_is_refused(tmp_path) -> None:
    source = _model(seed=2)
    whole = leantrain.save_model(source, tmp_path / "whole.safetensors")
    model = _model()
    assert load_init(model, whole).reinitialised == ()
    assert torch.equal(model.fc.bias, source.fc.bias)
    leantrain.drop_units(source, ["layer1.1"])
    cut = leantrain.save_model(source, tmp_path / "cut.safetensors")
    with pytest.raises(InitError, match="holds a model that training cut"):
        load_init(_model(), cut)


def test_a_missing_init_file_is_one_sentence(tmp_path) -> None:
    with pytest.raises(InitError, match="does not exist; check the path given to --init"):
        load_init(_model(), tmp_path / "nope.pth")


def test_the_init_files_contents_not_its_path_are_the_runs_identity(pretrained, tmp_path) -> None:
    copy = tmp_path / "elsewhere" / "weights.pth"
    copy.parent.mkdir()
    copy.write_bytes(pretrained.read_bytes())

    def digest(path) -> str:
        return RunConfig(model=ModelConfig(name="test_resnet", init=str(path))).digest()

    assert digest(pretrained) == digest(copy)
    torch.save(_model(classes=100, seed=9).state_dict(), copy)
    assert digest(pretrained) != digest(copy)
    # (runs without --init keep their identity: test_config's golden digest 34c025fe)


# ------------------------------------------------------------------------ fine-tuning practice


def test_the_head_trains_at_its_own_rate_and_stays_in_its_group_across_cuts(tiny_cifar) -> None:
    train, test, spec = tiny_cifar
    loaders = [TensorLoader(s, spec, batch_size=16, train=t, seed=0)
               for s, t in ((train, True), (test, False))]
    model = _model()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, head_lr_mult=10.0, warmup=0.0,
                      schedule="constant")
    opt = make_optimizer(model, cfg, head={"fc.weight", "fc.bias"})
    assert [g["lr_mult"] for g in opt.param_groups] == [1.0, 10.0]
    fit(model, *loaders, cfg, [leantrain.DCP(p=0.5, warmup=0.0)], optimizer=opt,
        show_progress=False)
    body, head = opt.param_groups
    assert head["lr"] == pytest.approx(10 * body["lr"]) and body["lr"] == pytest.approx(0.05)
    # DCP's export sliced the blocks' inner channels (new parameters): each group holds the
    # live model's parameters, the head still apart
    assert model.layer1[0].conv1.conv.weight.shape[0] < 8
    assert [id(p) for p in head["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    assert {id(p) for p in body["params"]} == {
        id(p) for n, p in model.named_parameters() if not n.startswith("fc.")}


def test_frozen_bn_keeps_the_loaded_statistics(tiny_cifar) -> None:
    train, test, spec = tiny_cifar
    loaders = [TensorLoader(s, spec, batch_size=16, train=t, seed=0)
               for s, t in ((train, True), (test, False))]
    for freeze in (True, False):
        model = _model()
        before = model.conv1.bn.running_mean.clone()
        fit(model, *loaders, TrainConfig(epochs=1, batch_size=16, lr=0.05, freeze_bn=freeze),
            show_progress=False)
        assert torch.equal(model.conv1.bn.running_mean, before) is freeze
        assert model.conv1.bn.weight.grad is not None  # its scale still trains


def test_cli_fine_tunes_from_a_state_dict_with_a_faster_head(cifar_root, tmp_path, capsys,
                                                             pretrained) -> None:
    args = ["train", "--model", "test_resnet", "--dataset", "cifar10", "--data-dir",
            str(cifar_root), "--epochs", "1", "--batch-size", "25", "--lr", "0.01", "--threads",
            "1", "--device", "cpu", "--out-dir", str(tmp_path / "runs"), "--no-progress",
            "--init", str(pretrained), "--head-lr-mult", "10", "--freeze-bn"]
    assert main(args) == 0
    assert "leantrain: warning: --init " in capsys.readouterr().err  # the new head, in one line
    [summary] = (tmp_path / "runs").glob("*/seed0/summary.json")
    config = json.loads((summary.parent / "config.json").read_text())
    assert config["model"]["init"] == str(pretrained) and config["train"]["head_lr_mult"] == 10
    no_init = [a for a in args if a not in ("--init", str(pretrained))]
    assert main(no_init) == 2
    assert "no --init was given" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the stream


def test_chunks_are_disjoint_equal_and_visited_in_order(tiny_cifar) -> None:
    train, _, spec = tiny_cifar  # 64 images
    loader = StreamLoader(train, spec, 8, chunks=3, epochs_per_chunk=2, seed=0)
    assert loader.chunk_size == 21 and len(loader) == 2
    seen = []
    for epoch in range(6):
        order = loader._epoch_order(epoch, torch.Generator().manual_seed(epoch))
        seen.append(set(order.tolist()))
    assert seen[0] == seen[1] and len(seen[0]) == 21  # one chunk, two epochs
    assert not seen[0] & seen[2] and not seen[2] & seen[4]  # no image in two chunks
    replay = StreamLoader(train, spec, 8, chunks=3, epochs_per_chunk=2, replay=True, seed=0)
    drawn = replay._epoch_order(4, torch.Generator().manual_seed(0))
    assert len(drawn) == 21 and set(drawn.tolist()) <= seen[0] | seen[2] | seen[4]
    assert set(drawn.tolist()) & (seen[0] | seen[2])  # the earlier chunks are rehearsed
    with pytest.raises(ValueError, match="fewer than one batch of 32; use fewer chunks"):
        StreamLoader(train, spec, 32, chunks=3, epochs_per_chunk=1)


def test_the_schedule_restarts_with_each_chunk() -> None:
    cfg = TrainConfig(lr=0.1, warmup=0.0, schedule="cosine", stream=2)
    assert lr_at(0.0, cfg) == pytest.approx(0.1) and lr_at(0.5, cfg) == pytest.approx(0.1)
    assert lr_at(0.25, cfg) == pytest.approx(0.05) and lr_at(1.0, cfg) == pytest.approx(0.0)
    assert lr_at(0.25, TrainConfig(lr=0.1, warmup=0.0)) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_a_stream_is_evaluated_after_each_chunk_and_learndrop_keeps_its_drops(
        cifar_root, tmp_path) -> None:
    args = ["train", "--model", "test_resnet", "--dataset", "cifar10", "--data-dir",
            str(cifar_root), "--epochs", "1", "--batch-size", "10", "--lr", "0.05", "--threads",
            "1", "--device", "cpu", "--out-dir", str(tmp_path / "runs"), "--no-progress",
            "--stream", "3", "--method", "learndrop", "--learndrop.mode", "budget",
            "--learndrop.budget-target", "0.5", "--learndrop.budget-end", "0.4",
            "--learndrop.warmup", "0.0"]
    assert main(args) == 0
    [path] = (tmp_path / "runs").glob("*/seed0/summary.json")
    summary = json.loads(path.read_text())
    assert [c["chunk"] for c in summary["stream"]] == [1, 2, 3]
    times = [c["train_s"] for c in summary["stream"]]
    assert times == sorted(times)  # the time so far, after each chunk
    rows = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    params = [r["params"] for r in rows if r.get("chunk_end")]
    # a block dropped in the first chunk stays dropped: the methods' state spans the stream
    assert params[0] < leantrain.count_params(_model())
    assert params == sorted(params, reverse=True)


# ------------------------------------------------------------------- torchvision's own weights


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_a_torchvision_state_dict_starts_both_methods_with_a_new_head(arch, cifar_root, tmp_path,
                                                                      capsys) -> None:
    """The file torchvision's own model writes (as its cached ImageNet weights are: 1,000
    classes) loads through --init for 10 classes, and Learn&Drop and DCP train from it."""
    from torchvision_stub import import_torchvision_models

    models = import_torchvision_models()
    torch.manual_seed(0)
    weights = tmp_path / f"{arch}-imagenet.pth"
    torch.save(getattr(models, arch)().state_dict(), weights)
    for method in ("learndrop", "dcp"):
        args = ["train", "--model", f"torchvision:{arch}", "--dataset", "cifar10", "--data-dir",
                str(cifar_root), "--epochs", "1", "--batch-size", "50", "--lr", "0.01",
                "--threads", "1", "--device", "cpu", "--out-dir", str(tmp_path / method),
                "--no-progress", "--init", str(weights), "--head-lr-mult", "10",
                "--method", method]
        assert main(args) == 0, capsys.readouterr().err
        err = capsys.readouterr().err
        assert "re-initialised 2 tensor(s) whose shapes differ from the file's (fc.weight " \
               "[10, " in err
        assert len(list((tmp_path / method).glob("*/seed0/model.safetensors"))) == 1
