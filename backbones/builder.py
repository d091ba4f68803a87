"""Building networks by name, with weights from a checkpoint (any layout) or the official-weights registry."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from backbones.checkpoint import Checkpoint, CheckpointError, CheckpointMismatchError, load_weights, read_checkpoint
from backbones.fetch import fetch
from backbones.registry import available, factory
from backbones.weights import resolve_name

__all__ = ["build", "build_from_checkpoint"]


def build(name: str, checkpoint: str | os.PathLike | dict | Checkpoint | None = None, strict: bool = True,
          weights: str | None = None, **options: Any) -> nn.Module:
    """Build network ``name`` with ``options`` and, if given, load ``checkpoint`` or official ``weights``.

    checkpoint: a path to an official release file (``module.`` prefixes and ``{'model': ...}`` /
    ``{'state_dict': ...}`` wrappers are accepted as they are), an mmflow file, one of mlof's own checkpoints,
    an already loaded state dict, or a ``Checkpoint`` from ``read_checkpoint``. Loading is strict unless
    ``strict=False``.
    weights: an entry of the official-weights registry (``backbones.weights``), by its full name
    (``"raft-things"``) or short name (``"things"``): fetched into the cache (verified) on first use; the
    options the file needs (e.g. KPA-Flow's ``dataset``) are added unless given.
    The model records how it was built in ``model.mlof_spec`` (name + options; mlof's checkpoints store it).
    """
    if weights is not None:
        if checkpoint is not None:
            raise ValueError("give either checkpoint= or weights=, not both")
        entry = resolve_name(name, weights)
        options = {**entry.options, **options}
        checkpoint = fetch(entry, progress=True, check_keys=False)  # loaded strictly below
    make = factory(name)
    try:
        model = make(**options)
    except TypeError as e:
        # An unknown option is the caller's mistake: say which network and which option.
        if "unexpected keyword argument" in str(e):
            raise ValueError(f"backbone {name!r}: {e}") from e
        raise
    model.mlof_spec = {"name": name, "options": dict(options)}
    if checkpoint is not None:
        load_weights(model, checkpoint, strict=strict)
    return model


def build_from_checkpoint(checkpoint: str | os.PathLike | dict | Checkpoint, name: str | None = None,
                          strict: bool = True, **options: Any) -> nn.Module:
    """Rebuild the network a checkpoint holds and load its weights (the file is read once).

    mlof files name their network and build options (``options`` override them, e.g. a correlation backend;
    a ``name`` that differs from the stored one raises ``CheckpointMismatchError``). Official files store no
    name: ``name`` says which network they hold (``CheckpointError`` without it).
    """
    ckpt = read_checkpoint(checkpoint)
    if ckpt.backbone is not None and name is not None and name != ckpt.backbone:
        raise CheckpointMismatchError(f"{ckpt.source} holds a {ckpt.backbone!r} network, not {name!r}")
    if ckpt.backbone is None and name is None:
        raise CheckpointError(f"{ckpt.source} is not an mlof checkpoint and stores no backbone name; say which "
                              f"network it holds (one of {', '.join(available())})")
    return build(name or ckpt.backbone, checkpoint=ckpt, strict=strict, **{**ckpt.options, **options})
