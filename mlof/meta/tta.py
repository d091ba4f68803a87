"""The test-time adaptation engine behind ``mlof.adapt`` and ``OnlineAdapter``: a few optimizer steps on the
unsupervised objective of one or more frame pairs, watched by the guard.

Works on a network the caller already copied (it is modified in place): ``mlof.api`` owns copying, input
parsing and result assembly; this module owns the loop.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from mlof.meta.guard import ROLLBACK_DIVERGED, ROLLBACK_NONFINITE, SKIP_GRADIENT, Guard
from mlof.meta.objective import UnsupervisedObjective
from mlof.meta.params import ParamSpec

__all__ = ["AdaptSettings", "PairsOutcome", "adapt_pairs", "build_optimizer", "snapshot", "restore",
           "working_copy", "model_device", "PRESETS",
           "DEFAULT_LR"]

OPTIMIZERS = ("adamw", "adam", "sgd")
# The release's meta-inference: AdamW lr 1e-5, weight decay 1e-5 (its inner-loop SGD uses 5e-6).
DEFAULT_LR = {"adamw": 1e-5, "adam": 1e-5, "sgd": 5e-6}
DEFAULT_WD = {"adamw": 1e-5, "adam": 0.0, "sgd": 0.0}


# Named protocols (``preset=``); options given next to a preset override its values.
PRESETS: dict[str, dict[str, Any]] = {
    # mlof's own choice: the release's optimizer and objective on the FULL frames, batch norm in eval mode,
    # the guard keeping the best state by the objective.
    "mlof": {},
    # The MLOF release's meta_inference.py: network in train() while adapting (batch statistics, running
    # statistics updated), each of the 3 AdamW steps (lr 1e-5, wd 1e-5, OneCycle, clip 1) on a new random crop
    # drawn by the release's augmentor (scale 2^0 with RAFT's stretch, no flip, colour jitter, eraser), then
    # the adapted network in eval() on the full frame. No guard: the last state is returned.
    "release": {"steps": 3, "optimizer": "adamw", "lr": 1e-5, "weight_decay": 1e-5, "schedule": "onecycle",
                "clip": 1.0, "recipe": "mlof", "params": "all", "iters": 12, "bn": "train", "bn_predict": "eval",
                "augment": "mlof-release-sintel", "guard": False, "keep": "last"},
}
PRESETS["release-sintel"] = dict(PRESETS["release"])
PRESETS["release-kitti"] = {**PRESETS["release"], "augment": "mlof-release-kitti"}


@dataclass
class AdaptSettings:
    """Every option of test-time adaptation (see docs/meta.md). Defaults = the MLOF release's inference."""

    steps: int = 3
    optimizer: str | Callable[[list[torch.Tensor]], torch.optim.Optimizer] = "adamw"
    lr: float | None = None               # None: DEFAULT_LR[optimizer]
    weight_decay: float | None = None     # None: DEFAULT_WD[optimizer]
    schedule: str | None = "onecycle"     # RAFT-lineage OneCycle (total steps + 100, 5 % warm-up, linear); None
    clip: float | None = 1.0              # gradient-norm clipping; None disables it
    recipe: Any = "mlof"                  # mlof.losses.build_loss recipe or a loss module
    params: ParamSpec = "all"             # what adapts
    iters: int | None = 12                # refinement iterations (ignored by networks without them)
    corr: str | None = None               # correlation backend, passed to networks that take ``corr``
    keep_close_weight: float | None = None  # pull towards the start weights; None = the recipe's (mlof: 10)
    bn: str = "eval"                      # BN mode while adapting: "eval" (running stats) or "train" (batch stats)
    bn_predict: str | None = None         # BN mode of the returned flows; None = same as ``bn`` (release: "eval")
    augment: str | None = None            # adapt on augmented random crops: a mlof.data.augment preset name
    crop: tuple[int, int] | None = None   # crop (H, W) for each step (overrides the preset's); None = preset's
    seed: int = 0                         # seed of the crops and augmentation
    guard: bool = True
    guard_factor: float = 1.5             # rollback when the objective exceeds factor * initial
    keep: str = "best"                    # "best" state by the objective, or the "last" one
    bidirectional: bool = True
    net_options: dict = field(default_factory=dict)  # further keyword options for the network call
    precision: str | None = None          # "fp32" | "bf16" | "fp16" (CUDA) autocast in the network; None: as built
    memory_budget: Any = "auto"           # bytes, "8GB", "auto" (a share of available memory) or None (no plan)

    def __post_init__(self) -> None:
        # types first, so that e.g. lr="abc" (from a command line) is a ValueError naming the option
        for name in ("lr", "weight_decay", "clip", "keep_close_weight", "guard_factor"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        for name in ("guard", "bidirectional"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        if isinstance(self.optimizer, str) and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a callable params -> Optimizer, "
                             f"got {self.optimizer!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if self.schedule not in (None, "onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle', 'constant' or None, got {self.schedule!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip!r}")
        if self.bn not in ("eval", "train"):
            raise ValueError(f"bn must be 'eval' or 'train', got {self.bn!r}")
        if self.bn_predict not in (None, "eval", "train"):
            raise ValueError(f"bn_predict must be 'eval', 'train' or None, got {self.bn_predict!r}")
        if self.crop is not None:
            if len(self.crop) != 2 or not all(isinstance(v, int) and v > 0 for v in self.crop):
                raise ValueError(f"crop must be (height, width) of positive ints, got {self.crop!r}")
            self.crop = (int(self.crop[0]), int(self.crop[1]))
        if self.augment is not None:
            from mlof.data.augment import build_augmentor
            build_augmentor(self.augment)   # raises ValueError naming the known presets
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.iters is not None and (not isinstance(self.iters, int) or self.iters < 1):
            raise ValueError(f"iters must be an int >= 1, got {self.iters!r}")
        if self.precision is not None:
            from backbones.base import check_precision
            check_precision(self.precision)
        if self.memory_budget not in (None, "auto"):
            from backbones.memory_plan import parse_bytes
            parse_bytes(self.memory_budget, "memory_budget")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "AdaptSettings":
        """Build from keyword options (``preset=NAME`` first supplies a protocol's values, see ``PRESETS``),
        naming unknown ones in the error."""
        options = dict(options)
        preset = options.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
            options = {**PRESETS[preset], **options}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown adapt option(s): {', '.join(unknown)}; known: preset, "
                             f"{', '.join(sorted(known))}")
        if isinstance(options.get("crop"), list):
            options["crop"] = tuple(options["crop"])
        return cls(**options)

    @property
    def on_crops(self) -> bool:
        """Whether each step adapts on a random (augmented) crop instead of the full frames."""
        return self.augment is not None or self.crop is not None

    def predict_mode_is_train(self) -> bool:
        return (self.bn_predict or self.bn) == "train"

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return DEFAULT_LR[self.optimizer] if isinstance(self.optimizer, str) else 1e-5

    def net_call_options(self) -> dict[str, Any]:
        return {"iters": self.iters, "corr": self.corr, **self.net_options}


def build_optimizer(params: list[torch.Tensor], s: AdaptSettings):
    """(optimizer, scheduler or None) for the adapted parameters."""
    if callable(s.optimizer):
        opt = s.optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    else:
        lr = s.resolved_lr()
        wd = DEFAULT_WD[s.optimizer] if s.weight_decay is None else float(s.weight_decay)
        if s.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, eps=1e-8)
        elif s.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
        else:
            opt = torch.optim.SGD(params, lr=lr, weight_decay=wd)
    sched = None
    if s.schedule == "onecycle" and s.steps > 0:
        # The RAFT-lineage schedule the release's fetch_optimizer builds: peak lr after 5 % of steps+100.
        max_lr = [g["lr"] for g in opt.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=s.steps + 100, pct_start=0.05,
                                                    cycle_momentum=False, anneal_strategy="linear")
    return opt, sched


