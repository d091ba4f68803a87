"""mlof.losses on real frame pairs with ground truth (shared flow samples, downsampled to stay fast).

How the ground truth is scored: every recipe is evaluated on the forward GT flow alone (forward-only scoring)
and bidirectionally, with a backward flow derived from the GT by forward splatting (``reverse_flow``), its
holes filled. KITTI's GT is sparse: its invalid pixels are filled by harmonic interpolation (valid pixels
fixed), the smoothest completion, so the smoothness terms judge the motion rather than the filling.
"Noisy" adds i.i.d. Gaussian noise of 1 px to both flows. Zero flow is zero in both directions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlof import losses as L

RECIPES = ("mlof", "arflow", "uflow", "smurf", "upflow")
DOWNSAMPLE = 4
NOISE_PX = 1.0
SAMPLES = {
    "sintel_clean": ("sintel/training/clean/alley_1/frame_0002.png", "sintel/training/clean/alley_1/frame_0003.png",
                     "sintel/training/flow/alley_1/frame_0002.flo"),
    "sintel_final": ("sintel/training/final/alley_1/frame_0002.png", "sintel/training/final/alley_1/frame_0003.png",
                     "sintel/training/flow/alley_1/frame_0002.flo"),
    "middlebury": ("middlebury/other-data/RubberWhale/frame10.png", "middlebury/other-data/RubberWhale/frame11.png",
                   "middlebury/other-gt-flow/RubberWhale/flow10.flo"),
    "kitti": ("kitti2015/training/image_2/000000_10.png", "kitti2015/training/image_2/000000_11.png",
              "kitti2015/training/flow_noc/000000_10.png"),
}


pytestmark = pytest.mark.usefixtures("single_thread_module")


def _read_image(path: Path) -> torch.Tensor:
    from mlof import io
    return torch.from_numpy(np.ascontiguousarray(io.read_image(path))).permute(2, 0, 1)[None].float()


def _read_flow(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from mlof import io
    flow, valid = io.read_flow(path)
    flow = torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1)[None].float()
    valid = torch.from_numpy(np.ascontiguousarray(valid))[None]
    return torch.where(valid[:, None], flow, torch.zeros_like(flow)), valid


def _harmonic_fill(flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Fill pixels where valid == 0 with the solution of Laplace's equation (valid pixels fixed, Neumann border).

    flow: 1 x 2 x H x W; valid: 1 x H x W bool. One sparse solve for both channels.
    """
    if bool(valid.all()):
        return flow
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve
    h, w = valid.shape[-2:]
    known = valid[0].numpy().ravel()
    values = flow[0].reshape(2, -1).double().numpy()
    unknown = np.flatnonzero(~known)
    col_of = -np.ones(h * w, dtype=np.int64)
    col_of[unknown] = np.arange(unknown.size)
    ys, xs = np.divmod(unknown, w)
    rows, cols, data = [], [], []
    rhs = np.zeros((unknown.size, 2))
    degree = np.zeros(unknown.size)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        degree += inside
        nb = (ny * w + nx)[inside]
        eq = np.flatnonzero(inside)
        is_unknown = col_of[nb] >= 0
        rows.append(eq[is_unknown])
        cols.append(col_of[nb][is_unknown])
        data.append(-np.ones(int(is_unknown.sum())))
        np.add.at(rhs, eq[~is_unknown], values[:, nb[~is_unknown]].T)
    rows.append(np.arange(unknown.size))
    cols.append(np.arange(unknown.size))
    data.append(degree)
    a = coo_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(unknown.size, unknown.size)).tocsc()
    solution = spsolve(a, rhs)
    filled = values.copy()
    filled[:, unknown] = solution.T
    return torch.from_numpy(filled).float().view(1, 2, h, w)


@pytest.fixture(scope="module")
def pairs(flow_samples: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Each sample downsampled by DOWNSAMPLE: images, GT fw/bw flows, their noisy versions."""
    out = {}
    for name, (a, b, f) in SAMPLES.items():
        img1, img2 = _read_image(flow_samples / a), _read_image(flow_samples / b)
        flow, valid = _read_flow(flow_samples / f)
        size = (img1.shape[-2] // DOWNSAMPLE, img1.shape[-1] // DOWNSAMPLE)
        img1, img2 = F.interpolate(img1, size, mode="area"), F.interpolate(img2, size, mode="area")
        gt, v = L.downsample_gt(flow, valid.float(), size)
        gt = _harmonic_fill(gt, v > 0)
        bw, filled = L.reverse_flow(gt)
        bw = _harmonic_fill(bw, filled[:, 0] > 0)
        g = torch.Generator().manual_seed(0)
        out[name] = {"img1": img1, "img2": img2, "gt": gt, "bw": bw,
                     "noisy": gt + NOISE_PX * torch.randn(gt.shape, generator=g),
                     "noisy_bw": bw + NOISE_PX * torch.randn(gt.shape, generator=g)}
    return out


def _scores(loss: L.UnsupervisedLoss, p: dict[str, torch.Tensor], bidirectional: bool) -> dict[str, float]:
    zero = torch.zeros_like(p["gt"])
    cases = {"gt": (p["gt"], p["bw"]), "zero": (zero, zero), "noisy": (p["noisy"], p["noisy_bw"])}
    return {k: float(loss(p["img1"], p["img2"], fw, bw if bidirectional else None).total)
            for k, (fw, bw) in cases.items()}


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("sample", list(SAMPLES))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward_only", "bidirectional"])
def test_gt_flow_scores_better_than_zero_and_noisy(pairs, recipe, sample, bidirectional):
    s = _scores(L.build_loss(recipe), pairs[sample], bidirectional)
    assert all(np.isfinite(v) for v in s.values()), s
    assert s["gt"] < s["zero"], f"{recipe} on {sample}: GT {s['gt']:.4f} not below zero flow {s['zero']:.4f}"
    assert s["gt"] < s["noisy"], f"{recipe} on {sample}: GT {s['gt']:.4f} not below GT+noise {s['noisy']:.4f}"


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def test_occlusion_from_gt_overlaps_sintel_occlusions(flow_samples: Path):
    """Full resolution alley_1 0002: fb check with the splatted backward flow, and the range map."""
    root = flow_samples / "sintel/training"
    flow, _ = _read_flow(root / "flow/alley_1/frame_0002.flo")
    occ_gt = torch.from_numpy(_read_image(root / "occlusions/alley_1/frame_0002.png")[0, 0].numpy() > 127)
    bw, _ = L.reverse_flow(flow)
    p = float(occ_gt.float().mean())
    results = {}
    for name, mask in (("fb", L.occlusion_fb(flow, bw)[0, 0]), ("range_map", L.occlusion_range_map(bw, 0.2)[0, 0])):
        q = float(mask.mean())
        chance = p * q / (p + q - p * q)  # expected IoU of an independent mask of the same density
        results[name] = (_iou(mask, occ_gt), chance)
    fb_iou, fb_chance = results["fb"]
    rm_iou, rm_chance = results["range_map"]
    assert fb_iou > 0.2 and fb_iou > 10 * fb_chance, results
    assert rm_iou > 4 * rm_chance, results
