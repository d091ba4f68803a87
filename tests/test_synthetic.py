"""Synthetic generator: exact flow (warp check), determinism, domains, Sintel-tree round trip, CLI."""
from __future__ import annotations

import argparse
import dataclasses

import cv2
import numpy as np
import pytest
import torch

from mlof.data import DOMAINS, Domain, build_dataset, get_domain, render_sample, write_tree
from mlof.commands import synth as synth_cli
from mlof.data.textures import spectral_slope

SIZE = (80, 112)


def warp_stats(frames, flow, valid, occ):
    i1, i2 = frames[0].astype(np.float32), frames[1].astype(np.float32)
    h, w = flow.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    warped = cv2.remap(i2, xx + flow[..., 0], yy + flow[..., 1], cv2.INTER_LINEAR)
    ok = valid & ~occ
    return float(np.abs(i1 - warped).mean(-1)[ok].mean()), float(np.abs(i1 - i2).mean(-1)[ok].mean())


@pytest.fixture(scope="module")
def source():
    return [render_sample("source", SIZE, seed=0, index=k) for k in range(3)]


def test_warp_check_source(source):
    for s in source:
        err, zero = warp_stats(s["frames"], s["flows"][0], s["valids"][0], s["occs"][0])
        assert err < 0.25 * zero and err < 5.0
        assert s["frames"].shape == (2, *SIZE, 3) and s["flows"].shape == (1, *SIZE, 2)
        assert np.isfinite(s["flows"]).all() and s["valids"].dtype == bool and s["occs"].dtype == bool
        assert np.array_equal(s["frames"], np.rint(s["frames"])) and s["frames"].max() <= 255


def test_flow_is_exact_geometrically(source):
    """Where not occluded, frame t+1 at x + flow shows the same layer as frame t at x (nearest pixel)."""
    for s in source:
        f, v, o, lay = s["flows"][0], s["valids"][0], s["occs"][0], s["layers"]
        h, w = f.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        tx = np.clip(np.rint(xx + f[..., 0]), 0, w - 1).astype(int)
        ty = np.clip(np.rint(yy + f[..., 1]), 0, h - 1).astype(int)
        same = lay[1][ty, tx] == lay[0]
        assert same[v & ~o].mean() > 0.97
        assert (~same[v]).sum() >= 0 and o.mean() < 0.3


def test_exact_without_texture_interpolation_error():
    """Smooth textures: away from layer edges the warp residual is the rounding of the two frames to integer
    levels (E|r1 - r2| = 1/3 for independent uniform rounding errors), i.e. the flow is exact."""
    smooth = Domain.from_dict({"texture_alpha": (3.0, 3.0), "leaves": (0.0, 0.0), "texture_contrast": (40, 40),
                               "nonrigid": 3.0}, base="source")
    s = render_sample(smooth, SIZE, seed=3, index=0)
    i1, i2, f = s["frames"][0], s["frames"][1], s["flows"][0]
    ok = s["valids"][0] & ~s["occs"][0]
    h, w = f.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    err = np.abs(i1 - cv2.remap(i2, xx + f[..., 0], yy + f[..., 1], cv2.INTER_LINEAR)).mean(-1)
    edges = cv2.dilate((cv2.Laplacian(s["layers"][0].astype(np.float32), cv2.CV_32F) != 0).astype(np.uint8),
                       np.ones((5, 5), np.uint8)) > 0
    assert np.median(err[ok]) < 0.5 and err[ok & ~edges].mean() < 0.7
    assert np.abs(i1 - i2).mean(-1)[ok].mean() > 5.0          # and the frames really moved


def test_deterministic_and_order_independent():
    ds = build_dataset("synthetic", None, domain="source", seed=5, size=(40, 48), length=3)
    a2 = ds[2]
    for i in (1, 0):
        ds[i]
    b2 = ds[2]
    for k in ("img1", "img2", "flow", "valid", "occ"):
        assert torch.equal(a2[k], b2[k])
    other = build_dataset("synthetic", None, domain="source", seed=6, size=(48, 64), length=4)[2]
    assert not torch.equal(a2["img1"], other["img1"])
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, shuffle=False,
                                         collate_fn=lambda b: b[0])
    for i, s in enumerate(loader):
        assert torch.equal(s["flow"], ds[i]["flow"]) and torch.equal(s["img2"], ds[i]["img2"])


def test_clips():
    ds = build_dataset("synthetic", None, domain="target", seed=0, size=(48, 64), length=2, clip_length=4)
    s = ds[1]
    assert s["frames"].shape == (4, 3, 48, 64) and s["flows"].shape == (3, 2, 48, 64)
    assert s["valids"].shape == s["occs"].shape == (3, 48, 64)
    assert torch.equal(s["img1"], s["frames"][0]) and torch.equal(s["flow"], s["flows"][0])
    with pytest.raises(ValueError, match="clip_length"):
        build_dataset("synthetic", None, clip_length=3, crop=(32, 32))


