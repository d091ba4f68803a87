"""ONNX export (`backbones.onnx`, `mlof export`): onnxruntime (CPU) against torch, max |diff| < 1e-3 px, for
RAFT-small (the shipped trained checkpoint), RAFT and GMA (official rule weights: large flows), with the dense
and the on-demand correlation. Skips cleanly without onnx / onnxruntime (`pip install mlof[export]`)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import backbones
from backbones.layers.corr import CorrBlock, OnDemandCorrBlock
from backbones.onnx import SampledCorrBlock, export_onnx, torch_reference
from mlof.checkpoint import DEFAULT_CHECKPOINT
from mlof.cli import main

onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install 'mlof[export]'")
ort = pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'mlof[export]'")

TOL = 1e-3  # px


def _pairs(h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, h, w, generator=g) * 255
    return [(a, torch.roll(a, (2, -3), (2, 3))), (a, torch.rand(1, 3, h, w, generator=g) * 255)]


def _max_diff(model: torch.nn.Module, path, h: int, w: int, iters: int, corr: str) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for im1, im2 in _pairs(h, w):
        flow, low = session.run(None, {"image1": im1.numpy(), "image2": im2.numpy()})
        ref, ref_low = torch_reference(model, im1, im2, iters, corr)
        assert flow.shape == tuple(ref.shape) and low.shape == tuple(ref_low.shape)
        worst = max(worst, float(np.abs(flow - ref.numpy()).max()), float(np.abs(low - ref_low.numpy()).max()))
    return worst


def test_sampled_corr_equals_dense_and_ondemand():
    """The traceable on-demand lookup is the official correlation (inside, at the border and outside)."""
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 32, 9, 13, generator=g), torch.randn(2, 32, 9, 13, generator=g)
    ys, xs = torch.meshgrid(torch.arange(9.0), torch.arange(13.0), indexing="ij")
    coords = torch.stack([xs, ys])[None].repeat(2, 1, 1, 1) + torch.randn(2, 2, 9, 13, generator=g) * 6
    want = CorrBlock(f1, f2, num_levels=3, radius=3)(coords)
    got = SampledCorrBlock(f1, f2, num_levels=3, radius=3)(coords)
    assert got.shape == want.shape == (2, 3 * 49, 9, 13)
    assert (got - want).abs().max() < 1e-4
    assert (got - OnDemandCorrBlock(f1, f2, num_levels=3, radius=3)(coords)).abs().max() < 1e-4


# dense runs in the default suite through test_cli_export_checks_against_torch; here only with -m slow
@pytest.mark.parametrize("corr", [pytest.param("dense", marks=pytest.mark.slow), "ondemand"])
def test_raft_small_trained_checkpoint_matches_torch(tmp_path, corr):
    model = backbones.build("raft_small", checkpoint=DEFAULT_CHECKPOINT).eval()
    before = copy.deepcopy(model.state_dict())
    h, w, iters = 64, 64, 2
    info = export_onnx(model, tmp_path / "m.onnx", size=(h, w), iters=iters, corr=corr)
    assert info["outputs"] == {"flow": [1, 2, h, w], "flow_low": [1, 2, 16, 16]}   # padded to 128 x 128
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert graph.opset_import[0].version >= 16
    assert [i.name for i in graph.graph.input] == ["image1", "image2"]
    assert _max_diff(model, tmp_path / "m.onnx", h, w, iters, corr) < TOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    assert model.corr == "auto" and not list(tmp_path.glob("*.tmp"))


def test_export_refuses_what_it_cannot_export(tmp_path):
    with pytest.raises(ValueError, match="cannot be exported to ONNX"):
        export_onnx(backbones.build("upflow"), tmp_path / "u.onnx", size=(64, 64))
    with pytest.raises(ValueError, match="opset must be >= 16"):
        export_onnx(backbones.build("raft_small"), tmp_path / "r.onnx", opset=13)
    with pytest.raises(ValueError, match="below the network's minimum"):
        export_onnx(backbones.build("raft_small"), tmp_path / "r.onnx", size=(0, 32))   # any size >= 1 exports
    assert not list(tmp_path.iterdir())


def test_cli_export_checks_against_torch(tmp_path, capsys):
    out = tmp_path / "raft_small.onnx"
    rc = main(["export", "model.name=raft_small", "model.checkpoint=default", f"out={out}",
               "size=[64,80]", "iters=2", "-q"])
    assert rc == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "onnxruntime vs torch: max |diff| flow" in text and "raft_small (dense correlation, 2 iterations" in text
    assert main(["export", "corr=sparse", f"out={out}"]) == 2
    assert "corr: 'sparse' is not one of dense, ondemand" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["raft", "gma", "raft_small"])
@pytest.mark.parametrize("corr", ["dense", "ondemand"])
def test_official_rule_weights_12_iterations(tmp_path, name, corr, reference_dir):
    """Official layout with the reference rule weights (flows of 60-100 px), 12 iterations."""
    from reference_utils import load_reference, rule_weights_for

    model = backbones.build(name).eval()
    model.load_state_dict(rule_weights_for(model, load_reference(reference_dir, name)), strict=True)
    h, w = 120, 152
    export_onnx(model, tmp_path / "m.onnx", size=(h, w), iters=12, corr=corr)
    assert _max_diff(model, tmp_path / "m.onnx", h, w, 12, corr) < TOL
