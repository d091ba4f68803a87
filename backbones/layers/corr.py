"""Correlation pyramids: the official dense all-pairs volume and a memory-bounded on-demand lookup.

Both are called with pixel coordinates ``coords`` (N x 2 x H x W, at 1/8 resolution, x then y) and return
N x (num_levels * (2r+1)^2) x H x W: for each level i, the correlation of every fmap1 pixel with the
(2r+1) x (2r+1) bilinearly sampled neighbourhood of ``coords / 2^i`` in fmap2 pooled i times, scaled by
1/sqrt(C). Channel order is the official one: within a level, channel ``a * (2r+1) + b`` holds the x-offset
``a - r`` and the y-offset ``b - r`` (RAFT stacks its meshgrid "transposed"; trained weights depend on it).

The dense volume costs about N * (H*W)^2 * 4 bytes * 4/3 for H x W feature maps at 1/8 resolution:
0.26 GiB for one 440x1024 pair (55x128 features), 5.6 GiB for one 1080x1920 pair (135x240). ``OnDemandCorrBlock`` stores only the pooled fmap2 pyramid and
computes the needed neighbourhoods at each lookup, in chunks of pixels, with a custom autograd function that
recomputes instead of storing the gathered features: memory grows linearly with the number of pixels.
Correlations are computed in float32 even under autocast, as the official mixed-precision path does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from backbones.layers.grid import bilinear_sampler

__all__ = ["CorrBlock", "OnDemandCorrBlock", "build_corr", "dense_corr_bytes", "CORR_KINDS",
           "DEFAULT_MEMORY_BUDGET"]

CORR_KINDS = ("dense", "ondemand", "auto")
DEFAULT_MEMORY_BUDGET = 2 * 1024 ** 3  # bytes of dense pyramid above which "auto" switches to on-demand
DEFAULT_CHUNK_BYTES = 64 * 1024 ** 2   # on-demand: bytes of gathered features per chunk of pixels


def _check_fmaps(fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int, radius: int) -> None:
    if fmap1.dim() != 4 or fmap1.shape != fmap2.shape:
        raise ValueError(f"fmap1 and fmap2 must be N x C x H x W of equal shape, got {tuple(fmap1.shape)} "
                         f"and {tuple(fmap2.shape)}")
    if num_levels < 1 or radius < 0:
        raise ValueError(f"num_levels must be >= 1 and radius >= 0, got {num_levels} and {radius}")
    h, w = fmap1.shape[-2:]
    need = 2 ** (num_levels - 1)
    if h < need or w < need:
        raise ValueError(f"feature maps of {h}x{w} are too small for a {num_levels}-level correlation pyramid "
                         f"(each side must be at least {need})")


def _offsets(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2r+1) x (2r+1) x 2 offsets, official order: [a, b] = (x offset a - r, y offset b - r)."""
    d = torch.linspace(-radius, radius, 2 * radius + 1, device=device, dtype=dtype)
    da, db = torch.meshgrid(d, d, indexing="ij")
    return torch.stack((da, db), dim=-1)


def dense_corr_bytes(fmap_shape: tuple[int, ...] | torch.Size, num_levels: int = 4) -> int:
    """Bytes of the float32 all-pairs pyramid for feature maps of ``fmap_shape`` (N x C x H x W)."""
    n, _, h, w = (int(s) for s in fmap_shape)
    total, h2, w2 = 0, h, w
    for _ in range(num_levels):
        total += n * h * w * h2 * w2 * 4
        h2, w2 = h2 // 2, w2 // 2
    return total


