"""``mlof models``: the available networks with their parameter counts and parameter groups."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

import backbones
from mlof.config import ConfigError
from mlof.runs.rundir import RunDir

__all__ = ["ModelsConfig", "run_models", "main"]


@dataclass
class ModelsConfig:
    """``mlof models``: the available networks with their parameter counts."""

    name: str = "models"
    out_dir: str = "runs"
    names: Any = None        # list of names; None: every available network
    format: str = "table"    # table | json


def run_models(cfg: DictConfig) -> list[dict[str, Any]]:
    """One row per network (name, parameters, parameter groups); written to ``<out_dir>/<name>/models.json``."""
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format: {cfg.format!r} is not one of table, json")
    names = list(cfg.names) if cfg.names else backbones.available()
    rows = []
    for name in names:
        model = backbones.build(name)
        groups = backbones.param_groups(model)
        rows.append({"name": name, "parameters": backbones.count_parameters(model),
                     "groups": sorted(g for g in groups if g != "all")})
    run = RunDir(cfg.out_dir, cfg.name, tensorboard=False, overwrite=True)   # a listing: replaced each time
    run.save_config(cfg)
    run.write_json("models.json", rows)
    run.close()
    return rows


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof models``: print the networks (table or json)."""
    rows = run_models(cfg)
    if cfg.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows) if rows else 4
        print(f"{'name'.ljust(width)}  {'parameters':>12}  parameter groups")
        for r in rows:
            print(f"{r['name'].ljust(width)}  {r['parameters']:>12,}  {', '.join(r['groups'])}")
    return 0
