"""The one optimizer and schedule builder: AdamW / Adam / SGD, and RAFT's OneCycle schedule.

Used by ``mlof pretrain`` (AdamW + OneCycle over ``steps + schedule_pad``), the MLOF meta-trainer (Adam, no
schedule) and test-time adaptation (the release's AdamW + OneCycle over ``steps + 100``).
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["OPTIMIZERS", "build_optimizer", "onecycle"]

OPTIMIZERS = ("adamw", "adam", "sgd")


def build_optimizer(params: Iterable[torch.Tensor], name: str = "adamw", lr: float = 1e-4,
                    weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` / ``Adam`` (with ``eps``) or ``SGD`` over ``params`` at ``lr``."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")


def onecycle(optimizer: torch.optim.Optimizer, steps: int, pad: int = 100,
             pct_start: float = 0.05) -> torch.optim.lr_scheduler.OneCycleLR:
    """RAFT's schedule: linear warm-up to each group's lr over ``pct_start`` of ``steps + pad`` scheduler
    steps, then linear anneal. The scheduler is stepped once per optimizer step, so the padded tail is never
    reached (with ``pad`` 0 the step after the last update would give a negative lr: ``pad`` must be >= 1)."""
    if pad < 1:
        raise ValueError(f"schedule_pad must be >= 1, got {pad}")
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=steps + pad, pct_start=pct_start,
                                               cycle_momentum=False, anneal_strategy="linear")
