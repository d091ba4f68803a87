"""RAFT's convolutional encoders (feature and context networks).

Module names and creation order follow the official RAFT ``extractor.py`` so that ``state_dict`` keys, their
order and shapes equal the official ones (e.g. ``layer2.0.norm3`` and ``layer2.0.downsample.1`` are the same
module, listed twice, as in the official file).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from backbones.layers.checkpointing import checkpoint_call

__all__ = ["NORM_FNS", "make_norm", "ResidualBlock", "BottleneckBlock", "BasicEncoder", "SmallEncoder"]

NORM_FNS = ("group", "batch", "instance", "none")


def make_norm(norm_fn: str, channels: int, num_groups: int) -> nn.Module:
    """Normalisation layer by name: ``group`` | ``batch`` | ``instance`` (affine-free) | ``none`` (identity)."""
    if norm_fn == "group":
        return nn.GroupNorm(num_groups=num_groups, num_channels=channels)
    if norm_fn == "batch":
        return nn.BatchNorm2d(channels)
    if norm_fn == "instance":
        return nn.InstanceNorm2d(channels)
    if norm_fn == "none":
        return nn.Sequential()  # the official identity: owns no state_dict entries
    raise ValueError(f"norm_fn must be one of {', '.join(NORM_FNS)}, got {norm_fn!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when strided). N x Cin x H x W ->
    N x planes x H/stride x W/stride."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        groups = planes // 8
        self.norm1 = make_norm(norm_fn, planes, groups)
        self.norm2 = make_norm(norm_fn, planes, groups)
        if stride != 1:
            self.norm3 = make_norm(norm_fn, planes, groups)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with a residual connection (RAFT-small). N x Cin x H x W ->
    N x planes x H/stride x W/stride."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        groups = planes // 8
        self.norm1 = make_norm(norm_fn, planes // 4, groups)
        self.norm2 = make_norm(norm_fn, planes // 4, groups)
        self.norm3 = make_norm(norm_fn, planes, groups)
        if stride != 1:
            self.norm4 = make_norm(norm_fn, planes, groups)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm4)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class _Encoder(nn.Module):
    """Shared body: 7x7/2 stem, three stages of two blocks (strides 1, 2, 2), 1x1 output conv -> 1/8 resolution.

    ``forward`` takes one batch N x 3 x H x W, or a list/tuple of batches that are encoded together (one pass
    over the concatenation) and returned as a tuple of N x output_dim x H/8 x W/8 tensors.
    ``checkpoint_blocks``: with autograd on, recompute the stem and each residual block during backward
    instead of storing their activations (set by the network's memory plan; exact, BatchNorm-safe).
    """

    checkpoint_blocks: bool = False

    block: type[nn.Module]
    widths: tuple[int, int, int, int]  # stem width, stage widths

    def __init__(self, output_dim: int, norm_fn: str, dropout: float, dropout_before_conv2: bool,
                 float32_stem: bool = True):
        super().__init__()
        self.float32_stem = float32_stem   # under bf16 autocast (see _stem)
        if norm_fn not in NORM_FNS:
            raise ValueError(f"norm_fn must be one of {', '.join(NORM_FNS)}, got {norm_fn!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        stem, w1, w2, w3 = self.widths
        self.norm_fn = norm_fn
        self.norm1 = make_norm(norm_fn, stem, 8)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.in_planes = stem
        self.layer1 = self._make_layer(w1, stride=1)
        self.layer2 = self._make_layer(w2, stride=2)
        self.layer3 = self._make_layer(w3, stride=2)
        # Attribute order only matters for state_dict order; dropout owns no parameters.
        if dropout_before_conv2:
            self.dropout = nn.Dropout2d(p=dropout) if dropout > 0 else None
            self.conv2 = nn.Conv2d(w3, output_dim, kernel_size=1)
        else:
            self.conv2 = nn.Conv2d(w3, output_dim, kernel_size=1)
            self.dropout = nn.Dropout2d(p=dropout) if dropout > 0 else None
        self._init_weights()

    def _make_layer(self, dim: int, stride: int) -> nn.Sequential:
        layers = nn.Sequential(self.block(self.in_planes, dim, self.norm_fn, stride=stride),
                               self.block(dim, dim, self.norm_fn, stride=1))
        self.in_planes = dim
        return layers

    def _init_weights(self) -> None:
        # Official initialisation (matters only when training from scratch).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.constant_(m.weight, 1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def _checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and residual blocks, each recomputed during backward (BatchNorm statistics kept exact).

        The half-resolution part (stem and layer1) is one more checkpoint around its per-block checkpoints:
        between forward and backward only its input and output stay, not its three half-resolution block
        boundaries (0.4 GB per 1080p image), at the cost of running it once more during backward."""
        x = checkpoint_call(self._half_resolution, x, owner=self)
        for block in (*self.layer2, *self.layer3):
            x = checkpoint_call(block, x)
        return x

    def _half_resolution(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpoint_call(self._stem, x, owner=self.norm1)
        for block in self.layer1:
            x = checkpoint_call(block, x)
        return x

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        bf16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
        if self.float32_stem and bf16:
            # The stem stays float32 under bf16: bf16 cannot hold the normalised 8-bit levels exactly (errors up
            # to a quarter level), which alone moved the shipped model's Sintel flow by 0.008 px on average;
            # the 3-channel stem is about 3 % of the encoder's work. Only the feature encoder needs it (its
            # features feed the correlation; the context encoder's stem in bf16 changed nothing measurable).
            with torch.autocast(device_type=device, enabled=False):
                y = self.relu1(self.norm1(self.conv1(x.float())))
            return y.to(torch.bfloat16)  # keeps the residual path in bf16 (no float32 promotions after it)
        return self.relu1(self.norm1(self.conv1(x)))

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        is_list = isinstance(x, (list, tuple))
        if is_list:
            sizes = [t.shape[0] for t in x]
            x = torch.cat(list(x), dim=0)
        if self.checkpoint_blocks and torch.is_grad_enabled():
            # Per-sample normalisation (instance/group/none, or batch norm in eval mode) lets the samples go
            # through one at a time: the recomputation peak of a block is then one image's, not the batch's.
            per_sample = self.norm_fn != "batch" or not self.training
            parts = x.split(1) if per_sample and x.shape[0] > 1 else (x,)
            x = torch.cat([self._checkpointed(part) for part in parts]) if len(parts) > 1 else \
                self._checkpointed(x)
        else:
            x = self.layer3(self.layer2(self.layer1(self._stem(x))))
        x = self.conv2(x)
        if self.dropout is not None:
            x = self.dropout(x)  # identity in eval mode
        if is_list:
            return tuple(torch.split(x, sizes, dim=0))
        return x


class BasicEncoder(_Encoder):
    """RAFT/GMA encoder: residual blocks 64-64-96-128, output ``output_dim`` channels at 1/8 resolution."""

    block = ResidualBlock
    widths = (64, 64, 96, 128)

    def __init__(self, output_dim: int = 128, norm_fn: str = "batch", dropout: float = 0.0,
                 float32_stem: bool = True):
        super().__init__(output_dim, norm_fn, dropout, dropout_before_conv2=False, float32_stem=float32_stem)


class SmallEncoder(_Encoder):
    """RAFT-small encoder: bottleneck blocks 32-32-64-96, output ``output_dim`` channels at 1/8 resolution."""

    block = BottleneckBlock
    widths = (32, 32, 64, 96)

    def __init__(self, output_dim: int = 128, norm_fn: str = "batch", dropout: float = 0.0,
                 float32_stem: bool = True):
        super().__init__(output_dim, norm_fn, dropout, dropout_before_conv2=True, float32_stem=float32_stem)
