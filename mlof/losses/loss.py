"""The unsupervised loss module: one configurable implementation behind every recipe."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import MASK_EPS, LossInputError, LossOutput, check_flow, check_images, float32_region, masked_mean, to_float
from .distill import augmentation_regularization, pyramid_distillation, self_supervision
from .occlusion import occlusion_fb, occlusion_range_map
from .photometric import abs_robust, census, charbonnier, ssim_3x3, ternary
from .recipes import RecipeConfig, resolve_recipe
from .smoothness import downsample_flow, downsample_image, edge_aware_smoothness
from .warp import in_frame_mask, warp

__all__ = ["UnsupervisedLoss", "build_loss", "EXTRAS"]

# Keyword extras a loss call understands (anything else is a typo and raises):
EXTRAS = {
    "pyramid_fw": "list of coarser forward flows N x 2 x h_l x w_l (pixels of their own level), finest first",
    "pyramid_bw": "the same for the backward flow",
    "teacher_flow": "SMURF: teacher forward flow on the full frames (N x 2 x H x W)",
    "teacher_flow_bw": "SMURF: teacher backward flow (optional, for the fb mask)",
    "student_flow": "SMURF: student forward flow on the crop (N x 2 x h x w)",
    "student_flow_bw": "SMURF: student backward flow on the crop (optional)",
    "crop_box": "SMURF: (top, left, height, width) of the student crop in the full frames, or one per sample",
    "ar_pred": "ARFlow: prediction on the augmented input (N x 2 x H x W)",
    "ar_target": "ARFlow: transformed prediction on the original input (detached inside)",
    "ar_mask": "ARFlow: transformed non-occluded mask (optional)",
}


class UnsupervisedLoss(nn.Module):
    """Unsupervised flow loss configured by a recipe (see ``recipes.RECIPES`` and docs/losses.md).

    Call: ``loss(img1, img2, flow_fw, flow_bw=None, **extras) -> LossOutput``; images N x 3 x H x W in 0..255,
    flows N x 2 x H x W in pixels. Without ``flow_bw`` the backward-dependent parts (occlusion mask and the
    backward photometric/smoothness terms) are left out, so any single forward flow can be scored. Terms whose
    extras are absent (pyramid distillation, self-supervision, AR) are left out too. The keep-close term on the
    weights is not a loss of flows: ``mlof.meta.objective.UnsupervisedObjective`` adds it, with this recipe's
    ``keep_close_weight``.
    Computation runs in float32 (float64 kept) with autocast off.
    """

    def __init__(self, recipe: str | Mapping[str, Any] | RecipeConfig = "mlof"):
        super().__init__()
        self.config: RecipeConfig = resolve_recipe(recipe)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def keep_close_weight(self) -> float:
        """Weight of ``keep_close(params, fixed)`` in this recipe, applied by the objective of the meta-learner and
        of test-time adaptation (``mlof.meta.objective``)."""
        return float(self.config.keep_close_weight)

    def constants(self) -> dict[str, Any]:
        """Every constant of the recipe (weights included) as a plain dict."""
        return self.config.constants()

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.config.weights.items())
        return f"recipe={self.config.name!r}, {w}"

    # ------------------------------------------------------------------ masks
    def _noc_masks(self, flow_fw: torch.Tensor,
                   flow_bw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Non-occluded masks (1 = visible) of both directions, N x 1 x H x W; all ones without ``flow_bw``."""
        cfg = self.config
        fw = flow_fw.detach() if cfg.detach_mask else flow_fw
        bw = None if flow_bw is None else (flow_bw.detach() if cfg.detach_mask else flow_bw)
        ones = torch.ones_like(flow_fw[:, :1])
        if bw is None or cfg.occlusion == "none":
            noc_fw, noc_bw = ones, (None if bw is None else ones)
        elif cfg.occlusion in ("range_map", "range_map_soft"):
            soft = cfg.occlusion == "range_map_soft"
            noc_fw = 1.0 - occlusion_range_map(bw, cfg.occ_threshold, soft=soft)
            noc_bw = 1.0 - occlusion_range_map(fw, cfg.occ_threshold, soft=soft)
        else:
            norm = "squared" if cfg.occlusion == "fb" else "length"
            noc_fw = 1.0 - occlusion_fb(fw, bw, cfg.fb_alpha1, cfg.fb_alpha2, norm=norm)
            noc_bw = 1.0 - occlusion_fb(bw, fw, cfg.fb_alpha1, cfg.fb_alpha2, norm=norm)
        if cfg.mask_in_frame:
            noc_fw = noc_fw * in_frame_mask(flow_fw.detach())
            if noc_bw is not None:
                noc_bw = noc_bw * in_frame_mask(flow_bw.detach())
        return noc_fw, noc_bw

    # ------------------------------------------------------------ photometric
    def _photo(self, img1: torch.Tensor, img2: torch.Tensor, flow: torch.Tensor,
               noc: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Photometric terms of one direction at one resolution (img1 is the reference).

        Returns (per-term values, each weighted and normalised, for logging; the group's value). The group is
        computed in the release's order of operations (``sum_k mean(w_k * err_k) / mean(noc)`` for the
        ARFlow/MLOF masked-input style): at 0..255 the SSIM gradient cancels catastrophically in float32, so
        a different rounding order moves it measurably. ``photo_scale`` is applied by the caller.
        """
        cfg = self.config
        w = cfg.weights
        rec, _ = warp(img2, flow, padding=cfg.warp_padding)
        # The release divides by mean(noc) exactly; the floor only keeps an all-occluded mask from giving NaN.
        norm = noc.mean().clamp_min(MASK_EPS)
        maps: dict[str, torch.Tensor] = {}     # weighted per-pixel maps whose mean / norm is the term
        out: dict[str, torch.Tensor] = {}      # terms normalised some other way
        if w.get("photo_l1", 0) > 0:
            if cfg.ssim_masked_inputs:
                maps["photo_l1"] = w["photo_l1"] * (img1 - rec).abs() * noc
            else:
                out["photo_l1"] = w["photo_l1"] * masked_mean((img1 - rec).abs(), noc)
        if w.get("photo_ssim", 0) > 0:
            if cfg.ssim_masked_inputs:
                maps["photo_ssim"] = w["photo_ssim"] * ssim_3x3(rec * noc, img1 * noc, precision=cfg.ssim_precision)
            else:
                out["photo_ssim"] = w["photo_ssim"] * masked_mean(
                    ssim_3x3(rec, img1, precision=cfg.ssim_precision), noc)
        if w.get("photo_ternary", 0) > 0:
            if cfg.ssim_masked_inputs:
                maps["photo_ternary"] = w["photo_ternary"] * ternary(rec * noc, img1 * noc, max_distance=1,
                                                                     max_value=cfg.image_scale)
            else:
                err = ternary(rec, img1, max_distance=1, max_value=cfg.image_scale)
                out["photo_ternary"] = w["photo_ternary"] * masked_mean(err, noc)
        if w.get("photo_census", 0) > 0:
            out["photo_census"] = w["photo_census"] * census(img1, rec, patch=cfg.census_patch,
                                                             max_value=cfg.image_scale, mask=noc)
        if w.get("photo_charbonnier", 0) > 0:
            err = charbonnier(img1 - rec, cfg.charbonnier_alpha, cfg.charbonnier_eps)
            out["photo_charbonnier"] = w["photo_charbonnier"] * masked_mean(err, noc)
        if w.get("photo_abs_robust", 0) > 0:
            # UPFlow sums the per-channel penalty before normalising by the (1-channel) mask sum.
            err = abs_robust(img1 - rec, cfg.robust_eps, cfg.robust_q).sum(1, keepdim=True)
            out["photo_abs_robust"] = w["photo_abs_robust"] * masked_mean(err, noc)
        means = {k: v.mean() for k, v in maps.items()}
        group = None
        if means:
            group = sum(means.values()) / norm
        for v in out.values():
            group = v if group is None else group + v
        terms = {k: v / norm for k, v in means.items()}
        terms.update(out)
        return terms, group

    # -------------------------------------------------------------- smoothness
    def _smooth(self, img: torch.Tensor, flow: torch.Tensor, pyramid: Sequence[torch.Tensor],
                backward: bool = False) -> dict[str, torch.Tensor]:
        """Unweighted smoothness of one direction per order (``smooth1``, ``smooth2``); weights applied after
        the directions are combined, as the release does (``w_smooth * (s_fw + s_bw) / 2``)."""
        cfg = self.config
        out: dict[str, torch.Tensor] = {}
        orders = [(o, cfg.weights.get(f"smooth{o}", 0.0)) for o in (1, 2)]
        if not any(weight > 0 for _, weight in orders):
            return out
        # Like SMURF, lower the level when the image is too small for it (keep >= 4 px per side).
        level = cfg.smooth_level
        while level > 0 and min(img.shape[-2:]) // 2 ** level < 4:
            level -= 1
        image = downsample_image(img, level)
        size = tuple(image.shape[-2:])
        level_flow = next((p for p in pyramid if tuple(p.shape[-2:]) == size), None) if level else None
        if level_flow is None:
            level_flow = downsample_flow(flow, size) if level else flow
        if cfg.smooth_flow_norm == "min_hw" or (backward and cfg.smooth_bw_min_hw):
            level_flow = level_flow / min(size)
        for order, weight in orders:
            if weight > 0:
                out[f"smooth{order}"] = edge_aware_smoothness(
                    level_flow, image, order=order, edge_constant=cfg.edge_constant,
                    variant=cfg.smooth_variant, weighting=cfg.edge_weighting)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, img1: torch.Tensor, img2: torch.Tensor, flow_fw: torch.Tensor,
                flow_bw: torch.Tensor | None = None, **extras: Any) -> LossOutput:
        unknown = sorted(set(extras) - set(EXTRAS))
        if {"params", "fixed_params"} & set(unknown):
            raise LossInputError("params / fixed_params: the keep-close term is not a loss extra; "
                                 "mlof.meta.objective.UnsupervisedObjective adds it (or use mlof.losses.keep_close)")
        if unknown:
            raise LossInputError(f"unknown loss extras {unknown}; known: {sorted(EXTRAS)}")
        check_images(img1, img2)
        check_flow("flow_fw", flow_fw, img1)
        if flow_bw is not None:
            check_flow("flow_bw", flow_bw, img1)
        cfg = self.config
        with float32_region(img1.device):
            scale = 1.0 if cfg.image_scale == 255.0 else 1.0 / 255.0
            i1, i2 = to_float(img1) * scale, to_float(img2) * scale
            f_fw = to_float(flow_fw)
            f_bw = None if flow_bw is None else to_float(flow_bw)
            pyr_fw = [to_float(p) for p in extras.get("pyramid_fw") or []]
            pyr_bw = [to_float(p) for p in extras.get("pyramid_bw") or []]
            noc_fw, noc_bw = self._noc_masks(f_fw, f_bw)
            directions = [(i1, i2, f_fw, noc_fw, pyr_fw, False)]
            if f_bw is not None:
                directions.append((i2, i1, f_bw, noc_bw, pyr_bw, True))

            def combine(values: list[torch.Tensor]) -> torch.Tensor:
                # The release's order: (fw + bw) / 2 ("mean") or fw + bw ("sum").
                total = values[0]
                for v in values[1:]:
                    total = total + v
                return total / len(values) if cfg.bidirectional == "mean" and len(values) > 1 else total

            per_dir: dict[str, list[torch.Tensor]] = {}   # term -> one value per direction
            groups: list[torch.Tensor] = []               # full-resolution photometric group per direction
            smooth: dict[str, list[torch.Tensor]] = {}
            extra_dir: dict[str, list[torch.Tensor]] = {}  # pyramid levels and distillation, already weighted
            for ref, other, flow, noc, pyramid, backward in directions:
                terms_d, group = self._photo(ref, other, flow, noc)
                for k, v in terms_d.items():
                    per_dir.setdefault(k, []).append(v)
                if group is not None:
                    groups.append(group)
                level_terms: dict[str, torch.Tensor] = {}
                for level, lw in zip(pyramid, cfg.pyramid_photo_weights):
                    if lw <= 0:
                        continue
                    check_flow("pyramid level", level, ref, same_size=False)
                    size = tuple(level.shape[-2:])
                    r = F.interpolate(ref, size=size, mode="area")
                    o = F.interpolate(other, size=size, mode="area")
                    m = F.interpolate(noc, size=size, mode="nearest")
                    for k, v in self._photo(r, o, level, m)[0].items():
                        level_terms[k] = level_terms[k] + lw * v if k in level_terms else lw * v
                for k, v in self._smooth(ref, flow, pyramid, backward).items():
                    smooth.setdefault(k, []).append(v)
                if cfg.weights.get("distill", 0) > 0 and pyramid:
                    level_terms["distill"] = cfg.weights["distill"] * pyramid_distillation(
                        pyramid, flow, noc, eps=cfg.robust_eps, q=cfg.robust_q)
                for k, v in level_terms.items():
                    extra_dir.setdefault(k, []).append(v)

            terms: dict[str, torch.Tensor] = {k: cfg.photo_scale * combine(v) for k, v in per_dir.items()}
            total = cfg.photo_scale * combine(groups) if groups else None
            for k, values in smooth.items():
                terms[k] = cfg.weights[k] * combine(values)
                total = terms[k] if total is None else total + terms[k]
            for k, values in extra_dir.items():
                v = combine(values) * (cfg.photo_scale if k != "distill" else 1.0)
                terms[k] = terms[k] + v if k in terms else v
                total = v if total is None else total + v
            flow_terms: dict[str, torch.Tensor] = {}

            def add(name: str, value: torch.Tensor) -> None:
                flow_terms[name] = flow_terms[name] + value if name in flow_terms else value

            self._flow_terms(flow_terms, extras, add)
            for k, v in flow_terms.items():
                terms[k] = v
                total = v if total is None else total + v
            if total is None:
                terms["zero"] = total = (f_fw * 0.0).sum()
        ex = {"noc_fw": noc_fw.detach()}
        if noc_bw is not None:
            ex["noc_bw"] = noc_bw.detach()
        return LossOutput(total=total, terms=terms, extras=ex)

    def _flow_terms(self, terms: dict[str, torch.Tensor], extras: Mapping[str, Any], add: Any) -> None:
        """Self-supervision and augmentation regularisation, each when its extras are present."""
        cfg = self.config
        w = cfg.weights
        if w.get("selfsup", 0) > 0 and extras.get("teacher_flow") is not None \
                and extras.get("student_flow") is not None:
            add("selfsup", w["selfsup"] * self_supervision(
                to_float(extras["teacher_flow"]), to_float(extras["student_flow"]),
                extras.get("teacher_flow_bw"), extras.get("student_flow_bw"), extras.get("crop_box"),
                cfg.fb_sigma_teacher, cfg.fb_sigma_student))
        if w.get("ar", 0) > 0 and extras.get("ar_pred") is not None and extras.get("ar_target") is not None:
            add("ar", w["ar"] * augmentation_regularization(
                to_float(extras["ar_pred"]), to_float(extras["ar_target"]), extras.get("ar_mask"),
                eps=cfg.robust_eps, q=cfg.robust_q))


def build_loss(recipe: str | Mapping[str, Any] | RecipeConfig | UnsupervisedLoss = "mlof") -> UnsupervisedLoss:
    """Build an unsupervised loss from a recipe name (``mlof``, ``arflow``, ``uflow``, ``smurf``, ``upflow``),
    a flat dict of term weights and options (optionally ``{"base": name, ...}``) or a ``RecipeConfig``;
    an already built loss is returned as it is."""
    if isinstance(recipe, UnsupervisedLoss):
        return recipe
    return UnsupervisedLoss(recipe)
