"""Pixel-coordinate grids, bilinear sampling in pixel units (RAFT conventions) and backward warping by a flow:
the one ``warp`` of the project (the networks' feature warping and ``mlof.losses.warp``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["coords_grid", "aligns_corners", "normalized_grid", "bilinear_sampler", "warp", "in_frame_mask", "WARP_PADDINGS"]

WARP_PADDINGS = ("zeros", "border", "reflection")


def coords_grid(n: int, h: int, w: int, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pixel coordinates of an ``h x w`` grid, repeated ``n`` times: N x 2 x H x W (channel 0 = x, 1 = y)."""
    dtype = dtype or torch.float32
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack((xs, ys), dim=0)[None].expand(n, 2, h, w).contiguous()


def aligns_corners(h: int, w: int) -> bool:
    """The ``align_corners`` of ``normalized_grid`` on an ``h x w`` image (False where a side is 1 pixel)."""
    return h > 1 and w > 1


def normalized_grid(coords: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, bool]:
    """Pixel coordinates (N x h' x w' x 2, x then y) on an ``h x w`` image -> (``F.grid_sample`` grid,
    ``align_corners``) that put pixel centres at integer coordinates (see ``bilinear_sampler``)."""
    x, y = coords.split([1, 1], dim=-1)
    if aligns_corners(h, w):
        # The official normalisation (bit-compatible with RAFT).
        return torch.cat([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1), True
    # A 1-pixel side makes 2x/(W-1) divide by zero (the NaN flow of small inputs in the official code);
    # align_corners=False with this normalisation puts pixel centres on the same integer coordinates.
    return torch.cat([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1), False


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
                     mask: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample ``img`` (N x C x H x W) at pixel coordinates ``coords`` (N x h x w x 2, x then y).

    Pixel centres sit at integer coordinates and points outside the image read zeros (``align_corners=True``
    semantics, as RAFT's sampler). Returns N x C x h x w, plus an in-image mask N x h x w x 1 when ``mask``.
    """
    h, w = img.shape[-2:]
    grid, align_corners = normalized_grid(coords, h, w)
    out = F.grid_sample(img, grid, mode=mode, align_corners=align_corners)
    if mask:
        x, y = coords.split([1, 1], dim=-1)
        inside = (x > 0) & (y > 0) & (x < w - 1) & (y < h - 1)
        return out, inside.to(img.dtype)
    return out


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def in_frame_mask(flow: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W float mask: 1 where ``x + flow(x)`` lands inside the frame [0, W-1] x [0, H-1].

    Not differentiable (a hard test); pixels whose flow leaves the frame sample padding, not image content.
    """
    n, _, h, w = flow.shape
    target = coords_grid(n, h, w, flow.device, flow.dtype) + flow
    inside = ((target[:, 0] >= 0) & (target[:, 0] <= w - 1)
              & (target[:, 1] >= 0) & (target[:, 1] <= h - 1))
    return inside[:, None].to(flow.dtype)


def warp(x: torch.Tensor, flow: torch.Tensor, padding: str = "zeros", mode: str = "bilinear",
         mask_threshold: float | None = None, strict: bool = False) -> torch.Tensor:
    """Backward warp: ``out(p) = x(p + flow(p))`` by ``grid_sample`` (align_corners=True). Returns N x C x H x W.

    x: N x C x H x W image or feature map; flow: N x 2 x H x W in pixels of x's grid (x then y).
    padding: what is sampled outside the frame: "zeros" (the PWC networks, UFlow/SMURF), "border" (replicate the
    edge: ARFlow/MLOF ``warp_pad``) or "reflection".
    mask_threshold: if given, zero every output pixel whose bilinear weight over in-image pixels (the result of
    warping a tensor of ones) is below the threshold, as the official PWC-family layers do: UPFlow keeps
    ``ones_warped >= 1.0`` (``strict=False``), mmflow keeps ``ones_warped > 0.9999`` (``strict=True``). UPFlow's
    hard ``>= 1.0`` test sits on float rounding for ~1-2% of in-image pixels; the mask is computed with the same
    grid_sample call so it flips exactly as the official one does, and no gradient flows through it.

    The normalisation to [-1, 1] is the official one (``2 * (x + u) / max(W - 1, 1) - 1``; ARFlow's
    ``flow_warp``, the MLOF release, UPFlow, mmflow), so results are bit-compatible with them. Twice
    differentiable in x and flow (usable inside second-order MAML).
    """
    if x.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or x.shape[-2:] != flow.shape[-2:] \
            or x.shape[0] != flow.shape[0]:
        raise ValueError(f"warp needs x N x C x H x W and flow N x 2 x H x W on the same grid, got "
                         f"{tuple(x.shape)} and {tuple(flow.shape)}")
    if padding not in WARP_PADDINGS:
        raise ValueError(f"padding must be one of {WARP_PADDINGS}, got {padding!r}")
    n, _, h, w = flow.shape
    target = coords_grid(n, h, w, device=flow.device, dtype=flow.dtype) + flow
    if padding != "reflection":
        # Beyond 2 px outside the frame nothing changes for border/zeros padding (value and gradient are
        # constant there); clamping keeps absurd flows (1e30 px) from turning into inf/NaN in grid_sample.
        target = torch.stack([target[:, 0].clamp(-2.0, w + 1.0), target[:, 1].clamp(-2.0, h + 1.0)], dim=1)
    gx = 2.0 * target[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * target[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    if grid.dtype != x.dtype and not _autocast_enabled(x.device.type):
        grid = grid.to(x.dtype)   # under autocast grid_sample runs both in float32 itself: keep the grid's precision
    out = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=True)
    if mask_threshold is None:
        return out
    with torch.no_grad():
        ones = torch.ones_like(x[:, :1])
        weight = F.grid_sample(ones, grid.detach(), mode=mode, padding_mode=padding, align_corners=True)
        keep = weight > mask_threshold if strict else weight >= mask_threshold
    return out * keep.to(out.dtype)
