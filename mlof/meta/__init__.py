"""Meta-learning and adaptation: the MAML family, the MLOF meta-trainer, the adaptation engine and the guard.

    MAML(model, lr, first_order=False, params=None)   learn2learn-style clone()/adapt(loss)/call
    MetaSGD(model, lr, first_order=False, params=None) learned per-parameter inner learning rates
    MLOFTrainer(model, ...)                            one outer step of the official MLOF meta-training
    RELEASE                                            the release's constants (the trainer's and presets' defaults)
    Adapter(model, **options).run(pairs)               the test-time adaptation engine (joint/pairwise/online)
    AdaptSettings, adapt_settings(options)             every adaptation option, its default, its one parser
    OnlineAdapter(model, ...)                          streaming adaptation along a video (a front of Adapter)
    select_parameters(model, params)                   what adapts ("all", a group, names, a predicate)
"""
from __future__ import annotations

from mlof.meta.engine import Adapter, AdaptResult
from mlof.meta.guard import Guard
from mlof.meta.interop import HigherLearner
from mlof.meta.maml import MAML, Learner, MetaSGD, from_learn2learn
from mlof.meta.objective import UnsupervisedObjective
from mlof.meta.online import OnlineAdapter
from mlof.meta.params import select_parameters
from mlof.meta.release import RELEASE
from mlof.meta.settings import AdaptSettings, adapt_settings
from mlof.meta.trainer import MLOFTrainer

__all__ = ["MAML", "MetaSGD", "Learner", "from_learn2learn", "HigherLearner", "select_parameters", "MLOFTrainer",
           "RELEASE", "Guard", "Adapter", "AdaptResult", "AdaptSettings", "adapt_settings", "UnsupervisedObjective",
           "OnlineAdapter"]
