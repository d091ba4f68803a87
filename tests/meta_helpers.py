"""Shared helpers of the meta-learning / adaptation tests: a tiny flow network and the real sample frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backbones import FlowOutput


class ToyFlowNet(nn.Module):
    """A few-parameter flow network with the mlof call convention: flow = conv(images) + learned bias.

    Fast enough to run whole adaptation loops in milliseconds; has a BatchNorm (buffers) and two parameter
    groups ("encoder", "update_block") like the real backbones.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # the same weights for every instance with the same seed
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
            self.update_block = nn.Conv2d(4, 2, 3, padding=1)
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

    def param_group_prefixes(self) -> dict[str, list[str]]:
        return {"feature_encoder": ["encoder"], "update_block": ["update_block", "bias"]}

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 12,
                return_all: bool = False) -> FlowOutput:
        x = torch.cat([image1, image2], 1) / 255.0
        flow = self.update_block(self.encoder(x)) + self.bias.view(1, 2, 1, 1)
        return FlowOutput(flow=flow, flows=[flow * 0.5, flow])


def shifted_pair(h: int = 32, w: int = 48, shift: int = 2, seed: int = 0):
    """A smooth random image and its copy shifted right by ``shift`` px (true flow u = shift); 1 x 3 x H x W."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 4, w // 4, generator=g)
    img = F.interpolate(base, size=(h, w + shift), mode="bilinear", align_corners=False) * 255
    return img[..., shift:].contiguous(), img[..., :w].contiguous()


def load_frame(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """1 x 3 x H x W float 0..255, area-downsampled to ``size`` (H, W) if given."""
    from mlof.io import read_image
    img = torch.from_numpy(np.ascontiguousarray(read_image(path))).permute(2, 0, 1).float()[None]
    if size is not None:
        img = F.interpolate(img, size=size, mode="area")
    return img


def sintel_clip(flow_samples: Path, size: tuple[int, int] | None = (64, 128), frames=(1, 2, 3, 4),
                pass_: str = "clean") -> list[torch.Tensor]:
    root = flow_samples / "sintel" / "training" / pass_ / "alley_1"
    return [load_frame(root / f"frame_{i:04d}.png", size) for i in frames]
