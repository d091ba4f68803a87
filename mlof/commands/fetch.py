"""``mlof weights`` (the official-checkpoint registry) and ``mlof fetch`` (download + verify into MLOF_HOME).

The registry and the downloader live in ``backbones.weights`` / ``backbones.fetch`` (usable without mlof);
this module holds the subcommands' configurations and their table output.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

__all__ = ["WeightsConfig", "FetchConfig", "weights_table", "run_weights", "run_fetch"]


@dataclass
class WeightsConfig:
    """``mlof weights``: list the official checkpoints of every backbone."""

    backbone: Optional[str] = None  # only this backbone's entries (e.g. raft); None: all
    format: str = "table"           # table | json | long (every field of every entry)


@dataclass
class FetchConfig:
    """``mlof fetch NAME ...``: download official checkpoints into MLOF_HOME and verify them."""

    names: List[str] = field(default_factory=list)  # registry names (`mlof weights`); bare NAME arguments land here
    all: bool = False        # every entry with a download URL
    force: bool = False      # download again even if cached
    retries: int = 3         # reconnections (resumed with an HTTP Range request) after a dropped connection


def _status(entry: Any, recorded: dict[str, dict]) -> tuple[str, str]:
    from backbones.weights import cache_path

    cached = cache_path(entry).is_file()
    if entry.git_blob:
        check = f"git blob {entry.git_blob[:12]}"
    elif entry.name in recorded:
        check = f"sha256 {recorded[entry.name]['sha256'][:12]} (first use)"
    else:
        check = "keys + sha256 at first use"
    return ("cached" if cached else ("manual" if entry.url is None else "-")), check


def weights_table(backbone: str | None = None) -> list[dict[str, Any]]:
    """One row per registry entry: name, backbone, trained_on, checksum, cache status and every field."""
    from dataclasses import asdict

    from backbones.fetch import recorded_checksums
    from backbones.weights import WEIGHTS, cache_path, names

    recorded = recorded_checksums()
    rows = []
    for name in names(backbone):
        e = WEIGHTS[name]
        state, check = _status(e, recorded)
        rows.append({**asdict(e), "checksum": e.checksum, "check": check, "state": state,
                     "path": str(cache_path(e)), "recorded_sha256": recorded.get(name, {}).get("sha256")})
    return rows


def run_weights(cfg: Any) -> int:
    """Print the registry (table, json or long)."""
    from backbones.weights import cache_dir

    if cfg.format not in ("table", "json", "long"):
        raise ValueError(f"format: {cfg.format!r} is not one of table, json, long")
    if cfg.backbone is not None:
        import backbones
        if cfg.backbone not in backbones.available():
            raise ValueError(f"backbone: {cfg.backbone!r} is not one of {', '.join(backbones.available())}")
    rows = weights_table(cfg.backbone)
    if cfg.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if cfg.format == "long":
        for r in rows:
            print(f"{r['name']}  ({r['backbone']}{', ' + json.dumps(r['options']) if r['options'] else ''})")
            for key in ("trained_on", "images", "padding", "iters", "url", "member", "page", "licence",
                        "checksum", "notes", "state", "path"):
                if r.get(key):
                    print(f"    {key:<10} {r[key]}")
        return 0
    w = max(len(r["name"]) for r in rows)
    b = max(len(r["backbone"]) for r in rows)
    print(f"{'name'.ljust(w)}  {'backbone'.ljust(b)}  {'state':<6}  {'verification':<30}  trained on")
    for r in rows:
        print(f"{r['name'].ljust(w)}  {r['backbone'].ljust(b)}  {r['state']:<6}  {r['check']:<30}  {r['trained_on']}")
    print(f"cache: {cache_dir()}  (MLOF_HOME)   `mlof weights format=long` for URLs, licences and training "
          f"settings; `mlof fetch NAME` downloads")
    return 0


def run_fetch(cfg: Any, progress: bool = True) -> int:
    """Fetch ``cfg.names`` (or every downloadable entry with ``all``); one line per file."""
    from backbones.fetch import DownloadInterruptedError, fetch
    from backbones.weights import WEIGHTS, get

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
