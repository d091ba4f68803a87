"""KPA-Flow (Luo et al., CVPR 2022): RAFT with kernel patch attention.

Official layout (megvii-research/KPAFlow ``core/KPAFlow.py``, ``module.py``): RAFT encoders and correlation;
``trans`` (patch attention, sc 13) refines both feature maps before the correlation volume; the update block
(``KPAFlowDec``) encodes motion (``C_cor``, ``C_flo``, ``C_mo``), aggregates it with kernel patch attention
(``kpa``, patch 19, or 15 with ``dataset="kitti"``: the official ``--dataset`` switch) and feeds
[context, motion, aggregated motion] (384 channels) to a SepConvGRU; ``C_flow`` / ``C_mask`` give the flow
update and the convex-upsampling mask. The attention weights depend only on the context features, so they are
computed once per pair (the official code computes them at iteration 0 and caches them on the module).

Kernel patch attention: the 1/8 feature map is cut into non-overlapping ``sc x sc`` patches; every pixel of a
patch attends to the ``3sc x 3sc`` window centred on its patch (the patch and its 8 neighbours). Positions
outside the image take part with a -99 logit offset, as official. Attention weights are N x P x K x S
(P patches, K = (3 sc)^2 keys, S = sc^2 queries per patch): about 1.2 M floats per patch at sc 19.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.checkpointing import checkpoint_call
from backbones.layers.encoders import BasicEncoder
from backbones.layers.update import GateContext, SepConvGRU, corr_planes, gru_input
from backbones.raft import Context, RAFTBase
from backbones.registry import register

__all__ = ["KPAFlow", "KPAFlowUpdateBlock", "KernelPatchAttention", "PatchAttention", "PatchGrid", "KPA_WINDOW"]

# KPA patch size of the update block per official ``--dataset`` setting; the encoder-side patch size is 13.
KPA_WINDOW = {"sintel": 19, "kitti": 15}
ENCODER_WINDOW = 13

# logit offset of keys/queries that fall outside the image (the official constant, not -inf)
_OUTSIDE = 99.0


class PatchGrid:
    """Geometry of the patch partition of an ``h x w`` map with patch size ``sc``.

    The map is padded at the right/bottom by ``sc - size % sc`` (a whole extra patch when the size is
    already a multiple: the official arithmetic, kept so that padding masks agree exactly).
    """

    def __init__(self, h: int, w: int, sc: int):
        self.sc, self.h, self.w = sc, h, w
        self.pad_w, self.pad_h = sc - w % sc, sc - h % sc
        self.hp, self.wp = h + self.pad_h, w + self.pad_w
        self.rows, self.cols = self.hp // sc, self.wp // sc

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x h x w -> N x C x hp x wp, zero-padded right/bottom."""
        return F.pad(x, (0, self.pad_w, 0, self.pad_h))

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Padded N x C x hp x wp -> N x P x C x K: the 3sc x 3sc window around each patch (zeros outside)."""
        n, c = x.shape[:2]
        sc = self.sc
        win = F.unfold(x, kernel_size=3 * sc, padding=sc, stride=sc)  # N x (C*K) x P
        # contiguous per patch: batched matmuls over strided matrices fall back to a slow per-matrix path
        return win.view(n, c, 9 * sc * sc, self.num_patches).permute(0, 3, 1, 2).contiguous()

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Padded N x C x hp x wp -> N x P x C x S: the pixels of each patch."""
        n, c = x.shape[:2]
        sc = self.sc
        q = x.view(n, c, self.rows, sc, self.cols, sc).permute(0, 2, 4, 1, 3, 5)
        return q.reshape(n, self.num_patches, c, sc * sc)

    def fold(self, y: torch.Tensor) -> torch.Tensor:
        """N x P x C x S -> N x C x h x w (inverse of :meth:`queries`, cropped to the unpadded size)."""
        n, _, c, _ = y.shape
        sc = self.sc
        y = y.view(n, self.rows, self.cols, c, sc, sc).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(n, c, self.hp, self.wp)[:, :, :self.h, :self.w]

    def outside_offset(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """P x K x S logit offset: 0 where key and query are both inside the image, -99 otherwise."""
        inside = self.pad(torch.ones(1, 1, self.h, self.w, device=device, dtype=dtype))
        both = self.keys(inside)[0, :, 0, :, None] * self.queries(inside)[0, :, 0, None, :]
        return (both - 1.0) * _OUTSIDE


def _patch_logits(qk: nn.Conv2d, x: torch.Tensor, grid: PatchGrid, scale: float) -> torch.Tensor:
    """Scaled dot products of queries with their window keys plus the outside offset: N x P x K x S."""
    q, k = qk(grid.pad(x)).chunk(2, dim=1)
    keys = grid.keys(k) * scale                                      # N x P x C x K
    logits = keys.transpose(-1, -2) @ grid.queries(q)                # N x P x K x S
    return logits + grid.outside_offset(x.device, logits.dtype)


def _aggregate(attn: torch.Tensor, v: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """attn N x P x K x S (softmax over K), values padded N x C x hp x wp -> N x C x h x w."""
    return grid.fold(grid.keys(v) @ attn)


class _PatchProjections(nn.Module):
    """What both patch attentions of KPA-Flow hold: patch size ``sc``, 1/sqrt(dim), the query/key and value
    1x1 projections and the residual gate ``gamma`` (zero at initialisation), with the official names."""

    def __init__(self, dim: int, sc: int):
        super().__init__()
        self.sc = sc
        self.scale = dim ** -0.5
        self.to_qk = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.to_v = nn.Conv2d(dim, dim, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))


class PatchAttention(_PatchProjections):
    """Patch self-attention on a feature map (official ``KPAEnc``); ``forward(x) -> x + gamma * attn(x)``.

    x: N x dim x H x W -> N x dim x H x W.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = PatchGrid(x.shape[-2], x.shape[-1], self.sc)
        attn = _patch_logits(self.to_qk, x, grid, self.scale).softmax(dim=2)
        return x + self.gamma * _aggregate(attn, self.to_v(grid.pad(x)), grid)


class KernelPatchAttention(_PatchProjections):
    """Kernel patch attention of the update block (official ``KPA``).

    ``weights(context)`` computes the attention (N x P x K x S) from the context features once per pair;
    ``forward(weights, motion)`` returns ``motion + gamma * aggregate(motion)`` (N x dim x H x W).
    The spatial kernel is ``max(0, 1 - prelu(|d| - 2 sc, 0.02 w))`` per axis (d the key-query offset in
    pixels), multiplied over x and y; ``w`` (``w_prelu``) is learned, initialised to 1 / ((3 sc - 1) / 2).
    """

    # the official slope scale of w_prelu and kernel offset
    _SLOPE_SCALE = 0.02
    _KERNEL_BIAS = 1.0

    def __init__(self, dim: int, sc: int):
        super().__init__(dim, sc)
        self.w_prelu = nn.Parameter(torch.zeros(1) + 2.0 / (3 * sc - 1))

    def spatial_kernel(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """K x S kernel, the same for every patch: it depends only on where key and query sit."""
        sc = self.sc
        key_pos = torch.arange(3 * sc, device=device, dtype=dtype)           # window coordinate
        query_pos = torch.arange(sc, device=device, dtype=dtype) + sc        # query inside the window
        dist = (key_pos[:, None] - query_pos[None, :]).abs() - 2 * sc       # 3sc x sc, always < 0
        axis = torch.relu(self._KERNEL_BIAS - F.prelu(dist, self.w_prelu * self._SLOPE_SCALE))
        # K = (ky, kx), S = (sy, sx): kernel[ky, kx, sy, sx] = axis[ky, sy] * axis[kx, sx]
        ker = axis[:, None, :, None] * axis[None, :, None, :]
        return ker.reshape(9 * sc * sc, sc * sc)

    def weights(self, context: torch.Tensor) -> torch.Tensor:
        """context N x dim x H x W -> attention N x P x K x S (softmax over K)."""
        grid = PatchGrid(context.shape[-2], context.shape[-1], self.sc)
        logits = _patch_logits(self.to_qk, context, grid, self.scale)
        return (logits * self.spatial_kernel(context.device, logits.dtype)).softmax(dim=2)

    def forward(self, weights: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        grid = PatchGrid(motion.shape[-2], motion.shape[-1], self.sc)
        return motion + self.gamma * _aggregate(weights, self.to_v(grid.pad(motion)), grid)


class KPAFlowUpdateBlock(nn.Module):
    """Official ``KPAFlowDec``: motion encoder, kernel patch attention, SepConvGRU, flow and mask heads.

    ``forward(net, inp, corr, flow, kpa_weights, compute_mask)`` with net/inp N x 128 x H x W, corr
    N x corr_planes x H x W, flow N x 2 x H x W, kpa_weights from ``kpa.weights(inp)`` ->
    (net, mask N x 576 x H x W scaled 0.25 or None, delta_flow N x 2 x H x W).
    """

    def __init__(self, corr_levels: int = 4, corr_radius: int = 4, hidden_dim: int = 128, sc: int = 19):
        super().__init__()
        self.C_cor = nn.Sequential(nn.Conv2d(corr_planes(corr_levels, corr_radius), 256, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(inplace=True))
        self.C_flo = nn.Sequential(nn.Conv2d(2, 128, 7, padding=3), nn.ReLU(inplace=True),
                                   nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(inplace=True))
        self.C_mo = nn.Sequential(nn.Conv2d(192 + 64, 128 - 2, 3, padding=1), nn.ReLU(inplace=True))
        self.kpa = KernelPatchAttention(hidden_dim, sc)
        self.gru = SepConvGRU(hidden_dim=hidden_dim, input_dim=3 * hidden_dim)
        self.C_flow = nn.Sequential(nn.Conv2d(hidden_dim, 2 * hidden_dim, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(2 * hidden_dim, 2, 3, padding=1))
        self.C_mask = nn.Sequential(nn.Conv2d(hidden_dim, 2 * hidden_dim, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(2 * hidden_dim, 64 * 9, 1))

    def motion(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        """N x 128 x H x W motion features (126 learned + the flow)."""
        feat = self.C_mo(torch.cat([self.C_cor(corr), self.C_flo(flow)], dim=1))
        return torch.cat([feat, flow], dim=1)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor,
                kpa_weights: torch.Tensor, compute_mask: bool = True, gates: GateContext | None = None):
        motion = self.motion(flow, corr)
        net = self.gru(net, gru_input(inp, gates, motion, self.kpa(kpa_weights, motion)), gates)
        # 0.25 balances the mask's gradients (official constant)
        mask = 0.25 * self.C_mask(net) if compute_mask else None
        return net, mask, self.C_flow(net)


@register("kpaflow")
class KPAFlow(RAFTBase):
    """KPA-Flow: RAFT encoders and correlation with kernel patch attention. 5,994,831 parameters.

    Options: ``dataset`` "sintel" (KPA patch 19, default) | "kitti" (patch 15), the official switch;
    ``checkpoint_attention``: with gradients, recompute both patch attentions during backward instead of
    storing their windows, logits and kernels (a memory plan switches it on where needed); and the
    RAFT-family options of :class:`backbones.raft.RAFTBase` (``corr``, ``padding``, ``freeze_bn``, ``dropout``,
    ``mixed_precision``, ``corr_memory_budget``).
    """

    memory_family = "kpaflow"
    capabilities = replace(RAFTBase.capabilities, memory=RAFTBase.capabilities.memory + ("checkpoint_attention",))

    def __init__(self, *, dataset: str = "sintel", checkpoint_attention: bool = False, **options: Any):
        super().__init__(**options)
        if not isinstance(checkpoint_attention, bool):
            raise ValueError(f"checkpoint_attention must be True or False, got {checkpoint_attention!r}")
        self.checkpoint_attention = checkpoint_attention
        if dataset not in KPA_WINDOW:
            raise ValueError(f"dataset must be one of {', '.join(KPA_WINDOW)} (selects the KPA patch size), "
                             f"got {dataset!r}")
        self.dataset = dataset
        self.fnet = BasicEncoder(output_dim=256, norm_fn="instance", dropout=self.dropout)
        self.cnet = BasicEncoder(output_dim=self.hidden_dim + self.context_dim, norm_fn="batch",
                                 dropout=self.dropout, float32_stem=False)
        self.update_block = KPAFlowUpdateBlock(self.corr_levels, self.corr_radius, self.hidden_dim,
                                               sc=KPA_WINDOW[dataset])
        self.trans = PatchAttention(256, ENCODER_WINDOW)
        # Unused frozen 12-vector of the official model (its training path returns it as a dummy second
        # output); kept so that official checkpoints load strictly and the parameter count is the official one.
        self.zero = nn.Parameter(torch.zeros(12), requires_grad=False)
        self.train(self.training)

    def param_group_prefixes(self) -> dict[str, list[str]]:
        # The decoder-side KPA stays in update_block (where the official layout puts it) so groups partition.
        return {**super().param_group_prefixes(), "attention": ["trans"]}

    def encode_features(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap1, fmap2 = super().encode_features(x1, x2)
        # float32 and one image at a time, as official (halves the peak memory of the unfolded windows)
        return self._attention(self.trans, fmap1), self._attention(self.trans, fmap2)

    def _attention(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)``, recomputed during backward when the memory plan says so (no BatchNorm inside)."""
        if self._plan.checkpoint_attention and torch.is_grad_enabled():
            return checkpoint_call(fn, x)
        return fn(x)

    def _has_patch_attention(self) -> bool:
        return True

    def encode_context(self, x1: torch.Tensor) -> Context:
        ctx = super().encode_context(x1)
        with self._autocast(x1.device):
            ctx.extras["kpa_weights"] = self._attention(self.update_block.kpa.weights, ctx.inp)
        return ctx

    def update_step(self, ctx: Context, net: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor, itr: int,
                    compute_mask: bool):
        with self._autocast(net.device):
            return self.update_block(net, ctx.inp, corr, flow, ctx.extras["kpa_weights"],
                                     compute_mask=compute_mask, gates=ctx.extras.get("gates"))
