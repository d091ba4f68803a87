"""Seeded synthetic frame pairs and clips with EXACT optical flow, occlusion and validity, and domain shifts.

Scene model. A background layer and K object layers (K drawn per sample), back to front. Each layer lives in
reference coordinates p (the coordinates of frame 0) and carries a texture (:mod:`mlof.data.textures`), a
mask (objects: a random star-shaped blob, ellipse or polygon; background: everywhere) and a smooth unit
displacement field d (bicubic upsampling of a coarse random grid). At frame t a layer point p is seen at

    F_t(p) = c + s^t R(t theta) (p - c + t a d(p)) + t b

(c the layer centre; scale s, rotation theta, translation b and non-rigid amplitude a are the per-frame
motion). Frame t is rendered by BACKWARD mapping: for each pixel y and each layer, front to back, solve
F_t(p) = y (the affine part exactly, the non-rigid part by fixed-point iteration p <- q - t a d(p), which
converges because t a |grad d| <= 0.3 is enforced; iterated to 2e-4 px), keep the first layer whose mask
covers p and sample its texture at p (bilinear, reflecting beyond the texture). So frame t+1 sampled at
y = F_{t+1}(p) shows exactly the texture point that frame t shows at F_t(p), and the ground truth is

    flow_t(x) = F_{t+1}(p) - x,  p = the visible layer's point at pixel x of frame t,
    occ_t(x)  = a nearer layer covers F_{t+1}(p) in frame t+1 (its mask at its own inverse, same rule),
    valid_t(x) = F_{t+1}(p) lies inside frame t+1 (0 <= u <= W-1, 0 <= v <= H-1).

Every frame is then put through the domain's photometric model: lighting change over time (gain, bias,
colour drift, illumination gradient; the "clean" pass), then blur and sensor noise (the "final" pass);
images are rounded to integer levels so a written tree reads back identically.

A :class:`Domain` is a frozen dataclass of parameter ranges; ``source`` and ``target`` differ in texture
statistics (spectral slope, contrast, saturation, edge density, colour cast), lighting change between
frames, blur, noise and motion statistics. Motion magnitudes are given for a 436-px-high frame and scale
with min(H, W) / 436. Sample k of seed s uses only ``numpy.random.default_rng([s, k])``: it is the same
whatever the access order, worker count or machine state.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mlof.data.base import FlowDataset, RawSample, make_meta, to_sample
from mlof.data.textures import TextureStyle, make_texture

__all__ = ["Domain", "DOMAINS", "get_domain", "render_sample", "SyntheticFlowDataset", "write_tree",
           "MOTION_REFERENCE"]

MOTION_REFERENCE = 436.0    # motion parameters are pixels at this min(H, W); they scale with the frame
_LIPSCHITZ = 0.3             # max |grad| of the non-rigid displacement, so the inverse converges
_FP_TOL = 2e-4               # fixed-point tolerance, px (float32 coordinates: ~6e-5 px at 1024 px)
Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """Parameter ranges of a synthetic domain; each range ``(low, high)`` is sampled uniformly per sample
    (or per layer for textures). Units: grey levels 0..255, pixels at a 436-px frame, degrees."""

    name: str = "custom"
    # scene and textures
    num_objects: tuple[int, int] = (3, 7)        # object layers over the background (inclusive)
    object_size: Range = (0.15, 0.45)            # object diameter / min(H, W)
    texture_alpha: Range = (0.8, 1.3)            # 1/f^alpha spectral slope of the texture modulation
    texture_contrast: Range = (30.0, 55.0)       # std of the modulation, grey levels
    saturation: Range = (0.5, 1.0)               # 0 = grey, 1 = vivid colours
    leaves: Range = (20.0, 60.0)                 # sharp-edged shapes per 256^2 px of texture
    brightness: Range = (90.0, 160.0)            # mean grey level of textures
    colour_cast: Range = (1.0, 1.0)              # red gain / blue gain of the scene (1 = neutral)
    # motion per frame
    background_translation: float = 12.0         # max px
    background_rotation: float = 2.0             # max deg
    background_zoom: float = 0.04                # max |log scale|
    object_translation: float = 60.0             # max px (magnitude max * U^1.3)
    object_rotation: float = 10.0                # max deg
    object_zoom: float = 0.10                    # max |log scale|
    nonrigid: float = 1.5                        # max amplitude of the smooth displacement, px
    nonrigid_cells: int = 4                      # control points per side of the displacement grid
    # photometric change between consecutive frames
    light_gain: Range = (1.0, 1.0)               # multiplicative change per frame
    light_bias: Range = (0.0, 0.0)               # additive change per frame, grey levels
    colour_drift: float = 0.0                    # std of per-channel gain change per frame
    light_gradient: float = 0.0                  # max illumination ramp change across the frame, per frame
    # sensor
    blur_sigma: Range = (0.0, 0.0)               # Gaussian blur, px
    noise_std: Range = (0.0, 0.0)                # additive Gaussian noise, grey levels

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (tuple, list)):
                if len(v) != 2 or v[0] > v[1]:
                    raise ValueError(f"domain {self.name!r}: {f.name} must be (low, high) with low <= high, "
                                     f"got {v!r}")
                object.__setattr__(self, f.name, (type(v[0])(v[0]), type(v[1])(v[1])))
        if self.num_objects[0] < 0 or self.nonrigid_cells < 2:
            raise ValueError(f"domain {self.name!r}: num_objects must be >= 0 and nonrigid_cells >= 2")
        if min(self.object_size) <= 0 or min(self.blur_sigma) < 0 or min(self.noise_std) < 0:
            raise ValueError(f"domain {self.name!r}: object_size must be > 0, blur_sigma and noise_std >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "str | Domain | None" = None) -> "Domain":
        """A domain from a dict (e.g. parsed YAML); keys not given come from ``base`` (a name or Domain)."""
        start = get_domain(base) if base is not None else cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown domain parameter(s) {unknown}; known: {sorted(known)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return dataclasses.replace(start, **values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Domain":
        """A domain from a YAML file; a top-level ``base: source|target`` key picks the defaults."""
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a domain file must hold a mapping of parameters")
        base = data.pop("base", None)
        data.setdefault("name", Path(path).stem)
        return cls.from_dict(data, base=base)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


DOMAINS: dict[str, Domain] = {
    # Clean, colourful, textured, moderate motion: a Chairs/Things-like training domain.
    "source": Domain(name="source"),
    # Another "camera and world": smoother, low-contrast, desaturated textures with a warm cast, fewer edges,
    # larger and non-rigid motion, lighting changing between frames, defocus blur and sensor noise.
    "target": Domain(
        name="target", num_objects=(2, 5), object_size=(0.2, 0.55), texture_alpha=(1.5, 2.0),
        texture_contrast=(12.0, 28.0), saturation=(0.1, 0.35), leaves=(4.0, 15.0), brightness=(60.0, 120.0),
        colour_cast=(1.15, 1.3), background_translation=30.0, background_rotation=4.0, background_zoom=0.08,
        object_translation=100.0, object_rotation=25.0, object_zoom=0.2, nonrigid=4.0, nonrigid_cells=5,
        light_gain=(0.9, 1.1), light_bias=(-6.0, 6.0), colour_drift=0.03, light_gradient=0.1,
        blur_sigma=(0.7, 1.5), noise_std=(2.0, 5.0)),
}


def get_domain(domain: "str | Domain | dict[str, Any] | os.PathLike") -> Domain:
    """A :class:`Domain` from a name (source, target), a Domain, a dict, or a YAML file path."""
    if isinstance(domain, Domain):
        return domain
    if isinstance(domain, dict):
        d = dict(domain)
        return Domain.from_dict(d, base=d.pop("base", None))
    if isinstance(domain, (str, os.PathLike)):
        if str(domain) in DOMAINS:
            return DOMAINS[str(domain)]
        if Path(domain).suffix.lower() in (".yaml", ".yml") and Path(domain).is_file():
            return Domain.from_yaml(domain)
        raise ValueError(f"unknown domain {str(domain)!r}: use one of {sorted(DOMAINS)}, a dict of parameters "
                         f"or a YAML file")
    raise ValueError(f"domain must be a name, Domain, dict or YAML path, got {type(domain).__name__}")


# ------------------------------------------------------------------------------------------------ the layers
@dataclass
class _Layer:
    """One layer: arrays in reference coordinates, with ``origin`` = reference position of array pixel (0, 0)."""

    origin: tuple[float, float]
    texture: torch.Tensor                     # 1 x 3 x h x w
    mask: torch.Tensor | None                 # 1 x 1 x h x w (None: covers everything)
    disp: torch.Tensor                        # 1 x 2 x h x w, unit field (max |d| ~ 1)
    centre: tuple[float, float]
    theta: float                              # rad per frame
    log_zoom: float                           # per frame
    shift: tuple[float, float]                # px per frame
    amp: float                                # non-rigid amplitude per frame, px
    box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))   # mask bbox, ref coords

    def _affine(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = math.exp(self.log_zoom * t)
        c, sn = math.cos(self.theta * t), math.sin(self.theta * t)
        a = torch.tensor([[s * c, -s * sn], [s * sn, s * c]], dtype=torch.float32)
        b = torch.tensor([self.shift[0] * t, self.shift[1] * t], dtype=torch.float32)
        return a, b

    def forward(self, t: int, p: torch.Tensor) -> torch.Tensor:
        """Image position at frame t of reference points ``p`` (N x 2, float64)."""
        a, b = self._affine(t)
        c = torch.tensor(self.centre, dtype=torch.float32)
        q = p - c
        if t and self.amp:
            q = q + (self.amp * t) * self.sample(self.disp, p, "bilinear", "border").T
        return c + q @ a.T + b

    def inverse(self, t: int, y: torch.Tensor) -> torch.Tensor:
        """Reference points whose frame-t image is ``y`` (N x 2, float64), to ``_FP_TOL`` px."""
        a, b = self._affine(t)
        c = torch.tensor(self.centre, dtype=torch.float32)
        q = c + (y - b - c) @ torch.linalg.inv(a).T
        if not (t and self.amp) or len(q) == 0:
            return q
        k = self.amp * t
        p = q.clone()
        for _ in range(40):
            new = q - k * self.sample(self.disp, p, "bilinear", "border").T
            step = (new - p).abs().max()
            p = new
            if step < _FP_TOL:
                break
        return p

    def sample(self, arr: torch.Tensor, p: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
        """Values of ``arr`` (1 x C x h x w) at reference points ``p`` (N x 2) -> C x N (float32)."""
        h, w = arr.shape[-2:]
        gx = 2.0 * (p[:, 0] - self.origin[0]) / max(w - 1, 1) - 1.0
        gy = 2.0 * (p[:, 1] - self.origin[1]) / max(h - 1, 1) - 1.0
        grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2)
        out = F.grid_sample(arr, grid, mode=mode, padding_mode=padding, align_corners=True)
        return out[0, :, 0]

    def covers(self, p: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return torch.ones(len(p), dtype=torch.bool)
        return self.sample(self.mask, p, "nearest", "zeros")[0] > 0.5

    def image_box(self, t: int, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """Integer pixel box (x0, y0, x1, y1) of frame t that can show this layer (None: outside)."""
        if self.mask is None:
            return 0, 0, hw[1], hw[0]
        x0, y0, x1, y1 = self.box
        corners = torch.tensor([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=torch.float32)
        a, b = self._affine(t)
        c = torch.tensor(self.centre, dtype=torch.float32)
        img = c + (corners - c) @ a.T + b
        pad = abs(self.amp * t) * math.exp(abs(self.log_zoom * t)) * 1.5 + 2.0
        bx0 = max(0, int(math.floor(img[:, 0].min() - pad)))
        by0 = max(0, int(math.floor(img[:, 1].min() - pad)))
        bx1 = min(hw[1], int(math.ceil(img[:, 0].max() + pad)) + 1)
        by1 = min(hw[0], int(math.ceil(img[:, 1].max() + pad)) + 1)
        return None if bx0 >= bx1 or by0 >= by1 else (bx0, by0, bx1, by1)


def _uniform(rng: np.random.Generator, r: Sequence[float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """2 x h x w smooth random displacement, max |d| = 1, and its max gradient norm (for the step bound)."""
    coarse = rng.standard_normal((cells, cells, 2)).astype(np.float32)
    fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
    fine /= np.abs(fine).max() + 1e-6
    return np.ascontiguousarray(fine)


def _max_gradient(d: np.ndarray) -> float:
    gy = np.abs(np.diff(d, axis=1)).max() if d.shape[1] > 1 else 0.0
    gx = np.abs(np.diff(d, axis=2)).max() if d.shape[2] > 1 else 0.0
    return float(np.sqrt(2.0) * max(gx, gy))


def _blob_mask(rng: np.random.Generator, radius: float, size: int) -> np.ndarray:
    """A size x size uint8 mask of a random shape of about ``radius`` px centred in the array."""
    c = size / 2.0
    kind = int(rng.integers(0, 3))
    mask = np.zeros((size, size), dtype=np.uint8)
    if kind == 0:      # star-shaped blob: smooth random radius r(phi)
        phi = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.ones_like(phi)
        for k in range(2, 6):
            r += rng.uniform(0, 0.25 / (k - 1)) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        r *= radius / r.max()
        pts = np.stack([c + r * np.cos(phi), c + r * np.sin(phi)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif kind == 1:    # ellipse
        axes = (max(2, int(radius)), max(2, int(radius * rng.uniform(0.35, 1.0))))
        cv2.ellipse(mask, (int(c), int(c)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:              # convex-ish polygon (chair-like hard corners)
        n = int(rng.integers(3, 8))
        phi = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = radius * rng.uniform(0.6, 1.0, n)
        pts = np.stack([c + r * np.cos(phi), c + r * np.sin(phi)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _style(rng: np.random.Generator, d: Domain, cast: tuple[float, float, float]) -> TextureStyle:
    return TextureStyle(alpha=_uniform(rng, d.texture_alpha), contrast=_uniform(rng, d.texture_contrast),
                        saturation=_uniform(rng, d.saturation), leaves=int(round(_uniform(rng, d.leaves))),
                        mean=_uniform(rng, d.brightness), spread=0.35 * _uniform(rng, d.brightness), cast=cast)


def _motion(rng: np.random.Generator, max_shift: float, max_rot: float, max_zoom: float, scale: float,
            heavy: bool) -> tuple[float, tuple[float, float], float]:
    mag = max_shift * scale * (rng.random() ** 1.3 if heavy else rng.random())
    ang = rng.uniform(0, 2 * np.pi)
    theta = math.radians(rng.uniform(-max_rot, max_rot))
    return theta, (float(mag * math.cos(ang)), float(mag * math.sin(ang))), float(rng.uniform(-max_zoom, max_zoom))


def _build_layers(rng: np.random.Generator, d: Domain, h: int, w: int, frames: int) -> list[_Layer]:
    scale = min(h, w) / MOTION_REFERENCE
    cast_rb = _uniform(rng, d.colour_cast)
    cast = (cast_rb, 1.0, 1.0 / cast_rb)
    layers = []
    # background: the frame plus a margin; sampling beyond it reflects (still one exact texture function)
    m = int(0.1 * max(h, w)) + 8
    theta, shift, zoom = _motion(rng, d.background_translation, d.background_rotation, d.background_zoom,
                                 scale, heavy=False)
    tex = make_texture(rng, h + 2 * m, w + 2 * m, _style(rng, d, cast))
    disp = _smooth_field(rng, h + 2 * m, w + 2 * m, d.nonrigid_cells)
    amp = _nonrigid_amp(rng, d, scale, disp, frames)
    layers.append(_Layer((-m, -m), _t(tex.transpose(2, 0, 1)), None, _t(disp),
                         (w / 2.0, h / 2.0), theta, zoom, shift, amp))
    n_obj = int(rng.integers(d.num_objects[0], d.num_objects[1] + 1))
    for _ in range(n_obj):
        radius = 0.5 * _uniform(rng, d.object_size) * min(h, w)
        size = int(2 * radius) + 8
        cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
        origin = (cx - size / 2.0, cy - size / 2.0)
        mask = _blob_mask(rng, radius, size)
        ys, xs = np.nonzero(mask)
        box = (origin[0] + xs.min() - 1, origin[1] + ys.min() - 1, origin[0] + xs.max() + 1,
               origin[1] + ys.max() + 1)
        tex = make_texture(rng, size, size, _style(rng, d, cast))
        disp = _smooth_field(rng, size, size, d.nonrigid_cells)
        amp = _nonrigid_amp(rng, d, scale, disp, frames)
        theta, shift, zoom = _motion(rng, d.object_translation, d.object_rotation, d.object_zoom, scale,
                                     heavy=True)
        layers.append(_Layer(origin, _t(tex.transpose(2, 0, 1)), _t(mask[None].astype(np.float32)),
                             _t(disp), (cx, cy), theta, zoom, shift, amp, box))
    return layers


def _nonrigid_amp(rng: np.random.Generator, d: Domain, scale: float, disp: np.ndarray, frames: int) -> float:
    amp = rng.uniform(0, d.nonrigid) * scale
    g = _max_gradient(disp)
    tmax = max(1, frames - 1)
    return float(min(amp, _LIPSCHITZ / (g * tmax + 1e-9)))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


# --------------------------------------------------------------------------------------------- the renderer
@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> torch.Tensor:
    """(H*W) x 2 float32 pixel coordinates (x, y), row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def _render_frame(layers: list[_Layer], t: int, h: int, w: int
                  ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Frame t: image H x W x 3 float32, visible layer id (H*W,) and its reference point (H*W x 2)."""
    pix = _pixel_grid(h, w)
    owner = torch.full((h * w,), -1, dtype=torch.long)
    ref = torch.zeros(h * w, 2, dtype=torch.float32)
    img = torch.zeros(h * w, 3, dtype=torch.float32)
    for lid in range(len(layers) - 1, -1, -1):            # front to back: the first layer to cover wins
        layer = layers[lid]
        box = layer.image_box(t, (h, w))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        free = owner.view(h, w)[y0:y1, x0:x1] < 0
        idx = torch.nonzero(free)
        if not len(idx):
            continue
        idx = (idx[:, 0] + y0) * w + (idx[:, 1] + x0)
        p = layer.inverse(t, pix[idx])
        inside = layer.covers(p)
        idx, p = idx[inside], p[inside]
        owner[idx] = lid
        ref[idx] = p
        img[idx] = layer.sample(layer.texture, p, "bilinear", "reflection").T
    return img.view(h, w, 3).numpy(), owner, ref


def _pair_truth(layers: list[_Layer], t: int, owner: torch.Tensor, ref: torch.Tensor, h: int, w: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow (H x W x 2), valid and occ (H x W bool) from frame t to t+1."""
    pix = _pixel_grid(h, w)
    target = torch.zeros_like(pix)
    for lid, layer in enumerate(layers):
        sel = torch.nonzero(owner == lid)[:, 0]
        if len(sel):
            target[sel] = layer.forward(t + 1, ref[sel])
    occ = torch.zeros(h * w, dtype=torch.bool)
    for mid in range(1, len(layers)):
        layer = layers[mid]
        box = layer.image_box(t + 1, (h, w))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        cand = (owner < mid) & (target[:, 0] >= x0 - 1) & (target[:, 0] <= x1) & \
               (target[:, 1] >= y0 - 1) & (target[:, 1] <= y1)
        idx = torch.nonzero(cand)[:, 0]
        if len(idx):
            occ[idx[layer.covers(layer.inverse(t + 1, target[idx]))]] = True
    flow = target - pix
    valid = (target[:, 0] >= 0) & (target[:, 0] <= w - 1) & (target[:, 1] >= 0) & (target[:, 1] <= h - 1)
    return flow.reshape(h, w, 2).numpy(), valid.reshape(h, w).numpy(), occ.reshape(h, w).numpy()


def _lighting(rng: np.random.Generator, d: Domain, frames: int, h: int, w: int
              ) -> list[tuple[np.ndarray | float, float]]:
    """Per-frame multiplicative maps (H x W x 3, or 1.0) and biases for the lighting change over time."""
    gain = _uniform(rng, d.light_gain)
    bias = _uniform(rng, d.light_bias)
    drift = rng.normal(0.0, d.colour_drift, 3) if d.colour_drift > 0 else np.zeros(3)
    gdir = rng.uniform(0, 2 * np.pi)
    gamp = rng.uniform(-d.light_gradient, d.light_gradient)
    if gain == 1.0 and bias == 0.0 and gamp == 0.0 and not drift.any():
        return [(1.0, 0.0)] * frames
    ramp = ((np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5) * np.float32(np.cos(gdir)))[None, :] + \
        ((np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5) * np.float32(np.sin(gdir)))[:, None]
    maps: list[tuple[np.ndarray | float, float]] = []
    for t in range(frames):
        m = np.float32(gain ** t) * (1.0 + np.float32(t * gamp) * ramp)[..., None] * \
            (1.0 + t * drift).astype(np.float32)[None, None, :]
        maps.append((m, float(bias * t)))
    return maps


def render_sample(domain: "str | Domain | dict[str, Any]" = "source", size: Sequence[int] = (256, 256),
                  seed: int = 0, index: int = 0, clip_length: int = 2) -> dict[str, np.ndarray]:
    """Render sample ``index`` of ``seed``: a clip of ``clip_length`` frames with exact ground truth.

    Returns numpy arrays: ``frames`` T x H x W x 3 float32 (final pass, integer levels 0..255),
    ``clean`` T x H x W x 3 (before blur and noise), ``flows`` (T-1) x H x W x 2 float32,
    ``valids`` / ``occs`` (T-1) x H x W bool, ``layers`` (T x H x W int16: visible layer, 0 = background).
    """
    d = get_domain(domain)
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8 x 8, got {h} x {w}")
    if int(clip_length) < 2:
        raise ValueError(f"clip_length must be >= 2, got {clip_length}")
    T = int(clip_length)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2 ** 63 - 1), int(index)]))
    layers = _build_layers(rng, d, h, w, T)
    light = _lighting(rng, d, T, h, w)
    sigma = _uniform(rng, d.blur_sigma)
    noise = _uniform(rng, d.noise_std)
    clean, final, owners = [], [], []
    flows, valids, occs = [], [], []
    prev = None
    for t in range(T):
        img, owner, ref = _render_frame(layers, t, h, w)
        if prev is not None:
            f, v, o = _pair_truth(layers, t - 1, prev[0], prev[1], h, w)
            flows.append(f)
            valids.append(v)
            occs.append(o)
        prev = (owner, ref)
        gain, bias = light[t]
        lit = np.clip(img * gain + bias, 0, 255).astype(np.float32)
        clean.append(np.rint(lit))
        out = cv2.GaussianBlur(lit, (0, 0), sigma) if sigma > 0 else lit
        if noise > 0:
            out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
        final.append(np.clip(np.rint(out), 0, 255))
        owners.append(owner.view(h, w).numpy().astype(np.int16))
    return {"frames": np.stack(final).astype(np.float32), "clean": np.stack(clean).astype(np.float32),
            "flows": np.stack(flows), "valids": np.stack(valids), "occs": np.stack(occs),
            "layers": np.stack(owners)}


