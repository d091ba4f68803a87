"""File-based readers of the standard optical-flow datasets, in their official layouts.

Each ``read_<name>(root, split, ...)`` lists the pairs as :class:`PairRecord` and returns a
:class:`RecordDataset`; pairs are in a fixed, sorted order (the order the split tables of
:mod:`mlof.data.tasks` refer to). A missing root or a tree without pairs raises
:class:`DatasetLayoutError` naming the path and the expected layout.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlof.data.base import PairRecord, RecordDataset, existing, layout_error

__all__ = ["read_chairs", "read_things", "read_sintel", "read_kitti15", "read_kitti12", "read_hd1k",
           "read_middlebury", "read_folder", "LAYOUTS", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff")

LAYOUTS = {
    "chairs": "  <root>/data/00001_img1.ppm, 00001_img2.ppm, 00001_flow.flo, ...  (or <root> is data/ itself)\n"
              "  split file chairs_split.txt (1 = training, 2 = validation), in <root>, its parent or given "
              "as split_file=",
    "things": "  <root>/frames_cleanpass|frames_finalpass/TRAIN|TEST/A|B|C/0000/left|right/0006.png\n"
              "  <root>/optical_flow/TRAIN|TEST/A|B|C/0000/into_future|into_past/left|right/"
              "OpticalFlowIntoFuture_0006_L.pfm",
    "sintel": "  <root>/training/clean|final/<scene>/frame_0001.png, <root>/training/flow/<scene>/frame_0001.flo\n"
              "  optional <root>/training/occlusions/<scene>/frame_0001.png, training/invalid/...; "
              "<root>/test/clean|final/<scene>/frame_0001.png",
    "kitti15": "  <root>/training/image_2/000000_10.png, 000000_11.png, <root>/training/flow_occ|flow_noc/"
               "000000_10.png; <root>/testing/image_2/...",
    "kitti12": "  <root>/training/colored_0/000000_10.png, 000000_11.png, <root>/training/flow_occ|flow_noc/"
               "000000_10.png; <root>/testing/colored_0/...",
    "hd1k": "  <root>/hd1k_input/image_2/000000_0000.png, ...; <root>/hd1k_flow_gt/flow_occ/000000_0000.png",
    "middlebury": "  <root>/other-data/<seq>/frame10.png, frame11.png; <root>/other-gt-flow/<seq>/flow10.flo\n"
                  "  (split='test': <root>/eval-data/<seq>/frame10.png, frame11.png)",
    "folder": "  <root>/<frames>.png|jpg|ppm|bmp|tif (sorted by name; consecutive frames form the pairs)",
}

_SPLITS_TRAIN = ("training", "train")


def _check_root(root: Any, name: str) -> Path:
    if root is None:
        raise ValueError(f"{name}: root is None; give the dataset folder. Expected layout:\n{LAYOUTS[name]}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(root, f"{name} root does not exist or is not a folder", LAYOUTS[name])
    return root


def _require(records: list[PairRecord], path: Path, name: str, what: str) -> list[PairRecord]:
    if not records:
        raise layout_error(path, f"no {name} pairs found ({what})", LAYOUTS[name])
    return records


def _check_choice(value: str, allowed: Sequence[str], arg: str) -> str:
    if value not in allowed:
        raise ValueError(f"{arg} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _number(path: Path | str) -> int:
    """The last integer in a file name (frame_0007.png -> 7, 000123_10.png -> 10)."""
    nums = re.findall(r"\d+", Path(path).stem)
    return int(nums[-1]) if nums else 0


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if folder.is_dir() else []


def _finish(name: str, records: list[PairRecord], options: dict[str, Any], **kw: Any) -> RecordDataset:
    indices = options.pop("indices", None)
    ds = RecordDataset(name, records, **kw, **options)
    return ds.select(indices) if indices is not None else ds


# ------------------------------------------------------------------------------------------------- FlyingChairs
def _chairs_split_file(root: Path, split_file: str | os.PathLike | None) -> Path | None:
    if split_file is not None:
        p = Path(split_file)
        if not p.is_file():
            raise ValueError(f"split_file: {p} does not exist (the official chairs_split.txt / "
                             f"FlyingChairs_train_val.txt: one line per pair, 1 = training, 2 = validation)")
        return p
    for folder in (root, root.parent, Path.cwd()):
        for fname in ("chairs_split.txt", "FlyingChairs_train_val.txt"):
            if (folder / fname).is_file():
                return folder / fname
    return None


def read_chairs(root: Any, split: str = "training", *, split_file: str | os.PathLike | None = None,
                **options: Any) -> RecordDataset:
    """FlyingChairs. ``split``: "training" (split-file value 1), "validation" (2) or "all".

    Without a split file (searched as chairs_split.txt / FlyingChairs_train_val.txt in the root, its parent
    and the working directory) "training" falls back to ALL pairs with a warning and "validation" raises.
    """
    root = _check_root(root, "chairs")
    _check_choice(split, ("training", "train", "validation", "val", "all"), "split")
    data = root / "data" if (root / "data").is_dir() else root
    flows = sorted(data.glob("*_flow.flo"))
    records = []
    for f in flows:
        stem = f.name[: -len("_flow.flo")]
        img1, img2 = data / f"{stem}_img1.ppm", data / f"{stem}_img2.ppm"
        if img1.is_file() and img2.is_file():
            records.append(PairRecord(str(img1), str(img2), str(f), frame=_number(stem)))
    _require(records, data, "chairs", "no NNNNN_img1.ppm / NNNNN_img2.ppm / NNNNN_flow.flo triples")
    if split != "all":
        sf = _chairs_split_file(root, split_file)
        if sf is None:
            if split in ("validation", "val"):
                raise layout_error(root, "split='validation' needs the official split file (give split_file=)",
                                   LAYOUTS["chairs"])
            warnings.warn(f"{root}: no chairs_split.txt found; split='training' uses all {len(records)} pairs")
        else:
            ids = np.loadtxt(sf, dtype=np.int64).reshape(-1)
            if len(ids) != len(records):
                raise ValueError(f"{sf}: has {len(ids)} entries but {data} holds {len(records)} pairs")
            want = 1 if split in ("training", "train") else 2
            records = [r for r, k in zip(records, ids) if k == want]
    return _finish("chairs", records, options, max_abs_flow=1000.0)


# ---------------------------------------------------------------------------------------------- FlyingThings3D
def read_things(root: Any, split: str = "training", *, pass_: str = "clean", direction: str = "both",
                camera: str = "left", subset_file: str | os.PathLike | None = None,
                **options: Any) -> RecordDataset:
    """FlyingThings3D. ``split`` "training" (TRAIN) or "validation"/"test" (TEST); ``pass_`` clean/final/both;
    ``direction`` into_future / into_past / both; ``camera`` left / right / both.

    The defaults (left camera, both directions, per pass) list exactly the pairs of RAFT's training set, in
    RAFT's order (camera, direction, sequence). ``subset_file``: a 0/1 file with one line per listed pair
    keeping the 1s (e.g. GMA's ``things_val_test_set.txt`` on the TEST split).
    """
    root = _check_root(root, "things")
    part = "TRAIN" if split in _SPLITS_TRAIN else "TEST"
    _check_choice(split, ("training", "train", "validation", "val", "test"), "split")
    passes = {"clean": ["clean"], "final": ["final"], "both": ["clean", "final"]}[
        _check_choice(pass_, ("clean", "final", "both"), "pass_")]
    directions = ["into_future", "into_past"] if direction == "both" else \
        [_check_choice(direction, ("into_future", "into_past", "both"), "direction")]
    cameras = ["left", "right"] if camera == "both" else [_check_choice(camera, ("left", "right", "both"), "camera")]
    records: list[PairRecord] = []
    for ps in passes:
        for cam in cameras:
            for d in directions:
                for seq in sorted((root / f"frames_{ps}pass" / part).glob("*/*")):
                    rel = seq.relative_to(root / f"frames_{ps}pass" / part)
                    images = {_number(p): p for p in _images(seq / cam)}
                    fdir = root / "optical_flow" / part / rel / d / cam
                    flows = {_number(p): p for p in sorted(fdir.glob("*.pfm"))} if fdir.is_dir() else {}
                    for k in sorted(images):
                        step = 1 if d == "into_future" else -1
                        if k + step in images and k in flows:
                            records.append(PairRecord(str(images[k]), str(images[k + step]), str(flows[k]),
                                                      scene=f"{rel.as_posix()}/{cam}", frame=k,
                                                      variant=f"{ps}/{d}"))
    # into_future: (i, i+1) with flow i; into_past: (i+1, i) with flow i+1 -- RAFT's pairs and order.
    _require(records, root, "things", f"no {part} pairs for pass_={pass_!r}, camera={camera!r}")
    if subset_file is not None:
        keep = np.loadtxt(subset_file, dtype=np.int64).reshape(-1)
        if len(keep) != len(records):
            raise ValueError(f"subset_file: {subset_file} has {len(keep)} entries, the listing has {len(records)}")
        records = [r for r, k in zip(records, keep) if k]
    return _finish("things", records, options, max_abs_flow=1000.0)


# ----------------------------------------------------------------------------------------------------- Sintel
def read_sintel(root: Any, split: str = "training", *, pass_: str = "clean",
                scenes: Sequence[str] | None = None, **options: Any) -> RecordDataset:
    """MPI-Sintel; ``root`` holds training/ and test/. ``pass_`` clean / final / both (clean pairs first).

    Pair i -> i+1 is listed when its flow file exists (training) or frame i+1 exists (test). ``occ`` comes
    from training/occlusions, ``valid`` = flow known and not marked in training/invalid. ``scenes`` keeps
    only the named scenes (unknown names raise).
    """
    root = _check_root(root, "sintel")
    split = "training" if split in _SPLITS_TRAIN else _check_choice(split, ("training", "test"), "split")
    passes = {"clean": ["clean"], "final": ["final"], "both": ["clean", "final"]}[
        _check_choice(pass_, ("clean", "final", "both"), "pass_")]
    base = root / split
    records: list[PairRecord] = []
    for ps in passes:
        img_root = base / ps
        if not img_root.is_dir():
            raise layout_error(img_root, f"Sintel {split} pass {ps!r} not found", LAYOUTS["sintel"])
        present = sorted(p.name for p in img_root.iterdir() if p.is_dir())
        if scenes is not None:
            unknown = sorted(set(scenes) - set(present))
            if unknown:
                raise ValueError(f"scenes: {unknown} not in {img_root} (has {present})")
        for scene in present if scenes is None else [s for s in present if s in set(scenes)]:
            frames = _images(img_root / scene)
            for a, b in zip(frames[:-1], frames[1:]):
                flow = occ = inv = None
                if split == "training":
                    flow = existing(base / "flow" / scene / f"{a.stem}.flo")
                    if flow is None:
                        continue
                    occ = existing(base / "occlusions" / scene / f"{a.stem}.png")
                    inv = existing(base / "invalid" / scene / f"{a.stem}.png")
                records.append(PairRecord(str(a), str(b), flow, occ, inv, scene=scene, frame=_number(a),
                                          variant=ps))
    _require(records, base, "sintel", "training needs flow/<scene>/frame_XXXX.flo beside the frames"
             if split == "training" else "test needs at least two frames per scene")
    return _finish("sintel", records, options)


# ------------------------------------------------------------------------------------------------------ KITTI
def _read_kitti(name: str, image_dir: str, root: Any, split: str, flow: str,
                options: dict[str, Any]) -> RecordDataset:
    root = _check_root(root, name)
    split = "training" if split in _SPLITS_TRAIN else "testing" if split in ("testing", "test") else \
        _check_choice(split, ("training", "testing"), "split")
    _check_choice(flow, ("occ", "noc"), "flow")
    img_dir = root / split / image_dir
    records = []
    for a in sorted(img_dir.glob("*_10.png")) if img_dir.is_dir() else []:
        b = a.with_name(a.name.replace("_10.png", "_11.png"))
        if not b.is_file():
            continue
        fpath = None
        if split == "training":
            fpath = existing(root / split / f"flow_{flow}" / a.name)
            if fpath is None:
                continue
        records.append(PairRecord(str(a), str(b), fpath, scene=a.name[:-len("_10.png")], frame=10,
                                  variant=flow if split == "training" else ""))
    hint = f"no {img_dir}/NNNNNN_10.png + _11.png"
    if split == "training" and img_dir.is_dir() and not (root / split / f"flow_{flow}").is_dir():
        other = "noc" if flow == "occ" else "occ"
        hint = f"flow_{flow}/ is missing" + (f" (flow_{other}/ exists: data.options.flow={other} on the command line, flow={other!r} in Python)"
                                             if (root / split / f"flow_{other}").is_dir() else "")
    _require(records, root / split, name, hint)
    return _finish(name, records, options, sparse=True)


def read_kitti15(root: Any, split: str = "training", *, flow: str = "occ", **options: Any) -> RecordDataset:
    """KITTI 2015 (image_2). ``flow`` "occ" (all pixels) or "noc" (non-occluded); "testing" has no ground truth.

    Pairs are sorted by id, so dataset index i is KITTI pair id i (the ids the MLOF splits use).
    """
    return _read_kitti("kitti15", "image_2", root, split, flow, options)


def read_kitti12(root: Any, split: str = "training", *, flow: str = "occ", **options: Any) -> RecordDataset:
    """KITTI 2012 (colored_0), same conventions as :func:`read_kitti15`."""
    return _read_kitti("kitti12", "colored_0", root, split, flow, options)


# ------------------------------------------------------------------------------------------------------- HD1K
def read_hd1k(root: Any, split: str = "training", **options: Any) -> RecordDataset:
    """HD1K (sparse KITTI-format ground truth); pair i -> i+1 of a sequence when flow i and frame i+1 exist."""
    root = _check_root(root, "hd1k")
    _check_choice(split, ("training", "train"), "split")
    img_dir, flow_dir = root / "hd1k_input" / "image_2", root / "hd1k_flow_gt" / "flow_occ"
    frames: dict[tuple[str, int], Path] = {}
    for p in _images(img_dir):
        seq, _, k = p.stem.partition("_")
        if k.isdigit():
            frames[(seq, int(k))] = p
    records = []
    for (seq, k), a in sorted(frames.items()):
        f = flow_dir / a.name
        if (seq, k + 1) in frames and f.is_file():
            records.append(PairRecord(str(a), str(frames[(seq, k + 1)]), str(f), scene=seq, frame=k))
    _require(records, root, "hd1k", "no SSSSSS_FFFF.png frames with flow")
    return _finish("hd1k", records, options, sparse=True)


# ------------------------------------------------------------------------------------------------- Middlebury
def read_middlebury(root: Any, split: str = "training", **options: Any) -> RecordDataset:
    """Middlebury "other" set: pairs frameNN -> frameNN+1 with flowNN.flo; split="test": eval-data, no GT."""
    root = _check_root(root, "middlebury")
    split = "training" if split in _SPLITS_TRAIN else _check_choice(split, ("training", "test"), "split")
    records = []
    if split == "training":
        for fdir in sorted(p for p in (root / "other-gt-flow").glob("*") if p.is_dir()):
            for f in sorted(fdir.glob("flow*.flo")):
                k = _number(f)
                a = root / "other-data" / fdir.name / f"frame{k:02d}.png"
                b = root / "other-data" / fdir.name / f"frame{k + 1:02d}.png"
                if a.is_file() and b.is_file():
                    records.append(PairRecord(str(a), str(b), str(f), scene=fdir.name, frame=k))
    else:
        for sdir in sorted(p for p in (root / "eval-data").glob("*") if p.is_dir()):
            a, b = sdir / "frame10.png", sdir / "frame11.png"
            if a.is_file() and b.is_file():
                records.append(PairRecord(str(a), str(b), scene=sdir.name, frame=10))
    _require(records, root, "middlebury", f"split={split!r}")
    return _finish("middlebury", records, options)


# ----------------------------------------------------------------------------------------------------- folder
def read_folder(root: Any, split: str = "training", *, step: int = 1, **options: Any) -> RecordDataset:
    """Any folder of frames: sorted by file name, pairs (i, i + step); no ground truth."""
    root = _check_root(root, "folder")
    if int(step) < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    frames = _images(root)
    if len(frames) < 2:
        raise layout_error(root, f"need at least 2 frames, found {len(frames)}", LAYOUTS["folder"])
    records = [PairRecord(str(frames[i]), str(frames[i + step]), scene=root.name, frame=i)
               for i in range(len(frames) - int(step))]
    _require(records, root, "folder", f"fewer than {step + 1} frames")
    return _finish("folder", records, options)
