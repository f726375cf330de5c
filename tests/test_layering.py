"""Layering: the core reads alone; the benchmark harness builds on it, never the reverse.

Front ends (cli, __main__, demo) may import anything; the harness (`leantrain.harness`) imports
the core; a core module (everything else) imports neither the harness nor a front end.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import leantrain

PACKAGE = Path(leantrain.__file__).parent
# leantrain.lightning too: the Lightning callback, a front end whose import needs the extra.
FRONT_ENDS = {"leantrain.cli", "leantrain.__main__", "leantrain.demo", "leantrain.lightning"}
HARNESS = "leantrain.harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_harness(name: str) -> bool:
    return name == HARNESS or name.startswith(HARNESS + ".")


def _is_front_end(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FRONT_ENDS)


def imported_modules(path: Path) -> set[str]:
    """Every leantrain module `path` imports anywhere (top level, functions, TYPE_CHECKING), plus
    module names written as strings (``importlib.import_module``, ``python -m``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)  # `from . import harness`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"leantrain(\.\w+)+", node.value):
                out.add(node.value)
    return {m for m in out if m == "leantrain" or m.startswith("leantrain.")}


CORE = sorted(n for n in _modules() if not _is_harness(n) and not _is_front_end(n))
HARNESS_MODULES = sorted(n for n in _modules() if _is_harness(n))


def test_the_split_covers_the_named_core() -> None:
    named = ["structure", "discover", "surgery", "methods", "train", "trainstate", "checkpoint",
             "io", "atomic", "config", "cost", "memory", "data", "models", "registry", "runner",
             "plots"]
    assert {f"leantrain.{n}" for n in named} <= set(CORE)
    assert {f"{HARNESS}.{n}" for n in ("bench", "suite", "report", "targets", "plots")} <= set(
        HARNESS_MODULES
    )


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_harness_or_front_end(module: str) -> None:
    bad = sorted(m for m in imported_modules(_modules()[module]) if _is_harness(m) or _is_front_end(m))
    assert bad == [], f"{module} is core but imports {bad}"


@pytest.mark.parametrize("module", HARNESS_MODULES)
def test_harness_imports_core_only(module: str) -> None:
    bad = sorted(m for m in imported_modules(_modules()[module]) if _is_front_end(m))
    assert bad == [], f"{module} is harness but imports the front end {bad}"


def test_the_checker_sees_every_import_form(tmp_path: Path, monkeypatch) -> None:
    """The AST check would fail on each way of reaching the harness (so the tests above can fail)."""
    fake = tmp_path / "leantrain"
    (fake / "methods").mkdir(parents=True)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    forms = {
        "a.py": "from .harness import bench\n",
        "b.py": "from . import harness\n",
        "c.py": "def f():\n    import leantrain.harness.report\n",
        "methods/d.py": "from ..harness.plots import slug\n",
        "e.py": "import importlib\nimportlib.import_module('leantrain.harness.bench')\n",
    }
    for rel, src in forms.items():
        (fake / rel).write_text(src)
        assert any(_is_harness(m) for m in imported_modules(fake / rel)), rel
    (fake / "f.py").write_text('"""Docs may name `leantrain.harness.plots`."""\nfrom .plots import x\n')
    assert imported_modules(fake / "f.py") == {"leantrain.plots", "leantrain.plots.x"}


def test_importing_the_core_loads_no_harness() -> None:
    """At run time too: importing every core module leaves the harness unloaded."""
    code = (
        "import importlib, sys\n"
        f"for m in {CORE!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('leantrain.harness')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
