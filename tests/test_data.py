"""Tests of leantrain.data: readers, errors, the embedded sample, augmentation, loader, download.

Readers run on small synthetic files written in the real on-disk formats. Tests on the real
data sets run when they are found (``$LEANTRAIN_DATA`` or ``../shared/data`` next to the repo)
and are skipped otherwise. Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from leantrain.data import (
    DataFormatError,
    DataNotFoundError,
    DatasetSpec,
    DownloadError,
    Split,
    TensorLoader,
    crop_at,
    dataset_names,
    download,
    flip_where,
    get_spec,
    load_dataset,
    normalize,
    random_crop,
    random_flip,
    read_cifar10,
    read_idx,
    read_image_folder,
    read_mnist,
    resolve_data_dir,
)

# import_module, not "import leantrain.data.download as dl": the package re-exports the
# function download(), which shadows the submodule's attribute on the package.
dl = importlib.import_module("leantrain.data.download")
formats = importlib.import_module("leantrain.data.formats")

# --------------------------------------------------------------------------------------------
# writers of the real formats
# --------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = True,
                stems: tuple[str, ...] = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": (np.arange(n_train) * 7 % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, key in zip(stems, ("train_x", "train_y", "test_x", "test_y")):
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class Py2Pickler(pickle._Pickler):
    """Writes pickles like the official CIFAR-10 batches (Python 2, numpy 1.x): protocol 2,
    byte strings as BINSTRING (Python 2 ``str``), ``numpy.core.multiarray._reconstruct``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        if obj is _np_reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_cifar(folder: Path, n: int = 10, py2: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Six batches of ``n`` images each; returns all (data, labels) in file order."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    datas, labels = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = [int(v) for v in (np.arange(n) + i) % 10]
        batch = {b"batch_label": f"batch {i}".encode(), b"labels": lab, b"data": data,
                 b"filenames": [f"img{j}.png".encode() for j in range(n)]}
        blob = py2_pickle(batch) if py2 else pickle.dumps(batch, protocol=2)
        (folder / name).write_bytes(blob)
        datas.append(data)
        labels.append(lab)
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane"] * 10}))
    return np.concatenate(datas), np.concatenate(labels)


def write_image_folder(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    (root / "ant").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "ant" / "a1.JPEG", quality=95)
    Image.new("RGB", (20, 20), (0, 0, 255)).save(root / "ant" / "a2.JPEG", quality=95)
    Image.new("L", (32, 48), 128).save(root / "cat" / "c1.JPEG", quality=95)  # grayscale
    (root / "cat" / "notes.txt").write_text("not an image")


# --------------------------------------------------------------------------------------------
# IDX / MNIST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_int32_big_endian(tmp_path):
    vals = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "i.idx"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + vals.tobytes())
    np.testing.assert_array_equal(read_idx(path), [1, -2, 70000])


def test_read_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-100])
    with pytest.raises(DataFormatError, match="truncated") as e:
        read_idx(path)
    assert str(path) in str(e.value) and "download" in str(e.value)


def test_read_idx_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataFormatError, match="magic number") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("gz", [True, False])
def test_read_mnist(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    train, test = read_mnist(tmp_path)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.images.is_contiguous()
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train_x"])
    np.testing.assert_array_equal(train.labels.numpy(), arrays["train_y"])  # file order kept
    np.testing.assert_array_equal(test.labels.numpy(), arrays["test_y"])


def test_read_mnist_mismatched_counts(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(29, np.uint8))))
    with pytest.raises(DataFormatError, match="30 images but .* 29 labels"):
        read_mnist(tmp_path)


