"""Seeding and RNG-state capture in a form that ``torch.load(weights_only=True)`` reads back.

Runs are reproducible by construction: every step reseeds the global generators from
``(seed, step)`` (``seed_step``), and the data pipeline seeds every sample from ``(seed, step, k)``,
so a resumed run draws exactly the numbers an uninterrupted one draws. The captured states are stored
in checkpoints as well, for code that draws outside those points.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "seed_everything", "seed_step", "capture_rng", "restore_rng"]

_MASK64 = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64), stable across runs, processes and machines."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK64


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)  # also seeds all CUDA devices


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Reseed the global generators for optimizer step ``step`` (0-based) of a run seeded ``seed``."""
    seed_everything(derive_seed(seed, step, rank, 0x5EED))


def capture_rng() -> dict[str, Any]:
    """The states of python's, numpy's and torch's generators, as tensors and plain numbers."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": None if gauss is None else float(gauss)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``; ``ValueError`` if the dict is not such a state."""
    try:
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        npst = state["numpy"]
        np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                             npst["has_gauss"], npst["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not an RNG state captured by capture_rng: {e}") from e
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
