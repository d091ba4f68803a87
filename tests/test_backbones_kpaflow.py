"""KPA-Flow (Sintel and KITTI settings) against the official implementation (shared/reference, rule weights)."""
from __future__ import annotations

import pytest
import torch

import backbones
from backbones.kpaflow import KernelPatchAttention, PatchAttention, PatchGrid
from reference_utils import (assert_case_a_matches, assert_case_b_matches, case_images, load_reference,
                             max_abs_diff, rule_weights_for, state_dict_signature)

SETTINGS = {"kpaflow": "sintel", "kpaflow_kitti": "kitti"}  # reference folder -> dataset option
ANCHOR_PARAMS = 5_994_831


def _loaded(reference_dir, folder):
    ref = load_reference(reference_dir, folder)
    model = backbones.build("kpaflow", dataset=SETTINGS[folder]).eval()
    model.load_state_dict(rule_weights_for(model, ref), strict=True)
    return model, ref


@pytest.mark.parametrize("folder", list(SETTINGS))
def test_state_dict_layout_and_parameter_count_equal_official(folder, reference_dir):
    ref = load_reference(reference_dir, folder)
    model = backbones.build("kpaflow", dataset=SETTINGS[folder])
    assert state_dict_signature(model) == ref.keys
    assert backbones.count_parameters(model) == ANCHOR_PARAMS == ref.meta["num_parameters"]
    assert model.update_block.kpa.sc == {"sintel": 19, "kitti": 15}[SETTINGS[folder]]
    assert model.trans.sc == 13


@pytest.mark.parametrize("folder", list(SETTINGS))
def test_case_a_every_iteration_matches_official(folder, reference_dir, flow_samples):
    model, ref = _loaded(reference_dir, folder)
    assert_case_a_matches(model, ref, flow_samples)


def test_case_b_padded_test_mode_matches_official(reference_dir, flow_samples):
    model, ref = _loaded(reference_dir, "kpaflow")
    assert_case_b_matches(model, ref, flow_samples)


@pytest.mark.slow
@pytest.mark.parametrize("corr", ["dense", "ondemand"])
def test_kitti_case_b_matches_official(corr, reference_dir, flow_samples):
    model, ref = _loaded(reference_dir, "kpaflow_kitti")
    other = backbones.build("kpaflow", dataset="kitti", corr=corr).eval()
    other.load_state_dict(model.state_dict())
    b1, b2 = case_images(flow_samples, ref.meta, "B")
    with torch.no_grad():
        out = other(b1, b2, iters=12)
    assert max_abs_diff(out.flow, ref.outputs["B_flow"]) < ref.tolerance
    assert max_abs_diff(out.flow_low, ref.outputs["B_flow_low_padded"]) < ref.tolerance


@pytest.mark.parametrize("wrap", ["module_prefix", "model_wrapper", "state_dict_wrapper"])
def test_official_checkpoint_formats_load(wrap, tmp_path):
    src = backbones.build("kpaflow")
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    sd = src.state_dict()
    obj = {"module." + k: v for k, v in sd.items()}                # DataParallel, as the official release
    if wrap == "model_wrapper":
        obj = {"model": obj}
    elif wrap == "state_dict_wrapper":
        obj = {"state_dict": sd}
    path = tmp_path / "kpaflow.pth"
    torch.save(obj, path)
    model = backbones.build("kpaflow", checkpoint=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_checkpoint_of_wrong_network_is_rejected_with_key_names(tmp_path):
    path = tmp_path / "raft.pth"
    torch.save(backbones.build("raft").state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys.*update_block\.kpa\.gamma"):
        backbones.build("kpaflow", checkpoint=path)


def test_parameter_groups_partition_the_trainable_parameters():
    model = backbones.build("kpaflow")
    groups = backbones.param_groups(model)
    named = [g for g in groups if g != "all"]
    assert {"feature_encoder", "context_encoder", "update_block", "attention"} <= set(named)
    seen = [n for g in named for n in groups[g]]
    assert len(seen) == len(set(seen))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(seen) == trainable
    assert set(groups["attention"]) == {"trans.gamma", "trans.to_qk.weight", "trans.to_v.weight"}
    assert "update_block.kpa.w_prelu" in groups["update_block"]


@pytest.mark.parametrize("bad, match", [
    ((torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 72)), "same shape"),
    ((torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)), "3 colour channels"),
    ((torch.full((1, 3, 64, 64), float("nan")), torch.zeros(1, 3, 64, 64)), "NaN"),
    ((torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), "floating"),
    ((torch.zeros(1, 3, 16, 0), torch.zeros(1, 3, 16, 0)), "too small"),
])
def test_bad_input_raises_value_error(bad, match):
    model = backbones.build("kpaflow").eval()
    with pytest.raises(ValueError, match=match):
        model(*bad, iters=1)


