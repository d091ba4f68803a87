"""Side-by-side speed of this tree against another checkout of mlof (e.g. an older commit), in one run.

    git archive 1dec305 | tar -x -C /tmp/base
    PYTHONPATH=. python tools/speed_vs_commit.py --base /tmp/base --rounds 2

Every measurement runs in a fresh subprocess with one thread; the variants alternate round by round so that
machine load hits them alike. Cases: RAFT inference 440x1024, 12 iterations (fp32 base / fp32 here / bf16
here), and one ``mlof.adapt`` call (default GMA on a 288x640 pair, ``--adapt``) with the release's inference setting (3 steps,
both directions; fp32 base / fp32 here / bf16 here). Random weights (speed does not depend on them).
Prints a Markdown table of the median times and their ratios to the base fp32 time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

_CODE = r'''
import importlib.util, json, sys, time, torch
torch.set_num_threads(1)
import backbones, mlof
case, precision, backbone, h, w = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
opts = {} if precision == "fp32" else {"precision": precision}
torch.manual_seed(0)
if case == "inference":
    m = backbones.build("raft", **opts).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 440, 1024, generator=g) * 255, torch.rand(1, 3, 440, 1024, generator=g) * 255
    with torch.no_grad():
        m(a, b, iters=2)
        t = time.perf_counter(); m(a, b, iters=12); dt = time.perf_counter() - t
else:
    m = backbones.build(backbone).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, h, w, generator=g) * 255, torch.rand(3, h, w, generator=g) * 255
    mlof.adapt(m, (a[:, :128, :128], b[:, :128, :128]), steps=1, iters=1)   # warm-up (kernels, caches)
    # the release's optimizer setting: 1dec305's default, a named preset since the default changed
    if importlib.util.find_spec("mlof.meta.settings") is not None:   # older trees: it was the default
        opts["preset"] = "release-optimizer"
    t = time.perf_counter(); mlof.adapt(m, (a, b), **opts); dt = time.perf_counter() - t
print("RESULT " + json.dumps(dt))
'''


def _run(tree: Path, case: str, precision: str, adapt: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CODE, case, precision, *adapt], capture_output=True, text=True, env=env,
                         cwd=str(tree), check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return float(json.loads(line[7:]))
    raise RuntimeError(f"{case} {precision} in {tree} failed: {out.stderr.strip().splitlines()[-1:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (its repository root)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", default="inference,adaptation")
    ap.add_argument("--adapt", nargs=3, default=["gma", "288", "640"], metavar=("BACKBONE", "H", "W"),
                    help="the adaptation case (default: GMA 288x640, the size the issue measured)")
    args = ap.parse_args()
    variants = [("base", args.base, "fp32"), ("here", HERE, "fp32"), ("here", HERE, "bf16")]
    print("| case | variant | median s | runs | ratio to base fp32 |")
    print("|---|---|---|---|---|")
    for case in args.cases.split(","):
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for label, tree, precision in variants:
                times.setdefault((label, precision), []).append(_run(tree, case, precision, args.adapt))
        base = statistics.median(times[("base", "fp32")])
        for (label, precision), ts in times.items():
            med = statistics.median(ts)
            print(f"| {case} | {label} {precision} | {med:.2f} | {', '.join(f'{t:.2f}' for t in ts)} | "
                  f"{med / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
