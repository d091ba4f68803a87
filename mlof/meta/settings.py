"""Every option of test-time adaptation, its default and its check, in one place.

``AdaptSettings`` is the only statement of the defaults (the field values below; ``DEFAULT_LR`` / ``DEFAULT_WD``
for the optimizer-dependent ones); ``adapt_settings(options)`` is the only parser of options, used by
``mlof.adapt``, ``OnlineAdapter``, the engine (``mlof.meta.engine.Adapter``) and the command line / recipes.
Docstrings elsewhere refer here instead of restating numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

import torch

from backbones.base import check_precision
from backbones.memory_plan import parse_bytes
from mlof.data.augment import build_augmentor
from mlof.meta.params import ParamSpec
from mlof.meta.release import RELEASE
from mlof.optim import OPTIMIZERS, SCHEDULES, OptimizerSpec

__all__ = ["AdaptSettings", "adapt_settings", "PRESETS", "MODES", "DEFAULT_LR", "DEFAULT_WD"]

MODES = ("joint", "pairwise", "online")
# The release's meta-inference AdamW lr and weight decay (its inner-loop SGD: the meta-training inner lr).
DEFAULT_LR = {"adamw": RELEASE.adapt_lr, "adam": RELEASE.adapt_lr, "sgd": RELEASE.inner_lr}
DEFAULT_WD = {"adamw": RELEASE.adapt_weight_decay, "adam": 0.0, "sgd": 0.0}

# Named protocols (``preset=``); options given next to a preset override its values.
PRESETS: dict[str, dict[str, Any]] = {
    # mlof's default (= the defaults of AdaptSettings), the best setting measured by tools/adaptation_study.py
    # (README "Adaptation"): 32 constant-lr Adam steps of the SMURF loss at a working resolution of at most
    # 256 x 512 pixels, 1 refinement iteration inside the steps, batch norm in eval mode, the guard keeping the best
    # state.
    "mlof": {},
    # the previous default: the same loss and optimizer, 8 steps on the frames as given (at 436x1024 about the time of
    # the default; for frames whose fine detail the working resolution would blur)
    "full-resolution": {"steps": 8, "max_pixels": None},
    # mlof 0.1's default: the release's optimizer and objective (3 AdamW steps, OneCycle, MLOF loss) on the full
    # frames with batch norm in eval mode and the guard; barely moves a network (docs/meta.md).
    # lr / weight decay None: the optimizer's conventional values (DEFAULT_LR / DEFAULT_WD: adamw = the release's)
    "release-optimizer": {"steps": RELEASE.adapt_steps, "optimizer": RELEASE.adapt_optimizer,
                          "lr": None, "weight_decay": None, "schedule": "onecycle",
                          "clip": RELEASE.adapt_clip, "recipe": RELEASE.loss_recipe, "iters": RELEASE.iters,
                          "adapt_iters": None, "max_pixels": None},
    # The MLOF release's meta_inference.py, stated in full so that it stays the release's whatever the defaults
    # become: network in train() while adapting (batch statistics, running statistics updated), each of the
    # RELEASE.adapt_steps AdamW steps (RELEASE's lr, weight decay, clip; OneCycle) on a new random crop drawn by
    # the release's augmentor (scale 2^0 with RAFT's stretch, no flip, colour jitter, eraser), then the adapted
    # network in eval() on the full frame. No guard: the last state is returned.
    "release": {"steps": RELEASE.adapt_steps, "optimizer": RELEASE.adapt_optimizer, "lr": RELEASE.adapt_lr,
                "weight_decay": RELEASE.adapt_weight_decay, "schedule": "onecycle", "clip": RELEASE.adapt_clip,
                "recipe": RELEASE.loss_recipe, "params": "all", "iters": RELEASE.iters, "bn": "train",
                "bn_predict": "eval", "augment": "mlof-release-sintel", "guard": False, "keep": "last",
                "adapt_iters": None, "max_pixels": None},
}
PRESETS["release-sintel"] = dict(PRESETS["release"])
PRESETS["release-kitti"] = {**PRESETS["release"], "augment": "mlof-release-kitti"}


@dataclass
class AdaptSettings:
    """Every option of test-time adaptation with its default (docs/meta.md has the table with the meanings).

    The defaults are mlof's measured best setting (preset ``"mlof"``; README "Adaptation"); the release's
    meta-inference is preset ``"release"`` (its constants: ``RELEASE``)."""

    mode: str = "joint"                   # "joint" | "pairwise" | "online" (see mlof.meta.engine.Adapter.run)
    steps: int = 32
    optimizer: OptimizerSpec = "adam"     # a name of mlof.optim.OPTIMIZERS or params -> Optimizer
    lr: float | None = 1e-4               # None: DEFAULT_LR[optimizer] (the release's for adamw / sgd)
    weight_decay: float | None = 0.0      # None: DEFAULT_WD[optimizer]
    schedule: str | None = "constant"     # "onecycle": RAFT-lineage OneCycle (steps + 100, 5 % warm-up, linear)
    clip: float | None = RELEASE.adapt_clip  # gradient-norm clipping; None disables it
    recipe: Any = "smurf"                 # mlof.losses.build_loss recipe or a loss module
    params: ParamSpec = "all"             # what adapts
    iters: int | None = RELEASE.iters     # refinement iterations (ignored by networks without them)
    adapt_iters: int | None = 1           # iterations of the network in the adaptation steps; None = ``iters``
                                          # (RAFT detaches the flow between iterations, so the gradient of the
                                          # last flow only sees the last update: fewer iterations, truer gradient)
    corr: str | None = None               # correlation backend, passed to networks that take ``corr``
    keep_close_weight: float | None = None  # pull towards the start weights; None: the recipe's keep_close_weight
    bn: str = "eval"                      # BN mode while adapting: "eval" (running stats) or "train" (batch stats)
    bn_predict: str | None = None         # BN mode of the returned flows; None = same as ``bn``
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
    device: torch.device | str | None = None  # where to adapt; None: the model's device
    max_pixels: int | None = 131072       # adapt and predict at most this many pixels (256 x 512): larger frames
                                          # are shrunk (aspect kept) and the flows resized back; None: as given
                                          # (crops, with ``augment`` / ``crop``, are cut from the frames as given)
    reset_every: int | None = None        # online: back to the start weights every K pairs; None: never
    reset_margin: float | None = 0.0      # online: reset when worse than the start model by this share; None: never

    def __post_init__(self) -> None:
        # types first, so that e.g. lr="abc" (from a command line) is a ValueError naming the option
        for name in ("lr", "weight_decay", "clip", "keep_close_weight", "guard_factor", "reset_margin"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        for name in ("guard", "bidirectional"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        if isinstance(self.optimizer, str) and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a callable params -> Optimizer, "
                             f"got {self.optimizer!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} or None, got {self.schedule!r}")
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
            build_augmentor(self.augment)   # raises ValueError naming the known presets
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.iters is not None and (not isinstance(self.iters, int) or self.iters < 1):
            raise ValueError(f"iters must be an int >= 1, got {self.iters!r}")
        if self.adapt_iters is not None and (isinstance(self.adapt_iters, bool) or not isinstance(self.adapt_iters, int)
                                             or self.adapt_iters < 1):
            raise ValueError(f"adapt_iters must be an int >= 1 or null, got {self.adapt_iters!r}")
        if self.precision is not None:
            check_precision(self.precision)
        if self.memory_budget not in (None, "auto"):
            parse_bytes(self.memory_budget, "memory_budget")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {self.device!r}"
                                 ) from e
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                                            or self.max_pixels < 64 * 64):
            raise ValueError(f"max_pixels must be an int >= 4096 (64 x 64) or null, got {self.max_pixels!r}")
        if self.reset_every is not None and (isinstance(self.reset_every, bool) or not isinstance(self.reset_every, int)
                                             or self.reset_every < 1):
            raise ValueError(f"reset_every must be a positive int or None, got {self.reset_every!r}")
        if self.reset_margin is not None and not self.reset_margin >= 0:
            raise ValueError(f"reset_margin must be >= 0 or None, got {self.reset_margin!r}")

    @property
    def on_crops(self) -> bool:
        """Whether each step adapts on a random (augmented) crop instead of the full frames."""
        return self.augment is not None or self.crop is not None

    def predict_mode_is_train(self) -> bool:
        return (self.bn_predict or self.bn) == "train"

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return DEFAULT_LR[self.optimizer] if isinstance(self.optimizer, str) else DEFAULT_LR["adamw"]

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return DEFAULT_WD[self.optimizer] if isinstance(self.optimizer, str) else DEFAULT_WD["adamw"]

    def net_call_options(self, adapting: bool = False) -> dict[str, Any]:
        """Keyword options of the network call: for the returned flows, or (``adapting``) for the objective of
        the adaptation steps, which runs ``adapt_iters`` iterations when set."""
        iters = self.adapt_iters if adapting and self.adapt_iters is not None else self.iters
        return {"iters": iters, "corr": self.corr, **self.net_options}

    @property
    def fewer_adapt_iters(self) -> bool:
        """Whether the adaptation steps run another iteration count (``adapt_iters``) than the returned flows."""
        return self.adapt_iters is not None and self.adapt_iters != self.iters

    @property
    def separate_prediction(self) -> bool:
        """Whether the returned flows need their own forward pass (another BN mode or iteration count than the
        adaptation steps)."""
        return (self.bn_predict is not None and self.bn_predict != self.bn) or self.fewer_adapt_iters


def adapt_settings(options: Mapping[str, Any] | AdaptSettings | None = None, **overrides: Any) -> AdaptSettings:
    """The one parser of adaptation options: a mapping (a recipe's ``options``, ``**kwargs`` of ``mlof.adapt``)
    and/or keyword overrides -> ``AdaptSettings``.

    ``preset=NAME`` first supplies a protocol's values (``PRESETS``), the other options override them; a list
    ``crop`` (from YAML) becomes a tuple. An ``AdaptSettings`` is taken as it is, with ``overrides`` replaced.
    Raises ``ValueError`` naming unknown options or the first bad value.
    """
    if isinstance(options, AdaptSettings):
        return replace(options, **overrides) if overrides else options
    options = {**dict(options or {}), **overrides}
    preset = options.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        options = {**PRESETS[preset], **options}
    known = {f.name for f in fields(AdaptSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown adapt option(s): {', '.join(unknown)}; known: preset, "
                         f"{', '.join(sorted(known))}")
    if isinstance(options.get("crop"), list):
        options["crop"] = tuple(options["crop"])
    return AdaptSettings(**options)
