"""`leantrain bench SUITE`: run a benchmark grid and append one result row per run.

Suites are described in `leantrain.harness.suite`; runs come in its order (each dense run right
before the method runs it is compared with). Every run executes in a fresh subprocess
(`leantrain.runs.runner.run`), which isolates runs and makes the process's peak RSS a per-run memory
figure. Rows go to ``<results-dir>/<suite>-<environment key>.jsonl`` (whole lines, flushed and
fsynced); a run whose key (suite, label, data set, model, seed, config digest) is already there
is skipped, so an interrupted suite resumes where it stopped, and an interrupted run continues
from its last checkpoint (lap times and machine-share records carry over) if it is resumed on
the machine that wrote the checkpoint; elsewhere it starts over, so its time is one machine's.

Nothing a run produced is lost: each row is first kept in its run folder (``bench-row.json``),
then appended to the results file; a run folder that already holds a finished run is never
trained again, its row is taken from it (so a results file that could not be written is
completed by the next call). A failed run prints one line (the last line of its error and where
its full log is kept, ``<results-dir>/logs/``).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..config import ConfigError
from ..runs.config import (
    MODEL_DIGEST_NEUTRAL, TRAIN_DIGEST_NEUTRAL, from_dict, without_neutral,
)
from ..runs.env import environment, environment_key, hardware_name, machine_key
from .suite import BenchRun, Suite, load_suite, suite_names

__all__ = [
    "BenchRun",
    "Suite",
    "load_suite",
    "suite_names",
    "run_suite",
    "results_path",
    "read_results",
    "recipe_digest",
]

# Event kinds kept in a result row's trace (structural changes, with their FLOPs when known).
_TRACE_EVENTS = ("drop", "freeze", "tp_prune", "dcp_export", "ld_checkpoint")
_TRACE_EPOCH_KEYS = (
    "epoch",
    "step",
    "test_acc",
    "train_s",
    "surgery_s",
    "forward_flops",
    "train_flops",
    "samples",
    "params",
)


def results_path(suite: Suite, results_dir: str | Path, env: dict[str, Any]) -> Path:
    """``<results_dir>/<suite>-<environment key>.jsonl``."""
    return Path(results_dir) / f"{suite.name}-{environment_key(env)}.jsonl"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file; a torn last line (interrupted write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# Training settings a suite row may set for itself and still be compared with the recipe's
# full-length dense run: the budget (the share of the epochs trained), the LR schedule's shape
# (neither changes what one step computes; Li et al., arXiv 1905.04753, pair each budget with a
# schedule that decays to 0 at its end) and frozen layers (the fine-tuner's own way to go
# faster: training the head only, or freezing the first stages).
ROW_SETTINGS = ("budget", "schedule", "freeze")


def recipe_digest(config: dict[str, Any]) -> str:
    """What makes two runs' times comparable besides the machine: data set (without where it
    lives), model and training recipe, hashed. The method and the seed are left out, and so are
    the settings a row of the dense frontier varies (`ROW_SETTINGS`): dense trained for part
    of the epochs is measured against full-length dense, as the methods are."""
    data = {k: v for k, v in config.get("data", {}).items() if k not in ("data_dir", "download")}
    # Settings added after rows were recorded are left out at the value that does what those
    # rows did (`RunConfig.digest` does the same), so an old row and a new one share a recipe.
    train = {k: v for k, v in without_neutral(config.get("train") or {},
                                              TRAIN_DIGEST_NEUTRAL).items()
             if k not in ROW_SETTINGS}
    model = config.get("model")
    if isinstance(model, dict):
        model = without_neutral(model, MODEL_DIGEST_NEUTRAL)
    blob = json.dumps({"data": data, "model": model, "train": train}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _untimed_note(
    todo: list[BenchRun], rows: list[dict[str, Any]], env: dict[str, Any]
) -> str | None:
    """A warning when method runs are about to run where no dense run of their recipe was or will
    be timed: a suite spread over sessions can land on another machine, and a time is compared
    only with dense's on the same machine, so those runs would get no speed-up, or one against
    dense's time inferred from its shorter runs there (`leantrain.harness.pace.
    infer_dense_times`), which is only as steady as the machine's speed between runs."""
    here = machine_key(env)

    # (recipe, full length?) of every dense run here, recorded or selected
    dense_runs = [
        (recipe_digest(r.get("config", {})),
         (r.get("config", {}).get("train") or {}).get("budget", 1.0) == 1.0)
        for r in rows
        if r.get("config", {}).get("method", "none") in ("none", "")
        and machine_key(r.get("env", {})) == here
    ] + [(recipe_digest(r.config.to_dict()), r.config.train.budget == 1.0)
         for r in todo if not r.config.method_names()]
    timed = {recipe for recipe, full in dense_runs if full}
    shorter = {recipe for recipe, full in dense_runs if not full}
    untimed = [r for r in todo
               if r.config.method_names() and recipe_digest(r.config.to_dict()) not in timed]
    if not untimed:
        return None
    inferred = [r for r in untimed if recipe_digest(r.config.to_dict()) in shorter]
    models = sorted({f"{r.config.data.dataset}/{r.config.model.name}" for r in untimed})
    what = (
        f"so {len(untimed)} method run(s) selected will get accuracy and FLOPs but no speed-up"
        if not inferred else
        f"so {len(inferred)} of the {len(untimed)} method run(s) selected will be timed against "
        "dense's time inferred from its shorter runs here (`leantrain.harness.pace."
        "infer_dense_times`; only as steady as this machine's speed between runs)"
        + ("" if len(inferred) == len(untimed) else ", the others get no speed-up")
    )
    return (
        f"note: no dense run of {', '.join(models)} with this recipe has been timed on this "
        f"machine ({hardware_name(env)}), {what}; run `--only {models[0]}/dense` here first "
        "(any seed) to time them."
    )


