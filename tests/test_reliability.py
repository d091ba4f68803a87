"""Reliability: no silent mistakes, no lost work, hostile input handled (docs/reliability.md).

Fast cases run by default; the kill -9 campaigns (subprocesses killed at random moments) are ``slow``.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import backbones
import mlof
from backbones.base import _WARNED
from mlof.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
from mlof.cli import main
from mlof.runs.rundir import RunDir, RunDirError
from tests._tiny_data import tiny_sintel

REPO = Path(__file__).resolve().parents[1]
# a tiny pretraining run on the synthetic generator: raft_small, 1 iteration, 64 x 64
PRETRAIN = ["pretrain", "--quiet", "batch_size=2", "iters=1", "device=cpu", "log.images_every=0", "log.every=1",
            "log.latest_every=1", "data.options={domain: source, size: [64, 64], length: 4}"]
INFER = ["infer", "--quiet", "iters=1", "max_pairs=1", "device=cpu"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return tiny_sintel(tmp_path_factory)


@pytest.fixture()
def fresh_warnings():
    _WARNED.clear()
    yield
    _WARNED.clear()


def _tiny_model():
    torch.manual_seed(0)
    return backbones.build("raft_small")


# ------------------------------------------------------------------------------------ 2. loud about mistakes
@pytest.mark.parametrize("override, needle", [
    ("options.lr=abc", "lr must be a number, got 'abc'"),
    ("options.guard=maybe", "guard must be true or false"),
    ("options.steps=-1", "steps must be an int >= 0"),
    ("options.optimizer=rmsprop", "optimizer must be one of"),
    ("iters=abc", "iters"),
    ("online=perhaps", "online"),
])
def test_bad_values_are_one_line_exit_2_and_leave_no_folder(tmp_path, capsys, override, needle):
    rc = main(["adapt", "--quiet", f"out_dir={tmp_path}", "name=bad", "pairs=[1]", "iters=1", override])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err
    assert err.count("\n") == 1 and err.startswith("mlof adapt: error:")
    assert not (tmp_path / "bad").exists()          # nothing written before the configuration validates


def test_text_file_as_checkpoint_is_a_clear_error(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes\n")
    assert main([*INFER, f"out_dir={tmp_path}", "name=t", f"model.checkpoint={text}"]) == 2
    err = capsys.readouterr().err
    assert "not a torch checkpoint" in err and "these are my notes" in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        mlof.load(text, backbone="raft_small")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        backbones.build("raft_small", checkpoint=text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        backbones.build("raft_small", checkpoint=empty)


def test_existing_run_folder_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    args = [*INFER, f"out_dir={tmp_path}", "name=r"]
    assert main(args) == 0
    flows = sorted((tmp_path / "r" / "flows").iterdir())
    assert flows
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err
    stale = tmp_path / "r" / "flows" / "old_pair.flo"
    stale.write_bytes(b"x")
    assert main(args + ["overwrite=true"]) == 0
    assert not stale.exists() and (tmp_path / "r" / "config.yaml").is_file()   # started over: no mixing
    assert main(args + ["--resume"]) == 0
    assert not (tmp_path / "r" / ".lock").exists()                             # released at the end
    # overwrite empties only run folders
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert main([*INFER, f"out_dir={tmp_path}", "name=mine", "--overwrite"]) == 2
    assert "not an mlof run folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_flags_may_come_between_overrides_and_win_over_them(tmp_path, capsys):
    assert main(["infer", f"out_dir={tmp_path}", "name=f", "-q", "iters=1", "max_pairs=1", "device=cpu"]) == 0
    # a script's default overwrite=true yields to an explicit --resume (the folder is kept, not emptied)
    marker = tmp_path / "f" / "flows" / "keep.txt"
    marker.write_text("x")
    assert main([*INFER, f"out_dir={tmp_path}", "name=f", "overwrite=true", "--resume"]) == 0
    assert marker.exists()
    assert main([*INFER, f"out_dir={tmp_path}", "name=f", "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_random_weights_warn_once(tmp_path, fresh_warnings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*INFER, f"out_dir={tmp_path}", "name=a", "model.checkpoint=null", "model.name=raft_small"]) == 0
        assert main([*INFER, f"out_dir={tmp_path}", "name=b", "model.checkpoint=null", "model.name=raft_small"]) == 0
    assert sum("RANDOM weights" in str(w.message) for w in caught) == 1


def test_checkpoint_trained_with_another_padding_warns(tmp_path, fresh_warnings):
    path = save_checkpoint(tmp_path / "k.pt", backbones.build("raft_small", padding="kitti"), image_range=[0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*INFER, f"out_dir={tmp_path}", "name=p", f"model.checkpoint={path}",
                     "model.options={padding: sintel}"]) == 0
    text = " ".join(str(w.message) for w in caught)
    assert "trained with padding='kitti'" in text and "trained on images in [0, 1]" in text


# --------------------------------------------------------------------------------------------------- 4. faults
def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model = _tiny_model()
    path = save_checkpoint(tmp_path / "latest.pt", model, step=1)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):          # half a file, then the disk is full
        f.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mlof.checkpoint.torch.save", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*previous latest.pt is intact"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]       # no half-written temporary left


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_resumable(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def fills_up(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                          # step-0 and step-1 checkpoints fit, the step-2 one not
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr("mlof.checkpoint.torch.save", fills_up)
    assert main([*PRETRAIN, f"out_dir={tmp_path}", "name=full", "steps=2"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1
    monkeypatch.undo()
    latest = tmp_path / "full" / "checkpoints" / "latest.pt"
    assert load_checkpoint(latest)["step"] == 1
    assert not (tmp_path / "full" / ".lock").exists()
    assert main([*PRETRAIN, f"out_dir={tmp_path}", "name=full", "steps=2", "--resume"]) == 0
    assert load_checkpoint(latest)["step"] == 2


def _other_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    run = RunDir(tmp_path, "x")
    run.write_json("a.json", {})
    lock = json.loads((tmp_path / "x" / ".lock").read_text())
    assert lock["pid"] == os.getpid()
    run.close()
    assert not (tmp_path / "x" / ".lock").exists()

    other = _other_process()       # a live process holds the folder
    try:
        (tmp_path / "x" / ".lock").write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        with pytest.raises(RunDirError, match=f"in use by process {other.pid}"):
            RunDir(tmp_path, "x", resume=True)
        assert main([*PRETRAIN, f"out_dir={tmp_path}", "name=x", "steps=1", "--resume"]) == 2
        assert f"in use by process {other.pid}" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    # its process is gone (kill -9): the lock is stale and is taken over
    run = RunDir(tmp_path, "x", resume=True)
    run.write_json("b.json", {})
    assert json.loads((tmp_path / "x" / ".lock").read_text())["pid"] == os.getpid()
    run.close()


def test_lock_is_taken_at_open_by_the_first_of_two_writers(tmp_path):
    first, second = RunDir(tmp_path, "y"), RunDir(tmp_path, "y")      # both checked an empty folder
    first.open()
    other = _other_process()
    try:   # the second writer runs in another process: simulate by rewriting the lock with a live foreign pid
        info = json.loads(first.lock.read_text())
        first.lock.write_text(json.dumps({**info, "pid": other.pid, "start": None}))
        with pytest.raises(RunDirError, match="in use by process"):
            second.open()
    finally:
        other.kill()
        other.wait()


# -------------------------------------------------------------------------------------------- 5. hostile files
class _Payload:
    """Unpickling this creates ``marker`` (what a malicious checkpoint could do with os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_pickles_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _tiny_model().state_dict(), "hook": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickles Python objects or code"):
        backbones.build("raft_small", checkpoint=evil)
    with pytest.raises(CheckpointError, match="pickles Python objects or code"):
        mlof.load(evil, backbone="raft_small")
    assert main([*INFER, f"out_dir={tmp_path}", "name=e", f"model.checkpoint={evil}", "model.name=raft_small"]) == 2
    assert "pickles Python objects or code" in capsys.readouterr().err
    assert not marker.exists()                       # the payload never ran


def test_nan_weights_and_wrong_shapes_are_refused(tmp_path):
    sd = _tiny_model().state_dict()
    key = "update_block.flow_head.conv1.weight"
    nan = {**sd, key: torch.full_like(sd[key], float("nan"))}
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match=f"NaN or inf values \\({key}\\)"):
        backbones.build("raft_small", checkpoint=tmp_path / "nan.pth")
    save_checkpoint(tmp_path / "nan_mlof.pt", backbones.build("raft_small"))
    ck = torch.load(tmp_path / "nan_mlof.pt", weights_only=True)
    ck["state_dict"][key] = torch.full_like(ck["state_dict"][key], float("inf"))
    torch.save(ck, tmp_path / "nan_mlof.pt")
    with pytest.raises(CheckpointError, match="nan_mlof.pt: weights contain NaN"):
        mlof.load(tmp_path / "nan_mlof.pt")
    bad = {**sd, key: sd[key][:1]}
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=f"mis-shaped keys \\(1\\): {key}"):
        backbones.build("raft_small", checkpoint=tmp_path / "shape.pth")


