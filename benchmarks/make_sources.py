"""Make the pretrained models the `finetune` suite starts from (run once; a run resumes).

    python benchmarks/make_sources.py                    # every source
    python benchmarks/make_sources.py resnet20-cifar10   # one

Each source is a dense run of a recipe in this repository, trained on this machine from the data
under $LEANTRAIN_DATA (no download, no model hub), and its model file and settings are copied to
``benchmarks/sources/<name>.safetensors`` and ``<name>.json``:

- ``resnet20-cifar10``: the `paper` suite's dense ResNet-20, seed 0 (full CIFAR-10, 30 epochs),
  i.e. the run ``leantrain bench paper --only resnet20/dense/seed0`` makes; when that run
  folder is there it is reused. 1.1 MB: committed.
- ``resnet18-cifar10``: torchvision's ResNet-18 on full CIFAR-10 at 32 px, by the recipe in
  ``benchmarks/sources/resnet18-cifar10.toml``. 45 MB: not committed; this script remakes it.

The `finetune` suite names these files with ``[model] init``; a run's identity holds the file's
sha256, so a remade file (another machine, another torch) makes new runs rather than mixing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "benchmarks" / "sources"


def _leantrain(*args: str) -> None:
    cmd = [sys.executable, "-m", "leantrain", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def _copy(folder: Path, name: str, made_by: str) -> None:
    """The run's model and its settings, with the command that made it, into SOURCES."""
    summary = json.loads((folder / "summary.json").read_text())
    SOURCES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "model.safetensors", SOURCES / f"{name}.safetensors")
    record = {
        "made_by": made_by,
        "config": json.loads((folder / "config.json").read_text()),
        "test_acc": summary["test_acc"],
        "train_s": summary.get("train_s"),
        "env": summary.get("env"),
    }
    (SOURCES / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: test accuracy {100 * summary['test_acc']:.2f}% → "
          f"{(SOURCES / f'{name}.safetensors').relative_to(ROOT)}")


def resnet20_cifar10() -> None:
    from leantrain.harness.suite import load_suite

    [run] = [r for r in load_suite("paper").runs if r.name == "cifar10/resnet20/dense/seed0"]
    folder = ROOT / run.config.run_dir()
    if not (folder / "summary.json").is_file():
        _leantrain("bench", "paper", "--only", "resnet20/dense/seed0")
    _copy(folder, "resnet20-cifar10", "leantrain bench paper --only resnet20/dense/seed0")


def resnet18_cifar10() -> None:
    recipe = SOURCES / "resnet18-cifar10.toml"
    out = ROOT / "runs" / "sources"
    started = list(out.glob("cifar10-torchvision_resnet18-dense-*/seed0"))
    if not any((f / "summary.json").is_file() for f in started):
        resume = ["--resume"] if any((f / "checkpoint.json").is_file() for f in started) else []
        _leantrain("train", "-c", str(recipe), "--out-dir", str(out), *resume)
    [folder] = [p.parent for p in out.glob("cifar10-torchvision_resnet18-dense-*/seed0/summary.json")]
    _copy(folder, "resnet18-cifar10",
          "leantrain train -c benchmarks/sources/resnet18-cifar10.toml --out-dir runs/sources")


MAKERS = {"resnet20-cifar10": resnet20_cifar10, "resnet18-cifar10": resnet18_cifar10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"sources to make (default: all of {', '.join(MAKERS)})")
    args = parser.parse_args(argv)
    if unknown := [n for n in args.names if n not in MAKERS]:
        parser.error(f"unknown source {unknown[0]!r}; choose from {', '.join(MAKERS)}.")
    for name in args.names or MAKERS:
        MAKERS[name]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
