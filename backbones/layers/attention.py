"""GMA's global motion aggregation: attention from context features and aggregation of motion features.

Module and parameter names follow the official GMA ``gma.py`` (``to_qk``, ``pos_emb.rel_ind``,
``pos_emb.rel_height``/``rel_width``, ``to_v``, ``gamma``, ``project``) so official weights load as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from backbones.layers.checkpointing import checkpoint_call
from backbones.layers.shared_grad import SharedGradient

__all__ = ["RelPosEmb", "Attention", "Aggregate", "ChunkedAttention", "SharedAttention"]


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

    def forward(self, q: torch.Tensor, row_start: int = 0, key_height: int | None = None) -> torch.Tensor:
        """q: B x heads x rows x w x d, the query rows ``row_start ..`` of a ``key_height`` x w map (default:
        all rows) -> B x heads x rows x w x key_height x w."""
        _, _, rows, w, _ = q.shape
        h = rows if key_height is None else key_height
        if h > self.max_pos_size or w > self.max_pos_size:
            raise ValueError(f"relative position embedding covers at most {self.max_pos_size} positions per "
                             f"side, got a {h}x{w} feature map (input larger than {8 * self.max_pos_size} px)")
        emb_h = self.rel_height(self.rel_ind[row_start:row_start + rows, :h])   # rows x h x d   [x, u]
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

    def forward(self, fmap: torch.Tensor, chunk_rows: int = 0) -> "torch.Tensor | ChunkedAttention":
        """chunk_rows > 0: return a :class:`ChunkedAttention` that ``Aggregate`` applies row chunk by row
        chunk, recomputing instead of storing the matrix (same values up to float rounding)."""
        b, _, h, w = fmap.shape
        q, k = self.to_qk(fmap).chunk(2, dim=1)
        # B x (heads*d) x h x w -> B x heads x h x w x d
        q, k = (t.reshape(b, self.heads, -1, h, w).permute(0, 1, 3, 4, 2) for t in (q, k))
        q = self.scale * q
        if chunk_rows > 0:
            return ChunkedAttention(self, q, k, int(chunk_rows))
        if self.position_only:
            sim = self.pos_emb(q).reshape(b, self.heads, h * w, h * w)
        else:
            sim = q.reshape(b, self.heads, h * w, -1) @ k.reshape(b, self.heads, h * w, -1).transpose(-1, -2)
            if self.position_and_content:
                sim = sim + self.pos_emb(q).reshape(b, self.heads, h * w, h * w)
        return _softmax_last(sim)


def _softmax_last(sim: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, in place where no gradient is recorded: the (hw)^2 matrix is 4.2 GB for one
    1080p frame, and ``softmax`` would allocate a second one (measured: GMA's 1080p prediction peaked 4 GB
    higher). Same values up to float rounding (exp(x - max) / sum, as torch computes it)."""
    if sim.requires_grad or sim.dtype != torch.float32:
        return sim.softmax(dim=-1)
    sim.sub_(sim.amax(dim=-1, keepdim=True)).exp_()
    return sim.div_(sim.sum(dim=-1, keepdim=True))


class ChunkedAttention:
    """GMA attention kept as its factors (scaled queries and keys, B x heads x h x w x d).

    ``apply(v)`` (v: B x heads x hw x d) returns ``softmax(logits) @ v`` computed for ``rows`` query rows at a
    time, each chunk checkpointed: the (hw)^2 matrix never exists, neither in the forward pass nor in backward
    (the chunk's logits are recomputed there). Memory: B x heads x rows*w x hw floats per chunk.
    """

    def __init__(self, attention: Attention, q: torch.Tensor, k: torch.Tensor, rows: int):
        self.attention, self.q, self.k, self.rows = attention, q, k, rows

    @staticmethod
    def cat(items: list["ChunkedAttention"]) -> "ChunkedAttention":
        """Concatenate along the batch axis (both directions of one call)."""
        first = items[0]
        return ChunkedAttention(first.attention, torch.cat([a.q for a in items]), torch.cat([a.k for a in items]),
                                first.rows)

    def _chunk(self, q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row_start: int) -> torch.Tensor:
        att = self.attention
        b, heads, rows, w, d = q_rows.shape
        h = k.shape[2]
        if att.position_only:
            sim = att.pos_emb(q_rows, row_start, h).reshape(b, heads, rows * w, h * w)
        else:
            sim = q_rows.reshape(b, heads, rows * w, d) @ k.reshape(b, heads, h * w, d).transpose(-1, -2)
            if att.position_and_content:
                sim = sim + att.pos_emb(q_rows, row_start, h).reshape(b, heads, rows * w, h * w)
        return sim.softmax(dim=-1) @ v

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        h = self.q.shape[2]
        outs = []
        for r0 in range(0, h, self.rows):
            q_rows = self.q[:, :, r0:r0 + self.rows]
            if torch.is_grad_enabled():
                outs.append(checkpoint_call(self._chunk, q_rows, self.k, v, r0))
            else:
                outs.append(self._chunk(q_rows, self.k, v, r0))
        return torch.cat(outs, dim=2)   # B x heads x hw x d (query rows in order)


def _attention_grad_v(grad: torch.Tensor, matrix: torch.Tensor, v: torch.Tensor, needs) -> tuple:
    return (matrix.transpose(-1, -2) @ grad if needs[0] else None,)


def _attention_grad_matrix(items: list) -> torch.Tensor:
    # sum_t g_t v_t^T as one product over the stacked iterations (inner size T*d, not T products of size d)
    if len(items) == 1:
        return items[0][0] @ items[0][1].transpose(-1, -2)
    return torch.cat([g for g, _ in items], dim=-1) @ torch.cat([v for _, v in items], dim=-1).transpose(-1, -2)


class SharedAttention(SharedGradient):
    """GMA's attention matrix (B x heads x hw x hw) as applied at every refinement iteration of one call:
    ``apply(v) = matrix @ v``. Plain autograd computes the matrix's gradient once per iteration (g_t v_t^T, a
    (hw)^2 product with inner size d) and adds the results up; here it is one product over the stacked
    iterations (``SharedGradient``). Same values up to float rounding."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix, forward_fn=torch.matmul, combine=_attention_grad_matrix,
                         grad_inputs=_attention_grad_v)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return self.read(v)


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

    def forward(self, attn: "torch.Tensor | ChunkedAttention", fmap: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fmap.shape
        v = self.to_v(fmap).reshape(b, self.heads, -1, h * w).transpose(-1, -2)  # B x heads x hw x d
        mixed = attn.apply(v) if isinstance(attn, (ChunkedAttention, SharedAttention)) else attn @ v
        out = mixed.transpose(-1, -2).reshape(b, -1, h, w)                       # B x (heads*d) x h x w
        if self.project is not None:
            out = self.project(out)
        return fmap + self.gamma * out
