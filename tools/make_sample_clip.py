#!/usr/bin/env python
"""Make the sample clip shipped in ``mlof/assets/`` from the MPI-Sintel samples in shared/data/flow-samples.

Crops the Sintel training scene alley_1, clean pass, frames 0001-0004, and the ground truth of the pair
0002 -> 0003 (flow, occlusion and invalid masks) to one box, and writes them with mlof.io, plus
``clip.json`` (crop box, sources and their sha256). Re-running it gives byte-identical PNGs and .flo.

    python tools/make_sample_clip.py --root ../shared/data/flow-samples --out mlof/assets
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlof.io import read_flow, read_image, write_flow, write_image  # noqa: E402
from mlof.utils import atomic_open  # noqa: E402

SCENE = "alley_1"
FRAMES = (1, 2, 3, 4)
PAIR = (2, 3)                      # Sintel frame numbers of the ground-truth pair
BOX = (100, 440, 224, 320)         # top, left, height, width (pixels of the 436 x 1024 frames)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mask(path: Path) -> np.ndarray:
    return read_image(path)[:, :, 0] > 127


def make(root: Path, out: Path, box: tuple[int, int, int, int] = BOX) -> dict:
    """Write the crops to ``out`` and return the metadata written to ``out/clip.json``."""
    top, left, h, w = box
    crop = (slice(top, top + h), slice(left, left + w))
    train = root / "sintel" / "training"
    sources = {}
    for t in FRAMES:
        src = train / "clean" / SCENE / f"frame_{t:04d}.png"
        img = read_image(src)
        if img.shape[:2] != (436, 1024):
            raise ValueError(f"{src}: expected a 436 x 1024 Sintel frame, got {img.shape[:2]}")
        write_image(out / f"frame_{t:04d}.png", img[crop])
        sources[f"frame_{t:04d}.png"] = src
    stem = f"frame_{PAIR[0]:04d}"
    flow_src = train / "flow" / SCENE / f"{stem}.flo"
    occ_src = train / "occlusions" / SCENE / f"{stem}.png"
    inv_src = train / "invalid" / SCENE / f"{stem}.png"
    flow, valid = read_flow(flow_src)
    valid = valid & ~_mask(inv_src)
    write_flow(out / f"flow_{stem}.flo", flow[crop], valid[crop])
    occ = _mask(occ_src)[crop]
    write_image(out / f"occ_{stem}.png", (occ * 255).astype(np.uint8))
    sources[f"flow_{stem}.flo"] = flow_src
    sources[f"occ_{stem}.png"] = occ_src
    sources["invalid_mask"] = inv_src   # applied to the .flo as unknown pixels
    meta = {
        "dataset": "MPI-Sintel training", "pass": "clean", "scene": SCENE, "frames": list(FRAMES),
        "pair": list(PAIR), "crop_box": {"top": top, "left": left, "height": h, "width": w},
        "source_size": [436, 1024],
        "sources": {k: {"path": str(v.relative_to(root)), "sha256": _sha256(v)} for k, v in sources.items()},
        "licence": "MPI-Sintel (sintel.is.tue.mpg.de); the film Sintel (c) Blender Foundation, CC-BY 3.0",
        "stats": {"mean_flow_px": float(np.linalg.norm(flow[crop], axis=2)[valid[crop]].mean()),
                  "max_flow_px": float(np.linalg.norm(flow[crop], axis=2)[valid[crop]].max()),
                  "occluded_percent": float(100 * occ.mean()), "valid_percent": float(100 * valid[crop].mean())},
    }
    with atomic_open(out / "clip.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    default_root = Path(os.environ.get("MLOF_SHARED", REPO.parent / "shared")) / "data" / "flow-samples"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_root, help="flow-samples folder (holds sintel/)")
    ap.add_argument("--out", type=Path, default=REPO / "mlof" / "assets", help="output folder")
    args = ap.parse_args(argv)
    meta = make(args.root, args.out)
    print(json.dumps(meta["stats"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