class CorrBlock:
    """Official RAFT all-pairs correlation pyramid (dense). fmap1, fmap2: N x C x H x W."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4):
        _check_fmaps(fmap1, fmap2, num_levels, radius)
        self.num_levels, self.radius = num_levels, radius
        with torch.autocast(device_type=fmap1.device.type, enabled=False):
            n, c, h, w = fmap1.shape
            f1 = fmap1.float().reshape(n, c, h * w)
            f2 = fmap2.float().reshape(n, c, h * w)
            corr = torch.matmul(f1.transpose(1, 2), f2) / math.sqrt(c)   # N x HW x HW
            corr = corr.reshape(n * h * w, 1, h, w)
            self.corr_pyramid = [corr]
            for _ in range(num_levels - 1):
                corr = F.avg_pool2d(corr, 2, stride=2)
                self.corr_pyramid.append(corr)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = self.radius
        with torch.autocast(device_type=coords.device.type, enabled=False):
            coords = coords.float().permute(0, 2, 3, 1)
            n, h, w, _ = coords.shape
            delta = _offsets(r, coords.device, coords.dtype).view(1, 2 * r + 1, 2 * r + 1, 2)
            out = []
            for i, corr in enumerate(self.corr_pyramid):
                centroid = coords.reshape(n * h * w, 1, 1, 2) / 2 ** i
                sampled = bilinear_sampler(corr, centroid + delta)       # NHW x 1 x (2r+1) x (2r+1)
                out.append(sampled.view(n, h, w, -1))
            return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


class _GatherDot(torch.autograd.Function):
    """out[n, p, k] = <f1[n, p], table[n, idx[n, p, k]]>, computed in chunks of pixels.

    f1: N x P x C; table: N x M x C (last row is zeros, used for out-of-image positions); idx: N x P x K
    int64 indices into the rows of ``table``. The backward pass recomputes the gathers chunk by chunk instead
    of storing the N x P x K x C gathered features, so memory stays O(N * (P * K + M * C)). The backward is
    written with differentiable ops, so second-order gradients (MAML) work too (without the memory bound).
    """

    @staticmethod
    def forward(ctx, f1: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(f1, table, idx)
        ctx.chunk = chunk
        return _gather_dot(f1, table, idx, chunk)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f1, table, idx = ctx.saved_tensors
        n, p, k = idx.shape
        c = f1.shape[-1]
        m = table.shape[1]
        flat_idx = idx + (torch.arange(n, device=idx.device) * m).view(n, 1, 1)
        flat_table = table.reshape(n * m, c)
        grad_f1 = grad_table = None
        g1, gt = [], torch.zeros_like(flat_table)
        for s in range(0, p, ctx.chunk):
            e = min(p, s + ctx.chunk)
            gi = grad[:, s:e]                                              # N x p x K
            if ctx.needs_input_grad[0]:
                g1.append((gi.unsqueeze(-2) @ flat_table[flat_idx[:, s:e]]).squeeze(-2))
            if ctx.needs_input_grad[1]:
                contrib = gi.unsqueeze(-1) * f1[:, s:e].unsqueeze(-2)      # N x p x K x C
                gt = gt.index_add(0, flat_idx[:, s:e].reshape(-1), contrib.reshape(-1, c))
        if ctx.needs_input_grad[0]:
            grad_f1 = torch.cat(g1, dim=1)
        if ctx.needs_input_grad[1]:
            grad_table = gt.view(n, m, c)
        return grad_f1, grad_table, None, None


def _gather_dot(f1: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, chunk: int) -> torch.Tensor:
    n, p, k = idx.shape
    m, c = table.shape[1:]
    flat_idx = idx + (torch.arange(n, device=idx.device) * m).view(n, 1, 1)
    flat_table = table.reshape(n * m, c)
    out = f1.new_empty(n, p, k)
    for s in range(0, p, chunk):
        e = min(p, s + chunk)
        gathered = flat_table[flat_idx[:, s:e]]                            # N x p x K x C
        out[:, s:e] = (gathered @ f1[:, s:e].unsqueeze(-1)).squeeze(-1)
    return out


class OnDemandCorrBlock:
    """Memory-bounded correlation: same call and result as :class:`CorrBlock`, no all-pairs volume.

    Correlation is linear in fmap2, so pooling the volume over fmap2's grid (official) equals correlating with
    the pooled fmap2; and bilinear sampling at integer offsets around one centre uses the same four weights
    for every offset. So each lookup gathers the (2r+2)^2 integer neighbours of ``floor(coords / 2^i)`` from
    the pooled fmap2, takes dot products with fmap1, and blends them with the bilinear weights.
    Differentiable in fmap1, fmap2 and coords. ``chunk_bytes`` bounds the gathered features held at once.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        _check_fmaps(fmap1, fmap2, num_levels, radius)
        self.num_levels, self.radius = num_levels, radius
        with torch.autocast(device_type=fmap1.device.type, enabled=False):
            n, c, h, w = fmap1.shape
            # 1/sqrt(C) folded into fmap1 once; N x HW x C rows for the per-pixel dot products.
            self.f1 = (fmap1.float() / math.sqrt(c)).flatten(2).transpose(1, 2)
            self.tables: list[tuple[torch.Tensor, int, int]] = []
            f2 = fmap2.float()
            for i in range(num_levels):
                if i > 0:
                    f2 = F.avg_pool2d(f2, 2, stride=2)
                h2, w2 = f2.shape[-2:]
                zero_row = f2.new_zeros(n, 1, c)
                self.tables.append((torch.cat([f2.flatten(2).transpose(1, 2), zero_row], dim=1), h2, w2))
        k = (2 * radius + 2) ** 2
        self.chunk = max(1, int(chunk_bytes) // max(1, n * k * c * 4))

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = self.radius
        side = 2 * r + 2
        with torch.autocast(device_type=coords.device.type, enabled=False):
            coords = coords.float()
            n, _, h, w = coords.shape
            if h * w != self.f1.shape[1]:
                raise ValueError(f"coords grid {h}x{w} does not match the feature maps "
                                 f"({self.f1.shape[1]} pixels)")
            ar = torch.arange(-r, r + 2, device=coords.device)
            out = []
            for i, (table, h2, w2) in enumerate(self.tables):
                c_l = coords / 2 ** i
                x, y = c_l[:, 0].reshape(n, -1), c_l[:, 1].reshape(n, -1)     # N x P
                x0, y0 = torch.floor(x), torch.floor(y)
                fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)    # bilinear weights, N x P x 1
                xi = x0.long().unsqueeze(-1) + ar                          # N x P x side  (x offsets)
                yi = y0.long().unsqueeze(-1) + ar                          # N x P x side  (y offsets)
                valid = (((xi >= 0) & (xi < w2)).unsqueeze(-1)
                         & ((yi >= 0) & (yi < h2)).unsqueeze(-2))          # N x P x side(x) x side(y)
                idx = yi.unsqueeze(-2) * w2 + xi.unsqueeze(-1)
                idx = torch.where(valid, idx, torch.full_like(idx, h2 * w2)).reshape(n, -1, side * side)
                g = _GatherDot.apply(self.f1, table, idx, self.chunk).view(n, -1, side, side)
                # g[..., a, b]: x offset a - r, y offset b - r (integer); blend the four corners.
                corr = ((1 - fx.unsqueeze(-1)) * (1 - fy.unsqueeze(-1)) * g[..., :-1, :-1]
                        + fx.unsqueeze(-1) * (1 - fy.unsqueeze(-1)) * g[..., 1:, :-1]
                        + (1 - fx.unsqueeze(-1)) * fy.unsqueeze(-1) * g[..., :-1, 1:]
                        + fx.unsqueeze(-1) * fy.unsqueeze(-1) * g[..., 1:, 1:])
                out.append(corr.reshape(n, h, w, -1))
            return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def build_corr(kind: str, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4,
               memory_budget: int = DEFAULT_MEMORY_BUDGET) -> CorrBlock | OnDemandCorrBlock:
    """Correlation block by kind: ``dense`` (official), ``ondemand`` (memory-bounded) or ``auto``
    (dense while the all-pairs pyramid fits ``memory_budget`` bytes, else on-demand)."""
    if kind not in CORR_KINDS:
        raise ValueError(f"corr must be one of {', '.join(CORR_KINDS)}, got {kind!r}")
    if kind == "auto":
        kind = "dense" if dense_corr_bytes(fmap1.shape, num_levels) <= memory_budget else "ondemand"
    cls = CorrBlock if kind == "dense" else OnDemandCorrBlock
    return cls(fmap1, fmap2, num_levels=num_levels, radius=radius)
