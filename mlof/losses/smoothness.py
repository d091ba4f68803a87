"""Edge-aware first- and second-order flow smoothness (ARFlow and UFlow/SMURF variants)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LossInputError
from .photometric import robust_l1

__all__ = ["edge_aware_smoothness", "downsample_image", "downsample_flow"]

_VARIANTS = ("arflow", "uflow", "upflow")
_WEIGHTINGS = ("exponential", "gaussian")


def _grad(x: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W (dx: N x C x H x W-s) and H (dy: N x C x H-s x W)."""
    return x[..., :, stride:] - x[..., :, :-stride], x[..., stride:, :] - x[..., :-stride, :]


def _edge_weight(g: torch.Tensor, edge_constant: float, weighting: str) -> torch.Tensor:
    """exp(-mean_c |c g|) ("exponential") or exp(-mean_c (c g)^2) ("gaussian") -> N x 1 x ..."""
    z = edge_constant * g
    z = z.abs() if weighting == "exponential" else z * z
    return torch.exp(-z.mean(1, keepdim=True))


def edge_aware_smoothness(flow: torch.Tensor, image: torch.Tensor, order: int = 2, edge_constant: float = 10.0,
                          variant: str = "arflow", weighting: str = "exponential") -> torch.Tensor:
    """Edge-aware smoothness of ``flow`` (N x 2 x H x W) guided by ``image`` (N x C x H x W, same H, W).

    variant="arflow" (ARFlow/MLOF ``smooth_grad_1st/2nd``): weights exp(-edge_constant * mean_c|dI|) from
      stride-1 image differences, penalty |.|; 1st order: (mean(wx|dx u|/2) + mean(wy|dy u|/2)) / 2 (the
      release's extra /2 kept), 2nd order: (mean(wx|dxx u|) + mean(wy|dyy u|)) / 2 with the weight of the
      second of the two differences.
    variant="upflow" (UPFlow ``edge_aware_smoothness_order1/2``): like "uflow" (stride-2 image differences
      for order 2) but penalty |.| and the x and y means SUMMED (no /2); UPFlow uses edge_constant 1.
    variant="uflow" (UFlow/SMURF ``first/second_order_smoothness_loss``): weights from stride-1 (1st order)
      or stride-2 (2nd order) image differences, ``weighting`` exponential or gaussian, penalty
      robust_l1 = sqrt(x^2 + 1e-6); mean of the x and y terms.
    edge_constant multiplies the image differences, so it depends on the image range: ARFlow/MLOF use 10
    (ARFlow on 0..1 images; MLOF feeds 0..255, which turns the weight off nearly everywhere but on flat
    areas), UFlow/SMURF 150 on 0..1 images. Returns a scalar.
    """
    if variant not in _VARIANTS:
        raise LossInputError(f"variant must be one of {_VARIANTS}, got {variant!r}")
    if weighting not in _WEIGHTINGS:
        raise LossInputError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    if order not in (1, 2):
        raise LossInputError(f"order must be 1 or 2, got {order!r}")
    if flow.shape[-2:] != image.shape[-2:]:
        raise LossInputError(f"flow {tuple(flow.shape[-2:])} and image {tuple(image.shape[-2:])} must have the "
                             f"same H, W for the smoothness term")
    if min(flow.shape[-2:]) < order + 1:
        raise LossInputError(f"flow of size {tuple(flow.shape[-2:])} is too small for order-{order} smoothness")
    fdx, fdy = _grad(flow)
    if variant == "arflow":
        if weighting != "exponential":
            raise LossInputError("variant 'arflow' uses exponential edge weighting only")
        idx, idy = _grad(image)
        wx = _edge_weight(idx, edge_constant, weighting)
        wy = _edge_weight(idy, edge_constant, weighting)
        if order == 1:
            return (wx * fdx.abs() / 2.0).mean() / 2.0 + (wy * fdy.abs() / 2.0).mean() / 2.0
        dxx = _grad(fdx)[0]
        dyy = _grad(fdy)[1]
        return (wx[..., :, 1:] * dxx.abs()).mean() / 2.0 + (wy[..., 1:, :] * dyy.abs()).mean() / 2.0
    idx, idy = _grad(image, stride=order)
    wx = _edge_weight(idx, edge_constant, weighting)
    wy = _edge_weight(idy, edge_constant, weighting)
    if order == 2:
        fdx, fdy = _grad(fdx)[0], _grad(fdy)[1]
    if variant == "upflow":
        return (wx * fdx.abs()).mean() + (wy * fdy.abs()).mean()
    return ((wx * robust_l1(fdx)).mean() + (wy * robust_l1(fdy)).mean()) / 2.0


def downsample_image(image: torch.Tensor, levels: int) -> torch.Tensor:
    """Halve H and W ``levels`` times with bilinear resizing (UFlow/SMURF: "resize multiple times")."""
    for _ in range(levels):
        h, w = image.shape[-2:]
        image = F.interpolate(image, size=(max(h // 2, 1), max(w // 2, 1)), mode="bilinear", align_corners=False)
    return image


def downsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resize a flow to ``size`` = (h, w) and rescale its vectors to the new pixel units."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="area") if (h, w) != tuple(size) else flow
    scale = flow.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)
    return out * scale
