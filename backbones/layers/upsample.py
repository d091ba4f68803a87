"""Resampling flow fields: RAFT's learned convex upsampling and bilinear resizing with the vectors rescaled (the
one home of flow up/down-sampling: the networks and ``mlof.losses`` use these)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["convex_upsample", "upsample_flow", "resize_flow"]


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


def resize_flow(flow: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = True,
                scale: bool = True) -> torch.Tensor:
    """Bilinearly resize a flow field N x 2 x h x w to ``size`` (H, W); the input itself when already that size.

    With ``scale`` the vectors are rescaled to the new grid (u * W / w, v * H / h), as PWC-family code (UPFlow's
    ``upsample2d_flow_as``) does; without it the values are kept (for masks, or flows stored in
    resolution-independent units such as LiteFlowNet's /20).
    """
    h, w = flow.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=align_corners)
    if not scale:
        return out
    sx, sy = size[1] / w, size[0] / h
    if sx == sy:
        return out * sx
    return torch.cat((out[:, :1] * sx, out[:, 1:] * sy), dim=1)


def upsample_flow(flow: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Bilinear (align_corners=True) upsampling by ``factor``, values scaled by ``factor``: N x 2 x H x W ->
    N x 2 x factor*H x factor*W (RAFT's ``upflow8``)."""
    return resize_flow(flow, (factor * flow.shape[2], factor * flow.shape[3]))
