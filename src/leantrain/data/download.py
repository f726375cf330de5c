"""Fetch MNIST, CIFAR-10 and Imagenette from their official locations, safely.

Each file is streamed to a temporary name next to its destination, its checksum is checked,
and only then is it renamed into place, so an interrupted or corrupted download never leaves
a file the loader would mistake for a good one. Archives are extracted into a temporary folder
after every member has been checked to stay inside it (no absolute paths, no ``..``, no links
or devices), then moved into place. Without network access the error says where to put the
files by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic
from .formats import DataFormatError

__all__ = ["download", "DownloadError", "RESOURCES", "manual_instructions"]


class DownloadError(OSError):
    """A download failed (offline, HTTP error, or checksum mismatch)."""


@dataclass(frozen=True)
class _Resource:
    url: str
    md5: str
    filename: str


_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# md5 sums are those of the official files (the same ones torchvision checks).
RESOURCES: dict[str, tuple[_Resource, ...]] = {
    "mnist": tuple(
        _Resource(_MNIST_MIRROR + f, md5, f)
        for f, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
    "cifar10": (
        _Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-python.tar.gz",
        ),
    ),
    "imagenette": (
        _Resource(
            "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
            "e793b78cc4c9e9a4ccc0c1155377a412",
            "imagenette2-160.tgz",
        ),
    ),
}

# Sub-folder of the data root each data set is downloaded into, and the folder the archive
# unpacks to (what the loader then finds).
_TARGETS: dict[str, tuple[str, str | None]] = {
    "mnist": ("mnist/raw", None),
    "cifar10": ("cifar10", "cifar-10-batches-py"),
    "imagenette": ("imagenette", "imagenette2-160"),
}


def manual_instructions(name: str, root: Path) -> str:
    """Say where the files of data set ``name`` go under ``root`` when fetched by hand.

    Args:
        name: ``"mnist"``, ``"cifar10"`` or ``"imagenette"``.
        root: the data root.

    Returns:
        A short phrase naming the folder and what goes in it.
    """
    root = Path(root)
    if name == "mnist":
        return f"put the four MNIST *-ubyte.gz files in {root / 'mnist' / 'raw'}"
    if name == "cifar10":
        folder = root / "cifar10" / "cifar-10-batches-py"
        return f"unpack cifar-10-python.tar.gz so that {folder} exists"
    if name == "imagenette":
        return (f"unpack imagenette2-160.tgz (or imagenette2-64/-320) into {root / 'imagenette'} "
                "so that its train/ and val/ folders are there")
    raise ValueError(f"no download for data set {name!r}")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(res: _Resource, dest: Path, name: str, root: Path) -> Path:
    """Download ``res`` to ``dest`` atomically, checking its md5; return ``dest``."""
    def stream(out) -> None:  # into write_atomic's temporary file: no partial file survives
        h = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(res.url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                from tqdm.auto import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                          leave=False) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"could not download {res.url} ({reason}); if this machine is offline, "
                f"{manual_instructions(name, root)}, or set LEANTRAIN_DATA / pass --data-dir."
            ) from None
        if h.hexdigest() != res.md5:
            raise DownloadError(
                f"{res.url} arrived with md5 {h.hexdigest()} instead of {res.md5} (a corrupt or "
                f"changed file); try again, or {manual_instructions(name, root)}."
            )

    write_atomic(dest, stream)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = Path(name).parts
    absolute = name.startswith(("/", "\\")) or os.path.isabs(name) or (parts and ":" in parts[0])
    if absolute or ".." in parts:
        raise DataFormatError(
            f"{archive} holds '{name}', a path outside the target folder; refusing to extract it, "
            "delete the archive and download it again."
        )
    if not (member.isfile() or member.isdir()):
        raise DataFormatError(
            f"{archive} holds '{name}', a link or special file; refusing to extract it, delete "
            "the archive and download it again."
        )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest`` after checking every member stays inside it.

    Extraction goes to a temporary folder inside ``dest`` first; its top-level entries are then
    renamed into ``dest`` (existing ones are kept), so a crash never leaves a half-unpacked
    data set under the name the loader looks for.

    Args:
        archive: a (possibly compressed) tar file.
        dest: the folder to extract into.

    Raises:
        DataFormatError: the archive is corrupt or a member is unsafe.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m, archive)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - old Pythons; members were checked above
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataFormatError(
                f"{archive} is not a readable tar archive ({exc}); delete it and download it again."
            ) from None
        for entry in tmp.iterdir():
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(name: str, root: Path) -> None:
    """Download data set ``name`` into the layout `load_dataset` reads under ``root``.

    Files already present with the right checksum are not fetched again. ``mnist-sample`` ships
    with the package and needs nothing.

    Args:
        name: ``"mnist"``, ``"cifar10"``, ``"imagenette"`` (the 160 px version) or
            ``"mnist-sample"``.
        root: the data root (see `resolve_data_dir`).

    Raises:
        DownloadError: offline, HTTP error or checksum mismatch; the message says where to put
            the files by hand.
        ValueError: unknown data set.
    """
    if name == "mnist-sample":
        return
    if name not in RESOURCES:
        raise ValueError(
            f"no download for data set {name!r}; choose one of: {', '.join(RESOURCES)}"
        )
    root = Path(root).expanduser()
    subdir, unpacked = _TARGETS[name]
    target = root / subdir
    if unpacked is not None and (target / unpacked).is_dir():
        return
    for res in RESOURCES[name]:
        dest = target / res.filename
        if not (dest.is_file() and _md5(dest) == res.md5):
            _fetch(res, dest, name, root)
        if unpacked is not None:
            safe_extract(dest, target)
            dest.unlink(missing_ok=True)  # the unpacked folder is all the loader needs
