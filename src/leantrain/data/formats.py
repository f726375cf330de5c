"""Pure readers for the on-disk formats of MNIST (IDX), CIFAR-10 (pickles) and ImageFolder trees.

Everything here turns files into uint8 ``N×C×H×W`` tensors plus int64 labels, and nothing else:
no normalisation, no augmentation, no downloading. Every problem with a file is reported as a
`DataFormatError` (a ``ValueError``) whose message names the file, says what is wrong with it and
how to fix it, so a user with a truncated download knows at once what to delete and re-fetch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_atomic

__all__ = [
    "DataFormatError",
    "DataNotFoundError",
    "Split",
    "parse_idx",
    "read_idx",
    "read_mnist",
    "read_cifar10",
    "read_image_folder",
    "IMAGE_EXTENSIONS",
    "MNIST_FILES",
]


class DataFormatError(ValueError):
    """A data file exists but is truncated, corrupt, or has the wrong layout."""


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not where the loader looks for them."""


@dataclass
class Split:
    """One split of a data set, held whole in memory.

    Attributes:
        images: uint8 tensor ``N×C×H×W``, contiguous.
        labels: int64 tensor ``N``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------------------------
# IDX (MNIST)
# --------------------------------------------------------------------------------------------

# IDX type codes -> numpy dtypes; all multi-byte types are big-endian in the format.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The official MNIST file names, (split, kind) -> stems tried in order. The originals
# were distributed as "train-images-idx3-ubyte"; some mirrors unpack to "train-images.idx3-ubyte".
MNIST_FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file.

    Args:
        data: the whole file content.
        name: how to name the file in error messages.

    Returns:
        The array, in native byte order, with the shape stored in the header.

    Raises:
        DataFormatError: wrong magic number, unknown type code, or a size that does not
            match the header (truncated or padded file).
    """
    if len(data) < 4:
        raise DataFormatError(
            f"{name} is not an IDX file: it has only {len(data)} bytes; re-download it."
        )
    if data[0] != 0 or data[1] != 0:
        raise DataFormatError(
            f"{name} is not an IDX file: its magic number starts with {data[:2].hex()} instead "
            "of 0000; re-download it (a gzipped file must end in .gz)."
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise DataFormatError(
            f"{name} has an unknown IDX type code 0x{type_code:02x}; re-download it."
        )
    if ndim == 0:
        raise DataFormatError(f"{name} declares 0 dimensions in its IDX header; re-download it.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(
            f"{name} is truncated inside its IDX header ({len(data)} bytes); re-download it."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DataFormatError(
            f"{name} is {problem}: the header promises shape {shape} ({expected:,} bytes) but the "
            f"file has {len(data):,} bytes; delete it and download it again."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and writable memory, so torch.from_numpy can share it.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzipped (by content, whatever its name) or not.

    Args:
        path: the file.

    Returns:
        The stored array.

    Raises:
        DataFormatError: the file is corrupt, truncated, or not IDX.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    raw = path.read_bytes()
    return parse_idx(_maybe_gunzip(raw, str(path)), str(path))


def _maybe_gunzip(raw: bytes, name: str) -> bytes:
    # Decide by the gzip magic, not the suffix: mirrors sometimes ship gzipped files without .gz.
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataFormatError(
            f"{name} is a corrupt or truncated gzip file ({exc}); delete it and download it again."
        ) from None


def _find_mnist_file(root: Path, split: str, kind: str) -> Path:
    for stem in MNIST_FILES[(split, kind)]:
        for candidate in (root / f"{stem}.gz", root / stem):
            if candidate.is_file():
                return candidate
    raise DataNotFoundError(
        f"no MNIST {split} {kind} file ({MNIST_FILES[(split, kind)][0]}[.gz]) in {root}: put the "
        "four MNIST IDX files there, set LEANTRAIN_DATA, or pass --data-dir."
    )


def mnist_split_from_arrays(
    images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str
) -> Split:
    """Check MNIST image/label arrays against each other and wrap them as a `Split`.

    Args:
        images: ``N×28×28`` uint8 array from an idx3 file.
        labels: ``N`` uint8 array from an idx1 file.
        images_name: file name for error messages.
        labels_name: file name for error messages.

    Returns:
        The split, images as ``N×1×28×28``.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(
            f"{images_name} should hold uint8 images N×H×W but holds {images.dtype} of shape "
            f"{images.shape}; is it a label file? Re-download it."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataFormatError(
            f"{labels_name} should hold uint8 labels of shape N but holds {labels.dtype} of shape "
            f"{labels.shape}; is it an image file? Re-download it."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{images_name} has {images.shape[0]} images but {labels_name} has "
            f"{labels.shape[0]} labels; one of them is from another release, re-download both."
        )
    if labels.size and labels.max() > 9:
        raise DataFormatError(
            f"{labels_name} has label {int(labels.max())}, but MNIST labels are 0..9; "
            "re-download it."
        )
    return Split(
        images=torch.from_numpy(np.ascontiguousarray(images[:, None])),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


def read_mnist(root: Path) -> tuple[Split, Split]:
    """Read the four MNIST IDX files (gzipped or not) from one folder.

    Args:
        root: the folder holding ``train-images-idx3-ubyte[.gz]`` and the three others.

    Returns:
        ``(train, test)`` with images ``N×1×28×28`` uint8, in the files' order.

    Raises:
        DataNotFoundError: a file is missing.
        DataFormatError: a file is corrupt, or images and labels do not match.
    """
    root = Path(root)
    splits = []
    for split in ("train", "test"):
        img_path = _find_mnist_file(root, split, "images")
        lbl_path = _find_mnist_file(root, split, "labels")
        splits.append(
            mnist_split_from_arrays(
                read_idx(img_path), read_idx(lbl_path), str(img_path), str(lbl_path)
            )
        )
    return splits[0], splits[1]


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# --------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return scalar


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python 3 writes bytes objects at pickle protocol 2 as _codecs.encode(str, "latin1").
    # Only that exact use is allowed: other codecs are not needed to rebuild arrays.
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1", errors)


# Every global a CIFAR-10 batch may reference. The official files (pickled by Python 2 /
# numpy 1.x) use numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; files
# re-saved with numpy 2 use numpy._core.*. Nothing else is ever looked up, so a pickle cannot
# call os.system or any other function.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy array-reconstruction globals."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return factory()


def _load_restricted_pickle(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        # encoding="bytes": the official batches were written by Python 2, whose str keys and
        # array buffers must come back as bytes (and numpy accepts bytes buffers).
        return _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "is not allowed" in str(exc):
            raise DataFormatError(
                f"{path} was refused: the pickle references {str(exc).split(' is ')[0]}, but a "
                "CIFAR-10 batch may only contain numpy arrays; replace it with the official file."
            ) from None
        raise DataFormatError(
            f"{path} is a corrupt or truncated pickle ({exc}); delete it and download "
            "CIFAR-10 again."
        ) from None
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise DataFormatError(
            f"{path} is a corrupt or truncated pickle ({type(exc).__name__}: {exc}); delete it "
            "and download CIFAR-10 again."
        ) from None


def _get_key(d: dict, key: str) -> Any:
    # Batches pickled by Python 2 give bytes keys with encoding="bytes"; re-saved ones give str.
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _load_restricted_pickle(path)
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR-10 batch; replace it "
            "with the official file."
        )
    data, labels = _get_key(obj, "data"), _get_key(obj, "labels")
    if data is None or labels is None:
        raise DataFormatError(
            f"{path} has no 'data' and 'labels' entries (keys: {sorted(map(str, obj))}); is it "
            "a CIFAR-100 file? Use the CIFAR-10 python batches."
        )
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(
            f"{path} has data of {desc}, expected uint8 N×3072 (10000×3072 in the official "
            "batches); replace it with the official file."
        )
    try:
        labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataFormatError(f"{path} has labels that are not integers; replace it.") from None
    if labels_arr.shape[0] != data.shape[0]:
        raise DataFormatError(
            f"{path} has {data.shape[0]} images but {labels_arr.shape[0]} labels; replace it "
            "with the official file."
        )
    if labels_arr.size and (labels_arr.min() < 0 or labels_arr.max() > 9):
        raise DataFormatError(
            f"{path} has labels outside 0..9 ({labels_arr.min()}..{labels_arr.max()}); is it a "
            "CIFAR-100 file? Use the CIFAR-10 python batches."
        )
    return data, labels_arr


def read_cifar10(folder: Path) -> tuple[Split, Split]:
    """Read the CIFAR-10 python batches with an unpickler that only rebuilds numpy arrays.

    Args:
        folder: the ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``).

    Returns:
        ``(train, test)``: 50000 and 10000 images ``N×3×32×32`` uint8 in file order.

    Raises:
        DataNotFoundError: the folder or a batch is missing.
        DataFormatError: a batch is corrupt, has the wrong shape, or references any global
            other than numpy's array reconstruction (it is refused, never executed).
    """
    folder = Path(folder)
    names = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        if len(missing) == len(names):
            what = "no CIFAR-10 batches"
        else:
            what = f"missing {', '.join(missing)}"
        raise DataNotFoundError(
            f"{what} in {folder}: put cifar-10-batches-py there, set LEANTRAIN_DATA, or pass "
            "--data-dir."
        )
    splits = []
    for files in (CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILES):
        parts = [_read_cifar_batch(folder / n) for n in files]
        data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts])
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
        splits.append(Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels)))
    return splits[0], splits[1]


# --------------------------------------------------------------------------------------------
# ImageFolder (Imagenette)
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
_CACHE_VERSION = 1  # bump when the decoding below changes, so old caches are not reused


def _list_image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int, int]]]:
    if not folder.is_dir():
        raise DataNotFoundError(
            f"no image folder {folder}: put the ImageFolder tree (<split>/<class>/*.JPEG) there, "
            "set LEANTRAIN_DATA, or pass --data-dir."
        )
    classes = sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )
    files: list[tuple[str, int, int]] = []  # (relative path, class index, size in bytes)
    for ci, cls in enumerate(classes):
        for entry in sorted(os.scandir(folder / cls), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((f"{cls}/{entry.name}", ci, entry.stat().st_size))
    if not files:
        raise DataNotFoundError(
            f"no images in {folder}: expected <class>/*.JPEG sub-folders; check the path, set "
            "LEANTRAIN_DATA, or pass --data-dir."
        )
    return classes, files


def _decode_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            # draft() lets the JPEG decoder downscale by 1/2..1/8 while decoding: much faster
            # for the 160/320 px and full-size Imagenette, and a no-op for small images.
            im.draft("RGB", (image_size, image_size))
            im = im.convert("RGB")  # some Imagenette images are grayscale (mode "L") or CMYK
            w, h = im.size
            if (w, h) != (image_size, image_size):
                # Short side to image_size, then a center crop: keeps the aspect ratio.
                scale = image_size / min(w, h)
                nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
                left, top = (nw - image_size) // 2, (nh - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataFormatError(
            f"{path} is not a readable image ({exc}); delete or replace it."
        ) from None
    return arr


def _cache_key(folder: Path, image_size: int, files: Iterable[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}\0{folder.resolve()}\0{image_size}\0".encode())
    for rel, ci, size in files:
        h.update(f"{rel}\0{ci}\0{size}\n".encode())
    return h.hexdigest()[:20]


def _load_cache(
    path: Path, n: int, image_size: int
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    try:
        # allow_pickle=False: the cache is plain arrays; a tampered file cannot run code.
        with np.load(path, allow_pickle=False) as z:
            images, labels, classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
    except (OSError, ValueError, KeyError, zlib.error, EOFError):
        return None  # unreadable cache: decode again and overwrite it
    if images.shape != (n, 3, image_size, image_size) or images.dtype != np.uint8 \
            or labels.shape != (n,):
        return None
    return images, labels, classes


def _save_cache(path: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    # Atomic: a crash never leaves a half file under the real name, and two processes decoding
    # at once do not corrupt each other (each writes its own temporary file).
    write_atomic(path, lambda f: np.savez(f, images=images, labels=labels,
                                          classes=np.array(classes, dtype=str)))


def read_image_folder(
    folder: Path, image_size: int, cache_dir: Path | None
) -> tuple[Split, list[str]]:
    """Decode an ImageFolder tree (``<class>/*.JPEG``) once into a uint8 tensor, with a cache.

    Every image is converted to RGB, resized so its short side is ``image_size`` and
    center-cropped to ``image_size × image_size``. The result is cached in ``cache_dir`` as an
    uncompressed ``.npz`` (plain arrays, no pickle) keyed by the folder path, the size and the
    list of files with their sizes, so a later run loads it in seconds.

    Args:
        folder: a split folder, e.g. ``imagenette2-64/train``.
        image_size: output side length in pixels.
        cache_dir: where to keep the decoded cache; ``None`` disables caching.

    Returns:
        ``(split, classes)``: images ``N×3×S×S`` in sorted class/file order; class ``i`` is
        ``classes[i]`` (the sorted sub-folder names, as torchvision's ImageFolder).

    Raises:
        DataNotFoundError: the folder does not exist or holds no images.
        DataFormatError: an image cannot be decoded.
    """
    folder = Path(folder)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    classes, files = _list_image_folder(folder)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{folder.parent.name}-{folder.name}-{image_size}px-" \
                                       f"{_cache_key(folder, image_size, files)}.npz"
        if cache_path.is_file():
            cached = _load_cache(cache_path, len(files), image_size)
            if cached is not None:
                images, labels, classes = cached
                return Split(torch.from_numpy(images), torch.from_numpy(labels)), classes

    from tqdm.auto import tqdm

    images = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    labels = np.array([ci for _, ci, _ in files], dtype=np.int64)
    for i, (rel, _, _) in enumerate(
        tqdm(files, desc=f"decoding {folder.parent.name}/{folder.name}", unit="img",
             leave=False, mininterval=0.5)
    ):
        images[i] = _decode_image(folder / rel, image_size)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if cache_path is not None:
        try:
            _save_cache(cache_path, images, labels, classes)
        except OSError:
            pass  # a read-only cache folder only costs the decoding time next run
    return Split(torch.from_numpy(images), torch.from_numpy(labels)), classes