def snapshot(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters and of every buffer (what adaptation can change)."""
    named = dict(model.named_parameters())
    state = {n: named[n].detach().clone() for n in names}
    state.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


@torch.no_grad()
def restore(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for key, value in state.items():
        if key.startswith("buffer:"):
            buffers[key[len("buffer:"):]].copy_(value)
        else:
            named[key].copy_(value)


@dataclass
class PairsOutcome:
    flows: list[torch.Tensor]          # per pair, N x 2 x H x W, of the returned state
    flows_before: list[torch.Tensor]   # per pair, of the start state
    best_step: int                     # steps taken by the returned state
    rolled_back: bool
    history: list[dict]


def _evaluate(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], objective: UnsupervisedObjective,
              s: AdaptSettings, names: list[str], fixed: Mapping[str, torch.Tensor] | None, backward: bool,
              accept: Callable[[int, float], bool] | None = None
              ) -> tuple[float, dict[str, float], list[torch.Tensor], list[float], bool]:
    """Objective averaged over ``pairs`` (+ keep-close once) -> (total, terms, forward flows, per-pair totals,
    refused: whether a pair was refused for differentiation).

    With ``backward`` the gradients accumulate pair by pair (memory holds one pair's graph at a time), but only
    for a pair whose loss is finite, whose flow is finite and that ``accept(i, loss)`` approves: a state the
    guard will roll back is never differentiated (autograd through NaN/huge sampling coordinates can crash
    the process, not just produce NaN). A pair with a non-finite flow counts as a non-finite loss.
    """
    total, terms, flows, per_pair, refused = 0.0, {}, [], [], False
    opts = s.net_call_options()
    with torch.set_grad_enabled(backward):
        for i, (img1, img2) in enumerate(pairs):
            res = objective(model, model, img1, img2, **opts)
            value = float(res.total.detach())
            flow = res.out_fw.flow.detach()
            if not bool(torch.isfinite(flow).all()):
                value = math.inf
            if backward and not (math.isfinite(value) and (accept is None or accept(i, value))):
                backward, refused = False, True  # this state will be rolled back: differentiate nothing more
            if backward and res.total.requires_grad:
                (res.total / len(pairs)).backward()
            per_pair.append(value)
            total += value / len(pairs)
            for k, v in res.terms.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) / len(pairs)
            flows.append(flow)
            del res  # frees an undifferentiated graph before the next pair's forward
        if fixed is not None and objective.keep_close_weight > 0:
            named = dict(model.named_parameters())
            kc = objective.keep_close_term({n: named[n] for n in names}, fixed)
            if backward and kc.requires_grad:
                kc.backward()
            terms["keep_close"] = float(kc.detach())
            total += terms["keep_close"]
    return total, terms, flows, per_pair, refused


def _clipped_step(params: list[torch.Tensor], opt: torch.optim.Optimizer, sched: Any, s: AdaptSettings,
                  guard: Guard, entry: dict, action: str) -> bool:
    """Clip the gradient norm, record it and the lr in ``entry``, step the optimizer and schedule -- unless the
    guard refuses the gradient (then ``entry["guard"]`` says so). Returns whether a step was taken."""
    clip = s.clip if s.clip is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip))
    entry["grad_norm"] = grad_norm
    entry["lr"] = opt.param_groups[0]["lr"]
    if not guard.gradient_ok(grad_norm):
        entry["guard"] = f"{action}; {SKIP_GRADIENT}"
        return False
    opt.step()
    if sched is not None:
        sched.step()
    return True


def _crop_augmentor(s: AdaptSettings):
    from mlof.data.augment import FlowAugmentor, build_augmentor
    if s.augment is not None:
        return build_augmentor(s.augment, **({"crop_size": s.crop} if s.crop is not None else {}))
    # A plain random crop: no photometric, eraser, resize or flip.
    return FlowAugmentor(crop_size=s.crop, photometric=False, eraser_prob=0.0, spatial_prob=0.0, do_flip=False)


def _draw_crops(pairs: list[tuple[torch.Tensor, torch.Tensor]], aug: Any, rng: Any
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One augmented random crop of every sample of every pair (N x 3 x h x w tensors, device kept)."""
    out = []
    for img1, img2 in pairs:
        a, b = [], []
        for n in range(img1.shape[0]):
            raw = {"img1": img1[n].detach().permute(1, 2, 0).float().cpu().numpy(),
                   "img2": img2[n].detach().permute(1, 2, 0).float().cpu().numpy()}
            res = aug(raw, rng=rng)
            a.append(torch.from_numpy(res["img1"].astype("float32")).permute(2, 0, 1))
            b.append(torch.from_numpy(res["img2"].astype("float32")).permute(2, 0, 1))
        out.append((torch.stack(a).to(img1.device), torch.stack(b).to(img2.device)))
    return out


@contextlib.contextmanager
def _predict_mode(model: nn.Module, s: AdaptSettings) -> Iterator[None]:
    """The ``bn_predict`` mode for a measurement; in "train" mode the running statistics it would move are
    put back afterwards (a measurement must not change the model)."""
    was = model.training
    train = s.predict_mode_is_train()
    buffers = snapshot(model, []) if train else None
    model.train(train)
    try:
        yield
    finally:
        model.train(was)
        if buffers is not None:
            restore(model, buffers)


@torch.no_grad()
def _predict(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], s: AdaptSettings
             ) -> list[torch.Tensor]:
    """Forward flows of ``pairs`` with batch norm in the ``bn_predict`` mode."""
    from mlof.meta.forward import call_net
    with _predict_mode(model, s):
        return [call_net(model, model, a, b, **s.net_call_options()).flow.detach() for a, b in pairs]


def adapt_pairs_on_crops(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], s: AdaptSettings,
                         names: list[str], objective: UnsupervisedObjective,
                         fixed: Mapping[str, torch.Tensor] | None, tag: Mapping[str, Any] | None = None
                         ) -> PairsOutcome:
    """The release's protocol: each step on a new seeded random crop (augmented by ``s.augment``) of every
    pair, with batch norm in ``s.bn`` mode; flows of the full frames predicted in ``bn_predict`` mode.

    History entry k (k < steps) holds the objective of the crop step k was taken on; the last entry describes
    the returned state on the full frames. With the guard on, the objective of the full frames (predict mode)
    is compared between the start and the end: a non-finite or diverged end state is rolled back, and
    ``keep="best"`` keeps the lower of the two (crops of different steps are not comparable with each other).
    """
    import numpy as np
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    opt, sched = build_optimizer(params, s)
    guard = Guard(s.guard_factor, enabled=s.guard)
    aug = _crop_augmentor(s)
    rng = np.random.default_rng(s.seed)
    history: list[dict] = []

    def full_objective() -> float:
        with _predict_mode(model, s):
            return _evaluate(model, pairs, objective, s, names, fixed, backward=False)[0]

    flows_before = _predict(model, pairs, s)
    start_state = snapshot(model, names)
    start_value = full_objective() if guard.enabled else None
    for k in range(s.steps):
        tic = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        crops = _draw_crops(pairs, aug, rng)
        total, terms, _, per_pair, refused = _evaluate(model, crops, objective, s, names, fixed, backward=True)
        entry = {**(tag or {}), "step": k, "total": total, **terms, "lr": opt.param_groups[0]["lr"],
                 "grad_norm": None, "guard": "crop", "crop": tuple(crops[0][0].shape[-2:])}
        history.append(entry)
        if refused or not math.isfinite(total):
            entry["guard"] = ROLLBACK_NONFINITE
            restore(model, start_state)
            break
        if _clipped_step(params, opt, sched, s, guard, entry, "crop"):
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
    flows = flows_before if best_step == 0 else _predict(model, pairs, s)
    if not all(bool(torch.isfinite(f).all()) for f in flows):
        restore(model, start_state)
        best_step = 0
        flows = [torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0) for f in flows_before]
        final["guard"] = "fallback:start-state"
    history.append(final)
    return PairsOutcome(flows, flows_before, best_step, rolled_back, history)


