"""``mlof.adapt``: unsupervised test-time adaptation of a flow network on the frames at hand.

    >>> result = mlof.adapt(model, (img1, img2))            # the defaults of mlof.meta.settings.AdaptSettings
    >>> result.flow                                         # N x 2 x H x W, from the adapted copy
    >>> result.history[-1]["total"], result.flows_before[0]
    >>> mlof.adapt(model, video, mode="online")              # T x 3 x H x W, weights carried along

A thin use of the adaptation engine (``mlof.meta.engine.Adapter``). The caller's model is only read
(deep-copied): its parameters, buffers, train/eval mode and requires_grad flags are the same afterwards, also
when adaptation raises.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from mlof.meta.engine import Adapter, AdaptResult
from mlof.meta.frames import as_pairs
from mlof.meta.online import OnlineAdapter
from mlof.meta.settings import MODES, adapt_settings

__all__ = ["adapt", "AdaptResult", "OnlineAdapter", "MODES"]


def adapt(model: nn.Module, frames: Any, **options: Any) -> AdaptResult:
    """Adapt a copy of ``model`` to ``frames`` with the unsupervised MLOF objective and return its flows.

    frames:  a pair (two 3 x H x W or N x 3 x H x W tensors, or numpy H x W x 3 images), a list of frames, a
             T x 3 x H x W tensor or an N x T x 3 x H x W tensor; float 0..255 (uint8 accepted).
    options: the fields of ``mlof.meta.settings.AdaptSettings`` (their defaults and meanings are stated there
             and in docs/meta.md), e.g. ``mode`` ("joint": one copy adapted on all consecutive pairs together;
             "pairwise": every pair from the start weights, ``result.model`` is the last pair's; "online":
             weights carried from pair to pair, see ``OnlineAdapter``), ``steps``, ``optimizer``, ``lr``,
             ``recipe``, ``params``, ``guard``, ``device``, and ``preset`` (a named protocol, e.g. "release").
    Raises ``ValueError`` for bad frames or options.
    """
    settings = adapt_settings(options)
    pairs = as_pairs(frames)
    return Adapter(model, settings).run(pairs)
