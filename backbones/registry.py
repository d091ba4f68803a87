"""The registry of networks: names, factories, what each supports, and parameter groups.

A network file registers a factory with ``@register("name")``; ``backbones.build`` (``backbones.builder``)
creates networks by name. Network modules are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from backbones.base import Capabilities

__all__ = ["register", "available", "factory", "capabilities", "param_groups", "count_parameters"]

# name -> module that registers it (imported on demand, so one broken network never hides the others)
_MODULES = {
    "raft": "backbones.raft",
    "raft_small": "backbones.raft",
    "gma": "backbones.gma",
    "kpaflow": "backbones.kpaflow",
    "liteflownet2": "backbones.liteflownet2",
    "upflow": "backbones.upflow",
    "memflow": "backbones.memflow",
}
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator: ``build(name, **options)`` will call ``factory(**options)``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        return factory

    return deco


def factory(name: str) -> Callable[..., nn.Module]:
    """The registered factory of network ``name`` (its module imported on first use); ``ValueError`` naming the
    available networks for an unknown name."""
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise ValueError(f"unknown backbone {name!r}; available: {', '.join(available())}")
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise ValueError(f"backbone {name!r} is not registered by {_MODULES[name]}")
    return _REGISTRY[name]


def capabilities(name: str) -> Capabilities:
    """What network ``name`` supports (``Capabilities``: iterations, correlation backends, precisions,
    memory options, bidirectional shared-encoder calls), as its class declares it."""
    caps = getattr(factory(name), "capabilities", None)
    if not isinstance(caps, Capabilities):
        raise TypeError(f"backbone {name!r} does not declare its capabilities (a Capabilities class attribute)")
    return caps


def available() -> list[str]:
    """Names of the networks that can be built."""
    names = []
    for name, module in _MODULES.items():
        if name not in _REGISTRY:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:  # network not present in this install
                if e.name != module:
                    raise
        if name in _REGISTRY:
            names.append(name)
    return sorted(names)


def param_groups(model: nn.Module) -> dict[str, list[str]]:
    """Named groups of parameter names, for choosing what adapts.

    Networks define ``param_group_prefixes() -> dict[str, list[str]]`` (module-name prefixes); every group
    lists the parameter names under its prefixes, and ``all`` lists every parameter.
    """
    names = [n for n, _ in model.named_parameters()]
    groups: dict[str, list[str]] = {}
    prefixes = model.param_group_prefixes() if hasattr(model, "param_group_prefixes") else {}
    for group, pre in prefixes.items():
        groups[group] = [n for n in names if any(n == p or n.startswith(p + ".") for p in pre)]
    groups["all"] = names
    return groups


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (what the papers and ANCHORS.md report)."""
    return sum(p.numel() for p in model.parameters())
