"""The import graph of ``mlof`` and ``backbones`` (docs/architecture.md): no circle, no import against the layers.

The graph is read from the source (AST), with every import, those inside functions included, so a lazy import
cannot hide an edge. ``from package import name`` counts as an import of ``package.name`` when that is a module.
"""
from __future__ import annotations

import ast
import importlib
import re
import sys
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


# ------------------------------------------------------------------------------------ docs/architecture.md stays true
DOC = ROOT / "docs" / "architecture.md"


def _resolve(dotted: str):
    """The module or attribute ``dotted`` names (``mlof.meta.engine.Adapter``), or raise naming what is missing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)   # AttributeError names the missing piece
        return obj
    raise ModuleNotFoundError(dotted)


def _doc_references() -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(file paths, dotted names, (owner, name) pairs) that docs/architecture.md puts in backticks.

    A pair is a name of a plain list in parentheses right after a dotted name: ``mlof.optim`` (``build_optimizer``,
    ``onecycle``)."""
    text = DOC.read_text()
    ticks = re.findall(r"`([^`]+)`", text)
    paths = [t for t in ticks if re.fullmatch(r"(mlof|backbones)/[\w/]+\.\w+", t)]
    dotted = [t for t in ticks if re.fullmatch(r"(mlof|backbones)(\.\w+)+", t)]
    pairs = []
    for owner, inside in re.findall(r"`((?:mlof|backbones)(?:\.\w+)+)`\s*\((\s*`\w+`(?:\s*,\s*`\w+`)*\s*)\)", text):
        pairs += [(owner, name) for name in re.findall(r"`(\w+)`", inside)]
    return paths, dotted, pairs


def test_every_module_and_name_in_the_architecture_doc_exists():
    paths, dotted, pairs = _doc_references()
    assert len(paths) >= 3 and len(dotted) >= 40 and len(pairs) >= 20, "the doc's references are not read"
    missing = [p for p in paths if not (ROOT / p).exists()]
    for name in dotted:
        if name.endswith(".__main__"):   # importing it would run the command line
            missing += [] if (ROOT / name.replace(".", "/")).with_suffix(".py").is_file() else [name]
            continue
        try:
            _resolve(name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name} ({e})")
    missing += [f"{owner}.{name}" for owner, name in pairs if not hasattr(_resolve(owner), name)]
    assert not missing, "docs/architecture.md names what does not exist:\n" + "\n".join(missing)


def test_the_doc_check_can_fail(tmp_path, monkeypatch):
    fake = tmp_path / "architecture.md"
    fake.write_text("| x | `mlof.meta.engine.NoSuchThing`, `mlof/no_such_file.py`, `mlof.optim` (`no_builder`) |\n")
    monkeypatch.setattr(sys.modules[__name__], "DOC", fake)
    paths, dotted, pairs = _doc_references()
    assert (paths, dotted, pairs) == (["mlof/no_such_file.py"], ["mlof.meta.engine.NoSuchThing", "mlof.optim"],
                                      [("mlof.optim", "no_builder")])
    with pytest.raises(AttributeError):
        _resolve("mlof.meta.engine.NoSuchThing")
    assert not hasattr(_resolve("mlof.optim"), "no_builder")
