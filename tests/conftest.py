"""Shared fixtures: where the shared sample data and the official reference outputs live.

Tests that need them skip with a clear reason when they are absent (an installed user's machine has no
../shared). MLOF_SHARED overrides the location.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("MLOF_SHARED")
    return Path(env) if env else REPO.parent / "shared"


SHARED = _shared_dir()
FLOW_SAMPLES = SHARED / "data" / "flow-samples"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def flow_samples() -> Path:
    """Root of the real samples (sintel/, kitti2015/, middlebury/, flyingchairs/ in official layouts)."""
    if not FLOW_SAMPLES.is_dir():
        pytest.skip(f"shared flow samples not found at {FLOW_SAMPLES} (set MLOF_SHARED to the shared/ folder)")
    return FLOW_SAMPLES


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Root of the official-output reference data (one folder per backbone, plus rule_weights.py)."""
    if not (REFERENCE / "rule_weights.py").is_file():
        pytest.skip(f"official reference data not found at {REFERENCE} (set MLOF_SHARED to the shared/ folder)")
    return REFERENCE


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread: the test tensors are small, and on a loaded machine thread hand-offs cost far more
    than the arithmetic (measured: 30 ms vs 4 ms per meta-loss of a test MLP; 12 s vs 0.5 s for a 2-step
    raft_small adaptation at 64x96)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    """One intra-op thread for one test (``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    with _one_thread():
        yield


@pytest.fixture(scope="module")
def single_thread_module():
    """One intra-op thread for a whole module, module-scoped fixtures included."""
    with _one_thread():
        yield


@pytest.fixture(autouse=True)
def _seed():
    import torch
    torch.manual_seed(0)
    yield
