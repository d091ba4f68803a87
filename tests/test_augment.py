"""Augmentation: flow stays consistent with the images (warp check on synthetic pairs), seeding, presets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from mlof.data import FlowAugmentor, SparseFlowAugmentor, build_augmentor, render_sample
from mlof.data.augment import resize_dense, resize_sparse
from mlof.data.photometric import ColorJitter, adjust_gamma, erase_boxes


@pytest.fixture(scope="module")
def pair():
    s = render_sample("source", (96, 128), seed=1, index=0)
    return {"img1": s["frames"][0].astype(np.uint8), "img2": s["frames"][1].astype(np.uint8),
            "flow": s["flows"][0], "valid": s["valids"][0], "occ": s["occs"][0]}


def warp_residual(s: dict) -> tuple[float, float]:
    """Mean |I1 - I2(x + flow)| over valid, non-occluded, in-frame pixels; and the same for zero flow."""
    i1, i2 = s["img1"].astype(np.float32), s["img2"].astype(np.float32)
    f = s["flow"]
    h, w = f.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    mx, my = xx + f[..., 0], yy + f[..., 1]
    ok = s["valid"] & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    if "occ" in s:
        ok &= ~s["occ"]
    warped = cv2.remap(i2, mx, my, cv2.INTER_LINEAR)
    return float(np.abs(i1 - warped).mean(-1)[ok].mean()), float(np.abs(i1 - i2).mean(-1)[ok].mean())


def test_warp_check_input(pair):
    err, zero = warp_residual(pair)
    assert err < 0.25 * zero


@pytest.mark.parametrize("seed", range(4))
def test_dense_spatial_keeps_flow_exact(pair, seed):
    aug = FlowAugmentor(crop_size=(64, 80), min_scale=-0.3, max_scale=0.6, spatial_prob=1.0, stretch_prob=1.0,
                        do_flip=True, h_flip_prob=0.5, v_flip_prob=0.5, photometric=False, eraser_prob=0.0)
    out = aug(pair, rng=np.random.default_rng(seed))
    assert out["img1"].shape == (64, 80, 3) and out["flow"].shape == (64, 80, 2) and out["occ"].shape == (64, 80)
    err, zero = warp_residual(out)
    base, _ = warp_residual(pair)
    assert err < 0.3 * zero and err < 2.5 * base + 1.0


def test_flips_are_exact(pair):
    for axis, kw in ((1, {"h_flip_prob": 1.0, "v_flip_prob": 0.0}), (0, {"h_flip_prob": 0.0, "v_flip_prob": 1.0})):
        aug = FlowAugmentor(crop_size=None, spatial_prob=0.0, stretch_prob=0.0, photometric=False,
                            eraser_prob=0.0, **kw)
        out = aug(pair, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(out["img1"], np.flip(pair["img1"], axis))
        comp = 0 if axis == 1 else 1
        np.testing.assert_array_equal(out["flow"][..., comp], -np.flip(pair["flow"], axis)[..., comp])
        assert warp_residual(out)[0] == pytest.approx(warp_residual(pair)[0], abs=1e-4)


def test_resize_flow_scaling():
    flow = np.zeros((40, 60, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    out, valid = resize_dense(flow, np.ones((40, 60), bool), (61, 91))
    assert np.allclose(out[..., 0], 3.0 * 91 / 60) and np.allclose(out[..., 1], -2.0 * 61 / 40) and valid.all()
    sv = np.zeros((40, 60), bool)
    sv[5, 7] = sv[0, 0] = True
    sf, svalid = resize_sparse(flow, sv, (80, 120))
    assert svalid.sum() == 2 and svalid[0, 0]       # row/column 0 is kept (RAFT drops it)
    ys, xs = np.nonzero(svalid)
    assert np.allclose(sf[ys, xs], [6.0, -4.0])


def test_sparse_augmentor_warp_check(pair):
    rng = np.random.default_rng(5)
    sparse = dict(pair, valid=pair["valid"] & (rng.random(pair["valid"].shape) < 0.3), sparse=True)
    del sparse["occ"]
    sparse["valid"] &= ~pair["occ"]
    aug = SparseFlowAugmentor(crop_size=(64, 96), min_scale=0.2, max_scale=0.5, spatial_prob=1.0, do_flip=True,
                              photometric=False, eraser_prob=0.0)
    for seed in range(3):
        out = aug(sparse, rng=np.random.default_rng(seed))
        assert out["flow"].shape == (64, 96, 2) and out["valid"].dtype == bool and out["valid"].sum() > 100
        assert not out["flow"][~out["valid"]].any()
        err, zero = warp_residual(out)
        assert err < 0.4 * zero


def test_seeded_reproducibility(pair):
    aug = build_augmentor("raft-sintel", crop_size=(64, 96))
    a = aug(pair, rng=np.random.default_rng(7))
    b = aug(pair, rng=np.random.default_rng(7))
    c = aug(pair, rng=np.random.default_rng(8))
    for k in ("img1", "img2", "flow"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["img1"], c["img1"])
    own1, own2 = build_augmentor("raft-chairs", crop_size=(64, 96), seed=3), \
        build_augmentor("raft-chairs", crop_size=(64, 96), seed=3)
    np.testing.assert_array_equal(own1(pair)["img2"], own2(pair)["img2"])
    state = np.random.get_state()
    aug(pair, rng=np.random.default_rng(1))
    assert np.array_equal(np.random.get_state()[1], state[1])     # global numpy state untouched


def test_mlof_meta_preset_is_crop_of_jittered_pair(pair):
    aug = build_augmentor("mlof-meta", target="sintel", crop_size=(64, 96))
    assert aug.max_scale == aug.min_scale == 0 and not aug.do_flip and aug.spatial_prob == 0
    out = aug(pair, rng=np.random.default_rng(0))
    # geometry untouched: the flow is an exact crop of the input flow
    h, w = pair["flow"].shape[:2]
    hits = [(y, x) for y in range(h - 63) for x in range(w - 95)
            if np.array_equal(pair["flow"][y:y + 64, x:x + 96], out["flow"])]
    assert len(hits) == 1
    kitti = build_augmentor("mlof-meta")
    assert isinstance(kitti, SparseFlowAugmentor) and kitti.crop_size == (288, 960)
    with pytest.raises(ValueError, match="target"):
        build_augmentor("mlof-meta", target="chairs")


def test_presets_and_errors():
    assert build_augmentor("raft-chairs").crop_size == (368, 496)
    assert build_augmentor("raft-things").min_scale == -0.4
    k = build_augmentor("raft-kitti")
    assert isinstance(k, SparseFlowAugmentor) and not k.do_flip and k.brightness == 0.3
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        build_augmentor("raft-nope")
    with pytest.raises(ValueError, match="unknown augmentation option"):
        build_augmentor("raft-sintel", zoom=2)
    with pytest.raises(ValueError, match="probability"):
        FlowAugmentor(eraser_prob=1.5)


def test_photometric_ops():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    same = ColorJitter(0, 0, 0, 0)(img, np.random.default_rng(0))
    np.testing.assert_array_equal(same, img)
    grey = ColorJitter.apply(img, [2], (1.0, 1.0, 0.0, 0.0))
    assert np.abs(grey.astype(int) - grey[..., :1].astype(int)).max() <= 1     # saturation 0 -> grey
    hue = ColorJitter.apply(np.array([[[255, 0, 0]]], np.uint8), [3], (1.0, 1.0, 1.0, 1 / 3))
    assert hue[0, 0].argmax() == 1                                              # red + 120 deg = green
    bright = ColorJitter.apply(img, [0], (0.5, 1.0, 1.0, 0.0))
    assert abs(bright.mean() - img.mean() / 2) < 1
    assert adjust_gamma(np.array([[[64, 128, 255]]], np.uint8), 2.0).tolist() == [[[16, 64, 255]]]
    erased = erase_boxes(img, np.random.default_rng(0), bounds=(5, 6), boxes=(2, 2))
    changed = (erased != img).any(-1)
    assert 0 < changed.sum() <= 2 * 25 and (erased[changed] == img.reshape(-1, 3).mean(0).astype(np.uint8)).all()