def adapt_pairs(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], s: AdaptSettings,
                names: list[str], objective: UnsupervisedObjective,
                fixed: Mapping[str, torch.Tensor] | None, tag: Mapping[str, Any] | None = None) -> PairsOutcome:
    """Adapt ``model`` in place on ``pairs`` for ``s.steps`` steps; parameters ``names`` adapt (they must
    require grad, the others should not). History entry k describes the state after k steps: its objective
    (``total`` and every term), the guard's decision, the lr and gradient norm of the step taken from it, and
    ``time`` (seconds: evaluation, plus backward and update when a step was taken).

    With crops (``s.augment`` / ``s.crop``, the release protocol) see ``adapt_pairs_on_crops``. When
    ``bn_predict`` differs from ``bn``, the returned flows before and after are predicted in the ``bn_predict``
    mode (so that they compare at one setting)."""
    if s.on_crops:
        return adapt_pairs_on_crops(model, pairs, s, names, objective, fixed, tag)
    if s.bn_predict is None or s.bn_predict == s.bn:
        return _adapt_full_frames(model, pairs, s, names, objective, fixed, tag)
    before = _predict(model, pairs, s)
    out = _adapt_full_frames(model, pairs, s, names, objective, fixed, tag)
    out.flows_before, out.flows = before, _predict(model, pairs, s)
    return out


