"""mlof's checkpoint format: contents, weights_only loading, atomic writes, rebuilding with mlof.load."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import backbones
import mlof
from mlof.checkpoint import CheckpointError, export_weights, load, load_checkpoint, save_checkpoint
from mlof.seeding import capture_rng, restore_rng


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(3)
    return backbones.build("raft_small")


def test_format_and_weights_only(tmp_path, small):
    path = save_checkpoint(tmp_path / "a.pt", small, step=7, recipe={"name": "x", "steps": [1, 2]},
                           metrics={"epe": 1.5})
    raw = torch.load(path, weights_only=True)          # the contract: plain weights_only loading works
    assert raw["format"] == "mlof" and raw["version"] == 1
    assert raw["backbone"] == {"name": "raft_small", "options": {}}
    assert raw["step"] == 7 and raw["recipe"]["steps"] == [1, 2] and raw["metrics"]["epe"] == 1.5
    sd = small.state_dict()
    assert set(raw["state_dict"]) == set(sd)
    assert all(torch.equal(raw["state_dict"][k], sd[k]) for k in sd)
    assert load_checkpoint(path)["step"] == 7


def test_training_state_is_weights_only_loadable(tmp_path):
    small = torch.nn.Conv2d(3, 4, 3)
    small.mlof_spec = {"name": "conv", "options": {"k": 3}}   # any module that says how it was built
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=110, pct_start=0.05,
                                                cycle_momentum=False, anneal_strategy="linear")
    sum(p.sum() for p in small.parameters()).backward()
    opt.step()
    sched.step()
    random.random(), np.random.rand(), torch.rand(1)
    rng = capture_rng()
    path = save_checkpoint(tmp_path / "t.pt", small, step=1, optimizer=opt.state_dict(),
                           scheduler=sched.state_dict(), rng=rng)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt = torch.load(path, weights_only=True)
    restore_rng(ckpt["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    opt2 = torch.optim.AdamW(small.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, 1e-3, total_steps=110)
    sched2.load_state_dict(ckpt["scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_mlof_load_rebuilds_the_network(tmp_path, small):
    path = save_checkpoint(tmp_path / "m.pt", small)
    model = mlof.load(path)
    assert type(model) is type(small) and not model.training
    assert model.mlof_spec == {"name": "raft_small", "options": {}}
    x1, x2 = torch.rand(1, 3, 64, 96) * 255, torch.rand(1, 3, 64, 96) * 255
    small.eval()
    with torch.no_grad():
        assert torch.equal(model(x1, x2, iters=2).flow, small(x1, x2, iters=2).flow)
    with pytest.raises(CheckpointError, match="holds a 'raft_small' network, not 'raft'"):
        load(path, backbone="raft")


def test_official_files_need_a_backbone_name(tmp_path, small):
    official = tmp_path / "raft-small.pth"
    torch.save({f"module.{k}": v for k, v in small.state_dict().items()}, official)   # DataParallel style
    with pytest.raises(CheckpointError, match=r"backbone=NAME"):
        mlof.load(official)
    with pytest.raises(CheckpointError, match="not an mlof checkpoint"):
        load_checkpoint(official)
    model = mlof.load(official, backbone="raft_small")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in small.state_dict().items())


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        mlof.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        mlof.load(tmp_path / "missing.pt")


def test_write_is_atomic(tmp_path, small, monkeypatch):
    path = save_checkpoint(tmp_path / "latest.pt", small, step=1)
    before = path.read_bytes()

    def broken_save(obj, f):          # dies half-way through writing, like a kill during torch.save
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before                 # the previous complete file is intact
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]   # no temporary left behind


def test_reserved_keys_and_models_without_spec(tmp_path, small):
    with pytest.raises(ValueError, match="state_dict"):
        save_checkpoint(tmp_path / "x.pt", small, state_dict={})
    with pytest.raises(CheckpointError, match="mlof_spec"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_export_drops_resume_state(tmp_path, small):
    opt = torch.optim.AdamW(small.parameters(), lr=1e-3)
    full = save_checkpoint(tmp_path / "full.pt", small, step=5, optimizer=opt.state_dict(), rng=capture_rng(),
                           recipe={"name": "x"}, metrics={"epe": 2.0})
    out = export_weights(full, tmp_path / "weights.pt", metrics={"epe": 1.0})
    ckpt = torch.load(out, weights_only=True)
    assert set(ckpt) == {"format", "version", "backbone", "state_dict", "step", "recipe", "metrics"}
    assert ckpt["metrics"] == {"epe": 1.0} and ckpt["step"] == 5
    assert mlof.load(out).mlof_spec["name"] == "raft_small"


def test_export_can_replace_the_build_options(tmp_path):
    import backbones

    net = backbones.build("raft_small", precision="bf16", channels_last=True)
    full = save_checkpoint(tmp_path / "full.pt", net, step=1)
    assert torch.load(full, weights_only=True)["backbone"]["options"] == {"precision": "bf16", "channels_last": True}
    out = export_weights(full, tmp_path / "fp32.pt", options={})
    assert torch.load(out, weights_only=True)["backbone"]["options"] == {}
    assert mlof.load(out).precision == "fp32"
