"""RAFT's recurrent update operators: motion encoders, (separable) convolutional GRUs, flow heads, update blocks.

Names follow the official RAFT/GMA ``update.py`` so ``state_dict`` keys match. Every update block is called
``block(net, inp, corr, flow, ..., compute_mask=True) -> (net, mask | None, delta_flow)`` with
net N x hidden x H x W (GRU state), inp N x context x H x W, corr N x levels*(2r+1)^2 x H x W,
flow N x 2 x H x W (all at 1/8 resolution). ``compute_mask=False`` skips the upsampling-mask head (the
network asks for it only when it will upsample: saves a 3x3 and a 1x1 convolution per test iteration).
``gates=block.gru.precompute(inp)`` (once per forward call) convolves the constant context part of the GRU input
once instead of at every iteration (``GateContext``); ``inp`` is then not read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.attention import Aggregate

__all__ = ["FlowHead", "ConvGRU", "SepConvGRU", "BasicMotionEncoder", "SmallMotionEncoder",
           "BasicUpdateBlock", "SmallUpdateBlock", "GMAUpdateBlock", "GateContext", "corr_planes", "gru_input"]


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


def _without(weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``weight`` (out x in x kh x kw) without the input channels ``start:stop``."""
    return torch.cat([weight[:, :start], weight[:, stop:]], dim=1)


def _context_term(inp: torch.Tensor, convs: tuple[nn.Conv2d, ...], start: int) -> torch.Tensor:
    """The gates' convolution of the context channels ``start:start + C`` plus their biases, for all of
    ``convs`` at once: N x C x H x W -> N x (len(convs) * hidden) x H x W."""
    stop = start + inp.shape[1]
    weight = torch.cat([c.weight[:, start:stop] for c in convs])
    return F.conv2d(inp, weight, torch.cat([c.bias for c in convs]), padding=convs[0].padding)


def _gru_step_split(h: torch.Tensor, x: torch.Tensor, term: torch.Tensor, convz: nn.Conv2d, convr: nn.Conv2d,
                    convq: nn.Conv2d, start: int, stop: int) -> torch.Tensor:
    """``_gru_step`` on ``cat([h, context, x])`` with the context channels ``start:stop`` already convolved into
    ``term`` (``_context_term``): the same function, a third fewer multiply-adds per step; z and r in one conv."""
    hidden = h.shape[1]
    w_zr = _without(torch.cat([convz.weight, convr.weight]), start, stop)
    zr = torch.sigmoid(F.conv2d(torch.cat([h, x], dim=1), w_zr, padding=convz.padding) + term[:, :2 * hidden])
    z, r = zr[:, :hidden], zr[:, hidden:]
    q = F.conv2d(torch.cat([r * h, x], dim=1), _without(convq.weight, start, stop), padding=convq.padding)
    q = torch.tanh(q + term[:, 2 * hidden:])
    return (1 - z) * h + z * q


class GateContext:
    """The constant part of a GRU's input, convolved once per forward call instead of at every iteration.

    The GRU input of the RAFT family is ``cat([context, motion...])`` and the context features do not change
    between iterations; convolution is linear, so each gate's convolution splits into a context part (computed
    here, biases included) and a per-iteration part. ``terms[k]``: N x 3*hidden x H x W (z, r, q) of GRU step k.
    Results equal the unsplit GRU up to float rounding (summation order).
    """

    def __init__(self, terms: list[torch.Tensor], start: int, stop: int):
        self.terms, self.start, self.stop = terms, start, stop


class ConvGRU(nn.Module):
    """Convolutional GRU with 3x3 gates: h N x hidden x H x W, x N x input_dim x H x W -> new h."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def steps(self) -> list[tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]]:
        return [(self.convz, self.convr, self.convq)]

    def precompute(self, inp: torch.Tensor) -> GateContext:
        """The gates' context part for context features ``inp`` (the first channels of ``x``)."""
        return _precompute(self, inp)

    def forward(self, h: torch.Tensor, x: torch.Tensor, gates: GateContext | None = None) -> torch.Tensor:
        """h N x hidden x H x W; x the whole input, or without the context channels when ``gates`` is given."""
        return _run_steps(self, h, x, gates)


class SepConvGRU(nn.Module):
    """Separable convolutional GRU: a 1x5 (horizontal) then a 5x1 (vertical) GRU step."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128):
        super().__init__()
        c = hidden_dim + input_dim
        self.hidden_dim = hidden_dim
        self.convz1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))

    def steps(self) -> list[tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]]:
        return [(self.convz1, self.convr1, self.convq1), (self.convz2, self.convr2, self.convq2)]

    def precompute(self, inp: torch.Tensor) -> GateContext:
        """The gates' context part for context features ``inp`` (the first channels of ``x``)."""
        return _precompute(self, inp)

    def forward(self, h: torch.Tensor, x: torch.Tensor, gates: GateContext | None = None) -> torch.Tensor:
        """h N x hidden x H x W; x the whole input, or without the context channels when ``gates`` is given."""
        return _run_steps(self, h, x, gates)


def _precompute(gru: ConvGRU | SepConvGRU, inp: torch.Tensor) -> GateContext:
    start = gru.hidden_dim  # gate inputs are cat([h, context, ...])
    return GateContext([_context_term(inp, convs, start) for convs in gru.steps()], start, start + inp.shape[1])


def _run_steps(gru: ConvGRU | SepConvGRU, h: torch.Tensor, x: torch.Tensor, gates: GateContext | None) -> torch.Tensor:
    for k, (convz, convr, convq) in enumerate(gru.steps()):
        if gates is None:
            h = _gru_step(h, x, convz, convr, convq)
        else:
            h = _gru_step_split(h, x, gates.terms[k], convz, convr, convq, gates.start, gates.stop)
    return h


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


def gru_input(inp: torch.Tensor, gates: GateContext | None, *features: torch.Tensor) -> torch.Tensor:
    """The GRU input: ``cat([inp, *features])``, or only the features when ``gates`` holds the context part."""
    return torch.cat(list(features) if gates is not None else [inp, *features], dim=1)


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

    def _finish(self, net: torch.Tensor, x: torch.Tensor, compute_mask: bool, gates: GateContext | None = None):
        net = self.gru(net, x, gates)
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
                compute_mask: bool = True, gates: GateContext | None = None):
        motion = self.encoder(flow, corr)
        return self._finish(net, gru_input(inp, gates, motion), compute_mask, gates)


class SmallUpdateBlock(nn.Module):
    """RAFT-small update: small motion encoder -> ConvGRU(96, 82 + 64) -> flow head; no mask (bilinear)."""

    def __init__(self, corr_levels: int = 4, corr_radius: int = 3, hidden_dim: int = 96, input_dim: int = 64):
        super().__init__()
        self.encoder = SmallMotionEncoder(corr_levels, corr_radius)
        self.gru = ConvGRU(hidden_dim=hidden_dim, input_dim=82 + input_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=128)

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor,
                compute_mask: bool = True, gates: GateContext | None = None):
        motion = self.encoder(flow, corr)
        net = self.gru(net, gru_input(inp, gates, motion), gates)
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
                attention: torch.Tensor, compute_mask: bool = True, gates: GateContext | None = None):
        motion = self.encoder(flow, corr)
        motion_global = self.aggregator(attention, motion)
        return self._finish(net, gru_input(inp, gates, motion, motion_global), compute_mask, gates)