def test_read_mnist_missing_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte") as e:
        read_mnist(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_load_dataset_mnist_layouts(tmp_path):
    # torchvision layout (MNIST/raw), uncompressed, with the dotted original file names.
    write_mnist(tmp_path / "MNIST" / "raw", gz=False, stems=(
        "train-images.idx3-ubyte", "train-labels.idx1-ubyte",
        "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"))
    train, test, spec = load_dataset("mnist", tmp_path)
    assert len(train) == 30 and len(test) == 20 and spec.name == "mnist"


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("py2", [True, False], ids=["official-py2-style", "python3-protocol2"])
def test_read_cifar10(tmp_path, py2):
    data, labels = write_cifar(tmp_path, py2=py2)
    if py2:  # the writer must produce what the official files contain
        import pickletools
        ops = {arg for op, arg, _ in pickletools.genops((tmp_path / "data_batch_1").read_bytes())
               if op.name == "GLOBAL"}
        assert ops == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    train, test = read_cifar10(tmp_path)
    assert train.images.shape == (50, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    # Row layout: 1024 R, then 1024 G, then 1024 B, row-major.
    np.testing.assert_array_equal(train.images[7, 0].numpy(), data[7, :1024].reshape(32, 32))
    np.testing.assert_array_equal(train.images[7, 2].numpy(), data[7, 2048:].reshape(32, 32))
    np.testing.assert_array_equal(train.labels.numpy(), labels[:50])  # batch 1..5 order
    np.testing.assert_array_equal(test.images.reshape(10, -1).numpy(), data[50:])


def test_cifar_corrupt_pickle(tmp_path):
    write_cifar(tmp_path)
    blob = (tmp_path / "data_batch_3").read_bytes()
    (tmp_path / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated pickle") as e:
        read_cifar10(tmp_path)
    assert "data_batch_3" in str(e.value)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    (tmp_path / "data_batch_2").write_bytes(evil)
    with pytest.raises(DataFormatError, match="refused") as e:
        read_cifar10(tmp_path)
    assert "data_batch_2" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_cifar_wrong_shape(tmp_path):
    write_cifar(tmp_path)
    bad = {b"data": np.zeros((10, 3000), np.uint8), b"labels": list(range(10))}
    (tmp_path / "data_batch_4").write_bytes(py2_pickle(bad))
    with pytest.raises(DataFormatError, match="3072") as e:
        read_cifar10(tmp_path)
    assert "data_batch_4" in str(e.value) and "(10, 3000)" in str(e.value)


def test_cifar_label_count_mismatch(tmp_path):
    write_cifar(tmp_path)
    bad = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(9))}
    (tmp_path / "test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(DataFormatError, match="10 images but 9 labels"):
        read_cifar10(tmp_path)


def test_cifar_missing_folder_message(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        read_cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert "no CIFAR-10 batches" in msg and "nowhere" in msg
    assert "LEANTRAIN_DATA" in msg and "--data-dir" in msg


def test_load_dataset_cifar_layouts_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("LEANTRAIN_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="no CIFAR-10 batches in") as e:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(e.value) and "--data-dir" in str(e.value)
    write_cifar(tmp_path / "cifar-10-batches-py")  # directly under the root
    train, test, spec = load_dataset("cifar10", tmp_path)
    assert train.images.shape == (50, 3, 32, 32) and spec.augment == "crop_flip"
    monkeypatch.setenv("LEANTRAIN_DATA", str(tmp_path))  # found through the env variable
    assert len(load_dataset("cifar10")[1]) == 10


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def test_read_image_folder(tmp_path):
    write_image_folder(tmp_path / "train")
    split, classes = read_image_folder(tmp_path / "train", 16, tmp_path / "cache")
    assert classes == ["ant", "cat"]
    assert split.images.shape == (3, 3, 16, 16) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [0, 0, 1]
    red = split.images[0].float().mean((1, 2))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    gray = split.images[2].float()  # grayscale became RGB with equal channels
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    assert abs(gray.mean().item() - 128) < 3
    caches = list((tmp_path / "cache").glob("*.npz"))
    assert len(caches) == 1


def test_read_image_folder_uses_cache(tmp_path, monkeypatch):
    folder = tmp_path / "train"
    write_image_folder(folder)
    first, _ = read_image_folder(folder, 12, tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(formats, "_decode_image", fail)
    again, classes = read_image_folder(folder, 12, tmp_path / "cache")
    assert torch.equal(first.images, again.images) and classes == ["ant", "cat"]
    # A changed file list is a different cache key: it decodes again.
    Image.new("RGB", (20, 20)).save(folder / "cat" / "c2.JPEG")
    with pytest.raises(AssertionError, match="decoded although cached"):
        read_image_folder(folder, 12, tmp_path / "cache")


def test_read_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="no image folder"):
        read_image_folder(tmp_path / "missing", 16, None)
    write_image_folder(tmp_path / "train")
    (tmp_path / "train" / "cat" / "broken.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataFormatError, match="broken.JPEG"):
        read_image_folder(tmp_path / "train", 16, None)


def test_load_dataset_imagenette_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTRAIN_CACHE", str(tmp_path / "cache"))
    for split in ("train", "val"):
        write_image_folder(tmp_path / "imagenette" / "imagenette2-160" / split)
    train, test, spec = load_dataset("imagenette", tmp_path, image_size=24)
    assert train.images.shape == (3, 3, 24, 24) and len(test) == 3
    assert spec.image_size == 24 and spec.crop_pad == 3 and spec.flip


# --------------------------------------------------------------------------------------------
# specs, names, subsets, the embedded sample
# --------------------------------------------------------------------------------------------


def test_names_and_specs():
    assert dataset_names() == ["cifar10", "imagenette", "mnist", "mnist-sample"]
    cifar = get_spec("cifar10")
    assert (cifar.num_classes, cifar.in_channels, cifar.image_size) == (10, 3, 32)
    assert cifar.crop_pad == 4 and cifar.flip and len(cifar.mean) == 3
    mnist = get_spec("mnist")
    assert mnist.augment == "crop" and mnist.crop_pad == 2 and not mnist.flip
    assert mnist.mean == (0.1307,)
    assert get_spec("imagenette").crop_pad == 8


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'svhn'; choose one of: cifar10, imag"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="unknown data set"):
        get_spec("x")


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTRAIN_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("LEANTRAIN_DATA")
    assert "leantrain" in str(resolve_data_dir(None))


def test_embedded_sample_loads_without_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANTRAIN_DATA", str(tmp_path / "empty"))  # must not be consulted
    train, test, spec = load_dataset("mnist-sample")
    assert spec.name == "mnist-sample" and spec.in_channels == 1
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert torch.bincount(train.labels).tolist() == [600] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert abs(train.images.float().mean().item() / 255 - 0.13) < 0.01
    folder = resources.files("leantrain.data").joinpath("sample")
    assert folder.joinpath("README.md").is_file()
    total = sum(f.stat().st_size for f in Path(str(folder)).iterdir())
    assert total < 1_500_000


def test_subsets_balanced_and_seeded():
    tr, te, _ = load_dataset("mnist-sample", train_subset=1000, test_subset=95, seed=3)
    assert torch.bincount(tr.labels).tolist() == [100] * 10
    counts = torch.bincount(te.labels, minlength=10)
    assert counts.sum() == 95 and counts.min() >= 9 and counts.max() <= 10
    tr2, te2, _ = load_dataset("mnist-sample", train_subset=1000, test_subset=95, seed=3)
    assert torch.equal(tr.images, tr2.images) and torch.equal(te.labels, te2.labels)
    tr3, _, _ = load_dataset("mnist-sample", train_subset=1000, seed=4)
    assert not torch.equal(tr.images, tr3.images)
    with pytest.raises(ValueError, match="train_subset=7000"):
        load_dataset("mnist-sample", train_subset=7000)


def test_image_size_resizes():
    tr, te, spec = load_dataset("mnist-sample", train_subset=20, test_subset=10, image_size=32)
    assert tr.images.shape == (20, 1, 32, 32) and te.images.shape == (10, 1, 32, 32)
    assert spec.image_size == 32 and tr.images.dtype == torch.uint8


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_flip_twice_is_identity():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    once = random_flip(x, _gen(1))
    assert not torch.equal(once, x)
    assert torch.equal(random_flip(once, _gen(1)), x)
    mask = torch.tensor([True, False] * 8)
    flipped = flip_where(x, mask)
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_matches_pad_and_slice(mode, dtype):
    x = torch.randint(0, 256, (12, 3, 10, 9)).to(dtype)
    dy, dx = torch.randint(0, 7, (12,)), torch.randint(0, 7, (12,))
    out = crop_at(x, dy, dx, 3, mode)
    assert out.shape == x.shape and out.dtype == dtype
    padded = F.pad(x.float(), (3,) * 4, mode="constant" if mode == "zeros" else "reflect")
    for i in range(12):
        ref = padded[i, :, dy[i]:dy[i] + 10, dx[i]:dx[i] + 9]
        assert torch.equal(out[i].float(), ref)
    assert torch.equal(crop_at(x, torch.full((12,), 3), torch.full((12,), 3), 3, mode), x)


def test_random_crop_shape_and_determinism():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop(x, 4, _gen(0))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, random_crop(x, 4, _gen(0)))
    assert not torch.equal(a, random_crop(x, 4, _gen(1)))
    assert torch.equal(random_crop(x, 0, _gen(0)), x)


def test_normalize():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 2, 1, 3)
    out = normalize(x, (0.2, 0.5), (0.5, 0.25))
    assert out.dtype == torch.float32
    expect0 = (torch.tensor([0.0, 0.2, 1.0]) - 0.2) / 0.5
    expect1 = (torch.tensor([0.0, 0.2, 1.0]) - 0.5) / 0.25
    assert torch.allclose(out[0, 0, 0], expect0, atol=1e-6)
    assert torch.allclose(out[1, 1, 0], expect1, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        normalize(x, (0.1,), (0.2,))


# --------------------------------------------------------------------------------------------
# TensorLoader
# --------------------------------------------------------------------------------------------


def _id_split(n: int = 100, size: int = 12) -> tuple[Split, DatasetSpec]:
    """Image i is constant i (so its center pixel survives crops); label i % 10."""
    ids = torch.arange(n, dtype=torch.uint8)
    images = ids.view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    spec = DatasetSpec("toy", 10, 3, size, (0.0, 0.0, 0.0), (1 / 255,) * 3, "crop_flip")
    return Split(images, torch.arange(n) % 10), spec


def _ids(batch: torch.Tensor) -> torch.Tensor:
    # With mean 0 and std 1/255 the normalised value equals the uint8 value.
    h = batch.shape[-1] // 2
    return batch[:, 0, h, h].round().long()


def test_loader_lengths_and_eval_order():
    split, spec = _id_split(100)
    assert len(TensorLoader(split, spec, 32, train=True)) == 3  # drop_last by default
    ev = TensorLoader(split, spec, 32, train=False)
    assert len(ev) == 4
    batches = list(ev.epoch(0))
    assert [b[0].shape[0] for b in batches] == [32, 32, 32, 4]  # last partial batch kept
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, split.images.float())  # fixed order, no augmentation
    assert torch.equal(torch.cat([b[1] for b in batches]), split.labels)


def test_loader_train_batches_are_consistent_permutations():
    split, spec = _id_split(100)
    loader = TensorLoader(split, spec, 25, train=True, drop_last=False)
    seen = []
    for x, y in loader.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        ids = _ids(x)
        assert torch.equal(y, ids % 10)  # labels travel with their images
        seen.append(ids)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(100))  # every image exactly once
    assert not torch.equal(seen, torch.arange(100))  # shuffled


def test_loader_augments_in_training():
    split, spec = _id_split(64, size=16)
    x = torch.cat([b[0] for b in TensorLoader(split, spec, 64, train=True).epoch(0)])
    border = (x == 0).flatten(1).any(1)  # zero padding shows up as black borders
    assert border.float().mean() > 0.5


def test_loader_seeds_epochs_and_resume():
    split, spec = _id_split(100)

    def run(loader, epoch, start=0):
        return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start)]

    a = TensorLoader(split, spec, 10, train=True, seed=7)
    b = TensorLoader(split, spec, 10, train=True, seed=7)
    e3 = run(a, 3)
    run(b, 0)
    run(b, 1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(e3, run(b, 3)))  # no replay needed
    assert all(torch.equal(p[0], q[0]) for p, q in zip(e3, run(a, 3)))
    e4 = run(a, 4)
    assert not torch.equal(torch.cat([p[1] for p in e3]), torch.cat([p[1] for p in e4]))
    resumed = run(a, 3, start=4)
    assert len(resumed) == len(e3) - 4
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(resumed, e3[4:]))
    other = TensorLoader(split, spec, 10, train=True, seed=8)
    assert not torch.equal(run(other, 3)[0][1], e3[0][1])
    assert run(a, 3, start=len(a)) == []
    with pytest.raises(ValueError, match="start_batch"):
        a.epoch(0, start_batch=len(a) + 1)


