"""Parameter-space regulariser used by the meta-learner: keep adapted weights close to a fixed copy."""
from __future__ import annotations

from typing import Iterable, Mapping, Union

import torch

from .common import LossInputError

__all__ = ["keep_close"]

Params = Union[Mapping[str, torch.Tensor], Iterable[torch.Tensor]]


def keep_close(params: Params, fixed: Params) -> torch.Tensor:
    """``sum_i ||p_i - p_fixed_i||^2`` over all parameters (MLOF's ``weight_reg``; recipe weight 10).

    params: the adapted parameters (dict name -> tensor, e.g. ``dict(model.named_parameters())``, or a list);
    fixed:  the reference copy, same names / order and shapes. ``fixed`` is treated as a constant (detached):
    in the MLOF release it lives in a separate frozen model. Gradients flow to ``params`` (also through an
    inner-loop graph, e.g. a learner's fast weights). Raises ``LossInputError`` naming mismatched keys/shapes.
    """
    if isinstance(params, Mapping) != isinstance(fixed, Mapping):
        raise LossInputError("params and fixed must both be dicts (name -> tensor) or both sequences of tensors")
    if isinstance(params, Mapping):
        missing = sorted(set(params) - set(fixed))
        unexpected = sorted(set(fixed) - set(params))
        if missing or unexpected:
            raise LossInputError(f"keep_close: names differ; missing in fixed: {missing[:5]}, "
                                 f"only in fixed: {unexpected[:5]}")
        pairs = [(k, params[k], fixed[k]) for k in params]
    else:
        plist, flist = list(params), list(fixed)
        if len(plist) != len(flist):
            raise LossInputError(f"keep_close: {len(plist)} params but {len(flist)} fixed tensors")
        pairs = [(str(i), p, f) for i, (p, f) in enumerate(zip(plist, flist))]
    if not pairs:
        raise LossInputError("keep_close needs at least one parameter")
    total = None
    for name, p, f in pairs:
        if p.shape != f.shape:
            raise LossInputError(f"keep_close: parameter {name} has shape {tuple(p.shape)}, fixed has "
                                 f"{tuple(f.shape)}")
        term = ((p - f.detach().to(p.device, p.dtype)) ** 2).sum()
        total = term if total is None else total + term
    return total
