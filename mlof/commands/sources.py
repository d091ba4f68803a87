"""Where the frames of ``mlof adapt`` / ``mlof infer`` come from.

An input is one of:

* ``None`` or ``"clip"``: the sample clip shipped in the package (``mlof.samples.sample_clip()``, 4 Sintel
  frames; the pair 1 -> 2 has ground truth);
* a folder of frames (consecutive pairs of the sorted images);
* a video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, ``.m4v``);
* a list of two or more image files (consecutive pairs);
* a dataset (``DataConfig``): every pair of ``mlof.data.build_dataset``, ground truth where it exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mlof.commands.evaluate import protocol_for
from mlof.commands.setup import build_data, build_model, check_adapt_options, is_real_input, warn_if_demo_model
from mlof.config import ConfigError
from mlof.data import build_dataset
from mlof.io import read_image
from mlof.metrics import epe
from mlof.runs.outputs import PairStore, ResizePlan, finite_or_none, flow_format_for, open_streaming_run
from mlof.runs.rundir import RunDir
from mlof.samples import sample_clip
from mlof.seeding import seed_everything
from mlof.train.distributed import resolve_device

__all__ = ["open_pairs", "pairs_to_frames", "VIDEO_EXTENSIONS", "DEFAULT_ITERS", "PairSelection", "FramesRun",
           "open_frames_run", "pair_epe", "pairs_to_do"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEFAULT_ITERS = 12   # frames, folders and videos (datasets: their evaluation protocol's iterations)


def _clip_pairs() -> list[dict[str, Any]]:
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


class PairSelection:
    """A selection of an input's pairs (keeps the rest unloaded)."""

    def __init__(self, pairs: Sequence[dict[str, Any]], index: list[int]):
        self.pairs, self.index = pairs, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pairs[self.index[i]]


@dataclass
class FramesRun:
    """What ``adapt`` and ``infer`` work with once their configuration, input and weights are checked."""

    obj: Any
    device: torch.device
    run: RunDir
    pairs: Sequence[dict[str, Any]]
    what: str
    store: PairStore
    plan: ResizePlan
    iters: int
    padding: str
    model: torch.nn.Module


def open_frames_run(cfg: DictConfig, resume: bool, overwrite: bool) -> FramesRun:
    """Check ``cfg`` of ``adapt`` / ``infer``, open its input and network, then (only then) its run folder."""
    obj = OmegaConf.to_object(cfg)
    dataset = obj.data.name if obj.data is not None else None
    fmt = flow_format_for(obj.flow_format, dataset)
    plan = ResizePlan(obj.resize, obj.max_side)
    proto = protocol_for(dataset) if dataset else None
    iters = obj.iters if obj.iters is not None else (proto.iters if proto else DEFAULT_ITERS)
    padding = obj.padding if obj.padding is not None else (proto.padding if proto else "sintel")
    if padding not in ("sintel", "kitti"):
        raise ConfigError(f"padding: {padding!r} is not one of sintel, kitti")
    if not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"iters: must be an integer >= 1, got {iters!r}")
    device = resolve_device(obj.device)
    seed_everything(obj.seed)
    pairs, what = open_pairs(obj.input, obj.data)
    if len(pairs) == 0:
        raise ValueError(f"input: {what} has no frame pairs")
    if obj.pairs:
        bad = [i for i in obj.pairs if not 0 <= int(i) < len(pairs)]
        if bad:
            raise ConfigError(f"pairs: {bad} out of range for the {len(pairs)} pairs of {what}")
        pairs = PairSelection(pairs, [int(i) for i in obj.pairs])
    if obj.max_pairs:
        pairs = PairSelection(pairs, list(range(min(obj.max_pairs, len(pairs)))))
    if getattr(obj, "online", False) and obj.data is not None:
        raise ConfigError("online: adapting along a sequence needs consecutive frames (input=folder/video/"
                          "clip), not a dataset of independent pairs")
    if "iters" in getattr(obj, "options", {}) and obj.options["iters"] != iters:
        raise ConfigError(f"options.iters ({obj.options['iters']}) differs from iters ({iters}): before and after "
                          f"are scored at one setting; set iters= instead")
    if getattr(obj, "options", None) is not None:   # adapt: its options are checked before anything is written
        check_adapt_options(obj.options, online=bool(getattr(obj, "online", False)))
    model = build_model(obj.model, device).eval()
    if is_real_input(obj):
        warn_if_demo_model(obj.model.checkpoint)
    # nothing is written before the configuration, the input and the weights have been checked
    run, store = open_streaming_run(cfg, obj, fmt, resume=resume, overwrite=overwrite)
    return FramesRun(obj, device, run, pairs, what, store, plan, iters, padding, model)


def pair_epe(flow: torch.Tensor, sample: dict[str, Any]) -> float | None:
    """EPE of ``flow`` (2 x H x W) against the sample's ground truth; None without ground truth or when not finite."""
    if "flow" not in sample:
        return None
    return finite_or_none(epe(flow.detach().cpu(), sample["flow"], sample.get("valid")))


def pairs_to_do(store: PairStore, n: int, resume: bool) -> list[int]:
    """Positions still to compute (all, or on ``resume`` those without a finished record)."""
    return [k for k in range(n) if not resume or store.done(k) is None]
