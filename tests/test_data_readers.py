"""Dataset readers: the shared real samples (official layouts) and fake trees for the other layouts."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mlof.data import DatasetLayoutError, build_dataset, build_loader, collate
from mlof.io import read_flow, read_image, write_flow, write_image, write_pfm


def _check_sample(s, h, w, gt=True):
    assert s["img1"].shape == (3, h, w) and s["img1"].dtype == torch.float32
    assert s["img2"].shape == (3, h, w)
    assert 0 <= float(s["img1"].min()) and float(s["img1"].max()) <= 255
    if gt:
        assert s["flow"].shape == (2, h, w) and s["valid"].shape == (h, w) and s["valid"].dtype == torch.bool
    else:
        assert "flow" not in s and "valid" not in s
    assert set(s["meta"]) == {"dataset", "variant", "scene", "frame", "index", "paths"}


def _same_flow(sample, path):
    flow, valid = read_flow(path)
    assert np.array_equal(sample["valid"].numpy() & valid, sample["valid"].numpy())
    got = sample["flow"].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got[valid], flow[valid])   # the file's values, also where `valid` is False
    assert not got[~valid].any()      # zero only where the file stores no value


# ---------------------------------------------------------------------------------------------- shared samples
def test_sintel_sample(flow_samples):
    root = flow_samples / "sintel"
    ds = build_dataset("sintel", root)
    assert len(ds) == 1                       # 4 frames but only frame_0002.flo: pair 2 -> 3
    s = ds[0]
    _check_sample(s, 436, 1024)
    assert s["meta"]["scene"] == "alley_1" and s["meta"]["frame"] == 2 and s["meta"]["variant"] == "clean"
    _same_flow(s, root / "training/flow/alley_1/frame_0002.flo")
    occ = read_image(root / "training/occlusions/alley_1/frame_0002.png")[..., 0] > 127
    assert np.array_equal(s["occ"].numpy(), occ) and 0.01 < occ.mean() < 0.04
    np.testing.assert_array_equal(s["img1"].permute(1, 2, 0).numpy(),
                                  read_image(root / "training/clean/alley_1/frame_0002.png"))
    both = build_dataset("sintel", root, pass_="both")
    assert len(both) == 2 and [both.meta(i)["variant"] for i in range(2)] == ["clean", "final"]
    assert len(build_dataset("sintel", root, scenes=["alley_1"])) == 1
    with pytest.raises(ValueError, match="ambush"):
        build_dataset("sintel", root, scenes=["ambush_9"])
    with pytest.raises(DatasetLayoutError, match="test"):
        build_dataset("sintel", root, split="test")   # the samples hold no test/ tree


def test_kitti15_sample(flow_samples):
    root = flow_samples / "kitti2015"
    ds = build_dataset("kitti15", root, flow="noc")
    assert len(ds) == 1 and ds.sparse
    s = ds[0]
    _check_sample(s, 375, 1242)
    _same_flow(s, root / "training/flow_noc/000000_10.png")
    assert abs(float(s["valid"].float().mean()) - 0.162) < 0.005
    with pytest.raises(DatasetLayoutError, match="flow='noc'"):
        build_dataset("kitti15", root)               # flow_occ is not in the samples


def test_middlebury_chairs_folder_samples(flow_samples):
    mb = build_dataset("middlebury", flow_samples / "middlebury")
    assert len(mb) == 1
    s = mb[0]
    _check_sample(s, 388, 584)
    _same_flow(s, flow_samples / "middlebury/other-gt-flow/RubberWhale/flow10.flo")
    assert abs(1 - float(s["valid"].float().mean()) - 0.016) < 0.003
    ch = build_dataset("chairs", flow_samples / "flyingchairs", split="all")
    assert len(ch) == 1
    _check_sample(ch[0], 50, 50)
    _same_flow(ch[0], flow_samples / "flyingchairs/data/00001_flow.flo")
    fo = build_dataset("folder", flow_samples / "sintel/training/clean/alley_1")
    assert len(fo) == 3
    _check_sample(fo[2], 436, 1024, gt=False)
    assert fo.meta(2)["paths"]["img2"].endswith("frame_0004.png")


# ------------------------------------------------------------------------------------------------ fake trees
def _img(h=24, w=32, v=0):
    rng = np.random.default_rng(v)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _flow(h=24, w=32, v=0.0):
    return np.full((h, w, 2), v, dtype=np.float32)


def test_chairs_split_file(tmp_path):
    data = tmp_path / "data"
    for i in range(1, 4):
        write_image(data / f"{i:05d}_img1.ppm", _img(v=i))
        write_image(data / f"{i:05d}_img2.ppm", _img(v=10 + i))
        write_flow(data / f"{i:05d}_flow.flo", _flow(v=i))
    (tmp_path / "chairs_split.txt").write_text("1\n2\n1\n")
    tr, va = build_dataset("chairs", tmp_path), build_dataset("chairs", tmp_path, split="validation")
    assert len(tr) == 2 and len(va) == 1
    assert float(va[0]["flow"][0, 0, 0]) == 2.0
    other = tmp_path / "mysplit.txt"
    other.write_text("2\n2\n1\n")
    assert len(build_dataset("chairs", tmp_path, split="validation", split_file=other)) == 2
    (tmp_path / "chairs_split.txt").unlink()
    with pytest.warns(UserWarning, match="all 3 pairs"):
        assert len(build_dataset("chairs", tmp_path)) == 3
    with pytest.raises(DatasetLayoutError, match="split file"):
        build_dataset("chairs", tmp_path, split="validation")


def test_things_fake_tree(tmp_path):
    for ps in ("clean", "final"):
        for k in range(6, 9):
            write_image(tmp_path / f"frames_{ps}pass/TRAIN/A/0000/left/{k:04d}.png", _img(v=k))
    for k in range(6, 9):
        write_pfm(tmp_path / f"optical_flow/TRAIN/A/0000/into_future/left/OpticalFlowIntoFuture_{k:04d}_L.pfm",
                  _flow(v=k))
        write_pfm(tmp_path / f"optical_flow/TRAIN/A/0000/into_past/left/OpticalFlowIntoPast_{k:04d}_L.pfm",
                  _flow(v=-k))
    ds = build_dataset("things", tmp_path)
    assert len(ds) == 4                     # 2 into_future + 2 into_past pairs (RAFT's listing)
    fut, past = ds.records[0], ds.records[2]
    assert fut.img1.endswith("0006.png") and fut.img2.endswith("0007.png") and "Future_0006" in fut.flow
    assert past.img1.endswith("0007.png") and past.img2.endswith("0006.png") and "Past_0007" in past.flow
    assert float(ds[2]["flow"][0, 0, 0]) == -7.0
    assert len(build_dataset("things", tmp_path, pass_="both")) == 8
    assert len(build_dataset("things", tmp_path, direction="into_future")) == 2
    sub = tmp_path / "subset.txt"
    sub.write_text("1\n0\n0\n1\n")
    assert len(build_dataset("things", tmp_path, subset_file=sub)) == 2
    with pytest.raises(DatasetLayoutError):
        build_dataset("things", tmp_path, split="test")


def test_sintel_test_and_kitti12_hd1k_fake_trees(tmp_path):
    for k in range(1, 4):
        write_image(tmp_path / f"sintel/test/final/market_1/frame_{k:04d}.png", _img(v=k))
    st = build_dataset("sintel", tmp_path / "sintel", split="test", pass_="final")
    assert len(st) == 2
    _check_sample(st[1], 24, 32, gt=False)

    k12 = tmp_path / "kitti12"
    for i in range(2):
        write_image(k12 / f"training/colored_0/{i:06d}_10.png", _img(v=i))
        write_image(k12 / f"training/colored_0/{i:06d}_11.png", _img(v=i + 5))
        valid = np.zeros((24, 32), bool)
        valid[::3, ::2] = True
        write_flow(k12 / f"training/flow_occ/{i:06d}_10.png", _flow(v=1.5), valid)
        write_image(k12 / f"testing/colored_0/{i:06d}_10.png", _img(v=i))
        write_image(k12 / f"testing/colored_0/{i:06d}_11.png", _img(v=i + 5))
    tr = build_dataset("kitti12", k12)
    assert len(tr) == 2 and tr.sparse
    s = tr[1]
    assert abs(float(s["valid"].float().mean()) - valid.mean()) < 1e-6
    assert float(s["flow"][0][s["valid"]].mean()) == 1.5
    te = build_dataset("kitti12", k12, split="testing")
    assert len(te) == 2 and "flow" not in te[0]

    hd = tmp_path / "hd1k"
    for seq, n in ((0, 3), (1, 2)):
        for k in range(n):
            write_image(hd / f"hd1k_input/image_2/{seq:06d}_{k:04d}.png", _img(v=k))
            write_flow(hd / f"hd1k_flow_gt/flow_occ/{seq:06d}_{k:04d}.png", _flow(v=k))
    h = build_dataset("hd1k", hd)
    assert len(h) == 3 and [h.meta(i)["scene"] for i in range(3)] == ["000000", "000000", "000001"]


def test_missing_and_empty_roots(tmp_path):
    for name in ("chairs", "things", "sintel", "kitti15", "kitti12", "hd1k", "middlebury", "folder"):
        with pytest.raises(DatasetLayoutError, match="Expected layout") as e:
            build_dataset(name, tmp_path / "nope")
        assert "nope" in str(e.value)
        assert isinstance(e.value, ValueError) and isinstance(e.value, FileNotFoundError)
        empty = tmp_path / f"empty_{name}"
        empty.mkdir()
        with pytest.raises(DatasetLayoutError, match=str(empty.name)):
            build_dataset(name, empty)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("nosuch", tmp_path)
    with pytest.raises(ValueError, match="unknown option.*colour"):
        build_dataset("folder", tmp_path, colour="blue")
    with pytest.raises(ValueError, match="pass_"):
        build_dataset("synthetic", None, pass_="dirty")


def test_indices_crop_and_loader(tmp_path):
    for k in range(5):
        write_image(tmp_path / f"f{k:03d}.png", _img(v=k))
    ds = build_dataset("folder", tmp_path, indices=[3, 1])
    assert len(ds) == 2 and ds.meta(0)["paths"]["img1"].endswith("f003.png")
    cropped = build_dataset("folder", tmp_path, crop=(16, 16), seed=3)
    a, b = cropped[0], cropped[0]
    assert a["img1"].shape == (3, 16, 16) and torch.equal(a["img1"], b["img1"])
    loader = build_loader(build_dataset("folder", tmp_path), batch_size=2, shuffle=True, seed=0)
    batch = next(iter(loader))
    assert batch["img1"].shape == (2, 3, 24, 32)
    assert batch["meta"]["dataset"] == ["folder", "folder"] and len(batch["meta"]["paths"]["img1"]) == 2
    order1 = [m for b in loader for m in b["meta"]["index"]]
    again = build_loader(build_dataset("folder", tmp_path), batch_size=2, shuffle=True, seed=0)
    assert [m for b in again for m in b["meta"]["index"]] == order1          # same seed, same order
    orders = set()
    for epoch in range(1, 5):   # the plan's epochs: steps 2e, 2e+1 (4 pairs, 2 per step)
        later = build_loader(build_dataset("folder", tmp_path), batch_size=2, steps=2, start=2 * epoch, seed=0)
        orders.add(tuple(m for b in later for m in b["meta"]["index"]))
    assert sorted(order1) == list(range(4)) and len(orders) > 1              # epochs reshuffle
    shards = [[m for b in build_loader(build_dataset("folder", tmp_path), batch_size=2, seed=0, rank=r,
                                        world_size=2) for m in b["meta"]["index"]] for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(4)) and len(shards[0]) == 2


def test_collate_pads_ragged():
    def s(h, w):
        return {"img1": torch.ones(3, h, w), "img2": torch.ones(3, h, w), "flow": torch.ones(2, h, w),
                "valid": torch.ones(h, w, dtype=torch.bool), "meta": {"dataset": "x", "frame": h}}
    b = collate([s(4, 6), s(5, 3)])
    assert b["img1"].shape == (2, 3, 5, 6) and b["image_size"].tolist() == [[4, 6], [5, 3]]
    assert not bool(b["valid"][0, 4].any()) and not bool(b["valid"][1, :, 3:].any())
    assert b["meta"]["frame"] == [4, 5]
    lists = collate([s(4, 6), s(5, 3)], pad=False)
    assert isinstance(lists["img1"], list) and lists["img1"][1].shape == (3, 5, 3)


def _write_video(path: Path, frames: list[np.ndarray]) -> bool:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    if not vw.isOpened():
        return False
    for f in frames:
        vw.write(np.ascontiguousarray(f[:, :, ::-1]))
    vw.release()
    return True


def test_video_reader(tmp_path):
    frames = []
    for k in range(6):     # smooth frames with a moving bright square: MJPG keeps them close
        img = np.full((48, 64, 3), 40, np.uint8)
        img[10:30, 5 + 6 * k:25 + 6 * k] = (220, 120, 30)
        frames.append(img)
    path = tmp_path / "clip.avi"
    if not _write_video(path, frames):
        pytest.skip("this OpenCV build cannot write MJPG .avi")
    ds = build_dataset("video", path)
    assert len(ds) == 5 and ds.num_frames == 6
    seq = [ds.frame(k) for k in range(6)]
    rand = [ds.frame(k) for k in (4, 1, 5, 0)]          # random access after seeks
    for k, f in zip((4, 1, 5, 0), rand):
        assert np.array_equal(f, seq[k])
    for k in range(6):
        assert np.abs(seq[k].astype(int) - frames[k]).mean() < 6
    s = ds[3]
    _check_sample(s, 48, 64, gt=False)
    assert np.array_equal(s["img2"].permute(1, 2, 0).numpy(), seq[4])
    import pickle
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.frame(2), seq[2])
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DatasetLayoutError, match="cannot open"):
        build_dataset("video", bad)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_dataset("video", tmp_path / "missing.mp4")


def test_sintel_ground_truth_is_the_file_and_invalid_pixels_only_change_valid(tmp_path):
    # Sintel's training/invalid marks pixels whose flow is stored but must not be scored: the flow must be the
    # file's values there (issue: it used to be zeroed), and `valid` False.
    import cv2
    from mlof.data import build_dataset
    from mlof.io import write_flow
    scene = "s"
    for sub in ("clean", "flow", "invalid"):
        (tmp_path / "training" / sub / scene).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in (1, 2):
        cv2.imwrite(str(tmp_path / "training" / "clean" / scene / f"frame_{k:04d}.png"),
                    rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))
    flow = rng.normal(0, 3, (8, 10, 2)).astype(np.float32)
    flow[0, 0] = 2e9                       # the .flo "unknown" sentinel: no value in the file
    write_flow(tmp_path / "training" / "flow" / scene / "frame_0001.flo", flow)
    inv = np.zeros((8, 10), np.uint8)
    inv[4:, 5:] = 255
    cv2.imwrite(str(tmp_path / "training" / "invalid" / scene / "frame_0001.png"), inv)
    s = build_dataset("sintel", tmp_path)[0]
    got = s["flow"].permute(1, 2, 0).numpy()
    assert np.array_equal(got[4:, 5:], flow[4:, 5:])          # stored values kept where invalid
    assert not bool(s["valid"][0, 0]) and float(np.abs(got[0, 0]).max()) == 0.0  # no value -> 0, never 1e9
    assert bool(s["valid"][1, 1]) and np.array_equal(got[1:4, :5], flow[1:4, :5])
    assert not s["valid"][4:, 5:].any()
