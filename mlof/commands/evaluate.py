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
scene, pairs in order). ``adapt`` options run ``mlof.adapt`` per pair first (theta* in the MLOF tables), at
the protocol's iterations and padding too (``adapt_predict``); the summary then reports the adapted metrics and,
under ``before``, the unadapted ones of the same run and settings. ``run_evaluate`` is ``mlof evaluate``: it
streams every pair's flow files, panel and record to the run folder and can resume (``mlof.runs.outputs``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.interpolate import griddata
from torch import nn
from tqdm import tqdm

from backbones.base import FlowOutput, InputPadder
from mlof.meta.engine import Adapter
from mlof.meta.frames import as_pairs
from mlof.commands.report import say
from mlof.commands.setup import build_data, build_model, check_adapt_options, is_real_input, warn_if_demo_model
from mlof.config import ConfigError, DataConfig, ModelConfig, RunConfig
from mlof.io import write_image
from mlof.metrics import FlowMetricAccumulator
from mlof.runs.outputs import ResizePlan, finite_or_none, flow_format_for, open_streaming_run, output_stem, pair_seed
from mlof.seeding import seed_everything
from mlof.train.distributed import resolve_device
from mlof.viz import flow_panel, series_plot

__all__ = ["EvaluateConfig", "Protocol", "PROTOCOLS", "protocol_for", "predict", "adapt_predict",
           "forward_interpolate", "WarmStart", "evaluate", "run_evaluate", "PairEvaluation", "headline",
           "same_sequence"]


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
    resize: Any = None               # scale factor (0.5) or [H, W] for the network; flows/metrics at full size
    max_side: int = 0                # cap the longer input side (0: off)
    images: bool = True              # images/<stem>_panel.png, colour flows, summary.png
    save_flows: bool = True          # flows/<stem>.<flow_format> (and flows_before/ with adapt)
    flow_format: str = "auto"        # auto (png for KITTI, else flo) | flo | png | pfm
    tensorboard_images: int = 4      # panels of the first pairs logged to TensorBoard
    overwrite: bool = False          # start an existing run folder over (--overwrite)


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


