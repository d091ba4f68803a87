"""The adaptation guard: keep the best state seen, roll back on NaN/inf or divergence.

Unsupervised test-time adaptation can make things worse (ANCHORS: KITTI C+T 4.65 -> 5.17 EPE) and a bad
learning rate can destroy the network in one step. The guard watches the unsupervised objective after every
step (it is the next step's loss, so watching costs one extra evaluation at the end only) and:
  - keeps a copy of the best state (lowest objective) and its flows,
  - rolls back to it and stops when the objective is NaN/inf or exceeds ``factor * initial``,
  - skips a step whose gradient is NaN/inf (the weights are left as they were).
Every decision is written into the adaptation history as ``guard``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

__all__ = ["Guard", "NonFiniteError", "require_finite", "START", "IMPROVED", "KEPT", "ROLLBACK_NONFINITE",
           "ROLLBACK_DIVERGED", "SKIP_GRADIENT"]

START = "start"
IMPROVED = "improved"
KEPT = "kept"                      # worse than the best so far, within the divergence bound
ROLLBACK_NONFINITE = "rollback:nonfinite-loss"
ROLLBACK_DIVERGED = "rollback:diverged"
SKIP_GRADIENT = "skip:nonfinite-gradient"


class NonFiniteError(ValueError):
    """A loss or flow became NaN/inf during training: the run diverged (e.g. a learning rate far too large)."""


def require_finite(what: str, *tensors: Any, hint: str = "") -> None:
    """Raise ``NonFiniteError`` naming ``what`` if any tensor holds NaN/inf.

    Called before ``backward()``: autograd through NaN or huge values is pointless and can crash torch on CPU,
    and an optimizer step from such gradients would write NaN weights into the next checkpoint.
    """
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise NonFiniteError(f"{what} is NaN or inf: the run diverged{'; ' + hint if hint else ''}")


class Guard:
    """Decides, after each adaptation step, whether to keep, remember or roll back the current state.

    factor:  divergence bound: an objective above ``factor * initial`` (for a positive initial objective)
             triggers a rollback.
    enabled: when False, ``observe`` only tracks the best state and never asks for a rollback (the last state
             is kept), and gradients are never rejected.
    """

    def __init__(self, factor: float = 1.5, enabled: bool = True):
        if not factor > 1.0:
            raise ValueError(f"guard factor must be > 1 (a multiple of the initial loss), got {factor}")
        self.factor = float(factor)
        self.enabled = bool(enabled)
        self.reset()

    def reset(self) -> None:
        self.initial: float | None = None
        self.best: float = math.inf
        self.best_step: int = -1
        self.best_payload: Any = None

    def observe(self, step: int, loss: float, capture: Callable[[], Any]) -> str:
        """Record the objective ``loss`` of the state after ``step`` steps; ``capture()`` snapshots that state
        (called only when it becomes the best). Returns the action taken (one of the module constants)."""
        if self.initial is None:
            self.initial = loss
            if math.isfinite(loss):
                self.best, self.best_step, self.best_payload = loss, step, capture()
                return START
            # Nothing to roll back to: remember the start anyway so the caller can return the unadapted result.
            self.best_step, self.best_payload = step, capture()
            return ROLLBACK_NONFINITE if self.enabled else START
        if not math.isfinite(loss):
            return ROLLBACK_NONFINITE if self.enabled else KEPT
        if self.enabled and self.diverged(loss):
            return ROLLBACK_DIVERGED
        if loss < self.best or not math.isfinite(self.best):
            self.best, self.best_step, self.best_payload = loss, step, capture()
            return IMPROVED
        return KEPT

    def diverged(self, loss: float) -> bool:
        """Whether ``loss`` exceeds the divergence bound set by the initial objective."""
        return self.diverged_from(self.initial, loss)

    def diverged_from(self, initial: float | None, loss: float) -> bool:
        """Whether ``loss`` exceeds ``factor * initial`` (for a negative initial: ``initial + (factor-1)|initial|``)."""
        if initial is None or not math.isfinite(initial):
            return False
        bound = self.factor * initial if initial > 0 else initial + (self.factor - 1.0) * abs(initial)
        return loss > bound

    def gradient_ok(self, grad_norm: float) -> bool:
        """False when the step should be skipped (NaN/inf gradient) and the guard is enabled."""
        return math.isfinite(grad_norm) or not self.enabled

    @staticmethod
    def is_rollback(action: str) -> bool:
        return action.startswith("rollback")