class SyntheticFlowDataset(FlowDataset):
    """``build_dataset("synthetic", None, domain=..., seed=0, size=(H, W), length=N, clip_length=2)``.

    Sample k is :func:`render_sample` (domain, size, seed, k) as a dataset sample (``img1``, ``img2``,
    ``flow``, ``valid``, ``occ``, ``meta``). With ``clip_length`` T > 2 the sample also holds ``frames``
    T x 3 x H x W, ``flows`` (T-1) x 2 x H x W, ``valids`` and ``occs`` (T-1) x H x W; img1/img2/flow are
    its first pair. ``pass_`` "final" (default: blur + noise of the domain) or "clean".
    ``transform``/``crop`` apply to pairs only (clip_length 2).
    """

    name = "synthetic"

    def __init__(self, domain: "str | Domain | dict[str, Any]" = "source", seed: int = 0,
                 size: Sequence[int] = (256, 256), length: int = 1000, clip_length: int = 2,
                 pass_: str = "final", **options: Any):
        if "indices" in options:
            raise ValueError("synthetic: 'indices' is not an option; use torch.utils.data.Subset")
        super().__init__(seed=seed, **options)
        self.domain = get_domain(domain)
        if len(size) != 2 or int(size[0]) < 8 or int(size[1]) < 8:
            raise ValueError(f"size must be (height, width) >= 8, got {size!r}")
        if int(length) < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if int(clip_length) < 2:
            raise ValueError(f"clip_length must be >= 2, got {clip_length}")
        if pass_ not in ("final", "clean"):
            raise ValueError(f"pass_ must be 'final' or 'clean', got {pass_!r}")
        if int(clip_length) > 2 and (self.transform is not None or self.crop is not None):
            raise ValueError("transform/crop apply to frame pairs: use clip_length=2 with them")
        self.size, self.length, self.clip_length, self.pass_ = (int(size[0]), int(size[1])), int(length), \
            int(clip_length), pass_
        self.gen_seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def meta(self, index: int) -> dict[str, Any]:
        return make_meta(self.name, index, scene=f"{self.domain.name}_{self.gen_seed}_{index:06d}", frame=0,
                         variant=self.pass_)

    def _render(self, index: int) -> dict[str, np.ndarray]:
        return render_sample(self.domain, self.size, self.gen_seed, index, self.clip_length)

    def load_raw(self, index: int) -> RawSample:
        s = self._render(index)
        frames = s["frames"] if self.pass_ == "final" else s["clean"]
        return {"img1": frames[0], "img2": frames[1], "flow": s["flows"][0], "valid": s["valids"][0],
                "occ": s["occs"][0]}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if self.clip_length == 2:
            return super().__getitem__(item)
        index = self._index(int(item[0] if isinstance(item, tuple) else item))
        s = self._render(index)
        frames = s["frames"] if self.pass_ == "final" else s["clean"]
        out = to_sample({"img1": frames[0], "img2": frames[1], "flow": s["flows"][0], "valid": s["valids"][0],
                         "occ": s["occs"][0]}, self.meta(index))
        out["frames"] = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        out["flows"] = torch.from_numpy(np.ascontiguousarray(s["flows"])).permute(0, 3, 1, 2).contiguous()
        out["valids"] = torch.from_numpy(s["valids"])
        out["occs"] = torch.from_numpy(s["occs"])
        return out


