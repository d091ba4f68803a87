"""Speed and absolute peak memory of inference, adaptation and training, per backbone, size, backend, precision.

``mlof bench backbones=[raft_small,raft] sizes=[[224,320],[436,1024]] precision=[fp32,bf16]
modes=[inference,adaptation,training]`` runs every case in a fresh Python subprocess and reports:

- ``seconds``: wall-clock median over ``repeats`` runs after ``warmup`` runs (``seconds_min``: the fastest);
- ``peak_rss_mb``: the subprocess's absolute peak resident memory (Linux ``VmHWM``: interpreter, torch, the
  model, every run) -- what a user's machine must have free; ``baseline_rss_mb``: the resident memory after
  the model was built and before the first run, for the share the case itself needs;
- on CUDA, ``cuda_peak_mb``: ``torch.cuda.max_memory_allocated`` over the runs (tensors only).

Modes: ``inference`` (a no-grad forward pass), ``adaptation`` (one ``mlof.adapt`` call of ``adapt_steps``
steps: both directions, the default objective and memory plan), ``training`` (one supervised optimizer step:
train mode, every iteration's prediction in RAFT's sequence loss, AdamW). Output: a Markdown table on
stdout and in ``runs/<name>/bench.md``, the rows in ``runs/<name>/bench.json``. Weights do not change speed,
so networks are randomly initialised unless a checkpoint is given.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from backbones import capabilities
from backbones.base import check_precision
from backbones.memory_plan import proc_kib_field
import mlof
from mlof.commands.report import say
from mlof.commands.setup import build_model
from mlof.config import ModelConfig, RunConfig
from mlof.losses.supervised import sequence_loss
from mlof.meta.forward import call_net
from mlof.optim import build_optimizer
from mlof.runs.rundir import RunDir
from mlof.train.distributed import resolve_device
from mlof.utils import atomic_open

__all__ = ["BenchConfig", "MODES", "measure", "bench", "run_case", "format_table", "format_markdown",
           "peak_rss_bytes"]

MODES = ("inference", "adaptation", "training")


@dataclass
class BenchConfig(RunConfig):
    """``mlof bench``: a grid of backbones x sizes x correlation backends x precisions x modes."""

    name: str = "bench"
    backbones: List[str] = field(default_factory=lambda: ["raft_small"])
    sizes: List[List[int]] = field(default_factory=lambda: [[224, 320]])   # [H, W]
    corr: List[str] = field(default_factory=lambda: ["-"])                 # build option; "-" = network default
    precision: List[str] = field(default_factory=lambda: ["fp32"])         # fp32 | bf16 | fp16 (CUDA)
    modes: List[str] = field(default_factory=lambda: ["inference", "adaptation"])
    iters: int = 12
    adapt_steps: int = 1
    adapt_params: Optional[str] = None   # adaptation: which parameters adapt (None: mlof.adapt's default, all;
    #                                      "update_block", a group name or a list as mlof.adapt's ``params``)
    adapt_max_pixels: Optional[int] = None  # adaptation: mlof.adapt's max_pixels; None: at the bench size itself
    #                                      (mlof.adapt's default, 256 x 512, would shrink larger sizes)
    memory_budget: Optional[str] = None  # adaptation/training: None = the default ("auto" in adaptation, no plan
    #                                      in training), "8GB", or "plain" (no plan: the savers as built)
    repeats: int = 3
    warmup: int = 1
    batch: int = 1
    checkpoint: Optional[str] = None   # only with a single backbone
    threads: int = 0                   # torch.set_num_threads in every case (0: torch's default)
    timeout: int = 3600                # seconds per case (its subprocess is stopped after that)
    subprocess: bool = True            # False: measure in this process (peak RSS is then the process's so far)


def peak_rss_bytes() -> int | None:
    """This process's peak resident set since it started (Linux ``VmHWM``), or None where unknown."""
    peak = proc_kib_field("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    try:  # macOS and other Unixes: ru_maxrss (bytes on macOS, KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


def _rss_bytes() -> int | None:
    return proc_kib_field("/proc/self/status", "VmRSS")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Median / min wall time (s) of ``fn()`` over ``repeats`` after ``warmup``, and the peak memory so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"seconds": statistics.median(times), "seconds_min": min(times)}
    peak = peak_rss_bytes()
    out["peak_rss_mb"] = None if peak is None else peak / 2 ** 20
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def _build(name: str, corr: str, precision: str, checkpoint: str | None, device: torch.device) -> torch.nn.Module:
    options: dict[str, Any] = {} if corr in ("-", "", "default") else {"corr": corr}
    if precision != "fp32":
        options["precision"] = precision
    # with a checkpoint, build_model checks that it holds network ``name``
    return build_model(ModelConfig(name=name, options=options, checkpoint=checkpoint), device,
                       warn_random=False).eval()   # speed and memory do not depend on the weights


