"""Training-step time of each method against dense, and where the step's time goes.

    python benchmarks/step_ratios.py --device cpu --models resnet32 --batch 128 --profile
    python benchmarks/step_ratios.py --out $OUT            # on a lent GPU (benchmarks/gpu/run.sh)

For each model (default: VGG-16 at 32 px and the ImageNet-style ResNet-50 at 64 px; ResNet-32 and
-56 at 32 px on request) it times one SGD step (forward, backward, optimizer step, the method's
hooks), device-synchronised, on a fixed synthetic batch, for:

* ``dense``;
* ``dcp-slice`` / ``dcp-mask``: DCP p = 0.5 with the selection on from the first step, computing
  only the selected channels / every channel with the unselected zeroed (the authors' way);
* ``static-p0.5``: every prunable width halved before the first step, trained densely: the
  fastest any selection at p = 0.5 can train on this machine;
* ``learndrop-half``: the network Learn&Drop trains once half its droppable blocks are gone
  (every other one, so each stage keeps some).

Configurations are timed in turns (``--rounds`` rounds, each the median of ``--steps`` steps after
``--warmup``), and the fastest round of each is kept, so a drift of the machine hits all alike.
``--profile`` adds one profiled round per configuration and splits its time by kind of operator
(convolutions, batch norm, element-wise, DCP's gathers and scatters, optimizer, other): what a
method's FLOPs cut does and does not reach. One JSON row per model is appended to
``<out>/step-ratios-<environment>.jsonl`` (default out: benchmarks/step-cost); run it on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import leantrain
from leantrain.runs.env import environment, environment_key
from leantrain.runs.machine_share import MachineShare
from leantrain.methods.static import StaticWidths
from leantrain.structure import units_of
from leantrain.structure.surgery import drop_units

SIZES = {"vgg16": 32, "resnet50": 64, "resnet32": 32, "resnet56": 32}  # model → input px
CONFIGS = ("dense", "dcp-slice", "dcp-mask", "static-p0.5", "learndrop-half")
RESULTS = Path(__file__).resolve().parent / "step-cost"

# Operator kinds of the profile, matched on the aten operator's name (first match wins).
KINDS = (
    ("conv", ("conv",)),
    ("batch_norm", ("batch_norm",)),
    ("gather/scatter", ("index", "gather", "scatter", "masked", "take", "nonzero")),
    ("optimizer", ("_foreach", "sgd")),
    ("element-wise", ("relu", "threshold", "add", "mul", "div", "sub", "copy", "fill", "zero",
                      "clamp", "where", "mean", "sum", "avg_pool", "max_pool", "adaptive")),
)


def _kind(op: str) -> str:
    name = op.lower()
    return next((k for k, words in KINDS if any(w in name for w in words)), "other")


def _build(name: str, size: int, config: str, device: torch.device, total: int,
           fmt: torch.memory_format):
    torch.manual_seed(0)
    model = leantrain.create_model(name, num_classes=10, input_size=size)
    model = model.to(device=device, memory_format=fmt)
    if config == "learndrop-half":  # dropped before the optimizer sees the parameters
        drop_units(model, [u.name for u in units_of(model)[::2]])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if config not in ("dense", "learndrop-half"):
        method = {
            "dcp-slice": lambda: leantrain.DCP(p=0.5, warmup=0.0),
            "dcp-mask": lambda: leantrain.DCP(p=0.5, warmup=0.0, mode="mask"),
            "static-p0.5": lambda: StaticWidths(p=0.5),
        }[config]()
        leantrain.attach(model, opt, method, total)  # the hooks run in opt.step()
    return model, opt


def _round(step: Callable[[], None], sync: Callable[[], None], steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _profile(step: Callable[[], None], sync: Callable[[], None], steps: int,
             device: torch.device) -> dict[str, float]:
    """Self time per operator kind, in ms per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    by_kind: dict[str, float] = {}
    for e in prof.key_averages():
        us = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
        if us:
            kind = _kind(e.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + us / 1e3 / steps
    return dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))


def measure(name: str, device: torch.device, batch: int, steps: int, warmup: int, rounds: int,
            configs: list[str], profiled: bool, channels_last: bool = True) -> dict:
    """One model's row: fastest-round step time per configuration, its ratio to dense."""
    size = SIZES[name]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    # channels_last like `leantrain train` (TrainConfig.channels_last defaults to True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    total = (rounds + 1) * (warmup + steps) + 1
    built = {c: _build(name, size, c, device, total, fmt) for c in configs}

    def step_of(config: str) -> Callable[[], None]:
        model, opt = built[config]

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    best: dict[str, float] = {}
    for _ in range(rounds):
        for c in configs:
            t = _round(step_of(c), sync, steps, warmup)
            best[c] = min(best.get(c, t), t)
    row = {"model": name, "input": [3, size, size], "batch": batch, "steps": steps,
           "rounds": rounds, "channels_last": channels_last, "step_ms": {c: 1e3 * t for c, t in best.items()},
           "ratio_vs_dense": {c: t / best["dense"] for c, t in best.items()}}
    if profiled:
        row["profile_ms"] = {c: _profile(step_of(c), sync, steps, device) for c in configs}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50"], choices=sorted(SIZES))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--contiguous", action="store_true",
                   help="NCHW tensors instead of channels_last (what `leantrain train` uses)")
    p.add_argument("--profile", action="store_true",
                   help="also split each step's time by operator kind")
    args = p.parse_args()
    configs = ["dense"] + [c for c in args.configs if c != "dense"]
    device = torch.device(args.device)
    env = environment(device)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"step-ratios-{environment_key(env)}.jsonl"
    for name in args.models:
        share = MachineShare()
        try:
            row = measure(name, device, args.batch, args.steps, args.warmup, args.rounds,
                          configs, args.profile, channels_last=not args.contiguous)
        except Exception as e:  # one model's failure must not lose the other models' rows
            row = {"model": name, "error": f"{type(e).__name__}: {e}"}
        row["machine"], row["env"] = share.finish(), env
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("env", "machine")}), flush=True)
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
