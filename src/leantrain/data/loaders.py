"""`TensorLoader`: a whole split held as one uint8 tensor on the device, served in batches.

This follows airbench: no worker processes, no per-image Python. Every epoch draws one
permutation and one set of augmentation parameters from a generator seeded by
``(seed, epoch)`` alone, so epoch ``k`` is reproducible on its own, and resuming in the middle
of it (``start_batch``) gives exactly the batches an uninterrupted run would have seen.
Images stay uint8 (1 byte per pixel); each batch is augmented in uint8 and normalised to
float32 only when it is served.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .augment import crop_at, flip_where
from .datasets import DatasetSpec
from .formats import Split

__all__ = ["TensorLoader", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """Derive a well-mixed 63-bit generator seed from ``(seed, epoch)``.

    Args:
        seed: the run's seed, >= 0.
        epoch: the epoch index, >= 0.

    Returns:
        A seed for `torch.Generator.manual_seed`.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    # SeedSequence hashes the pair, so neighbouring seeds/epochs give unrelated streams
    # (seed + epoch would make run 0 epoch 1 equal run 1 epoch 0).
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class TensorLoader:
    """Whole split as one tensor on `device`; yields normalised float batches (airbench style).

    Training epochs are shuffled and augmented as ``spec.augment`` says (random crop with
    ``spec.crop_pad`` pixels of zero padding, plus a horizontal flip for ``"crop_flip"``).
    Evaluation epochs keep the stored order, do not augment, and keep the last partial batch.

    Args:
        split: the images (uint8 ``N×C×H×W``) and labels.
        spec: gives mean/std for normalisation and the augmentation.
        batch_size: images per batch.
        train: shuffle and augment (True) or serve in order (False).
        seed: base seed of the per-epoch generators.
        device: where the split is stored and batches are made.
        drop_last: drop the last partial batch; default True for training, False for eval.
        channels_last: serve batches in ``torch.channels_last`` memory format.
    """

    def __init__(
        self,
        split: Split,
        spec: DatasetSpec,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool | None = None,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split.images.dim() != 4 or split.images.dtype != torch.uint8:
            raise ValueError(
                f"split.images must be a uint8 N×C×H×W tensor, got {split.images.dtype} "
                f"{tuple(split.images.shape)}"
            )
        if split.images.shape[0] != split.labels.shape[0]:
            raise ValueError(
                f"{split.images.shape[0]} images but {split.labels.shape[0]} labels"
            )
        if split.images.shape[1] != spec.in_channels:
            raise ValueError(
                f"images have {split.images.shape[1]} channels but {spec.name} has "
                f"{spec.in_channels}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.spec = spec
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.channels_last = bool(channels_last)
        self.images = split.images.to(self.device).contiguous()
        self.labels = split.labels.to(self.device, torch.int64)
        self._flat = self.images.view(self.images.shape[0], -1)
        self.pad = spec.crop_pad if self.train else 0
        self.flip = self.train and spec.flip
        # Normalisation constants live on the device once, not per batch.
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(spec.std, dtype=torch.float32, device=self.device)
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
        self._shift = (mean / std).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        """Number of images in the split."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate over the batches of one epoch.

        Args:
            epoch: epoch index; for training it selects the shuffle and augmentation.
            start_batch: skip the first ``start_batch`` batches (resume in mid-epoch); the
                remaining batches equal those of an uninterrupted epoch.

        Returns:
            An iterator of ``(images, labels)``: float32 ``B×C×H×W`` normalised images and
            int64 labels, on the loader's device.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)}, got {start_batch}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        # Validate eagerly (above), iterate lazily (below).
        if self.train:
            return self._train_batches(epoch, start_batch)
        return self._eval_batches(start_batch)

    def _serve(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).mul_(self._scale).sub_(self._shift)
        if self.channels_last:
            # After the float conversion: on CPU, permuting uint8 is several times slower
            # than permuting float32.
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _eval_batches(self, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n, bs = self.num_samples, self.batch_size
        for b in range(start_batch, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            yield self._serve(self.images[lo:hi]), self.labels[lo:hi]

    def _epoch_order(self, epoch: int, g: torch.Generator) -> Tensor:
        """The indices of the images training epoch `epoch` visits, in order (a permutation of
        the split; `leantrain.data.stream.StreamLoader` visits a chunk of it)."""
        del epoch
        return torch.randperm(self.num_samples, generator=g)

    def _train_batches(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        bs = self.batch_size
        g = torch.Generator(device="cpu")
        g.manual_seed(epoch_seed(self.seed, epoch))
        # Everything random in this epoch is drawn up front on the CPU (a few ints per image,
        # nothing per pixel): the same on every device, and start_batch is just a slice.
        perm = self._epoch_order(epoch, g)
        n = len(perm)
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        perm, offsets, flips = (t.to(self.device) for t in (perm, offsets, flips))
        for b in range(start_batch, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            idx = perm[lo:hi]
            # index_select on a 2-D view: on CPU, torch's 4-D uint8 index_select is ~50× slower.
            x = self._flat.index_select(0, idx).view(-1, *self.images.shape[1:])
            if self.pad:
                x = crop_at(x, offsets[0, lo:hi], offsets[1, lo:hi], self.pad)
            if self.flip:
                x = flip_where(x, flips[lo:hi])
            yield self._serve(x), self.labels.index_select(0, idx)
