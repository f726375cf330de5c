"""Shared fixtures: deterministic torch, tiny synthetic data in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from leantrain.data import Split, get_spec
from torchvision_stub import import_torchvision_models

# Test set-up only (see torchvision_stub.py): torchvision's model definitions, importable with the
# CPU torch, so the tests build torchvision models exactly as users do. Importing it here once
# means `create_model("torchvision:…")` finds it in sys.modules.
import_torchvision_models()
from leantrain.data.loaders import TensorLoader

SHARED_DATA = Path(os.environ.get("LEANTRAIN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny test models run fastest single-threaded
    yield


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters, so eval-mode comparisons are not trivial."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def synthetic_split(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> Split:
    """Random uint8 images whose mean brightness depends on the label, so a model can learn."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    noise = torch.randint(0, 64, (n, channels, size, size), generator=g)
    images = (noise + (labels * 19).view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
    return Split(images=images, labels=labels)


@pytest.fixture
def tiny_cifar():
    """(train, test, spec) of 64 + 32 synthetic 32 px RGB images with the CIFAR-10 spec."""
    return synthetic_split(64), synthetic_split(32, seed=1), get_spec("cifar10")


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A cifar-10-batches-py folder in the official format (protocol 2, bytes keys)."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        labels = [int(v) for v in (np.arange(per_batch) + i) % 10]
        data = rng.integers(0, 64, (per_batch, 3072), dtype=np.uint8) + np.repeat(
            np.array(labels, dtype=np.uint8) * 19, 3072).reshape(per_batch, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_cases_per_batch": per_batch,
                     b"num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar10(tmp_path / "data")


class Interrupting:
    """A train loader that raises KeyboardInterrupt (a Ctrl-C) before its `at`-th batch."""

    def __init__(self, inner: TensorLoader, at: int) -> None:
        self.inner, self.at, self.served = inner, at, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int, start_batch: int = 0):
        for batch in self.inner.epoch(epoch, start_batch):
            if self.served == self.at:
                raise KeyboardInterrupt
            self.served += 1
            yield batch
