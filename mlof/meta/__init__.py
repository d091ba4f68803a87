"""Meta-learning and adaptation: the MAML family, the MLOF meta-trainer, the adaptation engine and the guard.

    MAML(model, lr, first_order=False, params=None)   learn2learn-style clone()/adapt(loss)/call
    MetaSGD(model, lr, first_order=False, params=None) learned per-parameter inner learning rates
    MLOFTrainer(model, ...)                            one outer step of the official MLOF meta-training
    Adapter(model, **options).run(pairs)               the test-time adaptation engine (joint/pairwise/online)
    AdaptSettings, adapt_settings(options)             every adaptation option, its default, its one parser
    OnlineAdapter(model, ...)                          streaming adaptation along a video (a front of Adapter)
    select_parameters(model, params)                   what adapts ("all", a group, names, a predicate)
Names are imported lazily so that ``import mlof.meta.maml`` never pulls the losses or backbones.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "MAML": "mlof.meta.maml",
    "MetaSGD": "mlof.meta.maml",
    "Learner": "mlof.meta.maml",
    "select_parameters": "mlof.meta.params",
    "MLOFTrainer": "mlof.meta.trainer",
    "Guard": "mlof.meta.guard",
    "Adapter": "mlof.meta.engine",
    "AdaptResult": "mlof.meta.engine",
    "AdaptSettings": "mlof.meta.settings",
    "adapt_settings": "mlof.meta.settings",
    "UnsupervisedObjective": "mlof.meta.objective",
    "OnlineAdapter": "mlof.meta.online",
    "from_learn2learn": "mlof.meta.maml",
    "HigherLearner": "mlof.meta.interop",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlof.meta' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
