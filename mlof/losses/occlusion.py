"""Occlusion masks: forward-backward consistency (UnFlow) and range map / forward splatting (Wang et al.).

Convention: every ``occlusion_*`` function returns an OCCLUSION mask N x 1 x H x W, 1 = occluded, 0 = visible.
The photometric terms use its complement ``1 - occ`` (the non-occluded mask, ARFlow's ``occu_mask1``).
"""
from __future__ import annotations

import torch

from .common import LossInputError, check_flow
from .warp import coords_grid, warp

__all__ = ["splat", "range_map", "occlusion_range_map", "occlusion_fb", "reverse_flow"]


def splat(values: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Forward-splat ``values`` along ``flow`` with bilinear weights (differentiable in both).

    values: N x C x H x W; flow: N x 2 x H x W in pixels. Pixel p adds ``values(p) * w_k`` to the four
    integer neighbours of ``p + flow(p)`` (w_k its bilinear weights); neighbours outside the frame are
    dropped, so flows that leave the frame simply deposit nothing. Returns N x C x H x W sums.
    """
    check_flow("flow", flow, values)
    n, c, h, w = values.shape
    target = coords_grid(n, h, w, flow.device, flow.dtype) + flow
    x = target[:, 0].reshape(n, 1, -1)
    y = target[:, 1].reshape(n, 1, -1)
    # Far-away targets would overflow the integer index; anything beyond 2 px outside deposits nothing.
    x = x.clamp(-2.0, w + 1.0)
    y = y.clamp(-2.0, h + 1.0)
    x0 = torch.floor(x.detach())
    y0 = torch.floor(y.detach())
    fx = (x - x0).unsqueeze(2)  # N x 1 x 1 x HW
    fy = (y - y0).unsqueeze(2)
    # The four neighbours at once (N x 1 x 4 x HW): (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1).
    dx = flow.new_tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 4, 1)
    dy = flow.new_tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 4, 1)
    xi = x0.unsqueeze(2) + dx
    yi = y0.unsqueeze(2) + dy
    weight = (dx * fx + (1.0 - dx) * (1.0 - fx)) * (dy * fy + (1.0 - dy) * (1.0 - fy))
    inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    index = torch.where(inside, yi * w + xi, torch.zeros_like(xi)).long()
    weight = torch.where(inside, weight, torch.zeros_like(weight))
    deposits = values.reshape(n, c, 1, -1) * weight  # N x C x 4 x HW
    out = values.new_zeros(n, c, h * w).scatter_add(2, index.expand(n, c, 4, -1).reshape(n, c, -1),
                                                   deposits.reshape(n, c, -1))
    return out.reshape(n, c, h, w)


def range_map(flow_bw: torch.Tensor) -> torch.Tensor:
    """How often each pixel of frame 1 is reached by the backward flow (Wang et al. 2018): N x 1 x H x W.

    flow_bw: N x 2 x H x W backward flow (frame 2 -> frame 1). A pixel of frame 1 that no backward vector
    reaches (range ~ 0) is visible in frame 1 only: occluded in frame 2. Zero flow gives 1 everywhere.
    Same bilinear counting as ARFlow/MLOF ``get_corresponding_map`` and UFlow ``compute_range_map``.
    """
    check_flow("flow_bw", flow_bw)
    ones = flow_bw.new_ones(flow_bw.shape[0], 1, *flow_bw.shape[-2:])
    return splat(ones, flow_bw)


def occlusion_range_map(flow_bw: torch.Tensor, threshold: float | None = 0.2,
                        soft: bool = False) -> torch.Tensor:
    """Occlusion of frame-1 pixels from the range map of the backward flow: N x 1 x H x W, 1 = occluded.

    Hard (default, ARFlow/MLOF ``get_occu_mask_backward(flow21, th=0.2)``): ``clamp(range, 0, 1) < threshold``
    (no gradient). Soft (UFlow/SMURF ``occlusion_estimation='wang'``): ``1 - clamp(range, 0, 1)``,
    differentiable in the flow (detach it where the recipe stops the gradient).
    """
    rng = range_map(flow_bw).clamp(0.0, 1.0)
    if soft:
        return 1.0 - rng
    if threshold is None or not 0.0 < float(threshold) <= 1.0:
        raise LossInputError(f"threshold must be in (0, 1] for a hard range-map mask, got {threshold!r}")
    return (rng < threshold).to(flow_bw.dtype)


def occlusion_fb(flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha1: float = 0.01, alpha2: float = 0.5,
                 bw_is_warped: bool = False, norm: str = "squared") -> torch.Tensor:
    """Forward-backward consistency occlusion (UnFlow, Meister et al. 2018): N x 1 x H x W, 1 = occluded.

    flow_fw: N x 2 x H x W (frame 1 -> 2). flow_bw: the backward flow, raw (frame 2 -> 1, warped here into
    frame 1 with zero padding, as ARFlow's ``get_occu_mask_bidirection``) or already warped
    (``bw_is_warped=True``). With b = warped backward flow:
      norm="squared" (UnFlow/ARFlow/UFlow 'brox'): occluded if |f + b|^2 > alpha1 (|f|^2 + |b|^2) + alpha2,
                     UnFlow constants alpha1 = 0.01, alpha2 = 0.5;
      norm="length"  (UPFlow ``for_back_check``, there alpha1 = 0.1, alpha2 = 0.5):
                     occluded if |f + b| >= alpha1 (|f| + |b|) + alpha2.
    A hard test: no gradient flows through the mask.
    """
    check_flow("flow_fw", flow_fw)
    check_flow("flow_bw", flow_bw, flow_fw)
    if norm not in ("squared", "length"):
        raise LossInputError(f"norm must be 'squared' or 'length', got {norm!r}")
    with torch.no_grad():
        b = flow_bw if bw_is_warped else warp(flow_bw, flow_fw, padding="zeros")[0]
        diff_sq = ((flow_fw + b) ** 2).sum(1, keepdim=True)
        if norm == "squared":
            mag_sq = (flow_fw ** 2).sum(1, keepdim=True) + (b ** 2).sum(1, keepdim=True)
            occ = diff_sq > alpha1 * mag_sq + alpha2
        else:
            # Lengths compared without sqrt at the diff side would change the test; sqrt of a detached
            # value has no gradient to blow up at 0.
            mag = (flow_fw ** 2).sum(1, keepdim=True).sqrt() + (b ** 2).sum(1, keepdim=True).sqrt()
            occ = diff_sq.sqrt() >= alpha1 * mag + alpha2
    return occ.to(flow_fw.dtype)


def reverse_flow(flow_fw: torch.Tensor, min_weight: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate the backward flow from a forward flow by forward splatting ``-flow_fw`` into frame 2.

    Returns (flow_bw N x 2 x H x W, filled N x 1 x H x W). Where several frame-1 pixels land on the same
    frame-2 pixel their vectors are averaged by bilinear weight; frame-2 pixels that receive less than
    ``min_weight`` (disocclusions) get zero flow and ``filled = 0``. Useful to score bidirectional losses
    when only a forward ground truth exists, and for warm starts.
    """
    check_flow("flow_fw", flow_fw)
    ones = flow_fw.new_ones(flow_fw.shape[0], 1, *flow_fw.shape[-2:])
    summed = splat(torch.cat([-flow_fw, ones], dim=1), flow_fw)
    weight = summed[:, 2:]
    filled = weight > min_weight
    flow_bw = torch.where(filled, summed[:, :2] / weight.clamp_min(min_weight), torch.zeros_like(summed[:, :2]))
    return flow_bw, filled.to(flow_fw.dtype)
