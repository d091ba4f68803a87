"""GMA's global motion aggregation: attention from context features and aggregation of motion features.

Module and parameter names follow the official GMA ``gma.py`` (``to_qk``, ``pos_emb.rel_ind``,
``pos_emb.rel_height``/``rel_width``, ``to_v``, ``gamma``, ``project``) so official weights load as they are.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["RelPosEmb", "Attention", "Aggregate"]


class RelPosEmb(nn.Module):
    """Relative position logits: q (B x heads x h x w x d) -> B x heads x h x w x h x w.

    ``rel_ind`` (a persistent int64 buffer, as official) maps (i, j) to the embedding row j - i + max_pos - 1.
    """

    def __init__(self, max_pos_size: int, dim_head: int):
        super().__init__()
        self.max_pos_size = max_pos_size
        self.rel_height = nn.Embedding(2 * max_pos_size - 1, dim_head)
        self.rel_width = nn.Embedding(2 * max_pos_size - 1, dim_head)
        deltas = torch.arange(max_pos_size).view(1, -1) - torch.arange(max_pos_size).view(-1, 1)
        self.register_buffer("rel_ind", deltas + max_pos_size - 1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        _, _, h, w, _ = q.shape
        if h > self.max_pos_size or w > self.max_pos_size:
            raise ValueError(f"relative position embedding covers at most {self.max_pos_size} positions per "
                             f"side, got a {h}x{w} feature map (input larger than {8 * self.max_pos_size} px)")
        emb_h = self.rel_height(self.rel_ind[:h, :h])        # h x h x d   [x, u]
        emb_w = self.rel_width(self.rel_ind[:w, :w])         # w x w x d   [y, v]
        score_h = torch.einsum("bnxyd,xud->bnxyu", q, emb_h)
        score_w = torch.einsum("bnxyd,yvd->bnxyv", q, emb_w)
        return score_h[..., :, None] + score_w[..., None, :]


class Attention(nn.Module):
    """Self-attention weights over all pixels of the context features.

    fmap: B x dim x h x w -> attn B x heads x (h*w) x (h*w) (softmax over the last axis). Content logits
    q.k * dim_head^-0.5 by default; ``position_only`` uses relative-position logits instead and
    ``position_and_content`` their sum (official GMA switches).
    """

    def __init__(self, dim: int, heads: int = 1, dim_head: int = 128, max_pos_size: int = 160,
                 position_only: bool = False, position_and_content: bool = False):
        super().__init__()
        if position_only and position_and_content:
            raise ValueError("position_only and position_and_content are exclusive")
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.position_only, self.position_and_content = position_only, position_and_content
        self.to_qk = nn.Conv2d(dim, heads * dim_head * 2, 1, bias=False)
        self.pos_emb = RelPosEmb(max_pos_size, dim_head)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fmap.shape
        q, k = self.to_qk(fmap).chunk(2, dim=1)
        # B x (heads*d) x h x w -> B x heads x h x w x d
        q, k = (t.view(b, self.heads, -1, h, w).permute(0, 1, 3, 4, 2) for t in (q, k))
        q = self.scale * q
        if self.position_only:
            sim = self.pos_emb(q).reshape(b, self.heads, h * w, h * w)
        else:
            sim = q.reshape(b, self.heads, h * w, -1) @ k.reshape(b, self.heads, h * w, -1).transpose(-1, -2)
            if self.position_and_content:
                sim = sim + self.pos_emb(q).reshape(b, self.heads, h * w, h * w)
        return sim.softmax(dim=-1)


class Aggregate(nn.Module):
    """Aggregates features with attention weights: fmap + gamma * project(attn @ to_v(fmap)).

    attn: B x heads x (h*w) x (h*w); fmap: B x dim x h x w -> B x dim x h x w. ``gamma`` starts at 0.
    """

    def __init__(self, dim: int, heads: int = 1, dim_head: int = 128):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_v = nn.Conv2d(dim, inner, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.project = nn.Conv2d(inner, dim, 1, bias=False) if dim != inner else None

    def forward(self, attn: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fmap.shape
        v = self.to_v(fmap).view(b, self.heads, -1, h * w).transpose(-1, -2)    # B x heads x hw x d
        out = (attn @ v).transpose(-1, -2).reshape(b, -1, h, w)                  # B x (heads*d) x h x w
        if self.project is not None:
            out = self.project(out)
        return fmap + self.gamma * out
