"""The test-time adaptation engine: ``Adapter(model, **options).run(pairs)``.

One object owns everything adaptation needs, set up once:
  - the working copy of the caller's network (the caller's model is only read),
  - the names of the parameters that adapt (``settings.params``),
  - the start state (adapted parameters and buffers), copied once; the keep-close reference ``fixed`` is a view
    of it, ``reset()`` restores it,
  - the objective (``UnsupervisedObjective``: the loss recipe plus the keep-close term),
  - the guard (``Guard``: best state, rollback on NaN or divergence, skipped NaN gradients).
``run(pairs)`` adapts in the mode of ``settings.mode`` (joint, pairwise, online) with the steps of either the
full-frame loop or the release protocol's crop loop (``settings.on_crops``). ``mlof.adapt``, ``OnlineAdapter``
and ``mlof.commands.evaluate``'s adaptation are thin uses of it. Options and their defaults: ``mlof.meta.settings``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from backbones.layers.upsample import resize_flow

from mlof.meta.crops import crop_augmentor, draw_crops
from mlof.meta.forward import call_net, has_iterations
from mlof.meta.frames import as_frame, resize_frame, working_size
from mlof.meta.guard import ROLLBACK_DIVERGED, ROLLBACK_NONFINITE, SKIP_GRADIENT, Guard
from mlof.meta.objective import UnsupervisedObjective
from mlof.meta.params import select_parameters
from mlof.meta.settings import AdaptSettings, adapt_settings
from mlof.optim import build_optimizer, build_schedule

__all__ = ["Adapter", "AdaptResult", "adapt_optimizer", "snapshot", "restore", "model_device"]

Pair = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger("mlof.adapt")


@dataclass
class AdaptResult:
    """What ``Adapter.run`` (and ``mlof.adapt``) returns.

    flows:        one flow per consecutive pair, N x 2 x H x W each, predicted by the adapted model (the state
                  the guard kept: best by the objective unless ``keep="last"``).
    model:        the adapted copy (mode and requires_grad flags as the input model's).
    history:      one dict per evaluated state: ``step`` (steps taken), ``total`` and every loss term,
                  ``lr`` and ``grad_norm`` of the step taken from that state, ``guard`` (the guard's decision),
                  plus ``pair`` in pairwise/online mode and ``reset`` and ``start_total`` in online mode.
    flows_before: the unadapted model's flow for every pair (N x 2 x H x W), for before/after reports.
    steps_taken:  steps behind the returned state (joint mode; the last pair's in pairwise/online mode).
    rolled_back:  whether the guard rolled back (any pair).
    settings:     the resolved options.
    mode:         "joint", "pairwise" or "online".
    resets:       online mode: ``(pair, reason)`` of every reset to the start weights ("every", "drift").
    working_size: (H, W) the frames were adapted and predicted at when ``max_pixels`` shrank them, else None.
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
    working_size: tuple[int, int] | None = None

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


@dataclass
class _Outcome:
    """One adaptation of the working copy on some pairs (``Adapter._adapt``)."""

    flows: list[torch.Tensor]          # per pair, N x 2 x H x W, of the returned state
    flows_before: list[torch.Tensor]   # per pair, of the start state
    best_step: int                     # steps taken by the returned state
    rolled_back: bool
    history: list[dict]
    start_state: dict[str, torch.Tensor] | None = None   # the snapshot the loop took before its first step


# ------------------------------------------------------------------------------------------------ state helpers
def snapshot(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters and of every buffer (``"buffer:<name>"``): what adaptation can change."""
    named = dict(model.named_parameters())
    state = {n: named[n].detach().clone() for n in names}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


@torch.no_grad()
def restore(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a ``snapshot`` back into ``model`` (in place: the parameter tensors stay the same objects)."""
    named = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for key, value in state.items():
        if key.startswith("buffer:"):
            buffers[key[len("buffer:"):]].copy_(value)
        else:
            named[key].copy_(value)


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def adapt_optimizer(params: list[torch.Tensor], s: AdaptSettings
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """(optimizer, scheduler or None) for the adapted parameters, built by ``mlof.optim`` from ``s``.

    The schedule is the release's (its fetch_optimizer: OneCycle over steps + 100, peak after 5 %, linear).
    """
    opt = build_optimizer(params, s.optimizer, lr=s.resolved_lr(), weight_decay=s.resolved_weight_decay())
    sched = build_schedule(opt, s.schedule, s.steps, pad=100, pct_start=0.05) if s.steps > 0 else None
    return opt, sched


def _finite(flows: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(f).all()) for f in flows)


def _zeroed(flows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0) for f in flows]


# ------------------------------------------------------------------------------------------------ the engine
class Adapter:
    """Test-time adaptation of a working copy of ``model``.

    model:    the network (only read: the engine adapts ``self.model``, a deep copy on ``settings.device``).
    settings: an ``AdaptSettings``; or give the options as keywords (``Adapter(model, steps=1, preset=...)``,
              parsed by ``mlof.meta.settings.adapt_settings``; defaults: ``AdaptSettings``).
    ``run(pairs)`` adapts and returns an ``AdaptResult``; calls carry the working copy's state (joint mode
    continues from the adapted weights, online mode also its pair count and reset schedule); ``reset()`` goes
    back to the start state. Attributes: ``model``, ``names`` (adapted parameters), ``fixed`` (their start
    values, the keep-close reference), ``objective``, ``guard``, ``settings``, ``device``.
    """

    def __init__(self, model: nn.Module, settings: AdaptSettings | Mapping[str, Any] | None = None, **options: Any):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        s = adapt_settings(settings, **options)
        if s.adapt_iters is not None and not has_iterations(model):
            s = replace(s, adapt_iters=None)   # iterations mean nothing to this network
        self.settings = s
        self.device = torch.device(s.device) if s.device is not None else model_device(model)
        # the caller's mode and flags, handed back with the adapted copy
        self._caller_training = model.training
        self._caller_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.model = self._working_copy(model)
        self.names = select_parameters(self.model, s.params)
        named = dict(self.model.named_parameters())
        self.adapted = {n: named[n] for n in self.names}    # the live tensors the optimizer steps
        self._prepare()
        # The one copy of the start weights: ``reset()`` restores it, keep-close pulls towards it.
        self.start_state = snapshot(self.model, self.names)
        self.fixed = {n: self.start_state[n] for n in self.names}
        self.objective = UnsupervisedObjective(s.recipe, s.keep_close_weight, s.bidirectional)
        self.guard = Guard(s.guard_factor, enabled=s.guard)
        # online mode: the unadapted network scores every pair (the reference of the drift reset)
        self.start_model = copy.deepcopy(self.model).requires_grad_(False) if s.mode == "online" else None
        self.pairs_done = 0       # online: pairs adapted so far (the ``pair`` index of the history)
        self.since_reset = 0      # online: pairs adapted since the last reset
        self.last_steps = 0       # steps behind the state of the last adapted pair

    # ------------------------------------------------------------------------------------------------ set-up
    def _working_copy(self, model: nn.Module) -> nn.Module:
        s = self.settings
        work = copy.deepcopy(model).to(self.device)
        if s.corr is not None and isinstance(getattr(work, "corr", None), str):
            work.corr = s.corr  # RAFT family: the correlation backend is a constructor option read at call time
        if s.precision not in (None, "fp32") and not hasattr(work, "precision"):
            raise ValueError(f"precision={s.precision!r}: {type(work).__name__} has no precision option")
        if s.precision is not None and hasattr(work, "precision"):
            work.precision = s.precision  # autocast inside the network: float32 weights (master) and loss
        if hasattr(work, "memory_budget") and s.memory_budget is not None:
            work.memory_budget = s.memory_budget  # the network picks its memory plan per call (logged)
        return work

    def _prepare(self) -> None:
        """The working copy's adaptation configuration: ``requires_grad`` on exactly the adapted parameters, no
        stale ``.grad``, batch norm in the ``bn`` mode."""
        chosen = set(self.names)
        for n, p in self.model.named_parameters():
            p.grad = None
            p.requires_grad_(n in chosen)
        self.model.train(self.settings.bn == "train")

    def _hand_over(self) -> None:
        """The adapted copy behaves like the input model: same mode and requires_grad flags."""
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._caller_flags.get(n, p.requires_grad))
        self.model.train(self._caller_training)

    def reset(self) -> None:
        """Back to the start state (adapted parameters and buffers); online mode restarts its reset schedule."""
        restore(self.model, self.start_state)
        self.since_reset = 0

    # ------------------------------------------------------------------------------------------------ run
    def run(self, pairs: Sequence[Pair]) -> AdaptResult:
        """Adapt on ``pairs`` ((img1, img2), each N x 3 x H x W float 0..255, all of one size) in the settings'
        mode and return the flows of the adapted state:

        - "joint": the working copy adapted on all pairs together (one pair: the release's meta-inference);
        - "pairwise": every pair adapted from the start state (the working copy ends as the last pair's);
        - "online": pair after pair, weights carried along and reset when they drift (``_online_pair``).

        Frames over ``max_pixels`` are shrunk to ``working_size`` first (area averaging; not when adapting on
        crops, which are cut from the frames as given); every step, guard check and flow runs there, and the flows
        (before and after) come back resized to the frames' size.
        """
        s = self.settings
        pairs = [(as_frame(a, f"pairs[{i}][0]").to(self.device), as_frame(b, f"pairs[{i}][1]").to(self.device))
                 for i, (a, b) in enumerate(pairs)]
        if not pairs:
            raise ValueError("pairs must hold at least one (img1, img2) pair")
        for i, (a, b) in enumerate(pairs):
            if a.shape != b.shape or a.shape != pairs[0][0].shape:
                raise ValueError(f"pairs[{i}] holds images of shapes {tuple(a.shape)} and {tuple(b.shape)}, "
                                 f"pairs[0][0] has {tuple(pairs[0][0].shape)}: all images must have one size")
        size = tuple(pairs[0][0].shape[-2:])
        work = size if s.on_crops else working_size(size, s.max_pixels)   # crops are cut from the frames as given
        if work != size:   # adapt and predict at the working size; flows go back to the frames' size below
            pairs = [(resize_frame(a, work), resize_frame(b, work)) for a, b in pairs]
        result = self._run(pairs)
        if work != size:
            log.info("adapting %dx%d frames at %dx%d (max_pixels=%d; max_pixels=None adapts them as given)",
                     *size, *work, s.max_pixels)
            result.working_size = work
            result.flows = [resize_flow(f, size, align_corners=False) for f in result.flows]
            result.flows_before = [resize_flow(f, size, align_corners=False) for f in result.flows_before]
        return result

    def _run(self, pairs: list[Pair]) -> AdaptResult:
        s = self.settings
        self._prepare()
        try:
            if s.mode == "joint":
                out = self._adapt(pairs)
                self.last_steps = out.best_step
                return AdaptResult(out.flows, self.model, out.history, out.flows_before, out.best_step,
                                   out.rolled_back, s, s.mode)
            result = AdaptResult([], self.model, [], [], settings=s, mode=s.mode)
            for i, pair in enumerate(pairs):
                if s.mode == "pairwise":
                    self.reset()
                    out = self._adapt([pair], tag={"pair": i})
                    result.flows_before += out.flows_before
                    result.rolled_back |= out.rolled_back
                    self.last_steps = out.best_step
                else:
                    out, before = self._online_pair(pair, result.resets)
                    result.flows_before.append(before)
                result.flows += out.flows
                result.history += out.history
            if s.mode == "online":
                result.rolled_back = any(str(h.get("guard", "")).startswith("rollback") for h in result.history)
            result.steps_taken = self.last_steps
            return result
        finally:
            self._hand_over()

    def _online_pair(self, pair: Pair, resets: list[tuple[int, str]]) -> tuple[_Outcome, torch.Tensor]:
        """One pair of online mode -> (outcome, the start model's flow). The adapter

        1. scores the START model on the pair (no gradient; its flow is the "before" flow),
        2. adapts the CARRIED weights on the pair, keep-close pulling towards the start weights (not towards the
           previous pair's: no drift),
        3. resets to the start weights and re-adapts on this pair when the carried, adapted model scores worse
           than the unadapted start model by more than ``reset_margin`` (relative), or every ``reset_every`` pairs.
        So a long video never ends up worse (by the objective) than adapting each pair afresh from the start.
        """
        s = self.settings
        index = self.pairs_done
        if s.reset_every is not None and self.since_reset >= s.reset_every:
            self.reset()
            resets.append((index, "every"))
        with torch.no_grad():
            start = self.objective(self.start_model, *pair, **s.net_call_options(adapting=True))
            before = (call_net(self.start_model, self.start_model, *pair, **s.net_call_options()).flow.detach()
                      if s.fewer_adapt_iters else start.out_fw.flow.detach())
        start_total = float(start.total)
        carried = self.since_reset > 0
        out = self._adapt([pair], tag={"pair": index, "reset": "", "start_total": start_total})
        after = self._data_total(out)
        if (carried and s.reset_margin is not None and math.isfinite(start_total)
                and after > (1.0 + s.reset_margin) * start_total):
            self.reset()
            resets.append((index, "drift"))
            first = out.history
            out = self._adapt([pair], tag={"pair": index, "reset": "drift", "start_total": start_total})
            out.history = first + out.history
        self.last_steps = out.best_step
        self.since_reset += 1
        self.pairs_done += 1
        return out, before

    @staticmethod
    def _data_total(outcome: _Outcome) -> float:
        """The data objective of the returned state (the start model pays no keep-close penalty)."""
        for entry in outcome.history:
            if entry.get("step") == outcome.best_step and "total" in entry:
                return float(entry["total"]) - float(entry.get("keep_close", 0.0))
        return float("inf")

    # ------------------------------------------------------------------------------------------------ steps
    def _adapt(self, pairs: list[Pair], tag: Mapping[str, Any] | None = None) -> _Outcome:
        """Adapt the working copy in place on ``pairs`` for ``steps`` steps. History entry k describes the state
        after k steps: its objective (``total`` and every term), the guard's decision, the lr and gradient norm
        of the step taken from it, and ``time`` (seconds: evaluation, plus backward and update when a step was
        taken). With crops (``augment`` / ``crop``, the release protocol) see ``_adapt_on_crops``. When
        ``bn_predict`` differs from ``bn``, or ``adapt_iters`` from ``iters``, the flows before and after are
        predicted in a pass of their own (``bn_predict`` mode, ``iters`` iterations), so that they compare at
        one setting."""
        s = self.settings
        if s.on_crops:
            out = self._adapt_on_crops(pairs, tag)
        elif not s.separate_prediction:
            return self._adapt_full_frames(pairs, tag)
        else:
            before = self._predict(pairs)
            out = self._adapt_full_frames(pairs, tag)
            out.flows_before, out.flows = before, self._predict(pairs)
        if s.guard and s.fewer_adapt_iters:
            self._check_at_prediction(pairs, out)
        return out

    def _check_at_prediction(self, pairs: list[Pair], out: _Outcome) -> None:
        """The guard's last word when the steps ran fewer iterations than the returned flows (``adapt_iters``):
        the state was chosen by the objective at ``adapt_iters``, but what is returned is the flow at ``iters``,
        and a network adapted at 2 iterations can go astray at 12. So the recipe's loss of the returned forward
        flows (no ground truth needed; forward direction only: the flows are already there) is compared with
        that of the start state's, and the start state is returned unless the adapted one is no worse
        (``history[-1]["check"]``: ``"adapted"`` or ``"start"``)."""
        if out.best_step == 0:     # the start state is returned already
            return

        def value(flows: list[torch.Tensor]) -> float:
            with torch.no_grad():
                vals = [float(self.objective.loss(a, b, f).total) for (a, b), f in zip(pairs, flows)]
            return sum(vals) / len(vals)

        before, after = value(out.flows_before), value(out.flows)
        keep = math.isfinite(after) and after <= before
        if not keep:
            restore(self.model, out.start_state)
            out.flows, out.best_step = [f.clone() for f in out.flows_before], 0
        # recorded on the last history entry (the last evaluated state), as "check": the kept state
        out.history[-1].update(check="adapted" if keep else "start", check_before=before, check_after=after,
                               check_iters=self.settings.iters)

    def _score(self, pairs: list[Pair], backward: bool, accept: Any = None):
        return self.objective.over_pairs(self.model, pairs, params=self.adapted, fixed=self.fixed,
                                         backward=backward, accept=accept,
                                         **self.settings.net_call_options(adapting=True))

    def _step(self, opt: torch.optim.Optimizer, sched: Any, entry: dict, action: str) -> bool:
        """Clip the gradient norm, record it and the lr in ``entry``, step the optimizer and schedule -- unless the
        guard refuses the gradient (then ``entry["guard"]`` says so). Returns whether a step was taken."""
        clip = self.settings.clip if self.settings.clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in self.adapted.values() if p.grad is not None],
                                                         clip))
        entry["grad_norm"] = grad_norm
        entry["lr"] = opt.param_groups[0]["lr"]
        if not self.guard.gradient_ok(grad_norm):
            entry["guard"] = f"{action}; {SKIP_GRADIENT}"
            return False
        opt.step()
        if sched is not None:
            sched.step()
        return True

    def _adapt_full_frames(self, pairs: list[Pair], tag: Mapping[str, Any] | None) -> _Outcome:
        s, model, guard = self.settings, self.model, self.guard
        opt, sched = adapt_optimizer(list(self.adapted.values()), s)
        guard.reset()
        history: list[dict] = []
        current: list[torch.Tensor] = []
        capture = lambda: (snapshot(model, self.names), [f.clone() for f in current])  # noqa: E731
        flows_before: list[torch.Tensor] = []
        start_state = None
        rolled_back = False
        state_step = 0
        initial_pairs: list[float] = []
        for k in range(s.steps + 1):
            last = k == s.steps
            tic = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            accept = None
            if k > 0 and guard.enabled:
                accept = lambda i, v: not guard.diverged_from(initial_pairs[i], v)  # noqa: E731
            score = self._score(pairs, backward=not last, accept=accept)
            total, current, per_pair = score.total, score.flows, score.per_pair
            if k == 0:
                initial_pairs = per_pair
                flows_before = [f.clone() for f in current]
                start_state = snapshot(model, self.names)
            action = guard.observe(k, total, capture)
            if score.refused and not Guard.is_rollback(action):
                # A pair diverged (or went non-finite) although the average did not: never step from a state
                # whose gradient is incomplete.
                action = ROLLBACK_NONFINITE if not math.isfinite(max(per_pair)) else ROLLBACK_DIVERGED
            entry = {**(tag or {}), "step": k, "total": total, **score.terms, "lr": None, "grad_norm": None,
                     "guard": action, "time": time.perf_counter() - tic}
            plan = getattr(model, "last_memory_plan", None)
            if k == 0 and plan is not None:
                entry["memory_plan"] = plan.describe()
            history.append(entry)
            state_step = k
            if Guard.is_rollback(action):
                rolled_back = True
                break
            if last:
                break
            if self._step(opt, sched, entry, action):
                entry["time"] = time.perf_counter() - tic  # evaluation + backward + update
        opt.zero_grad(set_to_none=True)

        flows, best_step = current, state_step
        if rolled_back or (s.keep == "best" and guard.best_payload is not None and guard.best_step != state_step):
            state, flows = guard.best_payload
            restore(model, state)
            best_step = guard.best_step
        guard.reset()   # drop the best state's copy
        if not _finite(flows):
            # Never hand back NaN flow: fall back to the start state (or zeros if even that is not finite).
            if start_state is not None:
                restore(model, start_state)
            best_step = 0
            flows = _zeroed(flows_before)
            history.append({**(tag or {}), "step": state_step, "guard": "fallback:start-state"})
        return _Outcome(flows, flows_before, best_step, rolled_back, history, start_state)

    def _adapt_on_crops(self, pairs: list[Pair], tag: Mapping[str, Any] | None) -> _Outcome:
        """The release's protocol: each step on a new seeded random crop (augmented by ``augment``) of every pair,
        with batch norm in ``bn`` mode; flows of the full frames predicted in ``bn_predict`` mode.

        History entry k (k < steps) holds the objective of the crop step k was taken on; the last entry describes
        the returned state on the full frames. With the guard on, the objective of the full frames (predict
        mode) is compared between the start and the end: a non-finite or diverged end state is rolled back, and
        ``keep="best"`` keeps the lower of the two (crops of different steps are not comparable with each other).
        """
        s, model, guard = self.settings, self.model, self.guard
        opt, sched = adapt_optimizer(list(self.adapted.values()), s)
        guard.reset()
        aug = crop_augmentor(s)
        rng = np.random.default_rng(s.seed)
        history: list[dict] = []

        def full_objective() -> float:
            with self._predict_mode():
                return self._score(pairs, backward=False).total

        flows_before = self._predict(pairs)
        start_state = snapshot(model, self.names)
        start_value = full_objective() if guard.enabled else None
        for k in range(s.steps):
            tic = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            crops = draw_crops(pairs, aug, rng)
            score = self._score(crops, backward=True)
            entry = {**(tag or {}), "step": k, "total": score.total, **score.terms, "lr": opt.param_groups[0]["lr"],
                     "grad_norm": None, "guard": "crop", "crop": tuple(crops[0][0].shape[-2:])}
            history.append(entry)
            if score.refused or not math.isfinite(score.total):
                entry["guard"] = ROLLBACK_NONFINITE
                restore(model, start_state)
                break
            if self._step(opt, sched, entry, "crop"):
                entry["time"] = time.perf_counter() - tic
        opt.zero_grad(set_to_none=True)
        rolled_back = any(str(h["guard"]).startswith("rollback") for h in history)
        best_step = 0 if rolled_back else s.steps
        final: dict[str, Any] = {**(tag or {}), "step": best_step, "guard": "keep:last", "full_frames": True}
        if guard.enabled and not rolled_back:
            end_value = full_objective()
            final["total"] = end_value
            diverged = not math.isfinite(end_value) or guard.diverged_from(start_value, end_value)
            if diverged or (s.keep == "best" and end_value > start_value):
                restore(model, start_state)
                best_step, rolled_back = 0, diverged
                final.update(step=0, total=start_value,
                             guard=ROLLBACK_DIVERGED if diverged else "keep:best=start")
            else:
                final["guard"] = "keep:best=end" if s.keep == "best" else "keep:last"
        flows = flows_before if best_step == 0 else self._predict(pairs)
        if not _finite(flows):
            restore(model, start_state)
            best_step = 0
            flows = _zeroed(flows_before)
            final["guard"] = "fallback:start-state"
        history.append(final)
        return _Outcome(flows, flows_before, best_step, rolled_back, history, start_state)

    # ------------------------------------------------------------------------------------------------ predict
    @contextlib.contextmanager
    def _predict_mode(self) -> Iterator[None]:
        """The ``bn_predict`` mode for a measurement; in "train" mode the running statistics it would move are
        put back afterwards (a measurement must not change the model)."""
        model = self.model
        was = model.training
        train = self.settings.predict_mode_is_train()
        buffers = snapshot(model, []) if train else None
        model.train(train)
        try:
            yield
        finally:
            model.train(was)
            if buffers is not None:
                restore(model, buffers)

    @torch.no_grad()
    def _predict(self, pairs: list[Pair]) -> list[torch.Tensor]:
        """Forward flows of ``pairs`` with batch norm in the ``bn_predict`` mode."""
        with self._predict_mode():
            return [call_net(self.model, self.model, a, b, **self.settings.net_call_options()).flow.detach()
                    for a, b in pairs]