def _append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _without_seed(key: str) -> str:
    """``suite|data/model/label/seedN|digest`` → ``suite|data/model/label|digest``."""
    suite, _, rest = key.partition("|")
    name, _, digest = rest.rpartition("|")
    return f"{suite}|{name.rpartition('/')[0]}|{digest}"


def _set_aside_stale(path: Path, keys: set[str]) -> int:
    """Move rows whose run is no longer in the suite (its config changed) to ``PATH.stale``.

    The report reads every row of a results file, so rows of an edited recipe must leave it, or
    they would be averaged with the new ones as if they were more seeds. They are kept, not
    deleted, in a file the report does not read.
    """
    # A run's settings digest does not include its seed, so rows of seeds this call does not
    # run (`--seeds 0` after `--seeds 0 1`) stay current as long as their settings do.
    settings = {_without_seed(k) for k in keys}
    rows = read_results(path)
    current = [row for row in rows if _without_seed(row.get("key", "")) in settings]
    stale = [row for row in rows if _without_seed(row.get("key", "")) not in settings]
    if not stale:
        return 0
    with path.with_name(path.name + ".stale").open("a") as f:
        f.writelines(json.dumps(row, default=float) + "\n" for row in stale)
    # Atomic: an interruption leaves the old or the new file, never half.
    write_atomic(path, "".join(json.dumps(row, default=float) + "\n" for row in current))
    return len(stale)


