"""Published unsupervised loss recipes as data, and the schema to write new ones.

A recipe is a flat mapping of TERM WEIGHTS (keys in ``TERMS``) and OPTIONS (fields of ``RecipeConfig``),
optionally starting from a named recipe with ``"base"``:

    build_loss("mlof")
    build_loss({"base": "arflow", "smooth2": 50.0})                 # ARFlow's Sintel smoothness weight
    build_loss({"photo_census": 1.0, "smooth2": 2.0, "occlusion": "range_map_soft", "image_scale": 1.0,
                "edge_constant": 150.0, "smooth_variant": "uflow"})

Unknown keys raise ``LossInputError``. ``RECIPES`` holds the published settings; the sources (file and line
of the public code) are listed in docs/losses.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .common import LossInputError

__all__ = ["TERMS", "PHOTO_TERMS", "RecipeConfig", "RECIPES", "resolve_recipe"]

PHOTO_TERMS = ("photo_l1", "photo_ssim", "photo_census", "photo_ternary", "photo_charbonnier", "photo_abs_robust")
TERMS = PHOTO_TERMS + ("smooth1", "smooth2", "distill", "selfsup", "ar")

_OCCLUSIONS = ("range_map", "range_map_soft", "fb", "fb_length", "none")


@dataclass(frozen=True)
class RecipeConfig:
    """Every constant of an unsupervised recipe. Defaults are neutral; ``RECIPES`` sets the published values.

    weights:          term -> weight (see ``TERMS``); photometric weights act inside the photometric group.
    photo_scale:      multiplies the whole photometric group (MLOF's ``4 * warp_loss``).
    image_scale:      255.0 = images enter the loss in 0..255 as given (MLOF release quirk); 1.0 = divided by
                      255 first (ARFlow, UFlow, SMURF, UPFlow). Changes SSIM constants' and edge weights' effect.
    bidirectional:    "mean" ((fw + bw) / 2: ARFlow, MLOF, UFlow, SMURF) or "sum" (UPFlow).
    occlusion:        "range_map" (hard, clamp(range) < occ_threshold; ARFlow ``occ_from_back``, MLOF),
                      "range_map_soft" (1 - clamp(range, 0, 1); UFlow/SMURF 'wang'), "fb" (UnFlow squared test,
                      fb_alpha1/fb_alpha2), "fb_length" (UPFlow test on lengths) or "none".
    detach_mask:      stop the gradient through the occlusion mask (hard masks carry none anyway).
    mask_in_frame:    also mask pixels whose flow leaves the frame (UFlow/SMURF ``valid_warp_mask``).
    ssim_masked_inputs: SSIM of (warped * mask, img * mask), then / mean(mask) (ARFlow/MLOF), instead of
                      masking the SSIM map.
    warp_padding:     "border" (ARFlow/MLOF ``warp_pad``) or "zeros" (UFlow/SMURF resampler).
    census_patch:     patch of ``photo_census`` (UFlow/SMURF 7); ``photo_ternary`` is ARFlow's 3x3 mean variant.
    charbonnier_alpha / charbonnier_eps: ``photo_charbonnier`` constants (UnFlow 0.45, 1e-3).
    robust_q / robust_eps: ``photo_abs_robust`` and distillation penalty (|x| + eps)^q (DDFlow 0.4, 0.01).
    smooth_variant:   "arflow", "uflow" or "upflow" (see ``edge_aware_smoothness``).
    edge_constant:    edge-aware weight constant (ARFlow/MLOF 10, UFlow/SMURF 150, UPFlow 1).
    edge_weighting:   "exponential" or "gaussian".
    smooth_level:     resolution of the smoothness term: the images are halved this many times and the flow
                      taken from ``extras['pyramid_fw']`` at that size or area-downsampled (UFlow 2, others 0).
    smooth_flow_norm: "none" or "min_hw" (ARFlow divides the flow by min(H, W) before its smoothness).
    smooth_bw_min_hw: MLOF release quirk: the BACKWARD flow's smoothness is computed on ``flow_bw / min(H, W)``
                      (the release assigns ``s = min(h, w)`` between the forward and the backward term), which
                      makes it practically vanish. True in the "mlof" recipe; "mlof_paper" turns it off.
    ssim_precision:   "native" (float32 ``E[x^2] - E[x]^2``, the releases) or "float64" (no cancellation on
                      0..255 images).
    pyramid_photo_weights: photometric weight of each extra pyramid level in ``extras['pyramid_fw']``
                      (finest first, after the full-resolution flow); ARFlow w_scales[1:] = (1, 1, 1, 0).
    ar_weight / selfsup options: see ``distill.py``; fb_sigma_teacher / fb_sigma_student SMURF 0.003 / 0.03.
    keep_close_weight: weight of ``keep_close`` (MLOF ``wkeeper`` 10), applied by ``mlof.meta.objective`` (the
                      meta-learner and test-time adaptation) through ``loss.keep_close_weight``.
    """

    name: str = "custom"
    weights: Mapping[str, float] = field(default_factory=dict)
    photo_scale: float = 1.0
    image_scale: float = 1.0
    bidirectional: str = "mean"
    occlusion: str = "range_map"
    occ_threshold: float = 0.2
    fb_alpha1: float = 0.01
    fb_alpha2: float = 0.5
    detach_mask: bool = True
    mask_in_frame: bool = False
    ssim_masked_inputs: bool = True
    warp_padding: str = "border"
    census_patch: int = 7
    charbonnier_alpha: float = 0.45
    charbonnier_eps: float = 1e-3
    robust_q: float = 0.4
    robust_eps: float = 0.01
    smooth_variant: str = "arflow"
    edge_constant: float = 10.0
    edge_weighting: str = "exponential"
    smooth_level: int = 0
    smooth_flow_norm: str = "none"
    smooth_bw_min_hw: bool = False
    ssim_precision: str = "native"
    pyramid_photo_weights: tuple[float, ...] = ()
    fb_sigma_teacher: float = 0.003
    fb_sigma_student: float = 0.03
    keep_close_weight: float = 0.0

    def constants(self) -> dict[str, Any]:
        """Plain dict of every constant (weights flattened in), for logging and constant-freezing tests."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "weights"}
        out.update({k: float(v) for k, v in sorted(self.weights.items())})
        return out


def _frozen(**weights: float) -> Mapping[str, float]:
    return MappingProxyType(dict(weights))


RECIPES: Mapping[str, RecipeConfig] = MappingProxyType({
    # MLOF release (ChaerinMin/MLOF meta_train.py arloss defaults + core/advanced_loss/flow_loss.py):
    # 4 * (0.15 L1 + 0.85 SSIM)/mean(noc) + 75 * smooth2 (alpha 10), bidirectional, range map th 0.2,
    # images in 0..255, forward smoothness on the pixel flow, backward smoothness on flow_bw / min(H, W)
    # (quirk), float32 SSIM, wkeeper 10. docs/fidelity.md lists every quirk and its switch.
    "mlof": RecipeConfig(name="mlof", weights=_frozen(photo_l1=0.15, photo_ssim=0.85, smooth2=75.0),
                         photo_scale=4.0, image_scale=255.0, occlusion="range_map", occ_threshold=0.2,
                         warp_padding="border", smooth_variant="arflow", edge_constant=10.0,
                         smooth_flow_norm="none", smooth_bw_min_hw=True, keep_close_weight=10.0),
    # MLOF as its paper describes it (the release's quirks switched off): images in 0..1 (so SSIM's constants
    # and the edge weight exp(-10 |dI|) act as in ARFlow), both directions' smoothness on the pixel flow.
    "mlof_paper": RecipeConfig(name="mlof_paper", weights=_frozen(photo_l1=0.15, photo_ssim=0.85, smooth2=75.0),
                               photo_scale=4.0, image_scale=1.0, occlusion="range_map", occ_threshold=0.2,
                               warp_padding="border", smooth_variant="arflow", edge_constant=10.0,
                               smooth_flow_norm="none", smooth_bw_min_hw=False, keep_close_weight=10.0),
    # ARFlow configs/kitti_raw.json (first stage): 0.15 L1 + 0.85 SSIM, range map, smooth2 75, alpha 10,
    # w_scales (1, 1, 1, 1, 0), w_sm_scales (1, 0, ...), flow / min(H, W) in the smoothness; w_ar 0.01.
    "arflow": RecipeConfig(name="arflow", weights=_frozen(photo_l1=0.15, photo_ssim=0.85, smooth2=75.0, ar=0.01),
                           image_scale=1.0, occlusion="range_map", occ_threshold=0.2, warp_padding="border",
                           smooth_variant="arflow", edge_constant=10.0, smooth_flow_norm="min_hw",
                           pyramid_photo_weights=(1.0, 1.0, 1.0, 0.0)),
    # UFlow uflow_flags.py defaults: census 1 (7x7), smooth2 2.0, edge 150 exponential, smoothness at
    # level 2 (1/4 resolution), occlusion 'wang' (soft range map), stop_gradient_mask, valid-warp mask.
    "uflow": RecipeConfig(name="uflow", weights=_frozen(photo_census=1.0, smooth2=2.0), image_scale=1.0,
                          occlusion="range_map_soft", mask_in_frame=True, ssim_masked_inputs=False,
                          warp_padding="zeros", census_patch=7, smooth_variant="uflow", edge_constant=150.0,
                          edge_weighting="exponential", smooth_level=2),
    # SMURF smurf_flags.py defaults: census 1, smooth2 2.0 (edge 150, exponential) at full resolution for
    # RAFT, 'wang' occlusion, self-supervision 0.3 with gaussian fb masks (0.003 / 0.03).
    "smurf": RecipeConfig(name="smurf", weights=_frozen(photo_census=1.0, smooth2=2.0, selfsup=0.3),
                          image_scale=1.0, occlusion="range_map_soft", mask_in_frame=True,
                          ssim_masked_inputs=False, warp_padding="zeros", census_patch=7, smooth_variant="uflow",
                          edge_constant=150.0, edge_weighting="exponential", smooth_level=0),
    # UPFlow model/upflow.py config/demo: abs_robust photo (q 0.4) + census 1, fb check on lengths
    # (alpha 0.1, 0.5), 1st-order edge smoothness weight 1 at the final level, pyramid distillation
    # ('upup', occlusion-masked) weight 1; fw and bw terms summed.
    "upflow": RecipeConfig(name="upflow", weights=_frozen(photo_abs_robust=1.0, photo_census=1.0, smooth1=1.0,
                                                          distill=1.0),
                           image_scale=1.0, bidirectional="sum", occlusion="fb_length", fb_alpha1=0.1,
                           fb_alpha2=0.5, ssim_masked_inputs=False, warp_padding="zeros", census_patch=7,
                           smooth_variant="upflow", edge_constant=1.0, smooth_level=0),
})

_FIELDS = {f.name for f in dataclasses.fields(RecipeConfig)} - {"weights", "name"}
_ALIASES = {"image_range": "image_scale"}


def _validate(cfg: RecipeConfig) -> RecipeConfig:
    for k, v in cfg.weights.items():
        if k not in TERMS:
            raise LossInputError(f"unknown loss term {k!r}; terms are {TERMS}")
        if not isinstance(v, (int, float)) or v < 0:
            raise LossInputError(f"weight of {k!r} must be a number >= 0, got {v!r}")
    checks = {"bidirectional": ("mean", "sum"), "occlusion": _OCCLUSIONS,
              "warp_padding": ("border", "zeros", "reflection"), "smooth_variant": ("arflow", "uflow", "upflow"),
              "edge_weighting": ("exponential", "gaussian"), "smooth_flow_norm": ("none", "min_hw"),
              "ssim_precision": ("native", "float64")}
    for key, allowed in checks.items():
        if getattr(cfg, key) not in allowed:
            raise LossInputError(f"{key} must be one of {allowed}, got {getattr(cfg, key)!r}")
    if cfg.image_scale not in (1.0, 255.0):
        raise LossInputError(f"image_scale must be 1 (normalised) or 255 (MLOF quirk), got {cfg.image_scale!r}")
    if cfg.smooth_level < 0:
        raise LossInputError(f"smooth_level must be >= 0, got {cfg.smooth_level}")
    if not 0.0 < cfg.occ_threshold <= 1.0:
        raise LossInputError(f"occ_threshold must be in (0, 1], got {cfg.occ_threshold}")
    return cfg


def resolve_recipe(recipe: str | Mapping[str, Any] | RecipeConfig) -> RecipeConfig:
    """Turn a recipe name, a flat dict (weights + options, optional ``base``) or a config into a RecipeConfig."""
    if isinstance(recipe, RecipeConfig):
        return _validate(recipe)
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise LossInputError(f"unknown loss recipe {recipe!r}; known: {sorted(RECIPES)}")
        return RECIPES[recipe]
    if not isinstance(recipe, Mapping):
        raise LossInputError(f"recipe must be a name, a dict or a RecipeConfig, got {type(recipe).__name__}")
    spec = dict(recipe)
    base_name = spec.pop("base", None)
    if base_name is not None and base_name not in RECIPES:
        raise LossInputError(f"unknown base recipe {base_name!r}; known: {sorted(RECIPES)}")
    base = RECIPES[base_name] if base_name is not None else RecipeConfig()
    weights = dict(base.weights)
    weights.update({k: float(v) for k, v in dict(spec.pop("weights", {})).items()})
    options: dict[str, Any] = {}
    for key, value in spec.items():
        key = _ALIASES.get(key, key)
        if key in TERMS:
            weights[key] = float(value)
        elif key in _FIELDS:
            options[key] = tuple(value) if key == "pyramid_photo_weights" else value
        else:
            raise LossInputError(f"unknown recipe key {key!r}: not a term {TERMS} nor an option "
                                 f"{sorted(_FIELDS)}")
    if "image_scale" in options:  # 255 / "255" / 1 / "1"
        try:
            options["image_scale"] = float(options["image_scale"])
        except (TypeError, ValueError):
            raise LossInputError(f"image_scale must be 1 or 255, got {options['image_scale']!r}") from None
    name = f"{base_name}+custom" if base_name else "custom"
    cfg = dataclasses.replace(base, name=name, weights=MappingProxyType(weights), **options)
    return _validate(cfg)
