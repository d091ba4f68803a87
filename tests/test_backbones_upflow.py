"""UPFlow against the official outputs (shared/reference/upflow), checkpoint loading, bad input; and the shared
PWC layers (cost volume, warping) against naive definitions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
from backbones.layers.grid import warp
from backbones.layers.pwc import cost_volume
from backbones.layers.upsample import resize_flow
from backbones.checkpoint import CheckpointMismatchError
from backbones.upflow import UPFlow, forward_backward_occlusion
from reference_utils import Reference, case_images, load_reference, rule_weights_for, state_dict_signature

# The official hard warping mask (grid_sample(ones) >= 1.0) flips with float rounding wherever a bilinear sum
# of ones is 0.99999994. Where the flips start depends on the machine's kernels: on the reference machine
# levels 2-4 were bit-stable across thread counts; on other CPUs of this project's machine class (AVX-512,
# other oneDNN convolution choices) flips already start at level 3 (our own code differs by 0.14 px at level 2
# between 1 and 2 threads there). Only the coarsest level, whose warp uses zero flow (integer grid, weights
# exactly 1), is rounding-proof everywhere: it is compared strictly. The others are compared by statistics that
# mask flips stay within and a wrong operation would not (measured worst case on such a machine in comments).
STABLE = ["A_level4_flow_fw", "A_level4_flow_bw"]
FLIP_BOUNDS = {  # name pattern -> (max mean abs diff, max median abs diff) in px
    "A_level3": (0.03, 0.015),     # measured 0.012 / 0.006
    "A_level2": (0.05, 0.03),      # 0.021 / 0.012
    "A_level1": (0.1, 0.06),       # 0.041 / 0.024
    "A_level0": (0.2, 0.12),       # 0.081 / 0.050
    "A_flow": (0.6, 0.4),          # 0.31 / 0.20 (the SGU upsampler amplifies the flips)
    "B_flow": (0.4, 0.25),         # 0.17 / 0.12
}
UNSTABLE_FLOWS = ["A_flow", "A_flow_bw", "B_flow", "B_flow_bw"] + \
    [f"A_level{i}_flow_{d}" for i in (0, 1, 2, 3) for d in ("fw", "bw")]


# ---------------------------------------------------------------------------------------------------------------
# reference data (tests/reference_utils.py)

@pytest.fixture(scope="module")
def ref(reference_dir: Path) -> Reference:
    return load_reference(reference_dir, "upflow")


@pytest.fixture(scope="module")
def rule_model(ref: Reference) -> UPFlow:
    model = UPFlow().eval()
    model.load_state_dict(rule_weights_for(model, ref), strict=True)
    return model


@pytest.fixture(scope="module")
def outputs(rule_model: UPFlow, ref: Reference, flow_samples: Path) -> dict[str, np.ndarray]:
    res = {}
    with torch.no_grad():
        for case in ("A", "B"):
            out = rule_model(*case_images(flow_samples, ref.meta, case))
            res[f"{case}_flow"], res[f"{case}_flow_bw"] = out.flow, out.flow_bw
            if case == "A":
                res["A_occ_fw"], res["A_occ_bw"] = out.extras["occ_fw"], out.extras["occ_bw"]
                for i in range(5):   # official level i=0 is the finest (1/4); our lists run coarse to fine
                    res[f"A_level{i}_flow_fw"] = out.pyramid[i]
                    res[f"A_level{i}_flow_bw"] = out.pyramid_bw[i]
    return {k: v.numpy() for k, v in res.items()}


@pytest.fixture(scope="module")
def reference(ref: Reference) -> dict[str, np.ndarray]:
    return ref.outputs


# ---------------------------------------------------------------------------------------------------------------
# UPFlow

def test_parameter_count_and_registry():
    model = backbones.build("upflow")
    assert isinstance(model, UPFlow)
    assert backbones.count_parameters(model) == 3_494_549
    assert "upflow" in backbones.available()


def test_state_dict_layout_equals_official(ref: Reference):
    assert state_dict_signature(UPFlow()) == ref.keys


def test_stable_outputs_match_official(outputs, reference):
    for name in STABLE:
        assert outputs[name].shape == reference[name].shape, name
        diff = np.abs(outputs[name] - reference[name]).max()
        assert diff < 1e-3, f"{name}: max abs diff {diff:.3g} px"


def test_unstable_outputs_match_official_loosely(outputs, reference):
    # The official hard warping mask flips with float rounding (1 vs 2 threads move the official final flows by
    # up to ~4 px at a few pixels); same op order on the same machine reproduces them exactly, elsewhere only
    # closely (FLIP_BOUNDS).
    for name in UNSTABLE_FLOWS:
        diff = np.abs(outputs[name] - reference[name])
        assert outputs[name].shape == reference[name].shape, name
        mean_bound, median_bound = next(v for k, v in FLIP_BOUNDS.items() if name.startswith(k))
        assert diff.mean() < mean_bound and np.median(diff) < median_bound, \
            f"{name}: mean {diff.mean():.3g}, median {np.median(diff):.3g}"
    for name in ("A_occ_fw", "A_occ_bw"):
        assert (outputs[name] == reference[name]).mean() > 0.98, name


def test_official_plain_checkpoint_loads(tmp_path, rule_model, ref):
    # upflow_kitti2015.pth is a plain state dict without prefix.
    path = tmp_path / "upflow_kitti2015.pth"
    torch.save(rule_weights_for(rule_model, ref), path)
    model = backbones.build("upflow", checkpoint=path).eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), rule_model.state_dict().items()):
        assert torch.equal(a, b), k
    broken = torch.load(path, weights_only=True)
    broken.pop("sgi_model.upsample_output_conv.3.0.bias")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(CheckpointMismatchError, match="upsample_output_conv.3.0.bias"):
        backbones.build("upflow", checkpoint=path)


def test_outputs_and_options():
    torch.manual_seed(0)
    model = UPFlow().eval()
    im1 = torch.rand(1, 3, 128, 144) * 255
    im2 = torch.roll(im1, 3, dims=-1)
    with torch.no_grad():
        out = model(im1, im2, iters=5, return_all=True)
        fw_only = UPFlow(bidirectional=False).eval()
        fw_only.load_state_dict(model.state_dict())
        out_fw = fw_only(im1, im2)
    assert out.flow.shape == (1, 2, 128, 144) and out.flow_low is None
    assert [tuple(f.shape[-2:]) for f in out.pyramid[::-1]] == [(2, 3), (4, 5), (8, 9), (16, 18),
                                                                          (32, 36)]
    assert len(out.flows) == 6 and all(f.shape == out.flow.shape for f in out.flows)
    assert torch.equal(out.flows[-1], out.flow)
    assert out.extras["occ_fw"].shape == (1, 1, 128, 144)
    assert set(out.extras["occ_fw"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out_fw.flow, out.flow) and out_fw.flow_bw is None
    assert not out_fw.flows   # eval mode, no return_all


def test_small_and_odd_inputs_are_padded():
    model = UPFlow(bidirectional=False).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 45, 70) * 255, torch.rand(2, 3, 45, 70) * 255)
    assert out.flow.shape == (2, 2, 45, 70) and torch.isfinite(out.flow).all()
    assert [tuple(f.shape[-2:]) for f in out.pyramid[::-1]] == [(2, 2), (4, 4), (8, 8), (16, 16),
                                                                          (32, 32)]   # padded to 128 x 128


@pytest.mark.parametrize("bad, match", [
    (lambda a, b: (a[:, :2], b[:, :2]), "3 colour channels"),
    (lambda a, b: (a.to(torch.uint8), b.to(torch.uint8)), "floating-point"),
    (lambda a, b: (a, b[..., :-8]), "same shape"),
    (lambda a, b: (a[0], b[0]), "N x 3 x H x W"),
    (lambda a, b: (a.masked_fill(a > 250, float("nan")), b), "NaN"),
])
def test_bad_input_raises(bad, match):
    a, b = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    with pytest.raises(ValueError, match=match):
        UPFlow()(*bad(a, b))


def test_flow_init_is_rejected():
    a = torch.rand(1, 3, 64, 64) * 255
    with pytest.raises(ValueError, match="flow_init"):
        UPFlow()(a, a, flow_init=torch.zeros(1, 2, 8, 8))


def test_param_groups():
    model = UPFlow()
    groups = backbones.param_groups(model)
    assert groups["context_encoder"] == []
    assert groups["feature_encoder"] and all(n.startswith(("feature_pyramid_extractor.", "conv_1x1."))
                                             for n in groups["feature_encoder"])
    assert groups["update_block"] and all(n.startswith(("flow_estimators.", "context_networks."))
                                          for n in groups["update_block"])
    parts = [groups[g] for g in ("feature_encoder", "update_block", "upsampler")]
    flat = [n for part in parts for n in part]
    assert len(flat) == len(set(flat)) and sorted(flat) == sorted(groups["all"])   # a partition


def test_occlusion_masks():
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0] = 2.0
    occ_fw, occ_bw = forward_backward_occlusion(flow, -flow)
    assert occ_fw.min() == 1 and occ_bw.min() == 1           # consistent pair: everything visible
    occ_fw, _ = forward_backward_occlusion(flow, flow)       # inconsistent: occluded except where it leaves
    assert occ_fw[..., :27].max() == 0 and occ_fw[..., 28:].min() == 1


# ---------------------------------------------------------------------------------------------------------------
# backbones.layers.pwc

def _naive_cost_volume(f1, f2, d, stride=1, dil=1, reduction="sum"):
    n, c, h, w = f1.shape
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    out = torch.zeros(n, (2 * d + 1) ** 2, ho, wo, dtype=f1.dtype)
    for k, (dy, dx) in enumerate((dy, dx) for dy in range(-d, d + 1) for dx in range(-d, d + 1)):
        for y in range(ho):
            for x in range(wo):
                y2, x2 = y * stride + dy * dil, x * stride + dx * dil
                if 0 <= y2 < h and 0 <= x2 < w:
                    v = (f1[:, :, y * stride, x * stride] * f2[:, :, y2, x2]).sum(1)
                    out[:, k, y, x] = v / c if reduction == "mean" else v
    return out


@pytest.mark.parametrize("stride, dil, reduction", [(1, 1, "mean"), (2, 2, "sum"), (1, 2, "sum")])
@pytest.mark.parametrize("max_elements", [0, 10 ** 9])      # one-displacement-at-a-time and batched paths
def test_cost_volume_matches_definition(stride, dil, reduction, max_elements):
    torch.manual_seed(1)
    f1, f2 = torch.randn(2, 5, 7, 9, dtype=torch.float64), torch.randn(2, 5, 7, 9, dtype=torch.float64)
    got = cost_volume(f1, f2, 2, stride=stride, dilation_patch=dil, reduction=reduction,
                            max_elements=max_elements)
    torch.testing.assert_close(got, _naive_cost_volume(f1, f2, 2, stride, dil, reduction))


def test_cost_volume_gradients():
    f1 = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cost_volume(a, b, 1, max_elements=0), (f1, f2))
    assert torch.autograd.gradcheck(lambda a, b: cost_volume(a, b, 1, reduction="mean"), (f1, f2))


def test_warp_shift_and_masks():
    x = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    flow = torch.zeros(2, 2, 6, 8)
    flow[:, 0] = 2.0                                    # read two pixels to the right
    out = warp(x, flow)
    torch.testing.assert_close(out[..., :6], x[..., 2:])
    assert out[..., 7].abs().max() == 0                # beyond the border: zeros
    flow[:, 0] = 1.5
    soft = warp(x, flow)                               # column 6 reads half a pixel outside
    hard = warp(x, flow, mask_threshold=1.0)
    assert soft[..., 6].abs().min() > 0 and hard[..., 6:].abs().max() == 0
    torch.testing.assert_close(hard[..., :6], soft[..., :6])
    strict = warp(x, flow, mask_threshold=0.9999, strict=True)
    torch.testing.assert_close(strict, hard)
    with pytest.raises(ValueError, match="same grid"):
        warp(x, flow[..., :4])


def test_resize_flow_scales_vectors():
    flow = torch.ones(1, 2, 4, 5)
    up = resize_flow(flow, (8, 20))
    torch.testing.assert_close(up[:, 0], torch.full((1, 8, 20), 4.0))
    torch.testing.assert_close(up[:, 1], torch.full((1, 8, 20), 2.0))
    torch.testing.assert_close(resize_flow(flow, (8, 20), scale=False), torch.ones(1, 2, 8, 20))


def test_training_mode_gradients_reach_every_group():
    torch.manual_seed(0)
    model = UPFlow(bidirectional=False).train()
    im1 = torch.rand(1, 3, 128, 128) * 255
    out = model(im1, torch.roll(im1, 2, dims=-1))
    assert len(out.flows) == 6
    loss = sum(f.abs().mean() for f in out.flows)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for group, names in backbones.param_groups(model).items():
        assert not names or any(grads[n].abs().sum() > 0 for n in names), group


def test_cost_volume_keeps_half_inputs_in_float32():
    f1, f2 = torch.randn(1, 64, 6, 7) * 30, torch.randn(1, 64, 6, 7) * 30
    got = cost_volume(f1.half(), f2.half(), 3)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, cost_volume(f1.half().float(), f2.half().float(), 3))


@pytest.mark.slow
def test_runs_at_sintel_size():
    model = UPFlow().eval()
    im = torch.rand(1, 3, 436, 1024) * 255
    with torch.no_grad():
        out = model(im, torch.roll(im, (1, 4), dims=(-2, -1)))
    assert out.flow.shape == (1, 2, 436, 1024) and torch.isfinite(out.flow).all()
    assert out.extras["occ_bw"].shape == (1, 1, 436, 1024)
