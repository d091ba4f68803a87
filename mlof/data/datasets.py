"""``build_dataset(name, root, split, **options)``: one entry point for every dataset of mlof.

Names: chairs, things, sintel, kitti15, kitti12, hd1k, middlebury, folder, video, synthetic.
Options shared by all: ``transform`` (an augmentor), ``crop`` (h, w), ``crop_mode``, ``seed``, and
``indices`` (keep these pairs, e.g. a split from :func:`mlof.data.split_indices`; file-based readers).
Dataset-specific options are documented on each reader (``help(mlof.data.readers.read_sintel)``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from mlof.data import readers
from mlof.data.base import FlowDataset
from mlof.data.synthetic import SyntheticFlowDataset
from mlof.data.video import VideoDataset, read_video

__all__ = ["build_dataset", "available_datasets", "dataset_options", "DATASETS"]


def _synthetic(root: Any, split: str = "training", **options: Any) -> FlowDataset:
    if root is not None:
        raise ValueError(f"synthetic: root must be None (frames are generated), got {root!r}; to read a written "
                         f"tree use build_dataset('sintel', root)")
    return SyntheticFlowDataset(**options)


def _video(root: Any, split: str = "training", **options: Any) -> FlowDataset:
    return read_video(root, split, **options)


DATASETS: dict[str, Callable[..., FlowDataset]] = {
    "chairs": readers.read_chairs,
    "things": readers.read_things,
    "sintel": readers.read_sintel,
    "kitti15": readers.read_kitti15,
    "kitti12": readers.read_kitti12,
    "hd1k": readers.read_hd1k,
    "middlebury": readers.read_middlebury,
    "folder": readers.read_folder,
    "video": _video,
    "synthetic": _synthetic,
}
_ALIASES = {"kitti": "kitti15", "flyingchairs": "chairs", "flyingthings": "things", "things3d": "things",
            "mpisintel": "sintel"}


def available_datasets() -> list[str]:
    """The dataset names :func:`build_dataset` accepts."""
    return sorted(DATASETS)


COMMON_OPTIONS = ("transform", "crop", "crop_mode", "seed")


def dataset_options(name: str) -> list[str]:
    """The options ``build_dataset(name, ...)`` accepts (common ones included)."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    fn = {"synthetic": SyntheticFlowDataset, "video": VideoDataset}.get(key) or DATASETS[key]
    params = inspect.signature(fn).parameters.values()
    own = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY or
           (key in ("synthetic",) and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    common = list(COMMON_OPTIONS) + (["indices"] if key not in ("synthetic", "video") else [])
    return sorted(set(own) | set(common))


def build_dataset(name: str, root: Any = None, split: str = "training", **options: Any) -> FlowDataset:
    """Build dataset ``name`` from ``root`` (see the module docstring); unknown names/options raise ValueError."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    allowed = dataset_options(key)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {unknown}; options of {key}: {', '.join(allowed)}")
    return DATASETS[key](root, split, **options)
