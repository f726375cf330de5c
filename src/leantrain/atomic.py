"""Atomic file writes: the one way leantrain puts a finished file on disk.

`write_atomic` writes into a temporary file in the target's own folder (so the rename cannot cross
file systems), fsyncs it, renames it over the target and fsyncs the folder (so the rename itself
survives a power loss). A reader, or a process resumed after kill -9, sees the old file or the
new one, never half of one. Temporary files carry the name ``.<target>.<random>.tmp``; one left
behind by a killed process is removed by `remove_stale_temps` when the folder is next used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["fsync_path", "remove_stale_temps", "write_atomic", "TEMP_GLOB"]

TEMP_GLOB = ".*.tmp"  # what `write_atomic` leaves behind only when its process is killed

Content = Union[bytes, str, Callable[[BinaryIO], object]]


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's: its entries') data to the disk; best effort for folders."""
    is_dir = Path(path).is_dir()
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if is_dir else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if is_dir:  # some systems (Windows) cannot open folders: nothing to flush
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | Path, content: Content) -> Path:
    """Replace `path` with `content` atomically and durably; returns `path`.

    Args:
        path: the file to write; its folder is created when missing.
        content: bytes, text (UTF-8), or a function that writes into the open binary file (for
            writers that stream: ``np.savez``, ``fig.savefig``, a download).

    Raises:
        OSError: the folder is full or unwritable (the target is untouched, no temp file stays).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode())
            elif isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        # Clean-up must never hide the error that got us here (e.g. a folder turned read-only).
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed `write_atomic` left in `folder`; returns those removed.

    Call it only on a folder no other live process is writing into (a run folder as its run
    starts): a concurrent writer's temp file would be removed under it.
    """
    removed = []
    for stale in Path(folder).glob(TEMP_GLOB):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed
