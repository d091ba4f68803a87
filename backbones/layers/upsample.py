"""Full-resolution flow from the coarse flow: RAFT's learned convex upsampling and plain bilinear upsampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["convex_upsample", "upsample_flow"]


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Convex combination upsampling (RAFT).

    flow: N x 2 x H x W coarse flow (pixels of the coarse grid); mask: N x (9 * factor^2) x H x W logits,
    softmax-normalised over the 3x3 coarse neighbourhood. Returns N x 2 x (factor*H) x (factor*W) in full-res pixels.
    """
    n, _, h, w = flow.shape
    if mask.shape != (n, 9 * factor * factor, h, w):
        raise ValueError(f"mask must be {n} x {9 * factor * factor} x {h} x {w} for factor {factor}, "
                         f"got {tuple(mask.shape)}")
    mask = torch.softmax(mask.view(n, 1, 9, factor, factor, h, w), dim=2)
    up = F.unfold(factor * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
    up = torch.sum(mask * up, dim=2)                       # N x 2 x factor x factor x H x W
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, factor * h, factor * w)


def upsample_flow(flow: torch.Tensor, factor: int = 8, mode: str = "bilinear") -> torch.Tensor:
    """Bilinear (align_corners=True) upsampling by ``factor``, values scaled by ``factor``: N x 2 x H x W ->
    N x 2 x factor*H x factor*W (RAFT's ``upflow8``)."""
    size = (factor * flow.shape[2], factor * flow.shape[3])
    return factor * F.interpolate(flow, size=size, mode=mode, align_corners=True)
