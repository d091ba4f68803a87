"""``backbones`` is a layer below ``mlof``: it never imports it, and its own modules import each other without
a circle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "backbones"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement of ``path`` (top level and inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_backbones_module_imports_mlof():
    offenders = {str(p.relative_to(REPO)): sorted(n for n in _imports(p) if n == "mlof" or n.startswith("mlof."))
                 for p in PKG.rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_backbones_imports_and_builds_with_mlof_blocked():
    code = r'''
import importlib, pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "mlof" or name.startswith("mlof."):
            raise ImportError(f"backbones imported {name}")
        return None

sys.meta_path.insert(0, Block())
import backbones
for info in pkgutil.walk_packages(backbones.__path__, "backbones."):
    if info.name != "backbones.__main__":
        importlib.import_module(info.name)
for name in backbones.available():
    backbones.build(name)
print("ok", len(backbones.available()))
'''
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "7"]


def test_backbones_modules_import_each_other_without_a_circle():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {n for n in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    # ``backbones`` (the package __init__) re-exports everything: edges into it are the only cycle-free way in
    graph = {m: deps - {"backbones"} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError(" -> ".join(stack[stack.index(n):] + [n]) if n in stack else f"{m} -> {n}")
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
