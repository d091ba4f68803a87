"""Supervised losses: RAFT's sequence loss and the multi-level loss of pyramid networks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import FlowOutput

from .common import LossInputError, check_flow

__all__ = ["sequence_loss", "multilevel_loss", "pyramid_supervision", "downsample_gt", "PWC_WEIGHTS"]

# Default per-level weights of ``multilevel_loss`` (PWC-Net's numbers, applied finest first). Networks with their own
# official weights declare them (LiteFlowNet2: ``backbones.liteflownet2.LOSS_WEIGHTS``, see pyramid_supervision).
PWC_WEIGHTS = (0.32, 0.08, 0.02, 0.01, 0.005)


def _valid_mask(gt: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(gt[:, 0])
    if valid.dim() == 4 and valid.shape[1] == 1:
        valid = valid[:, 0]
    if valid.shape != gt[:, 0].shape:
        raise LossInputError(f"valid must be N x H x W like gt, got {tuple(valid.shape)} for gt {tuple(gt.shape)}")
    return valid.to(gt.dtype)


def sequence_loss(flows: Sequence[torch.Tensor], gt: torch.Tensor, valid: torch.Tensor | None = None,
                  gamma: float = 0.85, max_flow: float = 400.0) -> tuple[torch.Tensor, dict[str, float]]:
    """RAFT's sequence loss, exactly as ``train.py::sequence_loss`` of the official release.

    flows: the n full-resolution predictions N x 2 x H x W (first to last); gt: N x 2 x H x W;
    valid: N x H x W (bool/float, None = all valid). Pixels count when valid >= 0.5 and |gt| < max_flow.
    loss = sum_i gamma^(n-i-1) * mean(valid * |flow_i - gt|) -- the mean runs over ALL pixels and both
    channels (invalid ones contribute 0), as in RAFT.
    Returns (loss, metrics) with metrics {"epe", "1px", "3px", "5px"} of the last prediction over valid
    pixels (python floats; 0.0 when no pixel is valid).
    """
    if len(flows) == 0:
        raise LossInputError("flows must hold at least one prediction")
    check_flow("gt", gt)
    for i, f in enumerate(flows):
        check_flow(f"flows[{i}]", f, gt)
    mag = torch.sqrt((gt ** 2).sum(dim=1))
    ok = (_valid_mask(gt, valid) >= 0.5) & (mag < max_flow)
    n = len(flows)
    loss = gt.new_zeros(())
    for i, flow in enumerate(flows):
        weight = gamma ** (n - i - 1)
        loss = loss + weight * (ok[:, None] * (flow - gt).abs()).mean()
    with torch.no_grad():
        epe = torch.sqrt(((flows[-1] - gt) ** 2).sum(dim=1))[ok]
        if epe.numel() == 0:
            metrics = {"epe": 0.0, "1px": 0.0, "3px": 0.0, "5px": 0.0}
        else:
            metrics = {"epe": epe.mean().item(), "1px": (epe < 1).float().mean().item(),
                       "3px": (epe < 3).float().mean().item(), "5px": (epe < 5).float().mean().item()}
    return loss, metrics


def pyramid_supervision(model: nn.Module, out: FlowOutput) -> tuple[list[torch.Tensor], tuple[float, ...]]:
    """The flows of a pyramid network's output that ``multilevel_loss`` supervises, finest first, and their weights.

    A network that declares ``pyramid_loss_weights()`` (LiteFlowNet2: its official weights) is supervised on
    ``[out.flow, *out.pyramid]`` with those; other networks on ``out.pyramid`` (else their full-resolution
    predictions, finest first) with ``PWC_WEIGHTS``.
    """
    declared = getattr(model, "pyramid_loss_weights", None)
    if declared is not None:
        return [out.flow, *out.pyramid], tuple(declared())
    levels = out.pyramid or (out.flows or [out.flow])[::-1]
    return list(levels[:len(PWC_WEIGHTS)]), PWC_WEIGHTS


def downsample_gt(gt: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Downsample a (possibly sparse) ground truth to ``size``: valid-weighted area average, vectors rescaled.

    gt: N x 2 x H x W; valid: N x H x W float/bool. A coarse pixel is valid when any fine pixel in its cell
    is; its flow is the mean of the valid fine vectors, times (w/W, h/H) so that it is in coarse pixels.
    """
    h, w = gt.shape[-2:]
    if (h, w) == tuple(size):
        return gt, valid.to(gt.dtype)
    v = valid.to(gt.dtype)[:, None]
    num = F.adaptive_avg_pool2d(gt * v, size)
    den = F.adaptive_avg_pool2d(v, size)
    flow = num / den.clamp_min(1e-6)
    flow = flow * gt.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)
    return flow, (den[:, 0] > 0).to(gt.dtype)


def multilevel_loss(flows: Sequence[torch.Tensor], gt: torch.Tensor, valid: torch.Tensor | None = None,
                    weights: Sequence[float] = PWC_WEIGHTS, flow_scale: float = 1.0,
                    norm: str = "l2") -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-level supervised loss of pyramid networks (PWC-Net, LiteFlowNet, UPFlow), finest level first.

    flows: per-level predictions N x 2 x h_l x w_l, FINEST FIRST, each in pixels of its own resolution
        (the convention of ``FlowOutput.extras`` pyramids); weights[l] goes with flows[l] (PWC_WEIGHTS default;
        extra levels beyond len(weights) are an error).
    gt: N x 2 x H x W full-resolution ground truth in pixels; valid: N x H x W or None. The gt is
        downsampled to every level with ``downsample_gt`` (valid-weighted area mean, vectors rescaled).
    flow_scale: networks that regress scaled flow (the Caffe PWC/LiteFlowNet convention of flow / 20)
        pass 1/20 here: the target becomes gt_level * flow_scale.
    norm: "l2" (per-pixel end-point error, PWC-Net) or "l1" (sum of |du| + |dv|).
    Per level: mean over valid pixels; total = sum_l weights[l] * level_loss. Returns (loss, metrics) with
    metrics {"level_<l>": float, "epe": EPE of the finest level in full-resolution pixels}.
    """
    if len(flows) == 0:
        raise LossInputError("flows must hold at least one level")
    if len(flows) > len(weights):
        raise LossInputError(f"{len(flows)} levels but only {len(weights)} weights")
    if norm not in ("l1", "l2"):
        raise LossInputError(f"norm must be 'l1' or 'l2', got {norm!r}")
    check_flow("gt", gt)
    v_full = _valid_mask(gt, valid)
    loss = gt.new_zeros(())
    metrics: dict[str, float] = {}
    for i, (flow, weight) in enumerate(zip(flows, weights)):
        check_flow(f"flows[{i}]", flow, gt, same_size=False)
        target, v = downsample_gt(gt, v_full, tuple(flow.shape[-2:]))
        diff = flow - target * flow_scale
        err = torch.sqrt((diff ** 2).sum(1) + 1e-12) if norm == "l2" else diff.abs().sum(1)
        level = (err * v).sum() / v.sum().clamp_min(1.0)
        loss = loss + weight * level
        metrics[f"level_{i}"] = float(level.detach())
    with torch.no_grad():
        finest = flows[0] / flow_scale
        scale = gt.new_tensor([gt.shape[-1] / finest.shape[-1], gt.shape[-2] / finest.shape[-2]]).view(1, 2, 1, 1)
        up = F.interpolate(finest, size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False) * scale
        epe = torch.sqrt(((up - gt) ** 2).sum(1))
        metrics["epe"] = float((epe * v_full).sum() / v_full.sum().clamp_min(1.0))
    return loss, metrics
