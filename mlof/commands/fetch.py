"""``mlof fetch NAME ...``: download official checkpoints into MLOF_HOME (``~/.cache/mlof``) and verify them.

The downloader lives in ``backbones.fetch`` (usable without mlof); ``mlof weights`` lists the names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from omegaconf import DictConfig, OmegaConf

from backbones.fetch import DownloadInterruptedError, fetch
from backbones.weights import WEIGHTS, get

__all__ = ["FetchConfig", "run_fetch", "main"]


@dataclass
class FetchConfig:
    """``mlof fetch NAME ...``: download official checkpoints into MLOF_HOME and verify them."""

    names: List[str] = field(default_factory=list)  # registry names (`mlof weights`); bare NAME arguments land here
    all: bool = False        # every entry with a download URL
    force: bool = False      # download again even if cached
    retries: int = 3         # reconnections (resumed with an HTTP Range request) after a dropped connection


def run_fetch(cfg: Any, progress: bool = True) -> int:
    """Fetch ``cfg.names`` (or every downloadable entry with ``all``); one line per file."""
    names = list(cfg.names or [])
    if cfg.all:
        names += [n for n in sorted(WEIGHTS) if WEIGHTS[n].url is not None and n not in names]
    if not names:
        raise ValueError("say which weights to fetch: `mlof fetch raft-things` (names: `mlof weights`), "
                         "or all=true")
    entries = [get(n) for n in names]  # every name checked before the first download
    if cfg.retries < 0:
        raise ValueError(f"retries must be >= 0, got {cfg.retries}")
    for e in entries:
        try:
            fetch(e, force=cfg.force, progress=progress, retries=cfg.retries, log=lambda msg: print(msg, flush=True))
        except DownloadInterruptedError as err:  # a user-facing one-line error (exit 2); the .part is kept
            raise ValueError(str(err)) from err
    return 0


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof fetch``: fetch the configured names, one line per file."""
    return run_fetch(OmegaConf.to_object(cfg), progress=progress)
