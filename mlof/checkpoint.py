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
``mlof.load(path, backbone="raft")``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlof.utils import atomic_open

__all__ = ["FORMAT", "VERSION", "CheckpointError", "CheckpointWriteError", "save_checkpoint", "load_checkpoint", "load",
           "is_mlof_checkpoint", "unwrap_model", "export_weights", "validate_checkpoint"]

FORMAT = "mlof"
VERSION = 1
_RESERVED = ("format", "version", "backbone", "state_dict")


class CheckpointError(ValueError):
    """A file is not a readable mlof checkpoint, or does not say how to rebuild its network."""


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


def _read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The file's object via ``torch.load(weights_only=True)``: pickled code is refused, never run."""
    from backbones.registry import read_checkpoint_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return read_checkpoint_file(path, map_location)
    except (ValueError, OSError) as e:   # not a torch file, truncated, pickled objects weights_only refuses
        raise CheckpointError(str(e)) from e


def validate_checkpoint(obj: dict[str, Any], source: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` naming the entry if an mlof checkpoint's metadata is not sane.

    Checked: ``version`` (int 1..VERSION), ``backbone`` ({name: a known network, options: dict}),
    ``state_dict`` (a non-empty dict of tensors), ``step`` (int >= 0 when present).
    """
    import backbones

    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{source}: checkpoint version {version!r} is not a version number")
    if version > VERSION:
        raise CheckpointError(f"{source}: checkpoint version {version!r} is newer than this mlof reads ({VERSION})")
    spec = obj.get("backbone")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CheckpointError(f"{source}: 'backbone' must be {{'name': str, 'options': dict}}, got {spec!r:.80}")
    if spec["name"] not in backbones.available():
        raise CheckpointError(f"{source}: backbone {spec['name']!r:.60} is not a known network (one of "
                              f"{', '.join(backbones.available())})")
    if not isinstance(spec.get("options", {}) or {}, dict):
        raise CheckpointError(f"{source}: backbone options must be a dict, got {spec.get('options')!r:.80}")
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{source}: 'state_dict' must be a non-empty dict of tensors")
    step = obj.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise CheckpointError(f"{source}: 'step' must be an int >= 0, got {step!r:.40}")


def is_mlof_checkpoint(obj: Any) -> bool:
    """True for a loaded dict in mlof's format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an mlof checkpoint as its dict (``weights_only=True``); ``CheckpointError`` for anything else."""
    obj = _read(path, map_location)
    if not is_mlof_checkpoint(obj):
        raise CheckpointError(f"{path} is not an mlof checkpoint (no 'format': 'mlof' entry); official release "
                              f"files load with mlof.load(path, backbone=NAME)")
    for key in ("backbone", "state_dict"):
        if key not in obj:
            raise CheckpointError(f"{path}: mlof checkpoint lacks its {key!r} entry")
    validate_checkpoint(obj, path)
    return obj


def load(path: str | os.PathLike, backbone: str | None = None, map_location: str | torch.device = "cpu",
         strict: bool = True, **options: Any) -> nn.Module:
    """Rebuild the network stored in ``path`` and return it in eval mode on ``map_location``.

    mlof checkpoints rebuild from their stored backbone name and options. Official release files
    (no stored name) need ``backbone=NAME`` (and the build ``options``, e.g. ``dataset="kitti"`` for
    KPA-Flow): they load through ``backbones.build(NAME, checkpoint=path, **options)``.
    """
    import backbones

    obj = _read(path, "cpu")
    if is_mlof_checkpoint(obj):
        for key in ("backbone", "state_dict"):
            if key not in obj:
                raise CheckpointError(f"{path}: mlof checkpoint lacks its {key!r} entry")
        validate_checkpoint(obj, path)
        ckpt = obj
        spec = ckpt["backbone"]
        if backbone is not None and backbone != spec["name"]:
            raise CheckpointError(f"{path} holds a {spec['name']!r} network, not {backbone!r}")
        model = backbones.build(spec["name"], **{**spec.get("options", {}), **options})
        try:
            backbones.load_weights(model, ckpt, strict=strict)
        except ValueError as e:
            raise CheckpointError(str(e).replace("state dict", str(path), 1)) from e
    else:
        if backbone is None:
            raise CheckpointError(f"{path} is not an mlof checkpoint and stores no backbone name; say which "
                                  f"network it is: mlof.load(path, backbone=NAME), NAME one of "
                                  f"{', '.join(backbones.available())}")
        model = backbones.build(backbone, checkpoint=obj, strict=strict, **options)
    return model.to(map_location).eval()


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, **extra: Any) -> Path:
    """Write ``src`` (an mlof training checkpoint) to ``dst`` without its resume state.

    Keeps the network (backbone + state_dict), ``step``, ``recipe`` and ``metrics``; drops the optimizer,
    scheduler and RNG states (a third of the size for Adam-trained networks). ``extra`` entries are added or
    replace kept ones (e.g. ``recipe={"pretrain": ..., "meta_train": ...}``). Atomic like ``save_checkpoint``.
    """
    ckpt = load_checkpoint(src)
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"export_weights: {', '.join(clash)} come from {src}")
    keep = {k: ckpt[k] for k in (*_RESERVED, "step", "recipe", "metrics", "image_range") if k in ckpt}
    keep.update(extra)
    dst = Path(dst)
    _atomic_save(keep, dst)
    return dst
