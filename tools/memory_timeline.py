"""Resident-memory timeline of one default ``mlof.adapt`` call, by phase: where the peak of a call comes from.

    python tools/memory_timeline.py --backbone raft --size 1080 1920 [--steps 1] [--threads 2]

A thread samples ``VmRSS`` every 10 ms; forward hooks on the network's top-level modules (``fnet``, ``cnet``,
``update_block``, ...) and wrappers around ``torch.autograd.grad`` / ``Tensor.backward`` label the samples.
Prints one line per phase segment (start time, RSS at its start, its maximum and its end, MB) and the
process's VmHWM. Recomputation in backward runs module forwards again, so checkpointed iterations show up
as ``refine`` segments inside the backward. Linux only (``/proc/self/status``).
"""
from __future__ import annotations

import argparse
import threading
import time

import torch

import backbones
import mlof
from backbones.memory_plan import proc_kib_field


def rss_mb(field: str = "VmRSS") -> int:
    return (proc_kib_field("/proc/self/status", field) or 0) // 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="raft")
    ap.add_argument("--size", type=int, nargs=2, default=[1080, 1920])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    phase, stack, segments, done = ["start"], [], [], [False]
    t0 = time.time()

    def sample() -> None:
        while not done[0]:
            r, p = rss_mb(), phase[0]
            if segments and segments[-1][0] == p:
                segments[-1][3], segments[-1][4] = max(segments[-1][3], r), r
            else:
                segments.append([p, time.time() - t0, r, r, r])
            time.sleep(0.01)

    model = backbones.build(a.backbone).eval()
    for name, module in model.named_children():
        def enter(_m, _i, n=name):
            stack.append(n)
            phase[0] = n

        def leave(_m, _i, _o):
            stack.pop()
            phase[0] = stack[-1] if stack else "refine/loss"
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)

    def labelled(fn):
        def run(*args, **kwargs):
            phase[0] = "backward"
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = "after-backward"
        return run
    torch.autograd.grad = labelled(torch.autograd.grad)
    torch.Tensor.backward = labelled(torch.Tensor.backward)

    g = torch.Generator().manual_seed(0)
    img1, img2 = (torch.rand(1, 3, *a.size, generator=g) * 255 for _ in range(2))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tic = time.time()
    result = mlof.adapt(model, (img1, img2), steps=a.steps)
    done[0] = True
    sampler.join()
    print(f"{a.backbone} {a.size[0]}x{a.size[1]}: {time.time() - tic:.1f} s; plan: "
          f"{next((h['memory_plan'] for h in result.history if 'memory_plan' in h), '-')}")
    merged: list[list] = []
    for seg in segments:   # the update block and the loop around it as one "refine/loss" phase
        seg = ["refine/loss" if seg[0] == "update_block" else seg[0], *seg[1:]]
        if merged and merged[-1][0] == seg[0]:
            merged[-1][3], merged[-1][4] = max(merged[-1][3], seg[3]), seg[4]
        else:
            merged.append(seg)
    for name, start, first, peak, last in merged:
        print(f"{name:15s} t={start:7.1f} s  start {first:6d}  max {peak:6d}  end {last:6d} MB")
    print(f"peak (VmHWM): {rss_mb('VmHWM')} MB")


if __name__ == "__main__":
    main()
