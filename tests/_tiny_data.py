"""A tiny synthetic Sintel-layout tree shared by the pipeline tests (rendered once per pytest session)."""
from __future__ import annotations

from pathlib import Path

SIZE = (72, 96)   # H, W: big enough for raft_small's pyramid after a 64x64 crop


def tiny_sintel(tmp_path_factory, n: int = 4) -> Path:
    """Root of a Sintel-layout tree with ``n`` synthetic source-domain pairs (72 x 96, exact flow)."""
    from mlof.data import write_tree

    root = tmp_path_factory.getbasetemp() / f"tiny_sintel_{n}"
    if not (root / "training").is_dir():
        write_tree(root, domain="source", n=n, size=SIZE, seed=0)
    return root


def sintel_args(root: Path) -> list[str]:
    """Overrides that make a pipeline read the tree (clean pass)."""
    return ["data.name=sintel", f"data.root={root}", "data.options={pass_: clean}"]
