"""Procedural textures with natural-image statistics for the synthetic generator (numpy + OpenCV).

A texture = a "dead leaves" partition (random discs, ellipses, rectangles and triangles with a power-law
size distribution, drawn over each other: the classic model of natural-image edges and occlusions), each leaf
a colour from a palette, modulated by two fields of 1/f^alpha noise (amplitude spectrum ~ f^-alpha; natural
images have alpha ~ 1). The noise is a sum of octaves of upsampled white noise with weights 2^(k (alpha - 1))
— for octave k the band power scales as f^(2 - 2 alpha), which is what a 1/f^alpha amplitude spectrum
puts into an octave — much cheaper than an FFT at the sizes used here.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["TextureStyle", "pink_noise", "make_texture", "spectral_slope"]


@dataclass(frozen=True)
class TextureStyle:
    """Parameters of one texture (drawn per layer from a domain's ranges)."""

    alpha: float = 1.0          # spectral exponent of the noise modulation
    contrast: float = 40.0      # std of the noise modulation, in grey levels
    saturation: float = 0.8     # 0 = grey palette, 1 = fully random colours
    leaves: int = 30            # dead-leaves shapes per 256 x 256 area
    mean: float = 128.0         # mean grey level of the palette
    spread: float = 50.0        # std of palette luminance around ``mean``
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)   # per-channel gain (a colour cast of the domain)
    optics_sigma: float = 0.8   # Gaussian band limit of the texture, px
    shading: float = 0.0        # amplitude of a smooth illumination ramp over the texture, grey levels
    pattern: float = 0.0        # share of leaves carrying a periodic pattern (stripes, checks): aperture
                                # problems and repeated structure, as on fabric, fences and bricks


def pink_noise(rng: np.random.Generator, h: int, w: int, alpha: float, fields: int = 1) -> np.ndarray:
    """``fields`` x h x w noise with amplitude spectrum ~ 1/f^alpha, zero mean, unit std per field.

    Octave k (size / 2^k) of white noise is weighted 2^(k (alpha - 1)); octaves are accumulated coarse to
    fine, upsampling the running sum by 2 each time (bicubic), so the cost is about twice one full-size draw.
    """
    levels = max(1, int(np.log2(max(2, min(h, w)))) - 1)
    sizes = [(max(2, int(np.ceil(h / 2 ** k))), max(2, int(np.ceil(w / 2 ** k)))) for k in range(levels)]
    acc = None
    for k in range(levels - 1, -1, -1):
        hh, ww = sizes[k]
        white = rng.standard_normal((hh, ww, fields), dtype=np.float32) * np.float32(2.0 ** (k * (alpha - 1.0)))
        if acc is not None:
            up = cv2.resize(acc, (ww, hh), interpolation=cv2.INTER_CUBIC)
            white += up.reshape(hh, ww, fields)
        acc = white
    out = np.ascontiguousarray(acc.reshape(h, w, fields).transpose(2, 0, 1))
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return out


def _palette(rng: np.random.Generator, n: int, style: TextureStyle) -> np.ndarray:
    lum = np.clip(style.mean + style.spread * rng.standard_normal(n), 5, 250)
    chroma = rng.standard_normal((n, 3)) * 60.0 * style.saturation
    chroma -= chroma.mean(axis=1, keepdims=True)            # chroma only: keep the luminance drawn above
    colours = lum[:, None] + chroma
    return np.clip(colours * np.asarray(style.cast), 0, 255).astype(np.float32)


def _draw_leaves(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """An int32 label image: ``n`` random shapes drawn over each other on background label 0."""
    labels = np.zeros((h, w), dtype=np.int32)
    rmin, rmax = 3.0, 0.6 * max(h, w)
    for i in range(1, n + 1):
        # radius density ~ r^-3 between rmin and rmax (scale-invariant dead leaves), by inverse CDF
        u = rng.random()
        r = 1.0 / np.sqrt(u / rmax ** 2 + (1 - u) / rmin ** 2)
        cx, cy = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
        kind = int(rng.integers(0, 4))
        if kind == 0:
            cv2.circle(labels, (int(cx), int(cy)), max(1, int(r)), i, -1)
        elif kind == 1:
            cv2.ellipse(labels, (int(cx), int(cy)), (max(1, int(r)), max(1, int(r * rng.uniform(0.2, 1.0)))),
                        float(rng.uniform(0, 180)), 0, 360, i, -1)
        else:
            m = 4 if kind == 2 else 3
            ang = rng.uniform(0, 2 * np.pi) + np.sort(rng.uniform(0, 2 * np.pi, m))
            pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1).astype(np.int32)
            cv2.fillPoly(labels, [pts], i)
    return labels


