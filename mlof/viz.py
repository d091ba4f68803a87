"""Pictures of flow: Middlebury colour coding, error maps, side-by-side panels, TensorBoard helper.

Inputs follow :mod:`mlof.metrics`: numpy flows are ``H x W x 2`` (or ``N x H x W x 2``), torch flows are
``2 x H x W`` (or ``N x 2 x H x W``). Every function returns numpy ``uint8`` RGB images ``H x W x 3``
(``N x H x W x 3`` for batched input). Unknown pixels (NaN, inf, ``|u|`` or ``|v|`` > 1e9, or
``valid`` False) are drawn black.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from mlof.metrics import FL_ABS_THRESH, FL_REL_THRESH, epe, to_flow_batch, to_mask_batch

__all__ = ["colorwheel", "flow_to_rgb", "error_map", "flow_panel", "batch_panel", "color_key", "series_plot", "bar_plot", "to_tensorboard",
           "KITTI_ERROR_COLORS"]

_UNKNOWN = 1e9
_EPS = 1e-5   # as in the Middlebury/flow_vis code: a zero-flow field normalises to white, never divides by 0

# KITTI devkit error colours: bins of  min(EPE / 3, 20 * EPE / |gt|)  (1.0 = the Fl-all outlier threshold),
# from dark blue (tiny error) through white (about a quarter of the threshold) to dark red (16x).
KITTI_ERROR_COLORS = np.array([
    [0.0, 0.0625, 49, 54, 149], [0.0625, 0.125, 69, 117, 180], [0.125, 0.25, 116, 173, 209],
    [0.25, 0.5, 171, 217, 233], [0.5, 1.0, 224, 243, 248], [1.0, 2.0, 254, 224, 144],
    [2.0, 4.0, 253, 174, 97], [4.0, 8.0, 244, 109, 67], [8.0, 16.0, 215, 48, 39], [16.0, np.inf, 165, 0, 38],
])


@lru_cache(maxsize=1)
def colorwheel() -> np.ndarray:
    """The 55 x 3 uint8 Middlebury colour wheel (Baker et al. 2011): segments red-yellow 15, yellow-green 6,
    green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6; each ramp is ``floor(255 * i / n)``."""
    segments = [(15, 0, 1, +1), (6, 1, 0, -1), (4, 1, 2, +1), (11, 2, 1, -1), (13, 2, 0, +1), (6, 0, 2, -1)]
    rows = []
    for n, full, ramp, direction in segments:
        seg = np.zeros((n, 3))
        seg[:, full] = 255
        up = np.floor(255 * np.arange(n) / n)
        seg[:, ramp] = up if direction > 0 else 255 - up
        rows.append(seg)
    wheel = np.concatenate(rows).astype(np.uint8)
    wheel.flags.writeable = False
    return wheel


def _flows_hw2(flow: Any) -> tuple[np.ndarray, bool]:
    """Any supported flow -> float64 numpy N x H x W x 2, plus whether the input was batched."""
    t, batched = to_flow_batch(flow, "flow")
    return t.permute(0, 2, 3, 1).cpu().double().numpy(), batched


def _known(f: np.ndarray, valid: Any) -> np.ndarray:
    known = np.isfinite(f).all(-1) & (np.abs(np.nan_to_num(f)) <= _UNKNOWN).all(-1)
    if valid is not None:
        n, h, w = known.shape
        known &= to_mask_batch(valid, n, (h, w), torch.device("cpu"), "valid").numpy()
    return known


def _uv_to_rgb(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised u, v (unit disk = full saturation) -> uint8 RGB, exactly the Middlebury colour code."""
    wheel = colorwheel().astype(np.float64) / 255.0
    ncols = wheel.shape[0]
    rad = np.sqrt(u * u + v * v)
    fk = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (ncols - 1)     # angle -> position on the wheel
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    col = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (rad <= 1)[..., None]
    # inside the disk: desaturate toward white at the centre; beyond the normaliser: darken (Middlebury).
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    return np.floor(255 * col).astype(np.uint8)


