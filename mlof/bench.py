"""Speed and peak memory of inference and adaptation, per backbone, input size and correlation backend.

``mlof bench backbones=[raft_small,raft] sizes=[[224,320],[436,1024]] corr=[dense,ondemand]`` prints a
table and writes ``runs/<name>/bench.json``. Timings are wall-clock medians over ``repeats`` runs after
``warmup`` runs. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only); on CPU the
process's peak resident set (Linux ``VmHWM``, reset before each measurement through
``/proc/self/clear_refs``), reported as the increase over the resident set before the measurement.
Weights do not change speed, so networks are randomly initialised unless a checkpoint is given.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch

from mlof.train.config import RunConfig

__all__ = ["BenchConfig", "measure", "bench", "format_table", "peak_memory"]


@dataclass
class BenchConfig(RunConfig):
    """``mlof bench``: a grid of backbones x sizes x correlation backends x modes."""

    name: str = "bench"
    backbones: List[str] = field(default_factory=lambda: ["raft_small"])
    sizes: List[List[int]] = field(default_factory=lambda: [[224, 320]])   # [H, W]
    corr: List[str] = field(default_factory=lambda: ["dense"])             # build option; "-" = network default
    modes: List[str] = field(default_factory=lambda: ["inference", "adaptation"])
    iters: int = 12
    adapt_steps: int = 1
    repeats: int = 3
    warmup: int = 1
    batch: int = 1
    checkpoint: Optional[str] = None   # only with a single backbone
    threads: int = 0                   # torch.set_num_threads (0: leave as is)


class _PeakMemory:
    """Peak-memory probe: CUDA allocator statistics, or the process's peak RSS on Linux."""

    def __init__(self, device: torch.device):
        self.device = device
        self._base = 0

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS
        except OSError:
            pass
        self._base = self._status("VmRSS") or 0

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self._base
        hwm = self._status("VmHWM")
        return None if hwm is None else max(0, hwm - self._base)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes of peak memory ``fn()`` needs above what was in use before (see module docstring)."""
    probe = _PeakMemory(device)
    probe.reset()
    fn()
    return probe.peak_bytes()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Median / min wall time (s) of ``fn()`` over ``repeats`` after ``warmup``, and its peak memory."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    mem = peak_memory(fn, device)
    return {"seconds": statistics.median(times), "seconds_min": min(times), "peak_mb": None if mem is None
            else mem / 2 ** 20}


def _build(name: str, corr: str, checkpoint: str | None, device: torch.device) -> torch.nn.Module:
    from mlof.train.config import ModelConfig
    from mlof.train.setup import build_model

    options = {} if corr in ("-", "", "default") else {"corr": corr}
    # with a checkpoint, build_model checks that it holds network ``name``
    return build_model(ModelConfig(name=name, options=options, checkpoint=checkpoint), device,
                       warn_random=False).eval()   # speed and memory do not depend on the weights


def _case(model: torch.nn.Module, img1: torch.Tensor, img2: torch.Tensor, mode: str,
          cfg: BenchConfig) -> Callable[[], Any]:
    """The call one measurement times: a no-grad forward pass, or one ``mlof.adapt`` call."""
    import mlof

    if mode == "inference":
        def fn() -> Any:
            with torch.no_grad():
                return model(img1, img2, iters=cfg.iters)
    else:
        def fn() -> Any:
            return mlof.adapt(model, (img1[0], img2[0]), steps=cfg.adapt_steps, iters=cfg.iters)
    return fn


def bench(cfg: BenchConfig, device: torch.device, progress: Callable[[str], None] | None = None
          ) -> list[dict[str, Any]]:
    """Run the grid; one row per (backbone, size, corr, mode), with an ``error`` where a case cannot run."""
    if cfg.checkpoint and len(cfg.backbones) != 1:
        raise ValueError("checkpoint: give exactly one backbone with a checkpoint")
    for m in cfg.modes:
        if m not in ("inference", "adaptation"):
            raise ValueError(f"modes: {m!r} is not one of inference, adaptation")
    rows = []
    for name in cfg.backbones:
        for size in cfg.sizes:
            if len(size) != 2:
                raise ValueError(f"sizes: each size is [H, W], got {list(size)}")
            h, w = int(size[0]), int(size[1])
            for corr in cfg.corr:
                g = torch.Generator().manual_seed(cfg.seed)
                img1 = (torch.rand(cfg.batch, 3, h, w, generator=g) * 255).to(device)
                img2 = (torch.rand(cfg.batch, 3, h, w, generator=g) * 255).to(device)
                try:
                    model = _build(name, corr, cfg.checkpoint, device)
                except (TypeError, ValueError) as e:
                    for mode in cfg.modes:
                        rows.append({"backbone": name, "size": f"{h}x{w}", "corr": corr, "mode": mode,
                                     "error": f"cannot build: {e}".splitlines()[0]})
                    continue
                for mode in cfg.modes:
                    if progress:
                        progress(f"{name} {h}x{w} corr={corr} {mode}")
                    fn = _case(model, img1, img2, mode, cfg)
                    row = {"backbone": name, "size": f"{h}x{w}", "corr": corr, "mode": mode, "iters": cfg.iters,
                           "batch": cfg.batch}
                    if mode == "adaptation":
                        row["steps"] = cfg.adapt_steps
                    try:
                        row.update(measure(fn, device, cfg.repeats, cfg.warmup))
                    except (RuntimeError, ValueError) as e:   # out of memory, unsupported size
                        row["error"] = str(e).splitlines()[0][:200]
                    rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    head = ["backbone", "size", "corr", "mode", "seconds", "peak MB", "note"]
    lines = [head]
    for r in rows:
        sec = "" if "seconds" not in r else f"{r['seconds']:.3f}"
        mem = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        note = r.get("error", "") or (f"{r['steps']} step(s)" if r["mode"] == "adaptation" else f"{r['iters']} iters")
        lines.append([r["backbone"], r["size"], r["corr"], r["mode"], sec, mem, note])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(wd) for c, wd in zip(line, widths)).rstrip() for line in lines)
