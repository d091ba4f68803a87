"""The constants of the official MLOF release (Min, Kim, Lim, WACV 2023), stated once.

``RELEASE`` is read by the defaults of ``mlof.meta.MLOFTrainer``, ``mlof meta-train``'s ``MetaConfig`` /
``MetaTrainConfig``, ``AdaptSettings`` and the ``release`` adaptation preset (``mlof.meta.settings``); their
docstrings refer here instead of restating numbers. Sources: the release's train_mlof.py (meta-training) and
meta_inference.py (test-time adaptation).
"""
from __future__ import annotations

from dataclasses import dataclass

from mlof.losses import resolve_recipe

__all__ = ["ReleaseConstants", "RELEASE"]


@dataclass(frozen=True)
class ReleaseConstants:
    """The release's numbers; ``RELEASE`` is the one instance."""

    # both loops
    loss_recipe: str = "mlof"          # unsupervised objective (mlof.losses.RECIPES)
    keep_close_weight: float = resolve_recipe("mlof").keep_close_weight   # wkeeper (10), stated by the recipe
    iters: int = 12                    # refinement iterations of the network
    # meta-training (train_mlof.py): FOMAML, inner SGD, outer Adam without schedule or clipping
    inner_steps: int = 3
    inner_lr: float = 5e-6
    outer_optimizer: str = "adam"
    outer_lr: float = 5e-6
    tasks_per_step: int = 5            # tasks averaged per outer step
    gamma: float = 0.85                # outer sequence loss
    max_flow: float = 400.0
    # test-time adaptation (meta_inference.py): AdamW + OneCycle, gradient clipping
    adapt_steps: int = 3
    adapt_optimizer: str = "adamw"
    adapt_lr: float = 1e-5
    adapt_weight_decay: float = 1e-5
    adapt_clip: float = 1.0


RELEASE = ReleaseConstants()
