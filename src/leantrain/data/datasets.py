"""The data sets leantrain knows, where it finds them on disk, and how it loads them.

`load_dataset` returns whole splits as uint8 tensors plus a `DatasetSpec` (classes, channels,
size, normalisation, augmentation). Files are looked up under a data root (``--data-dir``, else
``$LEANTRAIN_DATA``, else the user cache folder) in the layout of the official archives;
``mnist-sample``, a small class-balanced MNIST subset, ships inside the package so that the
quick-start and the tests work without any download.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .formats import (
    MNIST_FILES,
    DataNotFoundError,
    Split,
    _maybe_gunzip,
    mnist_split_from_arrays,
    parse_idx,
    read_cifar10,
    read_image_folder,
    read_mnist,
)

__all__ = [
    "DatasetSpec",
    "Split",
    "SubsetWarning",
    "dataset_names",
    "get_spec",
    "load_dataset",
    "resolve_data_dir",
    "resolve_cache_dir",
]


class SubsetWarning(UserWarning):
    """A subset has fewer images than the data set has classes, so some classes are left out."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a loader need to know about a data set.

    Attributes:
        name: data set name, as accepted by `load_dataset`.
        num_classes: number of classes.
        in_channels: image channels (1 for MNIST, 3 otherwise).
        image_size: side length of the (square) images, in pixels.
        mean: per-channel mean on the 0..1 scale, for normalisation.
        std: per-channel standard deviation on the 0..1 scale.
        augment: ``"crop_flip"`` (random crop with ``image_size // 8`` px zero padding, i.e. 4 for
            CIFAR-10, plus horizontal flip), ``"crop"`` (2 px padded random crop, no flip: digits
            are not mirror-symmetric), or ``"none"``.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str

    @property
    def crop_pad(self) -> int:
        """Padding in pixels of the training random crop (0 without cropping)."""
        if self.augment == "crop_flip":
            return max(1, self.image_size // 8)
        if self.augment == "crop":
            return 2
        return 0

    @property
    def flip(self) -> bool:
        """Whether training flips images horizontally."""
        return self.augment == "crop_flip"


# Normalisation constants: MNIST and CIFAR-10 use the usual published values of the official
# training sets; Imagenette uses those of its train split (measured on the 64 px copy).
_MNIST = DatasetSpec("mnist", 10, 1, 28, (0.1307,), (0.3081,), "crop")
_SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip"
    ),
    "imagenette": DatasetSpec(
        "imagenette", 10, 3, 64, (0.4623, 0.4578, 0.4303), (0.2727, 0.2706, 0.2925), "crop_flip"
    ),
    "mnist": _MNIST,
    "mnist-sample": replace(_MNIST, name="mnist-sample"),
}

# Imagenette folder names by nominal resolution (short side in px); the full-size one last.
_IMAGENETTE_FOLDERS: tuple[tuple[str, float], ...] = (
    ("imagenette2-64", 64),
    ("imagenette2-160", 160),
    ("imagenette2-320", 320),
    ("imagenette2", float("inf")),
)


