"""Flow-to-flow terms: UPFlow pyramid distillation, SMURF self-supervision, ARFlow augmentation regulariser."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from backbones.layers.upsample import resize_flow

from .common import MASK_EPS, LossInputError, check_flow
from .photometric import abs_robust, robust_l1
from .warp import in_frame_mask, warp

__all__ = ["pyramid_distillation", "self_supervision", "augmentation_regularization",
           "crop_and_resize"]

CropBox = Union[Sequence[int], Sequence[Sequence[int]]]


def pyramid_distillation(pyramid: Sequence[torch.Tensor], final: torch.Tensor,
                         noc_mask: torch.Tensor | None = None, eps: float = 0.01, q: float = 0.4) -> torch.Tensor:
    """UPFlow pyramid distillation ("upup" style): coarse levels pulled towards the detached final flow.

    pyramid: flows N x 2 x h_l x w_l, each in pixels of its own resolution (any order); final: N x 2 x H x W.
    Each level is upsampled to H x W (vectors rescaled) and compared with ``final.detach()`` by the robust
    penalty ``(|d| + 0.01)^0.4``, masked by ``noc_mask`` (N x 1 x H x W, 1 = visible) and normalised as in
    UPFlow: sum(err * mask) / (sum(mask) + 1e-6) per level, summed over levels. Returns a scalar.
    """
    check_flow("final", final)
    label = final.detach()
    mask = torch.ones_like(label[:, :1]) if noc_mask is None else noc_mask.detach()
    total = label.new_zeros(())
    for i, level in enumerate(pyramid):
        check_flow(f"pyramid[{i}]", level, final, same_size=False)
        err = abs_robust(resize_flow(level, final.shape[-2:]) - label, eps=eps, q=q)
        total = total + (err * mask).sum() / (mask.sum() + 1e-6)
    return total


def _boxes(crop_box: CropBox, n: int) -> list[tuple[int, int, int, int]]:
    if isinstance(crop_box, torch.Tensor):
        crop_box = crop_box.tolist()
    if len(crop_box) == 4 and all(isinstance(v, (int, float)) for v in crop_box):
        boxes = [tuple(int(v) for v in crop_box)] * n
    else:
        boxes = [tuple(int(v) for v in b) for b in crop_box]
    if len(boxes) != n or any(len(b) != 4 for b in boxes):
        raise LossInputError(f"crop_box must be (top, left, height, width) or one such box per sample "
                             f"({n}), got {crop_box!r}")
    return boxes


def crop_and_resize(x: torch.Tensor, crop_box: CropBox, size: tuple[int, int], is_flow: bool) -> torch.Tensor:
    """Crop each sample of ``x`` (N x C x H x W) to its box (top, left, height, width) and resize to ``size``.

    For flows the vectors are rescaled to the new pixel units (SMURF ``selfsup_transform`` with resize).
    """
    out = []
    for i, (top, left, bh, bw) in enumerate(_boxes(crop_box, x.shape[0])):
        if bh <= 0 or bw <= 0 or top < 0 or left < 0 or top + bh > x.shape[-2] or left + bw > x.shape[-1]:
            raise LossInputError(f"crop_box {(top, left, bh, bw)} does not fit in {tuple(x.shape[-2:])}")
        patch = x[i:i + 1, :, top:top + bh, left:left + bw]
        if (bh, bw) != tuple(size):
            patch = F.interpolate(patch, size=size, mode="bilinear", align_corners=False)
            if is_flow:
                patch = patch * patch.new_tensor([size[1] / bw, size[0] / bh]).view(1, 2, 1, 1)
        out.append(patch)
    return torch.cat(out, 0)


def _fb_consistency(flow: torch.Tensor, flow_bw: torch.Tensor | None, sigma: float) -> torch.Tensor:
    """SMURF gaussian mask exp(-|f + b(p + f)|^2 / (sigma^2 (H^2 + W^2))) times the in-frame mask."""
    inside = in_frame_mask(flow)
    if flow_bw is None:
        return inside
    h, w = flow.shape[-2:]
    b = warp(flow_bw, flow, padding="zeros")[0]
    sq = ((flow + b) ** 2).sum(1, keepdim=True)
    return torch.exp(-sq / (sigma ** 2 * (h * h + w * w))) * inside


def self_supervision(teacher_flow: torch.Tensor, student_flow: torch.Tensor,
                     teacher_flow_bw: torch.Tensor | None = None, student_flow_bw: torch.Tensor | None = None,
                     crop_box: CropBox | None = None, sigma_teacher: float = 0.003,
                     sigma_student: float = 0.03) -> torch.Tensor:
    """SMURF self-supervision: the student's flow on a crop learns the teacher's flow on the full frames.

    teacher_flow: N x 2 x H x W, predicted on the full (unaugmented) frames; detached here.
    student_flow: N x 2 x h x w, predicted on the crop ``crop_box`` = (top, left, height, width) of the
        frames resized to h x w (or one box per sample); crop_box=None: the student saw the same frames.
    teacher_flow_bw / student_flow_bw: their backward flows; when given, the teacher mask keeps only
        forward-backward-consistent pixels, exp(-|f+b|^2 / (0.003^2 (H^2+W^2))), and the student mask keeps
        pixels where the student is NOT already consistent, 1 - exp(-|f+b|^2 / (0.03^2 (h^2+w^2)))
        (SMURF ``selfsup_mask='gaussian'``); both times the in-frame masks. Masks carry no gradient.
    Loss: mean(mask * robust_l1(teacher - student)) over all pixels and both channels (SMURF). Scalar.
    """
    check_flow("teacher_flow", teacher_flow)
    check_flow("student_flow", student_flow, teacher_flow, same_size=False)
    teacher = teacher_flow.detach()
    with torch.no_grad():
        t_mask = _fb_consistency(teacher, None if teacher_flow_bw is None else teacher_flow_bw.detach(),
                                 sigma_teacher)
        if student_flow_bw is None:
            s_mask = torch.ones_like(student_flow[:, :1])
        else:
            s_mask = 1.0 - _fb_consistency(student_flow.detach(), student_flow_bw.detach(), sigma_student)
    size = tuple(student_flow.shape[-2:])
    if crop_box is None:
        if teacher.shape[-2:] != student_flow.shape[-2:]:
            raise LossInputError("student_flow and teacher_flow differ in size: pass the crop_box the student saw")
    else:
        teacher = crop_and_resize(teacher, crop_box, size, is_flow=True)
        t_mask = crop_and_resize(t_mask, crop_box, size, is_flow=False)
    mask = (t_mask * s_mask).detach()
    return (mask * robust_l1(teacher - student_flow)).mean()


def augmentation_regularization(pred_aug: torch.Tensor, target: torch.Tensor, noc_mask: torch.Tensor | None = None,
                                eps: float = 0.01, q: float = 0.4) -> torch.Tensor:
    """ARFlow's augmentation-as-regularisation term (recipe weight 0.01).

    pred_aug: N x 2 x H x W, the prediction on the augmented (e.g. spatially transformed) input;
    target:   the prediction on the original input, already put through the same transform (detached here);
    noc_mask: the transformed non-occluded mask (N x 1 x H x W) or None.
    Loss: mean(((|pred - target| + 0.01)^0.4) * mask) / (mean(mask) + 1e-7), as ARFlow's ``l_atst``.
    """
    check_flow("pred_aug", pred_aug)
    check_flow("target", target, pred_aug)
    err = abs_robust(pred_aug - target.detach(), eps=eps, q=q)
    if noc_mask is None:
        return err.mean()
    mask = noc_mask.detach()
    return (err * mask).mean() / (mask.mean() + MASK_EPS)
