"""MemFlow (Dong & Fu, CVPR 2024): optical flow with a memory of motion features along a video.

Official layout (DQiaole/MemFlow, ``configs/things_memflownet.py``: MemFlowNet_skflow, GMA-SK2): RAFT
encoders (``cnet`` batch norm, ``fnet`` instance norm) and all-pairs correlation, an SKFlow-style update block
(:mod:`backbones.memflow_parts`) and ``att`` (GMA attention; only ``to_qk`` is used: context query and key).
At every iteration the motion features are turned into values (``update_block.aggregator.to_v``) and the
query of each pixel reads, by attention, the values of the memory (past frames) plus the current frame; the
readout, scaled by ``aggregator.gamma``, is added to the motion features. After a pair, its key and last
motion value enter the memory, which keeps a bounded number of frames (:class:`MotionMemory`).

Calls:
    model(image1, image2)                       two frames, fresh (empty) memory: the official inference step on a
                                                2-frame clip; ``iters`` defaults to ``decoder_depth`` (15).
    model.infer_sequence(frames)                a video: one FlowOutput per consecutive pair, memory carried along
                                                (official ``inference.py`` InferenceCore loop).
    model.step(image1, image2, memory=...)      one pair of a stream, reading and updating ``memory``
                                                (``model.memory`` unless given; ``model.reset_memory()``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from backbones.base import FlowOutput, InputPadder, InvalidImageError
from backbones.layers.attention import Attention
from backbones.layers.encoders import BasicEncoder
from backbones.layers.grid import coords_grid
from backbones.layers.update import corr_planes
from backbones.memflow_parts import MotionMemory, SKUpdateBlock, read_memory
from backbones.raft import Context, RAFTBase
from backbones.registry import register

__all__ = ["MemFlow", "MotionMemory", "TRAIN_AVG_LENGTH"]

# Official readout-scale constant per training config: (crop H * W / 64) * 3 / 2 (things: 400x720 crops).
TRAIN_AVG_LENGTH = {"things": (400 * 720 // 64) * 3 / 2, "sintel": (368 * 768 // 64) * 3 / 2}


@register("memflow")
class MemFlow(RAFTBase):
    """MemFlow (MemFlowNet_skflow, things config). 6,273,149 parameters.

    Options: ``decoder_depth`` (15: the config's evaluation depth; used when ``iters`` is not given),
    ``train_avg_length`` (readout-scale constant of the training config, default things' 6750),
    ``memory_frames`` (2) / ``memory_keep`` (1): once the memory holds ``memory_frames`` frames only the
    newest ``memory_keep`` stay (official max/min mid-term frames); and the RAFT-family options of
    :class:`backbones.raft.RAFTBase` (``corr``, ``padding``, ``freeze_bn``, ``dropout``, ``mixed_precision``,
    ``corr_memory_budget``).
    """

    capabilities = replace(RAFTBase.capabilities, video_memory=True)
    memory_family = "memflow"

    def __init__(self, *, decoder_depth: int = 15, train_avg_length: float = TRAIN_AVG_LENGTH["things"],
                 memory_frames: int = 2, memory_keep: int = 1, **options: Any):
        super().__init__(**options)
        if isinstance(decoder_depth, bool) or not isinstance(decoder_depth, int) or decoder_depth < 1:
            raise ValueError(f"decoder_depth must be a positive integer, got {decoder_depth!r}")
        if not float(train_avg_length) > 1.0:
            raise ValueError(f"train_avg_length must be > 1, got {train_avg_length!r}")
        self.decoder_depth = decoder_depth
        self.train_avg_length = float(train_avg_length)
        self.memory_frames, self.memory_keep = int(memory_frames), int(memory_keep)
        self.cnet = BasicEncoder(output_dim=self.hidden_dim + self.context_dim, norm_fn="batch",
                                 dropout=self.dropout, float32_stem=False)
        self.fnet = BasicEncoder(output_dim=256, norm_fn="instance", dropout=self.dropout)
        self.update_block = SKUpdateBlock(corr_planes(self.corr_levels, self.corr_radius), self.hidden_dim,
                                          self.context_dim)
        # The official module is GMA's Attention (relative position tables included, unused here).
        self.att = Attention(dim=self.context_dim, heads=1, dim_head=self.context_dim, max_pos_size=160)
        self.memory = self.new_memory()  # the stream memory of ``step``; never read by other calls
        self.train(self.training)

    # --------------------------------------------------------------------------------------------- memory
    def new_memory(self) -> MotionMemory:
        """An empty memory with this model's bounds."""
        return MotionMemory(self.memory_frames, self.memory_keep)

    def reset_memory(self) -> None:
        """Forget the stream memory used by :meth:`step` (call it before another video)."""
        self.memory = self.new_memory()

    def param_group_prefixes(self) -> dict[str, list[str]]:
        # The memory readout's value projection and gain (update_block.aggregator) stay in update_block, where
        # the official layout puts them, so the groups partition the parameters.
        return {**super().param_group_prefixes(), "attention": ["att"]}

    # ---------------------------------------------------------------------------------------------- hooks
    def encode_context(self, x1: torch.Tensor) -> Context:
        ctx = super().encode_context(x1)
        with self._autocast(x1.device):
            query, key = self.att.to_qk(ctx.inp).chunk(2, dim=1)
        ctx.extras.update(query=query, key=key)
        return ctx

    def update_step(self, ctx: Context, net: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor, itr: int,
                    compute_mask: bool):
        with self._autocast(net.device):
            motion, value = self.update_block.motion_and_value(flow, corr)
            readout = read_memory(ctx.extras["query"], ctx.extras["key"], value, ctx.extras.get("memory_keys"),
                                  ctx.extras.get("memory_values"), self.att.scale, self.train_avg_length)
            motion_global = motion + self.update_block.aggregator.gamma * readout
            # the last iteration's value is what the memory stores for this frame
            ctx.extras["value"] = value
            return self.update_block(net, ctx.inp, motion, motion_global, compute_mask=compute_mask)

    # ---------------------------------------------------------------------------------------------- calls
    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int | None = None,
                flow_init: torch.Tensor | None = None, return_all: bool = False, bidirectional: bool = False,
                flow_init_bw: torch.Tensor | None = None) -> FlowOutput:
        """Flow image1 -> image2 with an empty memory (see :meth:`RAFTBase.forward` for the arguments).

        ``iters`` defaults to ``decoder_depth``. The official evaluation uses 15, the reference outputs 12.
        """
        iters = self.decoder_depth if iters is None else iters
        return super().forward(image1, image2, iters=iters, flow_init=flow_init, return_all=return_all,
                               bidirectional=bidirectional, flow_init_bw=flow_init_bw)

    def step(self, image1: torch.Tensor, image2: torch.Tensor, memory: MotionMemory | None = None,
             iters: int | None = None, flow_init: torch.Tensor | None = None, return_all: bool = False,
             remember: bool = True) -> FlowOutput:
        """One pair of a video: read ``memory`` (default: ``self.memory``), then add this pair to it.

        image1, image2: float N x 3 x H x W in 0..255 (every pair of one memory must have the same size).
        ``remember=False`` reads without adding (the official loop does so for the last pair).
        Returns FlowOutput as ``forward``.
        """
        memory = self.memory if memory is None else memory
        iters = self.decoder_depth if iters is None else iters
        self._check_call(image1, image2, iters)
        memory.check_image_size(*image1.shape[-2:])
        padder = self.padder(image1.shape)
        dtype = next(self.parameters()).dtype
        im1, im2 = padder.pad_tensors(image1.to(dtype), image2.to(dtype))
        x1, x2 = self._prepare(im1), self._prepare(im2)
        fmap1, fmap2 = self.encode_features(x1, x2)
        return self._pair(x1, fmap1, fmap2, padder, memory, iters, flow_init, return_all, remember)

    def infer_sequence(self, frames: Sequence[torch.Tensor] | torch.Tensor, iters: int | None = None,
                       memory: MotionMemory | None = None, return_all: bool = False) -> list[FlowOutput]:
        """Flow for every consecutive pair of a video, memory carried along (official ``inference.py`` loop).

        frames: a list of 3 x H x W (or 1 x 3 x H x W) tensors, a T x 3 x H x W tensor, or N x T x 3 x H x W
        for N videos of equal length (memory per video); float 0..255, T >= 2.
        memory: None starts from an empty memory private to this call; a :class:`MotionMemory` continues from
        it and is updated in place (so a long video can be processed in chunks that overlap by one frame).
        Returns T - 1 FlowOutputs (``flow`` N x 2 x H x W, N = 1 for a single video).
        Each frame's features are computed once and shared by its two pairs.
        """
        clip = self._as_clip(frames)                                    # N x T x 3 x H x W
        iters = self.decoder_depth if iters is None else iters
        memory = self.new_memory() if memory is None else memory
        t = clip.shape[1]
        self._check_call(clip[:, 0], clip[:, 1], iters)                 # sizes, dtype, channels
        if not bool(torch.isfinite(clip).all()):
            bad = [i for i in range(t) if not bool(torch.isfinite(clip[:, i]).all())]
            raise InvalidImageError(f"frame {bad[0]} contains NaN or inf pixels")
        memory.check_image_size(*clip.shape[-2:])
        clip = clip.to(next(self.parameters()).dtype)
        padder = self.padder(clip.shape)
        outputs = []
        x_next = self._prepare(padder.pad_tensors(clip[:, 0])[0])
        f_next = self._features(x_next)
        for i in range(t - 1):
            x1, fmap1 = x_next, f_next
            x_next = self._prepare(padder.pad_tensors(clip[:, i + 1])[0])
            f_next = self._features(x_next)
            outputs.append(self._pair(x1, fmap1, f_next, padder, memory, iters, None, return_all, True))
        return outputs

    # -------------------------------------------------------------------------------------------- helpers
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of one normalised padded frame (instance norm: independent of the other frame)."""
        with self._autocast(x.device):
            return self.fnet(x).float()

    def _pair(self, x1: torch.Tensor, fmap1: torch.Tensor, fmap2: torch.Tensor, padder: InputPadder,
              memory: MotionMemory, iters: int, flow_init: torch.Tensor | None, return_all: bool,
              remember: bool) -> FlowOutput:
        ctx = self.encode_context(x1)
        memory.check_compatible(ctx.extras["key"])
        if not memory.empty:
            ctx.extras.update(memory_keys=memory.keys, memory_values=memory.values)
        n, _, h, w = x1.shape
        low_shape = (n, 2, h // self.factor, w // self.factor)
        self._check_flow_init("flow_init", flow_init, low_shape)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        self._apply_plan(self.memory_plan(h, w, n, iters, False, grad, x1.device), (n, h, w))
        coords0 = coords_grid(n, *low_shape[-2:], device=x1.device)
        coords1 = coords0 if flow_init is None else coords0 + flow_init.float()
        keep_all = self.training or return_all
        flow_low, flow_up, flows = self.refine(ctx, self.make_corr(fmap1, fmap2), coords0, coords1, iters,
                                               keep_all)
        if remember:
            # detached: the memory outlives this pair's graph (bounded memory also in grad mode)
            memory.add(ctx.extras["key"].detach(), ctx.extras["value"].detach(), (padder.ht, padder.wd))
        return FlowOutput(flow=padder.unpad(flow_up), flow_low=flow_low, flows=[padder.unpad(f) for f in flows])

    @staticmethod
    def _as_clip(frames: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Frames in any accepted layout -> N x T x 3 x H x W (``InvalidImageError`` naming the problem otherwise)."""
        if isinstance(frames, torch.Tensor):
            if frames.dim() == 4:
                clip = frames[None]
            elif frames.dim() == 5:
                clip = frames
            else:
                raise InvalidImageError(f"frames must be T x 3 x H x W or N x T x 3 x H x W, got shape "
                                 f"{tuple(frames.shape)}")
        elif isinstance(frames, (list, tuple)) and all(isinstance(f, torch.Tensor) for f in frames):
            items = [f[0] if f.dim() == 4 and f.shape[0] == 1 else f for f in frames]
            bad = [i for i, f in enumerate(items) if f.dim() != 3]
            if bad:
                raise InvalidImageError(f"frames[{bad[0]}] must be 3 x H x W (or 1 x 3 x H x W), got shape "
                                 f"{tuple(frames[bad[0]].shape)}")
            shapes = {tuple(f.shape) for f in items}
            if len(shapes) > 1:
                raise InvalidImageError(f"all frames must have the same shape, got {sorted(shapes)}")
            clip = torch.stack(items)[None] if items else None
        else:
            raise InvalidImageError(f"frames must be a tensor or a list of tensors, got {type(frames).__name__}")
        if clip is None or clip.shape[1] < 2:
            raise InvalidImageError(f"frames must hold at least 2 frames, got {0 if clip is None else clip.shape[1]}")
        return clip
