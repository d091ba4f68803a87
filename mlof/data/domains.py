"""Synthetic domains: parameter sets of the generator (:mod:`mlof.data.synthetic`).

A :class:`Domain` is a frozen dataclass of parameter ranges; ``source`` and ``target`` differ in texture
statistics (spectral slope, contrast, saturation, edge density, colour cast), lighting change between
frames, blur, noise and motion statistics. Custom domains come from a dict or a YAML file (key ``base``
picks the defaults). Motion magnitudes are given for a 436-px-high frame and scale with min(H, W) / 436.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Domain", "DOMAINS", "get_domain", "MOTION_REFERENCE"]

MOTION_REFERENCE = 436.0    # motion parameters are pixels at this min(H, W); they scale with the frame
Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """Parameter ranges of a synthetic domain; each range ``(low, high)`` is sampled uniformly per sample
    (or per layer for textures). Units: grey levels 0..255, pixels at a 436-px frame, degrees."""

    name: str = "custom"
    # scene and textures
    num_objects: tuple[int, int] = (3, 7)        # object layers over the background (inclusive)
    object_size: Range = (0.15, 0.45)            # object diameter / min(H, W)
    texture_alpha: Range = (0.8, 1.3)            # 1/f^alpha spectral slope of the texture modulation
    texture_contrast: Range = (30.0, 55.0)       # std of the modulation, grey levels
    saturation: Range = (0.5, 1.0)               # 0 = grey, 1 = vivid colours
    leaves: Range = (20.0, 60.0)                 # sharp-edged shapes per 256^2 px of texture
    brightness: Range = (90.0, 160.0)            # mean grey level of textures
    palette_spread: Range = (35.0, 60.0)         # std of the leaves' grey levels around the mean
    colour_cast: Range = (1.0, 1.0)              # red gain / blue gain of the scene (1 = neutral)
    flat_fraction: float = 0.0                   # share of layers with almost no texture (noise contrast x 0.1):
                                                 # regions where only context tells the motion, as on walls, sky
    pattern_fraction: Range = (0.0, 0.0)         # share of a texture's leaves carrying stripes or checks
    shading: Range = (0.0, 0.0)                  # amplitude of smooth illumination over a texture, grey levels
    # motion per frame
    background_translation: float = 12.0         # max px
    background_rotation: float = 2.0             # max deg
    background_zoom: float = 0.04                # max |log scale|
    object_translation: float = 60.0             # max px (magnitude max * U^object_motion_power)
    object_motion_power: float = 1.3             # > 1 favours small motions (U uniform in 0..1)
    background_motion_power: float = 1.0         # the same for the background translation
    object_rotation: float = 10.0                # max deg
    object_zoom: float = 0.10                    # max |log scale|
    nonrigid: float = 1.5                        # max amplitude of the smooth displacement, px
    nonrigid_cells: int = 4                      # control points per side of the displacement grid
    # photometric change between consecutive frames
    light_gain: Range = (1.0, 1.0)               # multiplicative change per frame
    light_bias: Range = (0.0, 0.0)               # additive change per frame, grey levels
    colour_drift: float = 0.0                    # std of per-channel gain change per frame
    light_gradient: float = 0.0                  # max illumination ramp change across the frame, per frame
    # sensor
    blur_sigma: Range = (0.0, 0.0)               # Gaussian blur, px
    noise_std: Range = (0.0, 0.0)                # additive Gaussian noise, grey levels

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (tuple, list)):
                if len(v) != 2 or v[0] > v[1]:
                    raise ValueError(f"domain {self.name!r}: {f.name} must be (low, high) with low <= high, "
                                     f"got {v!r}")
                object.__setattr__(self, f.name, (type(v[0])(v[0]), type(v[1])(v[1])))
        if self.num_objects[0] < 0 or self.nonrigid_cells < 2:
            raise ValueError(f"domain {self.name!r}: num_objects must be >= 0 and nonrigid_cells >= 2")
        if min(self.object_size) <= 0 or min(self.blur_sigma) < 0 or min(self.noise_std) < 0:
            raise ValueError(f"domain {self.name!r}: object_size must be > 0, blur_sigma and noise_std >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "str | Domain | None" = None) -> "Domain":
        """A domain from a dict (e.g. parsed YAML); keys not given come from ``base`` (a name or Domain)."""
        start = get_domain(base) if base is not None else cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown domain parameter(s) {unknown}; known: {sorted(known)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return dataclasses.replace(start, **values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Domain":
        """A domain from a YAML file; a top-level ``base: source|target`` key picks the defaults."""
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a domain file must hold a mapping of parameters")
        base = data.pop("base", None)
        data.setdefault("name", Path(path).stem)
        return cls.from_dict(data, base=base)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


DOMAINS: dict[str, Domain] = {
    # Clean, colourful, textured, moderate motion: a Chairs/Things-like training domain.
    "source": Domain(name="source"),
    # Another "camera and world": smoother, low-contrast, desaturated textures with a warm cast, fewer edges,
    # larger and non-rigid motion, lighting changing between frames, defocus blur and sensor noise.
    "target": Domain(
        name="target", num_objects=(2, 5), object_size=(0.2, 0.55), texture_alpha=(1.5, 2.0),
        texture_contrast=(12.0, 28.0), saturation=(0.05, 0.3), leaves=(4.0, 15.0), brightness=(60.0, 120.0),
        palette_spread=(10.0, 25.0),
        colour_cast=(1.15, 1.3), background_translation=30.0, background_rotation=4.0, background_zoom=0.08,
        object_translation=100.0, object_rotation=25.0, object_zoom=0.2, nonrigid=4.0, nonrigid_cells=5,
        light_gain=(0.9, 1.1), light_bias=(-6.0, 6.0), colour_drift=0.03, light_gradient=0.1,
        blur_sigma=(0.7, 1.5), noise_std=(2.0, 5.0)),
    # Closer to real footage (Sintel, Middlebury, driving): textures from flat to busy, with shading,
    # periodic patterns (aperture problems) and low-texture layers; mostly small motions with a heavy tail
    # (many real scenes move 0-5 px, some 50+); mild blur, noise and lighting change. The source domain of the
    # shipped model (checkpoints/README.md).
    "natural": Domain(
        name="natural", num_objects=(2, 7), object_size=(0.1, 0.5), texture_alpha=(0.9, 2.0),
        texture_contrast=(4.0, 45.0), saturation=(0.15, 0.9), leaves=(60.0, 400.0), brightness=(50.0, 180.0),
        palette_spread=(15.0, 60.0), flat_fraction=0.3, pattern_fraction=(0.0, 0.25), shading=(0.0, 40.0),
        background_translation=16.0, background_rotation=2.0, background_zoom=0.05, background_motion_power=1.8,
        object_translation=70.0, object_rotation=10.0, object_zoom=0.1, object_motion_power=2.2, nonrigid=2.0,
        light_gain=(0.95, 1.05), light_bias=(-4.0, 4.0), colour_drift=0.01, light_gradient=0.03,
        blur_sigma=(0.0, 1.0), noise_std=(0.0, 3.0)),
}


def get_domain(domain: "str | Domain | dict[str, Any] | os.PathLike") -> Domain:
    """A :class:`Domain` from a name (source, target), a Domain, a dict, or a YAML file path."""
    if isinstance(domain, Domain):
        return domain
    if isinstance(domain, dict):
        d = dict(domain)
        return Domain.from_dict(d, base=d.pop("base", None))
    if isinstance(domain, (str, os.PathLike)):
        if str(domain) in DOMAINS:
            return DOMAINS[str(domain)]
        if Path(domain).suffix.lower() in (".yaml", ".yml") and Path(domain).is_file():
            return Domain.from_yaml(domain)
        raise ValueError(f"unknown domain {str(domain)!r}: use one of {sorted(DOMAINS)}, a dict of parameters "
                         f"or a YAML file")
    raise ValueError(f"domain must be a name, Domain, dict or YAML path, got {type(domain).__name__}")
