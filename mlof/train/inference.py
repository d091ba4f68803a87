"""``mlof adapt`` (meta-inference) and ``mlof infer``: predictions for frames, folders, videos and datasets.

``adapt`` runs MLOF's meta-inference: every pair is adapted independently from the loaded weights
(``mlof.adapt``, the release's 3 AdamW steps of the unsupervised loss), or, with ``online=true``, the
weights are carried along the sequence (``mlof.adapt(..., mode="online")``, G's ``OnlineAdapter``). Pairs with ground truth are scored before
and after adaptation. ``infer`` only predicts. Both write ``flows/<stem>.flo`` (or .png / .pfm) and colour
images ``flows/<stem>_color.png`` into the run folder, and panels to TensorBoard.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mlof.train.config import ConfigError, DataConfig, ModelConfig, RunConfig
from mlof.train.distributed import resolve_device
from mlof.train.rundir import RunDir
from mlof.train.seeding import seed_everything
from mlof.train.setup import build_model
from mlof.train.sources import open_pairs, pairs_to_frames

__all__ = ["AdaptConfig", "InferConfig", "run_adapt", "run_infer"]


@dataclass
class AdaptConfig(RunConfig):
    """``mlof adapt``: meta-inference (unsupervised test-time adaptation) on frames, a video or a dataset."""

    name: str = "adapt"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=None, checkpoint="default"))
    input: Any = None                   # None/clip: bundled clip; folder; video; [img, img, ...]
    data: Optional[DataConfig] = None   # or a dataset (pairs with ground truth are scored)
    max_pairs: int = 0                  # 0: all
    pairs: Optional[List[int]] = None   # only these pair indices (e.g. [1]: the clip's annotated pair)
    online: bool = False                # carry the weights along the sequence (OnlineAdapter)
    iters: int = 12
    options: Dict[str, Any] = field(default_factory=dict)   # keywords of mlof.adapt / OnlineAdapter
    save_flows: bool = True
    flow_format: str = "flo"            # flo | png (KITTI 16-bit) | pfm


@dataclass
class InferConfig(RunConfig):
    """``mlof infer``: flow for consecutive pairs of frames, a folder, a video or a dataset."""

    name: str = "infer"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=None, checkpoint="default"))
    input: Any = None
    data: Optional[DataConfig] = None
    max_pairs: int = 0
    pairs: Optional[List[int]] = None
    iters: int = 12
    padding: str = "sintel"             # sintel | kitti (RAFT padding modes)
    warm_start: bool = False            # initialise each pair with the previous coarse flow
    save_flows: bool = True
    flow_format: str = "flo"
    color: bool = True                  # also write colour-coded PNGs


def _stem(sample: dict[str, Any], i: int) -> str:
    meta = sample.get("meta") or {}
    if meta.get("name"):
        return str(meta["name"])
    scene = str(meta.get("scene") or "").replace("/", "_")
    frame = meta.get("frame", i)
    return f"{scene + '_' if scene else ''}{int(frame):06d}" if isinstance(frame, (int, np.integer)) else f"{i:06d}"


def _write_flow(run: RunDir, stem: str, flow: torch.Tensor, fmt: str, color: bool) -> None:
    """flow: 2 x H x W."""
    if not run.is_main:
        return
    from mlof.io import write_flow, write_image
    from mlof.viz import flow_to_rgb

    if fmt not in ("flo", "png", "pfm"):
        raise ConfigError(f"flow_format: {fmt!r} is not one of flo, png, pfm")
    out = run.subdir("flows")
    f = flow.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32)
    write_flow(out / f"{stem}.{fmt}", f, clip=True) if fmt == "png" else write_flow(out / f"{stem}.{fmt}", f)
    if color:
        write_image(out / f"{stem}_color.png", flow_to_rgb(f))


def _setup(cfg: DictConfig) -> tuple[Any, torch.device, RunDir, Sequence[dict[str, Any]], str]:
    obj = OmegaConf.to_object(cfg)
    run = RunDir.for_config(obj)        # refuses a folder holding a run now; creates it at the first output
    device = resolve_device(obj.device)
    seed_everything(obj.seed)
    pairs, what = open_pairs(obj.input, obj.data)
    if len(pairs) == 0:
        raise ValueError(f"input: {what} has no frame pairs")
    if obj.pairs:
        bad = [i for i in obj.pairs if not 0 <= int(i) < len(pairs)]
        if bad:
            raise ConfigError(f"pairs: {bad} out of range for the {len(pairs)} pairs of {what}")
        pairs = _Pick(pairs, [int(i) for i in obj.pairs])
    if obj.max_pairs:
        pairs = _Pick(pairs, list(range(min(obj.max_pairs, len(pairs)))))
    run.save_config(cfg)
    return obj, device, run, pairs, what


class _Pick:
    """A selection of an input's pairs (keeps the rest unloaded)."""

    def __init__(self, pairs: Sequence[dict[str, Any]], index: list[int]):
        self.pairs, self.index = pairs, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pairs[self.index[i]]


