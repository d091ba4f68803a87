"""The layered scene of the synthetic generator: layers, their motion, and the exact backward renderer.

See :mod:`mlof.data.synthetic` for the model. Everything here is private to the generator.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mlof.data.domains import MOTION_REFERENCE, Domain
from mlof.data.textures import TextureStyle, make_texture

__all__ = ["build_layers", "render_frame", "pair_truth", "lighting_maps", "draw_uniform"]

_LIPSCHITZ = 0.3             # max |grad| of the non-rigid displacement, so the inverse converges
_FP_TOL = 2e-4               # fixed-point tolerance, px (float32 coordinates: ~6e-5 px at 1024 px)


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

    def _similarity(self, t: int) -> tuple[float, float, float, float]:
        """(s cos, s sin, bx, by) of frame t: x' = [[sc, -ss], [ss, sc]] x + b."""
        s = math.exp(self.log_zoom * t)
        return (s * math.cos(self.theta * t), s * math.sin(self.theta * t), self.shift[0] * t,
                self.shift[1] * t)

    @staticmethod
    def _rotate(v: torch.Tensor, sc: float, ss: float) -> torch.Tensor:
        return torch.stack([sc * v[:, 0] - ss * v[:, 1], ss * v[:, 0] + sc * v[:, 1]], dim=1)

    def forward(self, t: int, p: torch.Tensor) -> torch.Tensor:
        """Image position at frame t of reference points ``p`` (N x 2, float32)."""
        if t == 0:
            return p.clone()
        sc, ss, bx, by = self._similarity(t)
        q = p - p.new_tensor(self.centre)
        if self.amp:
            q = q + (self.amp * t) * self.sample(self.disp, p, "bilinear", "border").T
        return self._rotate(q, sc, ss) + p.new_tensor([self.centre[0] + bx, self.centre[1] + by])

    def inverse(self, t: int, y: torch.Tensor) -> torch.Tensor:
        """Reference points whose frame-t image is ``y`` (N x 2, float32), to ``_FP_TOL`` px."""
        if t == 0 or len(y) == 0:
            return y.clone()
        sc, ss, bx, by = self._similarity(t)
        n2 = sc * sc + ss * ss                     # inverse of s R(theta) is R(-theta) / s
        c = y.new_tensor(self.centre)
        q = c + self._rotate(y - y.new_tensor([self.centre[0] + bx, self.centre[1] + by]), sc / n2, -ss / n2)
        if not self.amp:
            return q
        k = self.amp * t
        p = q
        for _ in range(40):
            new = q - k * self.sample(self.disp, p, "bilinear", "border").T
            step = float((new - p).abs().max())
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
        sc, ss, bx, by = self._similarity(t)
        img = self._rotate(corners - corners.new_tensor(self.centre), sc, ss) + \
            corners.new_tensor([self.centre[0] + bx, self.centre[1] + by])
        pad = abs(self.amp * t) * math.exp(abs(self.log_zoom * t)) * 1.5 + 2.0
        bx0 = max(0, int(math.floor(img[:, 0].min() - pad)))
        by0 = max(0, int(math.floor(img[:, 1].min() - pad)))
        bx1 = min(hw[1], int(math.ceil(img[:, 0].max() + pad)) + 1)
        by1 = min(hw[0], int(math.ceil(img[:, 1].max() + pad)) + 1)
        return None if bx0 >= bx1 or by0 >= by1 else (bx0, by0, bx1, by1)


def draw_uniform(rng: np.random.Generator, r: Sequence[float]) -> float:
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
    style = TextureStyle(alpha=draw_uniform(rng, d.texture_alpha), contrast=draw_uniform(rng, d.texture_contrast),
                         saturation=draw_uniform(rng, d.saturation), leaves=int(round(draw_uniform(rng, d.leaves))),
                         mean=draw_uniform(rng, d.brightness), spread=draw_uniform(rng, d.palette_spread), cast=cast)
    # Optional extras draw random numbers only when the domain enables them (older domains render as before).
    extras = {}
    if d.flat_fraction > 0 and rng.random() < d.flat_fraction:
        extras["contrast"] = 0.1 * style.contrast
    if d.pattern_fraction[1] > 0:
        extras["pattern"] = draw_uniform(rng, d.pattern_fraction)
    if d.shading[1] > 0:
        extras["shading"] = draw_uniform(rng, d.shading)
    return dataclasses.replace(style, **extras) if extras else style


def _motion(rng: np.random.Generator, max_shift: float, max_rot: float, max_zoom: float, scale: float,
            power: float) -> tuple[float, tuple[float, float], float]:
    u = rng.random()
    mag = max_shift * scale * (u if power == 1.0 else u ** power)
    ang = rng.uniform(0, 2 * np.pi)
    theta = math.radians(rng.uniform(-max_rot, max_rot))
    return theta, (float(mag * math.cos(ang)), float(mag * math.sin(ang))), float(rng.uniform(-max_zoom, max_zoom))


def build_layers(rng: np.random.Generator, d: Domain, h: int, w: int, frames: int) -> list[_Layer]:
    scale = min(h, w) / MOTION_REFERENCE
    cast_rb = draw_uniform(rng, d.colour_cast)
    cast = (cast_rb, 1.0, 1.0 / cast_rb)
    layers = []
    # background: the frame plus a margin; sampling beyond it reflects (still one exact texture function)
    m = int(0.1 * max(h, w)) + 8
    theta, shift, zoom = _motion(rng, d.background_translation, d.background_rotation, d.background_zoom,
                                 scale, d.background_motion_power)
    tex = make_texture(rng, h + 2 * m, w + 2 * m, _style(rng, d, cast))
    disp = _smooth_field(rng, h + 2 * m, w + 2 * m, d.nonrigid_cells)
    amp = _nonrigid_amp(rng, d, scale, disp, frames)
    layers.append(_Layer((-m, -m), _t(tex.transpose(2, 0, 1)), None, _t(disp),
                         (w / 2.0, h / 2.0), theta, zoom, shift, amp))
    n_obj = int(rng.integers(d.num_objects[0], d.num_objects[1] + 1))
    for _ in range(n_obj):
        radius = 0.5 * draw_uniform(rng, d.object_size) * min(h, w)
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
                                     d.object_motion_power)
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


def render_frame(layers: list[_Layer], t: int, h: int, w: int
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


def pair_truth(layers: list[_Layer], t: int, owner: torch.Tensor, ref: torch.Tensor, h: int, w: int
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


def lighting_maps(rng: np.random.Generator, d: Domain, frames: int, h: int, w: int
              ) -> list[tuple[np.ndarray | float, float]]:
    """Per-frame multiplicative maps (H x W x 3, or 1.0) and biases for the lighting change over time."""
    gain = draw_uniform(rng, d.light_gain)
    bias = draw_uniform(rng, d.light_bias)
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