def _stats(frames):
    img = frames[0]
    gray = img.mean(-1)
    balanced = img / img.mean(axis=(0, 1)) * img.mean()        # grey-world: chroma without the global cast
    lap = cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F)
    return {"sat": float(balanced.std(-1).mean()), "std": float(gray.std()), "hf": float(np.abs(lap).mean()),
            "slope": spectral_slope(gray), "rb": float(img[..., 0].mean() / max(img[..., 2].mean(), 1))}


def test_source_and_target_differ():
    n = 4
    src = [_stats(render_sample("source", (96, 96), 0, k)["frames"]) for k in range(n)]
    tgt = [_stats(render_sample("target", (96, 96), 0, k)["frames"]) for k in range(n)]
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))   # noqa: E731
    assert mean(tgt, "sat") < 0.5 * mean(src, "sat")
    assert mean(tgt, "hf") < 0.7 * mean(src, "hf")                 # smoother textures, fewer edges, blur
    assert mean(tgt, "rb") > 1.1 * mean(src, "rb")
    assert mean(tgt, "slope") > mean(src, "slope")
    mags = {d: np.mean([np.hypot(*render_sample(d, (96, 96), 0, k)["flows"][0].transpose(2, 0, 1)).mean()
                        for k in range(n)]) for d in ("source", "target")}
    assert mags["target"] > 1.3 * mags["source"]


def test_domain_custom_and_errors(tmp_path):
    d = get_domain({"base": "target", "noise_std": [0, 0], "name": "quiet"})
    assert d.noise_std == (0.0, 0.0) and d.blur_sigma == DOMAINS["target"].blur_sigma and d.name == "quiet"
    y = tmp_path / "dom.yaml"
    y.write_text("base: source\nnum_objects: [1, 2]\nobject_translation: 5.0\n")
    dy = get_domain(y)
    assert dy.num_objects == (1, 2) and dy.name == "dom" and dy.saturation == DOMAINS["source"].saturation
    with pytest.raises(ValueError, match="unknown domain parameter"):
        Domain.from_dict({"sparkle": 1})
    with pytest.raises(ValueError, match="low <= high"):
        Domain(noise_std=(3.0, 1.0))
    with pytest.raises(ValueError, match="unknown domain"):
        get_domain("mars")


def test_write_tree_reads_back_as_sintel(tmp_path):
    root = write_tree(tmp_path / "tree", "target", n=2, size=(40, 56), seed=4, clip_length=3)
    ds = build_dataset("sintel", root, pass_="final")
    assert len(ds) == 4 and ds.meta(1)["scene"] == "scene_0000" and ds.meta(1)["frame"] == 2
    s = render_sample("target", (40, 56), seed=4, index=1, clip_length=3)
    got = ds[3]                                  # scene_0001, pair 2 -> 3
    np.testing.assert_array_equal(got["img1"].permute(1, 2, 0).numpy(), s["frames"][1])
    np.testing.assert_array_equal(got["img2"].permute(1, 2, 0).numpy(), s["frames"][2])
    np.testing.assert_array_equal(got["valid"].numpy(), s["valids"][1])
    np.testing.assert_array_equal(got["occ"].numpy(), s["occs"][1])
    v = s["valids"][1]
    np.testing.assert_array_equal(got["flow"].permute(1, 2, 0).numpy()[v], s["flows"][1][v])
    clean = build_dataset("sintel", root, pass_="clean")[0]
    np.testing.assert_array_equal(clean["img1"].permute(1, 2, 0).numpy(),
                                  render_sample("target", (40, 56), 4, 0, 3)["clean"][0])
    assert (root / "domain.json").is_file()


def test_synth_cli_help_and_run(tmp_path, capsys):
    parser = synth_cli.add_arguments(argparse.ArgumentParser(prog="mlof synth"))
    text = parser.format_help()
    for f in dataclasses.fields(Domain):
        if f.name != "name":
            assert f.name in text, f.name
    for opt in ("--out", "--domain", "--scenes", "--size", "--clip-length", "--seed", "--set", "--overwrite",
                "--quiet"):
        assert opt in text
    out = tmp_path / "cli"
    args = parser.parse_args(["--out", str(out), "--domain", "source", "--scenes", "2", "--size", "32", "48",
                              "--set", "noise_std=1,2", "--set", "blur_sigma=0.5", "--quiet"])
    assert synth_cli.run(args) == 0
    ds = build_dataset("sintel", out, pass_="final")
    assert len(ds) == 2 and ds[0]["img1"].shape == (3, 32, 48)
    assert "noise_std" in (out / "domain.json").read_text()
    assert synth_cli.run(args) == 2                      # non-empty --out without --overwrite
    assert "exists" in capsys.readouterr().err
    bad = parser.parse_args(["--out", str(tmp_path / "x"), "--set", "glitter=1"])
    assert synth_cli.run(bad) == 2
    assert synth_cli.run(parser.parse_args(["--scenes", "1"])) == 2       # --out missing
    assert "--out is required" in capsys.readouterr().err
