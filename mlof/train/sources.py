"""Where the frames of ``mlof adapt`` / ``mlof infer`` come from (the shipped default checkpoint is named in
``mlof.checkpoint``: ``DEFAULT_CHECKPOINT``, ``resolve_checkpoint``).

An input is one of:

* ``None`` or ``"clip"``: the sample clip shipped in the package (``mlof.samples.sample_clip()``, 4 Sintel
  frames; the pair 1 -> 2 has ground truth);
* a folder of frames (consecutive pairs of the sorted images);
* a video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ``.m4v``);
* a list of two or more image files (consecutive pairs);
* a dataset (``DataConfig``): every pair of ``mlof.data.build_dataset``, ground truth where it exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mlof.checkpoint import DEFAULT_CHECKPOINT, resolve_checkpoint

__all__ = ["DEFAULT_CHECKPOINT", "resolve_checkpoint", "open_pairs", "pairs_to_frames", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def _clip_pairs() -> list[dict[str, Any]]:
    from mlof.samples import sample_clip

    clip = sample_clip()
    frames = clip["frames"]
    pairs = []
    for i in range(frames.shape[0] - 1):
        s: dict[str, Any] = {"img1": frames[i], "img2": frames[i + 1],
                             "meta": {"dataset": "sample_clip", "scene": "alley_1", "frame": i, "index": i,
                                      "name": f"frame_{i + 1:04d}"}}   # the clip's file names
        if (i, i + 1) == tuple(clip["pair"]):
            s.update(flow=clip["flow"], valid=clip["valid"], occ=clip["occ"])
        pairs.append(s)
    return pairs


def _image_pairs(files: Sequence[str]) -> list[dict[str, Any]]:
    from mlof.io import read_image

    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input: image {p} does not exist")
    imgs = [torch.from_numpy(np.ascontiguousarray(read_image(p))).permute(2, 0, 1).float() for p in paths]
    for p, im in zip(paths[1:], imgs[1:]):
        if im.shape != imgs[0].shape:
            raise ValueError(f"input: {p} is {tuple(im.shape[1:])}, {paths[0]} is {tuple(imgs[0].shape[1:])}; "
                             f"frames must have one size")
    return [{"img1": imgs[i], "img2": imgs[i + 1],
             "meta": {"dataset": "files", "scene": "", "frame": i, "index": i, "name": paths[i].stem}}
            for i in range(len(imgs) - 1)]


def open_pairs(input: Any = None, data: Any = None) -> tuple[Sequence[dict[str, Any]], str]:
    """The frame pairs of an input (see module docstring) and a short description of it."""
    if data is not None:
        from mlof.train.setup import build_data

        return build_data(data), f"dataset {data.name}"
    if input is None or input == "clip":
        return _clip_pairs(), "the bundled sample clip (Sintel alley_1 crop)"
    if isinstance(input, (list, tuple)):
        if len(input) == 1:
            input = input[0]
        else:
            if len(input) < 2:
                raise ValueError("input: give at least two image files, a folder or a video")
            return _image_pairs([str(x) for x in input]), f"{len(input)} image files"
    path = Path(str(input))
    from mlof.data import build_dataset

    if path.is_dir():
        return build_dataset("folder", str(path)), f"folder {path}"
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return build_dataset("video", str(path)), f"video {path}"
    if not path.exists():
        raise FileNotFoundError(f"input: {path} does not exist (give a folder of frames, a video, a list of "
                                f"image files, or leave it empty for the bundled clip)")
    raise ValueError(f"input: {path} is a single file that is not a video ({', '.join(VIDEO_EXTENSIONS)}); "
                     f"give two or more frames as input=[a.png,b.png]")


def pairs_to_frames(pairs: Sequence[dict[str, Any]], limit: int = 0) -> list[torch.Tensor]:
    """The frame sequence 3 x H x W behind consecutive pairs (img1 of each pair, then the last img2)."""
    n = len(pairs) if not limit else min(limit, len(pairs))
    frames = [pairs[i]["img1"] for i in range(n)]
    if n:
        frames.append(pairs[n - 1]["img2"])
    return frames
