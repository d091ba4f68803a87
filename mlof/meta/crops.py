"""Seeded random crops for the release protocol: each adaptation step sees a new (augmented) crop of the frames."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mlof.data.augment import FlowAugmentor, build_augmentor
from mlof.meta.settings import AdaptSettings

__all__ = ["crop_augmentor", "draw_crops"]

Pair = tuple[torch.Tensor, torch.Tensor]


def crop_augmentor(s: AdaptSettings) -> FlowAugmentor:
    """The augmentor of ``s.augment`` (its crop replaced by ``s.crop`` when given), or a plain random crop of
    ``s.crop`` (no photometric change, eraser, resize or flip)."""
    if s.augment is not None:
        return build_augmentor(s.augment, **({"crop_size": s.crop} if s.crop is not None else {}))
    return FlowAugmentor(crop_size=s.crop, photometric=False, eraser_prob=0.0, spatial_prob=0.0, do_flip=False)


def draw_crops(pairs: Sequence[Pair], aug: Any, rng: np.random.Generator) -> list[Pair]:
    """One augmented random crop of every sample of every pair (N x 3 x h x w tensors, device kept)."""
    out = []
    for img1, img2 in pairs:
        a, b = [], []
        for n in range(img1.shape[0]):
            raw = {"img1": img1[n].detach().permute(1, 2, 0).float().cpu().numpy(),
                   "img2": img2[n].detach().permute(1, 2, 0).float().cpu().numpy()}
            res = aug(raw, rng=rng)
            a.append(torch.from_numpy(res["img1"].astype("float32")).permute(2, 0, 1))
            b.append(torch.from_numpy(res["img2"].astype("float32")).permute(2, 0, 1))
        out.append((torch.stack(a).to(img1.device), torch.stack(b).to(img2.device)))
    return out
