"""mlof's one checkpoint format: save atomically, read with ``weights_only=True``, rebuild the network.

A checkpoint is a plain dict (every value a tensor, number, string, list or dict, so that
``torch.load(path, weights_only=True)`` reads it)::

    format      "mlof"
    version     1
    backbone    {"name": str, "options": dict}   how to rebuild the network (``backbones.build``)
    state_dict  {parameter/buffer name: tensor}  on CPU
    # training runs add:
    step        int                  optimizer steps done
    optimizer   optimizer.state_dict()
    scheduler   scheduler.state_dict() or None
    rng         {"torch", "numpy", "python", "cuda"}  (see mlof.seeding.capture_rng)
    recipe      the resolved run configuration (plain dict)
    metrics     last logged metrics (plain dict)
    image_range [0, 255]: the value range of the images it was trained on (a different one gives a warning)

Official release files (RAFT, GMA, ...) carry no backbone name: load them with
``mlof.load(path, backbone="raft")``. Reading and decoding, of every layout, is ``backbones.checkpoint`` (the one
reader); this module writes mlof files, names the shipped default checkpoint and rebuilds networks (``load``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.builder import build_from_checkpoint
from backbones.checkpoint import FORMAT, VERSION, CheckpointError, read_checkpoint
from backbones.registry import available
from mlof.utils import atomic_open

__all__ = ["FORMAT", "VERSION", "DEFAULT_CHECKPOINT", "CheckpointError", "CheckpointWriteError", "save_checkpoint",
           "load_checkpoint", "load", "resolve_checkpoint", "is_mlof_checkpoint", "unwrap_model", "export_weights"]

# The shipped default checkpoint (package data, so it resolves in any install); ``default`` names it for
# ``mlof.load`` and ``model.checkpoint=default``. The one place that says where it is.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "mlof_default.pt"
_RESERVED = ("format", "version", "backbone", "state_dict")


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions); the previous file at the path is intact."""


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    try:
        with atomic_open(path, "wb") as f:
            torch.save(payload, f)
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise CheckpointWriteError(e.errno, f"cannot write checkpoint {path}: {reason} ({kept}); free space "
                                            f"or fix the folder, then continue with --resume") from e


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _backbone_spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "mlof_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{type(model).__name__} has no mlof_spec (name + options); build networks with "
                              f"backbones.build(name, **options) so that the checkpoint can rebuild them")
    return {"name": str(spec["name"]), "options": dict(spec.get("options") or {})}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write ``model`` (and training state in ``extra``) to ``path`` atomically; returns the path.

    extra: any of step, optimizer, scheduler, rng, recipe, metrics, or other weights_only-safe values.
    A reader never sees a half-written file: the data goes to a temporary file that replaces ``path``
    in one rename (``kill -9`` at any moment leaves the previous complete file).
    """
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"save_checkpoint: {', '.join(clash)} are written by the checkpoint itself")
    net = unwrap_model(model)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": _backbone_spec(net),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()},
    }
    payload.update(extra)
    path = Path(path)
    _atomic_save(payload, path)
    return path


def resolve_checkpoint(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """``"default"`` -> the shipped ``DEFAULT_CHECKPOINT`` (``FileNotFoundError`` if the install lacks it);
    other values unchanged."""
    if path != "default":
        return path
    if not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the default checkpoint {DEFAULT_CHECKPOINT} is missing from this install "
                                f"(it ships inside the mlof package), or give model.checkpoint=PATH")
    return str(DEFAULT_CHECKPOINT)


def is_mlof_checkpoint(obj: Any) -> bool:
    """True for a loaded dict in mlof's format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an mlof checkpoint as its dict (``weights_only=True``, metadata checked); ``CheckpointError`` for
    anything else."""
    ckpt = read_checkpoint(resolve_checkpoint(path), map_location)
    if not ckpt.is_mlof:
        raise CheckpointError(f"{path} is not an mlof checkpoint (no 'format': 'mlof' entry); official release "
                              f"files load with mlof.load(path, backbone=NAME)")
    return ckpt.contents


def load(path: str | os.PathLike, backbone: str | None = None, map_location: str | torch.device = "cpu",
         strict: bool = True, **options: Any) -> nn.Module:
    """Rebuild the network stored in ``path`` and return it in eval mode on ``map_location``.

    path: a checkpoint of any layout ``backbones.build(..., checkpoint=)`` reads, or ``"default"`` (the shipped
    model, ``DEFAULT_CHECKPOINT``). The file is read once. mlof checkpoints rebuild from their stored backbone
    name and options (``options`` override them). Official release files (no stored name) need
    ``backbone=NAME`` (and the build ``options``, e.g. ``dataset="kitti"`` for KPA-Flow).
    """
    ckpt = read_checkpoint(resolve_checkpoint(path))
    if ckpt.backbone is None and backbone is None:
        raise CheckpointError(f"{path} is not an mlof checkpoint and stores no backbone name; say which "
                              f"network it is: mlof.load(path, backbone=NAME), NAME one of {', '.join(available())}")
    model = build_from_checkpoint(ckpt, backbone, strict=strict, **options)
    return model.to(map_location).eval()


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, options: dict[str, Any] | None = None,
                   **extra: Any) -> Path:
    """Write ``src`` (an mlof training checkpoint) to ``dst`` without its resume state.

    Keeps the network (backbone + state_dict), ``step``, ``recipe`` and ``metrics``; drops the optimizer,
    scheduler and RNG states (a third of the size for Adam-trained networks). ``options`` replaces the stored
    build options of the network (e.g. ``{}`` to drop the ``precision: bf16`` a run trained with, so the file
    runs in fp32 by default). ``extra`` entries are added or replace kept ones (e.g.
    ``recipe={"pretrain": ..., "meta_train": ...}``). Atomic like ``save_checkpoint``.
    """
    ckpt = load_checkpoint(src)
    if options is not None:
        ckpt["backbone"] = {**ckpt["backbone"], "options": dict(options)}
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"export_weights: {', '.join(clash)} come from {src}")
    keep = {k: ckpt[k] for k in (*_RESERVED, "step", "recipe", "metrics", "image_range") if k in ckpt}
    keep.update(extra)
    dst = Path(dst)
    _atomic_save(keep, dst)
    return dst
