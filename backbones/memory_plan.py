"""Memory plans for the RAFT family: which memory savers a call uses so that it fits a byte budget.

A plan picks, for one call (input size, batch, whether a backward pass follows):

- ``corr``: the dense all-pairs pyramid (official, fastest at small sizes) or the on-demand lookup;
- ``checkpoint_iterations``: recompute each refinement iteration during backward instead of storing it;
- ``checkpoint_encoder``: recompute each encoder block during backward (BatchNorm statistics are updated once,
  whatever the batch-norm mode);
- ``attention_chunk``: GMA's global attention computed in chunks of query rows, recomputed instead of stored
  (the full matrix is N x heads x (HW/64)^2 floats: 4.2 GB for one 1080x1920 frame);
- ``checkpoint_attention``: KPA-Flow's patch attentions (the feature windows of ``trans`` per image, the
  update block's attention weights per direction) recomputed during backward instead of storing their logits,
  kernels and windows (about 1.1 GB per image and per direction at 1080x1920).

Every saver changes only where intermediate values live, never the arithmetic of a value: flows and gradients
equal the plain path's up to float rounding (tests/test_memory_plan.py). Savers are enabled in the order of
their cost in extra compute per byte saved (correlation, iterations, attention, encoder) until the estimate
fits. The estimates are per-pixel constants calibrated on CPU float32 runs (docs/performance.md); they are
deliberately pessimistic.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

__all__ = ["MemoryPlan", "plan_memory", "default_memory_budget", "parse_bytes", "estimate_bytes",
           "DEFAULT_BUDGET_SHARE"]

log = logging.getLogger("mlof.memory")

# Share of the currently available memory a plan may use by default (the rest: caller, loss, allocator slack).
DEFAULT_BUDGET_SHARE = 0.5

# Calibrated bytes per input pixel (float32, one image), see docs/performance.md:
_ENCODER_GRAD = {"basic": 1900.0, "small": 700.0}   # activations a BasicEncoder/SmallEncoder pass keeps for backward
_ENCODER_CKPT = {"basic": 260.0, "small": 120.0}   # with block checkpointing: block inputs + one block's recompute
_ENCODER_NOGRAD = {"basic": 200.0, "small": 80.0}  # transient peak of a pass without autograd
# Bytes per 1/8-resolution pixel of one refinement iteration kept for backward (lookup, motion encoder, GRU,
# heads); GMA and KPA add their aggregation.
_ITERATION = {"raft": 18000.0, "raft_small": 6000.0, "gma": 24000.0, "kpaflow": 26000.0, "memflow": 24000.0}
_PATCH_STORED = 36000.0    # KPA-Flow, bytes per 1/8 pixel of one patch-attention pass kept for backward
_PATCH_WEIGHTS = 13000.0   # KPA-Flow, bytes per 1/8 pixel of the update block's attention weights (sc 19)
_FULL_RES_OUTPUT = 300.0   # bytes per input pixel per direction: upsampled flows, the loss's full-res terms


def parse_bytes(value: int | float | str, name: str = "memory_budget") -> int:
    """``8e9``, ``"8GB"``, ``"8 GiB"``, ``"512MB"`` -> bytes (GB/MB are powers of 1024, as memory is sold)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of bytes or a size like '8GB', got {value!r}")
    if isinstance(value, (int, float)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(value).lower())
    if not m:
        raise ValueError(f"{name} must be a number of bytes or a size like '8GB', got {value!r}")
    scale = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}[m.group(2)]
    out = int(float(m.group(1)) * scale)
    if out <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return out