def _case(model: torch.nn.Module, img1: torch.Tensor, img2: torch.Tensor, mode: str,
          case: dict[str, Any]) -> Callable[[], Any]:
    """The call one measurement times."""

    iters = case["iters"]
    if mode == "inference":
        def fn() -> Any:
            with torch.no_grad():
                return call_net(model, model, img1, img2, iters=iters)
        return fn
    if mode == "adaptation":
        budget = case.get("memory_budget")
        extra = {} if budget is None else {"memory_budget": None if budget == "plain" else budget}
        extra["max_pixels"] = case.get("adapt_max_pixels")
        if case.get("adapt_params"):
            extra["params"] = case["adapt_params"]

        def fn() -> Any:
            result = mlof.adapt(model, (img1, img2), steps=case["adapt_steps"], iters=iters, **extra)
            fn.plan = next((h["memory_plan"] for h in result.history if "memory_plan" in h), None)
            return result
        return fn

    if case.get("memory_budget") not in (None, "plain") and hasattr(model, "memory_budget"):
        model.memory_budget = case["memory_budget"]
    model.train()
    opt = build_optimizer(model.parameters(), "adamw", lr=1e-5, weight_decay=0.01)  # torch's AdamW default decay
    gt = torch.zeros(img1.shape[0], 2, *img1.shape[-2:], device=img1.device)

    def fn() -> Any:
        opt.zero_grad(set_to_none=True)
        out = call_net(model, model, img1, img2, iters=iters)
        flows = out.flows or [out.flow]
        loss, _ = sequence_loss(flows, gt)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return fn


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this process (what the subprocess runs). ``case``: backbone, height, width, corr,
    precision, mode, iters, adapt_steps, adapt_params, adapt_max_pixels, memory_budget, repeats, warmup, batch,
    checkpoint, device, seed, threads."""
    if case.get("threads"):
        torch.set_num_threads(int(case["threads"]))
    device = torch.device(case["device"])
    g = torch.Generator().manual_seed(int(case.get("seed", 0)))
    shape = (case["batch"], 3, case["height"], case["width"])
    img1 = (torch.rand(*shape, generator=g) * 255).to(device)
    img2 = (torch.rand(*shape, generator=g) * 255).to(device)
    model = _build(case["backbone"], case["corr"], case["precision"], case.get("checkpoint"), device)
    baseline = _rss_bytes()
    fn = _case(model, img1, img2, case["mode"], case)
    row = measure(fn, device, case["repeats"], case["warmup"])
    row["baseline_rss_mb"] = None if baseline is None else baseline / 2 ** 20
    plan = getattr(fn, "plan", None) or getattr(model, "last_memory_plan", None)
    if plan is not None:
        row["memory_plan"] = plan if isinstance(plan, str) else plan.describe()
    return row


def _in_subprocess(case: dict[str, Any], timeout: int) -> dict[str, Any]:
    code = ("import json, sys; from mlof.commands.bench import run_case; "
            "print('MLOF_BENCH ' + json.dumps(run_case(json.loads(sys.argv[1]))), flush=True)")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(case)], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("MLOF_BENCH "):
            return json.loads(line[len("MLOF_BENCH "):])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"exit code {proc.returncode}"
    if proc.returncode < 0:
        reason = f"killed by signal {-proc.returncode} (out of memory?)"
    return {"error": reason[:200]}


def bench(cfg: BenchConfig, device: torch.device, progress: Callable[[str], None] | None = None
          ) -> list[dict[str, Any]]:
    """Run the grid; one row per (backbone, size, corr, precision, mode), with an ``error`` where a case
    cannot run."""

    if cfg.checkpoint and len(cfg.backbones) != 1:
        raise ValueError("checkpoint: give exactly one backbone with a checkpoint")
    for m in cfg.modes:
        if m not in MODES:
            raise ValueError(f"modes: {m!r} is not one of {', '.join(MODES)}")
    for p in cfg.precision:
        check_precision(p)
    for size in cfg.sizes:
        if len(size) != 2:
            raise ValueError(f"sizes: each size is [H, W], got {list(size)}")
    rows = []
    for name in cfg.backbones:
        caps = capabilities(name)
        for size in cfg.sizes:
            h, w = int(size[0]), int(size[1])
            for corr in cfg.corr:
                for precision in cfg.precision:
                    for mode in cfg.modes:
                        row: dict[str, Any] = {"backbone": name, "size": f"{h}x{w}", "corr": corr,
                                               "precision": precision, "mode": mode, "iters": cfg.iters,
                                               "batch": cfg.batch}
                        if mode == "adaptation":
                            row["steps"] = cfg.adapt_steps
                            if cfg.adapt_params:
                                row["params"] = cfg.adapt_params
                            if cfg.adapt_max_pixels is not None:
                                row["max_pixels"] = cfg.adapt_max_pixels
                        if corr not in ("-", "", "default") and corr not in caps.corr:
                            rows.append({**row, "error": f"{name} has no corr={corr} option"})
                            continue
                        if precision not in caps.precisions:
                            rows.append({**row, "error": f"{name} does not support precision={precision}"})
                            continue
                        if precision == "fp16" and device.type != "cuda":
                            rows.append({**row, "error": "fp16 needs a CUDA device"})
                            continue
                        if progress:
                            progress(f"{name} {h}x{w} corr={corr} {precision} {mode}")
                        case = {"backbone": name, "height": h, "width": w, "corr": corr, "precision": precision,
                                "mode": mode, "iters": cfg.iters, "adapt_steps": cfg.adapt_steps,
                                "adapt_params": cfg.adapt_params, "adapt_max_pixels": cfg.adapt_max_pixels,
                                "memory_budget": cfg.memory_budget, "repeats": cfg.repeats, "warmup": cfg.warmup,
                                "batch": cfg.batch, "checkpoint": cfg.checkpoint, "device": str(device),
                                "seed": cfg.seed, "threads": cfg.threads}
                        if cfg.subprocess:
                            row.update(_in_subprocess(case, cfg.timeout))
                        else:
                            try:
                                row.update(run_case(case))
                            except (RuntimeError, ValueError) as e:   # out of memory, unsupported size
                                row["error"] = str(e).splitlines()[0][:200]
                        rows.append(row)
    return rows


def _cells(r: dict[str, Any]) -> list[str]:
    sec = "" if "seconds" not in r else f"{r['seconds']:.3f}"
    mem = "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"
    cuda = "" if r.get("cuda_peak_mb") is None else f"{r['cuda_peak_mb']:.0f}"
    if r.get("error"):
        note = r["error"]
    else:
        note = f"{r['steps']} step(s)" if r["mode"] == "adaptation" else f"{r['iters']} iters"
        if r.get("params"):
            note += f", params={r['params']}"
        if r.get("memory_plan"):
            note += f"; {r['memory_plan'].split(' (')[0]}"
    return [r["backbone"], r["size"], r["corr"], r.get("precision", "fp32"), r["mode"], sec, mem, cuda, note]


_HEAD = ["backbone", "size", "corr", "precision", "mode", "seconds", "peak RSS MB", "CUDA peak MB", "note"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    lines = [_HEAD] + [_cells(r) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(_HEAD))]
    return "\n".join("  ".join(str(c).ljust(wd) for c, wd in zip(line, widths)).rstrip() for line in lines)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof bench``: measure the grid, write bench.json / bench.md / metrics.json and print the table."""
    obj: BenchConfig = OmegaConf.to_object(cfg)
    run = RunDir.for_config(cfg)
    if obj.threads > 0:
        torch.set_num_threads(obj.threads)
    device = resolve_device(obj.device)
    rows = bench(obj, device, progress=(lambda m: print(f"  measuring {m}", flush=True)) if progress else None)
    run.save_config(cfg)
    info = {"device": str(device), "torch": torch.__version__, "threads": obj.threads or torch.get_num_threads(),
            "cpus": os.cpu_count(), "rows": rows}
    run.write_json("bench.json", info)
    run.write_metrics(info)
    table = format_markdown(rows)
    with atomic_open(run.path / "bench.md", "w") as f:
        f.write(table + "\n")
    run.close()
    print(table)
    say(f"  json: {run.path / 'bench.json'}, markdown: {run.path / 'bench.md'}")
    return 0
