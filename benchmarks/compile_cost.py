"""torch.compile against eager for dense, Learn&Drop and DCP: steady step time, compile time and
the number of graphs compiled.

    python benchmarks/compile_cost.py                      # resnet32 and vgg16, all six configs
    python benchmarks/compile_cost.py --models resnet32 --methods dcp --steps 60

Each configuration (model × method × eager/compiled) runs in a fresh process (no graph or kernel
cached by another one; inductor's on-disk caches are switched off, so compile times are those of
a first run) for ``--steps`` training steps on real CIFAR-10 batches at batch 128:

* dense: no method;
* Learn&Drop: budget mode, half the droppable units gone by 30% of the steps (scored every 4),
  so the timed second half runs the shrunken network and every drop's recompile is seen;
* DCP: p = 0.5 after a 5% warm-up, the selection (and with it every layer's width) moving every
  step, as in training. Compiled with inductor it recompiles at most steps (inductor compiles a
  convolution for its exact channel counts, docs/compile.md), so that configuration is not run,
  as `leantrain train --compile` does not compile it.

A step that compiled a graph (dynamo's ``unique_graphs`` counter grew) is a compile step: its time
beyond the steady step is compile time. The steady step is the median of the last
``--timed`` steps, none of which compiled. One row per configuration is appended to
``benchmarks/step-cost/compile-<environment>.jsonl``; ``leantrain report --compile-rows`` turns them
into BENCHMARKS.md's table. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "step-cost"
METHODS = ("dense", "learndrop", "dcp")


def _method(name: str, steps: int):
    import leantrain

    if name == "learndrop":
        return [leantrain.LearnDrop(mode="budget", budget_target=0.5, budget_end=0.3,
                                    warmup=0.0, every_steps=4)]
    if name == "dcp":
        return [leantrain.DCP(p=0.5, warmup=0.05)]
    return []


def _compile_problem(method: str, backend: str) -> str | None:
    """Why `fit` would train this method eager under this backend (`Method.compile_problem`)."""
    return next((p for m in _method(method, 1) if (p := m.compile_problem(backend))), None)


def one(model_name: str, method: str, backend: str | None, steps: int, timed: int,
        batch: int) -> dict:
    """Train one configuration in this process and return its row."""
    import torch
    import torch.nn.functional as F
    from torch._dynamo.utils import counters

    import leantrain
    from leantrain.compiled import compile_model
    from leantrain.data import TensorLoader, load_dataset
    from leantrain.runs.env import environment
    from leantrain.runs.machine_share import MachineShare

    torch.set_num_threads(2)
    share = MachineShare()
    train, _, spec = load_dataset("cifar10", train_subset=batch * 20, test_subset=10)
    batches = list(TensorLoader(train, spec, batch, train=True, seed=0,
                                channels_last=True).epoch(0))
    torch.manual_seed(0)
    model = leantrain.create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    methods = _method(method, steps)
    if backend:
        compile_model(model, backend)
    handle = leantrain.attach(model, opt, methods, steps, allow_empty=True)
    times, compiled_at = [], []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        graphs = counters["stats"].get("unique_graphs", 0)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        if counters["stats"].get("unique_graphs", 0) > graphs:
            compiled_at.append(i)
    handle.detach()
    steady = times[-timed:]
    if any(i >= steps - timed for i in compiled_at):
        raise SystemExit(f"{model_name}/{method}: a timed step compiled; raise --steps.")
    median = statistics.median(steady)
    dropped = list(getattr(methods[0], "dropped", [])) if methods else []
    return {
        "model": model_name, "method": method, "backend": backend or "eager", "batch": batch,
        "steps": steps, "timed_steps": timed,
        "step_ms": 1e3 * median,
        "step_ms_spread": [1e3 * min(steady), 1e3 * max(steady)],
        "graphs": counters["stats"].get("unique_graphs", 0),
        "compile_steps": compiled_at,
        "compile_s": sum(times[i] - median for i in compiled_at),
        "graph_breaks": sum(counters["graph_break"].values()),
        "dropped": dropped,
        "machine": share.finish(), "env": environment(torch.device("cpu")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet32", "vgg16"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--timed", type=int, default=40, help="steady steps timed at the end")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        model, method, backend = args.one
        row = one(model, method, None if backend == "eager" else backend, args.steps, args.timed,
                  args.batch)
        print(json.dumps(row))
        return
    from leantrain.runs.env import environment_key

    env_vars = {**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    rows = []
    for model in args.models:
        for method in args.methods:
            for backend in ("eager", args.backend):
                if backend != "eager" and (why := _compile_problem(method, backend)):
                    print(f"{model:9s} {method:9s} {backend:9s} not run: {why}", flush=True)
                    continue
                cmd = [sys.executable, __file__, "--one", model, method, backend,
                       "--steps", str(args.steps), "--timed", str(args.timed),
                       "--batch", str(args.batch)]
                out = subprocess.run(cmd, env=env_vars, capture_output=True, text=True,
                                     check=False)
                if out.returncode != 0:
                    sys.exit(f"{model}/{method}/{backend} failed:\n{out.stderr[-2000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{model:9s} {method:9s} {backend:9s} {row['step_ms']:7.1f} ms/step  "
                      f"compile {row['compile_s']:6.1f} s in {row['graphs']} graph(s)  "
                      f"breaks {row['graph_breaks']}", flush=True)
                args.out.mkdir(parents=True, exist_ok=True)
                path = args.out / f"compile-{environment_key(row['env'])}.jsonl"
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
