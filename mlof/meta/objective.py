"""The unsupervised test-time objective of MLOF: a loss recipe on both flow directions plus the keep-close
regulariser, shared by the meta-trainer's inner loop, ``mlof.adapt`` and online adaptation."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from mlof.meta.forward import bidirectional as run_both, call_net

__all__ = ["UnsupervisedObjective", "ObjectiveResult"]


class ObjectiveResult:
    """total (scalar tensor), terms (name -> scalar tensor, adding up to total), out_fw / out_bw (FlowOutput)."""

    def __init__(self, total: torch.Tensor, terms: dict[str, torch.Tensor], out_fw: Any, out_bw: Any):
        self.total, self.terms, self.out_fw, self.out_bw = total, terms, out_fw, out_bw

    def as_floats(self) -> dict[str, float]:
        out = {"total": float(self.total.detach())}
        out.update({k: float(v.detach()) for k, v in self.terms.items()})
        return out


class UnsupervisedObjective:
    """``loss(I1, I2, f_fw, f_bw) + keep_close_weight * sum ||theta - theta_fixed||^2``.

    recipe:            a ``mlof.losses.build_loss`` recipe (name or dict of term weights) or a built loss module.
    keep_close_weight: weight of the keep-close term; None = the recipe's (``loss.keep_close_weight``: 10 for
                       "mlof", 0 for the others); 0 disables it.
    bidirectional:     run the network on (I1, I2) and (I2, I1) and give the loss both flows (occlusion by the
                       backward range map, as in the release); False scores the forward flow alone.
    batch_directions:  both directions in one 2N call (None = whenever exact, see ``can_batch_directions``).
    Only the final prediction of each direction enters the loss (the release's ``w_scales`` = last only).
    """

    def __init__(self, recipe: str | Mapping[str, float] | nn.Module = "mlof", keep_close_weight: float | None = None,
                 bidirectional: bool = True, batch_directions: bool | None = None):
        from mlof.losses import build_loss
        self.loss = recipe if isinstance(recipe, nn.Module) else build_loss(recipe)
        if keep_close_weight is None:
            keep_close_weight = float(getattr(self.loss, "keep_close_weight", 0.0))
        if not keep_close_weight >= 0:
            raise ValueError(f"keep_close_weight must be >= 0, got {keep_close_weight}")
        self.keep_close_weight = float(keep_close_weight)
        self.bidirectional = bool(bidirectional)
        self.batch_directions = batch_directions

    def __call__(self, fn: Callable[..., Any], module: nn.Module, img1: torch.Tensor, img2: torch.Tensor, *,
                 params: Mapping[str, torch.Tensor] | None = None,
                 fixed: Mapping[str, torch.Tensor] | None = None, **net_options: Any) -> ObjectiveResult:
        """Score the network ``fn`` (``module`` or a learner running it) on the pair ``img1, img2`` (N x 3 x H x W,
        0..255). ``params``/``fixed``: name -> current / reference tensors for the keep-close term."""
        if self.bidirectional:
            out_fw, out_bw = run_both(fn, module, img1, img2, batch=self.batch_directions, **net_options)
            res = self.loss(img1, img2, out_fw.flow, out_bw.flow, **self._extras(out_fw, out_bw))
        else:
            out_fw, out_bw = call_net(fn, module, img1, img2, **net_options), None
            res = self.loss(img1, img2, out_fw.flow, None, **self._extras(out_fw, None))
        total, terms = res.total, dict(res.terms)
        if self.keep_close_weight > 0 and params is not None and fixed is not None:
            kc = self.keep_close_term(params, fixed)
            terms["keep_close"] = kc
            total = total + kc
        return ObjectiveResult(total, terms, out_fw, out_bw)

    def keep_close_term(self, params: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``keep_close_weight * sum ||p - p_fixed||^2`` over the names present in both mappings."""
        from mlof.losses import keep_close
        names = [n for n in params if n in fixed]
        if not names:
            raise ValueError("keep-close: no parameter name is shared by params and fixed")
        return self.keep_close_weight * keep_close([params[n] for n in names], [fixed[n] for n in names])

    @staticmethod
    def _extras(out_fw: Any, out_bw: Any) -> dict[str, Any]:
        # Pyramid networks (UPFlow) hand their per-level flows to the loss (distillation, multi-scale terms):
        # networks list them coarse -> fine in extras["pyramid_flows"], the losses want them finest first.
        extras: dict[str, Any] = {}
        fw = getattr(out_fw, "extras", None) or {}
        bw = getattr(out_bw, "extras", None) or {}
        if fw.get("pyramid_flows"):
            extras["pyramid_fw"] = list(reversed(fw["pyramid_flows"]))
            levels_bw = bw.get("pyramid_flows") or fw.get("pyramid_flows_bw")
            if out_bw is not None and levels_bw:
                extras["pyramid_bw"] = list(reversed(levels_bw))
        return extras
