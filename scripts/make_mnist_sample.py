"""Build the embedded ``mnist-sample`` data set from the four official MNIST files.

Takes the first ``--train-per-class`` images of every digit from the official training file and
the first ``--test-per-class`` of every digit from the official test file, keeps them in their
official order, and writes them as gzipped IDX files (the official format) plus a README with
attribution and checksums into ``src/leantrain/data/sample/``. The output is byte-for-byte
reproducible (gzip without a timestamp).

Usage::

    python scripts/make_mnist_sample.py --source /path/to/mnist/raw
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

from leantrain.data.formats import read_mnist

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "leantrain" / "data" / "sample"
SIZE_LIMIT = 1_500_000  # bytes, everything in the sample folder together

README = """\
# mnist-sample: a small class-balanced subset of MNIST

This folder is the `mnist-sample` data set that ships inside leantrain, so that the quick
start and the tests run without downloading anything. Load it with
`leantrain.data.load_dataset("mnist-sample")`.

## What it holds

| file | content | bytes | sha256 |
|---|---|---:|---|
{table}

- **train**: the first {train_pc} images of every digit (0–9) in the official
  `train-images-idx3-ubyte` file, {train_n} images in all, in their official order.
- **test**: the first {test_pc} images of every digit in the official `t10k-images-idx3-ubyte`
  file, {test_n} images in all, in their official order.
- Pixels and labels are unchanged (28×28 uint8 grayscale, labels 0–9). Only the selection is
  ours. The files are in the official IDX format, gzipped (level 9, no timestamp).
- Positions taken (0-based, in the official files): train {train_first} … {train_last},
  test {test_first} … {test_last}; the full lists follow from the rule above.

Made by `scripts/make_mnist_sample.py --source <folder with the four official .gz files>`
from the official files (md5 of train-images-idx3-ubyte.gz: f68b3c2dcbeaaa9fbdd348bbdeb94873,
t10k-images-idx3-ubyte.gz: 9fb629c4189551a2d022fa330f9573f3). Re-running it reproduces these
files byte for byte.

## Attribution and license

MNIST: Yann LeCun, Corinna Cortes and Christopher J. C. Burges, "The MNIST database of
handwritten digits", http://yann.lecun.com/exdb/mnist/. MNIST is © Yann LeCun and Corinna
Cortes and is made available under the terms of the Creative Commons Attribution-Share Alike
3.0 license (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/). This subset is a
derivative of MNIST and is distributed under the same license (CC BY-SA 3.0), not under the
MIT license of the leantrain code.
"""


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` items of every class, ascending.

    Args:
        labels: labels in file order.
        per_class: how many of each class to keep.

    Returns:
        Sorted indices into ``labels``.
    """
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < per_class:
            raise SystemExit(f"class {c} has only {idx.size} images, fewer than {per_class}")
        picks.append(idx[:per_class])
    return np.sort(np.concatenate(picks))


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array as an IDX file (type 0x08, big-endian dimensions)."""
    assert arr.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def write_gz(path: Path, data: bytes) -> bytes:
    """Write ``data`` gzipped with mtime 0 (reproducible) and return the compressed bytes."""
    blob = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(blob)
    return blob


def main(argv: list[str] | None = None) -> int:
    """Build the sample; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, required=True,
                   help="folder with the official MNIST .gz files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="output folder (default: the package's sample/)")
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--test-per-class", type=int, default=100)
    args = p.parse_args(argv)

    train, test = read_mnist(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, info = [], {}
    for split, data, per_class, stem in (
        ("train", train, args.train_per_class,
         ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        ("test", test, args.test_per_class, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ):
        labels = data.labels.numpy().astype(np.uint8)
        idx = first_per_class(labels, per_class)
        images = data.images.numpy()[idx, 0]  # N×28×28
        for name, arr, what in ((stem[0], images, "images"), (stem[1], labels[idx], "labels")):
            blob = write_gz(args.out / f"{name}.gz", idx_bytes(arr))
            rows.append(f"| {name}.gz | {split} {what}, shape {'×'.join(map(str, arr.shape))} | "
                        f"{len(blob):,} | {hashlib.sha256(blob).hexdigest()} |")
        info[split] = (per_class, idx.size, int(idx[0]), int(idx[-1]))

    (args.out / "README.md").write_text(README.format(
        table="\n".join(rows),
        train_pc=info["train"][0], train_n=info["train"][1],
        train_first=info["train"][2], train_last=info["train"][3],
        test_pc=info["test"][0], test_n=info["test"][1],
        test_first=info["test"][2], test_last=info["test"][3],
    ))
    total = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"wrote {args.out} ({total:,} bytes)")
    if total > SIZE_LIMIT:
        print(f"error: the sample is larger than {SIZE_LIMIT:,} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
