"""``mlof infer``: flow for consecutive pairs of frames, a folder, a video or a dataset, streamed to the run folder.

Each pair's flow file (named after its first frame), colour image, panel and record are written as soon as the
pair is done (``mlof.runs.outputs``); ``--resume`` continues an interrupted run. Iterations and padding default to
the dataset's evaluation protocol (``mlof.commands.evaluate.protocol_for``), 12 / sintel for frames; with
``warm_start`` each pair starts from the previous one's coarse flow (``mlof.commands.evaluate.WarmStart``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import DictConfig
from tqdm import tqdm

from mlof.commands.evaluate import WarmStart
from mlof.commands.report import say
from mlof.commands.sources import open_frames_run, pair_epe, pairs_to_do
from mlof.config import ConfigError, DataConfig, ModelConfig, RunConfig
from mlof.runs.outputs import mean_of, output_stem

__all__ = ["InferConfig", "run_infer", "main"]


@dataclass
class InferConfig(RunConfig):
    """``mlof infer``: flow for consecutive pairs of frames, a folder, a video or a dataset."""

    name: str = "infer"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=None, checkpoint="default"))
    input: Any = None
    data: Optional[DataConfig] = None
    max_pairs: int = 0
    pairs: Optional[List[int]] = None
    iters: Optional[int] = None         # None: the dataset's protocol, 12 for frames
    padding: Optional[str] = None       # sintel | kitti (RAFT padding modes); None as iters
    resize: Any = None
    max_side: int = 0
    warm_start: bool = False            # initialise each pair with the previous coarse flow
    save_flows: bool = True
    flow_format: str = "auto"
    images: bool = True                 # images/<stem>_panel.png and <stem>_color.png
    overwrite: bool = False


def run_infer(cfg: DictConfig, progress: bool = True, resume: bool = False, overwrite: bool = False
              ) -> dict[str, Any]:
    """Predict every pair of the input, streaming flow files, colour images, panels and per-pair records."""
    r = open_frames_run(cfg, resume, overwrite)
    if resume and r.obj.warm_start:
        raise ConfigError("warm_start=true runs cannot be resumed (each pair starts from the previous one's flow)")
    model = r.model
    n = len(r.pairs)
    t0 = time.perf_counter()
    warm = WarmStart(r.obj.warm_start)
    todo = pairs_to_do(r.store, n, resume)
    for k in tqdm(todo, desc="infer", disable=not progress, total=n, initial=n - len(todo)):
        sample = r.pairs[k]
        img1, img2 = sample["img1"][None].to(r.device), sample["img2"][None].to(r.device)
        size = tuple(img1.shape[-2:])
        s1, s2 = r.plan.images(img1, img2)
        meta = sample.get("meta") or {}
        out = warm.predict(model, s1, s2, meta, iters=r.iters, padding=r.padding)
        flow = r.plan.flow_back(out.flow, size)[0]
        stem = output_stem(sample, k)
        r.store.write_flow(stem, flow)
        r.store.write_panel(stem, sample, flow)
        r.store.finish(k, {"pair": int(meta.get("index", k)), "position": k, "stem": stem,
                           "epe": pair_epe(flow, sample)})
    records = list(r.store.records(n))
    seconds = time.perf_counter() - t0
    summary = {"input": r.what, "pairs": n, "iters": r.iters, "padding": r.padding, "resize": r.plan.resize,
               "max_side": r.plan.max_side, "epe": mean_of([x["epe"] for x in records]),
               "scored_pairs": sum(x["epe"] is not None for x in records), "seconds": seconds,
               "seconds_per_pair": seconds / max(1, len(todo)), "run_dir": str(r.run.path),
               "flows": str(r.run.path / "flows"), "per_pair": records}
    r.run.write_metrics(summary)
    r.run.close()
    return summary


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof infer``: predict every pair and print the speed (and EPE where there is ground truth)."""
    s = run_infer(cfg, progress=progress, resume=cfg.resume, overwrite=cfg.overwrite)
    say(f"infer on {s['input']}: {s['pairs']} pair(s), iters {s['iters']}, {s['seconds_per_pair']:.2f} s per pair"
        + (f", EPE {s['epe']:.3f} px" if s.get("epe") is not None else ""))
    say(f"  flows: {s['flows']}")
    return 0