@pytest.mark.parametrize("change, needle", [
    ({"version": "one"}, "version 'one' is not a version number"),
    ({"version": -3}, "is not a version number"),
    ({"version": 99}, "newer than this mlof reads"),
    ({"backbone": {"name": "skynet", "options": {}}}, "'skynet' is not a known network"),
    ({"backbone": "raft_small"}, "'backbone' must be"),
    ({"backbone": {"name": "raft_small", "options": [1, 2]}}, "options must be a dict"),
    ({"step": -5}, "'step' must be an int >= 0"),
    ({"state_dict": {}}, "non-empty dict of tensors"),
])
def test_absurd_metadata_is_a_clear_error(tmp_path, change, needle):
    path = save_checkpoint(tmp_path / "c.pt", _tiny_model(), step=3)
    ck = torch.load(path, weights_only=True)
    ck.update(change)
    torch.save(ck, path)
    for load in (load_checkpoint, mlof.load):
        with pytest.raises(CheckpointError, match=needle):
            load(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _tiny_model())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        mlof.load(path)


# ------------------------------------------------------------------------------------ 5. hostile frames/options
def test_frames_with_nan_or_inf_are_rejected():
    model = _tiny_model().eval()
    frames = torch.rand(3, 3, 16, 16) * 255
    frames[2, 1, 4, 4] = float("nan")
    for mode in ("pairwise", "joint", "online"):
        with pytest.raises(ValueError, match="NaN or inf"):
            mlof.adapt(model, frames, mode=mode, steps=1, iters=1)
    frames[2, 1, 4, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        model(frames[:1], frames[2:], iters=1)


def _extreme(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 24, 40)
    return {"constant": lambda: torch.full(shape, 128.0), "black": lambda: torch.zeros(shape),
            "saturated": lambda: torch.full(shape, 255.0),
            "binary": lambda: (torch.rand(shape, generator=g) > 0.5).float() * 255,
            "noise": lambda: torch.rand(shape, generator=g) * 255}[kind]()


@pytest.fixture(scope="module")
def default_model():
    return mlof.load("default")


def test_extreme_images_with_a_huge_lr_give_finite_flows(default_model):
    for kind in ("constant", "saturated", "noise"):
        res = mlof.adapt(default_model, _extreme(kind), steps=1, lr=1e6, iters=1)
        assert torch.isfinite(res.flow).all(), kind
        assert res.history[-1]["guard"].startswith("rollback"), kind     # the guard caught the blow-up


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["constant", "black", "saturated", "binary", "noise"])
def test_extreme_images_and_options_give_finite_flows(default_model, kind):
    frames = _extreme(kind)
    for options in ({"steps": 2, "lr": 1e6}, {"steps": 2, "lr": 1e6, "optimizer": "sgd"}, {"steps": 0},
                    {"steps": 1, "iters": 1}):
        res = mlof.adapt(default_model, frames, **{"iters": 2, **options})
        assert torch.isfinite(res.flow).all(), options
    for mode in ("online", "joint"):
        out = mlof.adapt(default_model, torch.cat([frames, frames]), mode=mode, steps=1, lr=1e6, iters=1)
        assert all(torch.isfinite(f).all() for f in out.flows), mode