def test_loader_channels_last_and_checks():
    split, spec = _id_split(20)
    x, _ = next(TensorLoader(split, spec, 8, train=True, channels_last=True).epoch(0))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels"):
        TensorLoader(split, get_spec("mnist"), 8, train=True)
    with pytest.raises(ValueError, match="uint8"):
        TensorLoader(Split(split.images.float(), split.labels), spec, 8, train=True)


def test_loader_on_sample_matches_spec_normalisation():
    train, test, spec = load_dataset("mnist-sample", test_subset=200)
    x, y = next(TensorLoader(test, spec, 200, train=False).epoch(0))
    assert x.shape == (200, 1, 28, 28) and y.shape == (200,)
    assert abs(x.mean().item()) < 0.15 and 0.8 < x.std().item() < 1.2


# --------------------------------------------------------------------------------------------
# download (never touches the network)
# --------------------------------------------------------------------------------------------


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_download_offline_error(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DownloadError) as e:
        download("cifar10", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "could not download" in msg
    assert "cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in msg
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing half-written
    with pytest.raises(DownloadError, match="mnist"):
        load_dataset("mnist", tmp_path, download=True)
    download("mnist-sample", tmp_path)  # embedded: nothing to fetch


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _FakeResponse(b"not it"))
    with pytest.raises(DownloadError, match="md5"):
        download("mnist", tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_download_extracts_and_loads(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar(src / "cifar-10-batches-py")
    archive = _tar_gz({f"cifar-10-batches-py/{p.name}": p.read_bytes()
                       for p in (src / "cifar-10-batches-py").iterdir()})
    res = dl._Resource("https://example.invalid/c.tar.gz", hashlib.md5(archive).hexdigest(),
                       "cifar-10-python.tar.gz")
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (res,))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _FakeResponse(archive))
    root = tmp_path / "root"
    train, test, _ = load_dataset("cifar10", root, download=True)
    assert len(train) == 50 and len(test) == 10
    assert not (root / "cifar10" / "cifar-10-python.tar.gz").exists()
    assert [p.name for p in (root / "cifar10").iterdir()] == ["cifar-10-batches-py"]


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "link"])
def test_safe_extract_refuses_unsafe_members(tmp_path, bad):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        if bad == "link":
            info = tarfile.TarInfo("data/link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(bad)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    dest = tmp_path / "out"
    with pytest.raises(DataFormatError, match="refusing to extract"):
        dl.safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []


# --------------------------------------------------------------------------------------------
# the real data sets (skipped where they are not available)
# --------------------------------------------------------------------------------------------


def _real_root(marker: str) -> Path | None:
    candidates = []
    if os.environ.get("LEANTRAIN_DATA"):
        candidates.append(Path(os.environ["LEANTRAIN_DATA"]))
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")  # ../shared/data
    for root in candidates:
        if (root / marker).exists():
            return root
    return None


MNIST_ROOT = _real_root("mnist/raw/train-images-idx3-ubyte.gz")
CIFAR_ROOT = _real_root("cifar10/cifar-10-batches-py/data_batch_1")
IMAGENETTE_ROOT = _real_root("imagenette/imagenette2-64/val")


@pytest.mark.skipif(MNIST_ROOT is None, reason="real MNIST not available")
def test_real_mnist():
    train, test, spec = load_dataset("mnist", MNIST_ROOT)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert abs(train.images.float().mean().item() / 255 - 0.1307) < 5e-4
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                    974, 1009]


