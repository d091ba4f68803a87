"""Differentiable backward warping of images or features by a flow field."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from backbones.layers.grid import coords_grid  # the one pixel-grid helper, shared with the networks

from .common import LossInputError, check_flow

__all__ = ["coords_grid", "warp", "in_frame_mask"]

_PADDING = ("border", "zeros", "reflection")


def in_frame_mask(flow: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W float mask: 1 where ``x + flow(x)`` lands inside the frame [0, W-1] x [0, H-1].

    Not differentiable (a hard test); pixels whose flow leaves the frame sample padding, not image content.
    """
    n, _, h, w = flow.shape
    target = coords_grid(n, h, w, flow.device, flow.dtype) + flow
    inside = ((target[:, 0] >= 0) & (target[:, 0] <= w - 1)
              & (target[:, 1] >= 0) & (target[:, 1] <= h - 1))
    return inside[:, None].to(flow.dtype)


def warp(x: torch.Tensor, flow: torch.Tensor, padding: str = "border",
         mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp ``x`` by ``flow``: ``warped(p) = x(p + flow(p))``, bilinear, align_corners=True.

    x:    N x C x H x W image or feature map (any value range).
    flow: N x 2 x H x W, in pixels of x's resolution (channel 0 = x/u, 1 = y/v).
    padding: what is sampled outside the frame: "border" (replicate the edge, ARFlow/MLOF ``warp_pad``),
             "zeros" (UFlow/SMURF resampler) or "reflection".
    Returns (warped N x C x H x W, in_frame_mask N x 1 x H x W with 1 where p + flow(p) is inside).

    Twice differentiable in x and flow (usable inside second-order MAML); the normalisation to [-1, 1]
    uses (W-1), (H-1), the convention of ARFlow's ``flow_warp`` and of the MLOF release.
    """
    if padding not in _PADDING:
        raise LossInputError(f"padding must be one of {_PADDING}, got {padding!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise LossInputError(f"x must be an N x C x H x W tensor, got {getattr(x, 'shape', type(x))}")
    check_flow("flow", flow, x)
    n, _, h, w = x.shape
    target = coords_grid(n, h, w, flow.device, flow.dtype) + flow
    if padding != "reflection":
        # Beyond 2 px outside the frame nothing changes for border/zeros padding (value and gradient are
        # constant there); clamping keeps absurd flows (1e30 px) from turning into inf/NaN in grid_sample.
        tx = target[:, 0].clamp(-2.0, w + 1.0)
        ty = target[:, 1].clamp(-2.0, h + 1.0)
        target = torch.stack([tx, ty], dim=1)
    # A 1-pixel axis has no extent to normalise by; any finite scale maps it to the single row/column.
    gx = 2.0 * target[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * target[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    warped = F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding, align_corners=True)
    return warped, in_frame_mask(flow.detach())
