"""From a resolved configuration to a finished training run (one process or one torchrun rank)."""
from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from mlof.config import to_dict
from mlof.runs.rundir import RunDir
from mlof.seeding import seed_everything
from mlof.train.distributed import DistContext, broadcast_module, init_distributed
from mlof.train.engine import TrainingJob, fit

__all__ = ["run_training"]


def run_training(make_job: Callable[[Any, DistContext], TrainingJob], cfg: DictConfig, resume: bool = False,
                 overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build the job of ``cfg`` (a resolved structured config), train it, return the summary.

    The network is initialised under ``cfg.seed`` and broadcast from rank 0, so every process starts from
    the same weights. The summary holds ``run_dir`` and ``checkpoint`` (the latest checkpoint).
    """
    ctx = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    obj = OmegaConf.to_object(cfg)
    job = make_job(obj, ctx)
    broadcast_module(job.model, ctx)
    resume = bool(resume or cfg.get("resume", False))
    overwrite = bool(overwrite or cfg.get("overwrite", False))
    run = RunDir(cfg.out_dir, cfg.name, is_main=ctx.is_main, tensorboard=cfg.log.tensorboard, resume=resume,
                 overwrite=overwrite)
    # resume / overwrite are about the folder, not the training: kept out of the recipe that resume compares
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")}
    try:
        summary = fit(job, run, recipe, cfg.seed, obj.log, ctx, resume=resume, overwrite=overwrite,
                      progress=progress)
    finally:
        run.close()
    summary["run_dir"] = str(run.path)
    summary["world_size"] = ctx.world_size
    return summary
