"""RAFT-lineage augmentation for dense and sparse (KITTI) flow, seeded, with exact flow transformation.

An augmentor is called on a *raw* sample — numpy arrays ``img1``/``img2`` H x W x 3 (uint8 or float 0..255),
optional ``flow`` H x W x 2, ``valid`` / ``occ`` H x W bool, optional ``sparse`` flag — and returns a new raw
sample: ``aug(raw, rng=numpy.random.Generator)``. Datasets pass a per-sample generator (see
:mod:`mlof.data.base`); without one the augmentor's own generator (``seed=``) is used. Global random state
is never touched.

Steps, in RAFT's order and with RAFT's draws:

1. colour jitter (:class:`~mlof.data.photometric.ColorJitter`), asymmetric (each frame its own draw) with
   probability ``asymmetric_prob``, else one draw on both frames stacked; optional ``gamma`` range;
2. eraser: with probability ``eraser_prob``, 1-2 boxes of 50-100 px in frame 2 filled with its mean colour
   (RAFT's ``randint(1, 3)`` draws 1 or 2 boxes);
3. spatial: scale ``2 ** U(min_scale, max_scale)``, stretch ``2 ** U(-max_stretch, max_stretch)`` per axis
   with ``stretch_prob`` (dense only, as in RAFT), applied with ``spatial_prob``; the scale is clipped so the
   result still covers the crop; flips (h ``h_flip_prob``, v ``v_flip_prob``; sparse: h only) if ``do_flip``;
   random crop (sparse: RAFT's 20 px / 50 px margins, clipped).

Exactness: images are resized with OpenCV's pixel-centre convention, so a point at x goes to
(x + 0.5) * r - 0.5 with r = new size / old size per axis; flow is multiplied by that *actual* r (RAFT uses
the requested factor, which differs by rounding of the output size). Dense flow is interpolated bilinearly
and stays valid only where all four source pixels were valid; sparse flow is scattered: each valid point
moves to the nearest pixel of its new position (RAFT drops points landing on row/column 0; we keep them).
If an image is smaller than the crop after the spatial step it is scaled up to fit (RAFT would crash).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from mlof.data.photometric import ColorJitter, adjust_gamma, erase_boxes

__all__ = ["FlowAugmentor", "SparseFlowAugmentor", "PRESETS", "build_augmentor", "resize_dense",
           "resize_sparse"]


def _ratio(old: int, new: int) -> float:
    return new / old


def _new_size(h: int, w: int, fx: float, fy: float) -> tuple[int, int]:
    return max(1, int(round(h * fy))), max(1, int(round(w * fx)))


def resize_dense(flow: np.ndarray, valid: np.ndarray | None, size: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a dense H x W x 2 flow to ``size`` (h, w), scaling vectors by the actual size ratios."""
    h, w = flow.shape[:2]
    nh, nw = size
    out = cv2.resize(flow, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = out * np.array([_ratio(w, nw), _ratio(h, nh)], dtype=np.float32)
    if valid is not None:
        # a resized vector is trusted only when every source pixel it mixes was valid
        valid = cv2.resize(valid.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR) > 0.999
    return out.astype(np.float32), valid


def resize_sparse(flow: np.ndarray, valid: np.ndarray, size: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Resize sparse flow by moving each valid point to the nearest pixel of its new position."""
    h, w = flow.shape[:2]
    nh, nw = size
    rx, ry = _ratio(w, nw), _ratio(h, nh)
    ys, xs = np.nonzero(valid)
    u = flow[ys, xs]
    nx = np.rint((xs + 0.5) * rx - 0.5).astype(np.int64)
    ny = np.rint((ys + 0.5) * ry - 0.5).astype(np.int64)
    keep = (nx >= 0) & (nx < nw) & (ny >= 0) & (ny < nh)
    out = np.zeros((nh, nw, 2), dtype=np.float32)
    out_valid = np.zeros((nh, nw), dtype=bool)
    out[ny[keep], nx[keep]] = u[keep] * np.array([rx, ry], dtype=np.float32)
    out_valid[ny[keep], nx[keep]] = True
    return out, out_valid


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0


@dataclass
class FlowAugmentor:
    """Dense-flow augmentor (RAFT ``FlowAugmentor``); every constant is a field (defaults = RAFT's)."""

    crop_size: tuple[int, int] | None = (368, 496)
    min_scale: float = -0.2
    max_scale: float = 0.5
    do_flip: bool = True
    spatial_prob: float = 0.8
    stretch_prob: float = 0.8
    max_stretch: float = 0.2
    h_flip_prob: float = 0.5
    v_flip_prob: float = 0.1
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.5 / 3.14
    asymmetric_prob: float = 0.2
    photometric: bool = True
    gamma: tuple[float, float] | None = None
    eraser_prob: float = 0.5
    eraser_bounds: tuple[int, int] = (50, 100)
    eraser_boxes: tuple[int, int] = (1, 2)
    seed: int | None = None
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    sparse = False

    def __post_init__(self) -> None:
        if self.crop_size is not None:
            if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
                raise ValueError(f"crop_size must be (height, width) > 0 or None, got {self.crop_size!r}")
            self.crop_size = (int(self.crop_size[0]), int(self.crop_size[1]))
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale {self.min_scale} > max_scale {self.max_scale} (log2 scale range)")
        for name in ("spatial_prob", "stretch_prob", "h_flip_prob", "v_flip_prob", "asymmetric_prob",
                     "eraser_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.gamma is not None and (len(self.gamma) != 2 or not 0 < self.gamma[0] <= self.gamma[1]):
            raise ValueError(f"gamma must be None or (low, high) with 0 < low <= high, got {self.gamma!r}")
        self.jitter = ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)
        self._rng = np.random.default_rng(self.seed)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (for logging / reproducing)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    # -- photometric --------------------------------------------------------------------------------------
    def color_transform(self, img1: np.ndarray, img2: np.ndarray, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
        if not self.photometric:
            return img1, img2
        if rng.random() < self.asymmetric_prob:
            img1, img2 = self.jitter(img1, rng), self.jitter(img2, rng)
            if self.gamma is not None:
                img1 = adjust_gamma(img1, rng.uniform(*self.gamma))
                img2 = adjust_gamma(img2, rng.uniform(*self.gamma))
        else:   # one draw on the stacked pair: the contrast mean is over both frames, as in RAFT
            stack = self.jitter(np.concatenate([img1, img2], axis=0), rng)
            if self.gamma is not None:
                stack = adjust_gamma(stack, rng.uniform(*self.gamma))
            img1, img2 = stack[: img1.shape[0]], stack[img1.shape[0]:]
        return img1, img2

    def eraser_transform(self, img1: np.ndarray, img2: np.ndarray, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.eraser_prob:
            img2 = erase_boxes(img2, rng, self.eraser_bounds, self.eraser_boxes)
        return img1, img2

    # -- spatial -------------------------------------------------------------------------------------------
    def _draw_scale(self, h: int, w: int, rng: np.random.Generator) -> tuple[float, float, bool]:
        min_scale = 0.0 if self.crop_size is None else \
            max((self.crop_size[0] + 8) / h, (self.crop_size[1] + 8) / w)
        scale = 2 ** rng.uniform(self.min_scale, self.max_scale)
        sx = sy = scale
        if rng.random() < self.stretch_prob:
            sx *= 2 ** rng.uniform(-self.max_stretch, self.max_stretch)
            sy *= 2 ** rng.uniform(-self.max_stretch, self.max_stretch)
        return max(sx, min_scale), max(sy, min_scale), bool(rng.random() < self.spatial_prob)

    def _flip_draws(self, rng: np.random.Generator) -> tuple[bool, bool]:
        if not self.do_flip:
            return False, False
        return bool(rng.random() < self.h_flip_prob), bool(rng.random() < self.v_flip_prob)

    def _crop_origin(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        ch, cw = self.crop_size  # type: ignore[misc]
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))

    def spatial_transform(self, s: dict[str, Any], rng: np.random.Generator, sparse: bool) -> dict[str, Any]:
        h, w = s["img1"].shape[:2]
        sx, sy, do_resize = self._draw_scale(h, w, rng)
        if do_resize:
            s = self._resize(s, _new_size(h, w, sx, sy), sparse)
        hflip, vflip = self._flip_draws(rng)
        if hflip:
            s = _flip(s, axis=1)
        if vflip:
            s = _flip(s, axis=0)
        if self.crop_size is not None:
            h, w = s["img1"].shape[:2]
            ch, cw = self.crop_size
            if h < ch or w < cw:          # scale up so the crop fits (documented deviation from RAFT)
                f = max(ch / h, cw / w)
                s = self._resize(s, (max(ch, int(np.ceil(h * f))), max(cw, int(np.ceil(w * f)))), sparse)
                h, w = s["img1"].shape[:2]
            y0, x0 = self._crop_origin(h, w, rng)
            s = {k: (v[y0:y0 + ch, x0:x0 + cw] if isinstance(v, np.ndarray) else v) for k, v in s.items()}
        return s

    @staticmethod
    def _resize(s: dict[str, Any], size: tuple[int, int], sparse: bool) -> dict[str, Any]:
        out = dict(s)
        for k in ("img1", "img2"):
            out[k] = cv2.resize(s[k], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        if s.get("flow") is not None:
            if sparse:
                valid = s["valid"] if s.get("valid") is not None else np.isfinite(s["flow"]).all(axis=2)
                out["flow"], out["valid"] = resize_sparse(s["flow"], valid, size)
            else:
                out["flow"], out["valid"] = resize_dense(s["flow"], s.get("valid"), size)
                if out["valid"] is None:
                    out.pop("valid")
        if s.get("occ") is not None:
            out["occ"] = _resize_mask(s["occ"], size)
        return out

    # -- entry point -------------------------------------------------------------------------------------------
    def __call__(self, raw: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Augment a raw sample (see module docstring); returns a new dict of contiguous arrays."""
        rng = self._rng if rng is None else rng
        s = dict(raw)
        sparse = bool(self.sparse or s.get("sparse", False))
        if sparse and s.get("flow") is not None and s.get("valid") is None:
            raise ValueError("sparse flow needs a 'valid' mask to be augmented")
        s["img1"], s["img2"] = self.color_transform(s["img1"], s["img2"], rng)
        s["img1"], s["img2"] = self.eraser_transform(s["img1"], s["img2"], rng)
        s = self.spatial_transform(s, rng, sparse)
        return {k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v) for k, v in s.items()}


def _flip(s: dict[str, Any], axis: int) -> dict[str, Any]:
    out = {}
    sign = np.array([-1.0, 1.0] if axis == 1 else [1.0, -1.0], dtype=np.float32)
    for k, v in s.items():
        if not isinstance(v, np.ndarray):
            out[k] = v
        elif k == "flow":
            out[k] = np.flip(v, axis=axis) * sign
        else:
            out[k] = np.flip(v, axis=axis)
    return out


@dataclass
class SparseFlowAugmentor(FlowAugmentor):
    """Sparse-flow (KITTI, HD1K) augmentor: RAFT's ``SparseFlowAugmentor`` — no stretch, h-flip only, crop with
    20 px (y) / 50 px (x) margins, jitter 0.3 / hue 0.3/pi applied to both frames together."""

    crop_size: tuple[int, int] | None = (288, 960)
    do_flip: bool = False
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.3 / 3.14
    asymmetric_prob: float = 0.0    # RAFT declares 0.2 but its sparse colour transform is always symmetric
    stretch_prob: float = 0.0
    margin_y: int = 20
    margin_x: int = 50

    sparse = True

    def _draw_scale(self, h: int, w: int, rng: np.random.Generator) -> tuple[float, float, bool]:
        min_scale = 0.0 if self.crop_size is None else \
            max((self.crop_size[0] + 1) / h, (self.crop_size[1] + 1) / w)
        scale = max(2 ** rng.uniform(self.min_scale, self.max_scale), min_scale)
        return scale, scale, bool(rng.random() < self.spatial_prob)

    def _flip_draws(self, rng: np.random.Generator) -> tuple[bool, bool]:
        return (bool(rng.random() < self.h_flip_prob), False) if self.do_flip else (False, False)

    def _crop_origin(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        ch, cw = self.crop_size  # type: ignore[misc]
        y0 = int(rng.integers(0, h - ch + self.margin_y))
        x0 = int(rng.integers(-self.margin_x, w - cw + self.margin_x))
        return int(np.clip(y0, 0, h - ch)), int(np.clip(x0, 0, w - cw))


# Constants from RAFT's train.py / core/datasets.py (stage -> crop, log2 scale range, flips) and, for
# "mlof-meta", from the MLOF release's meta_train.py (scale range 0..0, no flip, crop 288x960 / 368x768).
PRESETS: dict[str, dict[str, Any]] = {
    "raft-chairs": {"kind": "dense", "crop_size": (368, 496), "min_scale": -0.1, "max_scale": 1.0, "do_flip": True},
    "raft-things": {"kind": "dense", "crop_size": (400, 720), "min_scale": -0.4, "max_scale": 0.8, "do_flip": True},
    "raft-sintel": {"kind": "dense", "crop_size": (368, 768), "min_scale": -0.2, "max_scale": 0.6, "do_flip": True},
    "raft-kitti": {"kind": "sparse", "crop_size": (288, 960), "min_scale": -0.2, "max_scale": 0.4,
                   "do_flip": False},
    # MLOF meta-training: colour jitter + eraser, no scale (2**0), no flip, crop. The release's dense path
    # still applies RAFT's stretch (a side effect of min_scale = max_scale = 0); we follow the paper: none.
    "mlof-meta-kitti": {"kind": "sparse", "crop_size": (288, 960), "min_scale": 0.0, "max_scale": 0.0,
                        "do_flip": False, "spatial_prob": 0.0},
    "mlof-meta-sintel": {"kind": "dense", "crop_size": (368, 768), "min_scale": 0.0, "max_scale": 0.0,
                         "do_flip": False, "spatial_prob": 0.0, "stretch_prob": 0.0},
    # The release's own augmentors with its arguments (min_scale = max_scale = 0, no flip), quirks included:
    # RAFT's dense path still stretches each axis by 2^U(-0.2, 0.2) with probability 0.8 (resize with 0.8);
    # the sparse path resizes by 1. Used by the release meta-inference protocol (``preset="release"``) and the
    # paper meta-training recipes (docs/fidelity.md).
    "mlof-release-kitti": {"kind": "sparse", "crop_size": (288, 960), "min_scale": 0.0, "max_scale": 0.0,
                           "do_flip": False},
    "mlof-release-sintel": {"kind": "dense", "crop_size": (368, 768), "min_scale": 0.0, "max_scale": 0.0,
                            "do_flip": False},
}


def build_augmentor(preset: str | dict[str, Any], **overrides: Any) -> FlowAugmentor:
    """An augmentor from a preset name or a dict of fields (``kind``: "dense" | "sparse"), plus overrides.

    Presets: raft-chairs, raft-things, raft-sintel, raft-kitti, mlof-meta-kitti, mlof-meta-sintel, and
    ``"mlof-meta"`` with ``target="kitti"`` (default) or ``"sintel"``. Unknown fields raise ValueError.
    """
    if isinstance(preset, str):
        name = preset.lower()
        if name == "mlof-meta":
            target = str(overrides.pop("target", "kitti")).lower()
            if target not in ("kitti", "sintel"):
                raise ValueError(f"target must be 'kitti' or 'sintel' for preset 'mlof-meta', got {target!r}")
            name = f"mlof-meta-{target}"
        if name not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}; available: "
                             f"{', '.join(sorted(PRESETS) + ['mlof-meta'])}")
        params = dict(PRESETS[name])
    elif isinstance(preset, dict):
        params = dict(preset)
    else:
        raise ValueError(f"preset must be a name or a dict, got {type(preset).__name__}")
    params.update(overrides)
    kind = params.pop("kind", "dense")
    cls = {"dense": FlowAugmentor, "sparse": SparseFlowAugmentor}.get(kind)
    if cls is None:
        raise ValueError(f"kind must be 'dense' or 'sparse', got {kind!r}")
    known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
    return cls(**params)


def with_seed(aug: FlowAugmentor, seed: int | None) -> FlowAugmentor:
    """A copy of ``aug`` with its own generator seeded ``seed``."""
    return replace(aug, seed=seed)
