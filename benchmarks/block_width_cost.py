"""What one CIFAR-ResNet block's residual branch costs at each inner width, per stage.

    python benchmarks/block_width_cost.py            # on a quiet machine

A basic block's branch is conv3×3 (stream → w) → BN → ReLU → conv3×3 (w → stream); DCP and the
static network change w, Learn&Drop removes the whole block. This times the branch's forward and
backward (batch 128, channels_last, median of 6 after 2 warm-ups) for the three stages of a CIFAR
ResNet (16 channels at 32×32, 32 at 16×16, 64 at 8×8) over a range of w. Every stage has the same
FLOPs per block; whether it has the same time, and whether time falls with w, is what the row
shows. One JSON row is appended to benchmarks/step-cost/block-width-<environment>.jsonl.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from leantrain.runs.env import environment, environment_key
from leantrain.runs.machine_share import MachineShare

RESULTS = Path(__file__).resolve().parent / "step-cost"
STAGES = ((16, 32, (4, 8, 9, 12, 16)), (32, 16, (8, 16, 18, 24, 32)),
          (64, 8, (8, 16, 24, 32, 40, 48, 64)))  # (stream channels, spatial size, inner widths)


def branch_ms(stream: int, width: int, size: int, batch: int = 128, reps: int = 6) -> float:
    """Median milliseconds of one forward + backward of the branch."""
    fmt = torch.channels_last
    x = torch.randn(batch, stream, size, size).contiguous(memory_format=fmt).requires_grad_()
    w1 = torch.randn(width, stream, 3, 3).contiguous(memory_format=fmt).requires_grad_()
    w2 = torch.randn(stream, width, 3, 3).contiguous(memory_format=fmt).requires_grad_()
    gamma, beta = torch.ones(width, requires_grad=True), torch.zeros(width, requires_grad=True)
    times = []
    for _ in range(reps + 2):
        start = time.perf_counter()
        h = F.relu(F.batch_norm(F.conv2d(x, w1, padding=1), None, None, gamma, beta, True))
        F.conv2d(h, w2, padding=1).sum().backward()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[2:])


def main() -> None:
    torch.manual_seed(0)
    share = MachineShare()
    row = {"batch": 128, "branch_ms": {
        f"{stream}ch@{size}px": {w: branch_ms(stream, w, size) for w in widths}
        for stream, size, widths in STAGES}}
    env = environment(torch.device("cpu"))
    row["machine"], row["env"] = share.finish(), env
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"block-width-{environment_key(env)}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    for stage, costs in row["branch_ms"].items():
        print(stage, {w: round(ms, 1) for w, ms in costs.items()})
    print(f"row appended to {path}")


if __name__ == "__main__":
    main()