def _epe(flow: torch.Tensor, sample: dict[str, Any]) -> float | None:
    if "flow" not in sample:
        return None
    from mlof.metrics import epe

    return float(epe(flow.detach().cpu(), sample["flow"], sample.get("valid")))


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def run_adapt(cfg: DictConfig, progress: bool = True) -> dict[str, Any]:
    """Meta-inference over the input; returns (and writes to ``metrics.json``) per-pair and mean EPEs."""
    import mlof
    from mlof.train.pretrain import panel

    obj, device, run, pairs, what = _setup(cfg)
    n = len(pairs)
    options = {"iters": obj.iters, **dict(obj.options)}
    model = build_model(obj.model, device).eval()
    t0 = time.perf_counter()
    if obj.online:
        if obj.data is not None:
            raise ConfigError("online: adapting along a sequence needs consecutive frames (input=folder/video/"
                              "clip), not a dataset of independent pairs")
        res = mlof.adapt(model, pairs_to_frames(pairs, n), mode="online", **options)
        results = [(res.flows_before[i][0], res.flows[i][0], [h for h in res.history if h.get("pair") == i])
                   for i in range(n)]
    else:
        results = []
        for i in tqdm(range(n), desc="adapt (per pair)", disable=not progress):
            res = mlof.adapt(model, (pairs[i]["img1"], pairs[i]["img2"]), **options)
            results.append((res.flows_before[0][0], res.flows[0][0], list(res.history)))
    records: list[dict[str, Any]] = []
    for i, (before, after, history) in enumerate(results):
        sample = pairs[i]
        rec = {"pair": i, "stem": _stem(sample, i), "epe_before": _epe(before, sample),
               "epe_after": _epe(after, sample), "loss_first": _scalar(history[0].get("total")) if history else None,
               "loss_last": _scalar(history[-1].get("total")) if history else None,
               "guard": [str(h["guard"]) for h in history if "guard" in h]}
        records.append(rec)
        if obj.save_flows:
            _write_flow(run, rec["stem"], after, obj.flow_format, True)
        run.log_scalars(i, {k: v for k, v in rec.items() if k.startswith(("epe", "loss")) and v is not None},
                        prefix="adapt/")
        for j, h in enumerate(history):
            run.log_scalars(j, {k: v for k, v in h.items() if isinstance(v, float)}, prefix=f"adapt/pair{i}_")
        if i < 4:
            batch = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in sample.items()}
            run.log_image(i, "adapt/before", panel(batch, before[None]))
            run.log_image(i, "adapt/after", panel(batch, after[None]))
    summary = {"input": what, "pairs": n, "mode": "online" if obj.online else "per-pair",
               "epe_before": _mean([r["epe_before"] for r in records]),
               "epe_after": _mean([r["epe_after"] for r in records]),
               "scored_pairs": sum(r["epe_before"] is not None for r in records),
               "seconds": time.perf_counter() - t0, "per_pair": records, "run_dir": str(run.path),
               "checkpoint": obj.model.checkpoint, "options": options}
    run.write_metrics(summary)
    run.close()
    return summary


def _scalar(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def run_infer(cfg: DictConfig, progress: bool = True) -> dict[str, Any]:
    """Predict every pair of the input and write flow files and colour images."""
    from mlof.evaluate import forward_interpolate, predict, same_sequence

    obj, device, run, pairs, what = _setup(cfg)
    if obj.padding not in ("sintel", "kitti"):
        raise ConfigError(f"padding: {obj.padding!r} is not one of sintel, kitti")
    model = build_model(obj.model, device).eval()
    n = len(pairs)
    t0 = time.perf_counter()
    low, prev_meta = None, None
    epes = []
    for i in tqdm(range(n), desc="infer", disable=not progress):
        sample = pairs[i]
        img1, img2 = sample["img1"][None].to(device), sample["img2"][None].to(device)
        meta = sample.get("meta") or {}
        warm = obj.warm_start and low is not None and same_sequence(prev_meta, meta)
        init = forward_interpolate(low[0])[None] if warm else None
        out = predict(model, img1, img2, iters=obj.iters, padding=obj.padding, flow_init=init)
        low, prev_meta = out.flow_low, meta
        epes.append(_epe(out.flow[0], sample))
        if obj.save_flows:
            _write_flow(run, _stem(sample, i), out.flow[0], obj.flow_format, obj.color)
    summary = {"input": what, "pairs": n, "epe": _mean(epes), "seconds": time.perf_counter() - t0,
               "seconds_per_pair": (time.perf_counter() - t0) / max(1, n), "run_dir": str(run.path),
               "flows": str(run.path / "flows")}
    run.write_metrics(summary)
    run.close()
    return summary
