"""mlof.metrics against hand-computed cases; pooled vs per image; occlusion split; the accumulator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlof.metrics import FlowMetricAccumulator, epe, epe_map, fl_all, flow_metrics, outlier_rates


def _case():
    """2 x 3 numpy flow (H x W x 2) with hand-known errors.

    gt everywhere (10, 0) (|gt| = 10, so the Fl relative threshold is 0.5 px < 3 px); errors per pixel:
    row 0: 0, 1 (exactly), 5 (3-4-5 triangle); row 1: 2, 3.5, 0.5  -> mean 12/6 = 2.
    Fl outliers (EPE > 3 and > 0.5): 5, 3.5 -> 2/6. EPE > 1: 5, 2, 3.5 -> 3/6; > 3: 2/6; > 5: 0/6.
    """
    gt = np.zeros((2, 3, 2), np.float32)
    gt[..., 0] = 10
    err = np.array([[[0, 0], [1, 0], [3, 4]], [[0, -2], [-3.5, 0], [0, 0.5]]], np.float32)
    return gt + err, gt


def test_hand_computed_values():
    pred, gt = _case()
    assert epe(pred, gt) == pytest.approx(2.0)
    assert fl_all(pred, gt) == pytest.approx(100 * 2 / 6)
    rates = outlier_rates(pred, gt)
    assert rates == pytest.approx({"1px": 50.0, "3px": 100 / 3, "5px": 0.0})
    assert outlier_rates(pred, gt, thresholds=(0.5, 4.5)) == pytest.approx({"0.5px": 100 * 4 / 6, "4.5px": 100 / 6})
    np.testing.assert_allclose(epe_map(pred, gt), [[0, 1, 5], [2, 3.5, 0.5]], atol=1e-6)


def test_relative_fl_threshold():
    # |gt| = 100: a 4 px error is > 3 px but only 4 % of |gt| -> not an Fl outlier; 6 px (6 %) is.
    gt = np.zeros((1, 2, 2), np.float32)
    gt[..., 0] = 100
    pred = gt.copy()
    pred[0, 0, 0] += 4
    pred[0, 1, 1] += 6
    assert fl_all(pred, gt) == pytest.approx(50.0)
    assert outlier_rates(pred, gt)["3px"] == pytest.approx(100.0)


def test_valid_mask_and_nonfinite_gt():
    pred, gt = _case()
    valid = np.array([[1, 1, 0], [1, 0, 1]], bool)       # drop the 5 and the 3.5
    assert epe(pred, gt, valid) == pytest.approx((0 + 1 + 2 + 0.5) / 4)
    assert fl_all(pred, gt, valid) == 0.0
    assert epe(pred, gt, valid.astype(np.float32)) == pytest.approx(0.875)   # numeric masks: >= 0.5
    gt2 = gt.copy()
    gt2[0, 2] = np.nan                                   # non-finite ground truth counts as invalid
    assert epe(pred, gt2) == pytest.approx((12 - 5) / 5)
    assert math.isnan(epe(pred, gt, np.zeros((2, 3), bool)))  # nothing valid -> NaN, no exception


def test_nan_prediction_is_not_hidden():
    pred, gt = _case()
    pred[1, 1] = np.nan
    assert math.isnan(epe(pred, gt))


def test_torch_and_numpy_conventions_agree():
    pred, gt = _case()
    tp = torch.from_numpy(pred).permute(2, 0, 1)         # 2 x H x W
    tg = torch.from_numpy(gt).permute(2, 0, 1)
    assert epe(tp, tg) == pytest.approx(2.0)
    assert epe(tp, gt) == pytest.approx(2.0)             # mixed: each argument read by its own type
    assert flow_metrics(tp[None], tg[None]) == pytest.approx(flow_metrics(pred[None], gt[None]))
    e = epe_map(tp.requires_grad_(), tg)
    assert isinstance(e, torch.Tensor) and e.shape == (2, 3) and e.requires_grad
    with pytest.raises(ValueError, match="pred"):
        epe(pred.transpose(2, 0, 1), gt)                 # numpy must be H x W x 2
    with pytest.raises(ValueError, match="valid"):
        epe(pred, gt, np.ones((3, 2), bool))


def _two_images():
    """Image A: 1 valid pixel with EPE 10; image B: 9 valid pixels with EPE 0 (3 x 3 each)."""
    gt = torch.zeros(2, 2, 3, 3)
    gt[:, 0] = 20.0
    pred = gt.clone()
    pred[0, 0, 0, 0] += 10.0
    valid = torch.zeros(2, 3, 3, dtype=torch.bool)
    valid[0, 0, 0] = True
    valid[1] = True
    return pred, gt, valid


def test_pooled_vs_per_image_differ():
    pred, gt, valid = _two_images()
    assert epe(pred, gt, valid) == pytest.approx(1.0)                    # 10 / 10 pixels
    np.testing.assert_allclose(epe(pred, gt, valid, per_image=True), [10.0, 0.0])
    assert fl_all(pred, gt, valid) == pytest.approx(10.0)                # 1 of 10 pixels
    np.testing.assert_allclose(fl_all(pred, gt, valid, per_image=True), [100.0, 0.0])
    acc = FlowMetricAccumulator()
    per = acc.add(pred, gt, valid)
    np.testing.assert_allclose(per["epe"], [10.0, 0.0])
    s = acc.summary()
    assert s["epe"] == pytest.approx(1.0) and s["epe_per_image"] == pytest.approx(5.0)
    assert s["fl_all"] == pytest.approx(10.0) and s["fl_all_per_image"] == pytest.approx(50.0)
    assert s["num_images"] == 2 and s["num_pixels"] == 10
    assert "epe_noc" not in s


def test_occlusion_split():
    pred, gt = _case()
    occ = np.array([[0, 0, 1], [0, 1, 0]], bool)          # the 5 and the 3.5 are occluded
    m = flow_metrics(pred, gt, occ=occ)
    assert m["epe_occ"] == pytest.approx(4.25)
    assert m["epe_noc"] == pytest.approx(3.5 / 4)
    assert m["epe"] == pytest.approx(2.0)
    assert m["fl_all_occ"] == pytest.approx(100.0) and m["fl_all_noc"] == 0.0
    assert m["outlier_1px_noc"] == pytest.approx(25.0)
    assert m["num_pixels"] == 6


def test_accumulator_over_batches_matches_one_call():
    rng = np.random.default_rng(1)
    gts = rng.normal(0, 8, (5, 6, 7, 2)).astype(np.float32)
    preds = gts + rng.normal(0, 3, gts.shape).astype(np.float32)
    valids = rng.random((5, 6, 7)) > 0.3
    occs = rng.random((5, 6, 7)) > 0.7
    acc = FlowMetricAccumulator(thresholds=(1, 3))
    acc.add(preds[:2], gts[:2], valids[:2], occs[:2])
    for i in range(2, 5):                                # single samples, torch layout
        acc.add(torch.from_numpy(preds[i]).permute(2, 0, 1), torch.from_numpy(gts[i]).permute(2, 0, 1),
                torch.from_numpy(valids[i]), occs[i])
    s = acc.summary()
    whole = flow_metrics(preds, gts, valids, occs, thresholds=(1, 3))
    per = flow_metrics(preds, gts, valids, occs, thresholds=(1, 3), per_image=True)
    for key in ("epe", "fl_all", "outlier_1px", "outlier_3px", "epe_noc", "epe_occ", "fl_all_occ"):
        assert s[key] == pytest.approx(whole[key]), key
        assert s[f"{key}_per_image"] == pytest.approx(per[key].mean()), key
    # brute force on the flattened valid pixels
    e = np.linalg.norm(preds - gts, axis=-1)
    assert s["epe"] == pytest.approx(e[valids].mean())
    assert s["epe_occ"] == pytest.approx(e[valids & occs].mean())
    assert s["num_images"] == 5 and s["num_pixels"] == int(valids.sum())
    assert s["num_pixels_occ"] + s["num_pixels_noc"] == s["num_pixels"]
    acc.reset()
    assert len(acc) == 0 and math.isnan(acc.summary()["epe"])


def test_image_without_valid_pixels_is_skipped_in_per_image_mean():
    pred, gt, valid = _two_images()
    valid[1] = False
    acc = FlowMetricAccumulator()
    acc.add(pred, gt, valid)
    s = acc.summary()
    assert s["epe_per_image"] == pytest.approx(10.0) and s["epe"] == pytest.approx(10.0)
    assert s["num_images"] == 2


def test_sintel_sample_zero_flow(flow_samples):
    from mlof.io import read_flow
    flow, valid = read_flow(flow_samples / "sintel/training/flow/alley_1/frame_0002.flo")
    # zero prediction: EPE is the mean ground-truth magnitude (2.98 px for this easy scene)
    assert epe(np.zeros_like(flow), flow, valid) == pytest.approx(2.98, abs=0.01)
    assert epe(flow, flow, valid) == 0.0
