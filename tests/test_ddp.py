"""torchrun with 2 processes (gloo, CPU) gives the result of 1 process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlof.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _launch(args: list[str], tmp_path: Path, nproc: int) -> subprocess.CompletedProcess:
    # Both runs with one thread per process: the thread count changes CPU kernels' summation order, which
    # alone moves the feature encoder's gradients by percents (instance norm cancels most of them).
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launcher, "-m", "mlof.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def _compare(a: dict, b: dict, atol: float) -> float:
    worst = 0.0
    for k, v in a.items():
        worst = max(worst, float((v.double() - b[k].double()).abs().max()))
    assert worst <= atol, f"largest weight difference {worst:g} > {atol:g}"
    return worst


def _check(kind: str, common: list[str], tmp_path: Path, atol: float, start: dict) -> None:
    for name, nproc in (("two", 2), ("one", 1)):
        r = _launch([kind, "--quiet", f"out_dir={tmp_path}", f"name={name}", *common], tmp_path, nproc)
        assert r.returncode == 0, r.stderr[-3000:]
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.pt")
    assert two["step"] == one["step"] > 0
    _compare(two["state_dict"], one["state_dict"], atol)
    moved = max(float((one["state_dict"][k] - v).abs().max()) for k, v in start.items())
    assert moved > 100 * atol, f"the run hardly moved the weights ({moved:g}): the comparison would be vacuous"
    # the logged global-batch loss agrees too, and only rank 0 wrote a run folder
    assert abs(two["metrics"]["loss"] - one["metrics"]["loss"]) < 1e-4 * max(1.0, abs(one["metrics"]["loss"]))
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1


def _initial_weights(seed: int = 0) -> dict:
    import backbones
    from mlof.seeding import seed_everything

    seed_everything(seed)            # what the runner does before building the network
    return backbones.build("raft_small").state_dict()


@pytest.mark.slow
def test_pretrain_two_processes_equal_one(tmp_path):
    # Global batch 3 over 2 ranks (2 + 1): uneven shards must still give the global-batch mean. Adam's
    # sign-like first steps turn float-noise in near-zero gradients into full-lr differences, so a large eps
    # makes the update proportional to the gradient: then equal weights mean equal gradients.
    common = ["steps=2", "batch_size=3", "iters=2", "device=cpu", "log.images_every=0", "log.every=1",
              "data.options={domain: source, size: [64, 64], length: 6}", "optim.lr=1e-3", "optim.eps=1e-2",
              "optim.schedule=constant"]
    _check("pretrain", common, tmp_path, atol=1e-6, start=_initial_weights())


@pytest.mark.slow
def test_meta_train_two_processes_equal_one(tmp_path):
    from mlof.checkpoint import save_checkpoint

    start = _initial_weights(1)
    import backbones
    model = backbones.build("raft_small")
    model.load_state_dict(start)
    init = save_checkpoint(tmp_path / "theta0.pt", model)
    common = [f"model.checkpoint={init}", "steps=1", "tasks_per_step=2", "meta.inner_steps=1", "meta.iters=2",
              "device=cpu", "log.images_every=0", "log.every=1", "meta.outer_lr=1e-3",
              "meta.options={optimizer: sgd}", "data.options={domain: target, size: [64, 64], length: 4}"]
    _check("meta-train", common, tmp_path, atol=1e-6, start=start)