def proc_kib_field(path: str, field: str) -> int | None:
    """A ``Field:   N kB`` line of a Linux /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes, or
    None where the file or the field does not exist (other platforms)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = proc_kib_field("/proc/meminfo", "MemAvailable")
    return available if available is not None else 8 * 1024 ** 3  # unknown platform: assume a small machine


def default_memory_budget(device: torch.device | str = "cpu", share: float = DEFAULT_BUDGET_SHARE) -> int:
    """``share`` of the memory available now on ``device`` (CPU: ``MemAvailable``; CUDA: free memory)."""
    return int(share * _available_bytes(torch.device(device)))


@dataclass(frozen=True)
class MemoryPlan:
    """The memory savers of one call and the estimated peak bytes with them (see the module docstring)."""

    corr: str = "dense"
    checkpoint_iterations: bool = False
    checkpoint_encoder: bool = False
    attention_chunk: int = 0          # GMA: query rows per chunk of the attention (0: the whole matrix)
    checkpoint_attention: bool = False  # KPA-Flow: patch attentions recomputed in backward
    estimated_bytes: int = 0
    budget: int = 0

    def describe(self) -> str:
        parts = [f"corr={self.corr}"]
        parts.append("checkpoint iterations" if self.checkpoint_iterations else "store iterations")
        parts.append("checkpoint encoder" if self.checkpoint_encoder else "store encoder")
        if self.attention_chunk:
            parts.append(f"attention in chunks of {self.attention_chunk} rows")
        if self.checkpoint_attention:
            parts.append("checkpoint patch attention")
        return (f"{', '.join(parts)} (estimated peak {self.estimated_bytes / 2 ** 30:.2f} GiB, "
                f"budget {self.budget / 2 ** 30:.2f} GiB)")


@dataclass(frozen=True)
class CallShape:
    """What a plan is made for: padded image size, images per encoder call, grad or not."""

    family: str          # _ITERATION key
    encoder: str         # "basic" | "small"
    height: int          # padded input size (multiple of 8)
    width: int
    batch: int           # flow estimates in the call (2N for both directions)
    images: int          # distinct images through the feature encoder
    iters: int
    grad: bool
    attention: bool      # GMA global attention
    heads: int = 1
    patch_attention: bool = False   # KPA-Flow patch attentions


def estimate_bytes(shape: CallShape, plan: MemoryPlan, dense_corr_bytes: int) -> int:
    """Estimated peak bytes of a call under ``plan`` (float32; see the constants above)."""
    px = shape.height * shape.width
    low = px // 64
    # encoders: features on every distinct image, context on every direction's first image
    passes = shape.images + shape.batch
    if shape.grad:
        per_pass = (_ENCODER_CKPT if plan.checkpoint_encoder else _ENCODER_GRAD)[shape.encoder]
    else:
        per_pass = _ENCODER_NOGRAD[shape.encoder]
    total = per_pass * px * (passes if shape.grad else 2)
    if plan.corr == "dense":
        total += dense_corr_bytes * (2 if shape.grad else 1)      # the pyramid and its gradient
    else:
        total += 2 * 4 * 256 * low * shape.batch * (2 if shape.grad else 1)   # pooled tables and tiles
    iteration = _ITERATION[shape.family] * low * shape.batch
    if shape.grad and not plan.checkpoint_iterations:
        total += iteration * shape.iters
    else:
        total += iteration * (2 if shape.grad else 0.3)          # one live iteration (and its recompute)
    if shape.attention:
        full = 4 * shape.heads * low * low * shape.batch
        if plan.attention_chunk:
            total += 3 * 4 * shape.heads * plan.attention_chunk * (shape.width // 8) * low
        else:
            total += full * (3 if shape.grad else 1)              # matrix, softmax input, its gradient
    if shape.patch_attention:
        # per 1/8 pixel: windows, logits, kernel product and softmax kept for backward (~35 KB per image and
        # per direction); the update block's weights (13 KB per direction) live through the iterations
        weights = _PATCH_WEIGHTS * low * shape.batch
        if shape.grad and not plan.checkpoint_attention:
            total += _PATCH_STORED * low * (shape.images + shape.batch) + weights
        else:
            total += _PATCH_STORED * low * (2 if shape.grad else 1) + weights   # one recomputation at a time
    total += _FULL_RES_OUTPUT * px * shape.batch * (3 if shape.grad else 1)
    return int(total)


def _attention_rows(shape: CallShape, chunk_bytes: int = 64 * 1024 ** 2) -> int:
    """Query rows per attention chunk so that one chunk's logits take about ``chunk_bytes``."""
    low_w, low = shape.width // 8, shape.height * shape.width // 64
    return max(1, min(shape.height // 8, chunk_bytes // max(1, 4 * shape.heads * low_w * low)))


def plan_memory(shape: CallShape, budget: int, dense_corr_bytes: int, corr: str = "auto",
                dense_limit: int | None = None) -> MemoryPlan:
    """The cheapest plan (in recomputation) whose estimate fits ``budget`` bytes; the most frugal one when none
    fits. ``corr``: "auto" lets the plan choose, "dense"/"ondemand" are kept as given. ``dense_limit``: with
    "auto", the largest dense pyramid (bytes) the plan may start from -- above it the on-demand lookup is no
    slower (measured: 25 s vs 37 s for 1080p RAFT inference) and the dense pyramid only costs memory."""
    dense = corr == "dense" or (corr == "auto" and (dense_limit is None or dense_corr_bytes <= dense_limit))
    plan = MemoryPlan(corr="dense" if dense else "ondemand", budget=int(budget))
    steps = []
    if dense and corr == "auto":
        steps.append(lambda p: replace(p, corr="ondemand"))
    if shape.grad:
        steps.append(lambda p: replace(p, checkpoint_iterations=True))
    if shape.attention:
        steps.append(lambda p: replace(p, attention_chunk=_attention_rows(shape)))
    if shape.patch_attention and shape.grad:
        steps.append(lambda p: replace(p, checkpoint_attention=True))
    if shape.grad:
        steps.append(lambda p: replace(p, checkpoint_encoder=True))
    est = estimate_bytes(shape, plan, dense_corr_bytes)
    for step in steps:
        if est <= budget:
            break
        plan = step(plan)
        est = estimate_bytes(shape, plan, dense_corr_bytes)
    return replace(plan, estimated_bytes=est)
