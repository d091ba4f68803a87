"""mlof.io: the shared real samples, round trips of the three flow formats, and malformed files."""
from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlof.io import (FlowFileNotFoundError, FlowFormatError, read_flow, read_image, read_pfm, write_flow,
                     write_image, write_pfm)


# ------------------------------------------------------------------------------------------ real shared samples
@pytest.mark.parametrize("rel, shape, valid_pct, mean_mag, max_mag", [
    ("sintel/training/flow/alley_1/frame_0002.flo", (436, 1024), 100.0, 2.98, 10.64),
    ("kitti2015/training/flow_noc/000000_10.png", (375, 1242), 16.2, None, None),
    ("middlebury/other-gt-flow/RubberWhale/flow10.flo", (388, 584), 98.4, None, None),
    ("flyingchairs/data/00001_flow.flo", (50, 50), 100.0, None, None),
])
def test_read_shared_flows(flow_samples: Path, rel, shape, valid_pct, mean_mag, max_mag):
    flow, valid = read_flow(flow_samples / rel)
    assert flow.shape == shape + (2,) and flow.dtype == np.float32
    assert valid.shape == shape and valid.dtype == bool
    assert 100 * valid.mean() == pytest.approx(valid_pct, abs=0.05)
    assert np.isfinite(flow).all() and (flow[~valid] == 0).all()
    mag = np.linalg.norm(flow[valid], axis=1)
    assert mag.max() < 1e3   # the 1e9 sentinels are gone
    if mean_mag is not None:
        assert mag.mean() == pytest.approx(mean_mag, abs=0.01)
        assert mag.max() == pytest.approx(max_mag, abs=0.01)