def test_a_diverging_training_stops_with_a_clear_error_before_backward(tmp_path, capsys):
    rc = main([*PRETRAIN, f"out_dir={tmp_path}", "name=lr", "steps=4", "optim.lr=1e6", "optim.clip=0",
               "optim.schedule=constant"])
    err = capsys.readouterr().err
    if rc == 0:      # the weights may stay finite for 4 steps: then the flow must be finite too
        ck = load_checkpoint(tmp_path / "lr" / "checkpoints" / "latest.pt")
        assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    else:
        assert rc == 2 and "diverged" in err and err.count("\n") == 1
        ck = load_checkpoint(tmp_path / "lr" / "checkpoints" / "latest.pt")   # the last finite weights
        assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_a_diverging_meta_training_stops_with_a_clear_error(tmp_path, capsys):
    rc = main(["meta-train", "--quiet", f"out_dir={tmp_path}", "name=m", "model.checkpoint=default", "steps=2",
               "tasks_per_step=1", "meta.inner_steps=1", "meta.iters=1", "meta.inner_lr=1e6", "device=cpu",
               "log.images_every=0", "data.options={domain: target, size: [32, 32], length: 2}"])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN or inf: the run diverged" in err and err.count("\n") == 1


def test_require_finite_names_what_diverged():
    from mlof.meta.guard import NonFiniteError, require_finite

    require_finite("x", torch.ones(3))
    with pytest.raises(NonFiniteError, match="outer loss is NaN or inf"):
        require_finite("outer loss", torch.tensor(float("nan")))


