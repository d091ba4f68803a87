"""RAFT (Teed & Deng, ECCV 2020) and RAFT-small, on a base class shared by the RAFT family.

``RAFTBase`` owns everything the RAFT-style networks have in common: input checks, normalisation
2 * (I / 255) - 1, padding to a multiple of 8 (and cropping back), the correlation choice, the iteration loop
and upsampling. A network subclass creates its modules (official names, so official checkpoints load) and
overrides the hooks it changes:

    encode_features(x1, x2) -> (fmap1, fmap2)          feature encoder on both images (one batched pass)
    encode_context(x1) -> Context                      GRU state, context features, extras (e.g. attention)
    make_corr(fmap1, fmap2)                            correlation block (dense / ondemand / auto)
    update_step(ctx, net, corr, flow, itr, compute_mask) -> (net, mask | None, delta_flow)
    upsample(flow_low, mask) -> full-resolution flow   convex (mask) or bilinear (no mask)

Test mode differs from the official code in one way that does not change results: the upsampling mask and the
upsampled flow are computed only for the last iteration (the official test path computes and discards them at
every iteration).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from backbones.base import (PRECISIONS, Capabilities, FlowOutput, InputPadder, check_precision, freeze_batchnorm,
                            precision_autocast, validate_images)
from backbones.layers.corr import CORR_KINDS, DEFAULT_MEMORY_BUDGET, build_corr, dense_corr_bytes
from backbones.layers.encoders import BasicEncoder, SmallEncoder
from backbones.layers.grid import coords_grid
from backbones.layers.update import BasicUpdateBlock, GateContext, SmallUpdateBlock
from backbones.layers.upsample import convex_upsample, upsample_flow
from backbones.memory_plan import CallShape, MemoryPlan, default_memory_budget, parse_bytes, plan_memory
from backbones.registry import register

__all__ = ["Context", "RAFTBase", "RAFT", "RAFTSmall", "PADDING_MODES"]

PADDING_MODES = ("sintel", "kitti")
MEMORY_SAVERS = ("checkpoint_iterations", "checkpoint_encoder")

log = logging.getLogger("mlof.memory")


@dataclass
class Context:
    """What the context encoder gives the iterations (all batch-first, at 1/8 resolution).

    net: N x hidden x H x W initial GRU state (tanh); inp: N x context x H x W context features (relu);
    extras: network-specific batch-first tensors (GMA: ``attention`` N x heads x HW x HW).
    """

    net: torch.Tensor
    inp: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def cat(contexts: list["Context"]) -> "Context":
        """Concatenate along the batch axis (extras must be batch-first tensors)."""
        first = contexts[0]
        return Context(torch.cat([c.net for c in contexts]), torch.cat([c.inp for c in contexts]),
                       {k: _cat_extra([c.extras[k] for c in contexts]) for k in first.extras})


def _cat_extra(values: list[Any]) -> Any:
    """Batch-concatenate one extra: tensors, or objects with a ``cat`` (GMA's chunked attention)."""
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return type(values[0]).cat(values)


class RAFTBase(nn.Module):
    """Shared machinery of RAFT-style networks. Subclasses set the class attributes and create
    ``fnet``, ``cnet`` and ``update_block`` (and any extra modules) in their ``__init__``.

    Options (keyword-only, shared by every RAFT-family network):
        corr: "auto" (default: the official dense pyramid while it fits ``corr_memory_budget`` bytes, 2 GiB,
              else on-demand) | "dense" (official all-pairs pyramid) | "ondemand" (memory-bounded lookup).
        padding: "sintel" (pad both sides) | "kitti" (height padding at the bottom), replicate, to a multiple of 8.
        freeze_bn: keep BatchNorm layers in eval mode even in ``train()`` (official training after Chairs).
        dropout: Dropout2d probability on the encoder outputs (training only).
        mixed_precision: run encoders and update block under CUDA autocast (as official ``--mixed_precision``;
              a no-op on CPU, as official). Correlation always runs in float32.
        precision: "fp32" (default, exact) | "bf16" (CPU and CUDA) | "fp16" (CUDA only; ValueError on another
              device): autocast over the encoders, attention and update blocks. Correlation, coordinates, the
              GRU state, flow updates and upsampling weights stay float32; outputs are float32.
        channels_last: run the convolutions on channels-last tensors (None: with reduced precision on CUDA;
              on CPU the whole network measured slower channels-last, so off there).
        grad_checkpointing: with gradients, recompute each iteration (lookup, update, upsampling) during
              backward instead of storing its activations: memory no longer grows with ``iters`` (about a third
              more compute), in any train/eval mode. Hooks must then be free of side effects.
        checkpoint_encoder: with gradients, recompute each encoder block during backward (BatchNorm-safe).
        memory_budget: None (default: the savers above as set) | bytes | "8GB" | "auto" (a share of the
              available memory): choose correlation, checkpointing and attention chunking per call so that
              the call fits (``backbones.memory_plan``); the plan is logged (logger ``mlof.memory``) and kept
              in ``last_memory_plan``. Plans never change results beyond float rounding.
    """

    # What the family supports (``backbones.capabilities``); subclasses extend ``memory``.
    capabilities = Capabilities(iterations=True, warm_start=True, corr=CORR_KINDS, precisions=PRECISIONS,
                                memory=("memory_budget",) + MEMORY_SAVERS, bidirectional=True)
    memory_family = "raft"      # key of the per-iteration estimate in backbones.memory_plan
    encoder_kind = "basic"

    hidden_dim = 128
    context_dim = 128
    corr_levels = 4
    corr_radius = 4
    factor = 8  # resolution of the iterations: 1/8

    fnet: nn.Module
    cnet: nn.Module
    update_block: nn.Module

    def __init__(self, *, corr: str = "auto", padding: str = "sintel", freeze_bn: bool = False,
                 dropout: float = 0.0, mixed_precision: bool = False,
                 corr_memory_budget: int = DEFAULT_MEMORY_BUDGET, grad_checkpointing: bool = False,
                 precision: str = "fp32", channels_last: bool | None = None, checkpoint_encoder: bool = False,
                 memory_budget: int | float | str | None = None):
        super().__init__()
        if corr not in CORR_KINDS:
            raise ValueError(f"corr must be one of {', '.join(CORR_KINDS)}, got {corr!r}")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {', '.join(PADDING_MODES)}, got {padding!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if int(corr_memory_budget) <= 0:
            raise ValueError(f"corr_memory_budget must be a positive number of bytes, got {corr_memory_budget}")
        self.corr = corr
        self.padding = padding
        self.dropout = float(dropout)
        self.mixed_precision = bool(mixed_precision)
        self.corr_memory_budget = int(corr_memory_budget)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.checkpoint_encoder = bool(checkpoint_encoder)
        self.precision = check_precision(precision)
        if channels_last is not None and not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be True, False or None, got {channels_last!r}")
        self.channels_last = channels_last
        self.memory_budget = memory_budget
        self.last_memory_plan: MemoryPlan | None = None
        self._plan = MemoryPlan(corr=corr)
        self._logged_plans: set = set()
        self._freeze_bn = bool(freeze_bn)

    @property
    def memory_budget(self) -> int | str | None:
        """None (savers as set), a byte count, or "auto" (a share of the memory available at call time)."""
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int | float | str | None) -> None:
        if value is None or value == "auto":
            self._memory_budget = value
        else:
            self._memory_budget = parse_bytes(value, "memory_budget")

    # ----------------------------------------------------------------------------------------------- options
    @property
    def min_input_size(self) -> int:
        """Smallest accepted image side: 1 px (smaller inputs are padded, see ``min_padded_size``)."""
        return 1

    @property
    def min_padded_size(self) -> int:
        """Side the input is padded to at least (replicate), 128 px for 4 levels: the coarsest correlation
        level (1/8, average-pooled ``corr_levels - 1`` times) then keeps >= 2 rows and columns. With one row
        the official lookup divides by ``H - 1 = 0`` and returns NaN (official RAFT below 128 px)."""
        return self.factor * 2 ** (self.corr_levels - 1) * 2

    def padder(self, shape: tuple[int, ...] | torch.Size) -> InputPadder:
        """The padding of an input of ``shape`` (... x H x W): to a multiple of 8 and >= ``min_padded_size``,
        in this network's ``padding`` mode. Sizes the official code takes (>= 128 px) pad exactly as official."""
        return InputPadder(shape, divisor=self.factor, mode=self.padding, min_size=self.min_padded_size)

    def freeze_bn(self, enabled: bool = True) -> "RAFTBase":
        """Keep every BatchNorm layer in eval mode (running statistics frozen), also after ``train()``."""
        self._freeze_bn = bool(enabled)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "RAFTBase":
        super().train(mode)
        if self._freeze_bn:
            freeze_batchnorm(self)
        return self

    def param_group_prefixes(self) -> dict[str, list[str]]:
        """Module prefixes of the parameter groups used by ``backbones.param_groups`` (a partition)."""
        return {"feature_encoder": ["fnet"], "context_encoder": ["cnet"], "update_block": ["update_block"]}

    def _autocast(self, device: torch.device):
        if self.precision != "fp32":
            return precision_autocast(self.precision, device)
        if self.mixed_precision and device.type == "cuda":
            return torch.autocast(device_type="cuda")
        return contextlib.nullcontext()

    def uses_channels_last(self, device: torch.device) -> bool:
        """Whether convolutions run channels-last on ``device``: as set, or (None) for reduced precision on
        CUDA only -- on CPU the whole network measured slower channels-last (docs/performance.md)."""
        if self.channels_last is None:
            return self.precision != "fp32" and device.type == "cuda"
        return self.channels_last

    # ------------------------------------------------------------------------------------------- memory plan
    def _call_shape(self, h: int, w: int, n: int, iters: int, bidirectional: bool, grad: bool) -> CallShape:
        return CallShape(family=self.memory_family, encoder=self.encoder_kind, height=h, width=w,
                         batch=2 * n if bidirectional else n, images=2 * n, iters=iters, grad=grad,
                         attention=self._has_global_attention(), heads=getattr(self, "num_heads", 1),
                         patch_attention=self._has_patch_attention())

    def _has_global_attention(self) -> bool:
        return False

    def _has_patch_attention(self) -> bool:
        return False

    def memory_plan(self, h: int, w: int, n: int = 1, iters: int = 12, bidirectional: bool = False,
                    grad: bool = False, device: torch.device | str = "cpu") -> MemoryPlan:
        """The plan a call on padded N x 3 x h x w inputs would use (see ``memory_budget``)."""
        if self.memory_budget is None:
            return MemoryPlan(corr=self.corr, checkpoint_iterations=self.grad_checkpointing,
                              checkpoint_encoder=self.checkpoint_encoder,
                              attention_chunk=int(getattr(self, "attention_chunk", 0)),
                              checkpoint_attention=bool(getattr(self, "checkpoint_attention", False)))
        budget = default_memory_budget(device) if self.memory_budget == "auto" else int(self.memory_budget)
        shape = self._call_shape(h, w, n, iters, bidirectional, grad)
        fmap_shape = (shape.batch, 1, h // self.factor, w // self.factor)
        # the dense pyramid only while it is within corr_memory_budget, as without a plan (build_corr)
        plan = plan_memory(shape, budget, dense_corr_bytes(fmap_shape, self.corr_levels), self.corr,
                           dense_limit=self.corr_memory_budget)
        if self.grad_checkpointing:  # explicit options only add savers
            plan = replace(plan, checkpoint_iterations=True)
        if self.checkpoint_encoder:
            plan = replace(plan, checkpoint_encoder=True)
        if getattr(self, "checkpoint_attention", False):
            plan = replace(plan, checkpoint_attention=True)
        return plan

    def _apply_plan(self, plan: MemoryPlan, shape_key: tuple) -> None:
        self._plan = plan
        for encoder in (self.fnet, self.cnet):
            if hasattr(encoder, "checkpoint_blocks"):
                encoder.checkpoint_blocks = plan.checkpoint_encoder
        if self.memory_budget is not None:
            self.last_memory_plan = plan
            key = (shape_key, plan.corr, plan.checkpoint_iterations, plan.checkpoint_encoder, plan.attention_chunk,
                   plan.checkpoint_attention)
            if key not in self._logged_plans:
                self._logged_plans.add(key)
                log.info("%s memory plan for %s: %s", type(self).__name__, "x".join(map(str, shape_key)),
                         plan.describe())

    # ------------------------------------------------------------------------------------------------- hooks
    @staticmethod
    def normalize(image: torch.Tensor) -> torch.Tensor:
        """0..255 -> -1..1, as official."""
        return 2 * (image / 255.0) - 1.0

    def encode_features(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images N x 3 x H x W -> float32 feature maps N x C x H/8 x W/8 (one batched pass)."""
        with self._autocast(x1.device):
            fmap1, fmap2 = self.fnet([x1, x2])
        return fmap1.float(), fmap2.float()

    def encode_context(self, x1: torch.Tensor) -> Context:
        """Normalised image N x 3 x H x W -> Context (GRU state tanh, context features relu)."""
        with self._autocast(x1.device):
            net, inp = torch.split(self.cnet(x1), [self.hidden_dim, self.context_dim], dim=1)
            # the GRU state is kept in float32 (a no-op in fp32): it accumulates over the iterations
            return Context(torch.tanh(net).float(), torch.relu(inp))

    def make_corr(self, fmap1: torch.Tensor, fmap2: torch.Tensor, bidirectional: bool = False):
        """Correlation block of fmap1 -> fmap2 (N x C x H x W each); ``bidirectional``: of both directions, a
        block of batch 2N (fmap1 -> fmap2, then fmap2 -> fmap1)."""
        return build_corr(self._plan.corr, fmap1, fmap2, num_levels=self.corr_levels, radius=self.corr_radius,
                          memory_budget=self.corr_memory_budget, bidirectional=bidirectional)

    def update_step(self, ctx: Context, net: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor, itr: int,
                    compute_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One GRU iteration: -> (new GRU state, upsampling mask or None, flow update N x 2 x H/8 x W/8)."""
        with self._autocast(net.device):
            return self.update_block(net, ctx.inp, corr, flow, compute_mask=compute_mask, gates=ctx.extras.get("gates"))

    def gate_context(self, inp: torch.Tensor) -> GateContext | None:
        """The GRU gates' context part for context features ``inp`` (``GateContext``), computed once per call
        instead of at every iteration; None where the update block's GRU has no such split."""
        precompute = getattr(getattr(self.update_block, "gru", None), "precompute", None)
        if precompute is None:
            return None
        with self._autocast(inp.device):
            return precompute(inp)

    def upsample(self, flow_low: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Coarse flow N x 2 x H/8 x W/8 -> N x 2 x H x W (convex with a mask, bilinear without)."""
        if mask is None:
            return upsample_flow(flow_low, self.factor)
        return convex_upsample(flow_low, mask.float(), self.factor)

    # ------------------------------------------------------------------------------------------------- loop
    def refine(self, ctx: Context, corr_fn, coords0: torch.Tensor, coords1: torch.Tensor, iters: int,
               keep_all: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run ``iters`` GRU iterations from ``coords1``. Returns (coarse flow, final full-res flow, every
        iteration's full-res flow if ``keep_all`` else [])."""
        net = ctx.net
        ctx.extras["gates"] = self.gate_context(ctx.inp)
        flows: list[torch.Tensor] = []
        flow_up = None
        checkpointed = self._plan.checkpoint_iterations and torch.is_grad_enabled()
        # One autocast region around the loop (a no-op in fp32): autocast caches the reduced-precision copies
        # of the weights until its outermost region ends, so they are cast once per call, not per iteration.
        # Lookups, coordinates and upsampling stay float32 (they disable autocast or get float32 inputs).
        with self._autocast(coords0.device):
            for itr in range(iters):
                need_up = keep_all or itr == iters - 1
                args = (ctx, corr_fn, coords0, coords1.detach(), net, itr, need_up)  # official: lookups detached
                if checkpointed:
                    net, coords1, up = checkpoint(self._iteration, *args, use_reentrant=False)
                else:
                    net, coords1, up = self._iteration(*args)
                if need_up:
                    flow_up = up
                    if keep_all:
                        flows.append(flow_up)
        return coords1 - coords0, flow_up, flows

    def _iteration(self, ctx: Context, corr_fn, coords0: torch.Tensor, coords1: torch.Tensor, net: torch.Tensor,
                   itr: int, need_up: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Lookup, GRU update and (if ``need_up``) upsampling: -> (GRU state, new coords1, full-res flow)."""
        corr = corr_fn(coords1)
        net, mask, delta_flow = self.update_step(ctx, net, corr, coords1 - coords0, itr, need_up)
        # under autocast: coordinates and the GRU state stay float32 (no-ops in fp32)
        coords1 = coords1 + delta_flow.float()
        net = net.float()
        return net, coords1, (self.upsample(coords1 - coords0, mask) if need_up else None)

    def _prepare(self, im: torch.Tensor) -> torch.Tensor:
        """Padded image -> normalised network input (channels-last when that layout is in use)."""
        fmt = torch.channels_last if self.uses_channels_last(im.device) else torch.contiguous_format
        return self.normalize(im).contiguous(memory_format=fmt)

    def _check_call(self, image1: torch.Tensor, image2: torch.Tensor, iters: int) -> None:
        validate_images(image1, image2, min_size=self.min_input_size)
        if self.precision == "fp16" and image1.device.type != "cuda":
            raise ValueError(f"precision='fp16' needs a CUDA device, the input is on {image1.device.type}; "
                             f"use precision='bf16' on CPU")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be a positive integer, got {iters!r}")

    def _check_flow_init(self, name: str, flow_init: torch.Tensor | None, shape: tuple[int, ...],
                         input_hw: tuple[int, int] | None = None) -> None:
        if flow_init is None:
            return
        if not isinstance(flow_init, torch.Tensor) or tuple(flow_init.shape) != shape:
            got = tuple(flow_init.shape) if isinstance(flow_init, torch.Tensor) else type(flow_init).__name__
            for_input = f" for a {input_hw[0]}x{input_hw[1]} input" if input_hw else ""
            raise ValueError(f"{name} must be the coarse flow on the padded 1/8 grid{for_input}, i.e. shape "
                             f"{shape} (a previous call's out.flow_low), got {got}")
        if not bool(torch.isfinite(flow_init).all()):
            raise ValueError(f"{name} contains NaN or inf values")

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                flow_init: torch.Tensor | None = None, return_all: bool = False, bidirectional: bool = False,
                flow_init_bw: torch.Tensor | None = None) -> FlowOutput:
        """Flow from image1 to image2.

        image1, image2: float N x 3 x H x W, values 0..255, any size from 1 x 1 (padded to a multiple of 8 and
        to >= ``min_padded_size`` per side, replicate, and cropped back), any memory layout.
        flow_init: optional warm start, the coarse flow N x 2 x H'/8 x W'/8 on the padded grid (a previous
        ``out.flow_low``). Returns FlowOutput(flow N x 2 x H x W, flow_low on the padded 1/8 grid,
        flows = every iteration's full-res flow when training or ``return_all``, else []).
        bidirectional=True also estimates image2 -> image1 from the same features (one encoder pass) into
        ``out.flow_bw``, ``out.flow_bw_low``, ``out.flows_bw`` (warm start: ``flow_init_bw``).
        """
        self._check_call(image1, image2, iters)
        padder = self.padder(image1.shape)
        dtype = next(self.parameters()).dtype
        im1, im2 = padder.pad_tensors(image1.to(dtype), image2.to(dtype))
        n, _, h, w = im1.shape
        low_shape = (n, 2, h // self.factor, w // self.factor)
        self._check_flow_init("flow_init", flow_init, low_shape, tuple(image1.shape[-2:]))
        self._check_flow_init("flow_init_bw", flow_init_bw, low_shape, tuple(image1.shape[-2:]))

        x1, x2 = self._prepare(im1), self._prepare(im2)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        self._apply_plan(self.memory_plan(h, w, n, iters, bidirectional, grad, im1.device), (n, h, w))
        fmap1, fmap2 = self.encode_features(x1, x2)
        ctx = self.encode_context(x1)
        inits = [flow_init]
        if bidirectional:
            # Both directions in one batch of 2N: features computed once, context per image (separate calls
            # so BatchNorm in training mode sees the same batches as two single-direction calls).
            ctx = Context.cat([ctx, self.encode_context(x2)])
            inits.append(flow_init_bw)
            corr_fn = self.make_corr(fmap1, fmap2, bidirectional=True)   # batch 2N: fmap1->fmap2, fmap2->fmap1
        else:
            corr_fn = self.make_corr(fmap1, fmap2)

        batch = len(inits) * n
        coords0 = coords_grid(batch, h // self.factor, w // self.factor, device=fmap1.device)
        coords1 = coords0.clone()
        if any(f is not None for f in inits):
            init = torch.cat([f.float() if f is not None else torch.zeros(low_shape, device=coords0.device)
                              for f in inits])
            coords1 = coords1 + init
        keep_all = self.training or return_all
        flow_low, flow_up, flows = self.refine(ctx, corr_fn, coords0, coords1, iters, keep_all)

        flow = padder.unpad(flow_up)
        flows = [padder.unpad(f) for f in flows]
        if not bidirectional:
            return FlowOutput(flow=flow, flow_low=flow_low, flows=flows)
        return FlowOutput(flow=flow[:n], flow_low=flow_low[:n], flows=[f[:n] for f in flows],
                          flow_bw=flow[n:], flow_bw_low=flow_low[n:], flows_bw=[f[n:] for f in flows])


@register("raft")
class RAFT(RAFTBase):
    """RAFT: BasicEncoder features (256, instance norm) and context (128 + 128, batch norm), 4-level all-pairs
    correlation radius 4, SepConvGRU update with convex 8x upsampling. 5,257,536 parameters."""

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.fnet = BasicEncoder(output_dim=256, norm_fn="instance", dropout=self.dropout)
        self.cnet = BasicEncoder(output_dim=self.hidden_dim + self.context_dim, norm_fn="batch",
                                 dropout=self.dropout, float32_stem=False)
        self.update_block = BasicUpdateBlock(self.corr_levels, self.corr_radius, hidden_dim=self.hidden_dim,
                                             input_dim=self.context_dim)
        self.train(self.training)


@register("raft_small")
class RAFTSmall(RAFTBase):
    """RAFT-small: SmallEncoder features (128, instance norm) and context (96 + 64, no norm), radius 3,
    ConvGRU(96) update, bilinear 8x upsampling. 990,162 parameters."""

    hidden_dim = 96
    context_dim = 64
    corr_radius = 3
    memory_family = "raft_small"
    encoder_kind = "small"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.fnet = SmallEncoder(output_dim=128, norm_fn="instance", dropout=self.dropout)
        self.cnet = SmallEncoder(output_dim=self.hidden_dim + self.context_dim, norm_fn="none",
                                 dropout=self.dropout, float32_stem=False)
        self.update_block = SmallUpdateBlock(self.corr_levels, self.corr_radius, hidden_dim=self.hidden_dim,
                                             input_dim=self.context_dim)