def test_unknown_dataset_option_is_rejected():
    with pytest.raises(ValueError, match="dataset"):
        backbones.build("kpaflow", dataset="chairs")


def test_batch_and_odd_sizes_are_consistent_with_single_calls():
    """Batch elements are independent (the patch attention mixes nothing across the batch) and odd sizes
    are padded and cropped back."""
    torch.manual_seed(0)
    model = backbones.build("kpaflow", dataset="kitti").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
        model.update_block.kpa.gamma.fill_(1.0)
        model.trans.gamma.fill_(1.0)
        im1, im2 = torch.rand(2, 3, 70, 99) * 255, torch.rand(2, 3, 70, 99) * 255
        both = model(im1, im2, iters=2)
        one = model(im1[1:], im2[1:], iters=2)
    assert both.flow.shape == (2, 2, 70, 99)
    assert both.flow_low.shape == (2, 2, 16, 16)   # padded to the smallest padded size, 128 x 128
    assert torch.isfinite(both.flow).all()
    assert (both.flow[1:] - one.flow).abs().max() < 1e-4


def test_patch_grid_round_trip_and_outside_mask():
    grid = PatchGrid(10, 14, 4)
    assert (grid.hp, grid.wp, grid.rows, grid.cols) == (12, 16, 3, 4)
    x = torch.randn(2, 5, 10, 14)
    assert torch.equal(grid.fold(grid.queries(grid.pad(x))), x)
    off = grid.outside_offset(torch.device("cpu"), torch.float32)        # P x K x S
    assert off.shape == (12, 144, 16)
    # the first patch's centre key (window position (4, 4)) with its first query: both inside the image
    assert off[0, 4 * 12 + 4, 0] == 0
    # window row 0 of the first patch lies above the image (unfold's zero padding): outside
    assert off[0, 0, 0] == -99.0


def test_patch_attention_equals_a_direct_windowed_softmax():
    """Each pixel attends to exactly the in-image pixels of the 3sc x 3sc window around its patch."""
    torch.manual_seed(0)
    sc, c, h, w = 3, 4, 7, 8
    att = PatchAttention(c, sc)
    with torch.no_grad():
        att.gamma.fill_(1.0)
        x = torch.randn(1, c, h, w)
        out = att(x)
        q, k = att.to_qk(x).chunk(2, dim=1)
        v = att.to_v(x)
    for y0, x0 in [(0, 0), (4, 5), (6, 7)]:
        py, px = y0 // sc, x0 // sc
        ys = range(max(0, (py - 1) * sc), min(h, (py + 2) * sc))
        xs = range(max(0, (px - 1) * sc), min(w, (px + 2) * sc))
        keys = torch.stack([k[0, :, yy, xx] for yy in ys for xx in xs])        # M x C
        vals = torch.stack([v[0, :, yy, xx] for yy in ys for xx in xs])
        weights = torch.softmax(keys @ q[0, :, y0, x0] * c ** -0.5, dim=0)
        expected = x[0, :, y0, x0] + weights @ vals
        assert torch.allclose(out[0, :, y0, x0], expected, atol=1e-5)


def test_kernel_patch_attention_spatial_kernel_is_a_separable_tent():
    kpa = KernelPatchAttention(8, 5)
    with torch.no_grad():
        kpa.w_prelu.fill_(2.0)                       # slope 0.04 per pixel of distance
    ker = kpa.spatial_kernel(torch.device("cpu"), torch.float32).view(15, 15, 5, 5)
    # query (sy, sx) sits at window position (5 + sy, 5 + sx); distance d gives 1 + 0.04 * (10 - |d|)
    tent = lambda d: 1 + 0.04 * (10 - abs(d))       # noqa: E731
    assert torch.isclose(ker[5, 5, 0, 0], torch.tensor(tent(0) ** 2))
    assert torch.isclose(ker[0, 14, 2, 1], torch.tensor(tent(0 - 7) * tent(14 - 6)))
    # default slope: the official 1 / ((3 sc - 1) / 2)
    assert torch.isclose(KernelPatchAttention(8, 19).w_prelu, torch.tensor(2 / 56))


def test_training_gradients_reach_every_attention_parameter():
    model = backbones.build("kpaflow", freeze_bn=True).train()
    with torch.no_grad():
        model.update_block.kpa.gamma.fill_(0.5)
        model.trans.gamma.fill_(0.5)
    im1, im2 = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    out = model(im1, im2, iters=2)
    assert len(out.flows) == 2
    sum(f.abs().mean() for f in out.flows).backward()
    for name in ("trans.to_qk.weight", "trans.to_v.weight", "update_block.kpa.to_qk.weight",
                 "update_block.kpa.w_prelu", "update_block.kpa.gamma"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert model.zero.grad is None
