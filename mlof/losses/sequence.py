"""Unsupervised loss over a sequence of predictions (the iterations of a RAFT-style network)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .common import LossInputError, LossOutput
from .loss import UnsupervisedLoss

__all__ = ["sequence_unsupervised_loss"]


def sequence_unsupervised_loss(loss: UnsupervisedLoss, img1: torch.Tensor, img2: torch.Tensor,
                               flows_fw: Sequence[torch.Tensor], flows_bw: Sequence[torch.Tensor] | None = None,
                               gamma: float = 0.8, **extras: Any) -> LossOutput:
    """``sum_i gamma^(n-1-i) loss(img1, img2, flows_fw[i], flows_bw[i])`` over n predictions, first to last.

    SMURF's ``unsupervised_sequence_loss`` (mode 'unsup_per_update', loss_decay 0.8); MLOF's optional
    ``--convgru count`` mode uses gamma 0.85 (the MLOF default scores the last prediction only: call the loss
    on ``flows_fw[-1]`` instead). ``extras`` go to every call (e.g. SMURF's teacher, the final prediction);
    pass keep-close parameters to the last call yourself if they must count once. Terms are weighted and
    summed by name; ``extras`` of the result are those of the last prediction.
    """
    n = len(flows_fw)
    if n == 0:
        raise LossInputError("flows_fw must hold at least one prediction")
    if flows_bw is not None and len(flows_bw) != n:
        raise LossInputError(f"flows_bw has {len(flows_bw)} predictions, flows_fw has {n}")
    terms: dict[str, torch.Tensor] = {}
    last = None
    for i, flow in enumerate(flows_fw):
        last = loss(img1, img2, flow, None if flows_bw is None else flows_bw[i], **extras)
        weight = gamma ** (n - 1 - i)
        for k, v in last.terms.items():
            terms[k] = terms[k] + weight * v if k in terms else weight * v
    return LossOutput(total=sum(terms.values()), terms=terms, extras=last.extras)
