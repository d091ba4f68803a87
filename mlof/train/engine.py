"""The training loop shared by ``pretrain`` and ``meta-train``: steps, logging, checkpoints, resume.

A job (``TrainingJob``) knows how to make this rank's batches for a range of steps and how to take one
optimizer step; the engine owns everything around it:

* every step reseeds the global generators from ``(seed, step)`` and every sample is drawn under
  ``(seed, step, k)`` (see ``sampling``), so ``resume`` reaches the bit-identical result of an
  uninterrupted run on the same machine;
* ``checkpoints/latest.pt`` is written atomically at step 0, every ``log.latest_every`` steps and at the
  end (``kill -9`` at any moment leaves a loadable one); ``step_XXXXXX.pt`` every ``log.checkpoint_every``;
* scalars (and image grids every ``log.images_every`` steps) go to TensorBoard, the last metrics to
  ``metrics.json``, progress to a tqdm bar; only rank 0 writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import numpy as np
from torch import nn
from tqdm import tqdm

from mlof.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mlof.config import LogConfig, diff_keys
from mlof.runs.rundir import RunDir
from mlof.seeding import capture_rng, restore_rng, seed_step
from mlof.train.distributed import DistContext, barrier

__all__ = ["StepOutput", "TrainingJob", "ResumeError", "fit", "RESUME_FREE_KEYS"]

# Keys that may change between an interrupted run and its resumption without changing the result.
RESUME_FREE_KEYS = ("device", "data.num_workers", "log.")


class ResumeError(ValueError):
    """Nothing to resume, or the checkpoint was made with another recipe."""


@dataclass
class StepOutput:
    """What one optimizer step reports: global-batch metrics and, when asked, image grids (uint8 HxWx3)."""

    metrics: dict[str, float]
    images: dict[str, np.ndarray] = field(default_factory=dict)


class TrainingJob(Protocol):
    model: nn.Module
    total_steps: int

    def batches(self, start: int) -> Iterable[Any]:
        """This rank's batches for steps ``start .. total_steps-1``, in order."""

    def train_step(self, step: int, batch: Any, want_images: bool) -> StepOutput:
        """One optimizer step (forward, backward, gradient sync, update)."""

    def state_dict(self) -> dict[str, Any]:
        """Top-level checkpoint entries besides the model (``optimizer``, ``scheduler``, ...)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict`` (given the whole checkpoint dict)."""


def _save(run: RunDir, job: TrainingJob, step: int, recipe: dict, metrics: dict, path) -> None:
    save_checkpoint(path, job.model, step=step, rng=capture_rng(), recipe=recipe, metrics=metrics,
                    image_range=[0, 255], **job.state_dict())


def _resume(run: RunDir, job: TrainingJob, recipe: dict) -> tuple[int, dict[str, float]]:
    if not run.latest.is_file():
        raise ResumeError(f"nothing to resume: {run.latest} does not exist")
    try:
        ckpt = load_checkpoint(run.latest)
    except CheckpointError as e:
        raise ResumeError(str(e)) from e
    changed = [k for k in diff_keys(ckpt.get("recipe") or {}, recipe)
               if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_FREE_KEYS)]
    if changed:
        raise ResumeError(f"{run.latest} was made with another recipe (differs in: {', '.join(changed)}); "
                          f"resume with the same configuration or start a new run (name=...)")
    job.model.load_state_dict(ckpt["state_dict"])
    job.load_state_dict(ckpt)
    restore_rng(ckpt["rng"])
    return int(ckpt["step"]), dict(ckpt.get("metrics") or {})


def fit(job: TrainingJob, run: RunDir, recipe: dict[str, Any], seed: int, log: LogConfig, ctx: DistContext,
        resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run ``job`` to ``job.total_steps`` (from its latest checkpoint if ``resume``); returns the summary."""
    last: dict[str, float] = {}
    if resume:
        start, last = _resume(run, job, recipe)
    else:
        # RunDir refused a folder holding a run unless overwrite (it empties the folder when it opens)
        if run.latest.is_file() and not (overwrite or run.overwrite):
            raise ResumeError(f"{run.path} already holds a run; continue it with --resume, start it over with "
                              f"overwrite=true (or --overwrite), or pick another name=...")
        start = 0
    barrier(ctx)   # every rank has checked the folder before rank 0 writes into it
    run.save_config(recipe)
    run.open()     # the configuration is valid and the job built: claim the folder (lock) before the work
    total = job.total_steps
    if start == 0 and ctx.is_main:
        _save(run, job, 0, recipe, {}, run.latest)  # from now on a loadable latest.pt always exists

    bar = tqdm(total=total, initial=start, desc=run.path.name, disable=not (progress and ctx.is_main),
               dynamic_ncols=True, leave=True)
    window: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for step, batch in zip(range(start, total), job.batches(start)):
        seed_step(seed, step)
        want_images = log.images_every > 0 and (step + 1) % log.images_every == 0
        out = job.train_step(step, batch, want_images)
        for k, v in out.metrics.items():
            window.setdefault(k, []).append(float(v))
        done = step + 1
        if done % max(1, log.every) == 0 or done == total:
            last = {k: float(np.mean(v)) for k, v in window.items()}
            window.clear()
            run.log_scalars(done, last, prefix="train/")
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(last.items())[:4]})
        for tag, img in out.images.items():
            run.log_image(done, tag, img)
        if ctx.is_main:
            if log.checkpoint_every > 0 and done % log.checkpoint_every == 0:
                _save(run, job, done, recipe, last, run.checkpoints / f"step_{done:06d}.pt")
            if done % max(1, log.latest_every) == 0 or done == total:
                _save(run, job, done, recipe, last, run.latest)
                run.write_metrics({"step": done, "total_steps": total, "train": last})
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = {"step": total, "total_steps": total, "train": last, "resumed_from": start if resume else None,
               "wall_time_s": elapsed, "checkpoint": str(run.latest)}
    if ctx.is_main and total > start and log.checkpoint_every > 0 and total % log.checkpoint_every != 0:
        _save(run, job, total, recipe, last, run.checkpoints / f"step_{total:06d}.pt")
    run.write_metrics(summary)
    run.flush()
    return summary
