"""Opening a model file is safe: it runs no code of the file's choosing, and a bad file is a
`ModelFileError` (one sentence, exit 2 from the CLI), never another exception.

The files are real safetensors files whose header an attacker (or a flipped bit) changed. The
forged ones carry a correct checksum, as an attacker can compute one: the checksum is there to
catch corruption; what keeps code from running is the rule on model references.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

import user_models
from leantrain.training.checkpoint import Checkpoint
from leantrain.cli import main
from leantrain.models.files import (
    CHECKSUM, ModelFileError, _canonical, architecture, build_architecture, load_model,
    read_model_metadata, save_model,
)
from leantrain.models.factory import create_model
from leantrain.structure import channel_sets_of
from leantrain.structure.surgery import prune_channels

REFUSED = (
    "the model file asks to build its model by calling {ref}, code that a file may not choose "
    "to run; if you trust {ref}, allow it with --model {ref} (command line) or "
    "load_model(path, factory='{ref}')."
)
BAD_CHECKSUM = (
    "model file {path}: the weights do not match their checksum; the file is corrupt, re-export it."
)


# ------------------------------------------------------------------------------------ helpers


def _pruned_model() -> torch.nn.Module:
    """test_resnet with one channel set cut, so its file holds a prune entry."""
    model = create_model("test_resnet")
    first = channel_sets_of(model)[0]
    prune_channels(model, {first.name: torch.tensor([0, 2, 3])})
    return model


@pytest.fixture
def good_file(tmp_path) -> Path:
    return save_model(_pruned_model(), tmp_path / "good.safetensors")


def _parts(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def _forge(source: Path, out: Path, change: Any, *, checksum: bool = True) -> Path:
    """`source` rewritten with its architecture record changed by `change` (a function of the
    record, or the raw metadata string); the checksum recomputed unless `checksum` is False."""
    meta, tensors = _parts(source)
    meta.pop(CHECKSUM)
    if callable(change):
        desc = json.loads(meta["leantrain_arch"])
        change(desc)
        meta["leantrain_arch"] = json.dumps(desc)
    else:
        meta["leantrain_arch"] = change
    data = save_safetensors(tensors, metadata=meta)
    out.write_bytes(_canonical(data) if checksum else data)
    return out


def _naming(ref: str, kwargs: dict[str, Any]):
    def change(desc: dict[str, Any]) -> None:
        desc["arch"].update(name=ref, kwargs=kwargs)
    return change


def _one_line(capsys, message: str) -> None:
    err = capsys.readouterr().err
    assert err == f"leantrain: error: {message}\n"


# ------------------------------------------------------- 1. no code of the file's choosing


def _attacks(marker: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("os:system", {"command": f"touch {marker}"}),
        ("builtins:eval", {"source": f"open({str(marker)!r}, 'w').close()"}),
        ("builtins:exec", {"source": f"open({str(marker)!r}, 'w').close()"}),
        ("subprocess:getoutput", {"cmd": f"touch {marker}"}),
        # torchvision's own module, by factory path rather than by the zoo's name
        ("torchvision.models:resnet18", {}),
    ]


@pytest.mark.parametrize("attack", range(5))
def test_a_file_naming_code_runs_nothing(attack, good_file, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    ref, kwargs = _attacks(marker)[attack]
    evil = _forge(good_file, tmp_path / "evil.safetensors", _naming(ref, kwargs))
    message = REFUSED.format(ref=ref)
    with pytest.raises(ModelFileError) as raised:
        load_model(evil)
    assert str(raised.value) == message
    with pytest.raises(ModelFileError, match="code that a file may not choose to run"):
        build_architecture(read_model_metadata(evil))
    assert read_model_metadata(evil)["arch"]["name"] == ref  # reading alone is fine
    for argv in (["inspect", str(evil)], ["eval", str(evil), "--dataset", "mnist-sample"],
                 ["export", str(evil)]):
        assert main(argv) == 2
        _one_line(capsys, message)
    assert not marker.exists()
    assert not list(tmp_path.glob("evil-export*"))


def test_a_file_naming_a_module_does_not_import_it(good_file, tmp_path, monkeypatch) -> None:
    """Importing is running code: a module named by a file is not even imported."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef build(num_classes=10):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    evil = _forge(good_file, tmp_path / "evil.safetensors", _naming("evil_module:build", {}))
    with pytest.raises(ModelFileError, match="calling evil_module:build"):
        load_model(evil)
    assert not marker.exists() and "evil_module" not in sys.modules


