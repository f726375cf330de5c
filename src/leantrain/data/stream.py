"""Data that arrive in sequence: the training split served as `chunks` equal parts, one after
another (`TrainConfig.stream`).

The split is dealt into chunks by one seeded permutation (the same for every method of a seed,
so each sees the same chunks in the same order): chunks are samples of one distribution arriving
over time, the online setting the Learn&Drop authors name for fine-tuning. Chunk ``k`` is
trained for `epochs_per_chunk` epochs. Without replay (the default) an epoch visits the newest
chunk only: earlier data may be gone, and every chunk costs the same. With replay an epoch
draws a chunk's worth of images uniformly from every chunk that has arrived, so the model
rehearses the earlier ones at the same cost per chunk (rather than a cost growing with the
stream, which would make later chunks dominate any time comparison).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .datasets import DatasetSpec
from .formats import Split
from .loaders import TensorLoader

__all__ = ["StreamLoader"]


class StreamLoader(TensorLoader):
    """A training `TensorLoader` whose epoch ``e`` visits chunk ``e // epochs_per_chunk``.

    Args:
        split, spec, batch_size, seed, device, channels_last: as for `TensorLoader`.
        chunks: how many equal parts the split arrives in (the remainder of the division is
            left out, so every chunk has the same number of images).
        epochs_per_chunk: epochs trained on each chunk before the next arrives.
        replay: draw each epoch's images from every chunk so far instead of the newest only.
    """

    def __init__(
        self,
        split: Split,
        spec: DatasetSpec,
        batch_size: int,
        *,
        chunks: int,
        epochs_per_chunk: int,
        replay: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ) -> None:
        super().__init__(split, spec, batch_size, train=True, seed=seed, device=device,
                         channels_last=channels_last)
        if chunks < 1 or epochs_per_chunk < 1:
            raise ValueError(f"chunks and epochs_per_chunk must be ≥ 1, got {chunks} and "
                             f"{epochs_per_chunk}.")
        self.chunks, self.epochs_per_chunk, self.replay = chunks, epochs_per_chunk, replay
        self.chunk_size = self.num_samples // chunks
        if self.chunk_size < self.batch_size:
            raise ValueError(
                f"{self.num_samples} training images in {chunks} chunks leave {self.chunk_size} "
                f"per chunk, fewer than one batch of {self.batch_size}; use fewer chunks "
                "(--stream), a smaller --batch-size or more data."
            )
        # The chunks' contents: one permutation per seed, drawn apart from the epochs' generators
        # (a 3-word seed sequence never equals `epoch_seed`'s 2-word ones).
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 1]))
        self.order = torch.from_numpy(rng.permutation(self.num_samples)).to(self.device)

    def __len__(self) -> int:
        return self.chunk_size // self.batch_size

    def chunk_of(self, epoch: int) -> int:
        """The chunk (0-based) that training epoch `epoch` visits."""
        return min(epoch // self.epochs_per_chunk, self.chunks - 1)

    def _epoch_order(self, epoch: int, g: torch.Generator) -> Tensor:
        k, size = self.chunk_of(epoch), self.chunk_size
        pool = self.order[: (k + 1) * size] if self.replay else self.order[k * size:(k + 1) * size]
        pick = torch.randperm(len(pool), generator=g)[:size].to(pool.device)
        return pool[pick]
