"""``mlof export``: a flow network as an ONNX graph, checked against torch with onnxruntime.

    mlof export model.name=raft_small model.checkpoint=raft-small out=raft_small.onnx size=[256,320] iters=12

The graph (``backbones.onnx``): inputs ``image1``, ``image2`` float32 ``batch`` x 3 x H x W (RGB 0..255),
outputs ``flow`` ``batch`` x 2 x H x W and ``flow_low`` (1/8, padded grid); size, batch and iterations fixed
at export. ``check=true`` (default, when onnxruntime is installed: ``pip install mlof[export]``) runs the
graph and the torch network on one random pair and one shifted pair and reports the largest difference
in pixels; above ``tolerance`` the export fails (and the file is removed).
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from backbones.onnx import export_onnx, torch_reference
from mlof.commands.report import say
from mlof.commands.setup import build_model
from mlof.config import ModelConfig

__all__ = ["ExportConfig", "run_export", "check_onnx"]


@dataclass
class ExportConfig:
    """``mlof export``: write a network as ONNX."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="raft_small"))
    out: str = "model.onnx"           # the .onnx file (written atomically)
    size: List[int] = field(default_factory=lambda: [256, 320])   # [H, W] of the inputs the graph takes
    iters: int = 12                   # GRU iterations, fixed in the graph
    corr: str = "dense"               # dense (official all-pairs volume) | ondemand (no volume: large frames)
    batch: int = 1                    # batch size, fixed in the graph
    opset: int = 17                   # ONNX opset (>= 16: GridSample)
    check: bool = True                # run the graph with onnxruntime and compare with torch
    tolerance: float = 1e-3           # largest accepted |onnx - torch| flow difference, pixels


def check_onnx(model: Any, path: str, size: tuple[int, int], iters: int, corr: str, batch: int = 1) -> dict:
    """Largest |onnxruntime - torch| of ``flow`` and ``flow_low`` (pixels) on two input pairs.

    Pairs: independent uniform noise, and a frame with its copy shifted by (3, 5) px (a plausible flow).
    """
    import onnxruntime as ort  # optional (mlof[export]): imported only when a graph is checked

    h, w = size
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(batch, 3, h, w, generator=gen) * 255
    pairs = [(a, torch.rand(batch, 3, h, w, generator=gen) * 255), (a, torch.roll(a, (3, 5), (2, 3)))]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    diff_flow = diff_low = 0.0
    t0 = time.perf_counter()
    for im1, im2 in pairs:
        flow, low = session.run(None, {"image1": im1.numpy(), "image2": im2.numpy()})
        ref, ref_low = torch_reference(model, im1, im2, iters, corr)
        diff_flow = max(diff_flow, float(np.abs(flow - ref.numpy()).max()))
        diff_low = max(diff_low, float(np.abs(low - ref_low.numpy()).max()))
    return {"max_abs_diff_flow_px": diff_flow, "max_abs_diff_flow_low_px": diff_low,
            "seconds": time.perf_counter() - t0, "pairs": len(pairs)}


def run_export(cfg: Any, say=print) -> dict:
    """Build the model of ``cfg.model``, export it, check it; returns the export summary."""
    if len(cfg.size) != 2 or any(int(s) < 1 for s in cfg.size):
        raise ValueError(f"size must be [H, W] with positive sides, got {list(cfg.size)}")
    if cfg.corr not in ("dense", "ondemand"):
        raise ValueError(f"corr: {cfg.corr!r} is not one of dense, ondemand")
    if not str(cfg.out).endswith(".onnx"):
        raise ValueError(f"out: {cfg.out!r} should end with .onnx")
    if cfg.check and importlib.util.find_spec("onnxruntime") is None:
        raise ValueError("check=true needs onnxruntime (pip install 'mlof[export]'), or pass check=false")
    if importlib.util.find_spec("onnx") is None:
        raise ValueError("mlof export needs the onnx package: pip install 'mlof[export]'")
    model = build_model(cfg.model, "cpu").eval()
    name = getattr(model, "mlof_spec", {}).get("name", type(model).__name__)
    size = (int(cfg.size[0]), int(cfg.size[1]))
    t0 = time.perf_counter()
    info = export_onnx(model, cfg.out, size=size, iters=int(cfg.iters), corr=cfg.corr, opset=int(cfg.opset),
                       batch=int(cfg.batch))
    info.update(network=name, export_seconds=time.perf_counter() - t0)
    say(f"export: {name} ({cfg.corr} correlation, {cfg.iters} iterations, {size[0]}x{size[1]}, batch "
        f"{cfg.batch}, opset {cfg.opset}) -> {info['path']} ({info['bytes'] / 2**20:.1f} MiB)")
    if cfg.check:
        info["check"] = check_onnx(model, info["path"], size, int(cfg.iters), cfg.corr, int(cfg.batch))
        c = info["check"]
        say(f"  onnxruntime vs torch: max |diff| flow {c['max_abs_diff_flow_px']:.2e} px, flow_low "
            f"{c['max_abs_diff_flow_low_px']:.2e} px ({c['pairs']} pairs)")
        if c["max_abs_diff_flow_px"] > cfg.tolerance or c["max_abs_diff_flow_low_px"] > cfg.tolerance:
            Path(info["path"]).unlink(missing_ok=True)
            raise ValueError(f"the exported graph differs from torch by {c['max_abs_diff_flow_px']:.3g} px "
                             f"(> tolerance {cfg.tolerance}); {info['path']} removed")
    return info


def main(cfg: DictConfig, progress: bool = True) -> int:
    """``mlof export``: export, check against torch, print the summary."""
    run_export(OmegaConf.to_object(cfg), say=say)
    return 0