def _adapt_full_frames(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], s: AdaptSettings,
                       names: list[str], objective: UnsupervisedObjective,
                       fixed: Mapping[str, torch.Tensor] | None, tag: Mapping[str, Any] | None = None
                       ) -> PairsOutcome:
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    opt, sched = build_optimizer(params, s)
    guard = Guard(s.guard_factor, enabled=s.guard)
    history: list[dict] = []
    current: list[torch.Tensor] = []
    capture = lambda: (snapshot(model, names), [f.clone() for f in current])  # noqa: E731
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
        total, terms, current, per_pair, refused = _evaluate(model, pairs, objective, s, names, fixed,
                                                             backward=not last, accept=accept)
        if k == 0:
            initial_pairs = per_pair
            flows_before = [f.clone() for f in current]
            start_state = snapshot(model, names)
        action = guard.observe(k, total, capture)
        if refused and not Guard.is_rollback(action):
            # A pair diverged (or went non-finite) although the average did not: never step from a state
            # whose gradient is incomplete.
            action = ROLLBACK_NONFINITE if not math.isfinite(max(per_pair)) else ROLLBACK_DIVERGED
        entry = {**(tag or {}), "step": k, "total": total, **terms, "lr": None, "grad_norm": None,
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
        if _clipped_step(params, opt, sched, s, guard, entry, action):
            entry["time"] = time.perf_counter() - tic  # evaluation + backward + update
    opt.zero_grad(set_to_none=True)

    flows, best_step = current, state_step
    if rolled_back or (s.keep == "best" and guard.best_payload is not None and guard.best_step != state_step):
        state, flows = guard.best_payload
        restore(model, state)
        best_step = guard.best_step
    if not all(bool(torch.isfinite(f).all()) for f in flows):
        # Never hand back NaN flow: fall back to the start state (or zeros if even that is not finite).
        if start_state is not None:
            restore(model, start_state)
        best_step = 0
        flows = [torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0) for f in flows_before]
        history.append({**(tag or {}), "step": state_step, "guard": "fallback:start-state"})
    return PairsOutcome(flows, flows_before, best_step, rolled_back, history)


