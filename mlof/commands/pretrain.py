"""Supervised (pre)training, as RAFT/GMA train: AdamW + OneCycle, gradient clipping, sequence loss.

RAFT-family networks are trained with the sequence loss over all GRU iterations (L1, weights
``gamma^(n-i-1)``, flows above ``max_flow`` masked); pyramid networks (UPFlow, LiteFlowNet2) with the
multi-level loss over their pyramid predictions. ``freeze_bn`` keeps BatchNorm layers in eval mode (RAFT
after the Chairs stage).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from omegaconf import DictConfig
from torch import nn

from backbones.base import freeze_batchnorm
from mlof import losses
from mlof.commands.report import report_training
from mlof.commands.setup import PYRAMID_NETWORKS, build_data, build_model, check_run_size
from mlof.config import ConfigError, DataConfig, LogConfig, ModelConfig, RunConfig
from mlof.data import build_loader
from mlof.meta.guard import NonFiniteError
from mlof.metrics import flow_metrics
from mlof.optim import SCHEDULES, build_optimizer, build_schedule
from mlof.train.distributed import DistContext, all_ranks_true, reduce_metrics, sync_gradients
from mlof.train.engine import StepOutput
from mlof.train.runner import run_training
from mlof.viz import batch_panel

__all__ = ["OptimConfig", "PretrainConfig", "PretrainJob", "optimizer_for", "loss_total"]


@dataclass
class OptimConfig:
    """AdamW with RAFT's OneCycle schedule (linear anneal over steps + schedule_pad) and clipping."""

    lr: float = 4e-4
    weight_decay: float = 1e-4
    eps: float = 1e-8
    schedule: str = "onecycle"   # onecycle | constant
    pct_start: float = 0.05
    schedule_pad: int = 100      # RAFT anneals over steps + 100; short runs want 1 (the lr then ends near 0)
    clip: float = 1.0            # max gradient norm; 0 disables


@dataclass
class PretrainConfig(RunConfig):
    """``mlof pretrain``: supervised training on a flow dataset (defaults: raft_small on synthetic source)."""

    name: str = "pretrain"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="raft_small"))
    data: DataConfig = field(default_factory=DataConfig)   # options merge key by key: keep defaults empty
    steps: int = 100
    batch_size: int = 8           # global batch (split across processes under torchrun)
    iters: int = 12               # GRU iterations (RAFT family)
    loss: str = "auto"            # auto | sequence | multilevel
    gamma: float = 0.8
    max_flow: float = 400.0
    freeze_bn: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)


def optimizer_for(model: nn.Module, cfg: OptimConfig, total_steps: int
                  ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """AdamW over the trainable parameters, and the schedule of ``cfg`` (RAFT: OneCycle over ``steps + 100``)."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule: {cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.schedule == "onecycle" and cfg.schedule_pad < 1:
        raise ConfigError(f"optim.schedule_pad must be >= 1, got {cfg.schedule_pad}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    sched = build_schedule(opt, cfg.schedule, total_steps, cfg.schedule_pad, cfg.pct_start)
    return opt, sched


def loss_total(out: Any) -> torch.Tensor:
    """The scalar of a loss function's result (a tensor, a LossOutput, or a (loss, metrics) tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "total"):
        return out.total
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot take the loss value of a {type(out).__name__}")


class PretrainJob:
    """One supervised optimizer step per engine step (see ``mlof.train.engine.fit``)."""

    def __init__(self, cfg: PretrainConfig, ctx: DistContext):
        check_run_size(cfg.steps, cfg.batch_size, "batch_size", ctx.world_size)
        self.cfg, self.ctx = cfg, ctx
        self.model = build_model(cfg.model, ctx.device, warn_random=False)   # training from scratch is normal
        name = self.model.mlof_spec["name"]
        kind = cfg.loss if cfg.loss != "auto" else ("multilevel" if name in PYRAMID_NETWORKS else "sequence")
        if kind not in ("sequence", "multilevel"):
            raise ConfigError(f"loss: {cfg.loss!r} is not one of auto, sequence, multilevel")
        self.loss_kind = kind
        self.dataset = build_data(cfg.data)
        self.total_steps = cfg.steps
        self.optimizer, self.scheduler = optimizer_for(self.model, cfg.optim, cfg.steps)

    # -- engine protocol ---------------------------------------------------------------------------------------
    def batches(self, start: int) -> Iterable[dict[str, Any]]:
        return build_loader(self.dataset, self.cfg.batch_size, steps=self.total_steps - start, start=start,
                            seed=self.cfg.seed, num_workers=self.cfg.data.num_workers, rank=self.ctx.rank,
                            world_size=self.ctx.world_size)

    def _loss(self, out: Any, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        flows = out.flows or [out.flow]
        if self.loss_kind == "sequence":
            return loss_total(losses.sequence_loss(flows, gt, valid, gamma=self.cfg.gamma,
                                                   max_flow=self.cfg.max_flow))
        # Pyramid networks: per-level flows at their own resolution, finest first, with the network's weights.
        levels, weights = losses.pyramid_supervision(self.model, out)
        return loss_total(losses.multilevel_loss(levels, gt, valid, weights=weights))

    def train_step(self, step: int, batch: dict[str, Any], want_images: bool) -> StepOutput:
        dev = self.ctx.device
        img1, img2 = batch["img1"].to(dev), batch["img2"].to(dev)
        gt, valid = batch["flow"].to(dev), batch["valid"].to(dev)
        self.model.train()
        if self.cfg.freeze_bn:
            freeze_batchnorm(self.model)
        out = self.model(img1, img2, iters=self.cfg.iters, return_all=True)
        loss = self._loss(out, gt, valid)
        # before backward (NaN autograd can crash torch on CPU); collective, so no rank waits for a dead one
        finite = bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(out.flow.detach()).all())
        if not all_ranks_true(finite, self.ctx):
            raise NonFiniteError(f"step {step}: loss or flow is NaN or inf: the training diverged; lower "
                                 f"optim.lr (now {self.cfg.optim.lr:g}); checkpoints/latest.pt holds the last "
                                 f"finite weights")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        n_local, n_global = img1.shape[0], self.cfg.batch_size
        sync_gradients(self.model.parameters(), n_local, n_global, self.ctx)
        clip = self.cfg.optim.clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0
                     else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            m = flow_metrics(out.flow.detach(), gt, valid)
        local = {"loss": float(loss.detach()), "epe": m["epe"], "outlier_1px": m["outlier_1px"],
                 "outlier_3px": m["outlier_3px"]}
        metrics = reduce_metrics(local, n_local, n_global, self.ctx)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["grad_norm"] = float(grad_norm)
        images = {"train/panel": batch_panel(batch, out.flow)} if want_images and self.ctx.is_main else {}
        return StepOutput(metrics, images)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof pretrain``: train (one process or one torchrun rank) and print where the run went."""
    report_training("pretrain", run_training(PretrainJob, cfg, resume=cfg.resume, overwrite=cfg.overwrite,
                                             progress=progress))
    return 0
