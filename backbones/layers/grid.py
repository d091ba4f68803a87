"""Pixel-coordinate grids and bilinear sampling in pixel units (RAFT conventions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["coords_grid", "bilinear_sampler"]


def coords_grid(n: int, h: int, w: int, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pixel coordinates of an ``h x w`` grid, repeated ``n`` times: N x 2 x H x W (channel 0 = x, 1 = y)."""
    dtype = dtype or torch.float32
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack((xs, ys), dim=0)[None].expand(n, 2, h, w).contiguous()


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
                     mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample ``img`` (N x C x H x W) at pixel coordinates ``coords`` (N x h x w x 2, x then y).

    Pixel centres sit at integer coordinates and points outside the image read zeros (``align_corners=True``
    semantics, as RAFT's sampler). Returns N x C x h x w, plus an in-image mask N x h x w x 1 when ``mask``.
    """
    h, w = img.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    if h > 1 and w > 1:
        # The official normalisation (bit-compatible with RAFT).
        grid = torch.cat([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
        out = F.grid_sample(img, grid, mode=mode, align_corners=True)
    else:
        # A 1-pixel side makes 2x/(W-1) divide by zero (the NaN flow of small inputs in the official code);
        # align_corners=False with this normalisation puts pixel centres on the same integer coordinates.
        grid = torch.cat([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
        out = F.grid_sample(img, grid, mode=mode, align_corners=False)
    if mask:
        inside = (x > 0) & (y > 0) & (x < w - 1) & (y < h - 1)
        return out, inside.to(img.dtype)
    return out
