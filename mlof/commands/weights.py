"""``mlof weights``: the registry of official checkpoints (URL, licence, training settings, checksum, cache state).

The registry lives in ``backbones.weights`` (usable without mlof); this module holds the subcommand's
configuration and its table output.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

import backbones
from backbones.fetch import recorded_checksums
from backbones.weights import WEIGHTS, cache_dir, cache_path, names

__all__ = ["WeightsConfig", "weights_table", "run_weights", "main"]


@dataclass
class WeightsConfig:
    """``mlof weights``: list the official checkpoints of every backbone."""

    backbone: Optional[str] = None  # only this backbone's entries (e.g. raft); None: all
    format: str = "table"           # table | json | long (every field of every entry)


def _status(entry: Any, recorded: dict[str, dict]) -> tuple[str, str]:
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
    if cfg.format not in ("table", "json", "long"):
        raise ValueError(f"format: {cfg.format!r} is not one of table, json, long")
    if cfg.backbone is not None:
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


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof weights``: print the registry."""
    return run_weights(OmegaConf.to_object(cfg))