def flow_to_rgb(flow: Any, max_radius: float | None = None, valid: Any = None) -> np.ndarray:
    """Colour-code a flow with the Middlebury wheel: hue = direction, saturation = magnitude.

    ``max_radius`` (px) is the magnitude drawn fully saturated; None uses each image's largest known
    magnitude. Vectors beyond it are darkened (x 0.75) as in the Middlebury code. Zero flow is white;
    rightward (+u) is red, downward (+v) orange-yellow, leftward cyan-blue, upward violet.
    Returns ``H x W x 3`` uint8 (``N x H x W x 3`` for batched input).
    """
    if max_radius is not None and not (np.isfinite(max_radius) and max_radius > 0):
        raise ValueError(f"max_radius must be a positive number, got {max_radius!r}")
    f, batched = _flows_hw2(flow)
    known = _known(f, valid)
    f = np.where(known[..., None], f, 0.0)
    rad = np.sqrt((f ** 2).sum(-1))
    if max_radius is None:
        norm = rad.reshape(len(rad), -1).max(axis=1, initial=0.0)[:, None, None]
    else:
        norm = np.full((len(rad), 1, 1), float(max_radius))
    img = _uv_to_rgb(f[..., 0] / (norm + _EPS), f[..., 1] / (norm + _EPS))
    img[~known] = 0
    return img if batched else img[0]


def error_map(pred: Any, gt: Any, valid: Any = None, max_error: float | None = None,
              scale: str = "kitti") -> np.ndarray:
    """Colour the end-point error ``||pred - gt||`` per pixel; invalid pixels are black.

    ``scale="kitti"`` (default): the KITTI devkit's 10 log-spaced colours of ``min(EPE/3, 20 EPE/|gt|)``,
    so everything from dark blue to white is within the Fl-all threshold and yellow to dark red is an
    outlier (2x..16x over). ``scale="linear"``: the turbo colour map from 0 to ``max_error`` px (None: the
    largest valid error); errors above are clipped to its top colour. Returns ``H x W x 3`` uint8
    (``N x H x W x 3`` for batched input).
    """
    p, batched = _flows_hw2(pred)
    g, _ = _flows_hw2(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape} (as N x H x W x 2)")
    known = _known(g, valid)
    err = np.sqrt(((p - g) ** 2).sum(-1))
    known &= np.isfinite(err)
    err = np.where(known, err, 0.0)
    if scale == "kitti":
        if max_error is not None:
            raise ValueError("max_error applies to scale='linear' only (the KITTI scale is fixed)")
        mag = np.sqrt((np.where(known[..., None], g, 0.0) ** 2).sum(-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.minimum(err / FL_ABS_THRESH, err / (FL_REL_THRESH * mag))
        rel = np.nan_to_num(rel, nan=0.0)            # 0/0: no error on a zero vector
        bins = np.searchsorted(KITTI_ERROR_COLORS[:, 1], rel, side="right")
        img = KITTI_ERROR_COLORS[np.minimum(bins, len(KITTI_ERROR_COLORS) - 1), 2:].astype(np.uint8)
    elif scale == "linear":
        top = float(err.max()) if max_error is None else float(max_error)
        if not np.isfinite(top) or top < 0 or (max_error is not None and top == 0):
            raise ValueError(f"max_error must be a positive number, got {max_error!r}")
        level = np.round(np.clip(err / max(top, 1e-12), 0, 1) * 255).astype(np.uint8)
        img = np.stack([cv2.applyColorMap(x, cv2.COLORMAP_TURBO)[..., ::-1] for x in level])
    else:
        raise ValueError(f"scale must be 'kitti' or 'linear', got {scale!r}")
    img[~known] = 0
    return img if batched else img[0]


def _to_rgb_image(img: Any, name: str) -> np.ndarray:
    """An image as H x W x 3 uint8: numpy H x W x 3 / H x W (uint8 or float 0..255), torch 3 x H x W / H x W."""
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        img = t.numpy()
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name}: expected an RGB image H x W x 3 (numpy) or 3 x H x W (torch), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.round(np.nan_to_num(a.astype(np.float64))), 0, 255).astype(np.uint8)
    return a