def test_kitti_png_values(flow_samples: Path):
    path = flow_samples / "kitti2015/training/flow_noc/000000_10.png"
    flow, valid = read_flow(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    y, x = np.argwhere(valid)[len(np.argwhere(valid)) // 2]
    assert flow[y, x, 0] == (int(bgr[y, x, 2]) - 32768) / 64      # u from R (OpenCV gives BGR)
    assert flow[y, x, 1] == (int(bgr[y, x, 1]) - 32768) / 64
    assert (valid == (bgr[:, :, 0] > 0)).all()
    # KITTI's first pair moves forward: flow points outward, mostly to the left in the left half.
    assert np.median(flow[:, :400][valid[:, :400]][:, 0]) < -5


@pytest.mark.parametrize("rel, shape", [
    ("sintel/training/clean/alley_1/frame_0002.png", (436, 1024)),
    ("sintel/training/occlusions/alley_1/frame_0002.png", (436, 1024)),   # 8-bit gray
    ("kitti2015/training/image_2/000000_10.png", (375, 1242)),
    ("middlebury/other-data/RubberWhale/frame10.png", (388, 584)),
    ("flyingchairs/data/00001_img1.ppm", (50, 50)),
])
def test_read_shared_images(flow_samples: Path, rel, shape):
    img = read_image(flow_samples / rel)
    assert img.shape == shape + (3,) and img.dtype == np.uint8
    ref = cv2.imread(str(flow_samples / rel), cv2.IMREAD_COLOR)
    assert (img == ref[:, :, ::-1]).all()    # RGB, not BGR


def test_read_image_rgb_order_and_depths(tmp_path: Path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200   # pure red
    write_image(tmp_path / "a.png", rgb)
    assert (read_image(tmp_path / "a.png") == rgb).all()
    assert (read_image(str(tmp_path / "a.png")) == rgb).all()            # str paths too
    write_image(tmp_path / "a.ppm", rgb)
    assert (read_image(tmp_path / "a.ppm") == rgb).all()
    write_image(tmp_path / "a.jpg", rgb)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - rgb).max() <= 3
    # 16-bit RGB PNG (Pillow would mangle it): 65535 -> 255, 32896 -> 128, blue channel kept apart.
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 2] = 65535
    bgr16[..., 0] = 32896
    cv2.imwrite(str(tmp_path / "b16.png"), bgr16)
    img = read_image(tmp_path / "b16.png")
    assert img[0, 0].tolist() == [255, 0, 128]
    # gray, gray 16-bit and RGBA
    cv2.imwrite(str(tmp_path / "g.png"), np.full((2, 3), 7, np.uint8))
    assert read_image(tmp_path / "g.png").shape == (2, 3, 3) and (read_image(tmp_path / "g.png") == 7).all()
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((2, 3), 257 * 9, np.uint16))
    assert (read_image(tmp_path / "g16.png") == 9).all()
    bgra = np.dstack([np.full((2, 2), 1, np.uint8), np.full((2, 2), 2, np.uint8), np.full((2, 2), 3, np.uint8),
                      np.full((2, 2), 4, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [3, 2, 1]


# ------------------------------------------------------------------------------------------------- round trips
def _random_flow(h=13, w=17, seed=0):
    rng = np.random.default_rng(seed)
    flow = (rng.standard_normal((h, w, 2)) * 40).astype(np.float32)
    valid = rng.random((h, w)) > 0.2
    return flow, valid


@pytest.mark.parametrize("ext", [".flo", ".pfm", ".png"])
def test_round_trip(tmp_path: Path, ext):
    flow, valid = _random_flow()
    path = tmp_path / f"f{ext}"
    write_flow(path, flow, valid)
    back, v = read_flow(path)
    assert back.shape == flow.shape and back.dtype == np.float32
    assert (v == valid).all()
    assert (back[~valid] == 0).all()
    tol = 1 / 128 + 1e-6 if ext == ".png" else 0   # KITTI: nearest 1/64 px step
    assert np.abs(back[valid] - flow[valid]).max() <= tol
    # without a mask everything is valid
    write_flow(path, flow)
    assert read_flow(path)[1].all()
    assert not list(tmp_path.glob(".*.tmp"))     # atomic writes leave no temporaries


def test_round_trip_kitti_within_one_64th_and_range(tmp_path: Path):
    flow = np.array([[[511.98, -512.0], [0.0078, -0.0078]]], np.float32)
    write_flow(tmp_path / "k.png", flow)
    back, valid = read_flow(tmp_path / "k.png")
    assert valid.all() and np.abs(back - flow).max() <= 1 / 128
    with pytest.raises(ValueError, match="outside the KITTI PNG range"):
        write_flow(tmp_path / "k.png", np.array([[[600.0, 0.0]]], np.float32))
    write_flow(tmp_path / "k.png", np.array([[[600.0, -900.0]]], np.float32), clip=True)
    back, _ = read_flow(tmp_path / "k.png")
    assert back[0, 0].tolist() == [511.984375, -512.0]
    # an out-of-range vector at an invalid pixel is fine (it is not stored)
    write_flow(tmp_path / "k.png", np.array([[[600.0, 0.0]]], np.float32), np.array([[False]]))


def test_pfm_both_endians_and_bottom_to_top(tmp_path: Path):
    data = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    for scale, dt in ((-1.0, "<f4"), (1.0, ">f4")):
        p = tmp_path / f"e{scale}.pfm"
        p.write_bytes(b"PF\n3 2\n%g\n" % scale + data[::-1].astype(dt).tobytes())
        assert (read_pfm(p) == data).all()
        flow, valid = read_flow(p)
        assert (flow == data[:, :, :2]).all() and valid.all()
    p = tmp_path / "d.pfm"
    write_pfm(p, data[:, :, 0])
    assert read_pfm(p).shape == (2, 3, 1) and (read_pfm(p)[:, :, 0] == data[:, :, 0]).all()
    with pytest.raises(FlowFormatError, match=r"d\.pfm.*1 channel"):
        read_flow(p)


def test_write_rejects_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="flow"):
        write_flow(tmp_path / "a.flo", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="valid"):
        write_flow(tmp_path / "a.flo", np.zeros((4, 4, 2)), np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="NaN"):
        write_flow(tmp_path / "a.flo", np.full((4, 4, 2), np.nan))
    with pytest.raises(FlowFormatError, match="extension"):
        write_flow(tmp_path / "a.npy", np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_old_file(tmp_path: Path):
    flow, valid = _random_flow()
    path = tmp_path / "k.png"
    write_flow(path, flow, valid)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_flow(path, flow * 100, valid)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------- malformed files
def _flo(w, h, payload_floats=None, tag=b"PIEH"):
    n = w * h * 2 if payload_floats is None else payload_floats
    return tag + struct.pack("<ii", w, h) + np.zeros(max(n, 0), "<f4").tobytes()


def _png16(tmp_path: Path) -> bytes:
    cv2.imwrite(str(tmp_path / "ok16.png"), np.full((8, 8, 3), 32768, np.uint16))
    return (tmp_path / "ok16.png").read_bytes()


MALFORMED = {
    "flo_bad_magic": ("x.flo", lambda t: _flo(4, 4, tag=b"XXXX"), "magic"),
    "flo_truncated_header": ("x.flo", lambda t: b"PIEH\x04\x00", "truncated"),
    "flo_truncated_data": ("x.flo", lambda t: _flo(4, 4, payload_floats=20), "truncated"),
    "flo_trailing": ("x.flo", lambda t: _flo(4, 4) + b"\x00" * 8, "trailing"),
    "flo_negative_size": ("x.flo", lambda t: _flo(-4, 4, payload_floats=0), "absurd"),
    "flo_zero_size": ("x.flo", lambda t: _flo(0, 4, payload_floats=0), "absurd"),
    "flo_huge_size": ("x.flo", lambda t: _flo(1_000_000, 1_000_000, payload_floats=8), "truncated"),
    "flo_nan": ("x.flo", lambda t: b"PIEH" + struct.pack("<ii", 1, 1) + np.array([np.nan, 0], "<f4").tobytes(),
                "NaN"),
    "pfm_bad_magic": ("x.pfm", lambda t: b"P6\n1 1\n-1\n" + b"\0" * 12, "magic"),
    "pfm_bad_header": ("x.pfm", lambda t: b"PF\nab cd\n-1\n" + b"\0" * 12, "header"),
    "pfm_truncated": ("x.pfm", lambda t: b"PF\n4 4\n-1\n" + b"\0" * 12, "truncated"),
    "pfm_huge": ("x.pfm", lambda t: b"PF\n900000 900000\n-1\n" + b"\0" * 12, "truncated"),
    "pfm_negative": ("x.pfm", lambda t: b"PF\n-3 2\n-1\n" + b"\0" * 72, "absurd"),
    "pfm_zero_scale": ("x.pfm", lambda t: b"PF\n1 1\n0\n" + b"\0" * 12, "scale"),
    "pfm_nan": ("x.pfm", lambda t: b"PF\n1 1\n-1\n" + np.array([np.nan, 0, 0], "<f4").tobytes(), "NaN"),
    "pfm_empty": ("x.pfm", lambda t: b"", "header"),
    "png_not_png": ("x.png", lambda t: b"this is not a png at all" * 3, "signature"),
    "png_8bit": ("x.png", lambda t: cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes(), "16-bit"),
    "png_gray16": ("x.png", lambda t: cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes(), "16-bit"),
    "png_truncated": ("x.png", lambda t: _png16(t)[:-30], "decode"),
    "png_no_ihdr": ("x.png", lambda t: _png16(t)[:20], "truncated"),
    "png_huge_header": ("x.png", lambda t: (lambda b: b[:16] + struct.pack(">II", 60000, 60000) + b[24:])(_png16(t)),
                        "absurd"),
    "unknown_extension": ("x.npy", lambda t: b"\0" * 16, "extension"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_flow_raises_naming_file(tmp_path: Path, kind):
    name, make, problem = MALFORMED[kind]
    path = tmp_path / f"{kind}_{name}"
    path.write_bytes(make(tmp_path))
    tracemalloc.start()
    try:
        with pytest.raises(FlowFormatError) as info:
            read_flow(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert str(path) in msg, msg
    assert problem.lower() in msg.lower(), msg
    assert isinstance(info.value, ValueError)
    assert peak < 50e6       # a lying header never leads to a big allocation


def test_missing_file(tmp_path: Path):
    for fn, name in ((read_flow, "nope.flo"), (read_image, "nope.png"), (read_pfm, "nope.pfm")):
        with pytest.raises(FlowFileNotFoundError) as info:
            fn(tmp_path / name)
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, FlowFormatError)
        assert str(tmp_path / name) in str(info.value)
    (tmp_path / "dir.flo").mkdir()
    with pytest.raises(FlowFormatError, match="regular file"):
        read_flow(tmp_path / "dir.flo")


@pytest.mark.parametrize("kind, payload", [
    ("ppm_truncated", b"P6\n10 10\n255\n" + b"\0" * 30),
    ("ppm_huge", b"P6\n99999 99999\n255\n" + b"\0" * 30),
    ("ppm_garbage", b"P6\nxx yy\n255\n" + b"\0" * 30),
    ("png_garbage", b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
    ("jpg_garbage", b"\xff\xd8\xff" + b"\0" * 40),
])
def test_malformed_image_raises_naming_file(tmp_path: Path, kind, payload):
    ext = {"ppm": ".ppm", "png": ".png", "jpg": ".jpg"}[kind.split("_")[0]]
    path = tmp_path / f"{kind}{ext}"
    path.write_bytes(payload)
    with pytest.raises(FlowFormatError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path):
    write_image(tmp_path / "a.jpg", np.full((32, 32, 3), 99, np.uint8))
    raw = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FlowFormatError, match=r"cut\.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")


def test_write_flow_accepts_torch_layout(tmp_path: Path):
    import torch
    flow, valid = _random_flow()
    write_flow(tmp_path / "t.flo", torch.from_numpy(flow).permute(2, 0, 1), torch.from_numpy(valid))
    back, v = read_flow(tmp_path / "t.flo")
    assert (back[valid] == flow[valid]).all() and (v == valid).all()
    (tmp_path / "t.flo").rename(tmp_path / "U.FLO")     # extensions are case-insensitive
    assert read_flow(tmp_path / "U.FLO")[0].shape == flow.shape
