"""Photometric augmentation without torchvision: colour jitter, gamma, eraser (numpy, H x W x 3 RGB).

Colour jitter follows torchvision's ``ColorJitter`` semantics (what the RAFT lineage uses):
brightness, contrast and saturation factors are drawn uniformly from ``[max(0, 1 - x), 1 + x]`` and hue
from ``[-h, h]`` (fraction of a full turn); the four operations run in a random order, each clipped to
0..255 as PIL does on uint8 images:

* brightness ``b``: ``img * b``
* contrast ``c``: blend with the mean grey level, ``(img - mean(gray)) * c + mean(gray)``
* saturation ``s``: blend with the per-pixel grey image, ``gray + (img - gray) * s``
* hue ``h``: rotate the hue channel of HSV by ``h * 360`` degrees.

Grey is ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B), as in PIL. Images are processed in float32 and
returned rounded to uint8 when the input was uint8 (the lineage works on uint8 images).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["ColorJitter", "adjust_gamma", "erase_boxes", "gray"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def gray(img: np.ndarray) -> np.ndarray:
    """H x W luma of an H x W x 3 RGB float image."""
    return img @ _LUMA


@dataclass
class ColorJitter:
    """Random brightness / contrast / saturation / hue, torchvision-compatible ranges (see module doc)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.5 / 3.14

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (fraction of a turn), got {self.hue}")

    def draw(self, rng: np.random.Generator) -> tuple[list[int], tuple[float, float, float, float]]:
        """One random setting: the order of the 4 operations and (brightness, contrast, saturation, hue)."""
        order = [int(i) for i in rng.permutation(4)]
        b = rng.uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        c = rng.uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        s = rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        h = rng.uniform(-self.hue, self.hue)
        return order, (float(b), float(c), float(s), float(h))

    @staticmethod
    def apply(img: np.ndarray, order: list[int], factors: tuple[float, float, float, float]) -> np.ndarray:
        """Apply a drawn setting to an H x W x 3 RGB image (uint8 or float 0..255); same dtype out."""
        out = img.astype(np.float32)
        b, c, s, h = factors
        for op in order:
            if op == 0 and b != 1.0:
                out = out * b
            elif op == 1 and c != 1.0:
                m = float(gray(out).mean())
                out = (out - m) * c + m
            elif op == 2 and s != 1.0:
                g = gray(out)[..., None]
                out = g + (out - g) * s
            elif op == 3 and h != 0.0:
                out = _rotate_hue(out, h)
            np.clip(out, 0.0, 255.0, out=out)
        return _like(out, img)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        order, factors = self.draw(rng)
        return self.apply(img, order, factors)


def _rotate_hue(img: np.ndarray, h: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(img / 255.0, dtype=np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + h * 360.0, 360.0)   # float HSV in OpenCV: hue in degrees
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


def _like(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    if ref.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(ref.dtype, copy=False)


def adjust_gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (img / 255) ** gamma`` on an RGB image (uint8 or float 0..255); same dtype out."""
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    out = 255.0 * np.power(np.clip(img.astype(np.float32), 0, 255) / 255.0, gamma)
    return _like(out, img)


def erase_boxes(img: np.ndarray, rng: np.random.Generator, bounds: tuple[int, int] = (50, 100),
                boxes: tuple[int, int] = (1, 2)) -> np.ndarray:
    """RAFT's occlusion augmentation: fill ``boxes`` (inclusive range) random boxes with the image's mean colour.

    Box corners are uniform over the image, sides uniform in ``[bounds[0], bounds[1])`` px (clipped at the
    border). Returns a copy.
    """
    out = img.copy()
    h, w = img.shape[:2]
    mean = img.reshape(-1, img.shape[-1]).astype(np.float64).mean(axis=0)
    for _ in range(int(rng.integers(boxes[0], boxes[1] + 1))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        dx, dy = int(rng.integers(bounds[0], bounds[1])), int(rng.integers(bounds[0], bounds[1]))
        out[y0:y0 + dy, x0:x0 + dx, :] = mean.astype(out.dtype) if out.dtype != np.uint8 else mean
    return out
