"""Write a balanced CIFAR-10 subset in the official python-batch format, small enough to travel
to a lent GPU machine (the device tool carries at most 64 MiB; the full set is 178 MB).

    python benchmarks/gpu/make_cifar_subset.py            # ../shared/data → .gpu-data (ignored)

The subset is drawn per class with a fixed seed (`leantrain.data.datasets.balanced_subset_indices`)
and written as five ``data_batch_*`` files and a ``test_batch``, which `leantrain`'s reader takes
like the official ones.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from leantrain.data.datasets import balanced_subset_indices
from leantrain.data.formats import CIFAR10_TRAIN_FILES, read_cifar10

ROOT = Path(__file__).resolve().parents[2]


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    batch = {"data": np.ascontiguousarray(images.reshape(len(images), -1)),
             "labels": [int(v) for v in labels]}
    path.write_bytes(pickle.dumps(batch, protocol=4))  # raw bytes (protocol 2 inflates them)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path,
                        default=ROOT.parent / "shared/data/cifar10/cifar-10-batches-py")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu-data")
    parser.add_argument("--train", type=int, default=14000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, test = read_cifar10(args.source)
    rng = np.random.default_rng(args.seed)
    folder = args.out / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    keep = np.sort(balanced_subset_indices(train.labels.numpy(), args.train, rng))
    images, labels = train.images.numpy()[keep], train.labels.numpy()[keep]
    for name, part in zip(CIFAR10_TRAIN_FILES, np.array_split(np.arange(len(keep)), 5)):
        _write_batch(folder / name, images[part], labels[part])
    keep = np.sort(balanced_subset_indices(test.labels.numpy(), args.test, rng))
    _write_batch(folder / "test_batch", test.images.numpy()[keep], test.labels.numpy()[keep])
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"wrote {args.train} train / {args.test} test images to {folder} "
          f"({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
