"""Seeded synthetic frame pairs and clips with EXACT optical flow, occlusion and validity, and domain shifts.

Scene model. A background layer and K object layers (K drawn per sample), back to front. Each layer lives in
reference coordinates p (the coordinates of frame 0) and carries a texture (:mod:`mlof.data.textures`), a
mask (objects: a random star-shaped blob, ellipse or polygon; background: everywhere) and a smooth unit
displacement field d (bicubic upsampling of a coarse random grid). At frame t a layer point p is seen at

    F_t(p) = c + s^t R(t theta) (p - c + t a d(p)) + t b

(c the layer centre; scale s, rotation theta, translation b and non-rigid amplitude a are the per-frame
motion). Frame t is rendered by BACKWARD mapping: for each pixel y and each layer, front to back, solve
F_t(p) = y (the affine part exactly, the non-rigid part by fixed-point iteration p <- q - t a d(p), which
converges because t a |grad d| <= 0.3 is enforced; iterated to 2e-4 px), keep the first layer whose mask
covers p and sample its texture at p (bilinear, reflecting beyond the texture). So frame t+1 sampled at
y = F_{t+1}(p) shows exactly the texture point that frame t shows at F_t(p), and the ground truth is

    flow_t(x) = F_{t+1}(p) - x,  p = the visible layer's point at pixel x of frame t,
    occ_t(x)  = a nearer layer covers F_{t+1}(p) in frame t+1 (its mask at its own inverse, same rule),
    valid_t(x) = F_{t+1}(p) = (x', y') lies inside frame t+1 (0 <= x' <= W-1, 0 <= y' <= H-1).

Every frame is then put through the domain's photometric model: lighting change over time (gain, bias,
colour drift, illumination gradient; the "clean" pass), then blur and sensor noise (the "final" pass);
images are rounded to integer levels so a written tree reads back identically.

A :class:`Domain` is a frozen dataclass of parameter ranges; ``source`` and ``target`` differ in texture
statistics (spectral slope, contrast, saturation, edge density, colour cast), lighting change between
frames, blur, noise and motion statistics. Motion magnitudes are given for a 436-px-high frame and scale
with min(H, W) / 436. Sample k of seed s uses only ``numpy.random.default_rng([s, k])``: it is the same
whatever the access order, worker count or machine state.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from mlof.data.base import FlowDataset, RawSample, make_meta, to_sample
from mlof.data.domains import DOMAINS, MOTION_REFERENCE, Domain, get_domain
from mlof.data.scene import build_layers, draw_uniform, lighting_maps, pair_truth, render_frame
from mlof.io import write_flow, write_image
from mlof.utils import atomic_open

__all__ = ["Domain", "DOMAINS", "get_domain", "render_sample", "SyntheticFlowDataset", "write_tree",
           "MOTION_REFERENCE"]


def render_sample(domain: "str | Domain | dict[str, Any]" = "source", size: Sequence[int] = (256, 256),
                  seed: int = 0, index: int = 0, clip_length: int = 2) -> dict[str, np.ndarray]:
    """Render sample ``index`` of ``seed``: a clip of ``clip_length`` frames with exact ground truth.

    Returns numpy arrays: ``frames`` T x H x W x 3 float32 (final pass, integer levels 0..255),
    ``clean`` T x H x W x 3 (before blur and noise), ``flows`` (T-1) x H x W x 2 float32,
    ``valids`` / ``occs`` (T-1) x H x W bool, ``layers`` (T x H x W int16: visible layer, 0 = background).
    """
    d = get_domain(domain)
    h, w = int(size[0]), int(size[1])
    threads = torch.get_num_threads()
    if threads == 1:
        return _render(d, h, w, int(seed), int(index), int(clip_length))
    # Many small tensor ops: intra-op threading costs more than it gains (10x slower on a busy machine).
    torch.set_num_threads(1)
    try:
        return _render(d, h, w, int(seed), int(index), int(clip_length))
    finally:
        torch.set_num_threads(threads)


def _render(d: Domain, h: int, w: int, seed: int, index: int, clip_length: int) -> dict[str, np.ndarray]:
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8 x 8, got {h} x {w}")
    if int(clip_length) < 2:
        raise ValueError(f"clip_length must be >= 2, got {clip_length}")
    T = int(clip_length)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2 ** 63 - 1), int(index)]))
    layers = build_layers(rng, d, h, w, T)
    light = lighting_maps(rng, d, T, h, w)
    sigma = draw_uniform(rng, d.blur_sigma)
    noise = draw_uniform(rng, d.noise_std)
    clean, final, owners = [], [], []
    flows, valids, occs = [], [], []
    prev = None
    for t in range(T):
        img, owner, ref = render_frame(layers, t, h, w)
        if prev is not None:
            f, v, o = pair_truth(layers, t - 1, prev[0], prev[1], h, w)
            flows.append(f)
            valids.append(v)
            occs.append(o)
        prev = (owner, ref)
        gain, bias = light[t]
        lit = np.clip(img * gain + bias, 0, 255).astype(np.float32)
        clean.append(np.rint(lit))
        out = cv2.GaussianBlur(lit, (0, 0), sigma) if sigma > 0 else lit
        if noise > 0:
            out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
        final.append(np.clip(np.rint(out), 0, 255))
        owners.append(owner.view(h, w).numpy().astype(np.int16))
    return {"frames": np.stack(final).astype(np.float32), "clean": np.stack(clean).astype(np.float32),
            "flows": np.stack(flows), "valids": np.stack(valids), "occs": np.stack(occs),
            "layers": np.stack(owners)}


class SyntheticFlowDataset(FlowDataset):
    """``build_dataset("synthetic", None, domain=..., seed=0, size=(H, W), length=N, clip_length=2)``.

    Sample k is :func:`render_sample` (domain, size, seed, k) as a dataset sample (``img1``, ``img2``,
    ``flow``, ``valid``, ``occ``, ``meta``). With ``clip_length`` T > 2 the sample also holds ``frames``
    T x 3 x H x W, ``flows`` (T-1) x 2 x H x W, ``valids`` and ``occs`` (T-1) x H x W; img1/img2/flow are
    its first pair. ``pass_`` "final" (default: blur + noise of the domain) or "clean".
    ``transform``/``crop`` apply to pairs only (clip_length 2).
    """

    name = "synthetic"

    def __init__(self, domain: "str | Domain | dict[str, Any]" = "source", seed: int = 0,
                 size: Sequence[int] = (256, 256), length: int = 1000, clip_length: int = 2,
                 pass_: str = "final", **options: Any):
        if "indices" in options:
            raise ValueError("synthetic: 'indices' is not an option; use torch.utils.data.Subset")
        super().__init__(seed=seed, **options)
        self.domain = get_domain(domain)
        if len(size) != 2 or int(size[0]) < 8 or int(size[1]) < 8:
            raise ValueError(f"size must be (height, width) >= 8, got {size!r}")
        if int(length) < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if int(clip_length) < 2:
            raise ValueError(f"clip_length must be >= 2, got {clip_length}")
        if pass_ not in ("final", "clean"):
            raise ValueError(f"pass_ must be 'final' or 'clean', got {pass_!r}")
        if int(clip_length) > 2 and (self.transform is not None or self.crop is not None):
            raise ValueError("transform/crop apply to frame pairs: use clip_length=2 with them")
        self.size, self.length, self.clip_length, self.pass_ = (int(size[0]), int(size[1])), int(length), \
            int(clip_length), pass_
        self.gen_seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def meta(self, index: int) -> dict[str, Any]:
        return make_meta(self.name, index, scene=f"{self.domain.name}_{self.gen_seed}_{index:06d}", frame=0,
                         variant=self.pass_)

    def _render(self, index: int) -> dict[str, np.ndarray]:
        return render_sample(self.domain, self.size, self.gen_seed, index, self.clip_length)

    def load_raw(self, index: int) -> RawSample:
        s = self._render(index)
        frames = s["frames"] if self.pass_ == "final" else s["clean"]
        return {"img1": frames[0], "img2": frames[1], "flow": s["flows"][0], "valid": s["valids"][0],
                "occ": s["occs"][0]}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if self.clip_length == 2:
            return super().__getitem__(item)
        index = self._index(int(item[0] if isinstance(item, tuple) else item))
        s = self._render(index)
        frames = s["frames"] if self.pass_ == "final" else s["clean"]
        out = to_sample({"img1": frames[0], "img2": frames[1], "flow": s["flows"][0], "valid": s["valids"][0],
                         "occ": s["occs"][0]}, self.meta(index))
        out["frames"] = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        flows = np.ascontiguousarray(s["flows"], dtype=np.float32)   # exact everywhere; `valids` masks scoring
        out["flows"] = torch.from_numpy(flows).permute(0, 3, 1, 2).contiguous()
        out["valids"] = torch.from_numpy(s["valids"])
        out["occs"] = torch.from_numpy(s["occs"])
        return out


def write_tree(out_dir: str | os.PathLike, domain: "str | Domain | dict[str, Any]" = "source", n: int = 10,
               size: Sequence[int] = (256, 256), seed: int = 0, clip_length: int = 2,
               progress: bool = False) -> Path:
    """Write ``n`` synthetic scenes as an MPI-Sintel training tree under ``out_dir``; returns its root.

    Layout: ``training/{clean,final}/scene_KKKK/frame_TTTT.png`` (T from 1), ``training/flow/.../frame_TTTT.flo``
    for each pair TTTT -> TTTT+1, ``training/occlusions/`` (255 = occluded) and ``training/invalid/``
    (255 = the point leaves the frame), plus ``domain.json`` (domain, seed, size). Scene k is
    ``render_sample(domain, size, seed, k, clip_length)``; ``build_dataset("sintel", out_dir, pass_="final")``
    reads it back sample for sample (images, flow, valid and occ identical).
    """
    d = get_domain(domain)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    root = Path(out_dir)
    base = root / "training"
    it: Any = range(int(n))
    if progress:
        it = tqdm(it, desc=f"synth {d.name}", unit="scene")
    for k in it:
        s = render_sample(d, size, seed, k, clip_length)
        scene = f"scene_{k:04d}"
        for t in range(int(clip_length)):
            name = f"frame_{t + 1:04d}"
            write_image(base / "clean" / scene / f"{name}.png", s["clean"][t].astype(np.uint8))
            write_image(base / "final" / scene / f"{name}.png", s["frames"][t].astype(np.uint8))
            if t < int(clip_length) - 1:
                write_flow(base / "flow" / scene / f"{name}.flo", s["flows"][t])
                write_image(base / "occlusions" / scene / f"{name}.png", s["occs"][t].astype(np.uint8) * 255)
                write_image(base / "invalid" / scene / f"{name}.png", (~s["valids"][t]).astype(np.uint8) * 255)
    info = {"domain": d.to_dict(), "seed": int(seed), "size": [int(size[0]), int(size[1])], "scenes": int(n),
            "clip_length": int(clip_length), "generator": "mlof.data.synthetic.render_sample"}
    with atomic_open(root / "domain.json", "w") as f:
        json.dump(info, f, indent=2)
    return root
