"""Photometric error functions.

Each returns a per-pixel error map, or, given ``mask`` (N x 1 x H x W, 1 = count the pixel), the masked
mean ``mean(err * mask) / (mean(mask) + eps)`` (normalised by the mask mean, ARFlow style; 0 for an empty
mask). Images may be in 0..255 or 0..1: each function says which constants depend on it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .common import LossInputError, masked_mean

__all__ = ["l1", "charbonnier", "abs_robust", "robust_l1", "ssim_3x3", "rgb_to_gray", "census_transform",
           "soft_hamming", "census_distance", "census", "census_border_mask", "ternary"]


def _reduce(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return err if mask is None else masked_mean(err, mask)


def l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """|a - b| per pixel and channel (N x C x H x W), or its masked mean. Subgradient 0 at a == b."""
    return _reduce((a - b).abs(), mask)


def charbonnier(x: torch.Tensor, alpha: float = 0.45, eps: float = 1e-3,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised Charbonnier ``(x^2 + eps^2)^alpha`` of a difference x (UnFlow: 0.45, 1e-3); smooth at 0."""
    return _reduce((x * x + eps * eps) ** alpha, mask)


def abs_robust(x: torch.Tensor, eps: float = 0.01, q: float = 0.4) -> torch.Tensor:
    """DDFlow's robust penalty ``(|x| + eps)^q`` (UFlow/SMURF census distance, UPFlow photo loss)."""
    return (x.abs() + eps) ** q


