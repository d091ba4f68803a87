"""Optical-flow accuracy metrics: EPE, KITTI Fl-all and n-px outlier rates, pooled and per image.

Layout convention (one per library, so a shape is never ambiguous):

* numpy arrays follow :mod:`mlof.io`: a flow is ``H x W x 2`` or batched ``N x H x W x 2``;
* torch tensors follow the networks: ``2 x H x W`` or batched ``N x 2 x H x W``.

Each argument is read by its own type, so a torch prediction can be scored against a numpy ground truth.
Masks (``valid``, ``occ``) are ``H x W`` or ``N x H x W``, bool or numeric (numeric: ``>= 0.5`` is True), in
either library. Ground-truth vectors that are not finite are treated as invalid. A non-finite *prediction*
at a valid pixel is not hidden: it makes the metric NaN/inf, as a broken network should.

Two ways to average over a data set, both offered (toolkits disagree):

* **pooled** - every valid pixel of every image weighs the same (the RAFT protocol for Sintel EPE and for
  KITTI Fl-all; mmflow pools everything);
* **per image** - the metric is computed per image, then the images are averaged (the RAFT protocol for
  KITTI EPE; ptlflow averages per sample). Images without valid pixels are NaN and skipped in the mean.

All rates (Fl-all, outliers) are **percentages** 0..100 of the valid pixels. Fl-all counts a pixel as an
outlier when its EPE > 3 px **and** > 5 % of the ground-truth magnitude (KITTI 2015). The n-px outlier
rate is the percentage with EPE > n px (RAFT prints the complement, the share with EPE < n, as "1px").
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "epe_map", "epe", "fl_all", "outlier_rates", "flow_metrics", "FlowMetricAccumulator", "to_flow_batch",
    "to_mask_batch", "FL_ABS_THRESH", "FL_REL_THRESH",
]

FL_ABS_THRESH = 3.0     # px
FL_REL_THRESH = 0.05    # of |gt|
REGIONS = ("", "_noc", "_occ")   # key suffixes: all valid pixels, non-occluded, occluded


# ------------------------------------------------------------------------------------------- layout conversion
def to_flow_batch(flow: Any, name: str = "flow") -> tuple[torch.Tensor, bool]:
    """Bring a flow to a torch ``N x 2 x H x W`` tensor; also return whether the input was batched.

    numpy: ``H x W x 2`` / ``N x H x W x 2``; torch: ``2 x H x W`` / ``N x 2 x H x W``. No copy for torch.
    """
    if isinstance(flow, torch.Tensor):
        t = flow.detach()
        if t.dim() == 3 and t.shape[0] == 2:
            return t.unsqueeze(0), False
        if t.dim() == 4 and t.shape[1] == 2:
            return t, True
        raise ValueError(f"{name}: a torch flow must be 2 x H x W or N x 2 x H x W, got {tuple(t.shape)}")
    arr = np.asarray(flow)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric numpy array or torch tensor, got {type(flow).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 2:
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0), False
    if arr.ndim == 4 and arr.shape[3] == 2:
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2), True
    raise ValueError(f"{name}: a numpy flow must be H x W x 2 or N x H x W x 2, got {arr.shape}")


def to_mask_batch(mask: Any, n: int, hw: tuple[int, int], device: torch.device, name: str) -> torch.Tensor:
    """Bring an ``H x W`` / ``N x H x W`` (or ``N x 1 x H x W``) mask to a bool ``N x H x W`` tensor."""
    t = mask.detach() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or tuple(t.shape[1:]) != tuple(hw) or t.shape[0] not in (1, n):
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {n} flow(s) of size {hw} (H x W)")
    t = t.to(device)
    t = t if t.dtype == torch.bool else t >= 0.5
    return t.expand(n, *hw)


def _prepare(pred, gt, valid, occ):
    p, p_batched = to_flow_batch(pred, "pred")
    g, g_batched = to_flow_batch(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)} (as N x 2 x H x W)")
    g = g.to(p.device)
    n, hw = p.shape[0], tuple(p.shape[2:])
    v = torch.isfinite(g).all(dim=1)
    if valid is not None:
        v = v & to_mask_batch(valid, n, hw, p.device, "valid")
    o = None if occ is None else to_mask_batch(occ, n, hw, p.device, "occ")
    return p, g, v, o, (p_batched or g_batched)


# ------------------------------------------------------------------------------------------------ per-pixel EPE
def epe_map(pred: Any, gt: Any) -> Any:
    """Per-pixel end-point error ``||pred - gt||_2``.

    numpy in -> numpy ``H x W`` (or ``N x H x W``); torch in -> torch tensor of the same layout (differentiable).
    """
    if isinstance(pred, torch.Tensor) and isinstance(gt, torch.Tensor):
        if pred.shape != gt.shape or pred.dim() not in (3, 4) or pred.shape[-3] != 2:
            raise ValueError(f"pred/gt: expected equal 2 x H x W or N x 2 x H x W, got {tuple(pred.shape)}, "
                             f"{tuple(gt.shape)}")
        return torch.linalg.vector_norm(pred - gt.to(pred), dim=-3)
    p, batched = to_flow_batch(pred, "pred")
    g, _ = to_flow_batch(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)} (as N x 2 x H x W)")
    e = torch.linalg.vector_norm(p.double() - g.double().to(p.device), dim=1).cpu().numpy()
    return e if batched else e[0]


# ------------------------------------------------------------------------------------------ sufficient statistics
def _image_stats(p, g, v, o, thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """Per image and region: columns [count, sum EPE, Fl outliers, outliers > t for t in thresholds].

    Returns ``{suffix: N x (3 + K) float64 array}`` for suffix '' (all valid), and '_noc'/'_occ' when ``o``.
    """
    with torch.no_grad():
        # Per-pixel work in the input precision (at least float32), sums in float64: a pooled EPE over
        # millions of pixels must not lose digits, but a per-pixel float32 norm is as exact as the flow.
        dtype = torch.promote_types(torch.promote_types(p.dtype, g.dtype), torch.float32)
        p, g = p.to(dtype), g.to(dtype)
        e = torch.hypot(p[:, 0] - g[:, 0], p[:, 1] - g[:, 1])                     # N x H x W
        fl = (e > FL_ABS_THRESH) & (e > FL_REL_THRESH * torch.hypot(g[:, 0], g[:, 1]))
        outs = [e > t for t in thresholds]
        regions = {"": v} if o is None else {"": v, "_noc": v & ~o, "_occ": v & o}
        stats = {}
        for key, m in regions.items():
            cols = [m.sum((1, 2)).double(), torch.where(m, e, 0.0).sum((1, 2), dtype=torch.float64),
                    (fl & m).sum((1, 2)).double()]
            cols += [(x & m).sum((1, 2)).double() for x in outs]
            stats[key] = torch.stack(cols, dim=1).cpu().numpy()
    return stats


def _rates(stats: np.ndarray, pooled: bool) -> np.ndarray:
    """From [count, sum, fl, out...] rows to [epe, fl %, out % ...]; pooled sums rows first. NaN when empty."""
    s = stats.sum(0, keepdims=True) if pooled else stats
    count = s[:, :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = s[:, 1:] / count
    vals[:, 1:] *= 100.0
    vals[np.broadcast_to(count == 0, vals.shape)] = np.nan
    return vals[0] if pooled else vals


def _metric_names(thresholds: Sequence[float]) -> list[str]:
    return ["epe", "fl_all"] + [f"outlier_{t:g}px" for t in thresholds]


def _named(vals: np.ndarray, names: list[str], suffix: str, per_image: bool) -> dict[str, Any]:
    """Name the columns; pooled values become floats, per-image ones stay arrays of length N."""
    out = {}
    for i, name in enumerate(names):
        out[f"{name}{suffix}"] = vals[:, i].copy() if per_image else float(vals[i])
    return out


# -------------------------------------------------------------------------------------------------- public API
def flow_metrics(pred: Any, gt: Any, valid: Any = None, occ: Any = None, thresholds: Sequence[float] = (1, 3, 5),
                 *, per_image: bool = False) -> dict[str, Any]:
    """All metrics at once: ``epe``, ``fl_all`` (%), ``outlier_{t}px`` (%), and with ``occ`` (True = occluded)
    the same with suffixes ``_noc`` and ``_occ``. Pooled floats, or per-image arrays (length N) with
    ``per_image=True``. Also returns ``num_pixels`` (valid pixels; per image an array).
    """
    p, g, v, o, _ = _prepare(pred, gt, valid, occ)
    stats = _image_stats(p, g, v, o, thresholds)
    names = _metric_names(thresholds)
    out: dict[str, Any] = {}
    for suffix, s in stats.items():
        out.update(_named(_rates(s, pooled=not per_image), names, suffix, per_image))
    out["num_pixels"] = stats[""][:, 0].astype(np.int64) if per_image else int(stats[""][:, 0].sum())
    return out


def epe(pred: Any, gt: Any, valid: Any = None, *, per_image: bool = False) -> float | np.ndarray:
    """Mean end-point error over valid pixels: pooled (float), or one value per image (array, length N)."""
    return flow_metrics(pred, gt, valid, thresholds=(), per_image=per_image)["epe"]


def fl_all(pred: Any, gt: Any, valid: Any = None, *, per_image: bool = False) -> float | np.ndarray:
    """KITTI Fl-all in percent: valid pixels with EPE > 3 px and > 5 % of |gt|; pooled or per image."""
    return flow_metrics(pred, gt, valid, thresholds=(), per_image=per_image)["fl_all"]


def outlier_rates(pred: Any, gt: Any, valid: Any = None, thresholds: Sequence[float] = (1, 3, 5), *,
                  per_image: bool = False) -> dict[str, float | np.ndarray]:
    """Percent of valid pixels with EPE > t for each t: ``{"1px": .., "3px": .., "5px": ..}``."""
    m = flow_metrics(pred, gt, valid, thresholds=thresholds, per_image=per_image)
    return {f"{t:g}px": m[f"outlier_{t:g}px"] for t in thresholds}


# ------------------------------------------------------------------------------------------------- accumulator
class FlowMetricAccumulator:
    """Collects per-image sufficient statistics over a data set and reports both averaging protocols.

    ``add(pred, gt, valid=None, occ=None)`` takes one sample or a batch (each batch item is one image).
    ``summary()`` returns floats:

    * ``epe`` pooled over all valid pixels (Sintel protocol), ``epe_per_image`` mean of per-image EPE
      (KITTI protocol), ``fl_all`` pooled Fl-all % (KITTI protocol), ``fl_all_per_image``,
      ``outlier_{t}px`` pooled % and ``outlier_{t}px_per_image``;
    * with occlusion masks given to ``add``: every metric again for ``_noc`` and ``_occ`` pixels
      (e.g. ``epe_noc``, ``epe_occ_per_image``), over the images that had a mask;
    * ``num_images``, ``num_pixels`` (valid pixels) and, with masks, ``num_pixels_noc`` / ``num_pixels_occ``.
    """

    def __init__(self, thresholds: Sequence[float] = (1, 3, 5)) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._stats: dict[str, list[np.ndarray]] = {key: [] for key in REGIONS}

    def __len__(self) -> int:
        return sum(len(s) for s in self._stats[""])

    def add(self, pred: Any, gt: Any, valid: Any = None, occ: Any = None) -> dict[str, np.ndarray]:
        """Add one sample or a batch; returns this batch's per-image metrics (arrays of length N)."""
        p, g, v, o, _ = _prepare(pred, gt, valid, occ)
        stats = _image_stats(p, g, v, o, self.thresholds)
        names = _metric_names(self.thresholds)
        out: dict[str, np.ndarray] = {}
        self._last = stats
        for key, s in stats.items():
            self._stats[key].append(s)
            out.update(_named(_rates(s, pooled=False), names, key, per_image=True))
        return out

    def last_stats(self) -> dict[str, list[list[float]]]:
        """The sufficient statistics of the last ``add`` (per region, one row per image), as plain lists:
        what ``add_stats`` takes back, e.g. to rebuild the accumulator of an interrupted run exactly."""
        return {key: s.tolist() for key, s in getattr(self, "_last", {}).items()}

    def add_stats(self, stats: Mapping[str, Sequence[Sequence[float]]]) -> None:
        """Add statistics saved by ``last_stats`` (float64: the summary is the same as after ``add``)."""
        unknown = set(stats) - set(self._stats)
        if unknown or "" not in stats:
            raise ValueError(f"stats: expected the regions {sorted(self._stats)} (all pixels '' at least), got "
                             f"{sorted(stats)}")
        for key, rows in stats.items():
            self._stats[key].append(np.asarray(rows, dtype=np.float64).reshape(len(rows), -1))

    def summary(self) -> dict[str, float]:
        """Pooled and per-image-mean metrics over everything added (NaN where nothing was counted)."""
        names = _metric_names(self.thresholds)
        out: dict[str, float] = {"num_images": len(self)}
        width = 3 + len(self.thresholds)
        for key, chunks in self._stats.items():
            if key and not chunks:
                continue   # no occlusion masks were given
            s = np.concatenate(chunks) if chunks else np.zeros((0, width))
            out.update(_named(_rates(s, pooled=True), names, key, per_image=False))
            per = _rates(s, pooled=False)
            for i, name in enumerate(names):
                col = per[:, i][~np.isnan(per[:, i])]
                out[f"{name}{key}_per_image"] = float(col.mean()) if col.size else math.nan
            out[f"num_pixels{key}"] = int(s[:, 0].sum())
        return out
