"""What sliced DCP costs beyond the network it computes: one step of DCP against the static network
of exactly the widths DCP computes at that step.

    python benchmarks/dcp_overhead.py --model resnet32 --batch 128

DCP (p = 0.5, selection on from the first step) trains ``--settle`` steps on real CIFAR-10 batches
(so the utilities, and with them the widths, are those of training, not of initialisation). Its
selection is then frozen (γ = 1) and one step of it is timed against: the static network cut to
DCP's computed widths (the same convolutions without the per-step gathers, saliency and
selection: the bound for those widths) and dense. Inside the DCP step the time of its hooks
(``after_backward`` + ``step``) and of its saliency observers is taken apart. Rounds alternate, the
fastest of each is kept; one JSON row is appended to benchmarks/step-cost/dcp-overhead-<env>.jsonl.
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import leantrain
from leantrain.data import TensorLoader, load_dataset
from leantrain.runs.env import environment, environment_key
from leantrain.runs.machine_share import MachineShare
from leantrain.methods.dcp import DCP
from leantrain.methods.static import StaticWidths
from leantrain.structure import channel_sets_of

RESULTS = Path(__file__).resolve().parent / "step-cost"


class _Timed:
    """Accumulates the wall time of calls to a wrapped function."""

    def __init__(self, fn):
        self.fn, self.total = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total += time.perf_counter() - start


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return leantrain.create_model(name, num_classes=10).to(memory_format=torch.channels_last)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--selection", default="global", choices=["global", "layer"])
    p.add_argument("--settle", type=int, default=60, help="DCP training steps before timing")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    share = MachineShare()
    train, _, spec = load_dataset("cifar10", train_subset=args.batch * args.settle, test_subset=10)
    loader = TensorLoader(train, spec, args.batch, train=True, seed=0, channels_last=True)
    batches = list(loader.epoch(0))
    total = args.settle + 10 * args.rounds * args.steps

    dcp_model = _model(args.model)
    dcp = DCP(p=0.5, warmup=0.0, selection=args.selection)  # authors' γ = 0.6 while settling
    opt = torch.optim.SGD(dcp_model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    handle = leantrain.attach(dcp_model, opt, dcp, total)
    for x, y in batches:  # utilities and widths as training makes them
        loss = F.cross_entropy(dcp_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dcp.gamma = 1.0  # freeze the selection: every timed step computes the same widths
    sets = channel_sets_of(dcp_model)
    widths = [len(s) if (k := dcp.kept[s.name]) is None else len(k) for s in sets]
    computed = [len(s) if w < 0 else w for s, w in zip(sets, dcp._computed_widths)]

    static_model = _model(args.model)
    static_opt = torch.optim.SGD(static_model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    leantrain.attach(static_model, static_opt, StaticWidths(widths=computed), total)
    dense_model = _model(args.model)
    dense_opt = torch.optim.SGD(dense_model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    hooks = {"after_backward": _Timed(dcp.after_backward), "step": _Timed(dcp.step)}
    dcp.after_backward, dcp.step = hooks["after_backward"], hooks["step"]
    observe = _Timed(dcp._observe)
    for s in sets:
        s.bn.observer = observe
    dcp._observe = observe  # re-tracked sets get the timed observer too

    x, y = batches[0]

    def step(model, optimizer) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    configs = {"dense": (dense_model, dense_opt), "static-at-dcp-widths": (static_model, static_opt),
               "dcp-slice": (dcp_model, opt)}
    best: dict[str, float] = {}
    parts: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (model, optimizer) in configs.items():
            for _ in range(2):
                step(model, optimizer)
            before = {k: t.total for k, t in hooks.items()} | {"observer": observe.total}
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step(model, optimizer)
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            if name == "dcp-slice" and t < best.get(name, float("inf")):
                after = {k: t.total for k, t in hooks.items()} | {"observer": observe.total}
                parts = {k: 1e3 * (after[k] - before[k]) / args.steps for k in after}
            best[name] = min(best.get(name, t), t)
    handle.detach()
    env = environment(torch.device("cpu"))
    row = {"model": args.model, "batch": args.batch, "settle_steps": args.settle,
           "selection": args.selection,
           "widths": widths, "computed_widths": computed,
           "channels": [len(s) for s in sets],
           "step_ms": {k: 1e3 * v for k, v in best.items()},
           "ratio_vs_dense": {k: v / best["dense"] for k, v in best.items()},
           "dcp_parts_ms": parts, "machine": share.finish(), "env": env}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dcp-overhead-{environment_key(env)}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("env",)}, indent=1))


if __name__ == "__main__":
    main()
