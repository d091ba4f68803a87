"""Turning what users pass as frames into batched image tensors and consecutive pairs."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backbones.base import InvalidImageError, validate_image, warn_range

__all__ = ["as_frame", "as_pairs", "working_size", "resize_frame"]


def as_frame(frame: Any, name: str = "frame") -> torch.Tensor:
    """One frame as a float N x 3 x H x W tensor (values 0..255).

    Accepts a tensor 3 x H x W or N x 3 x H x W (float or uint8) or a numpy image H x W x 3 (as
    ``mlof.io.read_image`` returns) / 3 x H x W. Raises ``InvalidImageError`` (a ``ValueError``) naming ``name``
    otherwise (the checks after conversion are ``backbones.validate_image``).
    """
    if isinstance(frame, np.ndarray):
        if frame.ndim == 3 and frame.shape[-1] == 3 and frame.shape[0] != 3:
            frame = frame.transpose(2, 0, 1)
        frame = torch.from_numpy(np.ascontiguousarray(frame))
    if not isinstance(frame, torch.Tensor):
        raise InvalidImageError(f"{name} must be a torch.Tensor or numpy array, got {type(frame).__name__}")
    if frame.dim() == 3:
        frame = frame[None]
    if frame.dim() != 4 or frame.shape[1] != 3:
        raise InvalidImageError(f"{name} must be 3 x H x W or N x 3 x H x W, got shape {tuple(frame.shape)}")
    if not frame.is_floating_point():
        if frame.dtype == torch.bool or frame.is_complex():
            raise InvalidImageError(f"{name} must hold 0..255 intensities, got dtype {frame.dtype}")
        frame = frame.float()
    return validate_image(frame, name)


def as_pairs(frames: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive pairs (img1, img2), each N x 3 x H x W float, from:

    - a pair or list of frames (each 3 x H x W, 1 x 3 x H x W, N x 3 x H x W or a numpy H x W x 3 image);
    - a tensor T x 3 x H x W (T frames of one video) or N x T x 3 x H x W (N videos of T frames).
    T frames give T - 1 pairs. Raises ``ValueError`` naming the problem.
    """
    if isinstance(frames, torch.Tensor):
        if frames.dim() == 5:
            seq = [frames[:, t] for t in range(frames.shape[1])]
        elif frames.dim() == 4:
            seq = [frames[t] for t in range(frames.shape[0])]
        else:
            raise ValueError(f"frames as a tensor must be T x 3 x H x W or N x T x 3 x H x W, got shape "
                             f"{tuple(frames.shape)}")
    elif isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        seq = list(frames)
    else:
        raise ValueError(f"frames must be a pair, a list of frames or a tensor, got {type(frames).__name__}")
    if len(seq) < 2:
        raise ValueError(f"frames must hold at least 2 frames (one pair), got {len(seq)}")
    tensors = [as_frame(f, f"frames[{i}]") for i, f in enumerate(seq)]
    for i, t in enumerate(tensors[1:], 1):
        if t.shape != tensors[0].shape:
            raise InvalidImageError(f"frames[{i}] has shape {tuple(t.shape)}, frames[0] has {tuple(tensors[0].shape)}: "
                             f"all frames must have the same size")
    warn_range(*tensors)   # 0..1 or 0..65535 instead of 0..255: once per process
    return [(tensors[i], tensors[i + 1]) for i in range(len(tensors) - 1)]


def working_size(size: Sequence[int], max_pixels: int | None) -> tuple[int, int]:
    """The (H, W) that frames of ``size`` are adapted and predicted at: ``size`` itself when it has at most
    ``max_pixels`` pixels (or ``max_pixels`` is None), else ``size`` shrunk by one factor on both axes (aspect
    kept, sides rounded, at least 1) to about ``max_pixels``."""
    h, w = int(size[0]), int(size[1])
    if max_pixels is None or h * w <= max_pixels:
        return h, w
    factor = math.sqrt(max_pixels / (h * w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def resize_frame(frame: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """An N x 3 x H x W frame resized to ``size`` (H', W'): area averaging when shrinking (no aliasing),
    bilinear otherwise; the frame itself when already that size."""
    size = (int(size[0]), int(size[1]))
    if tuple(frame.shape[-2:]) == size:
        return frame
    if size[0] <= frame.shape[-2] and size[1] <= frame.shape[-1]:
        return F.interpolate(frame, size=size, mode="area")
    return F.interpolate(frame, size=size, mode="bilinear", align_corners=False)
