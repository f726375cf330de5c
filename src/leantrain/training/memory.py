"""Activation memory of a training step: the bytes autograd keeps for the backward pass.

Peak process RSS (see `leantrain.runs.env`) is what a user's machine sees, but on CPU it also holds
the allocator's cached and fragmented blocks: when a method changes tensor shapes every step
(DCP's per-step widths), glibc keeps freed blocks of the old shapes and RSS can grow even though
the step needs less. The tensors saved for backward are the part of training memory that dropping
layers and slicing channels reduce, and they do not depend on the allocator, so we count them
directly with `torch.autograd.graph.saved_tensors_hooks` and report both.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["ActivationMeter", "saved_activation_bytes"]


class ActivationMeter:
    """Peak and mean bytes saved for backward over the training steps measured with `step`.

    Methods that change the network during training start dense (warm-up), so their peak equals
    dense training's; what they cut is the memory of the later steps, which the mean shows.

    Each distinct storage is counted once per step (a ReLU output saved by the ReLU and by the
    next conv is one tensor in memory); storages of the model's parameters are not activations
    and are left out, but per-step copies such as DCP's gathered weight slices are counted.

    Example:
        >>> meter = ActivationMeter(model)
        >>> with meter.step():
        ...     loss = criterion(model(x), y)
        >>> loss.backward(); meter.peak_bytes
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.peak_bytes = 0
        self.last_bytes = 0
        self.total_bytes = 0
        self.steps = 0

    @contextmanager
    def step(self) -> Iterator[None]:
        """Count what the forward pass inside the block saves for backward."""
        # Recomputed per step: surgery replaces parameters during training.
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. sparse or nested tensors
                return t
            ptr = storage.data_ptr()
            if ptr not in params and ptr not in seen:
                seen[ptr] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        self.last_bytes = sum(seen.values())
        self.peak_bytes = max(self.peak_bytes, self.last_bytes)
        self.total_bytes += self.last_bytes
        self.steps += 1

    def summary(self) -> dict[str, float]:
        """``peak_activation_mb`` (largest step) and ``mean_activation_mb`` (step average), MiB."""
        mean = self.total_bytes / self.steps if self.steps else 0.0
        return {"peak_activation_mb": self.peak_bytes / 2**20, "mean_activation_mb": mean / 2**20}


def saved_activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes one forward pass of ``model`` on ``x`` saves for backward (no backward is run)."""
    meter = ActivationMeter(model)
    with torch.enable_grad(), meter.step():
        model(x)
    return meter.last_bytes
