"""`leantrain demo`: a short offline run on the embedded MNIST sample, printed as a table.

It trains the same small recipe densely and with each pruning method (same seed, same process)
and prints accuracy, training time, the time ratio against dense and the training FLOPs, so a
new user sees what the library does in about a minute on 2 CPU cores.
"""

from __future__ import annotations

from typing import Any

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .runner import run

__all__ = ["demo_configs", "run_demo", "format_table"]

# (label, method, method_args): the rows of the demo table.
DEMO_METHODS: list[tuple[str, str, dict[str, dict[str, Any]]]] = [("dense", "none", {})]


def demo_configs(epochs: int = 2, out_dir: str = "runs/demo") -> list[tuple[str, RunConfig]]:
    """The demo's runs: ResNet-20 on the 28 px MNIST sample, SGD + cosine, batch 128."""
    return [
        (label, RunConfig(
            data=DataConfig(dataset="mnist-sample"),
            model=ModelConfig(name="resnet20"),
            train=TrainConfig(epochs=epochs, batch_size=128, lr=0.1, weight_decay=5e-4,
                              warmup=0.1),
            method=method, method_args=args, seed=0, out_dir=out_dir,
        ))
        for label, method, args in DEMO_METHODS
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width results table (airbench-style columns)."""
    head = f"{'method':<12} {'test acc':>9} {'train s':>8} {'time ×':>7} {'train GFLOPs':>13} {'params':>9}"
    lines = [head, "-" * len(head)]
    dense_time = next((r["train_s"] for r in rows if r["label"] == "dense"), None)
    for r in rows:
        ratio = f"{r['train_s'] / dense_time:.2f}" if dense_time else "–"
        lines.append(
            f"{r['label']:<12} {100 * r['test_acc']:>8.2f}% {r['train_s']:>8.1f} {ratio:>7} "
            f"{r['train_flops'] / 1e9:>13.1f} {r['params']:>9,}"
        )
    return "\n".join(lines)


def run_demo(epochs: int = 2, out_dir: str = "runs/demo", show_progress: bool = True) -> list[dict[str, Any]]:
    """Run every demo configuration and print the comparison table."""
    rows = []
    for label, cfg in demo_configs(epochs, out_dir):
        print(f"== {label}: {cfg.model.name} on {cfg.data.dataset}, {epochs} epochs")
        result, folder = run(cfg, show_progress=show_progress)
        rows.append({
            "label": label, "test_acc": result.test_acc, "train_s": result.times.get("train_s", 0.0)
            + result.times.get("surgery_s", 0.0), "train_flops": result.costs["train_flops"],
            "params": result.params, "folder": str(folder),
        })
    print()
    print(format_table(rows))
    print(f"\nrun folders under {out_dir}/ (metrics.jsonl, summary.json, model.safetensors)")
    return rows