def write_tree(out_dir: str | os.PathLike, domain: "str | Domain | dict[str, Any]" = "source", n: int = 10,
               size: Sequence[int] = (256, 256), seed: int = 0, clip_length: int = 2,
               progress: bool = False) -> Path:
    """Write ``n`` synthetic scenes as an MPI-Sintel training tree under ``out_dir``; returns its root.

    Layout: ``training/{clean,final}/scene_KKKK/frame_TTTT.png`` (T from 1), ``training/flow/.../frame_TTTT.flo``
    for each pair TTTT -> TTTT+1, ``training/occlusions/`` (255 = occluded) and ``training/invalid/``
    (255 = the point leaves the frame), plus ``domain.json`` (domain, seed, size). Scene k is
    ``render_sample(domain, size, seed, k, clip_length)``; ``build_dataset("sintel", out_dir, pass_="final")``
    reads it back sample for sample (images, flow, valid and occ identical).
    """
    from mlof.io import write_flow, write_image
    from mlof.utils import atomic_open

    d = get_domain(domain)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    root = Path(out_dir)
    base = root / "training"
    it: Any = range(int(n))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"synth {d.name}", unit="scene")
    for k in it:
        s = render_sample(d, size, seed, k, clip_length)
        scene = f"scene_{k:04d}"
        for t in range(int(clip_length)):
            name = f"frame_{t + 1:04d}"
            write_image(base / "clean" / scene / f"{name}.png", s["clean"][t].astype(np.uint8))
            write_image(base / "final" / scene / f"{name}.png", s["frames"][t].astype(np.uint8))
            if t < int(clip_length) - 1:
                write_flow(base / "flow" / scene / f"{name}.flo", s["flows"][t])
                write_image(base / "occlusions" / scene / f"{name}.png", s["occs"][t].astype(np.uint8) * 255)
                write_image(base / "invalid" / scene / f"{name}.png", (~s["valids"][t]).astype(np.uint8) * 255)
    info = {"domain": d.to_dict(), "seed": int(seed), "size": [int(size[0]), int(size[1])], "scenes": int(n),
            "clip_length": int(clip_length), "generator": "mlof.data.synthetic.render_sample"}
    with atomic_open(root / "domain.json", "w") as f:
        json.dump(info, f, indent=2)
    return root
