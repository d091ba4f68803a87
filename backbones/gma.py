"""GMA (Jiang et al., ICCV 2021): RAFT with global motion aggregation.

Attention over all pixels is computed once from the context features; at every iteration the motion features
are aggregated with it (``update_block.aggregator``) and fed to the GRU beside the local ones.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from backbones.layers.attention import Attention, SharedAttention
from backbones.layers.encoders import BasicEncoder
from backbones.layers.update import GMAUpdateBlock
from backbones.raft import Context, RAFTBase
from backbones.registry import register

__all__ = ["GMA"]


@register("gma")
class GMA(RAFTBase):
    """GMA: RAFT encoders and correlation; attention from context (to_qk 128 -> 2x128, scale 128^-0.5),
    aggregator (to_v, gamma) in the update block, SepConvGRU input 384. 5,879,873 parameters (num_heads=1).

    Extra options (official switches): ``num_heads`` (1), ``position_only``, ``position_and_content``
    (relative position logits; they cover feature maps up to 160 x 160, i.e. inputs up to 1280 px per side).
    Memory: the attention matrix is N x heads x (HW/64)^2 floats (4.2 GB for a 1080x1920 frame);
    ``attention_chunk=R`` (or a memory plan) computes it R query rows at a time and never stores it.
    """

    capabilities = replace(RAFTBase.capabilities, memory=RAFTBase.capabilities.memory + ("attention_chunk",))
    memory_family = "gma"

    def __init__(self, *, num_heads: int = 1, position_only: bool = False, position_and_content: bool = False,
                 attention_chunk: int = 0, **options: Any):
        super().__init__(**options)
        if isinstance(attention_chunk, bool) or not isinstance(attention_chunk, int) or attention_chunk < 0:
            raise ValueError(f"attention_chunk must be an int >= 0 (query rows per chunk, 0: whole matrix), "
                             f"got {attention_chunk!r}")
        self.attention_chunk = attention_chunk
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
        self.num_heads = num_heads
        self.fnet = BasicEncoder(output_dim=256, norm_fn="instance", dropout=self.dropout)
        self.cnet = BasicEncoder(output_dim=self.hidden_dim + self.context_dim, norm_fn="batch",
                                 dropout=self.dropout, float32_stem=False)
        self.update_block = GMAUpdateBlock(self.corr_levels, self.corr_radius, hidden_dim=self.hidden_dim,
                                           num_heads=num_heads)
        self.att = Attention(dim=self.context_dim, heads=num_heads, dim_head=self.context_dim, max_pos_size=160,
                             position_only=position_only, position_and_content=position_and_content)
        self.train(self.training)

    def param_group_prefixes(self) -> dict[str, list[str]]:
        # The aggregator stays in update_block (where the official layout puts it) so groups partition.
        return {**super().param_group_prefixes(), "attention": ["att"]}

    def encode_context(self, x1: torch.Tensor) -> Context:
        ctx = super().encode_context(x1)
        with self._autocast(x1.device):
            ctx.extras["attention"] = self.att(ctx.inp, chunk_rows=self._plan.attention_chunk)
        return ctx

    def refine(self, ctx: Context, corr_fn, coords0: torch.Tensor, coords1: torch.Tensor, iters: int,
               keep_all: bool):
        # one gradient of the attention matrix for all iterations (SharedAttention), where autograd records
        attention = ctx.extras.get("attention")
        if isinstance(attention, torch.Tensor) and SharedAttention.usable(attention):
            ctx.extras["attention"] = SharedAttention(attention)
        return super().refine(ctx, corr_fn, coords0, coords1, iters, keep_all)

    def _has_global_attention(self) -> bool:
        return True

    def update_step(self, ctx: Context, net: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor, itr: int,
                    compute_mask: bool):
        with self._autocast(net.device):
            return self.update_block(net, ctx.inp, corr, flow, ctx.extras["attention"], compute_mask=compute_mask,
                                     gates=ctx.extras.get("gates"))
