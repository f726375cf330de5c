"""Layering: the folders are the layers, each imports only its own and the ones below, and no
import goes round in a circle.

From the ground up (docs/architecture.md draws them):

0. ground: `atomic`, `registry`, `config`, `cost`, `compiled`: used by everyone, importing no other layer;
1. `structure` (what may be cut and the cuts) and `data`;
2. `models` (the zoo, its factory and model files) and `methods`;
3. `training` (fit, attach, checkpoints);
4. `runs` (a run from its config to its folder);
5. `harness` (benchmarks and reports);
6. the front ends: the package itself, `cli`, `__main__`, `lightning`.
"""

from __future__ import annotations

import ast
import graphlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import leantrain

PACKAGE = Path(leantrain.__file__).parent
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("atomic", "registry", "config", "cost", "compiled")),
    ("structure and data", ("structure", "data")),
    ("models and methods", ("models", "methods")),
    ("training", ("training",)),
    ("runs", ("runs",)),
    ("harness", ("harness",)),
    # leantrain.lightning too: the Lightning callback, a front end whose import needs the extra.
    ("front ends", ("", "cli", "__main__", "lightning")),
]
HARNESS = "leantrain.harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_harness(name: str) -> bool:
    return name == HARNESS or name.startswith(HARNESS + ".")


def imported_modules(path: Path, strings: bool = True) -> set[str]:
    """Every leantrain module `path` imports anywhere (top level, functions, TYPE_CHECKING), plus
    (with `strings`) module names written as strings (``importlib.import_module``, ``python -m``;
    also a package named for its resources, which the circle check leaves out)."""
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
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"leantrain(\.\w+)+", node.value):
                out.add(node.value)
    return {m for m in out if m == "leantrain" or m.startswith("leantrain.")}


def layer_of(module: str) -> int:
    """The index in `LAYERS` of `module` (``leantrain.x.y`` by its folder or root module)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    for i, (_, names) in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS and docs/architecture.md")


def _is_harness(name: str) -> bool:
    return name == HARNESS or name.startswith(HARNESS + ".")


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name belongs to (``leantrain.x.y.attr`` → ``leantrain.x.y``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path], strings: bool = True) -> dict[str, set[str]]:
    """Every module → the leantrain modules it imports (anywhere in it)."""
    graph = {}
    for name, path in modules.items():
        targets = {_known(m, modules) for m in imported_modules(path, strings)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


MODULES = sorted(_modules())
CORE = sorted(n for n in MODULES if layer_of(n) < len(LAYERS) - 2)  # below the harness


def test_every_module_sits_in_a_layer_and_every_layer_has_modules() -> None:
    layers = {layer_of(m) for m in MODULES}
    assert layers == set(range(len(LAYERS)))
    # the package root holds the ground floor and the front ends only
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert root == ["__main__", "atomic", "cli", "compiled", "config", "cost", "lightning",
                    "registry"]


@pytest.mark.parametrize("module", MODULES)
def test_a_module_imports_only_its_own_layer_and_those_below(module: str) -> None:
    modules = _modules()
    mine = layer_of(module)
    up = sorted(t for t in import_graph({module: modules[module], **modules})[module]
                if layer_of(t) > mine)
    assert up == [], f"{module} ({LAYERS[mine][0]}) imports {up} from a layer above"


def test_no_import_circles() -> None:
    """Lazy imports count too: a circle broken only by importing inside a function is a circle."""
    graph = import_graph(_modules(), strings=False)  # a string names resources too
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' → '.join(e.args[1])}")


def test_the_circle_check_finds_a_planted_circle(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "leantrain"
    (fake / "structure").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "structure" / "__init__.py").write_text("")
    (fake / "structure" / "a.py").write_text("from .b import x\n")
    (fake / "structure" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = import_graph(_modules())
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())


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
