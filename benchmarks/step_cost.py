"""Per-step cost of `leantrain.attach` and of multi-process (DDP) training.

    python benchmarks/step_cost.py                 # both parts, on the embedded MNIST sample
    python benchmarks/step_cost.py --part attach   # or --part ddp

attach: the same loop with the methods called by hand (the README's former 8-line diff) and
through `attach`'s optimizer hooks, alternated, the fastest run's median step time of each (must
agree within noise). ddp: ``leantrain train`` in one process (all cores) and under ``torchrun`` with 2
processes (1 thread each), same global batch: train seconds per step. On a 2-core CPU two
processes cannot be faster than one; the row shows what the synchronisation costs.

Rows are appended to ``benchmarks/step-cost/<environment>.jsonl``; run on a quiet
machine (timings on a shared one are contended).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import leantrain
from leantrain.data import TensorLoader, load_dataset
from leantrain.runs.env import environment, environment_key

# Not benchmarks/results: `leantrain report` reads every .jsonl there as a training-run row.
RESULTS = Path(__file__).resolve().parent / "step-cost"


def _method(name: str) -> leantrain.Method:
    if name == "dcp":
        return leantrain.DCP(p=0.5, warmup=0.0)
    return leantrain.LearnDrop(tau=1e-9, warmup=0.0, every_steps=2)  # scores, never drops


def _loop(model_name: str, method: str, steps: int, by_hand: bool) -> float:
    """Median seconds per step of one short run."""
    train, _, spec = load_dataset("mnist-sample", train_subset=128 * steps, test_subset=100)
    torch.manual_seed(0)
    model = leantrain.create_model(model_name, num_classes=10, in_channels=1, input_size=28)
    model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(train, spec, 128, train=True, seed=0, channels_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = _method(method)
    total = len(loader)
    if by_hand:
        if change := m.setup(model, leantrain.Progress(0, total, total)):
            change.apply_to(opt)
    else:
        handle = leantrain.attach(model, opt, m, total)
    times = []
    for step, (x, y) in enumerate(loader.epoch(0)):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if by_hand:
            m.after_backward(model, leantrain.Progress(step, total, total))
        opt.step()
        if by_hand and (change := m.step(model, leantrain.Progress(step + 1, total, total))):
            change.apply_to(opt)
        times.append(time.perf_counter() - start)
    if not by_hand:
        handle.detach()
    return statistics.median(times[2:])  # the first steps warm up the allocator and kernels


def attach_rows(model: str, steps: int, repeats: int) -> list[dict]:
    rows = []
    for method in ("dcp", "learndrop"):
        runs: dict[str, list[float]] = {"hand": [], "attach": []}
        for _ in range(repeats):  # alternated, so drifts of a shared machine hit both
            runs["hand"].append(_loop(model, method, steps, by_hand=True))
            runs["attach"].append(_loop(model, method, steps, by_hand=False))
        # The fastest run of each is the least disturbed by other work on the machine.
        hand, hooked = min(runs["hand"]), min(runs["attach"])
        rows.append({"part": "attach", "model": model, "method": method,
                     "threads": torch.get_num_threads(),
                     "hand_ms": 1e3 * hand, "attach_ms": 1e3 * hooked,
                     "ratio": hooked / hand, "runs_ms": {k: [1e3 * t for t in v]
                                                         for k, v in runs.items()}})
    return rows


def hook_overhead_row(calls: int = 20000, repeats: int = 5) -> dict:
    """Microseconds `attach` adds to one ``optimizer.step()`` (a no-op method, one parameter):
    the hooks' own cost, which the step-time comparison above cannot resolve on a busy machine."""
    def per_call(hooked: bool) -> float:
        model = torch.nn.Linear(1, 1)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        handle = leantrain.attach(model, opt, leantrain.Method(), calls) if hooked else None
        start = time.perf_counter()
        with warnings.catch_warnings():  # steps without a backward pass are the point here
            warnings.simplefilter("ignore")
            for _ in range(calls):
                opt.step()
        elapsed = (time.perf_counter() - start) / calls
        if handle is not None:
            handle.detach()
        return elapsed

    plain = min(per_call(False) for _ in range(repeats))
    hooked = min(per_call(True) for _ in range(repeats))
    return {"part": "attach-hooks", "plain_step_us": 1e6 * plain, "hooked_step_us": 1e6 * hooked,
            "overhead_us": 1e6 * (hooked - plain)}


def _train(args: list[str], procs: int, out: Path) -> dict:
    env = dict(os.environ)
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(procs), "-m", "leantrain", *args, "--threads", "1"]
    else:
        cmd = [sys.executable, "-m", "leantrain", *args, "--threads", str(os.cpu_count() or 1)]
    done = subprocess.run([*cmd, "--out-dir", str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:  # show why: the child's own last lines, not only its exit status
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit {done.returncode}:\n{tail}")
    (summary,) = out.glob("*/seed0/summary.json")
    return json.loads(summary.read_text())


def ddp_rows(model: str, epochs: int, subset: int) -> list[dict]:
    rows = []
    for method in ("none", "dcp"):
        base = ["train", "--model", model, "--dataset", "mnist-sample", "--train-subset",
                str(subset), "--test-subset", "100", "--epochs", str(epochs), "--batch-size",
                "128", "--method", method, "--no-progress"]
        steps = epochs * (subset // 128)
        row = {"part": "ddp", "model": model, "method": method, "global_batch": 128,
               "steps": steps}
        for procs in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                s = _train(base, procs, Path(tmp))
            row[f"p{procs}_ms_per_step"] = 1e3 * (s["train_s"] + s["surgery_s"]) / steps
        row["ratio"] = row["p2_ms_per_step"] / row["p1_ms_per_step"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["attach", "ddp", "both"], default="both")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the attach part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.part in ("attach", "both"):
        rows.append(hook_overhead_row())
        rows += attach_rows(args.model, args.steps, args.repeats)
    if args.part in ("ddp", "both"):
        rows += ddp_rows(args.model, 2, 128 * args.steps)
    env = environment(torch.device("cpu"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{environment_key(env)}.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps({**row, "env": env}) + "\n")
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                              for k, v in row.items() if k != "runs_ms"}))


if __name__ == "__main__":
    main()
