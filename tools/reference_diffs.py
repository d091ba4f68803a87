"""Max |flow - official flow| of every RAFT-family backbone on the reference cases (README's backbone table).

    PYTHONPATH=.:tests python tools/reference_diffs.py [--threads 2]

Rule weights from ``../shared/reference``; case A (192x256, final and low-resolution flows, test mode) and case
B (219x333, padded) with 12 iterations, dense and on-demand correlation. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import backbones
from reference_utils import case_images, load_reference, max_abs_diff, rule_weights_for

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = {"raft": {}, "raft_small": {}, "gma": {}, "kpaflow": {}, "kpaflow_kitti": {"dataset": "kitti"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples = SHARED / "data" / "flow-samples"
    print("| backbone | corr | max abs diff, case A flow / flow_low | case B flow / flow_low |")
    print("|---|---|---|---|")
    for ref_name, options in MODELS.items():
        ref = load_reference(SHARED / "reference", ref_name)
        name = ref_name.replace("_kitti", "")
        for corr in ("dense", "ondemand"):
            model = backbones.build(name, corr=corr, **options).eval()
            model.load_state_dict(rule_weights_for(model, ref), strict=True)
            cells = []
            for case in ("A", "B"):
                im1, im2 = case_images(samples, ref.meta, case)
                with torch.no_grad():
                    out = model(im1, im2, iters=12)
                low_key = "A_flow_low" if case == "A" else "B_flow_low_padded"
                cells.append(f"{max_abs_diff(out.flow, ref.outputs[f'{case}_flow']):.1e} / "
                             f"{max_abs_diff(out.flow_low, ref.outputs[low_key]):.1e}")
            print(f"| {ref_name} | {corr} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
