"""Streaming adaptation along a video: ``flow = OnlineAdapter(model).step(frame)``, a frame-by-frame front of the
adaptation engine in online mode (``mlof.meta.engine.Adapter``: weights carried from pair to pair, pulled towards
the start weights, reset when they drift; see ``Adapter._online_pair``)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlof.meta.engine import Adapter, snapshot, restore
from mlof.meta.frames import as_frame
from mlof.meta.settings import adapt_settings

__all__ = ["OnlineAdapter"]


class OnlineAdapter:
    """Streaming adaptation: ``flow = adapter.step(frame)`` (None for the first frame).

    model:   the network (only read; the adapter works on a copy, ``adapter.model``).
    options: every adaptation option but ``mode`` (``mlof.meta.settings.AdaptSettings``), among them the online
             ones ``reset_every`` (reset to the start weights every K pairs) and ``reset_margin`` (reset when
             the adapted objective exceeds ``(1 + reset_margin) *`` the start model's on the same pair) and
             ``device``; the optimizer is re-created for every pair.
    Attributes: ``engine`` (the ``Adapter``), ``history`` (every step of every pair, with ``pair``, ``reset``
    and ``start_total`` -- the unadapted start model's objective on that pair -- keys), ``flows_before`` (the
    start model's flows), ``resets`` ((pair, reason) list).
    """

    def __init__(self, model: nn.Module, **options: Any):
        if options.get("mode", "online") != "online":
            raise ValueError(f"mode: OnlineAdapter adapts online, got mode={options['mode']!r} "
                             f"(use mlof.adapt for other modes)")
        self.engine = Adapter(model, adapt_settings(options, mode="online"))
        self.history: list[dict] = []
        self.flows_before: list[torch.Tensor] = []
        self.resets: list[tuple[int, str]] = []
        self._prev: torch.Tensor | None = None

    # The engine's parts, named as users of the streaming object know them.
    @property
    def model(self) -> nn.Module:
        return self.engine.model

    @property
    def start_model(self) -> nn.Module:
        return self.engine.start_model

    @property
    def settings(self):
        return self.engine.settings

    @property
    def names(self) -> list[str]:
        return self.engine.names

    @property
    def last_steps(self) -> int:
        return self.engine.last_steps

    def reset(self, reason: str = "manual") -> None:
        """Back to the start weights (the next pair adapts from them)."""
        self.engine.reset()
        self.resets.append((self.engine.pairs_done, reason))

    def restart(self) -> None:
        """Forget the previous frame too (a new video starts): the next ``step`` returns None."""
        self.reset("restart")
        self._prev = None

    def step(self, frame: Any) -> torch.Tensor | None:
        """Feed the next frame (3 x H x W or N x 3 x H x W, 0..255). Returns the adapted flow N x 2 x H x W of
        (previous frame -> this frame), or None for the first frame."""
        frame = as_frame(frame).to(self.engine.device)
        prev, self._prev = self._prev, frame
        if prev is None:
            return None
        if prev.shape != frame.shape:
            raise ValueError(f"frame has shape {tuple(frame.shape)}, the previous one {tuple(prev.shape)}")
        result = self.engine.run([(prev, frame)])
        self.history += result.history
        self.flows_before += result.flows_before
        self.resets += result.resets
        return result.flows[0]

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """What a resumed stream needs: ``weights`` (the carried parameters and buffers, copies), ``pairs_done``,
        ``since_reset`` and ``last_steps``. The previous frame is not part of it (feed it again)."""
        e = self.engine
        return {"weights": snapshot(e.model, e.names), "pairs_done": e.pairs_done, "since_reset": e.since_reset,
                "last_steps": e.last_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` (weights moved to the adapter's device)."""
        e = self.engine
        restore(e.model, {k: v.to(e.device) for k, v in state["weights"].items()})
        e.pairs_done, e.since_reset, e.last_steps = (int(state[k]) for k in ("pairs_done", "since_reset",
                                                                             "last_steps"))