def test_a_file_without_a_checksum_is_refused_before_it_runs_anything(good_file, tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = _forge(good_file, tmp_path / "evil.safetensors",
                  _naming("os:system", {"command": f"touch {marker}"}), checksum=False)
    with pytest.raises(ModelFileError, match="code that a file may not choose"):
        load_model(evil)
    assert not marker.exists()


def test_a_named_factory_is_run_when_the_user_names_it(tmp_path, capsys) -> None:
    ref = "user_models:plain_cnn"
    model = create_model(ref).eval()
    path = save_model(model, tmp_path / "own.safetensors")
    with pytest.raises(ModelFileError) as raised:
        load_model(path)
    assert str(raised.value) == REFUSED.format(ref=ref)
    loaded = load_model(path, factory=ref).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert isinstance(load_model(path, model=create_model(ref)), user_models.PlainCNN)
    with pytest.raises(ModelFileError) as raised:
        load_model(path, factory="user_models:concat_net")
    assert str(raised.value) == (
        "the model file holds user_models:plain_cnn, not user_models:concat_net; leave out "
        "--model (factory=) or name the model the file holds.")
    with pytest.raises(ValueError, match="either model= or factory="):
        load_model(path, model=create_model(ref), factory=ref)
    # the command line: refused without --model, run with it
    assert main(["inspect", str(path)]) == 2
    _one_line(capsys, REFUSED.format(ref=ref))
    assert main(["inspect", str(path), "--model", ref]) == 0
    assert f"{path} at 3x32x32" in capsys.readouterr().out
    out = tmp_path / "copy.safetensors"
    assert main(["export", str(path), "--model", ref, "--out", str(out)]) == 0
    assert load_model(out, factory=ref).arch == model.arch
    assert main(["inspect", "resnet20", "--model", ref]) == 2
    _one_line(capsys, "--model names the factory a model file was built by, but resnet20 is not "
                      f"a .safetensors file; name your factory as the model instead: leantrain "
                      f"inspect {ref}.")


def test_a_factory_named_for_a_file_of_another_model_is_an_error(good_file) -> None:
    with pytest.raises(ModelFileError, match="holds test_resnet, not user_models:plain_cnn"):
        load_model(good_file, factory="user_models:plain_cnn")


@pytest.mark.parametrize("ref, kwargs, problem", [
    ("torchvision:resnet18", {"weights": "DEFAULT"},
     "torchvision:resnet18 with weights=DEFAULT would download weights"),
    ("torchvision:resnet18", {"weights": 5}, "torchvision:resnet18 with weights=5 would download"),
    ("torchvision:resnet18", {"command": "touch x"},
     "torchvision:resnet18 takes no argument command"),
    ("torchvision:resnet18", {"norm_layer": {"module": "os"}},
     "torchvision:resnet18 argument norm_layer is not a number, string or list"),
    ("torchvision:no_such_net", {}, "torchvision has no model 'no_such_net'"),
    ("torchvision:fasterrcnn_resnet50_fpn", {},
     "torchvision:fasterrcnn_resnet50_fpn with weights_backbone=ResNet50_Weights.IMAGENET1K_V1 "
     "would download weights"),
])
def test_a_file_may_name_a_zoo_model_only_without_downloads_and_with_its_arguments(
    ref, kwargs, problem, good_file, tmp_path
) -> None:
    evil = _forge(good_file, tmp_path / "zoo.safetensors", _naming(ref, kwargs))
    with pytest.raises(ModelFileError) as raised:
        load_model(evil)
    assert str(raised.value).startswith(f"the model file asks for a model it may not ({problem}")
    assert str(raised.value).endswith("; the file is corrupt or was not written by leantrain.")


def test_a_zoo_model_with_its_own_arguments_loads(tmp_path) -> None:
    model = create_model("torchvision:mobilenet_v2", kwargs={"dropout": 0.0}).eval()
    loaded = load_model(save_model(model, tmp_path / "m.safetensors")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_model_arguments_that_are_not_a_table_are_refused(good_file, tmp_path) -> None:
    # dict([["command", "…"]]) would have made a table of them
    evil = _forge(good_file, tmp_path / "e.safetensors",
                  _naming("torchvision:resnet18", [["command", "touch x"]]))
    with pytest.raises(ModelFileError, match="model arguments .* are not a table"):
        load_model(evil)


# ------------------------------------------------------------------------------ 2. checksum


def test_a_flipped_byte_in_the_weights_is_caught(good_file, tmp_path) -> None:
    data = bytearray(good_file.read_bytes())
    data[-3] ^= 0x01
    good_file.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as raised:
        load_model(good_file)
    assert str(raised.value) == BAD_CHECKSUM.format(path=good_file)


def test_a_changed_dtype_in_the_header_is_caught(good_file) -> None:
    """A flip that turns F32 into I32 keeps every size: only the checksum sees it."""
    data = good_file.read_bytes()
    assert data.count(b'"dtype":"F32"') > 1
    good_file.write_bytes(data.replace(b'"dtype":"F32"', b'"dtype":"I32"', 1))
    with pytest.raises(ModelFileError, match="do not match their checksum"):
        load_model(good_file)


def test_a_file_without_a_checksum_says_to_save_it_again(good_file, tmp_path) -> None:
    old = _forge(good_file, tmp_path / "old.safetensors", lambda desc: None, checksum=False)
    with pytest.raises(ModelFileError) as raised:
        load_model(old)
    assert str(raised.value) == (
        f"model file {old} has no weights checksum, so it was written by an older leantrain; "
        "re-save it with this version.")


def test_every_written_file_carries_its_checksum(good_file) -> None:
    meta, _ = _parts(good_file)
    assert len(meta[CHECKSUM]) == 64 and int(meta[CHECKSUM], 16) >= 0


# ------------------------------------------------------------------ 3. surgery in the file


def _set_keep(keep: Any, op: str = "prune"):
    def change(desc: dict[str, Any]) -> None:
        entry = desc["surgery"][0]
        entry["op"] = op
        entry["keep"] = keep
    return change


@pytest.mark.parametrize("keep, problem", [
    ([-1, 0, 2], "the channels kept of layer1.0.conv1 ([-1, 0, 2]) are not distinct integer "
                 "indices ≥ 0"),
    ([0, 2, 2], "the channels kept of layer1.0.conv1 ([0, 2, 2]) are not distinct integer "
                "indices ≥ 0"),
    ([0, 1.5], "([0, 1.5]) are not distinct"),
    ([True, 2], "([True, 2]) are not distinct"),
    (["0"], "(['0']) are not distinct"),
    ([], "([]) are not distinct"),
    ([[0, 1]], "([[0, 1]]) are not distinct"),
])
def test_bad_kept_channel_indices_are_one_sentence(keep, problem, good_file, tmp_path,
                                                   capsys) -> None:
    bad = _forge(good_file, tmp_path / "bad.safetensors",
                 _set_keep({"layer1.0.conv1": keep}))
    message = (f"the saved architecture's surgery[0] is malformed ({problem}); the file is "
               "corrupt or was not written by leantrain.")
    with pytest.raises(ModelFileError) as raised:
        load_model(bad)
    assert problem in str(raised.value)
    if problem.startswith("the channels"):
        assert str(raised.value) == message
        assert main(["inspect", str(bad)]) == 2
        _one_line(capsys, message)


@pytest.mark.parametrize("change, needle", [
    (_set_keep({"layer1.0.conv1": [0, 1, 99]}), "invalid kept channels for layer1.0.conv1"),
    (_set_keep({"no.such.set": [0]}), "unknown channel sets ['no.such.set']"),
    (_set_keep("all"), "keep 'all' is not a table of channel sets"),
    (_set_keep({}, op="explode"), "is not a drop or prune entry"),
    (lambda d: d.update(surgery="rm -rf"), "surgery is malformed ('rm -rf' is not a list)"),
    (lambda d: d.update(surgery=[{"op": "drop", "name": 3}]), "a drop needs a unit name"),
    (lambda d: d.update(surgery=[{"op": "drop", "name": "layer9.9"}]), "cannot drop ['layer9.9']"),
    (lambda d: d.update(widths=[8, 8]), "widths is malformed"),
    (lambda d: d.pop("widths"), "widths is malformed"),
    (lambda d: d.update(widths={**d["widths"], "layer1.0.conv1": 4}), "is inconsistent"),
    # a file from before the cut history: no legacy path, one sentence
    (lambda d: d.pop("surgery"), "has no cut history"),
])
def test_other_bad_cuts_are_model_file_errors(change, needle, good_file, tmp_path) -> None:
    bad = _forge(good_file, tmp_path / "bad.safetensors", change)
    with pytest.raises(ModelFileError) as raised:
        load_model(bad)
    assert needle in str(raised.value)


def test_a_checkpoint_with_a_negative_index_is_a_checkpoint_error(tmp_path) -> None:
    from leantrain.training.checkpoint import CheckpointError

    desc = architecture(_pruned_model())
    desc["surgery"][0]["keep"]["layer1.0.conv1"][0] = -1
    ckpt = Checkpoint(tmp_path / "checkpoint.json", {"architecture": desc}, {})
    with pytest.raises(CheckpointError, match="not distinct integer indices ≥ 0"):
        ckpt.restore_model(create_model("test_resnet"))


def test_a_saved_input_shape_that_is_not_a_shape_is_refused(tmp_path) -> None:
    model = user_models.PlainCNN()
    from leantrain.structure import prepare

    prepare(model, torch.zeros(1, 3, 32, 32))
    path = save_model(model, tmp_path / "plain.safetensors")
    bad = _forge(path, tmp_path / "bad.safetensors",
                 lambda d: d["arch"].update(input_shape=[3, "x", -1]))
    with pytest.raises(ModelFileError, match=r"input shape \[3, 'x', -1\] is not a list of"):
        load_model(bad, model=user_models.PlainCNN())


# ----------------------------------------------------------------------- 4. mangled files


@pytest.mark.parametrize("record, needle", [
    ("[1, 2, 3]", "not a leantrain architecture (format 'list'"),
    ("{not json", "corrupt architecture record"),
    # nesting past the recursion limit
    ("[" * 100_000 + "]" * 100_000, "corrupt architecture record"),
    ('{"format": 1' + "0" * 5000 + "}", "corrupt architecture record"),  # an int of 5001 digits
    ('"just a string"', "not a leantrain architecture"),
    ("null", "not a leantrain architecture"),
])
def test_an_architecture_record_that_is_not_a_table(record, needle, good_file, tmp_path) -> None:
    bad = _forge(good_file, tmp_path / "bad.safetensors", record)
    for read in (load_model, lambda p: build_architecture(read_model_metadata(p))):
        with pytest.raises(ModelFileError, match=needle.replace("(", r"\(").replace("[", r"\[")):
            read(bad)


@pytest.mark.parametrize("arch", [
    "resnet", ["resnet20"], {"name": 7}, {"name": "no_such_model"}, {"name": "resnet20",
    "num_classes": "10"}, {"name": "resnet20", "num_classes": 1}, {"name": "test_resnet",
    "depth": 3}, {"name": "test_resnet", "kwargs": {"depth": 3}}, {"name": "torchvision:"},
    {"name": ":"}, {"name": "test_resnet", "in_channels": True},
])
def test_a_bad_model_record_is_a_model_file_error(arch, good_file, tmp_path) -> None:
    bad = _forge(good_file, tmp_path / "bad.safetensors", lambda d: d.update(arch=arch))
    with pytest.raises(ModelFileError):
        load_model(bad)


@functools.lru_cache(maxsize=None)
def _pruned_file() -> bytes:
    """The bytes of a saved `_pruned_model` (made once: hypothesis runs many examples)."""
    with tempfile.TemporaryDirectory() as tmp:
        return save_model(_pruned_model(), Path(tmp) / "m.safetensors").read_bytes()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=12,
)
_KEYS = ["format", "arch", "dropped_units", "widths", "surgery"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from([*_KEYS, "arch.name", "arch.kwargs", "arch.num_classes",
                            "surgery.0", "surgery.0.keep", "widths.layer1.0.conv1"]),
       value=_JSON)
def test_fuzzed_records_give_only_model_file_errors(key, value, tmp_path_factory) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    source = tmp / "good.safetensors"
    source.write_bytes(_pruned_file())

    def change(desc: dict[str, Any]) -> None:
        head, _, rest = key.partition(".")
        if not rest:
            desc[head] = value
        elif head == "surgery":
            entry = desc["surgery"][0]
            if rest == "0":
                desc["surgery"][0] = value
            else:
                entry["keep"] = value
        elif head == "widths":
            desc["widths"][rest] = value
        else:
            desc["arch"][rest] = value

    bad = _forge(source, tmp / "bad.safetensors", change)
    try:
        load_model(bad)
    except ModelFileError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 4000),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=3))
