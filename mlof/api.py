"""``mlof.adapt``: unsupervised test-time adaptation of a flow network on the frames at hand.

    >>> result = mlof.adapt(model, (img1, img2))            # the MLOF release's inference setting
    >>> result.flow                                         # N x 2 x H x W, from the adapted copy
    >>> result.history[-1]["total"], result.flows_before[0]
    >>> mlof.adapt(model, video, mode="online")              # T x 3 x H x W, weights carried along

The caller's model is only read (deep-copied): its parameters, buffers, train/eval mode and requires_grad
flags are the same afterwards, also when adaptation raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mlof.meta.frames import as_pairs
from mlof.meta.objective import UnsupervisedObjective
from mlof.meta.online import OnlineAdapter
from mlof.meta.tta import AdaptSettings, adapt_pairs, model_device, restore, snapshot, working_copy

__all__ = ["adapt", "AdaptResult", "OnlineAdapter", "MODES"]

MODES = ("joint", "pairwise", "online")


@dataclass
class AdaptResult:
    """What ``mlof.adapt`` returns.

    flows:        one flow per consecutive pair, N x 2 x H x W each, predicted by the adapted model (the state
                  the guard kept: best by the objective unless ``keep="last"``).
    model:        the adapted copy (mode and requires_grad flags as the input model's).
    history:      one dict per evaluated state: ``step`` (steps taken), ``total`` and every loss term,
                  ``lr`` and ``grad_norm`` of the step taken from that state, ``guard`` (the guard's decision),
                  plus ``pair`` in pairwise/online mode and ``reset`` in online mode.
    flows_before: the unadapted model's flow for every pair (N x 2 x H x W), for before/after reports.
    steps_taken:  steps behind the returned state (joint mode; the last pair's in pairwise/online mode).
    rolled_back:  whether the guard rolled back (any pair).
    settings:     the resolved options.
    mode:         "joint", "pairwise" or "online".
    """

    flows: list[torch.Tensor]
    model: nn.Module
    history: list[dict]
    flows_before: list[torch.Tensor]
    steps_taken: int = 0
    rolled_back: bool = False
    settings: AdaptSettings | None = None
    mode: str = "joint"
    resets: list[tuple[int, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        # short on purpose: the default dataclass repr prints the whole network and every tensor
        shape = "x".join(str(d) for d in self.flows[0].shape) if self.flows else "-"
        totals = [h["total"] for h in self.history if isinstance(h.get("total"), (int, float))]
        loss = f", objective {totals[0]:.4g} -> {totals[-1]:.4g}" if totals else ""
        return (f"AdaptResult(mode={self.mode!r}, pairs={len(self.flows)}, flow={shape}, "
                f"model={type(self.model).__name__}, steps_taken={self.steps_taken}, "
                f"rolled_back={self.rolled_back}{loss})")

    @property
    def flow(self) -> torch.Tensor:
        """The first pair's adapted flow (the only one for a pair)."""
        return self.flows[0]

    @property
    def guard_actions(self) -> list[str]:
        return [str(h["guard"]) for h in self.history if "guard" in h]


def adapt(model: nn.Module, frames: Any, *, mode: str = "joint", device: torch.device | str | None = None,
          reset_every: int | None = None, reset_margin: float | None = 0.0, **options: Any) -> AdaptResult:
    """Adapt a copy of ``model`` to ``frames`` with the unsupervised MLOF objective and return its flows.

    frames: a pair (two 3 x H x W or N x 3 x H x W tensors, or numpy H x W x 3 images), a list of frames, a
            T x 3 x H x W tensor or an N x T x 3 x H x W tensor; float 0..255 (uint8 accepted).
    mode:   "joint" (default): one copy adapted on all consecutive pairs together (for a single pair this is
            the release's per-pair meta-inference); "pairwise": every pair adapted independently from the
            start weights (``result.model`` is the last pair's); "online": weights carried from pair to pair
            (see ``OnlineAdapter``; ``reset_every``/``reset_margin`` apply).
    device: where to adapt (default: the model's device).
    options (defaults = the MLOF release's inference): steps=3, optimizer="adamw" (or "adam", "sgd", or a
            callable params -> Optimizer), lr=1e-5, weight_decay=1e-5, schedule="onecycle" (or "constant"/None),
            clip=1.0, recipe="mlof", params="all" (or a group such as "update_block", names, a predicate),
            iters=12, corr=None ("dense"/"ondemand"/"auto" for networks with that option),
            keep_close_weight=None (the recipe's: 10 for mlof), bn="eval" (or "train"), guard=True,
            guard_factor=1.5, keep="best" (or "last"), bidirectional=True, net_options={} (further network
            keyword options).
    Raises ``ValueError`` for bad frames or options.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    settings = AdaptSettings.from_options(options)
    pairs = as_pairs(frames)
    dev = torch.device(device) if device is not None else model_device(model)
    pairs = [(a.to(dev), b.to(dev)) for a, b in pairs]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training

    if mode == "online":
        adapter = OnlineAdapter(model, reset_every=reset_every, reset_margin=reset_margin, device=dev, **options)
        adapter.step(pairs[0][0])  # the first frame gives no flow
        flows = [adapter.step(b) for _, b in pairs]
        work = adapter.model
        result = AdaptResult(flows, work, adapter.history, adapter.flows_before, mode=mode, settings=settings,
                             resets=list(adapter.resets))
        result.rolled_back = any(str(h.get("guard", "")).startswith("rollback") for h in adapter.history)
        result.steps_taken = adapter.last_steps
    else:
        work, names = working_copy(model, settings, dev)
        named = dict(work.named_parameters())
        fixed = {n: named[n].detach().clone() for n in names}
        objective = UnsupervisedObjective(settings.recipe, settings.keep_close_weight, settings.bidirectional)
        if mode == "joint":
            out = adapt_pairs(work, pairs, settings, names, objective, fixed)
            result = AdaptResult(out.flows, work, out.history, out.flows_before, out.best_step, out.rolled_back,
                                 settings, mode)
        else:
            start = snapshot(work, names)
            result = AdaptResult([], work, [], [], settings=settings, mode=mode)
            for i, pair in enumerate(pairs):
                restore(work, start)
                out = adapt_pairs(work, [pair], settings, names, objective, fixed, tag={"pair": i})
                result.flows += out.flows
                result.flows_before += out.flows_before
                result.history += out.history
                result.rolled_back |= out.rolled_back
                result.steps_taken = out.best_step
    # The adapted copy behaves like the input model: same mode and requires_grad flags.
    for n, p in work.named_parameters():
        p.requires_grad_(flags.get(n, p.requires_grad))
    work.train(was_training)
    return result
