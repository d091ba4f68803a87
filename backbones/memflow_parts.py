"""MemFlow's pieces that no other network uses: the SKFlow-style update block and the motion memory.

Update block (official ``SKUpdateBlock6_Deep_nopoolres_AllDecoder2_Mem_skflow``): every stage is a
:class:`PCBlock` (a residual stack of GELU 1x1 "feed-forward" convs and large-kernel depthwise convs);
the "GRU" is one such block on [net, context, motion, aggregated motion] that *replaces* the hidden
state (no gating, no squashing). Motion features are aggregated from a memory of motion *values*
(``aggregator.to_v`` of the motion features) read by attention from context keys: see
:class:`MotionMemory` and :func:`read_memory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.attention import Aggregate

__all__ = ["PCBlock", "SKMotionEncoder", "SKUpdateBlock", "MotionMemory", "read_memory"]


class PCBlock(nn.Module):
    """Residual large-kernel block (official ``PCBlock4_Deep_nopool_res``).

    x N x c_in x H x W -> N x c_out x H x W:
    ``x = gelu(x + ffn1(x))``; for each depthwise conv k: ``x = gelu(x + dw_k(x))``;
    ``x = gelu(x + pw(x))``; ``return ffn2(x)``. ffn = 1x1 conv to 1.5 c_in, GELU, 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, kernels: tuple[int, ...]):
        super().__init__()
        hidden = int(1.5 * c_in)
        self.conv_list = nn.ModuleList(
            nn.Conv2d(c_in, c_in, k, padding=k // 2, groups=c_in) for k in kernels)
        self.ffn1 = nn.Sequential(nn.Conv2d(c_in, hidden, 1), nn.GELU(), nn.Conv2d(hidden, c_in, 1))
        self.pw = nn.Conv2d(c_in, c_in, 1)
        self.ffn2 = nn.Sequential(nn.Conv2d(c_in, hidden, 1), nn.GELU(), nn.Conv2d(hidden, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(x + self.ffn1(x))
        for conv in self.conv_list:
            x = F.gelu(x + conv(x))
        x = F.gelu(x + self.pw(x))
        return self.ffn2(x)


class SKMotionEncoder(nn.Module):
    """Correlation + flow -> 128 motion channels (126 learned + the flow itself).

    corr N x corr_planes x H x W, flow N x 2 x H x W -> N x 128 x H x W.
    """

    def __init__(self, corr_planes: int, kernels: tuple[int, ...] = (1, 15)):
        super().__init__()
        self.convc1 = PCBlock(corr_planes, 256, kernels)
        self.convc2 = PCBlock(256, 192, kernels)
        self.convf1 = nn.Conv2d(2, 128, 1)
        self.convf2 = PCBlock(128, 64, kernels)
        self.conv = PCBlock(64 + 192, 128 - 2, kernels)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = self.convc2(F.gelu(self.convc1(corr)))
        flo = self.convf2(self.convf1(flow))
        return torch.cat([self.conv(torch.cat([cor, flo], dim=1)), flow], dim=1)


class SKUpdateBlock(nn.Module):
    """MemFlow update block: motion encoder, PCBlock "GRU", PCBlock flow head, convex-upsampling mask.

    ``motion_and_value(flow, corr)`` -> (motion N x 128 x H x W, value N x 128 x H x W);
    ``forward(net, inp, motion, motion_global, compute_mask)`` -> (net N x 128 x H x W, mask N x 576 x H x W
    (scaled 0.25) or None, delta_flow N x 2 x H x W).
    """

    def __init__(self, corr_planes: int, hidden_dim: int = 128, context_dim: int = 128,
                 kernels: tuple[int, ...] = (1, 15), gru_kernels: tuple[int, ...] = (1, 7)):
        super().__init__()
        self.encoder = SKMotionEncoder(corr_planes, kernels)
        self.gru = PCBlock(128 + hidden_dim + context_dim + 128, hidden_dim, gru_kernels)
        self.flow_head = PCBlock(hidden_dim, 2, kernels)
        self.mask = nn.Sequential(nn.Conv2d(hidden_dim, 256, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(256, 64 * 9, 1))
        # only its parameters are used: to_v makes the memory values, gamma weighs the readout
        self.aggregator = Aggregate(dim=128, heads=1, dim_head=128)

    def motion_and_value(self, flow: torch.Tensor, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        motion = self.encoder(flow, corr)
        return motion, self.aggregator.to_v(motion)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, motion: torch.Tensor, motion_global: torch.Tensor,
                compute_mask: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        net = self.gru(torch.cat([net, inp, motion, motion_global], dim=1))
        # 0.25 balances the mask's gradients (official constant)
        mask = 0.25 * self.mask(net) if compute_mask else None
        return net, mask, self.flow_head(net)


@dataclass
class MotionMemory:
    """Bounded memory of one video: context keys and motion values of past frames (official working memory).

    keys: N x Ck x L and values: N x Cv x L (L = frames kept x h x w on the 1/8 grid), or None when empty.
    After each :meth:`add`, once ``max_frames`` frames are stored the oldest are dropped so that
    ``min_frames`` remain (official ``max_mid_term_frames=2``, ``min_mid_term_frames=1``: the readout sees
    the previous frame plus the current one). A memory belongs to one sequence: create a fresh one (or
    :meth:`clear` it) for every independent video; :meth:`clone` / :meth:`state_dict` save it.
    """

    max_frames: int = 2
    min_frames: int = 1
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    frames_seen: int = field(default=0)
    image_size: tuple[int, int] | None = None   # H x W of the frames (before padding), once one is stored

    def __post_init__(self) -> None:
        if not 1 <= self.min_frames < self.max_frames:
            raise ValueError(f"memory needs 1 <= min_frames < max_frames, got min_frames={self.min_frames}, "
                             f"max_frames={self.max_frames}")

    @property
    def empty(self) -> bool:
        return self.keys is None

    @property
    def num_frames(self) -> int:
        """How many frames' worth of keys are stored."""
        if self.keys is None or self.grid is None:
            return 0
        return self.keys.shape[-1] // (self.grid[0] * self.grid[1])

    def check_compatible(self, key: torch.Tensor) -> None:
        """Raise ValueError if ``key`` (N x C x h x w) cannot be read against this memory."""
        if self.keys is None:
            return
        if tuple(key.shape[-2:]) != self.grid or key.shape[0] != self.keys.shape[0]:
            raise ValueError(
                f"memory holds batch {self.keys.shape[0]} on a {self.grid} grid but the frame gives batch "
                f"{key.shape[0]} on {tuple(key.shape[-2:])}: frames of one sequence must have the same size; "
                f"use a fresh memory (reset_memory()) for another video")

    def check_image_size(self, h: int, w: int) -> None:
        """Raise ValueError if frames of ``h x w`` do not belong to the sequence this memory holds."""
        if self.keys is not None and self.image_size is not None and (h, w) != tuple(self.image_size):
            raise ValueError(f"memory holds frames of {self.image_size[0]}x{self.image_size[1]} but this pair is "
                             f"{h}x{w}: frames of one sequence must have the same size; use a fresh memory "
                             f"(reset_memory()) for another video")

    def add(self, key: torch.Tensor, value: torch.Tensor, image_size: tuple[int, int] | None = None) -> None:
        """Store one frame: key N x Ck x h x w, value N x Cv x h x w (``image_size``: its unpadded H x W)."""
        self.check_compatible(key)
        if image_size is not None:
            self.check_image_size(*image_size)
            self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid = (int(key.shape[-2]), int(key.shape[-1]))
        key, value = key.flatten(2), value.flatten(2)
        if self.keys is None:
            self.keys, self.values = key, value
        else:
            self.keys = torch.cat([self.keys, key], dim=-1)
            self.values = torch.cat([self.values, value], dim=-1)
        self.frames_seen += 1
        hw = self.grid[0] * self.grid[1]
        if self.keys.shape[-1] >= self.max_frames * hw:
            keep = self.min_frames * hw
            self.keys, self.values = self.keys[..., -keep:], self.values[..., -keep:]

    def clear(self) -> None:
        """Forget everything (start of a new sequence)."""
        self.keys = self.values = self.grid = self.image_size = None
        self.frames_seen = 0

    def detach(self) -> "MotionMemory":
        """A copy whose tensors are cut from the autograd graph."""
        out = self.clone()
        if out.keys is not None:
            out.keys, out.values = out.keys.detach(), out.values.detach()
        return out

    def clone(self) -> "MotionMemory":
        """An independent copy (tensors cloned)."""
        return MotionMemory(self.max_frames, self.min_frames,
                            None if self.keys is None else self.keys.clone(),
                            None if self.values is None else self.values.clone(),
                            self.grid, self.frames_seen, self.image_size)

    def to(self, device: torch.device | str) -> "MotionMemory":
        """A copy on ``device``."""
        out = self.clone()
        if out.keys is not None:
            out.keys, out.values = out.keys.to(device), out.values.to(device)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loadable with ``torch.load(weights_only=True)``)."""
        sd = {"max_frames": torch.tensor(self.max_frames), "min_frames": torch.tensor(self.min_frames),
              "frames_seen": torch.tensor(self.frames_seen)}
        if self.keys is not None:
            sd.update(keys=self.keys.detach().clone(), values=self.values.detach().clone(),
                      grid=torch.tensor(self.grid))
            if self.image_size is not None:
                sd["image_size"] = torch.tensor(self.image_size)
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "MotionMemory":
        """Inverse of :meth:`state_dict`."""
        try:
            mem = cls(int(sd["max_frames"]), int(sd["min_frames"]))
            mem.frames_seen = int(sd["frames_seen"])
            if "keys" in sd:
                mem.keys, mem.values = sd["keys"], sd["values"]
                mem.grid = (int(sd["grid"][0]), int(sd["grid"][1]))
                if "image_size" in sd:
                    mem.image_size = (int(sd["image_size"][0]), int(sd["image_size"][1]))
        except KeyError as e:
            raise ValueError(f"not a MotionMemory state dict: missing {e}") from e
        return mem


def read_memory(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, memory_keys: torch.Tensor | None,
                memory_values: torch.Tensor | None, scale: float, train_length: float) -> torch.Tensor:
    """Attention readout of motion values for the current frame (official ``MemoryManager.match_memory``).

    query, key: N x C x h x w (current frame's context query and key); value: N x Cv x h x w (current motion
    value); memory_keys / memory_values: N x C x L / N x Cv x L of past frames, or None. Keys are the memory's
    plus the current ones; the logit scale is ``scale * log_{train_length}(L_all)`` with L_all the number of
    keys (the official length-adaptive scale). Returns N x Cv x h x w.
    """
    n, _, h, w = query.shape
    keys, values = key.flatten(2), value.flatten(2)
    if memory_keys is not None:
        keys = torch.cat([memory_keys, keys], dim=-1)
        values = torch.cat([memory_values, values], dim=-1)
    scale = scale * math.log(keys.shape[-1], train_length)
    # N x L x hw: similarity of every key with every query pixel, softmax over the keys
    affinity = (keys.transpose(1, 2) @ query.flatten(2) * scale).softmax(dim=1)
    return (values @ affinity).view(n, -1, h, w)
