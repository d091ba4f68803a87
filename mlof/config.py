"""Run configurations: typed defaults <- YAML recipe <- ``key=value`` overrides (OmegaConf).

Every subcommand owns a dataclass of defaults; ``resolve`` merges a recipe and command-line overrides
onto it. Unknown keys and ill-typed values are errors that name the key (``ConfigError``, a
``ValueError``). Free-form option dicts (``model.options``, ``data.options``, ...) accept any key: they
are handed to the component they configure, which checks them itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "ModelConfig", "DataConfig", "LogConfig", "resolve", "to_dict", "diff_keys"]


class ConfigError(ValueError):
    """A recipe or override is not valid for the subcommand."""


@dataclass
class ModelConfig:
    """Which network to build and which weights to start from.

    name: a ``backbones.available()`` name; None takes it from ``checkpoint`` (an mlof checkpoint).
    options: keyword options of ``backbones.build`` (e.g. ``corr: ondemand``, ``dataset: kitti``).
    checkpoint: initial weights: an mlof checkpoint or an official release file (then ``name`` is needed).
    """

    name: Optional[str] = "raft_small"
    options: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None


@dataclass
class DataConfig:
    """A dataset of ``mlof.data.build_dataset(name, root, split, **options)``.

    augment: None, an augmentation preset name of ``mlof.data.build_augmentor`` (``raft-chairs``,
    ``mlof-meta-kitti``, ...), or a dict of its settings, optionally with ``preset`` to start from
    (``{preset: raft-chairs, crop_size: [64, 96]}``); it becomes the dataset's ``transform``.
    subset: a meta-learning split of ``mlof.data.split_indices`` (``crossval-1``, ``Sm20_2``, ``n=20,seed=0``):
    its meta-train pairs, or with ``:eval`` its held-out evaluation pairs (``crossval-1:eval``).
    """

    name: str = "synthetic"
    root: Optional[str] = None
    split: str = "training"
    options: Dict[str, Any] = field(default_factory=dict)
    augment: Any = None
    subset: Optional[str] = None
    num_workers: int = 0


@dataclass
class LogConfig:
    """How often a training run logs and saves (in optimizer steps)."""

    every: int = 10            # scalars to TensorBoard and the progress bar
    images_every: int = 100    # image grid frames / flow / ground truth / error
    latest_every: int = 25     # checkpoints/latest.pt (atomic: a kill leaves the previous one)
    checkpoint_every: int = 0  # checkpoints/step_XXXXXX.pt kept for good (0: only the final one)
    tensorboard: bool = True


@dataclass
class RunConfig:
    """Keys every subcommand shares; a subcommand's config subclasses it and sets its own ``name`` default."""

    name: str = "run"           # run folder: <out_dir>/<name>/
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"        # auto: cuda when available, else cpu
    resume: bool = False        # continue the run in <out_dir>/<name>/ (also --resume)
    overwrite: bool = False     # start <out_dir>/<name>/ over, deleting what it holds (also --overwrite)


def _fmt_error(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError") and key:
        return f"{source}: unknown key {key!r}"
    return f"{source}: {key + ': ' if key else ''}{msg}"


def resolve(defaults: Any, config: str | os.PathLike | None = None,
            overrides: Sequence[str] = ()) -> DictConfig:
    """Merge ``defaults`` (a dataclass type or instance) <- YAML file ``config`` <- ``key=value`` overrides.

    Returns a read-only-structured DictConfig (unknown keys raise). ``ConfigError`` names the bad key,
    the file or the override.
    """
    cfg = OmegaConf.structured(defaults)
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            recipe = OmegaConf.load(path)
        except Exception as e:  # yaml syntax errors
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
        if not isinstance(recipe, DictConfig):
            raise ConfigError(f"recipe {path} must be a mapping of keys to values")
        try:
            cfg = OmegaConf.merge(cfg, recipe)
        except OmegaConfBaseException as e:
            raise ConfigError(_fmt_error(e, f"recipe {path}")) from e
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {', '.join(map(repr, bad))}")
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise ConfigError(_fmt_error(e, "override")) from e
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_fmt_error(e, "config")) from e
    return cfg


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Plain python containers (for YAML/JSON files and weights_only checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
