"""What every dataset shares: the sample format, the pair record, seeding of per-sample randomness, errors.

A *sample* is a dict:

* ``img1``, ``img2``: float32 tensors 3 x H x W, values 0..255 (RGB);
* ``flow``: float32 2 x H x W (channel 0 = u/x, 1 = v/y) and ``valid``: bool H x W, when ground truth exists
  (the flow holds the file's values; only where the file itself stores no value -- a ``.flo`` "unknown"
  sentinel above 1e9, a KITTI pixel with B = 0, NaN/Inf -- it is 0, so sentinels never reach a loss; masks such
  as Sintel's ``training/invalid`` or RAFT's |flow| >= 1000 rule for Things act on ``valid`` only);
* ``occ``: bool H x W (True = visible in frame 1, hidden in frame 2), when the dataset has occlusion maps;
* ``meta``: a dict that collates (strings and ints only, the same keys for every dataset):
  ``dataset``, ``variant`` (pass / flow kind, "" if none), ``scene``, ``frame`` (frame number of img1 as in the
  file name, else its position), ``index`` (position in the dataset), ``paths`` = {"img1", "img2", "flow"}
  ("" where a file does not exist).

Randomness (augmentation, random crops) never touches global generators: each sample gets its own
``numpy.random.Generator``. With an integer ``seed`` it is derived from ``(seed, epoch, index)`` — the same
pixels whatever the access order or worker count; ``set_epoch`` changes the draw per epoch. With
``seed=None`` one 63-bit seed per sample is drawn from torch's global generator (so a loader that seeds
workers, or mlof.train's per-sample seeding, decides); ``dataset[(index, sample_seed)]`` fixes it explicitly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mlof.io import read_flow, read_image
from torch.utils.data import Dataset

__all__ = ["DatasetLayoutError", "PairRecord", "RawSample", "FlowDataset", "sample_rng", "to_sample",
           "make_meta", "Transform"]

RawSample = dict  # numpy arrays: img1/img2 H x W x 3 (uint8 or float32), flow H x W x 2, valid/occ H x W bool
Transform = Callable[..., RawSample]


class DatasetLayoutError(FileNotFoundError, ValueError):
    """A dataset root is missing, empty, or not laid out as expected; the message names the path and layout.

    Catchable as ``FileNotFoundError`` and as ``ValueError``.
    """


def layout_error(path: str | os.PathLike, problem: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{path}: {problem}. Expected layout:\n{layout}")


@dataclass(frozen=True)
class PairRecord:
    """Where one frame pair and its annotations live (paths as strings; None = not available)."""

    img1: str
    img2: str
    flow: str | None = None
    occ: str | None = None          # 8-bit mask, >127 = occluded
    invalid: str | None = None      # 8-bit mask, >127 = flow not valid
    scene: str = ""
    frame: int = 0
    variant: str = ""


def sample_rng(seed: int | None, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: from ``(seed, epoch, index)``, or one draw of torch's global RNG if None."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        return np.random.default_rng(np.random.SeedSequence([seed, index]))
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2 ** 63 - 1), int(epoch), int(index)]))


def make_meta(dataset: str, index: int, *, scene: str = "", frame: int = 0, variant: str = "",
              img1: str = "", img2: str = "", flow: str = "") -> dict[str, Any]:
    """The ``meta`` dict of a sample (fixed keys so that mixed datasets collate)."""
    return {"dataset": dataset, "variant": variant, "scene": scene, "frame": int(frame), "index": int(index),
            "paths": {"img1": img1, "img2": img2, "flow": flow}}


def to_sample(raw: RawSample, meta: dict[str, Any]) -> dict[str, Any]:
    """numpy H x W x C arrays -> the tensor sample format (CHW float32 images 0..255, flow 2 x H x W)."""
    out: dict[str, Any] = {}
    for key in ("img1", "img2"):
        img = np.ascontiguousarray(raw[key], dtype=np.float32)
        out[key] = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    if raw.get("flow") is not None:
        flow = np.ascontiguousarray(raw["flow"], dtype=np.float32)
        finite = np.isfinite(flow).all(axis=2)
        valid = np.asarray(raw["valid"], dtype=bool) if raw.get("valid") is not None else finite
        # Ground truth as stored (readers already zeroed the file's own "no value" pixels); only non-finite
        # values are replaced, since they would poison any loss even where masked.
        flow = np.where(finite[..., None], flow, 0.0).astype(np.float32)
        out["flow"] = torch.from_numpy(flow).permute(2, 0, 1).contiguous()
        out["valid"] = torch.from_numpy(np.ascontiguousarray(valid))
    if raw.get("occ") is not None:
        out["occ"] = torch.from_numpy(np.ascontiguousarray(raw["occ"], dtype=bool))
    out["meta"] = meta
    return out


def random_crop(raw: RawSample, size: tuple[int, int], rng: np.random.Generator | None,
                where: str = "random") -> RawSample:
    """Crop every H x W(...) array of ``raw`` to ``size`` (h, w); ``where`` is "random" or "center"."""
    h, w = raw["img1"].shape[:2]
    ch, cw = int(size[0]), int(size[1])
    if ch > h or cw > w:
        raise ValueError(f"crop: {ch}x{cw} is larger than the {h}x{w} sample")
    if where == "center" or rng is None:
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    else:
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return {k: (v[y0:y0 + ch, x0:x0 + cw] if isinstance(v, np.ndarray) and v.shape[:2] == (h, w) else v)
            for k, v in raw.items()}


class FlowDataset(Dataset):
    """Base class: a list of pairs, a loader for one pair as numpy arrays, then transform / crop, then tensors.

    Subclasses implement ``__len__``, ``load_raw(index) -> RawSample`` and ``meta(index)``; the record-based
    readers use :class:`RecordDataset`.

    Options common to every dataset:
        transform: callable ``transform(raw, rng=Generator) -> raw`` (e.g. :class:`mlof.data.FlowAugmentor`).
        crop:      (h, w) crop applied after ``transform``; ``crop_mode`` "random" (seeded) or "center".
        seed:      int (deterministic per (seed, epoch, index)) or None (see module docstring).
    """

    name = "dataset"

    def __init__(self, *, transform: Transform | None = None, crop: Sequence[int] | None = None,
                 crop_mode: str = "random", seed: int | None = 0):
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable(raw, rng=...), got {type(transform).__name__}")
        if crop is not None:
            if len(crop) != 2 or int(crop[0]) <= 0 or int(crop[1]) <= 0:
                raise ValueError(f"crop must be (height, width) with positive sizes, got {crop!r}")
            crop = (int(crop[0]), int(crop[1]))
        if crop_mode not in ("random", "center"):
            raise ValueError(f"crop_mode must be 'random' or 'center', got {crop_mode!r}")
        self.transform, self.crop, self.crop_mode, self.seed = transform, crop, crop_mode, seed
        self.epoch = 0

    # -- subclass API -------------------------------------------------------------------------------------
    def load_raw(self, index: int) -> RawSample:
        raise NotImplementedError

    def meta(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    # -- common -----------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations: the per-sample generators depend on ``(seed, epoch, index)``."""
        self.epoch = int(epoch)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return index % n

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(item, tuple):
            index, sample_seed = item
            rng = np.random.default_rng(np.random.SeedSequence([int(sample_seed) & (2 ** 63 - 1)]))
        else:
            index, rng = item, None
        index = self._index(int(index))
        raw = self.load_raw(index)
        if self.transform is not None or (self.crop is not None and self.crop_mode == "random"):
            rng = rng if rng is not None else sample_rng(self.seed, self.epoch, index)
        if self.transform is not None:
            raw = self.transform(raw, rng=rng)
        if self.crop is not None:
            raw = random_crop(raw, self.crop, rng, self.crop_mode)
        return to_sample(raw, self.meta(index))


