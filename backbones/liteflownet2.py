"""LiteFlowNet2 (Hui, Tang, Loy, TPAMI 2020), with the state-dict layout of mmflow's PyTorch port.

NetC: a 6-level feature pyramid (32, 32, 64, 96, 128, 192 channels; level L has stride 2^(L-1)).
NetE, levels 6 -> 3: at each level a matching unit M (warp the second image's features by the upsampled flow,
local correlation with max displacement 3 -- on a stride-2 grid with dilated displacements at level 3 -- and a
conv stack predicting a flow residual), a sub-pixel unit S (features, warped features and flow -> residual) and
a regularisation unit R (feature-driven local convolution: a per-pixel softmax kernel, patch 5 at levels 3-4 and
3 at levels 5-6, applied to the flow). Flows are kept divided by 20 (in full-resolution pixels); level 3
(1/4 resolution) is upsampled bilinearly to the input size for the final output.

mmflow's released checkpoints (``{'meta': ..., 'state_dict': ...}``, keys ``encoder.*`` / ``decoder.*``) load
as they are; see docs/backbones_pwc.md for the key layout. The correlation is pure torch (mmflow needs the
CUDA-only mmcv op), so the network runs on CPU too.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import (PRECISIONS, Capabilities, FlowOutput, InputPadder, as_float32, check_precision,
                            precision_autocast, validate_images)
from backbones.layers.grid import warp
from backbones.layers.pwc import cost_volume
from backbones.registry import register

__all__ = ["LiteFlowNet2", "CONFIGS", "LOSS_WEIGHTS", "BilinearUpsample"]

# mmflow feeds BGR / 255 minus these per-channel means (taken from sniklaus/pytorch-liteflownet).
IMAGE_MEAN_BGR = (0.411618, 0.434631, 0.454253)
FLOW_DIV = 20.0
# Smallest padded side: the 1/32 level (level 6) then keeps >= 2 rows and columns.
MIN_PADDED_SIDE = 64
# Encoder stages: (out channels, number of convs, stride, first kernel size), levels 1..6.
ENCODER_STAGES = ((32, 1, 1, 7), (32, 3, 2, 3), (64, 2, 2, 3), (96, 2, 2, 3), (128, 1, 2, 3), (192, 1, 2, 3))
FEAT_CHANNELS = {3: 64, 4: 96, 5: 128, 6: 192}
PATCH_SIZE = {3: 5, 4: 5, 5: 3, 6: 3}
MAX_DISPLACEMENT = 3
# Level 3 correlates on a stride-2 grid with displacements dilated by 2, then upsamples the cost volume.
CORR_STRIDE = {3: 2, 4: 1, 5: 1, 6: 1}
M_CHANNELS = (128, 128, 96, 64, 32)
S_CHANNELS = (128, 128, 96, 64, 32)
R_CHANNELS = (128, 128, 64, 64, 32, 32)
# Warped features keep a pixel where the bilinear sum of ones exceeds 0.9999 (mmflow Warp(use_mask=True)).
WARP_MASK_THRESHOLD = 0.9999
# Multi-level EPE weights of the paper and mmflow (configs/_base_/models/liteflownet2/*.py: MultiLevelEPE), the one
# home of these numbers; "level0" = the level-3 flow upsampled to full resolution.
LOSS_WEIGHTS = {"level6": 0.32, "level5": 0.08, "level4": 0.02, "level3": 0.01, "level0": 6.25e-4}
# mmflow's model-zoo configurations: decoded levels, whether the last level has R, whether "level0" is trained.
CONFIGS: dict[str, dict] = {
    "pre-M6S6": dict(levels=(6,), regularize_last=False, full_res_loss=False),
    "pre-M6S6R6": dict(levels=(6,), regularize_last=True, full_res_loss=False),
    "pre-M5S5R5": dict(levels=(6, 5), regularize_last=True, full_res_loss=False),
    "pre-M4S4R4": dict(levels=(6, 5, 4), regularize_last=True, full_res_loss=False),
    "pre": dict(levels=(6, 5, 4, 3), regularize_last=True, full_res_loss=True),
    "full": dict(levels=(6, 5, 4, 3), regularize_last=True, full_res_loss=True),
}
_ALIASES = {"pre-M3S3R3": "pre"}


class ConvAct(nn.Module):
    """Conv2d + LeakyReLU(0.1) with mmcv ``ConvModule`` key names (``<name>.conv.weight``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _Block(nn.Module):
    """``layers``: a Sequential of ConvAct (keys ``layers.<i>.conv.*``, as mmflow's encoder stages and units)."""

    def __init__(self, convs: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.Sequential(*convs)


def _conv_stack(cin: int, channels: Sequence[int]) -> list[ConvAct]:
    """3x3 ConvAct layers cin -> channels[0] -> channels[1] -> ..."""
    return [ConvAct(i, o) for i, o in zip((cin,) + tuple(channels[:-1]), channels)]


class NetC(nn.Module):
    """Feature pyramid. Input N x 3 x H x W (H, W multiples of 32); returns {level: features} for levels 1..6,
    level L of size H / 2^(L-1)."""

    def __init__(self):
        super().__init__()
        stages, cin = [], 3
        for cout, num, stride, kernel in ENCODER_STAGES:
            stages.append(_Block([ConvAct(cin, cout, kernel, stride)] + [ConvAct(cout, cout) for _ in range(num - 1)]))
            cin = cout
        self.layers = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = {}
        for level, stage in enumerate(self.layers, start=1):
            x = stage.layers(x)
            feats[level] = x
        return feats


def _mmflow_bilinear_filter(channels: int, kernel: int = 4) -> torch.Tensor:
    """mmflow's ``Upsample.bilinear_upsampling_filter`` (meant as Caffe's BilinearFilter), C x 1 x k x k.

    Reproduced exactly, including that its row coordinate is ``(i / k) % k`` with Python 3 true division, so the
    kernel is not the separable bilinear one: mmflow stores this buffer in its checkpoints and its models were
    trained with it.
    """
    f = math.ceil(kernel / 2.0)
    c = (2 * f - 1 - f % 2) / 2.0 / f
    weight = torch.zeros(kernel * kernel)
    for i in range(kernel * kernel):
        x = i % kernel
        y = (i / kernel) % kernel
        weight[i] = (1 - abs(x / f - c)) * (1 - abs(y / f - c))
    return weight.view(1, 1, kernel, kernel).repeat(channels, 1, 1, 1)


class BilinearUpsample(nn.Module):
    """Fixed 2x upsampling by a grouped transposed convolution (N x C x h x w -> N x C x 2h x 2w); the filter is
    the persistent buffer ``weight`` (C x 1 x 4 x 4), as in mmflow checkpoints."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("weight", _mmflow_bilinear_filter(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight.to(x.dtype), stride=2, padding=1, groups=self.channels)


class MatchingUnit(_Block):
    """NetM: flow = upflow + conv(leaky(corr(feat1, warp(feat2, upflow))))."""

    def __init__(self, level: int):
        d = 2 * MAX_DISPLACEMENT + 1
        super().__init__(_conv_stack(d * d, M_CHANNELS))
        self.stride = CORR_STRIDE[level]
        k = PATCH_SIZE[level]
        self.pred_flow = nn.Conv2d(M_CHANNELS[-1], 2, k, padding=k // 2)
        if self.stride > 1:
            self.corr_up = BilinearUpsample(d * d)

    def forward(self, feat1: torch.Tensor, feat2: torch.Tensor, upflow: torch.Tensor | None,
                multiplier: float) -> torch.Tensor:
        warped = feat2 if upflow is None else warp(feat2, upflow * multiplier, mask_threshold=WARP_MASK_THRESHOLD,
                                                   strict=True)
        corr = cost_volume(feat1, warped, MAX_DISPLACEMENT, stride=self.stride, dilation_patch=self.stride)
        corr = F.leaky_relu(corr, 0.1)
        if self.stride > 1:
            corr = self.corr_up(corr)
        res = self.pred_flow(self.layers(corr))
        return res if upflow is None else upflow + res


class SubpixelUnit(_Block):
    """NetS: flow = flow + conv(cat(feat1, warp(feat2, flow), flow))."""

    def __init__(self, level: int):
        super().__init__(_conv_stack(2 * FEAT_CHANNELS[level] + 2, S_CHANNELS))
        k = PATCH_SIZE[level]
        self.pred_flow = nn.Conv2d(S_CHANNELS[-1], 2, k, padding=k // 2)

    def forward(self, feat1: torch.Tensor, feat2: torch.Tensor, flow: torch.Tensor,
                multiplier: float) -> torch.Tensor:
        warped = warp(feat2, flow * multiplier, mask_threshold=WARP_MASK_THRESHOLD, strict=True)
        return flow + self.pred_flow(self.layers(torch.cat((feat1, warped, flow), dim=1)))


class RegularizationUnit(_Block):
    """NetR: feature-driven local convolution. From the brightness error |I1 - warp(I2)|, the mean-free flow and
    features, predict per pixel a k*k kernel (softmax of -d^2) and return the kernel-weighted average of the flow
    over each k x k neighbourhood (zero padded)."""

    def __init__(self, level: int):
        rfeat = max(FEAT_CHANNELS[level], R_CHANNELS[0])
        super().__init__(_conv_stack(1 + 2 + rfeat, R_CHANNELS))
        k = self.patch_size = PATCH_SIZE[level]
        cin = R_CHANNELS[-1]
        if k > 3:   # separable k x 1 then 1 x k, as mmflow
            self.dist_layer = nn.Sequential(nn.Conv2d(cin, k * k, (k, 1), padding=(k // 2, 0)),
                                            nn.Conv2d(k * k, k * k, (1, k), padding=(0, k // 2)))
        else:
            self.dist_layer = nn.Conv2d(cin, k * k, k, padding=k // 2)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, feat: torch.Tensor, flow: torch.Tensor,
                multiplier: float) -> torch.Tensor:
        warped = warp(img2, flow * multiplier, mask_threshold=WARP_MASK_THRESHOLD, strict=True)
        diff = torch.norm(img1 - warped, p=2, dim=1, keepdim=True)
        flow_nomean = flow - flow.mean(dim=(2, 3), keepdim=True)
        dist = self.dist_layer(self.layers(torch.cat((diff, flow_nomean, feat), dim=1)))
        kernel = F.softmax(-dist ** 2, dim=1)
        k = self.patch_size
        out = []
        for c in range(2):
            patches = F.unfold(flow[:, c:c + 1], kernel_size=k, padding=k // 2).view_as(kernel)
            out.append((kernel * patches).sum(dim=1, keepdim=True))
        return torch.cat(out, dim=1)


class NetE(nn.Module):
    """Cascaded flow inference, coarse to fine. ``decoders[f"level{L}"]`` holds NetM, NetS, optionally NetR and
    ``rfeat_layer`` (1x1 conv lifting levels 3-4 features to 128 channels), and ``upflow_layer`` (2x flow
    upsampling towards the next level) on every level but the last."""

    def __init__(self, levels: Sequence[int], regularize_last: bool):
        super().__init__()
        self.levels = tuple(sorted(levels, reverse=True))
        last = self.levels[-1]
        decoders = {}
        for level in sorted(self.levels):     # mmflow registers them level3, level4, ...
            parts = nn.ModuleDict()
            with_r = level != last or regularize_last
            if with_r and FEAT_CHANNELS[level] < R_CHANNELS[0]:
                parts["rfeat_layer"] = ConvAct(FEAT_CHANNELS[level], R_CHANNELS[0], kernel=1)
            parts["NetM"] = MatchingUnit(level)
            parts["NetS"] = SubpixelUnit(level)
            if with_r:
                parts["NetR"] = RegularizationUnit(level)
            if level != last:
                parts["upflow_layer"] = BilinearUpsample(2)
            decoders[f"level{level}"] = parts
        self.decoders = nn.ModuleDict(decoders)

    @staticmethod
    def multiplier(level: int) -> float:
        """Factor turning the stored flow (full-resolution pixels / 20) into pixels of ``level``."""
        return FLOW_DIV * 2.0 ** (1 - level)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, feats1: dict[int, torch.Tensor],
                feats2: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """img*: normalised images N x 3 x H x W; feats*: NetC pyramids. Returns {level: flow / 20}, N x 2 x h x w."""
        preds: dict[int, torch.Tensor] = {}
        upflow = None
        for level in self.levels:
            parts = self.decoders[f"level{level}"]
            f1, f2 = feats1[level], feats2[level]
            mult = self.multiplier(level)
            flow = parts["NetM"](f1, f2, upflow, mult)
            flow = parts["NetS"](f1, f2, flow, mult)
            if "NetR" in parts:
                size = f1.shape[-2:]
                i1 = F.interpolate(img1, size=size, mode="bilinear", align_corners=False)
                i2 = F.interpolate(img2, size=size, mode="bilinear", align_corners=False)
                rfeat = parts["rfeat_layer"](f1) if "rfeat_layer" in parts else f1
                flow = parts["NetR"](i1, i2, rfeat, flow, mult)
            preds[level] = flow
            if "upflow_layer" in parts:
                upflow = parts["upflow_layer"](flow)
        return preds


@register("liteflownet2")
class LiteFlowNet2(nn.Module):
    """LiteFlowNet2 in one of mmflow's model-zoo configurations (``config``, see ``CONFIGS``).

    ``forward(image1, image2, iters=12, flow_init=None, return_all=False) -> FlowOutput``; images float
    N x 3 x H x W, RGB 0..255 (converted inside to mmflow's BGR/255 minus mean). ``iters`` is accepted and
    ignored; ``flow_init`` is not supported (ValueError). Inputs are replicate-padded to multiples of 32 and the
    output is cropped back.

    out.flow     N x 2 x H x W: the finest decoded level upsampled bilinearly to the input size, x 20 (pixels).
    out.flow_low None (no warm start).
    out.flows    (training or return_all) every decoded level upsampled the same way, coarse to fine.
    out.pyramid  the decoded flows at their level's resolution in that level's pixels, finest first.
    out.extras   "raw_flows": {"level6": ..., ...} the stored flows (full-resolution pixels / 20, padded grid);
                 "pad": [left, right, top, bottom] padding applied.

    Supervised training weights the levels by ``LOSS_WEIGHTS`` (``pyramid_loss_weights``).
    """

    capabilities = Capabilities(iterations=False, precisions=PRECISIONS)

    def __init__(self, config: str = "full", precision: str = "fp32"):
        super().__init__()
        key = _ALIASES.get(config, config)
        if key not in CONFIGS:
            raise ValueError(f"unknown liteflownet2 config {config!r}; choose one of "
                             f"{', '.join(list(CONFIGS) + list(_ALIASES))}")
        self.config = key
        self.precision = check_precision(precision)
        spec = CONFIGS[key]
        self.full_res_loss = spec["full_res_loss"]
        self.encoder = NetC()
        self.decoder = NetE(spec["levels"], spec["regularize_last"])
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # mmflow's init_cfg: Kaiming normal (fan_in, leaky_relu) for convolutions, zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    def param_group_prefixes(self) -> dict[str, list[str]]:
        """``feature_encoder`` (NetC) and ``update_block`` (NetE) partition the parameters; LiteFlowNet2 has no
        context encoder, so ``context_encoder`` is empty. ``matching``, ``subpixel`` and ``regularization`` are
        finer selections inside ``update_block`` (the M, S and R units of every level)."""
        levels = [f"decoder.decoders.level{level}" for level in self.decoder.levels]
        dec = self.decoder.decoders
        return {
            "feature_encoder": ["encoder"],
            "context_encoder": [],
            "update_block": ["decoder"],
            "matching": [f"{p}.NetM" for p in levels],
            "subpixel": [f"{p}.NetS" for p in levels],
            "regularization": [f"{p}.{m}" for p, lv in zip(levels, self.decoder.levels)
                               for m in ("NetR", "rfeat_layer") if m in dec[f"level{lv}"]],
        }

    def pyramid_loss_weights(self) -> tuple[float, ...]:
        """``LOSS_WEIGHTS`` of this configuration, finest first, aligned with ``[out.flow, *out.pyramid]``: the
        full-resolution flow ("level0": 0 for the stages mmflow does not train it in), then every decoded level
        (what ``mlof pretrain`` trains it with, through ``mlof.losses.pyramid_supervision``)."""
        full_res = LOSS_WEIGHTS["level0"] if self.full_res_loss else 0.0
        return (full_res, *(LOSS_WEIGHTS[f"level{level}"] for level in reversed(self.decoder.levels)))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 -> BGR / 255 minus mmflow's means."""
        return image.flip(1) / 255.0 - self.image_mean.to(image.dtype)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                flow_init: torch.Tensor | None = None, return_all: bool = False) -> FlowOutput:
        """Flow image1 -> image2 (N x 3 x H x W, 0..255); ``iters`` is ignored. Under ``precision`` bf16/fp16
        the convolutions autocast, the cost volumes stay float32 and every output is float32."""
        validate_images(image1, image2)
        with precision_autocast(self.precision, image1.device):
            return as_float32(self._forward(image1, image2, flow_init, return_all))

    def _forward(self, image1: torch.Tensor, image2: torch.Tensor, flow_init: torch.Tensor | None,
                 return_all: bool) -> FlowOutput:
        if flow_init is not None:
            raise ValueError("liteflownet2 does not take flow_init (no warm start): pass flow_init=None")
        n = image1.shape[0]
        # Multiple of 32 (the 1/32 level) and >= 64 px, so the coarsest level keeps >= 2 rows and columns.
        padder = InputPadder(image1.shape, divisor=32, min_size=MIN_PADDED_SIDE)
        x1, x2 = padder.pad_tensors(self.normalize(image1.contiguous()), self.normalize(image2.contiguous()))
        feats = self.encoder(torch.cat([x1, x2]))
        preds = self.decoder(x1, x2, {k: v[:n] for k, v in feats.items()}, {k: v[n:] for k, v in feats.items()})
        size = x1.shape[-2:]

        def full_res(flow: torch.Tensor) -> torch.Tensor:
            return padder.unpad(F.interpolate(flow, size=size, mode="bilinear", align_corners=False) * FLOW_DIV)

        levels = self.decoder.levels
        out = FlowOutput(flow=full_res(preds[levels[-1]]),
                         pyramid=[preds[lv] * NetE.multiplier(lv) for lv in reversed(levels)],
                         extras={"raw_flows": {f"level{lv}": preds[lv] for lv in levels}, "pad": padder.pad})
        if self.training or return_all:
            out.flows = [full_res(preds[lv]) for lv in levels[:-1]] + [out.flow]
        return out
