"""Command-line interface: ``leantrain train | demo | cost | inspect | bench | report | export | eval`` (each
command owns its subparser).

Errors a user can fix (bad paths, corrupt files, impossible settings) print one sentence and exit
with status 2, never a traceback; ``LEANTRAIN_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from typing import Any, Callable, Sequence

__all__ = ["main"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _command(name: str):
    def wrap(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = fn
        return fn
    return wrap


# --------------------------------------------------------------------------------------- commands


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .runs.flags import add_config_flags

    p = sub.add_parser(
        "train", help="train a model, optionally with a pruning method",
        description="Train a registered model on a data set; writes a run folder.",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="continue this run (same settings and seed) from its last checkpoint")
    p.add_argument("--resume-from", metavar="RUN", default=None,
                   help="continue from another run folder's checkpoint, e.g. with a lower --lr")
    add_config_flags(p)


@_command("train")
def _train(args: argparse.Namespace) -> int:
    from .runs.flags import config_from_args
    from .runs.runner import finished_summary, run

    cfg = config_from_args(args)
    if args.resume and args.resume_from:
        raise ValueError(
            "--resume continues this run's own checkpoint and --resume-from another's; give one."
        )
    if args.resume and (summary := finished_summary(cfg.run_dir())) is not None:
        _check_finite(float(summary.get("test_loss", 0)), float(summary.get("test_acc", 0)),
                      cfg.run_dir(), cfg.train.lr)
        print(f"the run in {cfg.run_dir()} has already finished (test accuracy "
              f"{100 * float(summary.get('test_acc', 0)):.2f}%); nothing to resume.")
        return 0
    try:
        result, folder = run(cfg, show_progress=not args.no_progress, resume=args.resume,
                             resume_from=args.resume_from)
    except RuntimeError as e:  # under torchrun: a collective failed because a peer died
        from torch.distributed import DistError

        from .training.distributed import DivergedRanks

        # Some gloo failures arrive as a plain RuntimeError naming gloo's source file.
        collective = isinstance(e, (DistError, DivergedRanks)) or any(
            word in str(e) for word in ("gloo", "NCCL", "nccl"))
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not collective:
            raise
        print(f"leantrain: error: process {os.environ.get('RANK')} of {os.environ['WORLD_SIZE']} "
              f"stopped: {_first_line(e)}; the job stops, continue it with the same torchrun "
              "command plus --resume.", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # process 0 reports for the job
    _check_finite(result.test_loss, result.test_acc, folder, cfg.train.lr)
    print(f"final test accuracy {100 * result.test_acc:.2f}%  train {result.times.get('train_s', 0):.1f}s"
          f"  → {folder}")
    return 0


def _check_finite(test_loss: float, test_acc: float, folder: Any, lr: float) -> None:
    """A run that ends with a NaN/inf test loss finished, but its model is useless: exit 2.

    `fit`'s divergence guard watches the training loss; a run can still end with finite
    training losses and weights but eval-mode outputs that overflow (BN running statistics
    blown up by a huge step), which only the final test loss shows.
    """
    if math.isfinite(test_loss):
        return
    raise ValueError(
        f"training diverged: the final test loss is {test_loss} (test accuracy "
        f"{100 * test_acc:.2f}%), so the saved model is useless; its run folder {folder} keeps "
        f"the model, metrics and summary to inspect; train again with a lower --lr than {lr:g} "
        "or with a warm-up (e.g. --warmup 0.05)."
    )


def _first_line(e: BaseException) -> str:
    from .training.distributed import DivergedRanks

    if isinstance(e, DivergedRanks):
        return str(e).rstrip(".")
    # gloo/NCCL errors name the C++ source line first; the reason is the sentence after it.
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", line).split(". ")[0].rstrip(".")
    return f"another process of the job died ({reason[:160]})"


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="short offline run on the embedded MNIST sample",
        description="Train on the MNIST sample shipped inside leantrain and print a results table.",
    )
    from .runs.demo import EPOCHS, TRAIN_SUBSET

    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"(default {EPOCHS})")
    p.add_argument("--train-subset", type=int, default=TRAIN_SUBSET,
                   help="training images of the 6000-image sample (default: all)")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--no-progress", action="store_true")


@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    from .runs.demo import run_demo

    run_demo(epochs=args.epochs, out_dir=args.out_dir, show_progress=not args.no_progress,
             train_subset=args.train_subset)
    return 0


def _add_cost(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cost", help="parameters, MACs and training FLOPs of a model",
        description="Print parameters, MACs (multiply-accumulates) and training FLOPs "
        "(2 FLOPs per MAC, forward + backward) per sample.",
    )
    p.add_argument("model", nargs="?",
                   help="a registered name (see --list), torchvision:NAME or package.module:factory")
    p.add_argument("--input", default="3x32x32", help="CxHxW, e.g. 1x28x28 or 3x64x64")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--list", action="store_true", help="list registered models")
    p.add_argument("-v", "--verbose", action="store_true", help="per-layer table")


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input {text!r} is not CxHxW (e.g. 3x32x32).") from None
    if c not in (1, 3) or h != w or h < 8:
        raise ValueError(f"--input {text!r}: need 1 or 3 channels and a square size ≥ 8.")
    return c, h, w


def _check_input(model: Any, shape: tuple[int, int, int]) -> None:
    """One sentence, not a torch traceback, when the model cannot take an ``--input`` of `shape`."""
    from .runs.runner import ProbeError, probe_model

    try:
        probe_model(model, shape)
    except ProbeError as e:
        c, h, w = shape
        if e.expected_channels is not None:
            raise ValueError(
                f"the model's first layer expects {e.expected_channels} input channels but "
                f"--input gives {c}; pass --input {e.expected_channels}x{h}x{w}."
            ) from e
        raise ValueError(
            f"the model fails on --input {c}x{h}x{w} ({e.reason}); pass the input size it was "
            "written for."
        ) from e


@_command("cost")
def _cost(args: argparse.Namespace) -> int:
    from .cost import count_macs, count_params, layer_costs, measure_step_flops
    from .models.factory import create_model, list_models

    if args.list or not args.model:
        print("\n".join(list_models()))
        return 0
    c, h, _ = _parse_shape(args.input)
    model = create_model(args.model, num_classes=args.num_classes, in_channels=c, input_size=h)
    shape = (c, h, h)
    _check_input(model, shape)
    step = measure_step_flops(model, shape)
    if args.verbose:
        print(f"{'layer':<32} {'type':<14} {'params':>12} {'MACs':>15}  output")
        for row in layer_costs(model, shape):
            print(f"{row['name']:<32} {row['type']:<14} {row['params']:>12,} {row['macs']:>15,}  "
                  f"{row.get('output_shape', '')}")
    print(f"model            {args.model} ({'x'.join(map(str, shape))}, {args.num_classes} classes)")
    print(f"params           {count_params(model):,}")
    print(f"MACs             {count_macs(model, shape):,}   (forward, per sample)")
    print(f"forward FLOPs    {step.forward_flops:,}")
    print(f"backward FLOPs   {step.backward_flops:,}")
    print(f"train FLOPs      {step.train_flops:,}   (forward + backward, per sample)")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="what Learn&Drop and DCP can change in a model, found by tracing",
        description="Trace a model's forward and list its droppable units (with their share of "
        "the MACs), its prunable channel sets (with their sizes) and every part left out, with "
        "the reason.",
    )
    p.add_argument("model", help="a registered name, torchvision:NAME, package.module:factory, "
                   "or a saved model file (model.safetensors of a run)")
    p.add_argument("--input", default="3x32x32", help="CxHxW of one sample, e.g. 3x64x64")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--widths", action="store_true",
                   help="print only the channel sets' widths as a `static.widths` TOML line (a "
                   "DCP run's final widths, for the static control trained at them)")
    # A model file may name a package.module:factory; opening it runs that code only when the
    # user names the same factory (a file must not choose code to run).
    p.add_argument("--model", dest="factory", metavar="PKG.MOD:FACTORY", default=None,
                   help="a model file built by your own factory: that factory, which you trust "
                   "to run (a file naming another is refused)")


@_command("inspect")
def _inspect(args: argparse.Namespace) -> int:
    from .models.factory import create_model
    from .structure import prepare

    c, h, _ = _parse_shape(args.input)
    if args.model.endswith(".safetensors"):
        from .models.files import load_model

        model = load_model(args.model, factory=args.factory)
    elif args.factory is not None:
        raise ValueError(
            f"--model names the factory a model file was built by, but {args.model} is not a "
            ".safetensors file; name your factory as the model instead: leantrain inspect "
            f"{args.factory}."
        )
    else:
        model = create_model(args.model, num_classes=args.num_classes, in_channels=c, input_size=h)
    _check_input(model, (c, h, h))  # before tracing, whose shape pass would print torch's traceback
    structure = prepare(model, (c, h, h))
    if args.widths:
        print(f"widths = {[len(s) for s in structure.channel_sets]}")
        return 0
    print(f"{args.model} at {args.input}, {structure.macs.get('', 0):,} MACs per sample")
    print(structure)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .harness.bench import add_parser

    add_parser(sub)


@_command("bench")
def _bench(args: argparse.Namespace) -> int:
    from .harness.bench import main as bench_main

    return bench_main(args)


def _add_report(sub: argparse._SubParsersAction) -> None:
    from .harness.report import add_parser

    add_parser(sub)


@_command("report")
def _report(args: argparse.Namespace) -> int:
    from .harness.report import main as report_main

    return report_main(args)


_PARSERS = [_add_train, _add_demo, _add_cost, _add_inspect, _add_bench, _add_report]



def _add_export(sub: argparse._SubParsersAction) -> None:
    from .runs.export import FORMATS

    p = sub.add_parser(
        "export", help="write a run's compact model as safetensors, .pt2 or ONNX",
        description="Write the final model of a run (dropped units and pruned channels gone) in "
        "another format, read it back and compare its outputs with the model's.",
    )
    p.add_argument("source", metavar="RUN", help="a run folder or a .safetensors model file")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors, pt2 (torch.export) or onnx (default: safetensors)")
    p.add_argument("--out", metavar="PATH", help="output file (default: next to the model file)")
    # A model file may name a package.module:factory; opening it runs that code only when the
    # user names the same factory (a file must not choose code to run).
    p.add_argument("--model", dest="factory", metavar="PKG.MOD:FACTORY", default=None,
                   help="a model file built by your own factory: that factory, which you trust "
                   "to run (a file naming another is refused)")


@_command("export")
def _export(args: argparse.Namespace) -> int:
    from .runs.export import export_model

    report = export_model(args.source, args.format, args.out, factory=args.factory)
    check = ("outputs not compared" if report.max_abs_diff is None
             else f"max abs difference vs. the in-memory model {report.max_abs_diff:.2g}")
    note = f"; {report.note}" if report.note else ""
    print(f"wrote {report.path} ({report.format}); {check}{note}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="test accuracy and loss of a saved model",
        description="Evaluate a leantrain .safetensors model file (or a run folder's final model) "
        "on a data set's test split.",
    )
    p.add_argument("model_file", metavar="MODEL_FILE",
                   help="a .safetensors model file or a run folder")
    p.add_argument("--dataset", required=True, help="data set name, e.g. cifar10 or mnist-sample")
    p.add_argument("--data-dir", default=None,
                   help="data root (default: $LEANTRAIN_DATA or the cache)")
    p.add_argument("--test-subset", type=int, default=None, metavar="N",
                   help="N test images, class-balanced and seeded")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    # A model file may name a package.module:factory; opening it runs that code only when the
    # user names the same factory (a file must not choose code to run).
    p.add_argument("--model", dest="factory", metavar="PKG.MOD:FACTORY", default=None,
                   help="a model file built by your own factory: that factory, which you trust "
                   "to run (a file naming another is refused)")


@_command("eval")
def _eval(args: argparse.Namespace) -> int:
    from .runs.export import evaluate_model_file

    acc, loss, n = evaluate_model_file(args.model_file, args.dataset, args.data_dir,
                                       test_subset=args.test_subset, device=args.device,
                                       factory=args.factory)
    print(f"test accuracy {100 * acc:.2f}%  test loss {loss:.4f}  ({n} images of {args.dataset})")
    return 0


_PARSERS += [_add_export, _add_eval]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="leantrain",
        description="Faster CNN training by pruning while training (Learn&Drop, DCP).",
    )
    parser.add_argument("--version", action="version", version=f"leantrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _PARSERS:
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .training.fit import TrainingDiverged

    return (ValueError, OSError, TrainingDiverged)


_print_other_warning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """leantrain's own warnings (e.g. a checkpoint fallback) as one line; others as usual."""
    if category.__module__.startswith("leantrain"):
        print(f"leantrain: warning: {message}", file=sys.stderr)
    else:
        _print_other_warning(message, category, *args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leantrain`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards (main runs in tests too)
            warnings.showwarning = _show_warning
            return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        hint = ("; continue from the last checkpoint with the same command plus --resume"
                if args.command == "train" else "")
        print(f"leantrain: interrupted{hint}.", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if os.environ.get("LEANTRAIN_DEBUG"):
            raise
        print(f"leantrain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
