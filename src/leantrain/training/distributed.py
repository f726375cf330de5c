"""Multi-process training (PyTorch DistributedDataParallel) for a model that shrinks.

``torchrun --nproc-per-node N -m leantrain train …`` trains with one process per core or GPU
(gloo on CPU, NCCL on GPU). Each process reads its own slice of every global batch
(`ShardedLoader`: the loader's epoch stays a pure function of seed and epoch, and the global
batch is ``--batch-size`` whatever N is), and every process makes the same decisions:

* DDP averages the gradients, so weights — and the Learn&Drop scores computed from them — are
  identical on every process;
* statistics a method computes from its own batch (DCP's saliencies, `Method.sync_tensors`) are
  averaged over the processes before they are used (`leantrain.attach`);
* after every step the processes compare their structure (`check_same_structure`), so a
  diverging decision stops the job with a message instead of a hang.

A cut replaces parameters, which DDP cannot follow: `ShrinkingDDP` rebuilds the DDP wrapper
whenever the set of trainable parameters changed. In your own DDP script:

    model = leantrain.create_model(...).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = leantrain.attach(model, opt, methods, total_steps)    # the plain model, first
    net = leantrain.training.distributed.ShrinkingDDP(model)                 # then the wrapper
    for x, y in batches: loss = F.cross_entropy(net(x), y); ...; opt.step()
    handle.finish()
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..structure.record import cut_history

__all__ = [
    "DivergedRanks", "ShardedLoader", "ShrinkingDDP", "average", "broadcast_buffers", "check_same_structure",
    "check_same_weights",
    "init_from_env", "rank", "world_size",
]


class DivergedRanks(RuntimeError):
    """The processes of a job no longer have the same structure."""


def world_size() -> int:
    """Processes in the job (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env(device: torch.device) -> tuple[torch.device, int, int]:
    """Join the job torchrun started (``WORLD_SIZE`` > 1), else do nothing.

    Returns:
        (this process's device, rank, world size): ``cuda:LOCAL_RANK`` on GPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return device, 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A bounded timeout: a process whose peer died stops within minutes, not hours.
        dist.init_process_group(backend, timeout=timedelta(minutes=5))
    return device, dist.get_rank(), dist.get_world_size()


def average(tensors: list[Tensor]) -> None:
    """Average `tensors` over the processes, in place (one collective for all of them)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def _structure_key(model: nn.Module) -> Tensor:
    # The cut count and the live parameter count summarise the structure; equal on every
    # process as long as every process made the same cuts.
    return torch.tensor([len(cut_history(model)),
                         sum(p.numel() for p in model.parameters() if p.requires_grad)],
                        dtype=torch.float64)


def _range(key: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of `key` over the processes, in one collective: max of (key, -key)."""
    both = torch.cat([key, -key])
    if dist.get_backend() == "nccl":
        both = both.cuda()
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    hi, neg_lo = both.cpu().chunk(2)
    return -neg_lo, hi


def check_same_structure(model: nn.Module, step: int) -> None:
    """Raise `DivergedRanks` unless every process has the same structure as process 0."""
    lo, hi = _range(_structure_key(model))
    if not torch.equal(lo, hi):
        raise DivergedRanks(
            f"after step {step} the processes disagree on the model's structure (cuts, live "
            f"parameters from {lo.tolist()} to {hi.tolist()}); a method decided from local data "
            "without averaging it (Method.sync_tensors)."
        )


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process process 0's buffers (BN running statistics)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def check_same_weights(model: nn.Module) -> None:
    """Raise `DivergedRanks` unless every process holds process 0's weights and statistics.

    Compares a per-tensor checksum (sum and sum of squares, float64) over the processes.
    """
    sums = [torch.stack([t.double().sum(), t.double().square().sum()])
            for t in model.state_dict().values() if t.is_floating_point()]
    lo, hi = _range(torch.cat(sums).cpu() if sums else torch.zeros(1, dtype=torch.float64))
    if not torch.equal(lo, hi):
        raise DivergedRanks(
            "at the end of training the processes hold different weights; DDP keeps them equal, "
            "so a method changed the model on some processes only."
        )


class ShrinkingDDP(nn.Module):
    """DistributedDataParallel over a model that loses parameters while it trains.

    The forward runs through a DDP wrapper that is rebuilt whenever the model's trainable
    parameters changed (a cut, a frozen unit); DDP's constructor also re-broadcasts process 0's
    weights. State dicts and `leantrain.attach` use the plain `module`.

    Args:
        module: the model, already on this process's device.
        **ddp_kwargs: passed to `DistributedDataParallel` (e.g. ``device_ids``).
    """

    def __init__(self, module: nn.Module, **ddp_kwargs: Any) -> None:
        super().__init__()
        self.module = module
        self._kwargs = ddp_kwargs
        self.__dict__["_ddp"] = None  # not a submodule: its parameters are `module`'s
        self.__dict__["_key"] = None
        self.rebuilds = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        key = tuple(id(p) for p in self.module.parameters() if p.requires_grad)
        if self._ddp is None or key != self._key:
            self.__dict__["_ddp"] = DistributedDataParallel(self.module, **self._kwargs)
            self.__dict__["_key"] = key
            self.rebuilds += 1
        self._ddp.train(self.training)
        return self._ddp(*args, **kwargs)


class ShardedLoader:
    """This process's slice of every global batch of a `leantrain.data.TensorLoader`.

    The global batch (``loader.batch_size``) must split evenly over the processes, so every
    process steps the same number of times and DDP's average is the global batch's mean.
    """

    def __init__(self, loader: Any, rank: int, world: int) -> None:
        if loader.batch_size % world:
            raise ValueError(
                f"the batch size {loader.batch_size} does not split over {world} processes; "
                f"use a --batch-size divisible by {world}."
            )
        self.loader, self.rank, self.world = loader, rank, world
        self.batch_size = loader.batch_size  # the global batch: the step plan is unchanged
        self.spec, self.num_samples = loader.spec, loader.num_samples

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader.epoch(epoch, start_batch=start_batch):
            if len(y) % self.world:
                raise ValueError(
                    f"a batch of {len(y)} images does not split over {self.world} processes; "
                    "drop the last partial batch or choose a training subset divisible by it."
                )
            part = len(y) // self.world
            yield x[self.rank * part:(self.rank + 1) * part], y[self.rank * part:(self.rank + 1) * part]
