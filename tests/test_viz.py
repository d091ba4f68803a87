"""mlof.viz: the exact Middlebury wheel, known colours, NaN safety, torch/numpy agreement, panels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlof.viz import (KITTI_ERROR_COLORS, color_key, colorwheel, error_map, flow_panel, flow_to_rgb, series_plot,
                      to_tensorboard)


def test_colorwheel_is_the_standard_55_colours():
    w = colorwheel()
    assert w.shape == (55, 3) and w.dtype == np.uint8
    # segment starts: red, yellow, green, cyan, blue, magenta (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6)
    starts = {0: (255, 0, 0), 15: (255, 255, 0), 21: (0, 255, 0), 25: (0, 255, 255), 36: (0, 0, 255),
              49: (255, 0, 255)}
    for i, rgb in starts.items():
        assert tuple(w[i]) == rgb, i
    assert tuple(w[1]) == (255, 17, 0)        # floor(255 * 1/15)
    assert tuple(w[16]) == (213, 255, 0)      # 255 - floor(255 * 1/6)
    assert tuple(w[54]) == (255, 0, 43)       # 255 - floor(255 * 5/6)


def _one_row(*vectors):
    return np.array([list(vectors)], np.float64)        # 1 x K x 2


def test_known_colours():
    img = flow_to_rgb(_one_row([1, 0], [0, 1], [0.5, 0], [2, 0], [0, 0]), max_radius=1.0)
    assert img.shape == (1, 5, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 0, 0]            # rightward, full radius: red
    # downward: angle position 13.5 between wheel[13] = (255, 221, 0) and wheel[14] = (255, 238, 0)
    assert img[0, 1].tolist() == [255, 229, 0]
    assert img[0, 2].tolist() == [255, 127, 127]        # half radius: halfway to white
    assert img[0, 3].tolist() == [191, 0, 0]            # beyond max_radius: darkened x 0.75
    assert img[0, 4].tolist() == [255, 255, 255]        # zero flow: white
    assert (flow_to_rgb(np.zeros((3, 4, 2))) == 255).all()


def test_auto_radius_is_largest_known_magnitude():
    auto = flow_to_rgb(_one_row([3, 0], [0, -1.5], [-3, 0]))
    fixed = flow_to_rgb(_one_row([3, 0], [0, -1.5], [-3, 0]), max_radius=3.0)
    assert (auto == fixed).all()
    assert auto[0, 0].tolist() == [255, 0, 0]


def test_nan_inf_and_unknown_are_black_and_do_not_disturb_others():
    flow = _one_row([1, 0], [np.nan, 0], [np.inf, 1], [1e10, 0], [0, -np.inf])
    img = flow_to_rgb(flow)
    assert img[0, 0].tolist() == [255, 0, 0]            # normalised by the only known vector
    assert (img[0, 1:] == 0).all()
    valid = np.array([[False, True, True, True, True]])
    assert (flow_to_rgb(flow, valid=valid)[0, 0] == 0).all()
    with pytest.raises(ValueError, match="max_radius"):
        flow_to_rgb(flow, max_radius=0)


def test_torch_and_numpy_agree_and_batches():
    rng = np.random.default_rng(0)
    f = rng.normal(0, 5, (2, 6, 7, 2)).astype(np.float32)
    np_img = flow_to_rgb(f[0])
    t_img = flow_to_rgb(torch.from_numpy(f[0]).permute(2, 0, 1))
    assert np_img.shape == (6, 7, 3) and (np_img == t_img).all()
    batch = flow_to_rgb(torch.from_numpy(f).permute(0, 3, 1, 2))
    assert batch.shape == (2, 6, 7, 3)
    assert (batch[1] == flow_to_rgb(f[1])).all()        # each image normalised on its own
    assert (flow_to_rgb(f) == batch).all()


def test_error_map_kitti_scale_and_linear():
    gt = np.zeros((1, 4, 2))
    gt[..., 0] = 10                                     # |gt| = 10 (5 %: 0.5 px)
    gt[0, 3, 0] = 100                                   # |gt| = 100 (5 %: 5 px)
    pred = gt.copy()
    pred[0, 1, 0] += 0.2                                # min(0.2/3, 0.2/0.5) = 0.067 -> bin [0.0625, 0.125)
    pred[0, 2, 0] += 4                                  # min(4/3, 4/0.5) = 1.33 -> bin [1, 2): an Fl outlier
    pred[0, 3, 0] += 4                                  # min(4/3, 4/5) = 0.8 -> bin [0.5, 1): not an outlier
    valid = np.array([[True, True, True, True]])
    img = error_map(pred, gt, valid)
    assert img[0, 0].tolist() == KITTI_ERROR_COLORS[0, 2:].tolist() == [49, 54, 149]
    assert img[0, 1].tolist() == [69, 117, 180]
    assert img[0, 2].tolist() == [254, 224, 144]
    assert img[0, 3].tolist() == [224, 243, 248]
    valid[0, 3] = False
    img = error_map(pred, gt, valid)
    assert img[0, 3].tolist() == [0, 0, 0]
    lin = error_map(pred, gt, valid, max_error=4.0, scale="linear")
    assert lin[0, 3].tolist() == [0, 0, 0] and lin[0, 0].tolist() != lin[0, 2].tolist()
    assert (error_map(pred, gt, valid, max_error=2.0, scale="linear")[0, 2] == lin[0, 2]).all()  # clipped top
    t = error_map(torch.from_numpy(pred).permute(2, 0, 1), torch.from_numpy(gt).permute(2, 0, 1), valid)
    assert (t == img).all()
    with pytest.raises(ValueError, match="scale"):
        error_map(pred, gt, scale="log")


def test_panel_layout_and_labels():
    h, w = 24, 32
    frames = torch.rand(2, 3, h, w) * 255
    flow = torch.randn(2, h, w) * 3
    gt = flow + 0.5
    full = flow_panel(frames, flow, gt, labels=False, gap=2)
    assert full.shape == (2 * h + 2, 3 * w + 4, 3) and full.dtype == np.uint8
    assert (full[h + 2:, :w] == flow_to_rgb(flow, max_radius=float(gt.norm(dim=0).max()))).all()
    assert (full[:h, 2 * w + 4:] == color_key(h, w, labels=False)).all()   # the key, not an empty cell
    no_gt = flow_panel([f.permute(1, 2, 0).numpy() for f in frames], flow, labels=False)
    assert no_gt.shape == (2 * h + 2, 2 * w + 2, 3)
    assert (no_gt[h + 2:, w + 2:] == color_key(h, w, labels=False)).all()
    adapted = flow_panel(frames, flow, gt, before=flow * 0.5, labels=False)
    assert adapted.shape == (2 * h + 2, 4 * w + 6, 3)   # frames, gt, key / before, after, two errors
    assert (adapted[h + 2:, :w] == flow_to_rgb(flow * 0.5, max_radius=float(gt.norm(dim=0).max()))).all()
    assert flow_panel(frames, flow, before=flow * 0.5).shape == (2 * h + 2, 3 * w + 4, 3)
    for panel in (full, no_gt, adapted):                # no empty (all-black) cell
        for r in range(2):
            for c in range((panel.shape[1] + 2) // (w + 2)):
                cell = panel[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w]
                assert cell.any(), (r, c)
    big = torch.rand(3, 2 * h, 2 * w) * 255             # frames of another size are resized
    assert flow_panel([big, big], flow, gt).shape == full.shape
    labelled = flow_panel(frames, flow, gt, labels=True)
    assert labelled.shape == full.shape and (labelled != full).any()


def test_to_tensorboard():
    img = np.zeros((5, 6, 3), np.uint8)
    img[..., 1] = 9
    t = to_tensorboard(img)
    assert t.shape == (3, 5, 6) and t.dtype == torch.uint8 and (t[1] == 9).all()
    assert to_tensorboard(np.stack([img, img])).shape == (2, 3, 5, 6)
    with pytest.raises(ValueError):
        to_tensorboard(img.astype(np.float32))


def _caption_columns(tile: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, last) column of the white text and of its dark outline in a captioned grey tile."""
    text = np.where((tile > 200).all(-1).any(0))[0]
    dark = np.where((tile < 60).all(-1).any(0))[0]
    return (int(text.min()), int(text.max())), (int(dark.min()), int(dark.max()))