def working_copy(model: nn.Module, s: AdaptSettings,
                 device: torch.device | str | None = None) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` prepared for adaptation, and the names of the parameters that adapt.

    The copy lives on ``device`` (default: the model's), is in the mode of the ``bn`` policy, has
    ``requires_grad`` set on exactly the adapted parameters, no stale ``.grad``, and the ``corr`` option
    applied where the network has one. ``model`` itself is only read.
    """
    from mlof.meta.params import select_parameters
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    work = copy.deepcopy(model)
    if device is not None:
        work = work.to(device)
    names = select_parameters(work, s.params)
    chosen = set(names)
    for n, p in work.named_parameters():
        p.grad = None
        p.requires_grad_(n in chosen)
    if s.corr is not None and isinstance(getattr(work, "corr", None), str):
        work.corr = s.corr  # RAFT family: the correlation backend is a constructor option read at call time
    if s.precision not in (None, "fp32") and not hasattr(work, "precision"):
        raise ValueError(f"precision={s.precision!r}: {type(work).__name__} has no precision option")
    if s.precision is not None and hasattr(work, "precision"):
        work.precision = s.precision  # autocast inside the network: float32 weights (master) and loss
    if hasattr(work, "memory_budget") and s.memory_budget is not None:
        work.memory_budget = s.memory_budget  # the network picks its memory plan per call (logged)
    work.train(s.bn == "train")
    return work, names


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")
