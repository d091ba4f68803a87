"""The one checkpoint reader (backbones.checkpoint): every layout through mlof.load and backbones.build, each file
read once, strict errors naming keys, and the shipped default checkpoint."""
from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
import mlof
from backbones.checkpoint import CheckpointMismatchError, read_checkpoint
from mlof.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint


@pytest.fixture(scope="module")
def small_sd():
    torch.manual_seed(0)
    model = backbones.build("raft_small")
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def _same_weights(model, sd):
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def _count_loads(monkeypatch):
    calls = []
    real = torch.load

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("f"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_mmflow_meta_with_numpy_scalars_loads_through_mlof_load_and_build(tmp_path, small_sd):
    path = tmp_path / "mmflow.pth"
    meta = {"epoch": np.int64(3), "iter": np.int32(7), "lr": np.float64(1e-4), "loss": np.float32(0.5),
            "half": np.float16(1.0), "flag": np.bool_(True), "shape": np.array([1, 2]), "best": [np.float64(2.0)],
            "mmflow_version": "0.5.2", "hook_msgs": {"last_ckpt": "x.pth"}}
    torch.save({"meta": meta, "state_dict": small_sd, "optimizer": {}}, path)
    assert _same_weights(backbones.build("raft_small", checkpoint=path), small_sd)
    assert _same_weights(mlof.load(path, backbone="raft_small"), small_sd)


@pytest.mark.parametrize("layout", ["plain", "module", "model", "state_dict", "mlof"])
def test_every_layout_is_read_once(tmp_path, small_sd, monkeypatch, layout):
    path = tmp_path / f"{layout}.pth"
    if layout == "mlof":
        model = backbones.build("raft_small")
        model.load_state_dict(small_sd)
        save_checkpoint(path, model, step=2)
    else:
        sd = {f"module.{k}": v for k, v in small_sd.items()} if layout == "module" else small_sd
        torch.save(sd if layout in ("plain", "module") else {layout: sd, "epoch": 3}, path)
    name = None if layout == "mlof" else "raft_small"
    calls = _count_loads(monkeypatch)
    assert _same_weights(mlof.load(path, backbone=name), small_sd) and len(calls) == 1
    assert _same_weights(backbones.build("raft_small", checkpoint=path), small_sd) and len(calls) == 2
    ckpt = read_checkpoint(path)
    assert len(calls) == 3 and ckpt.is_mlof == (layout == "mlof")
    if layout == "mlof":
        assert ckpt.backbone == "raft_small" and ckpt.contents["step"] == 2
    else:
        assert ckpt.backbone is None and ckpt.contents is None


def test_strict_mismatch_names_the_keys(tmp_path, small_sd):
    key = "update_block.flow_head.conv2.bias"
    sd = {k: v for k, v in small_sd.items() if k != key}
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    for load in (lambda: backbones.build("raft_small", checkpoint=path),
                 lambda: mlof.load(path, backbone="raft_small")):
        with pytest.raises(CheckpointMismatchError, match=rf"partial.pth does not fit RAFTSmall:\s+missing keys "
                                                          rf"\(1\): {key}\s+unexpected keys \(1\): extra.weight"):
            load()
    assert backbones.build("raft_small", checkpoint=path, strict=False) is not None


def test_default_checkpoint_is_package_data_and_loads_by_name():
    assert DEFAULT_CHECKPOINT.is_file()
    assert DEFAULT_CHECKPOINT.parent == Path(mlof.__file__).resolve().parent / "checkpoints"   # inside the package
    data = configparser.ConfigParser(interpolation=None)
    data.read(Path(mlof.__file__).resolve().parents[1] / "setup.cfg")
    assert "checkpoints/*.pt" in data["options.package_data"]["mlof"]
    model = mlof.load("default")
    assert type(model).__name__ == "RAFTSmall" and not model.training
    assert _same_weights(model, mlof.load(DEFAULT_CHECKPOINT).state_dict())
