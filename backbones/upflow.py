"""UPFlow (Luo et al., CVPR 2021): unsupervised PWC-style pyramid with self-guided upsampling.

Weight-compatible with coolbeam/UPFlow_pytorch (``model/upflow.py``, the ``test.py`` configuration:
cost-volume feature normalisation per image and channel, self-guided upsampling on). Its checkpoint
``upflow_kitti2015.pth`` (a plain state dict, no prefix) loads as it is.

By default both flow directions are decoded, as the official network does: its occlusion masks and the
pyramid distillation loss need them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import (PRECISIONS, Capabilities, FlowOutput, as_float32, check_precision, precision_autocast,
                            validate_images)
from backbones.layers.grid import coords_grid, warp
from backbones.layers.pwc import cost_volume
from backbones.layers.upsample import resize_flow
from backbones.registry import register

__all__ = ["UPFlow", "IMAGE_MEAN", "IMAGE_SCALE", "SEARCH_RANGE", "forward_backward_occlusion"]

# Official input normalisation (dataset/kitti_dataset.py): (RGB - mean) / (1 / 0.0039216), RGB order as read by
# tf.image.decode_image during training (the means are listed in that channel order).
IMAGE_MEAN = (104.920005, 110.1753, 114.785955)
IMAGE_SCALE = 1.0 / 0.0039216
SEARCH_RANGE = 4
PYRAMID_CHANNELS = (3, 16, 32, 64, 96, 128, 196)      # image, then 1/2 ... 1/64
ESTIMATOR_CHANNELS = (128, 128, 96, 64, 32)
CONTEXT_CHANNELS = (128, 128, 128, 96, 64, 32, 2)
CONTEXT_DILATIONS = (1, 2, 4, 8, 16, 1, 1)
NUM_DECODED_LEVELS = 5                                  # 1/64 ... 1/4
# Warped features keep a pixel only where the bilinear sum of ones is >= 1 (official WarpingLayer_no_div).
WARP_MASK_THRESHOLD = 1.0
# The coarsest level (1/64) needs >= 2 pixels for the feature variance; inputs are padded up to this size.
MIN_SIDE = 128


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
          relu: bool = True) -> nn.Sequential:
    """Conv (+ LeakyReLU 0.1), as a Sequential so state-dict keys read ``<name>.0.weight`` like the official."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding=((kernel - 1) * dilation) // 2,
                                         dilation=dilation, bias=True)]
    if relu:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class FeaturePyramid(nn.Module):
    """Six stride-2 stages (16, 32, 64, 96, 128, 196 channels). Input N x 3 x H x W; returns the feature maps
    coarse to fine: [1/64, 1/32, 1/16, 1/8, 1/4, 1/2] (each side ceil-halved per stage)."""

    def __init__(self, channels: Sequence[int] = PYRAMID_CHANNELS):
        super().__init__()
        self.convs = nn.ModuleList(nn.Sequential(_conv(cin, cout, stride=2), _conv(cout, cout))
                                   for cin, cout in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.convs:
            x = stage(x)
            feats.append(x)
        return feats[::-1]


class DenseEstimator(nn.Module):
    """DenseNet-style estimator: each conv's output is concatenated in front of its input.

    Input N x ch_in x h x w; returns (features N x (ch_in + sum(channels)) x h x w, prediction N x ch_out x h x w).
    """

    def __init__(self, ch_in: int, channels: Sequence[int], ch_out: int = 2):
        super().__init__()
        n = ch_in
        for i, c in enumerate(channels, start=1):
            setattr(self, f"conv{i}", _conv(n, c))
            n += c
        self.num_layers = len(channels)
        self.out_channels = n
        self.conv_last = _conv(n, ch_out, relu=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i in range(1, self.num_layers + 1):
            x = torch.cat([getattr(self, f"conv{i}")(x), x], dim=1)
        return x, self.conv_last(x)


class ContextNetwork(nn.Module):
    """Dilated refinement convs (dilations 1, 2, 4, 8, 16, 1, 1): N x ch_in x h x w -> residual flow N x 2 x h x w."""

    def __init__(self, ch_in: int, channels: Sequence[int] = CONTEXT_CHANNELS):
        super().__init__()
        ins = (ch_in,) + tuple(channels[:-1])
        n = len(channels)
        self.convs = nn.Sequential(*(_conv(i, o, dilation=d, relu=k < n - 1)
                                     for k, (i, o, d) in enumerate(zip(ins, channels, CONTEXT_DILATIONS))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class SelfGuidedUpsampler(nn.Module):
    """Self-guided upsampling (SGU): refines a bilinearly upsampled flow with an interpolation flow and a blending
    mask predicted from the two images' features.

    ``refine(flow, feat1, feat2, out_flow=None)``: flow N x 2 x h x w on the features' grid; feat1/feat2
    N x 32 x h x w. The interpolation flow and sigmoid mask are predicted at h x w; with ``out_flow``
    (N x 2 x H x W, the bilinear flow at the output size) they are upsampled to H x W and applied to it.
    Result: warp(F, f_inter) * (1 - mask) + F * mask, F the flow being refined.
    """

    def __init__(self, feat_channels: int = 32):
        super().__init__()
        self.dense_estimator_mask = DenseEstimator(2 * feat_channels, (32, 32, 32, 16, 8), ch_out=3)
        # Image features for the last (1/4 -> full) step: N x 3 x H x W -> N x 32 x H/4 x W/4.
        self.upsample_output_conv = nn.Sequential(_conv(3, 16), _conv(16, 16, stride=2), _conv(16, 32),
                                                  _conv(32, 32, stride=2))

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.upsample_output_conv(image)

    def refine(self, flow: torch.Tensor, feat1: torch.Tensor, feat2: torch.Tensor,
               out_flow: torch.Tensor | None = None) -> torch.Tensor:
        if flow.shape[-2:] != feat1.shape[-2:]:
            flow = resize_flow(flow, feat1.shape[-2:])
        feat2_warped = warp(feat2, flow, mask_threshold=WARP_MASK_THRESHOLD)
        _, pred = self.dense_estimator_mask(torch.cat((feat1, feat2_warped), dim=1))
        inter_flow = pred[:, :2]
        mask = torch.sigmoid(pred[:, 2:3])
        if out_flow is not None:
            inter_flow = resize_flow(inter_flow, out_flow.shape[-2:])
            mask = resize_flow(mask, out_flow.shape[-2:], scale=False)
            flow = out_flow
        return warp(flow, inter_flow) * (1 - mask) + flow * mask


def _normalize_features(x: torch.Tensor) -> torch.Tensor:
    """Centre and scale each image's channels by their own spatial mean and (unbiased) std, as the official
    ``normalize_features(moments_across_channels=False, moments_across_images=False)``."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-16)


def _abs_sum(x: torch.Tensor) -> torch.Tensor:
    return x.abs().sum(dim=1, keepdim=True)


def forward_backward_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha1: float = 0.1,
                               alpha2: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """UPFlow's occlusion masks (``occ_check_model``: ``for_back_check``, ``obj`` mode), 1 = visible.

    flow_fw, flow_bw: N x 2 x H x W. A pixel is visible when ``|f + f_bw(x + f)|_1 < alpha1 (|f|_1 + |f_bw|_1)
    + alpha2`` (L1 norms over the two components, as the official ``length_sq_v0``), or when its flow leaves
    the image (out-of-frame pixels are not counted as occluded). Returns (occ_fw, occ_bw), N x 1 x H x W floats.
    """
    mag = _abs_sum(flow_fw) + _abs_sum(flow_bw)
    thresh = alpha1 * mag + alpha2
    masks = []
    for f, g in ((flow_fw, flow_bw), (flow_bw, flow_fw)):
        visible = _abs_sum(f + warp(g, f)) < thresh
        n, _, h, w = f.shape
        pos = coords_grid(n, h, w, device=f.device, dtype=f.dtype) + f
        px, py = pos[:, 0:1], pos[:, 1:2]
        outgoing = (px > w - 1) | (px < 0) | (py > h - 1) | (py < 0)
        masks.append((visible | outgoing).to(f.dtype))
    return masks[0], masks[1]


def _pad_amounts(h: int, w: int, min_side: int) -> list[int]:
    ph, pw = max(min_side - h, 0), max(min_side - w, 0)
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


@register("upflow")
class UPFlow(nn.Module):
    """UPFlow network (3,494,549 parameters).

    ``forward(image1, image2, iters=12, flow_init=None, return_all=False) -> FlowOutput``; images float
    N x 3 x H x W, RGB 0..255. ``iters`` is accepted and ignored (no iterations); ``flow_init`` is not supported
    (ValueError). Inputs with a side under 128 px are replicate-padded (the official network yields NaN there,
    its 1/64 level being 1 pixel) and the outputs cropped back.

    bidirectional: decode 2 -> 1 as well (official behaviour; needed for the occlusion masks and the backward
    terms of the unsupervised losses). ``False`` halves the cost when only the forward flow is wanted.

    out.flow        N x 2 x H x W forward flow (pixels).
    out.flow_low    None (no warm start).
    out.flows       (training or return_all) the five pyramid flows, bilinearly upsampled to H x W and rescaled
                    (as the official 'upup' pyramid distillation does), coarse to fine, then out.flow.
    out.pyramid     the decoded forward flows at their own resolution, finest first (1/4 ... 1/64 of the padded
                    input, in pixels of that level).
    when bidirectional also out.flow_bw N x 2 x H x W, out.pyramid_bw, and out.extras "occ_fw"/"occ_bw"
                    N x 1 x H x W (1 = visible). (The constructor option, not a call keyword: mlof's adaptation
                    runs the swapped pair as its own call, ``Capabilities.bidirectional`` is False.)

    The two directions run as two batches of N rather than one of 2N, and each image goes through the encoder
    on its own, as in the official code: convolution results depend on the batch size in the last float bit,
    and UPFlow's hard warping mask turns such bits into visible flow differences.
    """

    capabilities = Capabilities(iterations=False, precisions=PRECISIONS)

    def __init__(self, bidirectional: bool = True, precision: str = "fp32") -> None:
        super().__init__()
        self.bidirectional = bool(bidirectional)
        self.precision = check_precision(precision)
        self.feature_pyramid_extractor = FeaturePyramid()
        num_ch_in = (2 * SEARCH_RANGE + 1) ** 2 + 32 + 2
        self.flow_estimators = DenseEstimator(num_ch_in, ESTIMATOR_CHANNELS)
        self.context_networks = ContextNetwork(self.flow_estimators.out_channels + 2)
        self.conv_1x1 = nn.ModuleList(_conv(c, 32, kernel=1) for c in (196, 128, 96, 64, 32))
        self.sgi_model = SelfGuidedUpsampler()

    def param_group_prefixes(self) -> dict[str, list[str]]:
        """Module prefixes of the parameter groups; together they partition the parameters. UPFlow has no context
        encoder (``context_networks`` is the dilated refinement head of the decoder): ``context_encoder`` is empty;
        ``upsampler`` is the self-guided upsampling module."""
        return {
            "feature_encoder": ["feature_pyramid_extractor", "conv_1x1"],
            "context_encoder": [],
            "update_block": ["flow_estimators", "context_networks"],
            "upsampler": ["sgi_model"],
        }

    @staticmethod
    def normalize(image: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 -> the official network input, computed in float64 as the official data loader does."""
        wide = torch.float64 if image.device.type != "mps" else image.dtype
        mean = torch.tensor(IMAGE_MEAN, dtype=wide, device=image.device).view(1, 3, 1, 1)
        return ((image.to(wide) - mean) / IMAGE_SCALE).to(image.dtype)

    def _decode_level(self, level: int, flow: torch.Tensor, feat1: torch.Tensor, feat2: torch.Tensor,
                      red1: torch.Tensor, red2: torch.Tensor) -> torch.Tensor:
        """One pyramid level, first -> second image. flow: the previous level's flow (N x 2 x h' x w', zeros at
        the coarsest level); feat*: pyramid features, red*: their 32-channel 1x1 reductions (N x C x h x w)."""
        flow_up = resize_flow(flow, feat1.shape[-2:])
        if level == 0:
            feat2_warped = feat2
        else:
            flow_up = self.sgi_model.refine(flow_up, red1, red2)
            feat2_warped = warp(feat2, flow_up, mask_threshold=WARP_MASK_THRESHOLD)
        corr = cost_volume(_normalize_features(feat1), _normalize_features(feat2_warped), SEARCH_RANGE,
                           reduction="mean")
        corr = F.leaky_relu(corr, 0.1)
        feat, res = self.flow_estimators(torch.cat([corr, red1, flow_up], dim=1))
        fine = self.context_networks(torch.cat([feat, flow_up + res], dim=1))
        return flow_up + (res + fine)

    def _decode(self, x1: torch.Tensor, feats1: list[torch.Tensor], reds1: list[torch.Tensor],
                img_feat1: torch.Tensor, feats2: list[torch.Tensor], reds2: list[torch.Tensor],
                img_feat2: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution flow first -> second image (N x 2 x H x W) and the pyramid flows coarse to fine."""
        flow = feats1[0].new_zeros(feats1[0].shape[0], 2, *feats1[0].shape[-2:])
        levels = []
        for level in range(NUM_DECODED_LEVELS):
            flow = self._decode_level(level, flow, feats1[level], feats2[level], reds1[level], reds2[level])
            levels.append(flow)
        final = self.sgi_model.refine(flow, img_feat1, img_feat2, out_flow=resize_flow(flow, x1.shape[-2:]))
        return final, levels

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                flow_init: torch.Tensor | None = None, return_all: bool = False) -> FlowOutput:
        """See the class docstring; under ``precision`` bf16/fp16 the convolutions autocast, the cost volumes
        stay float32 and every output is float32."""
        validate_images(image1, image2)
        with precision_autocast(self.precision, image1.device):
            return as_float32(self._forward(image1, image2, flow_init, return_all))

    def _forward(self, image1: torch.Tensor, image2: torch.Tensor, flow_init: torch.Tensor | None,
                 return_all: bool) -> FlowOutput:
        if flow_init is not None:
            raise ValueError("upflow does not take flow_init (no warm start): pass flow_init=None")
        h, w = image1.shape[-2:]
        pad = _pad_amounts(h, w, MIN_SIDE)
        x1, x2 = self.normalize(image1), self.normalize(image2)
        if any(pad):
            # padded sizes (the official code gives NaN there): one layout, so channels_last or strided inputs
            # give the same flow. Unpadded inputs keep the caller's layout as the official code does: the
            # convolutions round differently per layout and the hard warping mask amplifies that.
            x1 = F.pad(x1.contiguous(), pad, mode="replicate").contiguous()
            x2 = F.pad(x2.contiguous(), pad, mode="replicate").contiguous()

        per_image = []
        for x in (x1, x2):
            feats = self.feature_pyramid_extractor(x)[:NUM_DECODED_LEVELS]
            reds = [conv(f) for conv, f in zip(self.conv_1x1, feats)]
            per_image.append((feats, reds, self.sgi_model.image_features(x)))
        (f1, r1, i1), (f2, r2, i2) = per_image
        final_fw, levels_fw = self._decode(x1, f1, r1, i1, f2, r2, i2)

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., pad[2]:t.shape[-2] - pad[3], pad[0]:t.shape[-1] - pad[1]]

        out = FlowOutput(flow=crop(final_fw), pyramid=levels_fw[::-1])
        if self.bidirectional:
            final_bw, levels_bw = self._decode(x2, f2, r2, i2, f1, r1, i1)
            occ_fw, occ_bw = forward_backward_occlusion(final_fw, final_bw)
            out.flow_bw, out.pyramid_bw = crop(final_bw), levels_bw[::-1]
            out.extras.update(occ_fw=crop(occ_fw), occ_bw=crop(occ_bw))
        if self.training or return_all:
            out.flows = [crop(resize_flow(f, x1.shape[-2:])) for f in levels_fw] + [out.flow]
        return out
