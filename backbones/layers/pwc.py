"""The local cost volume of the PWC-style pyramid networks (UPFlow, LiteFlowNet2). (Their feature warping is
``backbones.layers.grid.warp``, flow resizing ``backbones.layers.upsample.resize_flow``.)

Everything is pure torch, differentiable and device-agnostic; none of it needs the CUDA-only correlation
packages the official code bases ship.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cost_volume", "DENSE_CORRELATION_MAX_ELEMENTS"]


# Up to this many elements in the product tensor (N * C * H' * W' * D^2; 2^24 floats = 64 MB) the cost volume
# is one batched product in the official layout (bit-compatible with UPFlow's Corr_pyTorch, but its strided
# channel reduction is ~10x slower); above it, one displacement at a time (fast, memory-bounded).
DENSE_CORRELATION_MAX_ELEMENTS = 2 ** 24


def cost_volume(feat1: torch.Tensor, feat2: torch.Tensor, max_displacement: int, stride: int = 1,
                dilation_patch: int = 1, reduction: str = "sum",
                max_elements: int = DENSE_CORRELATION_MAX_ELEMENTS) -> torch.Tensor:
    """Local cost volume between two feature maps (FlowNet/PWC correlation, kernel size 1, zero padding).

    feat1, feat2: N x C x H x W.
    Output: N x D^2 x H' x W' with D = 2 * max_displacement + 1 and H' = ceil(H / stride); channel
    ``(dy + d) * D + (dx + d)`` (dy major, as the official CUDA ops and UPFlow's ``Corr_pyTorch``) holds
    ``reduce_c feat1[c, y*s, x*s] * feat2[c, y*s + dy*p, x*s + dx*p]`` for displacements
    ``dy, dx in [-d, d]`` scaled by ``p = dilation_patch``; positions outside feat2 read zero.
    reduction: ``"sum"`` over channels (mmcv ``Correlation``) or ``"mean"`` (UPFlow).
    Half-precision inputs are computed, and returned, in float32.

    Memory is bounded: while the product tensor has at most ``max_elements`` entries it is formed in one batch
    laid out as in UPFlow's official ``Corr_pyTorch``, so the channel reduction rounds exactly as there (this is
    what makes UPFlow's outputs bit-identical to the official ones at the reference sizes); above that the
    volume is built one displacement at a time (output plus one product map; several times faster). The two
    paths differ only in float rounding (~1e-7 relative).
    """
    if feat1.dim() != 4 or feat1.shape != feat2.shape:
        raise ValueError(f"feat1 and feat2 must be N x C x H x W of equal shape, got {tuple(feat1.shape)} "
                         f"and {tuple(feat2.shape)}")
    if max_displacement < 0 or stride < 1 or dilation_patch < 1:
        raise ValueError(f"need max_displacement >= 0, stride >= 1, dilation_patch >= 1; got "
                         f"{max_displacement}, {stride}, {dilation_patch}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if feat1.dtype in (torch.float16, torch.bfloat16):
        # Sums of products over up to ~200 channels overflow or lose most digits in half precision (mmflow and
        # RAFT also keep their correlation in float32 under autocast); the result stays float32.
        feat1, feat2 = feat1.float(), feat2.float()
    r = max_displacement * dilation_patch
    f1 = feat1[:, :, ::stride, ::stride]
    n, c, ho, wo = f1.shape
    f2 = F.pad(feat2, [r, r, r, r])
    span_h, span_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    reduce = torch.mean if reduction == "mean" else torch.sum
    offsets = [(r + dy * dilation_patch, r + dx * dilation_patch)
               for dy in range(-max_displacement, max_displacement + 1)
               for dx in range(-max_displacement, max_displacement + 1)]

    def shifted(y0: int, x0: int) -> torch.Tensor:
        return f2[:, :, y0:y0 + span_h:stride, x0:x0 + span_w:stride]

    if n * c * ho * wo * len(offsets) <= max_elements:
        # Same strides as Corr_pyTorch's operands (a D^2-innermost volume seen as N x D^2 x C x HW), so the
        # elementwise product gets the same memory layout and the channel reduction the same rounding.
        volume = torch.stack([shifted(y0, x0) for y0, x0 in offsets], dim=-1).view(n, c, ho * wo, -1)
        prod = volume.permute(0, 3, 1, 2) * f1.reshape(n, 1, c, ho * wo)
        return reduce(prod, dim=2).reshape(n, -1, ho, wo)
    return torch.stack([reduce(f1 * shifted(y0, x0), dim=1) for y0, x0 in offsets], dim=1)
