"""Online vs per-pair adaptation on real video: the shared Sintel alley_1 frames 1-3, pair 2->3 scored.

Adapts the checkpoint along the three frames with ``mlof.adapt(..., mode="pairwise")`` (every pair from the start
weights) and ``mode="online"`` (weights carried from pair 1->2 to pair 2->3) and prints the EPE of pair 2->3 before
and after, and the time. The README's "Online along a video" figures come from this tool.

    python tools/online_study.py --checkpoint default --passes final clean
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import mlof
from mlof.io import read_flow, read_image

from adaptation_study import SHARED, epe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--passes", nargs="*", default=["final", "clean"])
    p.add_argument("--iters", type=int, default=12)
    a = p.parse_args(argv)
    root = SHARED / "sintel" / "training"
    flow, valid = read_flow(root / "flow" / "alley_1" / "frame_0002.flo")
    truth = {"flow": torch.from_numpy(flow).permute(2, 0, 1), "valid": torch.from_numpy(np.asarray(valid))}
    model = mlof.load(a.checkpoint)
    for pass_ in a.passes:
        frames = [torch.from_numpy(read_image(root / pass_ / "alley_1" / f"frame_{t:04d}.png")).permute(2, 0, 1)
                  .float() for t in (1, 2, 3)]
        for mode in ("pairwise", "online"):
            tic = time.perf_counter()
            r = mlof.adapt(model, frames, mode=mode, iters=a.iters)
            print(f"{pass_:6s} {mode:9s} pair 2->3: before {epe(r.flows_before[1], truth):.3f} after "
                  f"{epe(r.flows[1], truth):.3f}  {time.perf_counter() - tic:.0f} s  resets {r.resets}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