# ------------------------------------------------------------------------------------------ 4. kill -9 (slow)
def _kill_campaign(tmp_path: Path, argv: list[str], name: str, kills: int, seed: int) -> Path:
    """Start ``mlof argv`` ``kills`` times, kill -9 each at a random moment, then let it finish with --resume;
    after every kill the latest checkpoint must load. Returns the final latest.pt."""
    import random
    import signal
    import time

    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    latest = tmp_path / name / "checkpoints" / "latest.pt"
    cmd = [sys.executable, "-m", "mlof.cli", *argv, f"out_dir={tmp_path}", f"name={name}"]
    killed_mid_run = 0
    for k in range(kills):
        resume = ["--resume"] if latest.is_file() else []
        proc = subprocess.Popen(cmd + resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait for the first checkpoint of this attempt, then kill at a random moment of the next steps
        start = load_checkpoint(latest)["step"] if latest.is_file() else -1
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if latest.is_file():
                try:
                    if load_checkpoint(latest)["step"] > start:
                        break
                except CheckpointError:     # only a reader racing the rename could see this: it must not
                    raise
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_run += 1
        proc.wait()
        assert load_checkpoint(latest)["step"] >= 0          # loadable whatever the moment
    assert killed_mid_run >= 1, "every attempt finished before its kill: the campaign tested nothing"
    rc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-2000:]
    return latest


def _same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.mark.slow
def test_kill_9_at_random_points_of_pretrain_resumes_bit_identically(tmp_path):
    argv = [*PRETRAIN, "steps=8"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mlof.cli", *argv, f"out_dir={tmp_path}", "name=straight"], env=env,
                   check=True, capture_output=True, timeout=600)
    ref = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    got = load_checkpoint(_kill_campaign(tmp_path, argv, "killed", kills=3, seed=1))
    assert got["step"] == ref["step"] == 8
    assert _same_tensors(got["state_dict"], ref["state_dict"])
    assert _same_tensors(got["optimizer"], ref["optimizer"])


@pytest.mark.slow
def test_kill_9_at_random_points_of_meta_train_resumes_bit_identically(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = ["meta-train", "--quiet", "model.checkpoint=default", "steps=6", "tasks_per_step=1", "meta.inner_steps=1",
            "meta.iters=1", "device=cpu", "log.images_every=0", "log.every=1", "log.latest_every=1",
            "data.options={domain: target, size: [64, 64], length: 4}"]
    subprocess.run([sys.executable, "-m", "mlof.cli", *argv, f"out_dir={tmp_path}", "name=straight"], env=env,
                   check=True, capture_output=True, timeout=600)
    ref = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    got = load_checkpoint(_kill_campaign(tmp_path, argv, "killed", kills=3, seed=2))
    assert got["step"] == ref["step"] == 6
    assert _same_tensors(got["state_dict"], ref["state_dict"])
    assert _same_tensors(got["optimizer"], ref["optimizer"])
