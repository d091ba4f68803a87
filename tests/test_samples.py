"""mlof.samples: the bundled Sintel crop loads, matches its metadata and the original data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlof.samples import asset_path, sample_clip


def test_sample_clip_contents():
    clip = sample_clip()
    frames, flow, valid, occ = clip["frames"], clip["flow"], clip["valid"], clip["occ"]
    assert frames.shape == (4, 3, 224, 320) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 255 and frames.max() > 200
    assert flow.shape == (2, 224, 320) and flow.dtype == torch.float32
    assert valid.shape == occ.shape == (224, 320) and valid.dtype == occ.dtype == torch.bool
    assert clip["pair"] == (1, 2)
    stats = clip["meta"]["stats"]
    mag = flow.norm(dim=0)[valid]
    assert mag.mean().item() == pytest.approx(stats["mean_flow_px"], abs=1e-4)
    assert mag.mean().item() == pytest.approx(5.60, abs=0.01)
    assert 100 * occ.float().mean().item() == pytest.approx(8.62, abs=0.01)
    assert 99.5 < 100 * valid.float().mean().item() < 100
    assert "CC-BY 3.0" in clip["meta"]["licence"]
    # fresh tensors on each call
    clip["frames"] += 1
    assert sample_clip()["frames"].max() <= 255


def test_ground_truth_explains_the_pair():
    """Backward-warping frame 2 with the GT flow reproduces frame 1 far better than zero flow does."""
    clip = sample_clip()
    img1, img2 = clip["frames"][1:3]
    flow, ok = clip["flow"], clip["valid"] & ~clip["occ"]
    h, w = flow.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([(xs + flow[0]) / (w - 1) * 2 - 1, (ys + flow[1]) / (h - 1) * 2 - 1], dim=-1)
    warped = torch.nn.functional.grid_sample(img2[None], grid[None], align_corners=True)[0]
    inside = ok & (grid.abs() <= 1).all(-1)
    err_gt = (warped - img1).abs().mean(0)[inside].mean().item()
    err_zero = (img2 - img1).abs().mean(0)[inside].mean().item()
    assert err_gt < 0.4 * err_zero, (err_gt, err_zero)


def test_matches_original_crop(flow_samples):
    from mlof.io import read_flow, read_image
    clip = sample_clip()
    box = clip["meta"]["crop_box"]
    ys, xs = slice(box["top"], box["top"] + box["height"]), slice(box["left"], box["left"] + box["width"])
    sintel = flow_samples / "sintel" / "training"
    for i, t in enumerate(clip["meta"]["frames"]):
        full = read_image(sintel / "clean" / "alley_1" / f"frame_{t:04d}.png")
        assert (clip["frames"][i].permute(1, 2, 0).numpy() == full[ys, xs]).all()
    flow, valid = read_flow(sintel / "flow" / "alley_1" / "frame_0002.flo")
    got = clip["flow"].permute(1, 2, 0).numpy()
    v = clip["valid"].numpy()
    assert (got[v] == flow[ys, xs][v]).all()


def test_asset_path_missing():
    assert asset_path("clip.json").is_file()
    with pytest.raises(FileNotFoundError, match="nope"):
        asset_path("nope.png")
    assert np.isfinite(sample_clip()["flow"].numpy()).all()