def dataset_names() -> list[str]:
    """Names accepted by `load_dataset` and `get_spec`, sorted."""
    return sorted(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """Look up the spec of a data set.

    Args:
        name: one of `dataset_names`.

    Returns:
        Its `DatasetSpec` at the native image size.

    Raises:
        ValueError: unknown name.
    """
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; choose one of: {', '.join(dataset_names())}"
        ) from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """Pick the data root: ``data_dir`` if given, else ``$LEANTRAIN_DATA``, else the user cache.

    Args:
        data_dir: an explicit folder (e.g. from ``--data-dir``) or None.

    Returns:
        The folder (it may not exist yet).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("LEANTRAIN_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("leantrain"))


def resolve_cache_dir() -> Path:
    """Folder for decoded-image caches: ``$LEANTRAIN_CACHE``, else ``<user cache>/decoded``.

    Kept apart from the data root because that is often read-only (a shared data folder).
    """
    env = os.environ.get("LEANTRAIN_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("leantrain")) / "decoded"


# --------------------------------------------------------------------------------------------
# finding the files
# --------------------------------------------------------------------------------------------


def _has_mnist(folder: Path) -> bool:
    return any(
        (folder / f"{stem}{ext}").is_file()
        for stem in MNIST_FILES[("train", "images")]
        for ext in (".gz", "")
    )


def _find_mnist(root: Path) -> Path | None:
    candidates = (
        root / "mnist" / "raw", root / "MNIST" / "raw", root / "mnist", root / "MNIST", root
    )
    for folder in candidates:
        if _has_mnist(folder):
            return folder
    return None


def _find_cifar10(root: Path) -> Path | None:
    for folder in (root / "cifar10" / "cifar-10-batches-py", root / "cifar-10-batches-py"):
        if folder.is_dir():
            return folder
    return None


def _find_imagenette(root: Path, image_size: int) -> Path | None:
    found = []
    for parent in (root / "imagenette", root):
        for folder_name, nominal in _IMAGENETTE_FOLDERS:
            folder = parent / folder_name
            if (folder / "train").is_dir() and (folder / "val").is_dir():
                found.append((nominal, folder))
    if not found:
        return None
    # The smallest copy that is at least as large as requested decodes fastest without
    # upsampling; if none is large enough, the largest there is.
    large_enough = [f for f in found if f[0] >= image_size]
    if large_enough:
        return min(large_enough, key=lambda f: f[0])[1]
    return max(found, key=lambda f: f[0])[1]


def _not_found(name: str, root: Path) -> DataNotFoundError:
    where = {
        "mnist": ("no MNIST files", f"put the four IDX files (train-images-idx3-ubyte.gz, …) in "
                                    f"{root / 'mnist' / 'raw'}"),
        "cifar10": ("no CIFAR-10 batches", f"put cifar-10-batches-py there (as "
                                          f"{root / 'cifar10' / 'cifar-10-batches-py'})"),
        "imagenette": ("no Imagenette", f"put imagenette2-64 (or imagenette2-160/-320, with train/ "
                                        f"and val/) in {root / 'imagenette'}"),
    }[name]
    return DataNotFoundError(
        f"{where[0]} in {root}: {where[1]}, set LEANTRAIN_DATA, or pass --data-dir "
        "(or download=True to fetch it)."
    )


# --------------------------------------------------------------------------------------------
# the embedded sample
# --------------------------------------------------------------------------------------------

SAMPLE_FILES = {key: f"{stems[0]}.gz" for key, stems in MNIST_FILES.items()}


def _load_mnist_sample() -> tuple[Split, Split]:
    # Read through importlib.resources, so it also works from a zipped install.
    folder = resources.files("leantrain.data").joinpath("sample")
    splits = []
    for split in ("train", "test"):
        arrays = []
        for kind in ("images", "labels"):
            res = folder.joinpath(SAMPLE_FILES[(split, kind)])
            name = f"leantrain/data/sample/{SAMPLE_FILES[(split, kind)]}"
            if not res.is_file():
                raise DataNotFoundError(
                    f"the embedded MNIST sample file {name} is missing from the installed package; "
                    "reinstall leantrain (or run scripts/make_mnist_sample.py in a checkout)."
                )
            arrays.append(parse_idx(_maybe_gunzip(res.read_bytes(), name), name))
        splits.append(mnist_split_from_arrays(arrays[0], arrays[1], *(
            f"leantrain/data/sample/{SAMPLE_FILES[(split, k)]}" for k in ("images", "labels"))))
    return splits[0], splits[1]


# --------------------------------------------------------------------------------------------
# subsets and resizing
# --------------------------------------------------------------------------------------------


def balanced_subset_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` indices, as evenly over the classes as they allow, at random within each class.

    Classes are visited round-robin (each class's 1st random pick, then each one's 2nd, …), so
    every class gets ``n // k`` or one more (random which ones) unless it runs out of images.

    Args:
        labels: the labels of all items.
        n: how many to pick (``0 < n <= len(labels)``).
        rng: the random source; the same seed picks the same items.

    Returns:
        The picked indices, ascending (the data's own order is kept).
    """
    total = labels.shape[0]
    perm = rng.permutation(total)
    permuted = labels[perm]
    by_class = np.argsort(permuted, kind="stable")  # grouped by class, random order inside
    sorted_labels = permuted[by_class]
    rank = np.empty(total, dtype=np.int64)
    rank[by_class] = np.arange(total) - np.searchsorted(sorted_labels, sorted_labels, side="left")
    pick = np.lexsort((np.arange(total), rank))[:n]  # by rank, ties in random (permuted) order
    return np.sort(perm[pick])