_FONT = cv2.FONT_HERSHEY_SIMPLEX
# The outline is the text itself stamped at these offsets (same thickness as the text). A thicker stroke
# would be wider: OpenCV 5 advances glyphs by the stroke thickness (getTextSize of 24 characters at scale
# 1: 332 px at thickness 1, 349 px at thickness 3), so a thick outline does not lie under the text.
_OUTLINE_OFFSETS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]


def caption_scale(tile_shape: Sequence[int]) -> float:
    """The font scale of captions on a tile of ``tile_shape`` (H, W, ...): grows with the tile's short side."""
    return max(0.35, min(tile_shape[:2]) / 500)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Write a small caption at the top-left: white text on a one-pixel dark outline, readable on any
    background. The outline is the same glyph run shifted by one pixel in the 8 directions, so outline and
    text have the same width on every OpenCV version. ``tile``: H x W x 3 uint8 (a copy is returned)."""
    scale = caption_scale(tile.shape)
    (_, text_h), _ = cv2.getTextSize(text, _FONT, scale, 1)
    x0, y0 = 4, 3 + text_h
    out = np.ascontiguousarray(tile).copy()
    for dx, dy in _OUTLINE_OFFSETS:
        cv2.putText(out, text, (x0 + dx, y0 + dy), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(out, text, (x0, y0), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def color_key(h: int, w: int, max_radius: float = 1.0, labels: bool = True) -> np.ndarray:
    """The colour-wheel key of ``flow_to_rgb`` as an H x W x 3 uint8 tile: a disk whose rim is ``max_radius``
    px (fully saturated), centre white, on a dark grey background, with the radius in the caption."""
    if h < 1 or w < 1:
        raise ValueError(f"color_key: size must be positive, got {h} x {w}")
    r = max(1.0, 0.42 * min(h, w))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (xs - (w - 1) / 2) / r, (ys - (h - 1) / 2) / r
    img = _uv_to_rgb(u, v)
    img[np.sqrt(u * u + v * v) > 1] = 48
    if labels:
        img = _label(img, f"key: rim = {max_radius:.1f} px")
    return img


def flow_panel(frames: Sequence[Any] | Any, flow: Any, gt: Any = None, valid: Any = None, *,
               before: Any = None, labels: bool = True, max_radius: float | None = None,
               error_scale: str = "kitti", gap: int = 2) -> np.ndarray:
    """One picture of a pair: the frames in the top row, flows (and errors) below, and a colour-wheel key.

    ``frames``: a sequence of images (numpy H x W x 3, torch 3 x H x W; 0..255) or a T x 3 x H x W tensor.
    ``flow`` / ``gt`` / ``before``: one flow each (H x W x 2 numpy or 2 x H x W torch); ``before`` is the
    unadapted prediction of an adapted ``flow``. Layout (no empty cell for two frames)::

        no gt:            frame 1 | frame 2                    / prediction | key
        gt:               frame 1 | frame 2 | key              / prediction | ground truth | error
        before, no gt:    frame 1 | frame 2 | key              / before | after | after - before
        before and gt:    frame 1 | frame 2 | gt | key         / before | after | error before | error after

    Every flow shares one colour scale (``max_radius``, default the largest known ground-truth magnitude,
    else the prediction's) so colours compare directly; the key shows it. Captions give the EPE where ground
    truth exists. Frames of another size are resized to the flow's. Returns an H' x W' x 3 uint8 image
    (tiles separated by ``gap`` black pixels).
    """
    f, batched = _flows_hw2(flow)
    if batched and len(f) != 1:
        raise ValueError(f"flow: flow_panel draws one flow, got a batch of {len(f)}")
    h, w = f.shape[1:3]
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim == 4:
        frames = list(frames)
    row1: list[tuple[np.ndarray, str]] = []
    for i, fr in enumerate(frames):
        img = _to_rgb_image(fr, f"frames[{i}]")
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        row1.append((img, f"frame {i + 1}"))
    if max_radius is None:
        ref = f if gt is None else _flows_hw2(gt)[0]
        rad = np.sqrt((np.where(_known(ref, None)[..., None], ref, 0.0) ** 2).sum(-1))
        max_radius = float(rad.max()) if rad.size and rad.max() > 0 else 1.0

    def scored(x: Any) -> str:
        return f" (EPE {float(epe(x, gt, valid)):.2f} px)" if gt is not None else ""

    row2: list[tuple[np.ndarray, str]] = []
    if before is not None:
        row2.append((flow_to_rgb(before, max_radius=max_radius), "before" + scored(before)))
        row2.append((flow_to_rgb(flow, max_radius=max_radius), "after" + scored(flow)))
    else:
        row2.append((flow_to_rgb(flow, max_radius=max_radius), "prediction" + scored(flow)))
    if gt is not None:
        gt_tile = (flow_to_rgb(gt, max_radius=max_radius, valid=valid), "ground truth")
        (row1 if before is not None else row2).append(gt_tile)
        if before is not None:
            row2.append((error_map(before, gt, valid, scale=error_scale), "error before"))
        row2.append((error_map(flow, gt, valid, scale=error_scale), "error after" if before is not None
                     else "error"))
    elif before is not None:
        change = _flows_hw2(flow)[0][0] - _flows_hw2(before)[0][0]
        row2.append((flow_to_rgb(change), "after - before (own scale)"))
    key = (color_key(h, w, max_radius, labels=False), f"key: rim = {max_radius:.1f} px")
    (row1 if len(row1) < len(row2) else row2).append(key)
    if labels:
        row1, row2 = ([(_label(t, c), c) for t, c in r] for r in (row1, row2))
    cols = max(len(row1), len(row2))
    blank = np.zeros((h, w, 3), np.uint8)   # only for unusual frame counts
    rows = [[t for t, _ in r] + [blank] * (cols - len(r)) for r in (row1, row2) if r]
    vsep = np.zeros((h, gap, 3), np.uint8)
    lines = [np.concatenate([x for t in r for x in (t, vsep)][:-1], axis=1) for r in rows]
    hsep = np.zeros((gap, lines[0].shape[1], 3), np.uint8)
    return np.concatenate([x for ln in lines for x in (ln, hsep)][:-1], axis=0)


def batch_panel(batch: dict[str, Any], flow: torch.Tensor) -> np.ndarray:
    """``flow_panel`` of the first sample of a batch (img1 / img2 N x 3 x H x W, optional flow / valid) with its
    predicted ``flow`` (N x 2 x H x W): frames, prediction, ground truth and error; uint8 H x W x 3."""
    gt, valid = batch.get("flow"), batch.get("valid")
    return flow_panel([batch["img1"][0], batch["img2"][0]], flow[0].detach(),
                      gt=None if gt is None else gt[0], valid=None if valid is None else valid[0])

_SERIES_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _y_grid(img: np.ndarray, x0: int, x1: int, py: Any, y_max: float, step: float, scale: float) -> None:
    """Horizontal grid lines every ``step`` up to ``y_max`` with their values left of ``x0`` (``py``: value ->
    row), drawn into ``img`` in place."""
    t = 0.0
    while t <= y_max + 1e-9:
        cv2.line(img, (x0, py(t)), (x1, py(t)), (215, 215, 215), 1)
        text = f"{t:g}"
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
        cv2.putText(img, text, (x0 - 6 - tw, py(t) + th // 2), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        t += step


def _nice_step(span: float, target: int = 5) -> float:
    """A 1/2/5 x 10^k tick step that cuts ``span`` into about ``target`` parts."""
    raw = max(span, 1e-12) / target
    mag = 10 ** np.floor(np.log10(raw))
    return float(min((m * mag for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw)))


def series_plot(series: dict[str, Sequence[float | None]], *, title: str = "", xlabel: str = "pair",
                ylabel: str = "EPE (px)", size: tuple[int, int] = (420, 760)) -> np.ndarray:
    """A line plot of one or more series against their index, drawn with OpenCV (no matplotlib).

    ``series``: name -> values (None / NaN = no value, skipped). Returns an H x W x 3 uint8 RGB image of
    ``size`` (H, W): white background, axes with 1/2/5 ticks, a legend, markers when there are few points.
    """
    if not series:
        raise ValueError("series: give at least one named series")
    h, w = int(size[0]), int(size[1])
    if h < 120 or w < 200:
        raise ValueError(f"size: at least 120 x 200 px, got {h} x {w}")
    vals = {k: np.array([np.nan if v is None else float(v) for v in s], np.float64) for k, s in series.items()}
    n = max(len(v) for v in vals.values())
    finite = np.concatenate([v[np.isfinite(v)] for v in vals.values()] + [np.zeros(0)])
    top = float(finite.max()) if finite.size else 1.0
    step = _nice_step(top if top > 0 else 1.0)
    y_max = step * max(1, int(np.ceil(1.15 * top / step - 1e-9)))   # headroom for the legend
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, up, down = 58, 16, 34 if title else 16, 44
    x0, x1, y0, y1 = left, w - right, h - down, up     # plot box: x0..x1, y1 (top)..y0 (bottom)
    black = (0, 0, 0)

    def px(i: float) -> int:
        return int(round(x0 + (x1 - x0) * (i / max(1, n - 1) if n > 1 else 0.5)))

    def py(v: float) -> int:
        return int(round(y0 - (y0 - y1) * v / y_max))

    small = 0.4
    _y_grid(img, x0, x1, py, y_max, step, small)
    xstep = max(1, int(_nice_step(max(1, n - 1), 8))) if n > 1 else 1
    for i in range(0, n, xstep):
        cv2.line(img, (px(i), y0), (px(i), y0 + 4), black, 1)
        text = str(i)
        (tw, th), _ = cv2.getTextSize(text, _FONT, small, 1)
        cv2.putText(img, text, (px(i) - tw // 2, y0 + 8 + th), _FONT, small, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y1), (x1, y0), black, 1)
    (tw, _), _ = cv2.getTextSize(xlabel, _FONT, small, 1)
    cv2.putText(img, xlabel, ((x0 + x1 - tw) // 2, h - 8), _FONT, small, black, 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (4, y1 - 8 if title else 12), _FONT, small, black, 1, cv2.LINE_AA)
    if title:
        (tw, th), _ = cv2.getTextSize(title, _FONT, 0.5, 1)
        cv2.putText(img, title, ((w - tw) // 2, 6 + th), _FONT, 0.5, black, 1, cv2.LINE_AA)
    legend = []
    for name, v in vals.items():
        mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        legend.append(f"{name} (mean {mean:.2f})")
    legend_w = max(cv2.getTextSize(t, _FONT, small, 1)[0][0] for t in legend) + 36
    lx = max(x0 + 4, x1 - legend_w - 6)
    cv2.rectangle(img, (lx - 4, y1 + 3), (min(x1 - 2, lx + legend_w), y1 + 8 + 16 * len(legend)), (255, 255, 255), -1)
    for k, (name, v) in enumerate(vals.items()):
        color = _SERIES_COLORS[k % len(_SERIES_COLORS)]
        pts = [(px(i), py(x)) for i, x in enumerate(v) if np.isfinite(x)]
        for i in range(len(v) - 1):   # a missing value breaks the line
            if np.isfinite(v[i]) and np.isfinite(v[i + 1]):
                cv2.line(img, (px(i), py(v[i])), (px(i + 1), py(v[i + 1])), color, 2 if n <= 100 else 1,
                         cv2.LINE_AA)
        if len(pts) <= 60:
            for p in pts:
                cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
    for k, (name, v) in enumerate(vals.items()):   # the legend last, over the lines
        color = _SERIES_COLORS[k % len(_SERIES_COLORS)]
        ly = y1 + 16 + 16 * k
        cv2.line(img, (lx, ly - 4), (lx + 22, ly - 4), color, 2, cv2.LINE_AA)
        cv2.putText(img, legend[k], (lx + 28, ly), _FONT, small, black, 1, cv2.LINE_AA)
    return img


def to_tensorboard(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``3 x H x W`` uint8 tensor for ``SummaryWriter.add_image`` (dataformats CHW);
    ``N x H x W x 3`` -> ``N x 3 x H x W`` for ``add_images``."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"image: expected uint8 H x W x 3 or N x H x W x 3, got {a.dtype} {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.permute(2, 0, 1).contiguous() if a.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def bar_plot(values: dict[str, float | None], spreads: dict[str, float | None] | None = None, *,
             title: str = "", ylabel: str = "EPE (px)", size: tuple[int, int] = (420, 760)) -> np.ndarray:
    """A bar chart with optional error bars (± spread), drawn with OpenCV (no matplotlib).

    ``values``: bar label -> height (None / NaN: an empty slot marked "n/a"); ``spreads``: label -> half
    length of its error bar. Returns an H x W x 3 uint8 RGB image of ``size`` (H, W).
    """
    if not values:
        raise ValueError("values: give at least one bar")
    h, w = int(size[0]), int(size[1])
    if h < 120 or w < 200:
        raise ValueError(f"size: at least 120 x 200 px, got {h} x {w}")
    spreads = spreads or {}
    names = list(values)
    v = np.array([np.nan if values[k] is None else float(values[k]) for k in names], np.float64)
    s = np.array([0.0 if spreads.get(k) is None else float(spreads[k]) for k in names], np.float64)
    s[~np.isfinite(s)] = 0.0
    top = float(np.nanmax(v + s)) if np.isfinite(v).any() else 1.0
    step = _nice_step(top if top > 0 else 1.0)
    y_max = step * max(1, int(np.ceil(1.1 * top / step - 1e-9)))
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, up, down = 58, 16, 34 if title else 16, 44
    x0, x1, y0, y1 = left, w - right, h - down, up
    black = (0, 0, 0)

    def py(val: float) -> int:
        return int(round(y0 - (y0 - y1) * max(0.0, val) / y_max))

    small = 0.4
    _y_grid(img, x0, x1, py, y_max, step, small)
    slot = (x1 - x0) / len(names)
    for i, name in enumerate(names):
        cx = x0 + slot * (i + 0.5)
        half = max(2.0, 0.32 * slot)
        colour = _SERIES_COLORS[i % len(_SERIES_COLORS)]
        if np.isfinite(v[i]):
            cv2.rectangle(img, (int(cx - half), py(v[i])), (int(cx + half), y0), colour, -1)
            if s[i] > 0:
                lo, hi, cap = py(v[i] - s[i]), py(v[i] + s[i]), int(max(2.0, half / 3))
                cv2.line(img, (int(cx), lo), (int(cx), hi), black, 1, cv2.LINE_AA)
                cv2.line(img, (int(cx) - cap, lo), (int(cx) + cap, lo), black, 1)
                cv2.line(img, (int(cx) - cap, hi), (int(cx) + cap, hi), black, 1)
            label = f"{v[i]:.3g}"
            (tw, th), _ = cv2.getTextSize(label, _FONT, small, 1)
            cv2.putText(img, label, (int(cx - tw / 2), max(th + 2, py(v[i] + s[i]) - 4)), _FONT, small, black, 1,
                        cv2.LINE_AA)
        else:
            (tw, th), _ = cv2.getTextSize("n/a", _FONT, small, 1)
            cv2.putText(img, "n/a", (int(cx - tw / 2), y0 - 6), _FONT, small, black, 1, cv2.LINE_AA)
        (tw, th), _ = cv2.getTextSize(name, _FONT, 0.45, 1)
        cv2.putText(img, name, (int(cx - tw / 2), y0 + 18), _FONT, 0.45, black, 1, cv2.LINE_AA)
    cv2.line(img, (x0, y0), (x1, y0), black, 1)
    cv2.line(img, (x0, y0), (x0, y1), black, 1)
    (tw, th), _ = cv2.getTextSize(ylabel, _FONT, small, 1)
    cv2.putText(img, ylabel, (4, y1 - 8 if not title else y1 - 4), _FONT, small, black, 1, cv2.LINE_AA)
    if title:
        cv2.putText(img, title, (x0, 20), _FONT, 0.5, black, 1, cv2.LINE_AA)
    return img