class RecordDataset(FlowDataset):
    """A dataset given as a list of :class:`PairRecord` (all file-based readers).

    ``sparse`` marks KITTI-style sparse ground truth (augmentors then resize flow by scattering valid points);
    ``max_abs_flow`` is RAFT's rule for dense synthetic data (|u| or |v| >= 1000 -> invalid), None = off.
    ``options`` are the common :class:`FlowDataset` options (transform, crop, crop_mode, seed).
    """

    def __init__(self, name: str, records: list[PairRecord], *, sparse: bool = False,
                 max_abs_flow: float | None = None, **options: Any):
        super().__init__(**options)
        self.name, self.records, self.sparse, self.max_abs_flow = name, list(records), sparse, max_abs_flow
        self.options = options

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pairs={len(self.records)})"

    def meta(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return make_meta(self.name, index, scene=r.scene, frame=r.frame, variant=r.variant,
                         img1=r.img1, img2=r.img2, flow=r.flow or "")

    def load_raw(self, index: int) -> RawSample:
        r = self.records[index]
        raw: RawSample = {"img1": read_image(r.img1), "img2": read_image(r.img2), "sparse": self.sparse}
        if raw["img1"].shape != raw["img2"].shape:
            raise ValueError(f"{r.img1} and {r.img2}: frames differ in size "
                             f"({raw['img1'].shape[:2]} vs {raw['img2'].shape[:2]})")
        if r.flow is not None:
            flow, valid = read_flow(r.flow)
            if flow.shape[:2] != raw["img1"].shape[:2]:
                raise ValueError(f"{r.flow}: flow is {flow.shape[:2]} but the frames are "
                                 f"{raw['img1'].shape[:2]}")
            valid &= np.isfinite(flow).all(axis=2)
            # Pixels the file has no value for are 0; every other pixel keeps its stored flow, also where
            # a mask below marks it invalid (Sintel training/invalid, RAFT's Things rule).
            flow = np.where(valid[..., None], flow, 0.0).astype(np.float32)
            if self.max_abs_flow is not None:
                valid &= (np.abs(flow) < self.max_abs_flow).all(axis=2)
            if r.invalid is not None and os.path.exists(r.invalid):
                valid &= ~_read_mask(r.invalid)
            raw["flow"], raw["valid"] = flow, valid
        if r.occ is not None and os.path.exists(r.occ):
            raw["occ"] = _read_mask(r.occ)
        return raw

    def select(self, indices: Sequence[int]) -> "RecordDataset":
        """A dataset of the pairs ``indices`` (in that order), same options — e.g. a split's meta-train ids."""
        n = len(self.records)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"indices: {bad[:5]} out of range for {self.name} with {n} pairs")
        return RecordDataset(self.name, [self.records[int(i)] for i in indices], sparse=self.sparse,
                             max_abs_flow=self.max_abs_flow, **self.options)


def _read_mask(path: str) -> np.ndarray:
    return read_image(path)[..., 0] > 127


def existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None
