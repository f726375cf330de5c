"""What `leantrain.prepare` costs dense training: the step time of a prepared model with nothing
pruned against the same model unprepared (target: within 3%).

    PYTHONPATH=benchmarks/torchvision_cpu python benchmarks/prepare_overhead.py

For each model, two copies with the same weights, one prepared (its channel-set layers changed
to their sliceable subclasses, no selection), train on the same fixed batch; rounds of `--steps`
steps alternate between them (so drift in the machine's speed hits both alike) and the ratio is
median(prepared round) / median(plain round). Discovery itself (one trace, ~0.1–1 s) runs once
before the first step and is not a per-step cost. Rows are appended to
``benchmarks/step-cost/prepare-overhead-<environment>.jsonl`` with whether the machine was quiet
(`leantrain.runs.machine_share`); run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import leantrain
from leantrain.runs.env import environment, environment_key
from leantrain.runs.machine_share import MachineShare

RESULTS = Path(__file__).resolve().parent / "step-cost"
MODELS = ["resnet20", "torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:vgg16_bn"]


def _round(model: torch.nn.Module, opt: torch.optim.Optimizer, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def measure(name: str, batch: int, size: int, steps: int, rounds: int) -> dict:
    torch.manual_seed(0)
    original = leantrain.create_model(name, input_size=size).to(memory_format=torch.channels_last)
    # Both are copies, so neither is favoured by where its tensors were allocated.
    plain, prepared = copy.deepcopy(original), copy.deepcopy(original)
    del original
    structure = leantrain.prepare(prepared)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, prepared)}
    for m in (plain, prepared):  # warm-up: kernels chosen, memory allocated
        _round(m, opts[m], x, y, 2)
    times: dict[str, list[float]] = {"plain": [], "prepared": []}
    share = MachineShare()
    for r in range(rounds):
        order = [("plain", plain), ("prepared", prepared)]
        for label, m in order if r % 2 == 0 else order[::-1]:
            times[label].append(_round(m, opts[m], x, y, steps))
    plain_s, prep_s = statistics.median(times["plain"]), statistics.median(times["prepared"])
    return {
        "model": name, "batch": batch, "input": [3, size, size], "steps": steps, "rounds": rounds,
        "channel_sets": len(structure.channel_sets), "plain_step_s": plain_s,
        "prepared_step_s": prep_s, "ratio": prep_s / plain_s, "machine": share.finish(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = environment("cpu")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"prepare-overhead-{environment_key(env)}.jsonl"
    print(f"{'model':<28} {'plain ms':>9} {'prepared ms':>12} {'ratio':>7}  quiet")
    for name in args.models:
        row = measure(name, args.batch, args.size, args.steps, args.rounds)
        row["env"] = env
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name:<28} {1e3 * row['plain_step_s']:9.1f} {1e3 * row['prepared_step_s']:12.1f} "
              f"{row['ratio']:7.3f}  {row['machine']['quiet']}")
    print(f"rows: {out}")


if __name__ == "__main__":
    main()
