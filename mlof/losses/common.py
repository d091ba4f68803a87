"""What every loss shares: the output record, the error type, input checks and float32 computation."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from backbones.base import validate_images

__all__ = ["LossOutput", "LossInputError", "check_images", "check_flow", "float32_region", "to_float",
           "masked_mean", "MASK_EPS"]

# Added to a mask's mean before dividing by it: an all-occluded mask gives a zero loss, never inf/NaN.
MASK_EPS = 1e-7


@dataclass
class LossOutput:
    """Result of a loss call.

    total: scalar tensor (differentiable), equal to ``sum(terms.values())``.
    terms: every weighted contribution by name (e.g. ``photo_l1``, ``photo_ssim``, ``smooth2``), each a
           scalar tensor; a term's value is already multiplied by its weight, so the terms add up to total.
    extras: non-loss by-products kept for logging and for other terms (e.g. ``noc_fw``, the N x 1 x H x W
           non-occluded mask of the forward flow); never part of ``total``.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def as_floats(self) -> dict[str, float]:
        """Detached python floats of ``total`` and every term (for loggers)."""
        out = {"total": float(self.total.detach())}
        out.update({k: float(v.detach()) for k, v in self.terms.items()})
        return out


class LossInputError(ValueError):
    """Bad input to a loss: wrong shape, dtype, device or option. The message names the argument."""


def _check_tensor(name: str, x: object, channels: int | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise LossInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise LossInputError(f"{name} must be N x C x H x W, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise LossInputError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise LossInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_images(img1: torch.Tensor, img2: torch.Tensor) -> None:
    """Raise ``backbones.InvalidImageError`` (a ``ValueError``; the one image validator of the project) unless
    img1, img2 are float N x 3 x H x W of equal shape and device."""
    validate_images(img1, img2, check_finite=False, check_range=False, names=("img1", "img2"))


def check_flow(name: str, flow: torch.Tensor, like: torch.Tensor | None = None,
               same_size: bool = True) -> None:
    """Raise ``LossInputError`` unless ``flow`` is float N x 2 x H x W (matching ``like``'s N, H, W)."""
    _check_tensor(name, flow, 2)
    if like is not None:
        if flow.shape[0] != like.shape[0]:
            raise LossInputError(f"{name} has batch size {flow.shape[0]}, the images have {like.shape[0]}")
        if same_size and flow.shape[-2:] != like.shape[-2:]:
            raise LossInputError(f"{name} is {tuple(flow.shape[-2:])} (H, W) but the images are "
                                 f"{tuple(like.shape[-2:])}: pass full-resolution flows")
        if flow.device != like.device:
            raise LossInputError(f"{name} is on {flow.device}, the images on {like.device}")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 -> float32; float32 and float64 are kept (float64 for gradcheck)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@contextlib.contextmanager
def float32_region(device: torch.device) -> Iterator[None]:
    """Turn autocast off inside a loss: photometric and smoothness terms lose precision in half."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def masked_mean(error: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mean(error * mask) / (mean(mask) + eps)`` (ARFlow's normalisation by the mask mean).

    error: N x C x H x W; mask: N x 1 x H x W (broadcast over C) or None (plain mean). Batch-global, as in
    the releases. An all-zero mask gives 0 (not NaN).
    """
    if mask is None:
        return error.mean()
    return (error * mask).mean() / (mask.mean() + MASK_EPS)
