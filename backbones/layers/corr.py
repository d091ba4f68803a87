"""Correlation pyramids: the official dense all-pairs volume and a memory-bounded on-demand lookup.

Both are called with pixel coordinates ``coords`` (N x 2 x H x W, at 1/8 resolution, x then y) and return
N x (num_levels * (2r+1)^2) x H x W: for each level i, the correlation of every fmap1 pixel with the
(2r+1) x (2r+1) bilinearly sampled neighbourhood of ``coords / 2^i`` in fmap2 pooled i times, scaled by
1/sqrt(C). Channel order is the official one: within a level, channel ``a * (2r+1) + b`` holds the x-offset
``a - r`` and the y-offset ``b - r`` (RAFT stacks its meshgrid "transposed"; trained weights depend on it).

The dense volume costs about N * (H*W)^2 * 4 bytes * 4/3 for H x W feature maps at 1/8 resolution:
0.26 GiB for one 440x1024 pair (55x128 features), 5.6 GiB for one 1080x1920 pair (135x240).
``OnDemandCorrBlock`` stores only the pooled fmap2 pyramid and computes the needed neighbourhoods at each
lookup (``local_corr``), in chunks, with autograd functions that recompute instead of storing the gathered
features: memory grows linearly with the number of pixels.
Correlations are computed in float32 even under autocast, as the official mixed-precision path does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from backbones.layers.grid import aligns_corners, bilinear_sampler, normalized_grid
from backbones.layers.local_corr import TILE, local_correlation, tile_features
from backbones.layers.shared_grad import SharedGradient

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
    """Official RAFT all-pairs correlation pyramid (dense). fmap1, fmap2: N x C x H x W.

    ``bidirectional=True`` builds the block of both directions (batch 2N: fmap1 -> fmap2, then fmap2 -> fmap1)
    from one matrix product: the reverse volume is the transpose of the forward one.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4,
                 bidirectional: bool = False):
        _check_fmaps(fmap1, fmap2, num_levels, radius)
        self.num_levels, self.radius = num_levels, radius
        with torch.autocast(device_type=fmap1.device.type, enabled=False):
            n, c, h, w = fmap1.shape
            f1 = fmap1.float().reshape(n, c, h * w)
            f2 = fmap2.float().reshape(n, c, h * w)
            # in place: a second (HW)^2 buffer costs more in page faults than the division itself
            corr = torch.matmul(f1.transpose(1, 2), f2).div_(math.sqrt(c))   # N x HW x HW
            if bidirectional:
                corr = torch.cat([corr, corr.transpose(1, 2)])
                n = 2 * n
            corr = corr.reshape(n * h * w, 1, h, w)
            self.corr_pyramid = [corr]
            for _ in range(num_levels - 1):
                corr = F.avg_pool2d(corr, 2, stride=2)
                self.corr_pyramid.append(corr)
            # with gradients: each level's gradient from all lookups of the call in one scatter (_SharedLevel)
            self._shared = [_SharedLevel(level) if SharedGradient.usable(level) else None
                            for level in self.corr_pyramid]

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = self.radius
        with torch.autocast(device_type=coords.device.type, enabled=False):
            coords = coords.float().permute(0, 2, 3, 1)
            n, h, w, _ = coords.shape
            delta = _offsets(r, coords.device, coords.dtype).view(1, 2 * r + 1, 2 * r + 1, 2)
            out = []
            for i, corr in enumerate(self.corr_pyramid):
                centroid = coords.reshape(n * h * w, 1, 1, 2) / 2 ** i
                if self._shared[i] is not None:
                    sampled = self._shared[i].sample(centroid + delta)
                else:
                    sampled = bilinear_sampler(corr, centroid + delta)   # NHW x 1 x (2r+1) x (2r+1)
                out.append(sampled.view(n, h * w, -1).transpose(1, 2))
            # one copy: the concatenation writes channel-first directly
            return torch.cat(out, dim=1).view(n, -1, h, w)


_grid_backward = torch.ops.aten.grid_sampler_2d_backward   # (grad, input, grid, bilinear=0, zeros=0, align, mask)


class _SharedLevel(SharedGradient):
    """One level of the dense pyramid (NHW x 1 x h x w) read by every iteration's lookup. Plain autograd gives
    each lookup a zero-filled level-sized gradient (66 MB per lookup for a 288x640 pair in both directions) and
    adds them up; here one ``grid_sample`` backward scatters all lookups of the call at once, their windows
    stacked along the output rows. Same values up to float summation order (``SharedGradient``)."""

    def __init__(self, level: torch.Tensor):
        align = aligns_corners(*level.shape[-2:])

        def combine(items: list) -> torch.Tensor:
            grads = torch.cat([g for g, _ in items], dim=2)
            grids = torch.cat([grid for _, grid in items], dim=1)
            return _grid_backward(grads, level, grids, 0, 0, align, [True, False])[0]

        def grad_grid(grad, level_, grid, needs):
            return (_grid_backward(grad, level_, grid, 0, 0, align, [False, True])[1] if needs[0] else None,)

        super().__init__(level, forward_fn=lambda lv, grid: F.grid_sample(lv, grid, mode="bilinear",
                                                                          align_corners=align),
                         combine=combine, grad_inputs=grad_grid)

    def sample(self, coords: torch.Tensor) -> torch.Tensor:
        """``bilinear_sampler(level, coords)``: pixel coordinates NHW x h' x w' x 2 -> NHW x 1 x h' x w'."""
        h, w = self.tensor.shape[-2:]
        grid, _ = normalized_grid(coords, h, w)
        return self.read(grid)


