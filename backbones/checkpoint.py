"""The one checkpoint reader: every file layout a network's weights come in, decoded to one record.

Layouts read (``read_checkpoint``), each file read from disk once:

* official release files as they are: a plain state dict, ``DataParallel`` files whose keys all start with
  ``module.``, ``{'model': ...}`` and ``{'state_dict': ...}`` wrappers;
* mmflow/mmcv files: ``{'meta': ..., 'state_dict': ..., 'optimizer': ...}``, whose ``meta`` holds numpy
  scalars and arrays;
* mlof's own files (``format: "mlof"``): ``version``, ``backbone`` ({name, options}), ``state_dict`` and, for
  training runs, ``step``, optimizer, scheduler and RNG states, recipe, metrics (see ``mlof.checkpoint``, which
  writes them).

Safety: files are read with ``torch.load(weights_only=True)`` only, never with a fallback to full unpickling:
a file that pickles functions or objects is refused before anything in it runs. The only globals allowed
besides tensors and containers are numpy's scalar/array reconstructors and dtype classes (what mmflow's
``meta`` needs); they rebuild data, they cannot call arbitrary code.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones.registry import available

__all__ = ["FORMAT", "VERSION", "CheckpointError", "CheckpointNotFoundError", "CheckpointMismatchError",
           "Checkpoint", "read_checkpoint_file", "read_checkpoint", "decode_checkpoint", "load_weights"]

FORMAT = "mlof"      # the ``format`` entry of mlof's own files
VERSION = 1          # the newest mlof file version this code reads

_ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"          # legacy torch.save format: a pickle, protocol >= 2
_WRAPPERS = ("state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a torch file, pickled code, insane metadata, or (subclass
    ``CheckpointMismatchError``) weights that do not fit the network. The message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist or is a folder."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's network, keys or shapes do not fit the network being loaded."""


@dataclass
class Checkpoint:
    """A decoded checkpoint of any layout.

    state_dict: parameter/buffer name -> tensor (wrappers and ``module.`` prefixes removed).
    source:     where it came from (the path, or "state dict" for an in-memory dict), for messages.
    backbone:   the stored network name (mlof files), None for official files (the caller names the network).
    options:    the stored build options (mlof files), else {}.
    contents:   the whole mlof file (training state, recipe, metrics, image_range, ...), None for other layouts.
    """

    state_dict: dict[str, torch.Tensor]
    source: str
    backbone: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    contents: dict[str, Any] | None = None

    @property
    def is_mlof(self) -> bool:
        return self.contents is not None


def _numpy_safe_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    dtype_classes = {type(np.dtype(t)) for t in set(np.sctypeDict.values()) if t not in (np.void, np.object_)}
    return [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct, *dtype_classes]


def _first_line(e: BaseException, limit: int) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def read_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The object stored in ``path``, by ``torch.load(weights_only=True)``, with one-line errors.

    Errors: ``CheckpointNotFoundError`` (missing, or a folder), ``CheckpointError`` (empty, not a torch file,
    truncated, or pickled code -- refused before it runs).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist" if not os.path.isdir(path)
                                      else f"checkpoint {path} is a folder, not a file")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(f"{path}: not a torch checkpoint (the file is empty)")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        text = head[:24].decode("utf-8", "replace").replace("\n", " ").strip()
        looks = f"it starts with the text {text!r}" if head.isascii() else "it has no torch.save header"
        raise CheckpointError(f"{path}: not a torch checkpoint ({looks}); give a .pt/.pth file written by "
                              f"torch.save")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused: the file pickles Python objects or code, which is never run here "
                f"(weights_only=True); save a plain state dict of tensors instead ({_first_line(e, 120)})") from e
        raise CheckpointError(f"{path}: corrupt torch checkpoint ({_first_line(e, 160)})") from e
    except Exception as e:  # truncated zip, bad records
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({_first_line(e, 160)})") from e


def _validate_mlof(obj: dict[str, Any], source: str) -> None:
    """Raise ``CheckpointError`` naming the entry if an mlof file's metadata is not sane."""
    for key in ("backbone", "state_dict"):
        if key not in obj:
            raise CheckpointError(f"{source}: mlof checkpoint lacks its {key!r} entry")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{source}: checkpoint version {version!r} is not a version number")
    if version > VERSION:
        raise CheckpointError(f"{source}: checkpoint version {version!r} is newer than this mlof reads ({VERSION})")
    spec = obj.get("backbone")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CheckpointError(f"{source}: 'backbone' must be {{'name': str, 'options': dict}}, got {spec!r:.80}")
    if spec["name"] not in available():
        raise CheckpointError(f"{source}: backbone {spec['name']!r:.60} is not a known network (one of "
                              f"{', '.join(available())})")
    if not isinstance(spec.get("options", {}) or {}, dict):
        raise CheckpointError(f"{source}: backbone options must be a dict, got {spec.get('options')!r:.80}")
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{source}: 'state_dict' must be a non-empty dict of tensors")
    step = obj.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise CheckpointError(f"{source}: 'step' must be an int >= 0, got {step!r:.40}")


def decode_checkpoint(obj: Any, source: str = "state dict") -> Checkpoint:
    """Decode an already loaded checkpoint object (any layout above) into a ``Checkpoint``."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        _validate_mlof(obj, source)
        spec = obj["backbone"]
        return Checkpoint(dict(obj["state_dict"]), source, spec["name"], dict(spec.get("options") or {}), obj)
    sd = obj
    for wrapper in _WRAPPERS:
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{source}: not a state dict (expected a dict of tensors, optionally inside "
                              f"'model' or 'state_dict')")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return Checkpoint(dict(sd), source)


def read_checkpoint(checkpoint: str | os.PathLike | dict | Checkpoint,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """A path (read once), a loaded object, or an already decoded ``Checkpoint`` (returned as is)."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if isinstance(checkpoint, dict):
        return decode_checkpoint(checkpoint)
    return decode_checkpoint(read_checkpoint_file(checkpoint, map_location), os.fspath(checkpoint))


def _check_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: weights contain NaN or inf values ({shown}); the file is damaged or "
                              f"comes from a diverged training run")


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
    return f"\n  {title} ({len(items)}): {shown}"


def load_weights(model: nn.Module, checkpoint: str | os.PathLike | dict | Checkpoint,
                 strict: bool = True) -> nn.Module:
    """Load a checkpoint of any layout into ``model`` in place; with ``strict`` every key and shape must match.

    An mlof file must hold the network ``model`` was built as (``model.mlof_spec``). Weights with NaN or inf
    values are refused. Mismatches raise ``CheckpointMismatchError`` naming the missing, unexpected and
    mis-shaped keys.
    """
    ckpt = read_checkpoint(checkpoint)
    spec = getattr(model, "mlof_spec", None)
    if ckpt.backbone is not None and spec is not None and ckpt.backbone != spec["name"]:
        raise CheckpointMismatchError(f"{ckpt.source} holds a {ckpt.backbone!r} network, not {spec['name']!r}")
    sd = ckpt.state_dict
    _check_finite(sd, ckpt.source)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or misshaped):
        raise CheckpointMismatchError(
            f"{ckpt.source} does not fit {type(model).__name__}:" + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected) + _listing("mis-shaped keys", misshaped))
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)
    return model
