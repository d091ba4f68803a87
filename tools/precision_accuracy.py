"""EPE cost of reduced precision on the shared real samples (docs/performance.md).

    PYTHONPATH=. python tools/precision_accuracy.py [--adapt] [--threads 1]

For the shipped RAFT-small (mlof/checkpoints/mlof_default.pt) on every sample with ground truth (the 50x50 Chairs crop is too small): EPE in fp32 and
bf16 and the mean |flow difference|; for RAFT and GMA with the reference rule weights
(../shared/reference/rule_weights.py) on the Sintel sample: the mean and max flow difference (rule weights
give no meaningful EPE). ``--adapt`` also adapts RAFT-small (3 default steps) on the Sintel clean pair in both
precisions. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

import backbones
import mlof
from mlof.io import read_flow, read_image
from mlof.metrics import epe

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "data" / "flow-samples"


def _pairs() -> list[tuple[str, Path, Path, Path]]:
    s = SAMPLES
    return [
        ("sintel clean alley_1", s / "sintel/training/clean/alley_1/frame_0002.png",
         s / "sintel/training/clean/alley_1/frame_0003.png", s / "sintel/training/flow/alley_1/frame_0002.flo"),
        ("sintel final alley_1", s / "sintel/training/final/alley_1/frame_0002.png",
         s / "sintel/training/final/alley_1/frame_0003.png", s / "sintel/training/flow/alley_1/frame_0002.flo"),
        ("kitti15 000000", s / "kitti2015/training/image_2/000000_10.png",
         s / "kitti2015/training/image_2/000000_11.png", s / "kitti2015/training/flow_noc/000000_10.png"),
        ("middlebury RubberWhale", s / "middlebury/other-data/RubberWhale/frame10.png",
         s / "middlebury/other-data/RubberWhale/frame11.png", s / "middlebury/other-gt-flow/RubberWhale/flow10.flo"),
    ]


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(read_image(path))).permute(2, 0, 1).float()[None]


def _rule_model(name: str, precision: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("rule_weights", SHARED / "reference" / "rule_weights.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    ref = SHARED / "reference" / name
    meta = json.loads((ref / "meta.json").read_text())
    keys = json.loads((ref / "keys.json").read_text())
    model = backbones.build(name, precision=precision).eval()
    own = model.state_dict()
    sd = rule.rule_state_dict({k: tuple(s) for k, s, _ in keys}, set(meta["norm_keys"]), set(meta["int_keys"]),
                              meta["multiplier"], const={k: own[k] for k in meta["const_keys"]})
    model.load_state_dict(sd, strict=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapt", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | sample | EPE fp32 | EPE bf16 | mean abs diff (px) | max abs diff (px) |")
    print("|---|---|---|---|---|---|")
    models = {p: mlof.load("default").eval() for p in ("fp32", "bf16")}
    models["bf16"].precision = "bf16"
    for label, f1, f2, fgt in _pairs():
        im1, im2 = _tensor(f1), _tensor(f2)
        gt, valid = read_flow(fgt)
        with torch.no_grad():
            flows = {p: m(im1, im2, iters=12).flow[0].permute(1, 2, 0).numpy() for p, m in models.items()}
        d = np.abs(flows["fp32"] - flows["bf16"])
        print(f"| raft_small (mlof_default) | {label} | {epe(flows['fp32'], gt, valid):.3f} | "
              f"{epe(flows['bf16'], gt, valid):.3f} | {d.mean():.4f} | {d.max():.3f} |", flush=True)
    label, f1, f2, _ = _pairs()[0]
    im1, im2 = _tensor(f1), _tensor(f2)
    for name in ("raft", "gma"):
        with torch.no_grad():
            a, b = (_rule_model(name, p)(im1, im2, iters=12).flow for p in ("fp32", "bf16"))
        d = (a - b).abs()
        print(f"| {name} (rule weights) | {label} | - | - | {d.mean():.4f} | {d.max():.3f} |", flush=True)
    if args.adapt:
        _, f1, f2, fgt = _pairs()[0]
        im1, im2 = _tensor(f1), _tensor(f2)
        gt, valid = read_flow(fgt)
        res = {p: mlof.adapt(models["fp32"], (im1, im2), precision=p).flow[0].permute(1, 2, 0).numpy()
               for p in ("fp32", "bf16")}
        d = np.abs(res["fp32"] - res["bf16"])
        print(f"| raft_small adapted (3 steps) | sintel clean alley_1 | {epe(res['fp32'], gt, valid):.3f} | "
              f"{epe(res['bf16'], gt, valid):.3f} | {d.mean():.4f} | {d.max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