def test_fuzzed_bytes_give_only_model_file_errors(cut, flips, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("bytes") / "m.safetensors"
    data = bytearray(_pruned_file())
    for at, mask in flips:
        data[at % len(data)] ^= mask
    if cut:
        del data[len(data) - cut % len(data):]
    path.write_bytes(bytes(data))
    for read in (load_model, read_model_metadata):
        try:
            read(path)
        except ModelFileError:
            pass


def test_a_truncated_header_and_an_empty_file(tmp_path, good_file) -> None:
    data = good_file.read_bytes()
    raws = [b"", data[:4], data[:8], data[:8] + b"{", b"\x08" + b"\0" * 7 + b"[1,2,3] "]
    for i, raw in enumerate(raws):
        path = tmp_path / f"t{i}.safetensors"
        path.write_bytes(raw)
        with pytest.raises(ModelFileError, match="truncated or corrupt"):
            load_model(path)


# ------------------------------------------------------------------- 5. torchvision mnasnet


def test_mnasnet_saves_and_loads(tmp_path) -> None:
    model = create_model("torchvision:mnasnet0_5").eval()
    loaded = load_model(save_model(model, tmp_path / "mnasnet.safetensors")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a checkpoint's weights load the same way
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    fresh = create_model("torchvision:mnasnet0_5")
    ckpt = Checkpoint(tmp_path / "c.json", {"architecture": architecture(model)}, tensors)
    ckpt.restore_model(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)


# ------------------------------------------------------- 6. registry errors as one sentence


def test_a_factory_module_that_raises_at_import_is_one_sentence(tmp_path, monkeypatch,
                                                                capsys) -> None:
    (tmp_path / "broken_at_import.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "broken_factory.py").write_text(
        "def build(num_classes=10):\n    raise KeyError('layers')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as raised:
        create_model("broken_at_import:build")
    assert str(raised.value) == ("importing 'broken_at_import' for model 'broken_at_import:build' "
                                 "raised RuntimeError (no GPU here); fix that module.")
    with pytest.raises(ValueError) as raised:
        create_model("broken_factory:build")
    assert str(raised.value) == ("broken_factory:build raised KeyError ('layers'); fix the factory "
                                 "or its keyword arguments.")
    assert main(["inspect", "broken_factory:build"]) == 2
    _one_line(capsys, "broken_factory:build raised KeyError ('layers'); fix the factory or its "
                      "keyword arguments.")
    with pytest.raises(ValueError, match="broken_factory:build takes no argument depth; check"):
        create_model("broken_factory:build", kwargs={"depth": 3})


@pytest.mark.parametrize("weights", [5, True, "NOPE", [1]])
def test_torchvision_weights_that_are_not_a_name_are_one_sentence(weights) -> None:
    with pytest.raises(ValueError) as raised:
        create_model("torchvision:resnet18", kwargs={"weights": weights})
    assert str(raised.value) == (
        f"torchvision:resnet18 has no pretrained weights {weights!r}; set weights to one of "
        "DEFAULT, IMAGENET1K_V1, or leave it out for random initial weights.")
