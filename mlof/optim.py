"""The one optimizer and schedule builder: AdamW / Adam / SGD, and RAFT's OneCycle schedule.

Used by ``mlof pretrain`` (AdamW + OneCycle over ``steps + schedule_pad``), the MLOF meta-trainer (Adam, no
schedule), test-time adaptation (``mlof.meta.engine``: the release's AdamW + OneCycle over ``steps + 100``) and
``mlof bench``'s training step.
"""
from __future__ import annotations

from typing import Callable, Iterable, Union

import torch

__all__ = ["OPTIMIZERS", "SCHEDULES", "OptimizerSpec", "build_optimizer", "build_schedule", "onecycle"]

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "constant")

# An optimizer name of OPTIMIZERS, or a factory params -> torch.optim.Optimizer (mlof.adapt(optimizer=...)).
OptimizerSpec = Union[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]


def build_optimizer(params: Iterable[torch.Tensor], name: OptimizerSpec = "adamw", lr: float = 1e-4,
                    weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` / ``Adam`` (with ``eps``) or ``SGD`` over ``params`` at ``lr``.

    ``name`` may also be a factory ``params -> Optimizer`` (then ``lr``/``weight_decay``/``eps`` are its own);
    what it returns must be a ``torch.optim.Optimizer``.
    """
    if callable(name):
        opt = name(list(params))
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt
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


def build_schedule(optimizer: torch.optim.Optimizer, schedule: str | None, steps: int, pad: int = 100,
                   pct_start: float = 0.05) -> torch.optim.lr_scheduler.OneCycleLR | None:
    """The scheduler of ``schedule`` over ``steps`` optimizer steps: ``"onecycle"`` -> :func:`onecycle`;
    ``"constant"`` or ``None`` -> no scheduler (the lr stays as built)."""
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)} (or None)")
    return onecycle(optimizer, steps, pad, pct_start) if schedule == "onecycle" else None
