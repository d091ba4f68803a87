"""Meta-training (MLOF): outer steps of ``mlof.meta.MLOFTrainer`` on tasks from an annotated target set.

A task is ``pairs_per_task`` annotated frame pairs (MLOF: one) batched as N x 3 x H x W; every outer step
draws ``tasks_per_step`` tasks (default: the release's, ``mlof.meta.release.RELEASE``) from
``mlof.data.TaskSampler`` (the (seed, step) data plan), so resume, multi-process runs and a user's own loop over
the same sampler see the same tasks as one uninterrupted process. Under torchrun the tasks of a step are split
across processes and the meta-gradients averaged (weighted by tasks) right before the outer update.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable

import torch
from omegaconf import DictConfig

from mlof.commands.report import report_training
from mlof.commands.setup import build_data, build_model, check_run_size
from mlof.config import ConfigError, DataConfig, LogConfig, ModelConfig, RunConfig
from mlof.data import Task, TaskSampler
from mlof.meta.release import RELEASE
from mlof.meta.trainer import MLOFTrainer
from mlof.train.distributed import DistContext, reduce_metrics, sync_gradients
from mlof.train.engine import StepOutput
from mlof.train.runner import run_training
from mlof.viz import batch_panel

__all__ = ["MetaConfig", "MetaTrainConfig", "MetaTrainJob"]


@dataclass
class MetaConfig:
    """Keywords of ``mlof.meta.MLOFTrainer``; defaults: the official MLOF release (``mlof.meta.release.RELEASE``,
    not restated)."""

    inner_loss: str = RELEASE.loss_recipe   # unsupervised recipe of mlof.losses.build_loss
    inner_steps: int = RELEASE.inner_steps
    inner_lr: float = RELEASE.inner_lr      # the release's inner-loop SGD
    first_order: bool = True
    params: str = "all"                     # what adapts: all or a backbones.param_groups name
    iters: int = RELEASE.iters
    outer_lr: float = RELEASE.outer_lr
    keep_close_weight: float = RELEASE.keep_close_weight
    gamma: float = RELEASE.gamma
    max_flow: float = RELEASE.max_flow
    options: Dict[str, Any] = field(default_factory=dict)   # any further MLOFTrainer keyword


@dataclass
class MetaTrainConfig(RunConfig):
    """``mlof meta-train``: learn theta_ml from theta_0 (``model.checkpoint``) on target-domain tasks."""

    name: str = "meta_train"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=None))
    data: DataConfig = field(default_factory=DataConfig)   # options merge key by key: keep defaults empty
    steps: int = 20
    tasks_per_step: int = RELEASE.tasks_per_step
    pairs_per_task: int = 1
    meta: MetaConfig = field(default_factory=MetaConfig)
    log: LogConfig = field(default_factory=LogConfig)


class MetaTrainJob:
    """One outer (meta) step per engine step."""

    def __init__(self, cfg: MetaTrainConfig, ctx: DistContext):
        check_run_size(cfg.steps, cfg.tasks_per_step, "tasks_per_step", ctx.world_size)
        self.cfg, self.ctx = cfg, ctx
        self.model = build_model(cfg.model, ctx.device)
        self.dataset = build_data(cfg.data)   # data.subset picks the meta-train split (e.g. crossval-1)
        # a task is pairs_per_task consecutive entries of the step's plan, sharded across processes whole
        self.tasks = TaskSampler(self.dataset, pairs_per_task=cfg.pairs_per_task, tasks_per_batch=cfg.tasks_per_step,
                                 seed=cfg.seed)
        self.total_steps = cfg.steps
        m = cfg.meta
        extra = dict(m.options)
        extra.setdefault("strict", not ctx.distributed)   # under torchrun each rank gets its share of the tasks
        try:
            self.trainer = MLOFTrainer(self.model, inner_loss=m.inner_loss, inner_steps=m.inner_steps,
                                       inner_lr=m.inner_lr, first_order=m.first_order, params=m.params,
                                       iters=m.iters, tasks_per_step=cfg.tasks_per_step, outer_lr=m.outer_lr,
                                       keep_close_weight=m.keep_close_weight, gamma=m.gamma,
                                       max_flow=m.max_flow, **extra)
        except TypeError as e:
            raise ConfigError(f"meta: {e}") from e
        self._n_local = self._n_global = cfg.tasks_per_step
        # Meta-gradients are averaged across processes right before the outer update.
        self.trainer.optimizer.register_step_pre_hook(self._sync)

    def _sync(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        sync_gradients(params, self._n_local, self._n_global, self.ctx)

    # -- engine protocol ---------------------------------------------------------------------------------------
    def batches(self, start: int) -> Iterable[list[Task]]:
        return self.tasks.loader(start, self.total_steps, num_workers=self.cfg.data.num_workers, rank=self.ctx.rank,
                                 world_size=self.ctx.world_size)

    def train_step(self, step: int, batch: list[Task], want_images: bool) -> StepOutput:
        dev = self.ctx.device
        tasks = [{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in t.collated().items()}
                 for t in batch]
        self._n_local, self._n_global = len(tasks), self.cfg.tasks_per_step
        local = {k: float(v) for k, v in self.trainer.step(tasks).items() if isinstance(v, (int, float, torch.Tensor))
                 and (not isinstance(v, torch.Tensor) or v.numel() == 1)}
        metrics = reduce_metrics(local, self._n_local, self._n_global, self.ctx)
        images = {}
        if want_images and self.ctx.is_main:
            images["meta/panel"] = self._panel(tasks[0])
        return StepOutput(metrics, images)

    @torch.no_grad()
    def _panel(self, task: dict[str, Any]) -> Any:
        was_training = self.model.training
        self.model.eval()
        out = self.model(task["img1"][:1], task["img2"][:1], iters=self.cfg.meta.iters)
        self.model.train(was_training)
        return batch_panel(task, out.flow)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.trainer.state_dict()}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.trainer.load_state_dict(ckpt["optimizer"])


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof meta-train``: meta-train (one process or one torchrun rank) and print where the run went."""
    report_training("meta-train", run_training(MetaTrainJob, cfg, resume=cfg.resume, overwrite=cfg.overwrite,
                                               progress=progress))
    return 0
