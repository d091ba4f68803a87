"""mlof: test-time adaptation and meta-learning of optical-flow networks.

Entry points (imported lazily so that ``import mlof`` stays cheap):
    mlof.adapt(model, frames, **options) -> AdaptResult   per-instance unsupervised adaptation
    mlof.load(path) -> nn.Module                           rebuild a network from a checkpoint
Sub-packages: mlof.io, mlof.metrics, mlof.viz, mlof.losses, mlof.data, mlof.meta.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "adapt": ("mlof.api", "adapt"),
    "AdaptResult": ("mlof.api", "AdaptResult"),
    "OnlineAdapter": ("mlof.api", "OnlineAdapter"),
    "load": ("mlof.checkpoint", "load"),
}
_SUBMODULES = {"io", "metrics", "viz", "losses", "data", "meta", "api", "checkpoint", "cli", "commands", "config",
               "optim", "runs", "seeding", "train", "samples", "utils"}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"mlof.{name}")
    raise AttributeError(f"module 'mlof' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + list(_SUBMODULES))
