"""The sample clip shipped with the package (a crop of MPI-Sintel alley_1; see mlof/assets/README.md).

Needs no download and works from an installed package (the files are package data)::

    clip = mlof.samples.sample_clip()
    img1, img2 = clip["frames"][1:3]          # the pair that has ground truth
    out = model(img1[None], img2[None])
    mlof.metrics.epe(out.flow[0], clip["flow"], clip["valid"])
"""
from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mlof.io import read_flow, read_image

__all__ = ["sample_clip", "asset_path"]


def asset_path(name: str) -> Traversable:
    """A ``Traversable`` for a file in ``mlof/assets`` (a real path when the package is installed unzipped)."""
    path = resources.files("mlof") / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(f"mlof sample asset {name!r} is missing from the installed package ({path})")
    return path


def _read(name: str, reader: Callable[[Path], Any]) -> Any:
    with resources.as_file(asset_path(name)) as path:
        return reader(path)


def sample_clip() -> dict[str, Any]:
    """Four consecutive Sintel frames (clean pass, 224 x 320 crop) with ground truth for frames[1] -> frames[2].

    Returns a dict:

    * ``frames``: T x 3 x H x W float32 tensor, values 0..255 (T = 4: Sintel frames 0001..0004);
    * ``flow``: 2 x H x W float32 tensor, ground-truth flow from ``frames[1]`` to ``frames[2]`` (px, x then y);
    * ``valid``: H x W bool tensor (False where Sintel marks the flow invalid);
    * ``occ``: H x W bool tensor (True where the pixel of ``frames[1]`` is occluded in ``frames[2]``);
    * ``pair``: ``(1, 2)``, the indices into ``frames`` that ``flow`` belongs to;
    * ``meta``: crop box, sources, licence (the contents of ``clip.json``).

    Fresh tensors on every call, so callers may modify them.
    """
    meta = json.loads(asset_path("clip.json").read_text(encoding="utf-8"))
    frames = [_read(f"frame_{t:04d}.png", read_image) for t in meta["frames"]]
    stem = f"frame_{meta['pair'][0]:04d}"
    flow, valid = _read(f"flow_{stem}.flo", read_flow)
    occ = _read(f"occ_{stem}.png", read_image)[:, :, 0] > 127
    pair = (meta["frames"].index(meta["pair"][0]), meta["frames"].index(meta["pair"][1]))
    return {
        "frames": torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().contiguous(),
        "flow": torch.from_numpy(flow).permute(2, 0, 1).contiguous(),
        "valid": torch.from_numpy(valid),
        "occ": torch.from_numpy(occ),
        "pair": pair,
        "meta": meta,
    }
