"""Model registry, official-checkpoint loading and parameter groups.

A network file registers a factory with ``@register("name")``; ``build`` creates it, records how it was
built on ``model.mlof_spec`` (name + options, used by mlof's own checkpoints) and loads weights.
"""
from __future__ import annotations

import importlib
import os
import pickle
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["register", "available", "build", "load_weights", "read_checkpoint_file", "param_groups", "count_parameters",
           "CheckpointMismatchError", "capabilities"]

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


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the network."""


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator: ``build(name, **options)`` will call ``factory(**options)``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        return factory

    return deco


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise ValueError(f"unknown backbone {name!r}; available: {', '.join(available())}")
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise ValueError(f"backbone {name!r} is not registered by {_MODULES[name]}")
    return _REGISTRY[name]


def capabilities(name: str):
    """What network ``name`` supports: a ``backbones.base.Capabilities`` (iterations, correlation backends,
    precisions, memory-plan options, native bidirectional calls)."""
    from backbones.base import Capabilities

    factory = _factory(name)
    caps = getattr(factory, "capabilities", None)
    if caps is None:  # a function factory: its return annotation names the class
        cls = getattr(factory, "__annotations__", {}).get("return")
        cls = getattr(importlib.import_module(factory.__module__), cls, None) if isinstance(cls, str) else cls
        caps = getattr(cls, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else Capabilities()


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


def build(name: str, checkpoint: str | os.PathLike | dict | None = None, strict: bool = True,
          weights: str | None = None, **options: Any) -> nn.Module:
    """Build network ``name`` with ``options`` and, if given, load ``checkpoint`` or official ``weights``.

    checkpoint: a path to an official release file (``module.`` prefixes and ``{'model': ...}`` /
    ``{'state_dict': ...}`` wrappers are accepted as they are), one of mlof's own checkpoints, or an
    already loaded state dict. Loading is strict unless ``strict=False``.
    weights: an entry of the official-weights registry (``backbones.weights``), by its full name
    (``"raft-things"``) or short name (``"things"``): fetched into the cache (verified) on first use; the
    options the file needs (e.g. KPA-Flow's ``dataset``) are added unless given.
    """
    if weights is not None:
        if checkpoint is not None:
            raise ValueError("give either checkpoint= or weights=, not both")
        from backbones.fetch import fetch
        from backbones.weights import resolve_name

        entry = resolve_name(name, weights)
        options = {**entry.options, **options}
        checkpoint = fetch(entry, progress=True, check_keys=False)  # loaded strictly below
    factory = _factory(name)
    try:
        model = factory(**options)
    except TypeError as e:
        # An unknown option is the caller's mistake: say which network and which option.
        if "unexpected keyword argument" in str(e):
            raise ValueError(f"backbone {name!r}: {e}") from e
        raise
    model.mlof_spec = {"name": name, "options": dict(options)}
    if checkpoint is not None:
        load_weights(model, checkpoint, strict=strict)
    return model


def _unwrap(obj: Any, source: str, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj.get("format") == "mlof":
        version = obj.get("version", 1)
        if not isinstance(version, int) or version > 1:
            raise CheckpointMismatchError(f"{source}: mlof checkpoint version {version!r} is newer than this "
                                          f"code understands (1)")
        spec = getattr(model, "mlof_spec", None)
        saved = (obj.get("backbone") or {}).get("name")
        if spec is not None and saved is not None and saved != spec["name"]:
            raise CheckpointMismatchError(f"{source} holds a {saved!r} network, not {spec['name']!r}")
        if "state_dict" not in obj:
            raise CheckpointMismatchError(f"{source}: mlof checkpoint without a 'state_dict' entry")
        obj = obj["state_dict"]
    else:
        for wrapper in ("state_dict", "model"):
            if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{source}: not a state dict (expected a dict of tensors, optionally "
                                      f"inside 'model' or 'state_dict')")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _numpy_safe_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    types = [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    types += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return types


_ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"          # legacy torch.save format: a pickle, protocol >= 2


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that say what the file is.

    Never runs code from the file: a checkpoint that pickles functions or objects is refused (weights_only)
    before anything in it executes. Allowed besides tensors and containers: numpy scalars and arrays (mmflow
    files carry them in their ``meta``). Errors: ``FileNotFoundError`` (missing), ``CheckpointMismatchError``
    (not a torch file, truncated, or pickled code).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not os.path.isdir(path)
                                else f"checkpoint {path} is a folder, not a file")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointMismatchError(f"{path}: not a torch checkpoint (the file is empty)")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        text = head[:24].decode("utf-8", "replace").replace("\n", " ").strip()
        looks = f"it starts with the text {text!r}" if head.isascii() else "it has no torch.save header"
        raise CheckpointMismatchError(f"{path}: not a torch checkpoint ({looks}); give a .pt/.pth file "
                                      f"written by torch.save")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise CheckpointMismatchError(
                f"{path}: refused: the file pickles Python objects or code, which is never run here "
                f"(weights_only=True); save a plain state dict of tensors instead ({first[:120]})") from e
        raise CheckpointMismatchError(f"{path}: corrupt torch checkpoint ({first[:160]})") from e
    except Exception as e:  # truncated zip, bad records
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointMismatchError(f"{path}: truncated or corrupt torch checkpoint ({first[:160]})") from e


def _check_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointMismatchError(f"{source}: weights contain NaN or inf values ({shown}); the file is "
                                      f"damaged or comes from a diverged training run")


def load_weights(model: nn.Module, checkpoint: str | os.PathLike | dict, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` in place; with ``strict`` every key and shape must match.

    Weights with NaN or inf values are refused (``CheckpointMismatchError`` naming the keys).
    """
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "state dict"
    obj = checkpoint if isinstance(checkpoint, dict) else read_checkpoint_file(checkpoint)
    sd = _unwrap(obj, source, model)
    _check_finite(sd, source)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or misshaped):
        def fmt(title, items):
            if not items:
                return ""
            shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
            return f"\n  {title} ({len(items)}): {shown}"
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}:" + fmt("missing keys", missing)
            + fmt("unexpected keys", unexpected) + fmt("mis-shaped keys", misshaped))
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)
    return model


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
