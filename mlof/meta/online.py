"""Online adaptation along a video: weights carried from pair to pair, pulled towards the start weights, reset
when they drift.

For each new pair (previous frame, new frame) the adapter
  1. scores the START model on the pair (no gradient; its flow is ``flows_before``),
  2. adapts the CARRIED weights for ``steps`` guarded steps on the pair, with the keep-close term pulling
     towards the start weights (not towards the previous pair's: no drift),
  3. resets the weights to the start and re-adapts on this pair when the carried, adapted model scores worse
     than the unadapted start model by more than ``reset_margin`` (relative), or every ``reset_every`` pairs.
So a long video can never end up worse (by the objective) than adapting each pair afresh from the start.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mlof.meta.frames import as_frame
from mlof.meta.objective import UnsupervisedObjective
from mlof.meta.tta import AdaptSettings, adapt_pairs, model_device, restore, snapshot, working_copy

__all__ = ["OnlineAdapter"]


class OnlineAdapter:
    """Streaming adaptation: ``flow = adapter.step(frame)`` (None for the first frame).

    model:        the network (only read; the adapter works on a copy, ``adapter.model``).
    reset_every:  reset to the start weights every K pairs (None: never on a schedule).
    reset_margin: reset when the adapted objective exceeds ``(1 + reset_margin) *`` the start model's
                  objective on the same pair (None: never on drift).
    device:       where to run (default: the model's device).
    options:      every ``mlof.adapt`` option (steps, optimizer, lr, recipe, params, iters, keep_close_weight,
                  guard, ...); the optimizer is re-created for every pair.
    Attributes: ``history`` (every step of every pair, with ``pair``, ``reset`` and ``start_total`` -- the
    unadapted start model's objective on that pair -- keys), ``flows_before`` (the start model's flows),
    ``resets`` ((pair, reason) list).
    """

    def __init__(self, model: nn.Module, *, reset_every: int | None = None, reset_margin: float | None = 0.0,
                 device: torch.device | str | None = None, **options: Any):
        if reset_every is not None and (not isinstance(reset_every, int) or reset_every < 1):
            raise ValueError(f"reset_every must be a positive int or None, got {reset_every!r}")
        if reset_margin is not None and not reset_margin >= 0:
            raise ValueError(f"reset_margin must be >= 0 or None, got {reset_margin!r}")
        self.settings = AdaptSettings.from_options(options)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model, self.names = working_copy(model, self.settings, self.device)
        self.start_model = copy.deepcopy(self.model).requires_grad_(False)
        self.start_state = snapshot(self.model, self.names)
        named = dict(self.model.named_parameters())
        self.fixed = {n: named[n].detach().clone() for n in self.names}
        self.objective = UnsupervisedObjective(self.settings.recipe, self.settings.keep_close_weight,
                                               self.settings.bidirectional)
        self.reset_every, self.reset_margin = reset_every, reset_margin
        self.history: list[dict] = []
        self.flows_before: list[torch.Tensor] = []
        self.resets: list[tuple[int, str]] = []
        self._prev: torch.Tensor | None = None
        self._pair = 0
        self._since_reset = 0
        self.last_steps = 0

    def reset(self, reason: str = "manual") -> None:
        """Back to the start weights (the next pair adapts from them)."""
        restore(self.model, self.start_state)
        self._since_reset = 0
        self.resets.append((self._pair, reason))

    def restart(self) -> None:
        """Forget the previous frame too (a new video starts): the next ``step`` returns None."""
        self.reset("restart")
        self._prev = None

    def step(self, frame: Any) -> torch.Tensor | None:
        """Feed the next frame (3 x H x W or N x 3 x H x W, 0..255). Returns the adapted flow N x 2 x H x W of
        (previous frame -> this frame), or None for the first frame."""
        frame = as_frame(frame).to(self.device)
        prev, self._prev = self._prev, frame
        if prev is None:
            return None
        if prev.shape != frame.shape:
            raise ValueError(f"frame has shape {tuple(frame.shape)}, the previous one {tuple(prev.shape)}")
        index = self._pair
        if self.reset_every is not None and self._since_reset >= self.reset_every:
            self.reset("every")
        with torch.no_grad():
            start = self.objective(self.start_model, self.start_model, prev, frame,
                                   **self.settings.net_call_options())
        start_total = float(start.total)
        self.flows_before.append(start.out_fw.flow.detach())
        carried = self._since_reset > 0
        outcome = self._adapt(prev, frame, index, reset="", start_total=start_total)
        after = self._total_at(outcome)
        if (carried and self.reset_margin is not None and torch.isfinite(torch.tensor(start_total))
                and after > (1.0 + self.reset_margin) * start_total):
            self.reset("drift")
            outcome = self._adapt(prev, frame, index, reset="drift", start_total=start_total)
        self._since_reset += 1
        self._pair += 1
        return outcome.flows[0]

    def _adapt(self, img1: torch.Tensor, img2: torch.Tensor, index: int, reset: str, start_total: float):
        # start_total: the unadapted start model's objective on this pair, logged beside every step.
        outcome = adapt_pairs(self.model, [(img1, img2)], self.settings, self.names, self.objective, self.fixed,
                              tag={"pair": index, "reset": reset, "start_total": start_total})
        self.history.extend(outcome.history)
        self.last_steps = outcome.best_step
        return outcome

    @staticmethod
    def _total_at(outcome) -> float:
        for entry in outcome.history:
            if entry.get("step") == outcome.best_step and "total" in entry:
                # Compare data terms only: the start model pays no keep-close penalty.
                return float(entry["total"]) - float(entry.get("keep_close", 0.0))
        return float("inf")