@pytest.mark.skipif(CIFAR_ROOT is None, reason="real CIFAR-10 not available")
def test_real_cifar10():
    train, test, spec = load_dataset("cifar10", CIFAR_ROOT)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # official order
    mean = (train.images[:5000].float() / 255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(spec.mean), atol=0.01)
    sub, _, _ = load_dataset("cifar10", CIFAR_ROOT, train_subset=10_000, seed=0)
    assert torch.bincount(sub.labels).tolist() == [1000] * 10


@pytest.mark.skipif(IMAGENETTE_ROOT is None, reason="real Imagenette not available")
def test_real_imagenette_val(tmp_path):
    # Only the val split (3,925 JPEGs, ~2 s); the full data set is in the slow test below.
    folder = IMAGENETTE_ROOT / "imagenette" / "imagenette2-64" / "val"
    split, classes = read_image_folder(folder, 32, tmp_path)
    assert split.images.shape == (3925, 3, 32, 32)
    assert classes[0] == "n01440764" and classes[-1] == "n03888257"
    assert torch.bincount(split.labels).tolist() == [387, 395, 357, 386, 409, 394, 389, 419, 399,
                                                     390]
    again, _ = read_image_folder(folder, 32, tmp_path)  # from the cache
    assert torch.equal(again.images, split.images)


@pytest.mark.slow
@pytest.mark.skipif(IMAGENETTE_ROOT is None, reason="real Imagenette not available")
def test_real_imagenette_full(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTRAIN_CACHE", str(tmp_path))
    train, test, spec = load_dataset("imagenette", IMAGENETTE_ROOT)
    assert train.images.shape == (9469, 3, 64, 64) and test.images.shape == (3925, 3, 64, 64)
    mean = (train.images.float() / 255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(spec.mean), atol=0.005)
