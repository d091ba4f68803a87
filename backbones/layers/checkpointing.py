"""Activation checkpointing that is exact whatever the batch-norm mode.

``torch.utils.checkpoint`` reruns a function during backward. A BatchNorm layer in training mode would then
update its running statistics a second time; ``checkpoint_call`` saves and restores them around the rerun, so
the module's state after backward equals the plain path's. Dropout masks are replayed (the RNG state is kept,
torch's default).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_call", "keep_batchnorm_statistics"]


@contextlib.contextmanager
def keep_batchnorm_statistics(module: nn.Module):
    """Restore every training-mode BatchNorm buffer of ``module`` (running mean/var, batch count) on exit."""
    saved = [(m, [b.clone() if b is not None else None for b in (m.running_mean, m.running_var,
                                                                   m.num_batches_tracked)])
             for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in saved:
                for buf, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), values):
                    if buf is not None:
                        buf.copy_(value)


def checkpoint_call(fn: Callable[..., Any], *args: Any, owner: nn.Module | None = None) -> Any:
    """``fn(*args)`` with its activations recomputed during backward instead of stored.

    owner: the module whose BatchNorm statistics ``fn`` may update (default ``fn`` itself when it is a module);
    the recomputation leaves them as the first call did.
    """
    owner = owner if owner is not None else (fn if isinstance(fn, nn.Module) else None)
    calls = [0]

    def run(*inner: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1 or owner is None:
            return fn(*inner)
        with keep_batchnorm_statistics(owner):
            return fn(*inner)

    return checkpoint(run, *args, use_reentrant=False)
