"""An interrupted run continued with --resume ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import pytest
import torch

from mlof.checkpoint import load_checkpoint
from mlof.cli import main
from mlof.commands.pretrain import PretrainJob

from tests._tiny_data import sintel_args, tiny_sintel

TINY = ["steps=4", "batch_size=2", "iters=1", "data.augment=raft-chairs", "log.every=1", "log.latest_every=1",
        "log.images_every=0", "device=cpu"]


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    # random crops through the augmentor: resume must reproduce the augmentation too
    return sintel_args(tiny_sintel(tmp_path_factory)) + ["data.options.crop=[64,64]"]


def _run(tmp_path, data_args, name, *extra):
    return main(["pretrain", "--quiet", f"out_dir={tmp_path}", f"name={name}", *TINY, *data_args, *extra])


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not _same(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif isinstance(x, list):
            if len(x) != len(y) or not all(_same({0: u}, {0: v}) for u, v in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


def test_resume_is_bit_identical(tmp_path, data_args, monkeypatch):
    assert _run(tmp_path, data_args, "straight") == 0
    ref = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    assert ref["step"] == 4

    real_step = PretrainJob.train_step

    def crashing_step(self, step, batch, want_images):   # the process dies before step 2 completes
        if step == 2:
            raise KeyboardInterrupt
        return real_step(self, step, batch, want_images)

    monkeypatch.setattr(PretrainJob, "train_step", crashing_step)
    assert _run(tmp_path, data_args, "broken") == 130
    monkeypatch.undo()
    mid = load_checkpoint(tmp_path / "broken" / "checkpoints" / "latest.pt")
    assert mid["step"] == 2

    assert _run(tmp_path, data_args, "broken", "--resume") == 0
    got = load_checkpoint(tmp_path / "broken" / "checkpoints" / "latest.pt")
    assert got["step"] == 4
    assert _same(got["state_dict"], ref["state_dict"])            # weights: bit for bit
    assert _same(got["optimizer"], ref["optimizer"])              # Adam moments too
    assert got["scheduler"]["last_epoch"] == ref["scheduler"]["last_epoch"]
    # and the run really moved: the weights differ from the step-2 ones
    assert not _same(got["state_dict"], mid["state_dict"])


def test_resume_guards(tmp_path, data_args, capsys):
    assert _run(tmp_path, data_args, "nothing", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert _run(tmp_path, data_args, "once", "steps=1") == 0
    assert _run(tmp_path, data_args, "once", "steps=1") == 2                  # no silent overwrite
    assert "--resume" in capsys.readouterr().err
    assert _run(tmp_path, data_args, "once", "steps=1", "optim.lr=0.1", "--resume") == 2
    assert "optim.lr" in capsys.readouterr().err                   # another recipe cannot resume
    assert _run(tmp_path, data_args, "once", "steps=1", "--overwrite") == 0


@pytest.mark.slow
def test_kill_9_leaves_a_loadable_checkpoint(tmp_path, data_args):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "mlof.cli", "pretrain", "--quiet", f"out_dir={tmp_path}", "name=k", *TINY,
           *data_args, "steps=3"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "k" / "checkpoints" / "latest.pt"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:       # kill while it writes step checkpoints
            if latest.is_file() and load_checkpoint(latest)["step"] >= 1:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    ckpt = load_checkpoint(latest)                                  # complete, whatever the moment
    assert 0 <= ckpt["step"] <= 3
    assert _run(tmp_path, data_args, "k", "steps=3", "--resume") == 0
    assert load_checkpoint(latest)["step"] == 3
