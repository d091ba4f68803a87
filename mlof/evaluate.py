"""Evaluation under the RAFT protocol, per dataset, with optional warm start and test-time adaptation.

Protocol (RAFT lineage; see ANCHORS.md):

===========  ==========  =======  ==============================================================
dataset      iterations  padding  headline metrics (both averagings are always reported)
===========  ==========  =======  ==============================================================
sintel       32          sintel   ``epe`` pooled over pixels, ``outlier_{1,3,5}px``; occ/noc if masks
kitti15/12   24          kitti    ``epe_per_image`` (mean of per-image EPE), ``fl_all`` pooled (%)
chairs       24          sintel   ``epe`` pooled
others       24          sintel   ``epe`` pooled
===========  ==========  =======  ==============================================================

Inputs are padded to a multiple of 8 with replicate padding (``sintel`` mode splits it on both sides,
``kitti`` mode puts the height padding at the bottom) and the prediction is cropped back.
Warm start initialises each pair with the previous pair's coarse flow, forward-splatted (only within a
scene, pairs in order). ``adapt`` options run ``mlof.adapt`` per pair first (theta* in the MLOF tables).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from backbones.base import FlowOutput, InputPadder
from mlof.train.config import DataConfig, ModelConfig, RunConfig

__all__ = ["EvaluateConfig", "Protocol", "PROTOCOLS", "protocol_for", "predict", "forward_interpolate", "evaluate",
           "evaluate_dataset", "headline", "same_sequence"]


@dataclass
class EvaluateConfig(RunConfig):
    """``mlof evaluate``: the RAFT protocol on one dataset."""

    name: str = "evaluate"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=None, checkpoint="default"))
    data: DataConfig = field(default_factory=DataConfig)   # options merge key by key: keep defaults empty
    iters: Optional[int] = None      # default: the dataset's protocol (32 Sintel, 24 KITTI / Chairs)
    padding: Optional[str] = None    # sintel | kitti; default: the dataset's protocol
    warm_start: bool = False
    max_samples: int = 0             # 0: all
    adapt: Optional[Dict[str, Any]] = None   # mlof.adapt options: score after per-pair adaptation (theta*)
    images: int = 4                  # panels logged to TensorBoard


@dataclass(frozen=True)
class Protocol:
    iters: int
    padding: str
    headline: tuple[str, ...]


PROTOCOLS: dict[str, Protocol] = {
    "sintel": Protocol(32, "sintel", ("epe", "outlier_1px", "outlier_3px", "outlier_5px")),
    "kitti15": Protocol(24, "kitti", ("epe_per_image", "fl_all")),
    "kitti12": Protocol(24, "kitti", ("epe_per_image", "fl_all")),
    "hd1k": Protocol(24, "kitti", ("epe_per_image", "fl_all")),
    "chairs": Protocol(24, "sintel", ("epe",)),
}
_DEFAULT = Protocol(24, "sintel", ("epe", "epe_per_image"))


def protocol_for(dataset: str) -> Protocol:
    """The RAFT-protocol settings of a dataset name (``build_dataset`` names)."""
    return PROTOCOLS.get(dataset, _DEFAULT)


def headline(summary: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """The metrics a paper reports for ``dataset`` (see the table in the module docstring)."""
    return {k: summary[k] for k in protocol_for(dataset).headline if k in summary}


@torch.no_grad()
def predict(model: nn.Module, img1: torch.Tensor, img2: torch.Tensor, iters: int = 12, padding: str = "sintel",
            flow_init: torch.Tensor | None = None) -> FlowOutput:
    """Padded inference: images N x 3 x H x W (0..255) -> FlowOutput with ``flow`` N x 2 x H x W.

    ``flow_low`` stays on the padded coarse grid (what ``flow_init`` of the next call takes).
    """
    padder = InputPadder(img1.shape, mode=padding)
    p1, p2 = padder.pad_tensors(img1, img2)
    kwargs = {"iters": iters}
    if flow_init is not None:
        kwargs["flow_init"] = flow_init
    out = model(p1, p2, **kwargs)
    return FlowOutput(flow=padder.unpad(out.flow), flow_low=out.flow_low, flows=[], extras=out.extras)


def forward_interpolate(flow: torch.Tensor) -> torch.Tensor:
    """Warm start: splat a coarse flow 2 x h x w forward along itself, fill holes by nearest neighbour.

    Returns 2 x h x w on the input's device (RAFT's ``forward_interpolate``).
    """
    from scipy.interpolate import griddata

    f = flow.detach().float().cpu().numpy()
    dx, dy = f
    h, w = dx.shape
    x0, y0 = np.meshgrid(np.arange(w), np.arange(h))
    x1, y1 = (x0 + dx).reshape(-1), (y0 + dy).reshape(-1)
    dx, dy = dx.reshape(-1), dy.reshape(-1)
    keep = (x1 > 0) & (x1 < w) & (y1 > 0) & (y1 < h)
    if not keep.any():
        return torch.zeros_like(flow)
    pts = np.stack([x1[keep], y1[keep]], axis=1)
    fx = griddata(pts, dx[keep], (x0, y0), method="nearest", fill_value=0)
    fy = griddata(pts, dy[keep], (x0, y0), method="nearest", fill_value=0)
    return torch.from_numpy(np.stack([fx, fy]).astype(np.float32)).to(flow.device)


def same_sequence(prev: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> bool:
    """Whether the pair of ``meta`` directly follows the pair of ``prev`` (same scene, next frame)."""
    if prev is None:
        return False
    try:
        return prev.get("scene") == meta.get("scene") and int(meta.get("frame")) == int(prev.get("frame")) + 1
    except (TypeError, ValueError):
        return False


def _batch1(sample: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return sample["img1"][None].to(device), sample["img2"][None].to(device)


def evaluate(model: nn.Module, dataset: Iterable[Mapping[str, Any]], *, dataset_name: str = "",
             iters: int | None = None, padding: str | None = None, warm_start: bool = False,
             max_samples: int = 0, adapt: Mapping[str, Any] | None = None, progress: bool = False,
             on_sample: Callable[[int, Mapping[str, Any], torch.Tensor, dict], None] | None = None) -> dict[str, Any]:
    """Score ``model`` on every sample of ``dataset`` that has ground truth; returns a summary dict.

    iters / padding default to the dataset's protocol (``protocol_for(dataset_name)``). With ``adapt``
    (keyword options of ``mlof.adapt``), each pair is first adapted without supervision, from ``model``.
    ``on_sample(index, sample, flow 2xHxW, per-image metrics)`` is called after every pair (logging hooks).
    Summary: every metric of ``FlowMetricAccumulator.summary()`` (pooled and ``_per_image``, ``_noc`` /
    ``_occ`` where occlusion masks exist), ``headline``, ``iters``, ``padding``, ``seconds_per_pair``.
    """
    from tqdm import tqdm

    from mlof.metrics import FlowMetricAccumulator

    proto = protocol_for(dataset_name)
    iters = proto.iters if iters is None else int(iters)
    padding = proto.padding if padding is None else padding
    if warm_start and adapt:
        raise ValueError("warm_start and adapt cannot be combined (adaptation runs its own predictions)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    acc = FlowMetricAccumulator()
    n_total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    if max_samples and n_total is not None:
        n_total = min(n_total, max_samples)
    prev_meta, prev_low = None, None
    t_total, n = 0.0, 0
    try:
        for i, sample in enumerate(tqdm(dataset, total=n_total, disable=not progress, desc="evaluate")):
            if max_samples and i >= max_samples:
                break
            if "flow" not in sample:
                raise ValueError(f"dataset {dataset_name or type(dataset).__name__}: sample {i} has no ground-truth "
                                 f"flow; evaluate needs annotated pairs (use `mlof infer` for unannotated ones)")
            img1, img2 = _batch1(sample, device)
            meta = sample.get("meta") or {}
            t0 = time.perf_counter()
            if adapt:
                import mlof

                res = mlof.adapt(model, (img1[0], img2[0]), **dict(adapt))
                flow = res.flows[0].reshape(1, 2, *img1.shape[-2:])
            else:
                init = None
                if warm_start and prev_low is not None and same_sequence(prev_meta, meta):
                    init = forward_interpolate(prev_low[0])[None]
                out = predict(model, img1, img2, iters=iters, padding=padding, flow_init=init)
                flow, prev_low, prev_meta = out.flow, out.flow_low, meta
            t_total += time.perf_counter() - t0
            n += 1
            per = acc.add(flow[0].cpu(), sample["flow"], sample.get("valid"), sample.get("occ"))
            if on_sample is not None:
                on_sample(i, sample, flow[0], {k: float(v[0]) for k, v in per.items()})
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError(f"dataset {dataset_name or type(dataset).__name__} has no samples to evaluate")
    summary: dict[str, Any] = acc.summary()
    summary.update({"dataset": dataset_name, "iters": iters, "padding": padding, "warm_start": warm_start,
                    "adapted": bool(adapt), "seconds_per_pair": t_total / n})
    summary["headline"] = headline(summary, dataset_name)
    return summary


def evaluate_dataset(model: nn.Module, name: str, root: str | None = None, split: str = "training",
                     options: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Build ``mlof.data.build_dataset(name, root, split, **options)`` and ``evaluate`` on it."""
    from mlof.data import build_dataset

    ds = build_dataset(name, root, split=split, **dict(options or {}))
    return evaluate(model, ds, dataset_name=name, **kwargs)