def _trace(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch costs and structural events, kept in the row so plots need no run folder."""
    epochs = [
        {k: r[k] for k in _TRACE_EPOCH_KEYS if k in r}
        for r in read_results(folder / "metrics.jsonl")
    ]
    events = []
    for e in read_results(folder / "events.jsonl"):
        if e.get("kind") not in _TRACE_EVENTS:
            continue
        keep = {
            k: e[k]
            for k in (
                "kind",
                "step",
                "unit",
                "forward_flops",
                "forward_flops_before",
                "forward_flops_after",
            )
            if k in e
        }
        if "removed" in e:
            keep["removed"] = len(e["removed"])
        if isinstance(e.get("units"), dict):  # a Learn&Drop checkpoint: its lowest score
            scored = [(v["S"], name) for name, v in e["units"].items()
                      if isinstance(v, dict) and isinstance(v.get("S"), (int, float))]
            if scored:
                keep["lowest_S"], keep["lowest_unit"] = min(scored)
        events.append(keep)
    return {"epochs": epochs, "events": events}


ROW_FILE = "bench-row.json"  # a run's row, kept in its folder before it goes to the results


def _execute(run: BenchRun, env_vars: dict[str, str]) -> tuple[dict[str, Any] | None, str, float]:
    """Run one config in a fresh interpreter; returns (summary or None, its stderr, wall s)."""
    folder = run.config.run_dir()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "leantrain.harness.bench", json.dumps(run.config.to_dict())],
        capture_output=True,
        text=True,
        env=env_vars,
    )
    wall = time.perf_counter() - start
    summary_file = folder / "summary.json"
    # The child refuses to train over a finished run, so a summary after exit 0 is its own.
    if proc.returncode != 0 or not summary_file.is_file():
        return None, proc.stderr or proc.stdout or f"exit status {proc.returncode}", wall
    return json.loads(summary_file.read_text()), "", wall


def _failure_line(run: BenchRun, error: str, logs: Path) -> str:
    """One line for a failed run: the last line of its error and where the whole log is."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    log = logs / (run.name.replace("/", "-") + ".log")
    try:
        write_atomic(log, error)
        where = f"full log in {log}"
    except OSError as e:
        where = f"its log could not be saved to {log} ({e.strerror or e})"
    return f"{run.name}: FAILED: {last.removeprefix('leantrain: error: ')} ({where})"


def _row(run: BenchRun, suite: Suite, summary: dict[str, Any], wall: float | None) -> dict[str, Any]:
    folder = run.config.run_dir()
    return {
        "key": run.key,
        "suite": suite.name,
        "label": run.label,
        "digest": run.config.digest(),
        "config": run.config.to_dict(),
        "env_key": environment_key(summary["env"]),
        **summary,
        "run_dir": str(folder),
        "wall_s": wall,
        "trace": _trace(folder),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _finished_row(run: BenchRun, suite: Suite) -> dict[str, Any] | None:
    """The row of a run whose folder already holds a finished run (kept or rebuilt), or None."""
    from ..runs.runner import finished_summary

    folder = run.config.run_dir()
    summary = finished_summary(folder)
    if summary is None:
        return None
    try:
        kept = json.loads((folder / ROW_FILE).read_text())
    except (OSError, ValueError):
        kept = None
    if isinstance(kept, dict) and kept.get("key") == run.key:
        return kept
    # Finished outside bench (or before rows were kept): its wall time is unknown.
    return _row(run, suite, summary, None)


def _matches(run: BenchRun, pattern: str | None) -> bool:
    if not pattern:
        return True
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return fnmatch.fnmatch(run.name, pattern)


def run_suite(
    suite: Suite,
    results_dir: str | Path = "benchmarks/results",
    *,
    only: str | None = None,
    dry_run: bool = False,
    data_dir: str | None = None,
    show_progress: bool = True,
) -> tuple[Path, int]:
    """Run every run of `suite` that has no row yet, each in a fresh subprocess.

    Args:
        suite: from `load_suite`.
        results_dir: folder of the results file (``<suite>-<environment key>.jsonl``).
        only: run only runs whose ``dataset/model/label/seedN`` matches this glob (a pattern
            without wildcards matches as a substring).
        dry_run: list the selected runs and whether each is done; run nothing.
        data_dir: data root for the runs (passed as ``$LEANTRAIN_DATA``; not part of the
            configuration, so results do not depend on where the data lives).
        show_progress: draw the overall progress bar (the per-run lines are always printed).

    Returns:
        The results file and the number of runs that failed (they get no row and are retried
        by the next call).
    """
    from tqdm.auto import tqdm

    from ..training.fit import resolve_device

    devices = {r.config.train.device for r in suite.runs}
    if len(devices) > 1:
        raise ConfigError(
            f"suite {suite.name} mixes devices {sorted(devices)}; one results file "
            "holds one environment."
        )
    env = environment(resolve_device(devices.pop()))
    path = results_path(suite, results_dir, env)
    if not dry_run and (moved := _set_aside_stale(path, {r.key for r in suite.runs})):
        print(f"{moved} rows of runs no longer in suite {suite.name} (changed settings) moved to "
              f"{path.name}.stale")
    rows = read_results(path)
    done = {row.get("key") for row in rows}
    todo = [r for r in suite.runs if _matches(r, only) and r.key not in done]
    selected = sum(_matches(r, only) for r in suite.runs)
    print(
        f"suite {suite.name}: {selected} runs selected, {selected - len(todo)} already in {path}, "
        f"{len(todo)} to run"
    )
    if note := _untimed_note(todo, rows, env):
        print(note)
    if dry_run:
        for r in suite.runs:
            if _matches(r, only):
                print(f"  {'done' if r.key in done else 'todo'}  {r.name}  ({r.config.method})")
        return path, 0
    env_vars = dict(os.environ)
    if data_dir:
        env_vars["LEANTRAIN_DATA"] = str(data_dir)
    failures = 0
    dense_time: dict[tuple[str, str, int], float] = {}
    bar = tqdm(todo, unit="run", disable=not show_progress)
    logs = Path(results_dir) / "logs"
    for i, run in enumerate(bar, 1):
        bar.set_description(run.name)
        folder = run.config.run_dir()
        row = _finished_row(run, suite)  # never train over (or lose) a finished run
        if row is None:
            summary, error, wall = _execute(run, env_vars)
            if summary is None:
                failures += 1
                tqdm.write(f"[{i}/{len(todo)}] {_failure_line(run, error, logs)}")
                continue
            row = _row(run, suite, summary, wall)
            try:
                write_atomic(folder / ROW_FILE, json.dumps(row, default=float))
                kept = f"the row is kept in {folder / ROW_FILE} and the next call adds it"
            except OSError as e:
                kept = f"nor could the row be kept in {folder} ({e.strerror or e})"
        else:
            kept = f"the row stays in {folder} and the next call adds it"
            tqdm.write(f"[{i}/{len(todo)}] {run.name}: finished earlier in {folder}; row taken "
                       "from there")
        summary = row
        try:
            _append_row(path, row)
        except OSError as e:
            failures += 1
            tqdm.write(
                f"[{i}/{len(todo)}] {run.name}: could not append its row to {path} "
                f"({e.strerror or e}); {kept}."
            )
            continue
        seconds = summary.get("train_s", 0.0) + summary.get("surgery_s", 0.0)
        # The speed-up against this seed's full-length dense run of the same recipe (the
        # report's baseline), not against dense at a reduced budget or another recipe.
        group = (recipe_digest(run.config.to_dict()), run.config.seed)
        train = run.config.train
        if not run.config.method_names() and train.budget == 1.0 and not train.freeze:
            dense_time[group] = seconds
        ratio = (
            f"  ×{dense_time[group] / seconds:.2f} vs dense"
            if group in dense_time and seconds
            else ""
        )
        peak = summary.get("peak_rss_mb")
        tqdm.write(
            f"[{i}/{len(todo)}] {run.name}: acc {100 * summary['test_acc']:.2f}%  "
            f"train {seconds:.1f}s{ratio}" + (f"  peak RSS {peak:.0f} MiB" if peak else "")
        )
    bar.close()
    return path, failures


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``bench`` subcommand's arguments."""
    p = sub.add_parser(
        "bench",
        help="run a benchmark suite (grid of data sets × models × methods × seeds)",
        description="Run a benchmark suite; each run in its own process; rows are appended to "
        "<results-dir>/<suite>-<environment>.jsonl and runs already there are skipped.",
    )
    p.add_argument("suite", nargs="?", help="suite name (see --list) or path to a suite TOML file")
    p.add_argument("--seeds", type=int, nargs="+", help="override the suite's seeds")
    p.add_argument(
        "--only", help="run only runs whose dataset/model/label/seedN matches (glob or substring)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status only")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--out-dir", help="parent of the run folders (default runs/bench/<suite>)")
    p.add_argument("--data-dir", help="data root for every run (else $LEANTRAIN_DATA or the cache)")
    p.add_argument("--list", action="store_true", help="list the shipped suites")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    """Entry of ``leantrain bench``: 0 when every run succeeded, 1 when some failed."""
    if args.list or not args.suite:
        print("\n".join(suite_names()))
        return 0
    suite = load_suite(args.suite, seeds=args.seeds, out_dir=args.out_dir)
    path, failures = run_suite(
        suite,
        args.results_dir,
        only=args.only,
        dry_run=args.dry_run,
        data_dir=args.data_dir,
        show_progress=not args.no_progress,
    )
    if failures:
        print(f"{failures} run(s) failed; rerun the same command to retry them.", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"results: {path}")
    return 0


def _resume_mode(cfg: Any) -> str:
    """``"auto"`` (continue a checkpoint if there is one), or ``"restart"`` when the run's
    checkpoint was written on another machine: its training time would add two machines'
    seconds, which no time ratio can be computed from (`leantrain.runs.env.machine_key`)."""
    from ..training.checkpoint import CheckpointError, has_checkpoint, load_checkpoint
    from ..training.fit import resolve_device

    folder = cfg.run_dir()
    if not has_checkpoint(folder):
        return "auto"
    try:
        saved = load_checkpoint(folder).extra.get("machine")
    except CheckpointError:
        return "auto"  # `run` says what is wrong with it and the run starts over
    here = list(machine_key(environment(resolve_device(cfg.train.device))))
    if saved is None or saved == here:  # None: written before checkpoints named their machine
        return "auto"
    print(
        f"leantrain: {folder}: its checkpoint was written on another machine ({saved}, this is "
        f"{here}); starting the run over so its time comes from one machine.", file=sys.stderr,
    )
    return "restart"


def _child(config_json: str) -> int:
    """Body of the per-run subprocess: rebuild the config and run it quietly.

    A user error ends it as the CLI would (one ``leantrain: error:`` line, exit 2), so the
    parent's one-line report shows the sentence, not an exception's type.
    """
    from ..training.checkpoint import CheckpointError
    from ..methods import method_fields
    from ..runs.runner import run
    from ..training.fit import TrainingDiverged

    cfg = from_dict(json.loads(config_json), method_fields())
    try:
        # An interrupted run continues from its last checkpoint, so a long suite can span
        # sessions: the checkpoint carries the lap times (the redone partial epoch is not
        # counted twice) and every segment's machine-share record (the run is quiet only if each
        # segment was). The row's peak memory is its last segment's. A checkpoint that cannot be
        # used, or one written on another machine, is no reason to fail the run: it starts over.
        try:
            run(cfg, show_progress=False, resume=_resume_mode(cfg))
        except CheckpointError as e:
            print(f"leantrain: {cfg.run_dir()}: {e}; starting the run over.", file=sys.stderr)
            run(cfg, show_progress=False, resume="restart")
    except (ValueError, OSError, TrainingDiverged) as e:
        print(f"leantrain: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