def _periodic_pattern(rng: np.random.Generator, labels: np.ndarray, n: int, style: TextureStyle,
                     kinds: int = 4) -> np.ndarray:
    """An h x w luminance offset: stripes or checks on a random share ``style.pattern`` of the leaves.

    ``kinds`` patterns (period 3..24 px, random orientation, square or sine wave, some crossed into checks)
    are drawn for the whole texture and each chosen leaf shows one of them, scaled by its own amplitude
    (about the palette spread): the cost is a few full-size fields whatever the number of leaves."""
    h, w = labels.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    fields = np.empty((kinds + 1, h, w), np.float32)
    fields[0] = 0.0                                              # index 0: no pattern
    for k in range(1, kinds + 1):
        period = float(np.exp(rng.uniform(np.log(3.0), np.log(24.0))))
        ang = rng.uniform(0, np.pi)
        u = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * np.float32(2 * np.pi / period))
        wave = np.sign(u) if rng.random() < 0.5 else u
        if rng.random() < 0.3:                                   # checks: a second, orthogonal square wave
            wave = wave * np.sign(np.sin((yy * np.cos(ang) - xx * np.sin(ang)) * np.float32(2 * np.pi / period)))
        fields[k] = wave
    which = np.where(rng.random(n + 1) < style.pattern, rng.integers(1, kinds + 1, n + 1), 0)
    amp = (rng.uniform(0.3, 1.0, n + 1) * max(style.spread, 15.0)).astype(np.float32)
    return np.take_along_axis(fields, which[labels][None], axis=0)[0] * amp[labels]


def _shading_ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An h x w smooth illumination field in about [-1, 1]: a linear ramp plus one soft highlight/shadow."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(ang) + yy * np.sin(ang)) / max(h, w)
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.7) * max(h, w)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.choice([-1.0, 1.0])
    return (ramp + blob).astype(np.float32)


def make_texture(rng: np.random.Generator, h: int, w: int, style: TextureStyle) -> np.ndarray:
    """An h x w x 3 float32 RGB texture (0..255) of the given style."""
    n = max(1, int(round(style.leaves * h * w / 256.0 ** 2)))
    labels = _draw_leaves(rng, h, w, n)
    img = _palette(rng, n + 1, style)[labels]
    noise = pink_noise(rng, h, w, style.alpha, fields=2)
    direction = rng.standard_normal((2, 3)).astype(np.float32) * style.saturation
    direction += 1.0                                       # mostly luminance, some colour
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) / np.sqrt(3.0)
    img += style.contrast * (noise[0, ..., None] * direction[0] + 0.5 * noise[1, ..., None] * direction[1])
    # The extras below draw random numbers only when enabled, so textures without them stay as they were.
    if style.pattern > 0:
        img += _periodic_pattern(rng, labels, n, style)[..., None]
    if style.shading > 0:
        img += (style.shading * _shading_ramp(rng, h, w))[..., None]
    if style.optics_sigma > 0:   # band-limit like a lens: no energy at the pixel's Nyquist frequency
        img = cv2.GaussianBlur(img, (0, 0), style.optics_sigma)
    return np.clip(img, 0, 255)


def spectral_slope(gray_img: np.ndarray) -> float:
    """Slope alpha of the radially averaged amplitude spectrum, |F(f)| ~ f^-alpha (fit over mid frequencies)."""
    g = gray_img.astype(np.float64)
    g = (g - g.mean()) * np.outer(np.hanning(g.shape[0]), np.hanning(g.shape[1]))
    amp = np.abs(np.fft.fftshift(np.fft.fft2(g)))
    h, w = g.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h // 2) / h, (xx - w // 2) / w)
    sel = (r > 4.0 / min(h, w)) & (r < 0.35)
    bins = np.geomspace(r[sel].min(), r[sel].max(), 20)
    idx = np.digitize(r[sel], bins)
    fs, amps = [], []
    for b in range(1, len(bins)):
        m = idx == b
        if m.any():
            fs.append(r[sel][m].mean())
            amps.append(amp[sel][m].mean())
    slope = np.polyfit(np.log(fs), np.log(amps), 1)[0]
    return float(-slope)