CAPTION_CHECK = """
import sys, numpy as np, cv2
from mlof.viz import _label
for size in [(120, 400), (436, 1024), (60, 80)]:
    tile = np.full(size + (3,), 128, np.uint8)
    out = _label(tile, "prediction (EPE 12.34 px)")
    text = np.where((out > 200).all(-1).any(0))[0]
    dark = np.where((out < 60).all(-1).any(0))[0]
    # the outline surrounds the text by about one pixel on both ends (a thicker outline stroke is wider in
    # OpenCV 5 and would stick out on the right by 8-17 px)
    assert abs(dark.min() - (text.min() - 1)) <= 2 and abs(dark.max() - (text.max() + 1)) <= 2, (size, text, dark)
print(cv2.__version__)
"""


def test_caption_outline_has_the_text_width():
    import cv2

    from mlof.viz import _label
    tile = np.full((120, 400, 3), 128, np.uint8)
    (t0, t1), (d0, d1) = _caption_columns(_label(tile, "prediction (EPE 12.34 px)"))
    assert abs(d0 - (t0 - 1)) <= 2 and abs(d1 - (t1 + 1)) <= 2, ((t0, t1), (d0, d1), cv2.__version__)
    assert (tile == 128).all()                           # the input tile is not drawn on


@pytest.mark.slow
def test_caption_outline_on_another_opencv_major():
    """MLOF_OTHER_OPENCV=<dir>: a `pip install --target` of another OpenCV major (e.g. 4.10 when 5 is
    installed); the same check runs there in a subprocess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    other = os.environ.get("MLOF_OTHER_OPENCV")
    if not other:
        pytest.skip("set MLOF_OTHER_OPENCV to a folder with another OpenCV major (pip install --target)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([other, str(root)])}
    out = subprocess.run([sys.executable, "-c", CAPTION_CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_series_plot():
    img = series_plot({"before": [3.0, 2.5, None, 4.0], "after": [2.5, 2.0, 1.0, float("nan")]}, title="t")
    assert img.shape == (420, 760, 3) and img.dtype == np.uint8
    blue = (np.abs(img.astype(int) - [31, 119, 180]).sum(-1) < 10).sum()
    orange = (np.abs(img.astype(int) - [255, 127, 14]).sum(-1) < 10).sum()
    assert blue > 50 and orange > 50                       # both series drawn
    assert series_plot({"x": []}).shape == (420, 760, 3)   # nothing to draw is still a picture
    with pytest.raises(ValueError, match="series"):
        series_plot({})
