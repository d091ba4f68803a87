"""ONNX export of the RAFT-family networks (RAFT, RAFT-small, GMA, KPA-Flow), both correlation backends.

    >>> from backbones.onnx import export_onnx
    >>> info = export_onnx(model, "raft_small.onnx", size=(256, 320), iters=12, corr="ondemand")

The graph takes ``image1``, ``image2`` (float32 N x 3 x H x W, RGB 0..255, the size given at export) and
returns ``flow`` (N x 2 x H x W, pixels) and ``flow_low`` (N x 2 x H'/8 x W'/8 on the padded grid). Shapes and
the iteration count are fixed at export: the padding amounts, the 1/8 grid and the correlation pyramid sizes
are computed in Python from the input size and traced as constants, so a graph is valid for one size (export
one per size; the batch size is fixed too). Needs opset >= 16 (``GridSample``).

Correlation: ``dense`` traces the official all-pairs pyramid as it is. The on-demand block's kernels (tiles
chosen from the data, chunk loops, autograd functions) cannot be traced, so ``ondemand`` exports
:class:`SampledCorrBlock`, the same mathematics with traceable ops: correlation is linear in fmap2, so
sampling the pooled volume bilinearly equals blending the dot products of fmap1 with the integer neighbours of
the pooled fmap2 (zeros outside the image in both). It never builds the all-pairs volume: memory per lookup
is N x H/8 x W/8 x (2r+2) x C floats, so large frames fit where the dense graph does not.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.raft import RAFTBase


__all__ = ["SampledCorrBlock", "ExportWrapper", "export_onnx", "EXPORTABLE", "MIN_OPSET"]

MIN_OPSET = 16
# networks whose graph traces to ONNX (RAFTBase subclasses without frame memory)
EXPORTABLE = ("raft", "raft_small", "gma", "kpaflow")


class SampledCorrBlock:
    """Correlation lookup equal to ``CorrBlock`` / ``OnDemandCorrBlock`` without the all-pairs volume, written
    with traceable ops only (Floor, Gather, MatMul, Where). fmap1, fmap2: N x C x H x W;
    ``__call__(coords N x 2 x H x W)`` -> N x (num_levels * (2r+1)^2) x H x W in the official channel order
    (x offset major, y offset minor).

    As ``OnDemandCorrBlock``: per level, the (2r+2)^2 integer neighbours of ``floor(coords / 2^i)`` in the pooled
    fmap2 are gathered (one column of 2r+2 at a time, so memory stays N*H*W*(2r+2)*C floats), dotted with
    fmap1 by a batched matrix product, and blended with the bilinear weights; positions outside the image read
    a zero row (the zero padding of the official sampler).
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4):
        self.num_levels, self.radius = num_levels, radius
        n, c, h, w = fmap1.shape
        # 1/sqrt(C) of the official volume folded into fmap1; rows of (N*H*W) x C x 1 for the matrix products
        self.f1 = (fmap1.float() / math.sqrt(c)).permute(0, 2, 3, 1).reshape(n * h * w, c, 1)
        self.tables: list[tuple[torch.Tensor, int, int]] = []
        f2 = fmap2.float()
        for i in range(num_levels):
            if i > 0:
                f2 = F.avg_pool2d(f2, 2, stride=2)
            h2, w2 = f2.shape[-2:]
            # batch after batch of h2*w2 rows, then one shared zero row that out-of-image positions read
            rows = f2.permute(0, 2, 3, 1).reshape(n * h2 * w2, c)
            self.tables.append((torch.cat([rows, rows.new_zeros(1, c)]), h2, w2))

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        r = self.radius
        side = 2 * r + 2
        n, _, h, w = coords.shape
        q = n * h * w
        xy = coords.float().permute(0, 2, 3, 1).reshape(q, 2)
        batch_of = torch.arange(n, device=coords.device).repeat_interleave(h * w)[:, None, None]   # Q x 1 x 1
        steps = torch.arange(side, device=coords.device)
        out = []
        for i, (table, h2, w2) in enumerate(self.tables):
            c_l = xy / 2 ** i
            x0, y0 = torch.floor(c_l[:, 0]), torch.floor(c_l[:, 1])
            fx, fy = (c_l[:, 0] - x0)[:, None, None], (c_l[:, 1] - y0)[:, None, None]      # Q x 1 x 1
            xs = (x0.long() - r)[:, None, None] + steps[None, :, None]                        # Q x a x 1
            ys = (y0.long() - r)[:, None, None] + steps[None, None, :]                        # Q x 1 x b
            inside = (xs >= 0) & (xs < w2) & (ys >= 0) & (ys < h2)                            # Q x a x b
            idx = torch.where(inside, batch_of * (h2 * w2) + ys * w2 + xs, n * h2 * w2)      # zero row outside
            # one column of 2r+2 neighbours at a time: memory Q x (2r+2) x C instead of Q x (2r+2)^2 x C
            columns = [torch.bmm(table[idx[:, a]], self.f1).squeeze(-1) for a in range(side)]   # Q x b each
            g = torch.stack(columns, dim=1)                                                   # Q x a x b
            corr = ((1 - fx) * (1 - fy) * g[:, :-1, :-1] + fx * (1 - fy) * g[:, 1:, :-1]
                    + (1 - fx) * fy * g[:, :-1, 1:] + fx * fy * g[:, 1:, 1:])
            out.append(corr.reshape(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


class ExportWrapper(nn.Module):
    """``forward(image1, image2) -> (flow, flow_low)`` of a RAFT-family network at a fixed iteration count."""

    def __init__(self, model: nn.Module, iters: int):
        super().__init__()
        self.model, self.iters = model, int(iters)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(image1, image2, iters=self.iters)
        return out.flow, out.flow_low


def _prepare(model: nn.Module, corr: str) -> nn.Module:
    """A copy of ``model`` in eval mode whose correlation is traceable (the caller's model is untouched)."""
    if not isinstance(model, RAFTBase) or not hasattr(model, "make_corr"):
        raise ValueError(f"{type(model).__name__} cannot be exported to ONNX (exportable: {', '.join(EXPORTABLE)})")
    if type(model).__name__.lower().startswith("memflow"):
        raise ValueError("memflow cannot be exported to ONNX: its memory of earlier frames is Python state "
                         "carried between calls (export RAFT/GMA, or run memflow in torch)")
    if corr not in ("dense", "ondemand"):
        raise ValueError(f"corr must be dense or ondemand, got {corr!r}")
    copied = copy.deepcopy(model).eval().float()
    for p in copied.parameters():
        p.requires_grad_(False)
    if hasattr(copied, "mixed_precision"):
        copied.mixed_precision = False
    if corr == "ondemand":
        def make_corr(fmap1: torch.Tensor, fmap2: torch.Tensor) -> SampledCorrBlock:
            return SampledCorrBlock(fmap1, fmap2, num_levels=copied.corr_levels, radius=copied.corr_radius)
        copied.make_corr = make_corr  # instance attribute: shadows the class method on this copy only
    else:
        copied.corr = "dense"
    return copied


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (256, 320), iters: int = 12,
                corr: str = "dense", opset: int = 17, batch: int = 1) -> dict[str, Any]:
    """Write ``model`` as an ONNX graph for ``batch`` x 3 x ``size`` inputs and ``iters`` iterations.

    The file is written to a temporary name and renamed (never a half-written .onnx). Returns
    ``{"path", "size", "iters", "corr", "opset", "batch", "inputs", "outputs", "bytes"}``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (GridSample), got {opset}")
    h, w = (int(s) for s in size)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    net = ExportWrapper(_prepare(model, corr), iters).eval()
    minimum = getattr(net.model, "min_input_size", 1)
    if min(h, w) < minimum:
        raise ValueError(f"size {h}x{w} is below the network's minimum of {minimum} px per side")
    gen = torch.Generator().manual_seed(0)
    example = (torch.rand(batch, 3, h, w, generator=gen) * 255, torch.rand(batch, 3, h, w, generator=gen) * 255)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python ints: the shapes are fixed by design
            torch.onnx.export(net, example, tmp, dynamo=False, opset_version=opset,
                              input_names=["image1", "image2"], output_names=["flow", "flow_low"],
                              do_constant_folding=True)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    # the coarse flow lives on the padded grid (a multiple of 8 and >= 128 px per side, RAFTBase.padder)
    padder = net.model.padder((batch, 3, h, w)) if hasattr(net.model, "padder") else None
    left, right, top, bottom = padder.pad if padder is not None else (0, -w % 8, 0, -h % 8)
    low = [(h + top + bottom) // 8, (w + left + right) // 8]
    return {"path": str(path), "size": [h, w], "iters": iters, "corr": corr, "opset": opset, "batch": batch,
            "inputs": {"image1": [batch, 3, h, w], "image2": [batch, 3, h, w]},
            "outputs": {"flow": [batch, 2, h, w], "flow_low": [batch, 2, *low]},
            "bytes": path.stat().st_size}


def torch_reference(model: nn.Module, image1: torch.Tensor, image2: torch.Tensor, iters: int,
                    corr: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the exported graph must reproduce: the network itself (its own ``corr`` backend), eval mode."""
    m = copy.deepcopy(model).eval().float()
    m.corr = corr
    with torch.no_grad():
        out = m(image1, image2, iters=iters)
    return out.flow, out.flow_low
