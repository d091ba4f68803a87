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

Safety (docs/reliability.md):

* a folder that already holds a run is refused when the ``RunDir`` is made (before any work), unless
  ``resume`` (continue it) or ``overwrite`` (empty it first; only folders with a ``config.yaml`` are emptied);
* nothing is written until the first output: ``save_config`` keeps the configuration in memory and the folder
  is created by the first write (``open``), so a run that fails on a bad setting leaves no folder behind;
* while a run writes, ``<run>/.lock`` holds its pid; a second process on the same folder is refused. A lock
  whose process is gone (``kill -9``) is stale and taken over.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import OmegaConf

from mlof.utils import atomic_open

__all__ = ["RunDir", "RunDirError", "jsonable", "LOCK_NAME"]

LOCK_NAME = ".lock"


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


class RunDirError(ValueError):
    """The run folder cannot be used: it holds another run, or another process is writing it."""


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` (Linux ``/proc``; None elsewhere): tells a reused pid from the owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by someone else
        return True
    return True


def lock_owner(lock: Path) -> int | None:
    """The pid of the live process holding ``lock``, or None (no lock, unreadable or stale lock)."""
    try:
        info = json.loads(lock.read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("host") not in (None, socket.gethostname()):
        return pid                      # another machine's process: cannot check it, assume it is running
    if not _alive(pid):
        return None
    start = info.get("start")
    if start is not None and _proc_start(pid) not in (None, start):
        return None                     # the pid was reused by an unrelated process
    return pid


class RunDir:
    """Creates and writes one run folder (on the main process only).

    resume: the folder may hold a run (it is continued). overwrite: a folder holding a run is emptied at the
    first write. Without either, a folder that holds anything is refused here (``RunDirError``).
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, is_main: bool = True, tensorboard: bool = True,
                 resume: bool = False, overwrite: bool = False):
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"name: {name!r} is not a valid run-folder name")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or start it over")
        self.path = Path(out_dir) / name
        self.is_main = is_main
        self.resume, self.overwrite = bool(resume), bool(overwrite)
        self._tb = tensorboard
        self._writer = None
        self._opened = False
        self._config_text: str | None = None
        self._check()   # on every rank (read-only), so that all of them stop together under torchrun

    @classmethod
    def for_config(cls, cfg: Any, **kwargs: Any) -> "RunDir":
        """The run folder of a resolved config (``out_dir``, ``name``, ``resume``, ``overwrite`` keys)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        kwargs.setdefault("resume", bool(get("resume", False)))
        kwargs.setdefault("overwrite", bool(get("overwrite", False)))
        return cls(get("out_dir", "runs"), get("name"), **kwargs)

    @property
    def lock(self) -> Path:
        return self.path / LOCK_NAME

    def _contents(self) -> list[Path]:
        return [p for p in self.path.iterdir() if p.name != LOCK_NAME]

    def _check(self) -> None:
        """Refuse a folder in use by a live process, or holding a run without resume/overwrite."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a folder")
        owner = lock_owner(self.lock)
        if owner is not None and owner != os.getpid():
            raise RunDirError(f"{self.path} is in use by process {owner} (lock file {self.lock}); wait for it to "
                              f"finish or pick another name=...")
        contents = self._contents()
        if not contents or self.resume:
            return
        if not self.overwrite:
            raise RunDirError(f"{self.path} already holds a run; continue it with --resume, start it over with "
                              f"overwrite=true (or --overwrite), or pick another name=...")
        if not (self.path / "config.yaml").is_file():
            raise RunDirError(f"{self.path} is not an mlof run folder (no config.yaml): overwrite=true empties "
                              f"only run folders; pick another name=... or out_dir=...")

    def open(self) -> Path:
        """Create the folder, take its lock, empty it if ``overwrite``, write the pending config (once).

        Called by every write; call it directly to claim the folder early (e.g. before a long computation).
        Returns the folder.
        """
        if not self.is_main or self._opened:
            return self.path
        self._check()       # again: another process may have started meanwhile
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._opened = True
        atexit.register(self._release_lock)
        if self.overwrite:
            for old in self._contents():
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        if self._config_text is not None:
            self._write_config()
        return self.path

    def _take_lock(self) -> None:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": _proc_start(os.getpid())})
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = lock_owner(self.lock)
                if owner is not None and owner != os.getpid():
                    raise RunDirError(f"{self.path} is in use by process {owner} (lock file {self.lock}); wait "
                                      f"for it to finish or pick another name=...") from None
                self.lock.unlink(missing_ok=True)   # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(info)
            return
        raise RunDirError(f"{self.path}: cannot take the lock file {self.lock} (another process races for it)")

    def _release_lock(self) -> None:
        if not self._opened:
            return
        try:
            if int(json.loads(self.lock.read_text())["pid"]) == os.getpid():
                self.lock.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def subdir(self, name: str) -> Path:
        """``<run>/<name>/``, created (with the run folder) on first use."""
        self.open()
        path = self.path / name
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
        return path

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
            from torch.utils.tensorboard import SummaryWriter  # why here: importing tensorboard costs ~1 s
            self.open()
            self._writer = SummaryWriter(log_dir=str(self.path))
        return self._writer

    def save_config(self, cfg: Any) -> None:
        """Keep ``cfg`` for ``config.yaml``: written with the run's first output (now if the folder is open),
        so a configuration that fails before producing anything leaves no file behind."""
        if not self.is_main:
            return
        if not isinstance(cfg, dict):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = {k: v for k, v in cfg.items() if k not in ("resume", "overwrite")}   # about the folder, not the run
        self._config_text = OmegaConf.to_yaml(OmegaConf.create(cfg))
        if self._opened:
            self._write_config()

    def _write_config(self) -> None:
        with atomic_open(self.path / "config.yaml", "w") as f:
            f.write(self._config_text)

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as ``<run>/<name>`` atomically (rank 0)."""
        path = self.path / name
        if self.is_main:
            self.open()
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
        """Close the TensorBoard writer and release the folder's lock."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._release_lock()
