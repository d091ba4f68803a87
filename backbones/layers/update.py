"""RAFT's recurrent update operators: motion encoders, (separable) convolutional GRUs, flow heads, update blocks.

Names follow the official RAFT/GMA ``update.py`` so ``state_dict`` keys match. Every update block is called
``block(net, inp, corr, flow, ..., compute_mask=True) -> (net, mask | None, delta_flow)`` with
net N x hidden x H x W (GRU state), inp N x context x H x W, corr N x levels*(2r+1)^2 x H x W,
flow N x 2 x H x W (all at 1/8 resolution). ``compute_mask=False`` skips the upsampling-mask head (the
network asks for it only when it will upsample: saves a 3x3 and a 1x1 convolution per test iteration).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.attention import Aggregate

__all__ = ["FlowHead", "ConvGRU", "SepConvGRU", "BasicMotionEncoder", "SmallMotionEncoder",
           "BasicUpdateBlock", "SmallUpdateBlock", "GMAUpdateBlock", "corr_planes"]


def corr_planes(corr_levels: int, corr_radius: int) -> int:
    """Channels of a correlation lookup: levels * (2r+1)^2."""
    return corr_levels * (2 * corr_radius + 1) ** 2


class FlowHead(nn.Module):
    """Two 3x3 convolutions: N x input_dim x H x W -> N x 2 x H x W (flow update)."""

    def __init__(self, input_dim: int = 128, hidden_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def _gru_step(h: torch.Tensor, x: torch.Tensor, convz: nn.Module, convr: nn.Module, convq: nn.Module) -> torch.Tensor:
    hx = torch.cat([h, x], dim=1)
    z = torch.sigmoid(convz(hx))
    r = torch.sigmoid(convr(hx))
    q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
    return (1 - z) * h + z * q


class ConvGRU(nn.Module):
    """Convolutional GRU with 3x3 gates: h N x hidden x H x W, x N x input_dim x H x W -> new h."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128):
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _gru_step(h, x, self.convz, self.convr, self.convq)


class SepConvGRU(nn.Module):
    """Separable convolutional GRU: a 1x5 (horizontal) then a 5x1 (vertical) GRU step."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128):
        super().__init__()
        c = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = _gru_step(h, x, self.convz1, self.convr1, self.convq1)
        return _gru_step(h, x, self.convz2, self.convr2, self.convq2)


class BasicMotionEncoder(nn.Module):
    """Encodes correlation and flow: -> N x 128 x H x W (126 learned channels + the flow itself)."""

    def __init__(self, corr_levels: int = 4, corr_radius: int = 4):
        super().__init__()
        self.convc1 = nn.Conv2d(corr_planes(corr_levels, corr_radius), 256, 1, padding=0)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SmallMotionEncoder(nn.Module):
    """RAFT-small motion encoder: -> N x 82 x H x W (80 learned channels + the flow)."""

    def __init__(self, corr_levels: int = 4, corr_radius: int = 3):
        super().__init__()
        self.convc1 = nn.Conv2d(corr_planes(corr_levels, corr_radius), 96, 1, padding=0)
        self.convf1 = nn.Conv2d(2, 64, 7, padding=3)
        self.convf2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv = nn.Conv2d(128, 80, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


def _mask_head(hidden_dim: int, factor: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(hidden_dim, 256, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(256, factor * factor * 9, 1, padding=0))


class _MaskedUpdate(nn.Module):
    """Shared tail: GRU -> flow head, plus the convex-upsampling mask (scaled by 0.25 as official)."""

    gru: nn.Module
    flow_head: nn.Module
    mask: nn.Module

    def upsample_mask(self, net: torch.Tensor) -> torch.Tensor:
        """N x hidden x H x W -> N x (9*64) x H x W mask logits (0.25 scale balances gradients, official)."""
        return 0.25 * self.mask(net)

    def _finish(self, net: torch.Tensor, x: torch.Tensor, compute_mask: bool):
        net = self.gru(net, x)
        delta_flow = self.flow_head(net)
        return net, (self.upsample_mask(net) if compute_mask else None), delta_flow


class BasicUpdateBlock(_MaskedUpdate):
    """RAFT update: motion encoder -> SepConvGRU(hidden, input 128 + context) -> flow head and mask."""

    def __init__(self, corr_levels: int = 4, corr_radius: int = 4, hidden_dim: int = 128, input_dim: int = 128,
                 mask_size: int = 8):
        super().__init__()
        self.encoder = BasicMotionEncoder(corr_levels, corr_radius)
        self.gru = SepConvGRU(hidden_dim=hidden_dim, input_dim=128 + input_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=256)
        self.mask = _mask_head(hidden_dim, mask_size)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor,
                compute_mask: bool = True):
        motion = self.encoder(flow, corr)
        return self._finish(net, torch.cat([inp, motion], dim=1), compute_mask)


class SmallUpdateBlock(nn.Module):
    """RAFT-small update: small motion encoder -> ConvGRU(96, 82 + 64) -> flow head; no mask (bilinear)."""

    def __init__(self, corr_levels: int = 4, corr_radius: int = 3, hidden_dim: int = 96, input_dim: int = 64):
        super().__init__()
        self.encoder = SmallMotionEncoder(corr_levels, corr_radius)
        self.gru = ConvGRU(hidden_dim=hidden_dim, input_dim=82 + input_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=128)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor,
                compute_mask: bool = True):
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, None, self.flow_head(net)


class GMAUpdateBlock(_MaskedUpdate):
    """GMA update: motion features plus their attention-aggregated global version feed the SepConvGRU
    (GRU input 128 context + 128 motion + 128 aggregated = 384). ``attention``: B x heads x HW x HW."""

    def __init__(self, corr_levels: int = 4, corr_radius: int = 4, hidden_dim: int = 128, num_heads: int = 1,
                 mask_size: int = 8):
        super().__init__()
        self.encoder = BasicMotionEncoder(corr_levels, corr_radius)
        self.gru = SepConvGRU(hidden_dim=hidden_dim, input_dim=128 + hidden_dim + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=256)
        self.mask = _mask_head(hidden_dim, mask_size)
        self.aggregator = Aggregate(dim=128, dim_head=128, heads=num_heads)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor,
                attention: torch.Tensor, compute_mask: bool = True):
        motion = self.encoder(flow, corr)
        motion_global = self.aggregator(attention, motion)
        return self._finish(net, torch.cat([inp, motion, motion_global], dim=1), compute_mask)
