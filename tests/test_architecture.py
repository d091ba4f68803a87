"""The import graph of ``mlof`` and ``backbones`` (docs/architecture.md): no circle, no import against the layers.

The graph is read from the source (AST), with every import, those inside functions included, so a lazy import
cannot hide an edge. ``from package import name`` counts as an import of ``package.name`` when that is a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backbones", "mlof")

# Layers, lowest first: a module may import its own layer and the layers below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("backbones", ("backbones",)),
    ("core", ("mlof", "mlof.utils", "mlof.io", "mlof.config", "mlof.seeding", "mlof.metrics", "mlof.viz",
              "mlof.samples", "mlof.optim", "mlof.checkpoint", "mlof.data", "mlof.losses")),
    ("meta", ("mlof.meta",)),
    ("api", ("mlof.api",)),
    ("runs", ("mlof.runs",)),
    ("train", ("mlof.train",)),
    ("commands", ("mlof.commands",)),
    ("cli", ("mlof.cli", "mlof.cli_help", "mlof.__main__")),
]

def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import statement of ``module``."""
    tree = ast.parse(path.read_text())
    in_function = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for sub in ast.walk(node) if sub is not node}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target, mods)
            if owner is not None and owner != module:
                out.append((owner, node.lineno, id(node) in in_function))
    return out


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer of docs/architecture.md: add it to LAYERS"
    return rank


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read(tmp_path):
    mods = _modules()
    edges = _imports("mlof.commands.meta_train", mods["mlof.commands.meta_train"], mods)
    assert {m for m, _, _ in edges} >= {"mlof.data", "mlof.meta.trainer", "mlof.train.engine"}
    probe = tmp_path / "probe.py"   # as if it were mlof/commands/probe.py
    probe.write_text("from . import setup\n\ndef f():\n    from mlof.meta import maml\n    import backbones.raft\n")
    got = _imports("mlof.commands.probe", probe, {**mods, "mlof.commands.probe": probe})
    assert got == [("mlof.commands.setup", 1, False), ("mlof.meta.maml", 4, True), ("backbones.raft", 5, True)]
    assert _circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_circle(graph):
    edges = {m: {t for t, _, _ in imps} for m, imps in graph.items()}
    circles = _circles(edges)
    assert not circles, f"import circles: {circles}"


def test_imports_follow_the_layers(graph):
    bad = [f"{m}:{line} imports {t} ({LAYERS[_layer(t)][0]} is above {LAYERS[_layer(m)][0]})"
           for m, imps in graph.items() for t, line, _ in imps if _layer(t) > _layer(m)]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_backbones_never_import_mlof(graph):
    bad = [f"{m}:{line} imports {t}" for m, imps in graph.items() if m.startswith("backbones")
           for t, line, _ in imps if t.split(".")[0] == "mlof"]
    assert not bad, "\n".join(bad)


def test_project_imports_sit_at_the_top(graph):
    # Every module of mlof and backbones: a project import inside a function would hide an edge of the real graph
    # (only optional third-party packages -- onnxruntime, higher, tensorboard -- are imported lazily).
    assert {"mlof.commands.meta_train", "backbones.onnx", "mlof.data.datasets"} <= set(graph)
    bad = [f"{m}:{line} imports {t} inside a function" for m in graph for t, line, inside in graph[m] if inside]
    assert not bad, "\n".join(bad)
