"""What every network shares at its surface: the output record, input checks and padding."""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FlowOutput", "Capabilities", "InvalidImageError", "validate_image", "validate_images", "InputPadder",
           "freeze_batchnorm", "warn_once", "warn_range", "PRECISIONS", "check_precision", "precision_autocast",
           "as_float32"]

# Reduced-precision autocast inside a network: "fp32" (none, exact), "bf16" (CPU and CUDA), "fp16" (CUDA only).
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise a one-line ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def precision_autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` on ``device`` (a null context for fp32).

    fp16 needs CUDA: on another device it raises ``ValueError`` (CPU fp16 convolutions are slow and
    overflow-prone; use bf16 there).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device, the input is on {device.type}; "
                         f"use precision='bf16' on CPU")
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[check_precision(precision)])


def as_float32(value: Any) -> Any:
    """Every floating tensor inside ``value`` (tensors, lists, tuples, dicts, FlowOutput) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, FlowOutput):
        return FlowOutput(**{f.name: as_float32(getattr(value, f.name)) for f in fields(FlowOutput)})
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Capabilities:
    """What a backbone supports, declared by its class (``backbones.capabilities(name)``); callers read it
    instead of guessing from signatures.

    iterations:    ``forward`` takes ``iters`` (recurrent refinement); networks without it ignore ``iters``.
    warm_start:    ``forward`` takes ``flow_init`` (a previous call's ``out.flow_low``).
    corr:          the backends of the build option ``corr`` (empty: no correlation switch).
    precisions:    accepted values of the build option ``precision``.
    memory:        memory options it honours: ``memory_budget`` (per-call plans) and the savers a plan may pick
                   (``checkpoint_iterations``, ``checkpoint_encoder``, ``attention_chunk``).
    bidirectional: ``forward(..., bidirectional=True)`` estimates both directions from one shared encoder pass
                   and returns the backward flow in ``out.flow_bw`` (``flow_bw_low``, ``flows_bw``).
    video_memory:  ``infer_sequence(frames)`` / ``step`` carry a memory of earlier frames along a video.
    """

    iterations: bool = False
    warm_start: bool = False
    corr: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    memory: tuple[str, ...] = ()
    bidirectional: bool = False
    video_memory: bool = False


@dataclass
class FlowOutput:
    """Result of a flow network call. Flows are in pixels, channel 0 = u/x, 1 = v/y.

    flow:        N x 2 x H x W final full-resolution flow image1 -> image2.
    flow_low:    coarse flow used for warm start (RAFT family: N x 2 x H/8 x W/8 on the padded grid), or None.
    flows:       every full-resolution prediction (iterations or pyramid levels, coarse to fine, the last one
                 is ``flow``), filled when training or when ``return_all=True``; otherwise empty.
    pyramid:     pyramid networks (UPFlow, LiteFlowNet2): the decoded flow of every level at its own
                 resolution, in pixels of that level, FINEST FIRST (the order of ``mlof.losses``); else empty.
    flow_bw, flow_bw_low, flows_bw, pyramid_bw: the same for the backward direction image2 -> image1, filled
                 by bidirectional calls (``Capabilities.bidirectional``; UPFlow built with
                 ``bidirectional=True``); None / empty otherwise.
    extras:      other network-specific outputs (e.g. UPFlow's occlusion masks, LiteFlowNet2's padding).
    """

    flow: torch.Tensor
    flow_low: torch.Tensor | None = None
    flows: list[torch.Tensor] = field(default_factory=list)
    pyramid: list[torch.Tensor] = field(default_factory=list)
    flow_bw: torch.Tensor | None = None
    flow_bw_low: torch.Tensor | None = None
    flows_bw: list[torch.Tensor] = field(default_factory=list)
    pyramid_bw: list[torch.Tensor] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def with_backward(self, backward: "FlowOutput") -> "FlowOutput":
        """This (forward) output with the backward-direction fields taken from ``backward``, the output of the
        same network on the swapped pair."""
        return replace(self, flow_bw=backward.flow, flow_bw_low=backward.flow_low, flows_bw=backward.flows,
                       pyramid_bw=backward.pyramid)


class InvalidImageError(ValueError):
    """An image argument is not a valid flow-network input; the one-line message names the argument."""


def validate_image(image: Any, name: str = "image", min_size: int = 1, check_finite: bool = True) -> torch.Tensor:
    """Return ``image`` if it is a float N x 3 x H x W tensor with H, W >= ``min_size`` (and finite, with
    ``check_finite``); else raise ``InvalidImageError`` naming ``name`` and the problem."""
    if not isinstance(image, torch.Tensor):
        raise InvalidImageError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4:
        raise InvalidImageError(f"{name} must be N x 3 x H x W, got shape {tuple(image.shape)}")
    if image.shape[1] != 3:
        raise InvalidImageError(f"{name} must have 3 colour channels (N x 3 x H x W), got {image.shape[1]} "
                                f"in shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InvalidImageError(f"{name} must be a floating-point tensor with values 0..255, got dtype "
                                f"{image.dtype}")
    h, w = image.shape[-2:]
    if h < min_size or w < min_size:
        raise InvalidImageError(f"{name} is {h}x{w}: too small (each side must be at least {min_size} px)")
    if check_finite and not bool(torch.isfinite(image).all()):
        raise InvalidImageError(f"{name} contains NaN or inf pixels")
    return image


def validate_images(image1: torch.Tensor, image2: torch.Tensor, min_size: int = 1, check_finite: bool = True,
                    check_range: bool = True, names: tuple[str, str] = ("image1", "image2")) -> None:
    """Raise ``InvalidImageError`` (a ``ValueError``) naming the argument if the two images are not a valid
    flow-network input: every image check of backbones and mlof (networks, losses, frames) is this one.

    Expected: two float tensors N x 3 x H x W of equal shape and device, values 0..255, finite, H and W >=
    min_size (networks pad what is smaller than they need, so the default accepts 1 x 1). ``names`` are the
    argument names the messages use. With ``check_range`` a pair whose values look like 0..1 or 0..65535 gives a
    warning, once per process (see ``warn_range``).
    """
    for name, im in zip(names, (image1, image2)):
        validate_image(im, name, min_size, check_finite=False)
    if image1.shape != image2.shape:
        raise InvalidImageError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(image1.shape)} "
                                f"and {tuple(image2.shape)}")
    if image1.device != image2.device:
        raise InvalidImageError(f"{names[0]} and {names[1]} are on different devices ({image1.device}, "
                                f"{image2.device})")
    if check_finite:
        for name, im in zip(names, (image1, image2)):
            if not bool(torch.isfinite(im).all()):
                raise InvalidImageError(f"{name} contains NaN or inf pixels")
    if check_range:
        warn_range(image1, image2)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm layer of ``model`` in eval mode (running statistics fixed), as RAFT's ``freeze_bn``;
    the one implementation (``RAFTBase(freeze_bn=True)`` and ``mlof pretrain freeze_bn=true`` call it)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> bool:
    """Issue ``message`` as a ``UserWarning`` the first time ``key`` is seen in this process; True if issued.

    For likely mistakes that are not errors (random weights, images in another value range): loud once,
    silent afterwards, so a loop over a dataset does not print the same warning for every pair.
    """
    if key in _WARNED:
        return False
    _WARNED.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)
    return True


def warn_range(*images: torch.Tensor) -> None:
    """Warn (once per process) when images meant to be 0..255 look like 0..1 or 0..65535.

    0..1: the largest value is at most 1 while some value is non-zero (a real 0..255 photograph is never
    that dark); 0..65535: some value exceeds 256 (16-bit PNGs read without scaling).
    """
    if {"range01", "range16"} <= _WARNED:
        return  # both warnings given: nothing left to say, so no reduction (and no device sync) per call
    with torch.no_grad():
        # min and max of every image in one transfer per device (each float(...) would sync a GPU)
        stats = [torch.stack(torch.aminmax(im.detach())) for im in images]
        groups = [torch.cat(stats)] if len({t.device for t in stats}) == 1 else stats
        values = [v for t in groups for v in t.tolist()]
    lows, highs = values[0::2], values[1::2]
    hi, lo = max(highs), min(lows)
    if 0.0 < hi <= 1.0 and lo >= 0.0:
        warn_once("range01", f"images look like 0..1 (largest value {hi:.3g}); flow networks expect 0..255: "
                             f"multiply by 255")
    elif hi > 256.0:
        warn_once("range16", f"images exceed 255 (largest value {hi:.6g}; 16-bit 0..65535?); flow networks "
                             f"expect 0..255: divide by 257")


class InputPadder:
    """Pads images so that H and W are multiples of ``divisor`` and at least ``min_size``, with replicate
    padding (RAFT protocol).

    mode="sintel" splits the padding evenly on both sides (extra pixel right/bottom);
    mode="kitti" puts all the height padding at the bottom and splits the width padding.
    With ``min_size=0`` (default) this matches the official RAFT ``InputPadder`` exactly; ``min_size`` only
    adds padding to sides shorter than it (rounded up to a multiple of ``divisor``), so sizes the official
    code takes are padded as it pads them.
    """

    def __init__(self, shape: tuple[int, ...] | torch.Size, divisor: int = 8, mode: str = "sintel",
                 min_size: int = 0):
        if mode not in ("sintel", "kitti"):
            raise ValueError(f"padding mode must be 'sintel' or 'kitti', got {mode!r}")
        self.ht, self.wd = int(shape[-2]), int(shape[-1])
        target = math.ceil(max(int(min_size), 1) / divisor) * divisor
        pad_ht = max((math.ceil(self.ht / divisor) * divisor - self.ht) % divisor, target - self.ht)
        pad_wd = max((math.ceil(self.wd / divisor) * divisor - self.wd) % divisor, target - self.wd)
        if mode == "sintel":
            self._pad = [pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2]
        else:
            self._pad = [pad_wd // 2, pad_wd - pad_wd // 2, 0, pad_ht]

    @property
    def pad(self) -> list[int]:
        """[left, right, top, bottom] in pixels."""
        return list(self._pad)

    @property
    def is_identity(self) -> bool:
        return not any(self._pad)

    def pad_tensors(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if self.is_identity:
            return list(inputs)
        return [F.pad(x, self._pad, mode="replicate") for x in inputs]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        ht, wd = x.shape[-2:]
        left, right, top, bottom = self._pad
        return x[..., top:ht - bottom, left:wd - right]