def robust_l1(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """UFlow/SMURF ``robust_l1``: ``sqrt(x^2 + eps^2)`` (eps 0.001), smooth at 0."""
    return (x * x + eps * eps).sqrt()


def ssim_3x3(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01 ** 2, c2: float = 0.03 ** 2,
             mask: torch.Tensor | None = None, precision: str = "native") -> torch.Tensor:
    """SSIM dissimilarity ``clamp((1 - SSIM) / 2, 0, 1)`` over 3x3 windows, as ARFlow's ``SSIM`` (N x C x H x W).

    Exactly the release's arithmetic: windows averaged with zero padding counted in (``AvgPool2d(3, 1, 1)``),
    variances as ``E[x^2] - E[x]^2``. c1, c2 are the usual constants for images in 0..1; with 0..255 images
    (the MLOF release quirk) they become negligible and ``E[x^2] - E[x]^2`` cancels catastrophically in
    float32 on flat regions. A window that a mask has set entirely to zero gives exactly 0, as in the release.
    precision: "native" (the input dtype, the release) or "float64" (computed in double, cast back: the
    corrected variant for 0..255 images; differentiable like the native path).
    """
    if x.shape != y.shape:
        raise LossInputError(f"ssim_3x3 needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if precision not in ("native", "float64"):
        raise LossInputError(f"precision must be 'native' or 'float64', got {precision!r}")
    dtype = x.dtype
    if precision == "float64":
        x, y = x.double(), y.double()
    mu_x = F.avg_pool2d(x, 3, 1, 1)
    mu_y = F.avg_pool2d(y, 3, 1, 1)
    mu_xy = mu_x * mu_y
    mu_x_sq = mu_x.pow(2)
    mu_y_sq = mu_y.pow(2)
    sigma_x = F.avg_pool2d(x * x, 3, 1, 1) - mu_x_sq
    sigma_y = F.avg_pool2d(y * y, 3, 1, 1) - mu_y_sq
    sigma_xy = F.avg_pool2d(x * y, 3, 1, 1) - mu_xy
    num = (2 * mu_xy + c1) * (2 * sigma_xy + c2)
    den = (mu_x_sq + mu_y_sq + c1) * (sigma_x + sigma_y + c2)
    dist = torch.clamp((1 - num / den) / 2, 0, 1).to(dtype)
    return _reduce(dist, mask)


def rgb_to_gray(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (0.2989, 0.5870, 0.1140) of an N x 3 x H x W image -> N x 1 x H x W (same range)."""
    if img.shape[1] != 3:
        raise LossInputError(f"rgb_to_gray needs N x 3 x H x W, got {tuple(img.shape)}")
    w = img.new_tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def _check_patch(patch: int) -> None:
    if patch < 3 or patch % 2 == 0:
        raise LossInputError(f"census patch must be an odd size >= 3, got {patch}")


def _soft_sign(diff: torch.Tensor) -> torch.Tensor:
    """The soft census code of an intensity difference (0..255 scale): ``d / sqrt(0.81 + d^2)`` (DDFlow / UnFlow)."""
    return diff / torch.sqrt(0.81 + diff * diff)


def _soft_mismatch(t1: torch.Tensor, t2: torch.Tensor, thresh: float) -> torch.Tensor:
    """Per-offset soft Hamming term of two soft census codes: ``d^2 / (thresh + d^2)``."""
    sq = (t1 - t2) ** 2
    return sq / (thresh + sq)


def census_transform(img: torch.Tensor, patch: int = 7, max_value: float = 255.0) -> torch.Tensor:
    """Soft census (ternary) transform: N x patch^2 x H x W of ``d / sqrt(0.81 + d^2)``.

    d = neighbour - centre of the gray image in 0..255 intensities (``img`` is rescaled by
    ``255 / max_value``: pass max_value=1 for 0..1 images); zero padding at the borders, whose pixels
    the census terms mask out. Constant 0.81 from DDFlow / UnFlow.
    """
    _check_patch(patch)
    gray = rgb_to_gray(img) * (255.0 / max_value)
    h, w = gray.shape[-2:]
    r = patch // 2
    padded = F.pad(gray, (r, r, r, r))
    # Shifted views instead of an identity-kernel convolution: O(patch^2) per pixel, not O(patch^4).
    neighbours = torch.cat([padded[..., dy:dy + h, dx:dx + w] for dy in range(patch) for dx in range(patch)], dim=1)
    return _soft_sign(neighbours - gray)


def soft_hamming(t1: torch.Tensor, t2: torch.Tensor, thresh: float = 0.1, reduce: str = "sum") -> torch.Tensor:
    """Soft Hamming distance ``sum_k (d^2 / (thresh + d^2))`` of two census transforms -> N x 1 x H x W.

    reduce="sum" (UFlow/SMURF) or "mean" (UnFlow/ARFlow ``TernaryLoss``: "instead of sum").
    """
    dist = _soft_mismatch(t1, t2, thresh)
    if reduce == "sum":
        return dist.sum(1, keepdim=True)
    if reduce == "mean":
        return dist.mean(1, keepdim=True)
    raise LossInputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def _census_rows(gray1: torch.Tensor, gray2: torch.Tensor, rows: range, patch: int, thresh: float) -> torch.Tensor:
    """Sum over the offsets of patch rows ``rows`` of the soft Hamming terms; gray* padded by patch // 2."""
    r = patch // 2
    h, w = gray1.shape[-2] - 2 * r, gray1.shape[-1] - 2 * r
    c1, c2 = gray1[..., r:r + h, r:r + w], gray2[..., r:r + h, r:r + w]
    total = None
    for dy in rows:
        for dx in range(patch):
            term = _soft_mismatch(_soft_sign(gray1[..., dy:dy + h, dx:dx + w] - c1),
                                  _soft_sign(gray2[..., dy:dy + h, dx:dx + w] - c2), thresh)
            total = term if total is None else total + term
    return total


def census_distance(img1: torch.Tensor, img2: torch.Tensor, patch: int = 7, max_value: float = 255.0,
                    thresh: float = 0.1, reduce: str = "sum") -> torch.Tensor:
    """``soft_hamming(census_transform(img1), census_transform(img2))`` -> N x 1 x H x W, without the
    N x patch^2 x H x W transforms: the offsets are accumulated one patch row at a time, and with gradients
    each row is recomputed during backward instead of stored. Memory stays a few H x W maps (the plain form
    kept about 16 patch^2-channel maps for backward: 6 GB for the SMURF loss of one 1080p pair); the value
    equals the plain form up to float rounding (summation order)."""
    _check_patch(patch)
    if reduce not in ("sum", "mean"):
        raise LossInputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    r = patch // 2
    gray1 = F.pad(rgb_to_gray(img1) * (255.0 / max_value), (r, r, r, r))
    gray2 = F.pad(rgb_to_gray(img2) * (255.0 / max_value), (r, r, r, r))
    grad = torch.is_grad_enabled() and (gray1.requires_grad or gray2.requires_grad)
    total = None
    for dy in range(patch):
        rows = range(dy, dy + 1)
        # non-reentrant: works with torch.autograd.grad and double backward (second-order MAML); a reentrant
        # checkpoint peaked lower (1.9 vs 2.5 GB for the SMURF loss at 1080p) but supports neither
        part = (checkpoint(_census_rows, gray1, gray2, rows, patch, thresh, use_reentrant=False) if grad
                else _census_rows(gray1, gray2, rows, patch, thresh))
        total = part if total is None else total + part
    return total / (patch * patch) if reduce == "mean" else total


def census_border_mask(like: torch.Tensor, patch: int) -> torch.Tensor:
    """N x 1 x H x W mask, 0 within patch//2 of the frame edge (UFlow ``zero_mask_border``), else 1."""
    n, _, h, w = like.shape
    margin = patch // 2
    mask = like.new_zeros(n, 1, h, w)
    if h > 2 * margin and w > 2 * margin:
        mask[:, :, margin:h - margin, margin:w - margin] = 1.0
    return mask


def census(img1: torch.Tensor, img2_warped: torch.Tensor, patch: int = 7, max_value: float = 255.0,
           thresh: float = 0.1, eps: float = 0.01, q: float = 0.4,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """UFlow/SMURF census loss: ``(soft_hamming_sum + 0.01)^0.4`` over a patch x patch census transform.

    Without mask: the per-pixel error N x 1 x H x W, zero within patch//2 of the border. With mask: its mean
    over ``mask * census_border_mask`` normalised by that mask's mean (UFlow's border handling).
    """
    hamming = census_distance(img1, img2_warped, patch, max_value, thresh=thresh, reduce="sum")
    border = census_border_mask(img1, patch)
    err = abs_robust(hamming, eps=eps, q=q)
    return err * border if mask is None else masked_mean(err, mask * border)


def ternary(img1: torch.Tensor, img2_warped: torch.Tensor, max_distance: int = 1,
            max_value: float = 255.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """UnFlow/ARFlow ``TernaryLoss``: mean soft Hamming over a (2d+1)^2 patch, borders zeroed; N x 1 x H x W."""
    patch = 2 * max_distance + 1
    dist = census_distance(img1, img2_warped, patch, max_value, thresh=0.1, reduce="mean")
    return _reduce(dist * census_border_mask(img1, patch), mask)
