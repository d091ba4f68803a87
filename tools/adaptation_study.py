"""Study of test-time adaptation settings: EPE before / after and seconds per pair, per setting and sample.

Runs ``mlof.adapt`` from one checkpoint with each named setting of ``SETTINGS`` on the shared real samples
(Sintel alley_1 final and clean, Middlebury RubberWhale, KITTI-15 000000) and on held-out synthetic
target-domain pairs, at full resolution, and writes a JSON file and a Markdown table. The README's adaptation
table and the choice of ``mlof.adapt``'s default come from this tool.

    python tools/adaptation_study.py --checkpoint default --out /tmp/study --settings release default smurf-10
    python tools/adaptation_study.py --list
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mlof
from mlof import metrics
from mlof.data import build_dataset
from mlof.data.synthetic import render_sample
from mlof.utils import atomic_open

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow-samples"

_FAST = {"optimizer": "adam", "schedule": "constant", "lr": 1e-4, "weight_decay": 0.0}
# name -> mlof.adapt options (mlof.adapt's own defaults for everything not given)
SETTINGS: dict[str, dict[str, Any]] = {
    "release": {"preset": "release"},
    "release-optimizer": {"preset": "release-optimizer"},     # mlof 0.1's default
    "default": {},                      # mlof.adapt's default (smurf, 32 steps, adapt_iters 1, at most 256x512 px)
    "full-resolution": {"preset": "full-resolution"},         # the previous default: 8 steps on the frames as given
    "default-as-given": {"max_pixels": None},                 # the default's 32 steps on the frames as given
    "default-half-area": {"max_pixels": 65536},               # the default at half the working area
    "default-16": {"steps": 16},
    "default-20": {"steps": 20},
    "default-8": {"steps": 8},
    "default-update": {"params": "update_block"},
    "uflow-default": {"recipe": "uflow"},
    "default-lr2e-4": {"lr": 2e-4},
    "default-12": {"steps": 12},
    "default-12-lr2e-4": {"steps": 12, "lr": 2e-4},
    "default-lr3e-4": {"lr": 3e-4},
    "default-i2": {"adapt_iters": 2},
    "smurf-10-i12": {**_FAST, "recipe": "smurf", "steps": 10},        # 12 iterations in the steps as well
    "smurf-10-i4": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 4},
    "smurf-10-i1": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 1},
    "smurf-5": {**_FAST, "recipe": "smurf", "steps": 5, "adapt_iters": 2},
    "smurf-10": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2},
    "smurf-20": {**_FAST, "recipe": "smurf", "steps": 20, "adapt_iters": 2},
    "smurf-10-lr3e-4": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2, "lr": 3e-4},
    "smurf-10-lr3e-5": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2, "lr": 3e-5},
    "smurf-10-update": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2, "params": "update_block"},
    "smurf-10-last": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2, "keep": "last"},
    "smurf-10-bf16": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2, "precision": "bf16"},
    "smurf-10-crop": {**_FAST, "recipe": "smurf", "steps": 10, "adapt_iters": 2, "crop": [256, 384]},
    "mlof-10": {**_FAST, "recipe": "mlof", "steps": 10, "adapt_iters": 2},
    "uflow-10": {**_FAST, "recipe": "uflow", "steps": 10, "adapt_iters": 2},
    "arflow-10": {**_FAST, "recipe": "arflow", "steps": 10, "adapt_iters": 2},
}


def real_samples(names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    table = {"sintel-final": ("sintel", "sintel", {"pass_": "final"}),
             "sintel-clean": ("sintel", "sintel", {"pass_": "clean"}),
             "middlebury": ("middlebury", "middlebury", {}),
             "kitti": ("kitti15", "kitti2015", {"flow": "noc"})}
    out = []
    for name in names:
        if name.startswith("synthetic"):
            continue
        ds_name, folder, opts = table[name]
        out.append((name, build_dataset(ds_name, str(SHARED / folder), **opts)[0]))
    return out


def synthetic_samples(n: int, size: tuple[int, int], seed: int = 4242) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        s = render_sample("target", size, seed=seed, index=i)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()   # noqa: E731
        out.append((f"synthetic-{i}", {"img1": t(s["frames"][0]), "img2": t(s["frames"][1]),
                                       "flow": t(s["flows"][0]), "valid": torch.from_numpy(s["valids"][0])}))
    return out


def epe(flow: torch.Tensor, sample: dict[str, Any]) -> float:
    """EPE of ``flow`` (2 x H x W or 1 x 2 x H x W) against the sample's ground truth on its valid pixels."""
    return float(metrics.epe(flow.reshape(sample["flow"].shape), sample["flow"], sample["valid"] > 0.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--out", default="study")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS))
    p.add_argument("--samples", nargs="*", default=["sintel-final", "middlebury", "kitti", "synthetic"])
    p.add_argument("--synthetic", type=int, default=4, help="number of synthetic target pairs")
    p.add_argument("--synthetic-size", type=int, nargs=2, default=[256, 320])
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--video", type=int, default=0,
                   help="also compare per-pair and online adaptation along N synthetic target clips")
    p.add_argument("--video-frames", type=int, default=6)
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list:
        for k, v in SETTINGS.items():
            print(f"{k:20s} {v}")
        return 0
    unknown = [s for s in a.settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; --list shows them")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    model = mlof.load(a.checkpoint)
    samples = real_samples(a.samples)
    if any(s.startswith("synthetic") for s in a.samples):
        samples += synthetic_samples(a.synthetic, tuple(a.synthetic_size))
    for sname, s in samples:
        if sname == "video":
            continue
        rec = results.setdefault(sname, {"zero": epe(torch.zeros_like(s["flow"]), s)})
        for setting in a.settings:
            if setting in rec:
                continue
            t = time.perf_counter()
            r = mlof.adapt(model, (s["img1"], s["img2"]), iters=a.iters, **SETTINGS[setting])
            seconds = time.perf_counter() - t
            if "before" not in rec and r.flows_before is not None:
                rec["before"] = epe(r.flows_before[0], s)
            rec[setting] = {"epe": epe(r.flows[0], s), "seconds": seconds}
            print(f"{sname:14s} {setting:18s} before {rec.get('before', float('nan')):.3f} after "
                  f"{rec[setting]['epe']:.3f} zero {rec['zero']:.3f}  {seconds:.1f} s", flush=True)
            with atomic_open(path, "w") as f:
                json.dump(results, f, indent=2)
    if a.video:
        results["video"] = video_study(model, a, results.get("video", {}), path, results)
    write_table(results, out / "study.md")
    return 0


def video_study(model: Any, a: argparse.Namespace, done: dict[str, Any], path: Path,
                results: dict[str, Any]) -> dict[str, Any]:
    """Mean EPE over the pairs of synthetic target clips: unadapted, adapted per pair, and online (the weights
    carried along the clip), for each setting."""
    size = tuple(a.synthetic_size)
    clips = []
    for c in range(a.video):
        s = render_sample("target", size, seed=777, index=c, clip_length=a.video_frames)
        frames = torch.from_numpy(np.ascontiguousarray(s["frames"])).permute(0, 3, 1, 2).float()
        truth = [{"flow": torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float(),
                  "valid": torch.from_numpy(v)} for f, v in zip(s["flows"], s["valids"])]
        clips.append((frames, truth))
    for setting in a.settings:
        if setting in done:
            continue
        rec: dict[str, Any] = {}
        for mode in ("pairwise", "online"):
            t = time.perf_counter()
            before, after = [], []
            for frames, truth in clips:
                r = mlof.adapt(model, frames, iters=a.iters, mode=mode, **SETTINGS[setting])
                before += [epe(f[0], g) for f, g in zip(r.flows_before, truth)]
                after += [epe(f[0], g) for f, g in zip(r.flows, truth)]
            rec[mode] = {"epe": float(np.mean(after)), "seconds": time.perf_counter() - t}
            rec["before"] = float(np.mean(before))
        done[setting] = rec
        print(f"video {setting:18s} before {rec['before']:.3f} pairwise {rec['pairwise']['epe']:.3f} online "
              f"{rec['online']['epe']:.3f}", flush=True)
        results["video"] = done
        with atomic_open(path, "w") as f:
            json.dump(results, f, indent=2)
    return done


def write_table(results: dict[str, Any], path: Path) -> None:
    video = results.get("video") or {}
    results = {k: v for k, v in results.items() if k != "video"}
    settings = list(dict.fromkeys(k for rec in results.values() for k in rec if k not in ("zero", "before")))
    lines = ["| sample | zero | before | " + " | ".join(settings) + " |", "|---|---|---|" + "---|" * len(settings)]
    for sname, rec in results.items():
        cells = [f"{rec[k]['epe']:.3f} ({rec[k]['seconds']:.0f} s)" if k in rec else "" for k in settings]
        lines.append(f"| {sname} | {rec['zero']:.3f} | {rec.get('before', float('nan')):.3f} | " + " | ".join(cells)
                     + " |")
    if video:
        lines += ["", "| video (synthetic target clips) | before | per pair | online |", "|---|---|---|---|"]
        for setting, rec in video.items():
            lines.append(f"| {setting} | {rec['before']:.3f} | {rec['pairwise']['epe']:.3f} "
                         f"({rec['pairwise']['seconds']:.0f} s) | {rec['online']['epe']:.3f} "
                         f"({rec['online']['seconds']:.0f} s) |")
    with atomic_open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
