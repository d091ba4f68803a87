"""Local correlation kernels for the on-demand correlation (pure torch, differentiable, memory-bounded).

``local_correlation(f1, table, x0, y0, side, ...)`` returns, for every pixel p of fmap1, the dot products of
f1[p] with the ``side x side`` integer neighbourhood of fmap2 starting at (x0[p], y0[p]):

    G[n, y, x, a, b] = < f1[n, :, y, x], f2[n, :, y0 + b, x0 + a] >      (zero outside fmap2)

Two kernels compute it. The *tile* kernel groups 8 x 8 pixels, gathers the bounding box of their windows from
fmap2 once and computes tile x box dot products with one batched matrix product (dense BLAS work instead of
``side^2`` gathered vectors per pixel; ~10x faster on CPU). Tiles whose windows scatter too far (large flow
discontinuities inside the tile) fall back to the *gather* kernel, which gathers each pixel's window. Both are
autograd functions that recompute their gathers in backward instead of storing them, and work through chunks
of pixels/tiles, so memory stays O(pixels * side^2) whatever the image size. Their backward passes use
differentiable torch ops, so second-order gradients work (without the memory bound).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["local_correlation", "tile_features", "TILE"]

TILE = 8  # pixels per tile side


class _GatherDot(torch.autograd.Function):
    """out[q, k] = <f1[q], table[idx[q, k]]>. f1: Q x C, table: M x C, idx: Q x K (int64) -> Q x K."""

    @staticmethod
    def forward(ctx, f1: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(f1, table, idx)
        ctx.chunk = chunk
        out = f1.new_empty(idx.shape)
        for s in range(0, idx.shape[0], chunk):
            out[s:s + chunk] = (table[idx[s:s + chunk]] @ f1[s:s + chunk].unsqueeze(-1)).squeeze(-1)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f1, table, idx = ctx.saved_tensors
        grad_f1: list[torch.Tensor] = []
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for s in range(0, idx.shape[0], ctx.chunk):
            g, i = grad[s:s + ctx.chunk], idx[s:s + ctx.chunk]
            if ctx.needs_input_grad[0]:
                grad_f1.append((g.unsqueeze(-2) @ table[i]).squeeze(-2))
            if grad_table is not None:
                contrib = g.unsqueeze(-1) * f1[s:s + ctx.chunk].unsqueeze(-2)     # q x K x C
                grad_table = grad_table.index_add(0, i.reshape(-1), contrib.reshape(-1, table.shape[1]))
        return (torch.cat(grad_f1) if grad_f1 else None), grad_table, None, None


class _TileDot(torch.autograd.Function):
    """out[t, p, a*side + b] = <f1t[t, p], table[box[t, (ly[t, p] + b) * sx + lx[t, p] + a]]>.

    f1t: B x T2 x C (tile pixels), table: M x C, box: B x S (int64 rows of each tile's sy x sx bounding box),
    lx, ly: B x T2 (int64 window origin of each pixel inside its box) -> B x T2 x side^2. The window indices
    are rebuilt per chunk rather than stored (they would be 8 bytes x side^2 per pixel).
    """

    @staticmethod
    def forward(ctx, f1t: torch.Tensor, table: torch.Tensor, box: torch.Tensor, lx: torch.Tensor,
                ly: torch.Tensor, side: int, sx: int, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(f1t, table, box, lx, ly)
        ctx.side, ctx.sx, ctx.chunk = side, sx, chunk
        out = f1t.new_empty(*lx.shape, side * side)
        for s in range(0, box.shape[0], chunk):
            feats = table[box[s:s + chunk]]                                      # b x S x C
            dots = f1t[s:s + chunk] @ feats.transpose(1, 2)                     # b x T2 x S
            out[s:s + chunk] = dots.gather(2, _box_window(lx[s:s + chunk], ly[s:s + chunk], side, sx))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f1t, table, box, lx, ly = ctx.saved_tensors
        grad_f1: list[torch.Tensor] = []
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for s in range(0, box.shape[0], ctx.chunk):
            e = min(box.shape[0], s + ctx.chunk)
            feats = table[box[s:e]]                                              # b x S x C
            local = _box_window(lx[s:e], ly[s:e], ctx.side, ctx.sx)
            g = grad.new_zeros(e - s, lx.shape[1], box.shape[1]).scatter_add(2, local, grad[s:e])
            if ctx.needs_input_grad[0]:
                grad_f1.append(g @ feats)
            if grad_table is not None:
                grad_table = grad_table.index_add(0, box[s:e].reshape(-1),
                                                  (g.transpose(1, 2) @ f1t[s:e]).reshape(-1, table.shape[1]))
        return (torch.cat(grad_f1) if grad_f1 else None), grad_table, None, None, None, None, None, None


def _box_window(lx: torch.Tensor, ly: torch.Tensor, side: int, sx: int) -> torch.Tensor:
    """b x T2 window origins inside a box of width sx -> b x T2 x side^2 box positions, [a (x), b (y)] order."""
    ar = torch.arange(side, device=lx.device)
    return ((ly.unsqueeze(-1) + ar).unsqueeze(-2) * sx + (lx.unsqueeze(-1) + ar).unsqueeze(-1)).flatten(2)


def tile_features(f1: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """N x C x H x W -> (N * ceil(H/T) * ceil(W/T)) x T^2 x C: pixels grouped by tile (zero-padded edges)."""
    n, c, h, w = f1.shape
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile
    x = F.pad(f1, (0, wp - w, 0, hp - h)).permute(0, 2, 3, 1)
    x = x.reshape(n, hp // tile, tile, wp // tile, tile, c).transpose(2, 3)
    return x.reshape(-1, tile * tile, c)


def _window_index(x0: torch.Tensor, y0: torch.Tensor, side: int, h2: int, w2: int, base: torch.Tensor,
                  zero_row: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` for each pixel's window, Q x side*side in [a (x), b (y)] order; zero row outside."""
    ar = torch.arange(side, device=x0.device)
    xi = x0.unsqueeze(-1) + ar                                                   # Q x side
    yi = y0.unsqueeze(-1) + ar
    valid = ((xi >= 0) & (xi < w2)).unsqueeze(-1) & ((yi >= 0) & (yi < h2)).unsqueeze(-2)
    idx = base.unsqueeze(-1).unsqueeze(-1) + yi.unsqueeze(-2) * w2 + xi.unsqueeze(-1)
    return torch.where(valid, idx, zero_row.unsqueeze(-1).unsqueeze(-1)).reshape(x0.shape[0], side * side)


def local_correlation(f1_tiles: torch.Tensor, f1_rows: torch.Tensor, table: torch.Tensor, h2: int, w2: int,
                      x0: torch.Tensor, y0: torch.Tensor, side: int, chunk_bytes: int, tile: int = TILE,
                      max_spread: int | None = None) -> torch.Tensor:
    """Dot products of each fmap1 pixel with a side x side window of fmap2 (see module docstring).

    f1_tiles: ``tile_features(f1, tile)``; f1_rows: f1 as (N*H*W) x C rows; table: N*(h2*w2 + 1) x C, the
    rows of fmap2 (h2 x w2) of each batch item followed by a zero row; x0, y0: N x H x W int64 window
    origins (fmap2 pixels). Returns N x H x W x side x side, indexed [x offset, y offset].
    """
    n, h, w = x0.shape
    c = f1_rows.shape[1]
    rows = h2 * w2 + 1
    max_spread = 2 * tile - 1 if max_spread is None else max_spread
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile
    nty, ntx = hp // tile, wp // tile
    k = side * side
    device = x0.device

    # ---- tile kernel: tiles of T x T pixels (edge tiles padded with repeated coordinates, outputs dropped)
    def tiles(t: torch.Tensor) -> torch.Tensor:                                 # N x Hp x Wp -> B x T2
        return t.reshape(n, nty, tile, ntx, tile).transpose(2, 3).reshape(n * nty * ntx, tile * tile)

    rows_p = torch.arange(hp, device=device).clamp(max=h - 1)                  # replicate the edge pixels
    cols_p = torch.arange(wp, device=device).clamp(max=w - 1)
    x0t, y0t = tiles(x0[:, rows_p][:, :, cols_p]), tiles(y0[:, rows_p][:, :, cols_p])
    xmin, ymin = x0t.min(1).values, y0t.min(1).values
    lx, ly = x0t - xmin.unsqueeze(1), y0t - ymin.unsqueeze(1)                   # origins inside the box
    spread_x, spread_y = lx.max(1).values, ly.max(1).values
    ok = (spread_x <= max_spread) & (spread_y <= max_spread)
    out = None
    if bool(ok.any()):
        sx = int(spread_x[ok].max()) + side
        sy = int(spread_y[ok].max()) + side
        base = (torch.arange(n, device=device).repeat_interleave(nty * ntx) * rows).view(-1, 1, 1)
        bx = xmin.unsqueeze(-1) + torch.arange(sx, device=device)              # B x sx
        by = ymin.unsqueeze(-1) + torch.arange(sy, device=device)              # B x sy
        valid = ((bx >= 0) & (bx < w2)).unsqueeze(1) & ((by >= 0) & (by < h2)).unsqueeze(2)
        box = torch.where(valid, base + by.unsqueeze(2) * w2 + bx.unsqueeze(1), base + rows - 1)
        box = box.reshape(-1, sy * sx)
        keep = ok.unsqueeze(1)                                                  # far tiles: any in-box index
        lx, ly = torch.where(keep, lx, torch.zeros_like(lx)), torch.where(keep, ly, torch.zeros_like(ly))
        per_tile = 4 * (sy * sx * c + tile * tile * (sy * sx + 3 * k))
        dots = _TileDot.apply(f1_tiles, table, box, lx, ly, side, sx, max(1, chunk_bytes // per_tile))
        out = dots.view(n, nty, ntx, tile, tile, k).transpose(2, 3).reshape(n, hp, wp, k)[:, :h, :w]
        out = out.reshape(n * h * w, k)

    # ---- gather kernel for the pixels of tiles whose windows spread too far
    if not bool(ok.all()):
        far = (~ok).view(n, nty, 1, ntx, 1).expand(n, nty, tile, ntx, tile).reshape(n, hp, wp)[:, :h, :w]
        sel = far.reshape(-1).nonzero().squeeze(1)                              # flat pixel ids
        batch = torch.div(sel, h * w, rounding_mode="floor")
        idx = _window_index(x0.reshape(-1)[sel], y0.reshape(-1)[sel], side, h2, w2, batch * rows,
                            batch * rows + rows - 1)
        g = _GatherDot.apply(f1_rows[sel], table, idx, max(1, chunk_bytes // (4 * k * c)))
        out = g.new_zeros(n * h * w, k).index_put((sel,), g) if out is None else out.index_put((sel,), g)
    return out.view(n, h, w, side, side)
