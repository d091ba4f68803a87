"""``mlof.losses.warp``: backward warping of images for the photometric losses, with the in-frame mask.

The warping itself is the networks' one implementation (``backbones.layers.grid.warp``); this adds the losses'
input checks (``LossInputError``), their default padding and the in-frame mask they need.
"""
from __future__ import annotations

import torch

from backbones.layers.grid import WARP_PADDINGS, coords_grid, in_frame_mask
from backbones.layers.grid import warp as backward_warp

from .common import LossInputError, check_flow

__all__ = ["coords_grid", "warp", "in_frame_mask"]


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
    if padding not in WARP_PADDINGS:
        raise LossInputError(f"padding must be one of {WARP_PADDINGS}, got {padding!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise LossInputError(f"x must be an N x C x H x W tensor, got {getattr(x, 'shape', type(x))}")
    check_flow("flow", flow, x)
    return backward_warp(x, flow, padding=padding, mode=mode), in_frame_mask(flow.detach())