def _subset(
    split: Split, n: int | None, rng: np.random.Generator, what: str, spec: DatasetSpec
) -> Split:
    total, name, k = len(split), spec.name, spec.num_classes
    if n is None or n == total:
        return split
    if not 0 < n <= total:
        raise ValueError(
            f"{what}={n} is out of range: {name} has {total} images in that split; choose 1 to "
            f"{total}, or leave {what} unset for the whole split."
        )
    if n < k:  # one image per class picked: the other classes are simply absent, say so
        use = "trained on" if what == "train_subset" else "tested"
        warnings.warn(
            f"{what}={n} is smaller than {name}'s {k} classes, so {k - n} of them are never "
            f"{use}; use {what} ≥ {k}.", SubsetWarning, stacklevel=3,
        )
    idx = torch.from_numpy(balanced_subset_indices(split.labels.numpy(), n, rng))
    return Split(split.images[idx].contiguous(), split.labels[idx].contiguous())


def _resize(split: Split, size: int) -> Split:
    images = split.images
    if images.shape[-1] == size and images.shape[-2] == size:
        return split
    shape = (images.shape[0], images.shape[1], size, size)
    try:
        out = torch.empty(shape, dtype=torch.uint8)
        # In chunks: the float copy costs 4 bytes a pixel, only for 4096 images at a time.
        for lo in range(0, images.shape[0], 4096):
            chunk = images[lo:lo + 4096].to(torch.float32)
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)
            out[lo:lo + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    except RuntimeError as e:  # torch's allocator: "DefaultCPUAllocator: can't allocate memory"
        if "alloc" not in str(e):
            raise
        need = int(np.prod(shape)) / 2**30
        raise ValueError(
            f"image_size={size} needs {need:,.1f} GiB for {shape[0]} images (and more while "
            "resizing), more memory than this machine can give; choose a smaller image size."
        ) from None
    return Split(out, split.labels)


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> tuple[Split, Split, DatasetSpec]:
    """Load the train and test splits of a data set as uint8 tensors.

    Args:
        name: one of `dataset_names` (``"mnist-sample"`` is embedded and ignores ``data_dir``).
        data_dir: data root; see `resolve_data_dir`.
        train_subset: keep only this many training images, class-balanced and chosen by ``seed``
            (same seed, same images).
        test_subset: the same for the test split (Imagenette: its val split).
        image_size: resize to this side length; Imagenette is decoded at it (default 64),
            MNIST/CIFAR-10 are resized (bilinear, antialiased) only if it differs from native.
        seed: selects the subsets.
        download: fetch missing files from the official sources instead of failing.

    Returns:
        ``(train, test, spec)``; ``spec.image_size`` is the size actually returned.

    Raises:
        ValueError: unknown name, or a subset larger than the split.
        DataNotFoundError: files missing (and ``download`` is False); the message says where
            to put them.
        DataFormatError: a file is truncated or corrupt.
    """
    spec = get_spec(name)
    size = spec.image_size if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if seed < 0:  # numpy's generators refuse it with "expected non-negative integer"
        raise ValueError(f"seed must be a whole number ≥ 0, got {seed}")

    if name == "mnist-sample":
        train, test = _load_mnist_sample()
    else:
        root = resolve_data_dir(data_dir)

        def locate() -> Path | None:
            if name == "mnist":
                return _find_mnist(root)
            if name == "cifar10":
                return _find_cifar10(root)
            return _find_imagenette(root, size)

        folder = locate()
        if folder is None and download:
            from .download import download as fetch

            fetch(name, root)
            folder = locate()
        if folder is None:
            raise _not_found(name, root)
        if name == "mnist":
            train, test = read_mnist(folder)
        elif name == "cifar10":
            train, test = read_cifar10(folder)
        else:
            cache = resolve_cache_dir()
            train, classes = read_image_folder(folder / "train", size, cache)
            test, val_classes = read_image_folder(folder / "val", size, cache)
            if classes != val_classes:
                raise DataNotFoundError(
                    f"{folder}: train/ and val/ have different class folders "
                    f"({len(classes)} vs {len(val_classes)}); restore the missing ones."
                )

    train = _subset(train, train_subset, np.random.default_rng([seed, 0]), "train_subset", spec)
    test = _subset(test, test_subset, np.random.default_rng([seed, 1]), "test_subset", spec)
    if size != spec.image_size or train.images.shape[-1] != size:
        train, test = _resize(train, size), _resize(test, size)
        spec = replace(spec, image_size=size)
    return train, test, spec
