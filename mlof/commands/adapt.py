"""``mlof adapt`` (meta-inference): unsupervised test-time adaptation on frames, folders, videos and datasets.

``adapt`` runs MLOF's meta-inference: every pair is adapted independently from the loaded weights
(``mlof.adapt``, its default setting unless ``options`` say otherwise), or, with ``online=true``, the
weights are carried along the sequence (``OnlineAdapter``). Pairs with ground truth are scored before and after
adaptation, at the same iterations and padding. The outputs are streamed: each pair's
flow file (named after its first frame, ``flows/frame_0001.flo``; KITTI ``flows/000000_10.png``), colour
image, panel and record are written as soon as the pair is done (see ``mlof.runs.outputs``), and ``--resume``
continues an interrupted run without redoing finished pairs.

Iterations and padding default to the dataset's evaluation protocol (``mlof.commands.evaluate.protocol_for``: 32 /
sintel for Sintel, 24 / kitti for KITTI) when the input is a dataset, so ``adapt``, ``infer`` and ``evaluate``
report the same "before" numbers for the same pair (frames over ``mlof.adapt``'s ``max_pixels`` are scored
"before" at its working resolution, as they are adapted); for frames, folders and videos they are 12 / sintel
(``mlof.commands.sources.DEFAULT_ITERS``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from backbones.base import InputPadder
from mlof.api import OnlineAdapter
from mlof.commands.evaluate import adapt_predict
from mlof.commands.report import fmt, say
from mlof.commands.sources import FramesRun, open_frames_run, pair_epe, pairs_to_do
from mlof.config import DataConfig, ModelConfig, RunConfig
from mlof.runs.outputs import finite_or_none, mean_of, output_stem, pair_seed
from mlof.seeding import seed_everything
from mlof.viz import batch_panel

__all__ = ["AdaptConfig", "run_adapt", "main"]


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
    iters: Optional[int] = None         # None: the dataset's protocol (Sintel 32, KITTI 24), 12 for frames
    padding: Optional[str] = None       # sintel | kitti; None: the dataset's protocol, sintel for frames
    resize: Any = None                  # scale factor (0.5) or [H, W] for the network; outputs at full size
    max_side: int = 0                   # cap the longer input side (0: off)
    options: Dict[str, Any] = field(default_factory=dict)   # keywords of mlof.adapt / OnlineAdapter
    save_flows: bool = True
    flow_format: str = "auto"           # auto (png for KITTI, else flo) | flo | png (KITTI 16-bit) | pfm
    images: bool = True                 # images/<stem>_panel.png and colour flows
    tensorboard_images: int = 4         # panels of the first pairs logged to TensorBoard
    overwrite: bool = False             # start an existing run folder over (--overwrite)


def _adapt_scalars(rec: dict[str, Any]) -> dict[str, float]:
    keys = ("epe_before", "epe_after", "loss_first", "loss_last", "steps")
    return {k: rec[k] for k in keys if rec.get(k) is not None}


def _write_adapted(r: FramesRun, k: int, sample: dict[str, Any], before: torch.Tensor, after: torch.Tensor,
                   history: list[dict], extra: dict[str, Any] | None = None) -> None:
    """Files, TensorBoard and the record of adapted pair ``k`` (flows 2 x H x W at full resolution)."""

    stem = output_stem(sample, k)
    totals = [h.get("total") for h in history if h.get("total") is not None]
    rec = {"pair": int((sample.get("meta") or {}).get("index", k)), "position": k, "stem": stem,
           "epe_before": pair_epe(before, sample), "epe_after": pair_epe(after, sample),
           "loss_first": finite_or_none(totals[0]) if totals else None,
           "loss_last": finite_or_none(totals[-1]) if totals else None,
           "steps": max([int(h.get("step", 0)) for h in history], default=0),   # steps taken
           "guard": [str(h["guard"]) for h in history if "guard" in h], **(extra or {})}
    r.store.write_flow(stem, after)
    r.store.write_flow(stem, before, folder="flows_before", color_suffix="_before")
    r.store.write_panel(stem, sample, after, before)
    # a few series indexed by the pair (step = position in the run), not new tags per pair
    r.run.log_scalars(k, _adapt_scalars(rec), prefix="adapt/")
    if k < r.obj.tensorboard_images:
        batch = {key: (v[None] if isinstance(v, torch.Tensor) else v) for key, v in sample.items()}
        r.run.log_image(k, "adapt/before", batch_panel(batch, before[None]))
        r.run.log_image(k, "adapt/after", batch_panel(batch, after[None]))
    r.store.finish(k, rec)


def _adapt_options(r: FramesRun) -> dict[str, Any]:
    """``options`` without ``iters`` (checked against ``iters`` in ``_setup``; passed separately)."""
    return {k: v for k, v in dict(r.obj.options).items() if k != "iters"}


def run_adapt(cfg: DictConfig, progress: bool = True, resume: bool = False, overwrite: bool = False
              ) -> dict[str, Any]:
    """Meta-inference over the input, streaming every pair's outputs; returns (and writes to
    ``metrics.json``) the per-pair and mean EPEs before and after adaptation."""

    r = open_frames_run(cfg, resume, overwrite)
    n = len(r.pairs)
    options = _adapt_options(r)
    model = r.model
    t0 = time.perf_counter()
    if r.obj.online:
        _adapt_online(r, model, options, resume, progress)
    else:
        todo = pairs_to_do(r.store, n, resume)
        for k in tqdm(todo, desc="adapt (per pair)", disable=not progress, total=n, initial=n - len(todo)):
            sample = r.pairs[k]
            seed_everything(pair_seed(r.obj.seed, k))
            img1, img2 = (sample[key][None].to(r.device) for key in ("img1", "img2"))
            size = tuple(img1.shape[-2:])
            s1, s2 = r.plan.images(img1, img2)
            before, after, history = adapt_predict(model, s1, s2, iters=r.iters, padding=r.padding, **options)
            before, after = r.plan.flow_back(before, size)[0], r.plan.flow_back(after, size)[0]
            _write_adapted(r, k, sample, before, after, history)
    records = list(r.store.records(n))   # small dicts (no flows)
    summary = {"input": r.what, "pairs": n, "mode": "online" if r.obj.online else "per-pair",
               "iters": r.iters, "padding": r.padding, "resize": r.plan.resize, "max_side": r.plan.max_side,
               "epe_before": mean_of([x["epe_before"] for x in records]),
               "epe_after": mean_of([x["epe_after"] for x in records]),
               "scored_pairs": sum(x["epe_before"] is not None for x in records),
               "seconds": time.perf_counter() - t0, "per_pair": records, "run_dir": str(r.run.path),
               "checkpoint": r.obj.model.checkpoint, "options": {"iters": r.iters, **options}}
    r.run.write_metrics(summary)
    r.run.close()
    return summary


def _adapt_online(r: FramesRun, model: torch.nn.Module, options: dict[str, Any], resume: bool, progress: bool) -> None:
    """Online adaptation along the input's frames, one pair at a time. After every pair the carried weights
    go to ``state/online.pt`` (written after the pair's record), so ``--resume`` continues from the last
    finished pair with the same weights; the adapter's per-pair lists are emptied (bounded memory)."""

    n = len(r.pairs)
    adapter = OnlineAdapter(model, device=r.device, iters=r.iters, **options)
    size = tuple(r.pairs[0]["img1"].shape[-2:])
    padder = InputPadder((1, 3, *r.plan.size_for(*size)), mode=r.padding)

    def prepare(frame: torch.Tensor) -> torch.Tensor:
        return padder.pad_tensors(r.plan.images(frame[None].to(r.device))[0])[0]

    start = 0
    state = r.store.read_online_state() if resume else None
    if state is not None:
        start = int(state["done"])
        adapter.load_state_dict({"weights": {k[len("w:"):]: v for k, v in state.items() if k.startswith("w:")},
                                 "pairs_done": start, "since_reset": state["since_reset"],
                                 "last_steps": state["last_steps"]})
    # the first frame gives no flow: it becomes the adapter's "previous" frame (on resume: the last finished
    # pair's second frame)
    adapter.step(prepare(r.pairs[start - 1]["img2"] if start > 0 else r.pairs[0]["img1"]))
    for k in tqdm(range(start, n), desc="adapt (online)", disable=not progress, total=n, initial=start):
        sample = r.pairs[k]
        seed_everything(pair_seed(r.obj.seed, k))
        after = adapter.step(prepare(sample["img2"]))
        before = adapter.flows_before[-1]
        history = [h for h in adapter.history if h.get("pair") == k]
        resets = [reason for pair, reason in adapter.resets if pair == k]
        after, before = (r.plan.flow_back(padder.unpad(f), size)[0] for f in (after, before))
        _write_adapted(r, k, sample, before, after, history, {"resets": resets})
        adapter.history.clear()
        adapter.flows_before.clear()
        adapter.resets.clear()
        carried = adapter.state_dict()
        weights = {f"w:{key}": v.detach().cpu() for key, v in carried["weights"].items()}
        r.store.write_online_state({**weights, "done": k + 1, "since_reset": carried["since_reset"],
                                    "last_steps": carried["last_steps"]})


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof adapt``: run meta-inference and print the EPE before / after adaptation."""
    s = run_adapt(cfg, progress=progress, resume=cfg.resume, overwrite=cfg.overwrite)
    say(f"adapt ({s['mode']}) on {s['input']}: {s['pairs']} pair(s), iters {s['iters']}, padding "
        f"{s['padding']}, {s['seconds']:.1f} s")
    if s["scored_pairs"]:
        say(f"  EPE before adaptation: {fmt(s['epe_before'])} px")
        say(f"  EPE after adaptation:  {fmt(s['epe_after'])} px   (mean over {s['scored_pairs']} pair(s) "
            f"with ground truth)")
    say(f"  outputs: {s['run_dir']}  (flows/, flows_before/, images/, metrics.json, TensorBoard events)")
    return 0
