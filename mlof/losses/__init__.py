"""Losses for unsupervised adaptation and supervised training of optical-flow networks.

    build_loss(recipe) -> UnsupervisedLoss        recipes: mlof, arflow, uflow, smurf, upflow, or a dict
    loss(img1, img2, flow_fw, flow_bw=None, **extras) -> LossOutput(total, terms, extras)
    warp(x, flow) -> (warped, in_frame_mask)                 (backbones' warp + the losses' checks)
    resize_flow(flow, size)                                  (backbones' flow resizing, vectors rescaled)
    occlusion_fb / occlusion_range_map / range_map / reverse_flow
    l1 / charbonnier / ssim_3x3 / census / ternary / abs_robust / robust_l1      per-pixel photometric errors
    edge_aware_smoothness                                                        1st/2nd order smoothness
    pyramid_distillation / self_supervision / augmentation_regularization        flow-to-flow terms
    keep_close(params, fixed)                                                    meta-learning regulariser
    sequence_loss / multilevel_loss / pyramid_supervision                        supervised
See docs/losses.md for every recipe's terms, constants and their sources.
"""
from backbones.layers.upsample import resize_flow

from .common import LossInputError, LossOutput, masked_mean
from .distill import augmentation_regularization, crop_and_resize, pyramid_distillation, self_supervision
from .loss import EXTRAS, UnsupervisedLoss, build_loss
from .occlusion import occlusion_fb, occlusion_range_map, range_map, reverse_flow, splat
from .photometric import (abs_robust, census, census_border_mask, census_distance, census_transform, charbonnier, l1, rgb_to_gray, robust_l1, soft_hamming,
                          ssim_3x3, ternary)
from .recipes import RECIPES, TERMS, RecipeConfig, resolve_recipe
from .regularizers import keep_close
from .smoothness import edge_aware_smoothness
from .supervised import PWC_WEIGHTS, downsample_gt, multilevel_loss, pyramid_supervision, sequence_loss
from .warp import coords_grid, in_frame_mask, warp

__all__ = [
    "LossInputError", "LossOutput", "masked_mean",
    "augmentation_regularization", "crop_and_resize", "pyramid_distillation", "self_supervision", "resize_flow",
    "EXTRAS", "UnsupervisedLoss", "build_loss",
    "occlusion_fb", "occlusion_range_map", "range_map", "reverse_flow", "splat",
    "abs_robust", "census", "census_border_mask", "census_distance", "census_transform", "charbonnier", "l1", "rgb_to_gray", "robust_l1", "soft_hamming",
    "ssim_3x3", "ternary",
    "RECIPES", "TERMS", "RecipeConfig", "resolve_recipe",
    "keep_close", "edge_aware_smoothness",
    "PWC_WEIGHTS", "downsample_gt", "multilevel_loss", "pyramid_supervision", "sequence_loss",
    "coords_grid", "in_frame_mask", "warp",
]