def adapt_predict(model: nn.Module, img1: torch.Tensor, img2: torch.Tensor, *, iters: int | None = 12,
                  padding: str = "sintel", **options: Any) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Test-time adaptation of one pair at the evaluation's settings: images 1 x 3 x H x W (0..255) are padded
    as ``predict`` pads them (``padding`` mode, multiple of 8), the adaptation engine (``mlof.meta.engine.Adapter``,
    as ``mlof.adapt``) runs with ``iters`` and ``options``, and both flows are cropped back. Returns
    ``(before, after, history)`` with flows 1 x 2 x H x W: the unadapted and the adapted prediction at the same
    iterations and padding."""
    if "iters" in options:
        raise ValueError("adapt_predict: give the iterations as iters=, not among the mlof.adapt options")
    padder = InputPadder(img1.shape, mode=padding)
    p1, p2 = padder.pad_tensors(img1, img2)
    res = Adapter(model, iters=iters, **options).run(as_pairs((p1[0], p2[0])))
    before = padder.unpad(res.flows_before[0].reshape(1, 2, *p1.shape[-2:]))
    after = padder.unpad(res.flows[0].reshape(1, 2, *p1.shape[-2:]))
    return before, after, list(res.history)


def forward_interpolate(flow: torch.Tensor) -> torch.Tensor:
    """Warm start: splat a coarse flow 2 x h x w forward along itself, fill holes by nearest neighbour.

    Returns 2 x h x w on the input's device (RAFT's ``forward_interpolate``).
    """

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


class WarmStart:
    """The warm-start loop of ``evaluate`` and ``mlof infer``: a pair that directly follows the previous one (same
    scene, next frame; ``same_sequence``) starts from that pair's coarse flow, forward-splatted
    (``forward_interpolate``); disabled, every pair starts from zero."""

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.low: torch.Tensor | None = None
        self.meta: Mapping[str, Any] | None = None

    def predict(self, model: nn.Module, img1: torch.Tensor, img2: torch.Tensor, meta: Mapping[str, Any], *,
                iters: int, padding: str) -> FlowOutput:
        """``predict`` of one pair (1 x 3 x H x W each) whose ``meta`` names its scene and frame."""
        init = None
        if self.enabled and self.low is not None and same_sequence(self.meta, meta):
            init = forward_interpolate(self.low[0])[None]
        out = predict(model, img1, img2, iters=iters, padding=padding, flow_init=init)
        self.low, self.meta = out.flow_low, meta
        return out


def _batch1(sample: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return sample["img1"][None].to(device), sample["img2"][None].to(device)


@dataclass
class PairEvaluation:
    """What ``evaluate`` computed for one pair (handed to ``on_sample``).

    flow:    the scored prediction 2 x H x W at the sample's resolution (the adapted one with ``adapt``).
    before:  with ``adapt``: the unadapted prediction 2 x H x W at the same iterations and padding; else None.
    metrics / metrics_before: per-image metrics (``epe``, ``fl_all``, ...) of ``flow`` / ``before``.
    stats / stats_before: ``FlowMetricAccumulator.last_stats()`` of this pair (to rebuild a summary exactly).
    history: ``mlof.adapt``'s per-step records (empty without ``adapt``).
    seconds: wall time of the prediction (and adaptation).
    """

    flow: torch.Tensor
    before: torch.Tensor | None
    metrics: dict[str, float]
    metrics_before: dict[str, float] | None
    stats: dict[str, Any]
    stats_before: dict[str, Any] | None
    history: list[dict]
    seconds: float


def _per_image(per: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v[0]) for k, v in per.items()}


def evaluate(model: nn.Module, dataset: Iterable[Mapping[str, Any]], *, dataset_name: str = "",
             iters: int | None = None, padding: str | None = None, warm_start: bool = False,
             max_samples: int = 0, adapt: Mapping[str, Any] | None = None, progress: bool = False,
             on_sample: Callable[[int, Mapping[str, Any], PairEvaluation], None] | None = None,
             resize: Any = None, max_side: int = 0,
             finished: Callable[[int], Mapping[str, Any] | None] | None = None,
             seed: int | None = None) -> dict[str, Any]:
    """Score ``model`` on every sample of ``dataset`` that has ground truth; returns a summary dict.

    iters / padding default to the dataset's protocol (``protocol_for(dataset_name)``). With ``adapt``
    (keyword options of ``mlof.adapt``), each pair is first adapted without supervision, from ``model``, at the
    same iterations and padding (``adapt_predict``); the summary then holds the adapted metrics and, under
    ``before``, the unadapted ones of the same run and settings. ``resize`` / ``max_side`` scale the frames down
    before the network (``mlof.runs.outputs.ResizePlan``); flows are scaled back and scored against the
    full-resolution ground truth. ``on_sample(index, sample, PairEvaluation)`` is called after every pair.
    ``finished(index)`` may return the record of a pair done by an interrupted run (with ``stats`` and, when
    adapting, ``stats_before``): that pair is not recomputed and its statistics count as saved, so the summary
    equals an uninterrupted run's. ``seed``: every pair's randomness is reseeded from ``(seed, index)``.
    Summary: every metric of ``FlowMetricAccumulator.summary()`` (pooled and ``_per_image``, ``_noc`` /
    ``_occ`` where occlusion masks exist), ``headline``, ``iters``, ``padding``, ``seconds_per_pair``.
    """

    proto = protocol_for(dataset_name)
    iters = proto.iters if iters is None else int(iters)
    padding = proto.padding if padding is None else padding
    if padding not in ("sintel", "kitti"):
        raise ValueError(f"padding: {padding!r} is not one of sintel, kitti")
    if warm_start and adapt:
        raise ValueError("warm_start and adapt cannot be combined (adaptation runs its own predictions)")
    adapt = dict(adapt) if adapt else None
    if adapt and "iters" in adapt:
        if adapt["iters"] != iters:
            raise ValueError(f"adapt.iters ({adapt['iters']}) differs from iters ({iters}): the adapted and the "
                             f"unadapted runs use one setting; set iters= instead")
        del adapt["iters"]
    if warm_start and finished is not None:
        raise ValueError("warm_start cannot be resumed (each pair starts from the previous one's flow); "
                         "run it without resuming")
    plan = ResizePlan(resize, max_side)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    acc, acc_before = FlowMetricAccumulator(), FlowMetricAccumulator()
    indexable = hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    n_total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    if max_samples and n_total is not None:
        n_total = min(n_total, max_samples)
    source = None if indexable else iter(dataset)
    warm = WarmStart(warm_start)
    t_total, n = 0.0, 0
    bar = tqdm(total=n_total, disable=not progress, desc="evaluate (adapted)" if adapt else "evaluate")
    try:
        for i in range(n_total) if indexable and n_total is not None else range(10 ** 12):
            if max_samples and i >= max_samples:
                break
            rec = finished(i) if finished is not None else None
            if rec is not None:
                if source is not None:
                    next(source, None)
                acc.add_stats(rec["stats"])
                if adapt:
                    acc_before.add_stats(rec["stats_before"])
                n += 1
                t_total += float(rec.get("seconds", 0.0))
                bar.update(1)
                continue
            if indexable:
                sample = dataset[i]  # type: ignore[index]
            else:
                sample = next(source, None)  # type: ignore[arg-type]
                if sample is None:
                    break
            if "flow" not in sample:
                raise ValueError(f"dataset {dataset_name or type(dataset).__name__}: sample {i} has no ground-truth "
                                 f"flow; evaluate needs annotated pairs (use `mlof infer` for unannotated ones)")
            if seed is not None:
                seed_everything(pair_seed(seed, i))
            img1, img2 = _batch1(sample, device)
            size = tuple(img1.shape[-2:])
            s1, s2 = plan.images(img1, img2)
            meta = sample.get("meta") or {}
            t0 = time.perf_counter()
            before, history = None, []
            if adapt:
                before, flow, history = adapt_predict(model, s1, s2, iters=iters, padding=padding, **adapt)
                before = plan.flow_back(before, size)
            else:
                flow = warm.predict(model, s1, s2, meta, iters=iters, padding=padding).flow
            flow = plan.flow_back(flow, size)
            seconds = time.perf_counter() - t0
            t_total += seconds
            n += 1
            per = _per_image(acc.add(flow[0].cpu(), sample["flow"], sample.get("valid"), sample.get("occ")))
            result = PairEvaluation(flow[0], None, per, None, acc.last_stats(), None, history, seconds)
            if before is not None:
                result.before = before[0]
                result.metrics_before = _per_image(acc_before.add(before[0].cpu(), sample["flow"],
                                                                  sample.get("valid"), sample.get("occ")))
                result.stats_before = acc_before.last_stats()
            if on_sample is not None:
                on_sample(i, sample, result)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    if n == 0:
        raise ValueError(f"dataset {dataset_name or type(dataset).__name__} has no samples to evaluate")
    summary: dict[str, Any] = acc.summary()
    summary.update({"dataset": dataset_name, "iters": iters, "padding": padding, "warm_start": warm_start,
                    "adapted": bool(adapt), "seconds_per_pair": t_total / n,
                    "resize": plan.resize, "max_side": plan.max_side})
    summary["headline"] = headline(summary, dataset_name)
    if adapt:
        before_summary = acc_before.summary()
        before_summary["headline"] = headline(before_summary, dataset_name)
        summary["before"] = before_summary   # same run, same iterations and padding
    return summary


def _tb_panel_due(run: Any, index: int, limit: int) -> bool:
    return index < limit and run.writer is not None


def run_evaluate(cfg: Any, progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """``mlof evaluate``: ``evaluate`` on the configured dataset, streaming each pair's flow files, panel and
    record into ``runs/<name>/`` as soon as it is done (``--resume`` continues an interrupted run); writes
    ``metrics.json`` and the per-pair EPE plot ``summary.png``. Returns the summary (plus ``run_dir``)."""

    obj = OmegaConf.to_object(cfg)
    fmt = flow_format_for(obj.flow_format, obj.data.name)
    if obj.tensorboard_images < 0:
        raise ConfigError(f"tensorboard_images: must be >= 0, got {obj.tensorboard_images}")
    if resume and obj.warm_start:
        raise ConfigError("warm_start=true runs cannot be resumed (each pair starts from the previous one's flow)")
    adapt = dict(obj.adapt) if obj.adapt else None
    if adapt:
        check_adapt_options(adapt, key="adapt")   # before anything is written
    iters = obj.iters if obj.iters is not None else protocol_for(obj.data.name).iters
    if adapt and "iters" in adapt and adapt["iters"] != iters:
        raise ConfigError(f"adapt.iters ({adapt['iters']}) differs from iters ({iters}): the adapted and the "
                          f"unadapted runs use one setting; set iters= instead")
    if obj.padding not in (None, "sintel", "kitti"):
        raise ConfigError(f"padding: {obj.padding!r} is not one of sintel, kitti")
    ResizePlan(obj.resize, obj.max_side)   # checks resize / max_side
    device = resolve_device(obj.device)
    seed_everything(obj.seed)
    model = build_model(obj.model, device).eval()
    if is_real_input(obj):
        warn_if_demo_model(obj.model.checkpoint)
    dataset = build_data(obj.data)
    # nothing is written before the configuration, the data and the weights have been checked
    run, store = open_streaming_run(cfg, obj, fmt, resume=resume, overwrite=overwrite)

    def on_sample(i: int, sample: Mapping[str, Any], r: PairEvaluation) -> None:
        stem = output_stem(sample, i)
        store.write_flow(stem, r.flow)
        if r.before is not None:
            store.write_flow(stem, r.before, folder="flows_before", color_suffix="_before")
        picture = None
        if obj.images or _tb_panel_due(run, i, obj.tensorboard_images):
            picture = flow_panel([sample["img1"], sample["img2"]], r.flow.cpu(), gt=sample["flow"],
                                 valid=sample.get("valid"), before=None if r.before is None else r.before.cpu())
        if obj.images:
            store.write_picture(f"{stem}_panel.png", picture)
        scalars = {k: r.metrics.get(k) for k in ("epe", "fl_all")}
        if r.metrics_before is not None:
            scalars.update({f"{k}_before": r.metrics_before.get(k) for k in ("epe", "fl_all")})
        run.log_scalars(i, scalars, prefix="eval/sample_")
        if _tb_panel_due(run, i, obj.tensorboard_images):
            run.log_image(i, "eval/panel", picture)
        store.finish(i, {"pair": i, "stem": stem, "metrics": r.metrics, "metrics_before": r.metrics_before,
                         "stats": r.stats, "stats_before": r.stats_before, "seconds": r.seconds,
                         "loss_first": finite_or_none(r.history[0].get("total")) if r.history else None,
                         "loss_last": finite_or_none(r.history[-1].get("total")) if r.history else None})

    summary = evaluate(model, dataset, dataset_name=obj.data.name, iters=obj.iters, padding=obj.padding,
                       warm_start=obj.warm_start, max_samples=obj.max_samples, adapt=adapt,
                       progress=progress, on_sample=on_sample, resize=obj.resize, max_side=obj.max_side,
                       finished=store.done if resume else None, seed=obj.seed)
    after = [finite_or_none((r.get("metrics") or {}).get("epe")) for r in store.records(summary["num_images"])]
    before = [finite_or_none((r.get("metrics_before") or {}).get("epe"))
              for r in store.records(summary["num_images"])] if adapt else None
    summary["per_pair_epe"] = after
    if adapt:
        summary["per_pair_epe_before"] = before
    if obj.images and run.is_main:
        series = {"before adaptation": before, "after adaptation": after} if adapt else {"EPE": after}
        title = (f"{obj.data.name}: per-pair EPE, iters {summary['iters']}, padding {summary['padding']}")
        write_image(run.path / "summary.png", series_plot(series, title=title))
    run.log_scalars(0, {k: v for k, v in summary.items() if isinstance(v, float)}, prefix="eval/")
    if adapt:
        run.log_scalars(0, {k: v for k, v in summary["before"].items() if isinstance(v, float)},
                        prefix="eval/before_")
    summary["run_dir"] = str(run.path)
    summary["metrics_path"] = str(run.write_metrics(summary))
    run.close()
    return summary


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof evaluate``: run the protocol and print the headline metrics (before and after adaptation)."""
    summary = run_evaluate(cfg, progress=progress, resume=cfg.resume, overwrite=cfg.overwrite)

    def head(s: dict) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in s["headline"].items())

    say(f"evaluate on {summary['dataset']} ({summary['num_images']} pairs, iters {summary['iters']}, padding "
        f"{summary['padding']}{', adapted' if summary['adapted'] else ''}): {head(summary)}")
    if summary.get("before"):
        say(f"  before adaptation (same run, same settings): {head(summary['before'])}")
    say(f"  metrics: {summary['metrics_path']}")
    return 0
