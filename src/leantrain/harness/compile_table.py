"""The torch.compile table of the report, from ``benchmarks/compile_cost.py``'s rows.

For each model and method: the steady step time eager and compiled, their ratio, the method's
step against dense in each mode, the compile time and the graphs compiled; then the issue #28
check, per model: compiled DCP's step ≤ compiled dense × DCP's eager ratio to dense (compile
keeps DCP's saving).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .rows import hardware_name

__all__ = ["compile_section", "load_compile_rows"]


def load_compile_rows(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Rows of the given ``compile-*.jsonl`` files (folders: every such file in them); the
    last row of each (machine, torch, model, method, backend) counts."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("compile-*.jsonl")) if p.is_dir() else [p]
    latest: dict[tuple, dict[str, Any]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                env = row.get("env", {})
                key = (hardware_name(env), env.get("torch"), row["model"], row["method"],
                       row["backend"])
                latest[key] = row
    return list(latest.values())


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}×"


def compile_section(rows: list[dict[str, Any]], level: str = "##") -> list[str]:
    """Markdown lines of the compile section (empty without rows)."""
    if not rows:
        return []
    env = rows[0].get("env", {})
    machines = sorted({hardware_name(r.get("env", {})) for r in rows})
    step = {(r["model"], r["method"], r["backend"] != "eager"): r for r in rows}
    backend = next((r["backend"] for r in rows if r["backend"] != "eager"), "inductor")
    first = rows[0]
    lines = [
        f"{level} torch.compile",
        "",
        (f"`python benchmarks/compile_cost.py` on {', '.join(machines)}, torch {env.get('torch')}, "
        f"{env.get('threads', 2)} threads, backend `{backend}`, batch {first['batch']}, real "
        f"CIFAR-10 batches; {first['steps']} steps per configuration, each in a fresh process "
        f"with inductor's caches off; step time: median of the last {first['timed_steps']} "
        "steps (none of which compiled); compile time: what the steps that compiled a graph took "
        "beyond that. Learn&Drop: budget mode, half the droppable units gone by 30% of the "
        "steps (one recompile per drop); DCP: p = 0.5, widths moving every step."),
        "",
        ("| model | method | eager ms/step | compiled ms/step | compiled / eager | vs dense, eager "
         "| vs dense, compiled | compile s | graphs | breaks |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        for method in ("dense", "learndrop", "dcp"):
            e, c = step.get((model, method, False)), step.get((model, method, True))
            if e is None and c is None:
                continue
            de, dc = step.get((model, "dense", False)), step.get((model, "dense", True))
            lines.append(
                f"| {model} | {method} | {_fmt(_ms(e))} | {_fmt(_ms(c))} | "
                f"{_ratio(_ms(c), _ms(e))} | {_ratio(_ms(e), _ms(de))} | {_ratio(_ms(c), _ms(dc))} | "
                f"{'–' if c is None else format(c['compile_s'], '.0f')} | "
                f"{'–' if c is None else c['graphs']} | "
                f"{'–' if c is None else c['graph_breaks']} |")
    lines += ["", *_dcp_checks(step, models), ""]
    return lines


def _ms(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row["step_ms"]


def _fmt(ms: float | None) -> str:
    return "–" if ms is None else f"{ms:.0f}"


def _dcp_checks(step: dict[tuple, dict[str, Any]], models: list[str]) -> list[str]:
    """The #28 target per model, stated from the rows."""
    out = []
    for model in models:
        parts = [step.get((model, m, c)) for m in ("dense", "dcp") for c in (False, True)]
        if parts[2] is not None and parts[3] is None:
            out.append(
                f"- {model}: compiled DCP has no step time: with inductor it recompiles whenever "
                "a layer reaches a width it has not had (inductor compiles a convolution for its "
                "exact channel counts), so `--compile` trains DCP eager (docs/compile.md).")
        if any(p is None for p in parts):
            continue
        de, dc, pe, pc = (p["step_ms"] for p in parts)
        bound = dc * pe / de
        verdict = "meets" if pc <= bound else "misses"
        out.append(
            f"- {model}: compiled DCP {pc:.0f} ms/step against the bound compiled dense × DCP's "
            f"eager ratio = {dc:.0f} × {pe / de:.2f} = {bound:.0f} ms: {verdict} it "
            f"({pc / bound:.2f}× the bound); compile makes DCP {pe / pc:.2f}× faster and dense "
            f"{de / dc:.2f}× faster.")
    return out