class OnDemandCorrBlock:
    """Memory-bounded correlation: same call and result as :class:`CorrBlock`, no all-pairs volume.

    Correlation is linear in fmap2, so pooling the volume over fmap2's grid (official) equals correlating with
    the pooled fmap2; and bilinear sampling at integer offsets around one centre uses the same four weights
    for every offset. So each lookup gathers the (2r+2)^2 integer neighbours of ``floor(coords / 2^i)`` from
    the pooled fmap2, takes dot products with fmap1 (``local_correlation``: tiles of pixels against the
    bounding box of their windows), and blends them with the bilinear weights.
    Differentiable in fmap1, fmap2 and coords. ``chunk_bytes`` bounds the gathered features held at once;
    ``tile`` (pixels per tile side) and ``max_spread`` (largest window-origin spread inside a tile before its
    pixels take the per-pixel gather path; default 2 * tile - 1) tune speed only, never the result.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, tile: int = TILE, max_spread: int | None = None,
                 bidirectional: bool = False):
        _check_fmaps(fmap1, fmap2, num_levels, radius)
        if bidirectional:   # batch 2N: fmap1 -> fmap2, then fmap2 -> fmap1
            fmap1, fmap2 = torch.cat([fmap1, fmap2]), torch.cat([fmap2, fmap1])
        if int(chunk_bytes) <= 0 or int(tile) < 1:
            raise ValueError(f"chunk_bytes and tile must be positive, got {chunk_bytes} and {tile}")
        self.num_levels, self.radius = num_levels, radius
        self.chunk_bytes, self.tile, self.max_spread = int(chunk_bytes), int(tile), max_spread
        with torch.autocast(device_type=fmap1.device.type, enabled=False):
            n, c, h, w = fmap1.shape
            f1 = fmap1.float() / math.sqrt(c)  # 1/sqrt(C) folded into fmap1 once
            # fmap1 laid out once per call of the block, for both kernels (shared by every level/iteration,
            # so autograd stores it once)
            self.f1_tiles = tile_features(f1, self.tile)
            self.f1_rows = f1.permute(0, 2, 3, 1).reshape(n * h * w, c)
            self.shape = (n, h, w)
            # Per level: the pooled fmap2 as rows (batch after batch, each followed by a zero row that
            # out-of-image positions read), and its size.
            self.tables: list[tuple[torch.Tensor, int, int]] = []
            f2 = fmap2.float()
            for i in range(num_levels):
                if i > 0:
                    f2 = F.avg_pool2d(f2, 2, stride=2)
                h2, w2 = f2.shape[-2:]
                rows = torch.cat([f2.flatten(2).transpose(1, 2), f2.new_zeros(n, 1, c)], dim=1)
                self.tables.append((rows.reshape(n * (h2 * w2 + 1), c), h2, w2))

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = self.radius
        side = 2 * r + 2
        with torch.autocast(device_type=coords.device.type, enabled=False):
            coords = coords.float()
            n, _, h, w = coords.shape
            if (n, h, w) != self.shape:
                raise ValueError(f"coords of shape {tuple(coords.shape)} do not match the feature maps "
                                 f"(N, H, W) = {self.shape}")
            out = []
            for i, (table, h2, w2) in enumerate(self.tables):
                c_l = coords / 2 ** i
                x0, y0 = torch.floor(c_l[:, 0]), torch.floor(c_l[:, 1])
                fx = (c_l[:, 0] - x0)[..., None, None]                              # N x H x W x 1 x 1
                fy = (c_l[:, 1] - y0)[..., None, None]
                # g[..., a, b]: x offset a - r, y offset b - r around the floor (integer positions)
                g = local_correlation(self.f1_tiles, self.f1_rows, table, h2, w2, x0.long() - r, y0.long() - r, side,
                                      self.chunk_bytes, self.tile, self.max_spread)
                corr = ((1 - fx) * (1 - fy) * g[..., :-1, :-1] + fx * (1 - fy) * g[..., 1:, :-1]
                        + (1 - fx) * fy * g[..., :-1, 1:] + fx * fy * g[..., 1:, 1:])
                out.append(corr.reshape(n, h * w, -1).transpose(1, 2))
            return torch.cat(out, dim=1).view(n, -1, h, w)


def build_corr(kind: str, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4,
               memory_budget: int = DEFAULT_MEMORY_BUDGET, bidirectional: bool = False) -> CorrBlock | OnDemandCorrBlock:
    """Correlation block by kind: ``dense`` (official), ``ondemand`` (memory-bounded) or ``auto``
    (dense while the all-pairs pyramid fits ``memory_budget`` bytes, else on-demand). ``bidirectional``: the
    block of both directions (batch 2N)."""
    if kind not in CORR_KINDS:
        raise ValueError(f"corr must be one of {', '.join(CORR_KINDS)}, got {kind!r}")
    if kind == "auto":
        n, c, h, w = fmap1.shape
        shape = ((2 if bidirectional else 1) * n, c, h, w)
        kind = "dense" if dense_corr_bytes(shape, num_levels) <= memory_budget else "ondemand"
    cls = CorrBlock if kind == "dense" else OnDemandCorrBlock
    return cls(fmap1, fmap2, num_levels=num_levels, radius=radius, bidirectional=bidirectional)
