"""The run folder ``<out_dir>/<name>/`` and what is logged into it.

Layout::

    runs/<name>/
        config.yaml            resolved configuration (defaults <- recipe <- overrides)
        metrics.json           summary metrics (rewritten atomically)
        events.out.tfevents.*  TensorBoard scalars and image grids
        checkpoints/latest.pt  newest state (training runs), step_XXXXXX.pt kept ones
        ...                    subcommand outputs (flows/, images/, results.json, ...)

In a multi-process run only rank 0 creates the folder and writes; on other ranks every method is a
no-op, so callers need no ``if rank == 0``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import OmegaConf

from mlof.utils import atomic_open

__all__ = ["RunDir", "jsonable"]


def jsonable(obj: Any) -> Any:
    """Numbers, tensors and numpy values as plain JSON values (NaN/inf as null)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch / numpy
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


class RunDir:
    """Creates and writes one run folder (on the main process only)."""

    def __init__(self, out_dir: str | os.PathLike, name: str, is_main: bool = True, tensorboard: bool = True):
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"name: {name!r} is not a valid run-folder name")
        self.path = Path(out_dir) / name
        self.is_main = is_main
        self._tb = tensorboard
        self._writer = None
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def writer(self):
        """The TensorBoard ``SummaryWriter`` (created on first use), or None off rank 0 / when disabled."""
        if self._writer is None and self.is_main and self._tb:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.path))
        return self._writer

    def save_config(self, cfg: Any) -> None:
        if self.is_main:
            text = OmegaConf.to_yaml(cfg) if not isinstance(cfg, dict) else OmegaConf.to_yaml(OmegaConf.create(cfg))
            with atomic_open(self.path / "config.yaml", "w") as f:
                f.write(text)

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as ``<run>/<name>`` atomically (rank 0)."""
        path = self.path / name
        if self.is_main:
            with atomic_open(path, "w") as f:
                json.dump(jsonable(data), f, indent=2)
                f.write("\n")
        return path

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        return self.write_json("metrics.json", metrics)

    def log_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        w = self.writer
        if w is None:
            return
        for k, v in scalars.items():
            if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
                w.add_scalar(f"{prefix}{k}", float(v), step)

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: uint8 H x W x 3."""
        w = self.writer
        if w is not None:
            w.add_image(tag, np.ascontiguousarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
