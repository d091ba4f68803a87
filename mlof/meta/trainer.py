"""One outer step of MLOF meta-training (Min, Kim, Lim, WACV 2023), configurable, defaults = the release's
constants (``mlof.meta.release.RELEASE``).

Per outer step, for each task (one annotated frame pair):
  learner = maml.clone()
  repeat inner_steps: learner.adapt(unsupervised(learner) + keep_close_weight * ||theta' - theta_fixed||^2)
  outer_t = sequence_loss(learner(img1, img2).flows, gt, valid, gamma, max_flow)
then mean_t(outer_t).backward() and one optimizer step (the release: Adam, no schedule, no clipping).
Each task's outer loss is back-propagated as soon as it is computed (the gradient of a mean is the mean of
the gradients), so memory holds one task's graph at a time instead of the release's five.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from mlof.losses import sequence_loss
from mlof.meta.forward import call_net
from mlof.meta.guard import require_finite
from mlof.meta.maml import MAML, MetaSGD
from mlof.meta.objective import UnsupervisedObjective
from mlof.meta.params import ParamSpec
from mlof.meta.release import RELEASE
from mlof.optim import OPTIMIZERS, build_optimizer

__all__ = ["MLOFTrainer", "TASK_KEYS"]

TASK_KEYS = ("img1", "img2", "flow", "valid")


class MLOFTrainer:
    """Meta-trains ``model`` so that a few unsupervised steps on one instance improve it on that instance.

    Every default is the release's: the numbers are ``mlof.meta.release.RELEASE`` (not restated here).

    model:             the flow network (its parameters are updated in place by ``step``).
    inner_loss:        unsupervised recipe for the inner loop (``mlof.losses.build_loss``).
    inner_steps:       SGD steps per task; inner_lr: their learning rate.
    first_order:       FOMAML (True, the release) or exact second order (False).
    params:            what adapts in the inner loop ("all"; a group name, names or a predicate).
    meta_algo:         "maml" or "metasgd" (learned per-parameter inner learning rates).
    iters:             refinement iterations of the network; only the last prediction enters the inner loss,
                       all of them the outer sequence loss.
    tasks_per_step:    tasks averaged per outer step; ``step`` checks it got that many unless ``strict=False``.
    outer_lr:          learning rate of the outer optimizer: "adam" (release), "adamw" or "sgd";
                       weight_decay (0), clip (None = no clipping, as the release).
    keep_close_weight: weight of the pull towards theta_fixed (None = the recipe's).
    fixed:             "initial" (theta_fixed = the weights at construction, theta_0, as the release) or
                       "current" (the meta-weights at each outer step).
    gamma, max_flow:   sequence-loss constants.
    buffers:           BatchNorm statistics of clones: "shared" (default, the release: learn2learn clones share
                       the running statistics, which drift with every task and end up in the meta-model) or
                       "copy" (the corrected variant: no leak between tasks; see docs/fidelity.md).
    bidirectional:     inner loss on both directions (True, the release).
    net_options:       further keyword options for the network call.
    """

    def __init__(self, model: nn.Module, inner_loss: Any = RELEASE.loss_recipe, inner_steps: int = RELEASE.inner_steps,
                 inner_lr: float = RELEASE.inner_lr, first_order: bool = True, params: ParamSpec = "all",
                 iters: int = RELEASE.iters, tasks_per_step: int = RELEASE.tasks_per_step,
                 outer_lr: float = RELEASE.outer_lr, keep_close_weight: float | None = RELEASE.keep_close_weight,
                 gamma: float = RELEASE.gamma, max_flow: float = RELEASE.max_flow, meta_algo: str = "maml",
                 optimizer: str = RELEASE.outer_optimizer,
                 weight_decay: float = 0.0, clip: float | None = None, fixed: str = "initial",
                 buffers: str = "shared", bidirectional: bool = True, strict: bool = True,
                 net_options: Mapping[str, Any] | None = None):
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
        if not isinstance(tasks_per_step, int) or tasks_per_step < 1:
            raise ValueError(f"tasks_per_step must be an int >= 1, got {tasks_per_step!r}")
        if not (isinstance(outer_lr, (int, float)) and math.isfinite(outer_lr) and outer_lr > 0):
            raise ValueError(f"outer_lr must be a positive number, got {outer_lr!r}")
        if meta_algo not in ("maml", "metasgd"):
            raise ValueError(f"meta_algo must be 'maml' or 'metasgd', got {meta_algo!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if fixed not in ("initial", "current"):
            raise ValueError(f"fixed must be 'initial' or 'current', got {fixed!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip!r}")
        self.model = model
        if meta_algo == "maml":
            self.maml: MAML = MAML(model, inner_lr, first_order=first_order, params=params, buffers=buffers)
        else:
            self.maml = MetaSGD(model, inner_lr, first_order=first_order, params=params, buffers=buffers)
        self.objective = UnsupervisedObjective(inner_loss, keep_close_weight, bidirectional)
        self.keep_close_weight = self.objective.keep_close_weight
        self.inner_steps, self.inner_lr, self.first_order = inner_steps, float(inner_lr), bool(first_order)
        self.iters, self.tasks_per_step, self.strict = iters, tasks_per_step, strict
        self.gamma, self.max_flow, self.clip, self.fixed_mode = float(gamma), float(max_flow), clip, fixed
        self.net_options = dict(net_options or {})
        self.meta_algo = meta_algo
        meta_params = [p for p in self.maml.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(meta_params, optimizer, lr=outer_lr, weight_decay=weight_decay)
        self.theta_fixed = self._snapshot()
        self.steps_done = 0
        self.last_inner: list[list[float]] = []   # per task of the last step: the inner objective at each step

    # ------------------------------------------------------------------------------------------------ state
    def _snapshot(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        return {n: named[n].detach().clone() for n in self.maml.adapted_names}

    def state_dict(self, include_model: bool = True) -> dict[str, Any]:
        """Everything needed to resume: step count, optimizer state, theta_fixed, Meta-SGD rates, the model.

        A snapshot (copies), so later steps do not change it; ``include_model=False`` leaves the network's
        weights out when the caller's checkpoint stores them anyway."""
        state = {"steps_done": self.steps_done, "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                 "theta_fixed": {k: v.clone() for k, v in self.theta_fixed.items()},
                 "meta": {k: v.detach().clone() for k, v in self.maml.state_dict().items()
                          if not k.startswith("module.")}}
        if include_model:
            state["model"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("steps_done", "optimizer", "theta_fixed") if k not in state]
        if missing:
            raise ValueError(f"trainer state lacks {', '.join(missing)}")
        if "model" in state:
            self.model.load_state_dict(state["model"])
        if state.get("meta"):
            self.maml.load_state_dict({**{f"module.{k}": v for k, v in self.model.state_dict().items()},
                                       **state["meta"]})
        self.optimizer.load_state_dict(state["optimizer"])
        if set(state["theta_fixed"]) != set(self.theta_fixed):
            raise ValueError("trainer state: theta_fixed names do not match the adapted parameters")
        device = next(iter(self.theta_fixed.values())).device
        self.theta_fixed = {k: v.to(device) for k, v in state["theta_fixed"].items()}
        self.steps_done = int(state["steps_done"])

    # ------------------------------------------------------------------------------------------------ steps
    def _task(self, task: Mapping[str, Any], i: int) -> dict[str, torch.Tensor]:
        if not isinstance(task, Mapping):
            raise ValueError(f"task {i} must be a dict with {', '.join(TASK_KEYS)}, got {type(task).__name__}")
        missing = [k for k in TASK_KEYS if k not in task]
        if missing:
            raise ValueError(f"task {i} lacks {', '.join(missing)} (a task is a dict with {', '.join(TASK_KEYS)})")
        device = next(self.model.parameters()).device
        out = {}
        for k in TASK_KEYS:
            v = task[k]
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"task {i}: {k} must be a tensor, got {type(v).__name__}")
            if k in ("img1", "img2", "flow") and v.dim() == 3:
                v = v[None]
            if k == "valid" and v.dim() == 2:
                v = v[None]
            out[k] = v.to(device)
        return out

    def adapt_task(self, task: Mapping[str, Any]):
        """Clone and run the inner loop on one task -> (learner, list of inner-loss floats per step)."""
        return self._inner(self._task(task, 0))

    def _inner(self, t: Mapping[str, torch.Tensor]):
        learner = self.maml.clone()
        opts = {"iters": self.iters, **self.net_options}
        inner = []
        for _ in range(self.inner_steps):
            res = self.objective(self.model, t["img1"], t["img2"], run=learner.inner_forward,
                                 params=learner.adapted_parameters(), fixed=self.theta_fixed, **opts)
            inner.append(float(res.total.detach()))
            require_finite(f"meta step {self.steps_done}: inner loss", res.total, hint="lower the inner lr")
            learner.adapt(res.total)
        return learner, inner

    def step(self, tasks: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """One outer step on ``tasks`` (dicts with img1, img2 N x 3 x H x W in 0..255, flow N x 2 x H x W,
        valid N x H x W). Returns metrics: ``loss`` (outer), ``epe`` (adapted, last prediction),
        ``inner_first``/``inner_last`` (mean inner objective at the first/last inner step), ``grad_norm``,
        ``time``."""
        tasks = [self._task(t, i) for i, t in enumerate(tasks)]
        if not tasks:
            raise ValueError("step needs at least one task")
        if self.strict and len(tasks) != self.tasks_per_step:
            raise ValueError(f"got {len(tasks)} tasks, tasks_per_step is {self.tasks_per_step} "
                             f"(pass strict=False to accept any number)")
        if self.fixed_mode == "current":
            self.theta_fixed = self._snapshot()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "epe": 0.0, "inner_first": 0.0, "inner_last": 0.0}
        self.last_inner = []
        for t in tasks:
            learner, inner = self._inner(t)
            self.last_inner.append(inner)
            out = call_net(learner, self.model, t["img1"], t["img2"], iters=self.iters, return_all=True,
                           **self.net_options)
            flows = out.flows if out.flows else [out.flow]
            loss, metrics = sequence_loss(flows, t["flow"], t["valid"], gamma=self.gamma, max_flow=self.max_flow)
            require_finite(f"meta step {self.steps_done}: outer loss", loss, out.flow,
                           hint="lower the inner / outer lr; the last checkpoint holds earlier weights")
            (loss / len(tasks)).backward()
            sums["loss"] += float(loss.detach()) / len(tasks)
            sums["epe"] += metrics["epe"] / len(tasks)
            if inner:
                sums["inner_first"] += inner[0] / len(tasks)
                sums["inner_last"] += inner[-1] / len(tasks)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip is not None else math.inf)
        self.optimizer.step()
        self.steps_done += 1
        return {**sums, "grad_norm": float(norm), "time": time.perf_counter() - start, "tasks": float(len(tasks))}
