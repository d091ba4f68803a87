"""Building blocks shared by the networks (RAFT family; pwc: UPFlow, LiteFlowNet2).

grid       coords_grid, bilinear_sampler (pixel coordinates), warp, in_frame_mask (backward warping by a flow)
encoders   ResidualBlock, BottleneckBlock, BasicEncoder, SmallEncoder, make_norm
corr       CorrBlock (dense all-pairs pyramid), OnDemandCorrBlock (memory-bounded), build_corr
update     FlowHead, ConvGRU, SepConvGRU, motion encoders, BasicUpdateBlock, SmallUpdateBlock, GMAUpdateBlock
upsample   convex_upsample, upsample_flow, resize_flow (flow up/down-sampling, vectors rescaled)
pwc        cost_volume (local correlation of the pyramid networks)
attention  Attention, Aggregate, RelPosEmb, ChunkedAttention, SharedAttention (GMA)
shared_grad SharedGradient (one combined gradient for a tensor every iteration reads)
checkpointing checkpoint_call (activation checkpointing, BatchNorm-safe)
"""
from backbones.layers.attention import Aggregate, Attention, RelPosEmb
from backbones.layers.corr import CORR_KINDS, CorrBlock, OnDemandCorrBlock, build_corr, dense_corr_bytes
from backbones.layers.encoders import BasicEncoder, BottleneckBlock, ResidualBlock, SmallEncoder, make_norm
from backbones.layers.grid import bilinear_sampler, coords_grid, in_frame_mask, warp
from backbones.layers.pwc import cost_volume
from backbones.layers.update import (BasicMotionEncoder, BasicUpdateBlock, ConvGRU, FlowHead, GMAUpdateBlock,
                                     SepConvGRU, SmallMotionEncoder, SmallUpdateBlock, corr_planes)
from backbones.layers.upsample import convex_upsample, resize_flow, upsample_flow

__all__ = [
    "Aggregate", "Attention", "RelPosEmb",
    "CORR_KINDS", "CorrBlock", "OnDemandCorrBlock", "build_corr", "dense_corr_bytes",
    "BasicEncoder", "BottleneckBlock", "ResidualBlock", "SmallEncoder", "make_norm",
    "bilinear_sampler", "coords_grid", "in_frame_mask", "warp", "cost_volume",
    "BasicMotionEncoder", "BasicUpdateBlock", "ConvGRU", "FlowHead", "GMAUpdateBlock", "SepConvGRU",
    "SmallMotionEncoder", "SmallUpdateBlock", "corr_planes",
    "convex_upsample", "resize_flow", "upsample_flow",
]
