"""The unsupervised test-time objective of MLOF: a loss recipe on both flow directions plus the keep-close
regulariser, shared by the meta-trainer's inner loop and the adaptation engine (``mlof.meta.engine``).

This is the only place where the keep-close term ``keep_close_weight * sum ||theta - theta_fixed||^2`` is
weighted and added to an objective (``mlof.losses.keep_close`` computes the plain sum).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from mlof.losses import build_loss, keep_close
from mlof.meta.forward import bidirectional as run_both, call_net

__all__ = ["UnsupervisedObjective", "ObjectiveResult", "PairsScore"]

Pair = tuple[torch.Tensor, torch.Tensor]


class ObjectiveResult:
    """total (scalar tensor), terms (name -> scalar tensor, adding up to total), out_fw (the network's FlowOutput
    on the pair; with ``bidirectional`` its ``flow_bw``/``pyramid_bw`` hold the backward direction)."""

    def __init__(self, total: torch.Tensor, terms: dict[str, torch.Tensor], out_fw: Any):
        self.total, self.terms, self.out_fw = total, terms, out_fw

    def as_floats(self) -> dict[str, float]:
        out = {"total": float(self.total.detach())}
        out.update({k: float(v.detach()) for k, v in self.terms.items()})
        return out


@dataclass
class PairsScore:
    """The objective over several pairs (``UnsupervisedObjective.over_pairs``).

    total:    mean over the pairs of the data terms, plus the keep-close term once (python float).
    terms:    every term as a float (data terms averaged over the pairs; ``keep_close`` when it applies).
    flows:    the forward flow of every pair, N x 2 x H x W, detached.
    per_pair: each pair's data objective (inf where its flow is not finite).
    refused:  whether differentiation stopped at a pair (non-finite, or refused by ``accept``).
    """

    total: float
    terms: dict[str, float]
    flows: list[torch.Tensor]
    per_pair: list[float]
    refused: bool


class UnsupervisedObjective:
    """``loss(I1, I2, f_fw, f_bw) + keep_close_weight * sum ||theta - theta_fixed||^2``.

    recipe:            a ``mlof.losses.build_loss`` recipe (name or dict of term weights) or a built loss module.
    keep_close_weight: weight of the keep-close term; None = the recipe's (``loss.keep_close_weight``); 0 disables
                       it.
    bidirectional:     run the network on (I1, I2) and (I2, I1) and give the loss both flows (occlusion by the
                       backward range map, as in the release); False scores the forward flow alone.
    batch_directions:  both directions in one 2N call (None = whenever exact, see ``can_batch_directions``).
    Only the final prediction of each direction enters the loss (the release's ``w_scales`` = last only).
    """

    def __init__(self, recipe: str | Mapping[str, float] | nn.Module = "mlof", keep_close_weight: float | None = None,
                 bidirectional: bool = True, batch_directions: bool | None = None):
        self.loss = recipe if isinstance(recipe, nn.Module) else build_loss(recipe)
        if keep_close_weight is None:
            keep_close_weight = float(getattr(self.loss, "keep_close_weight", 0.0))
        if not keep_close_weight >= 0:
            raise ValueError(f"keep_close_weight must be >= 0, got {keep_close_weight}")
        self.keep_close_weight = float(keep_close_weight)
        self.bidirectional = bool(bidirectional)
        self.batch_directions = batch_directions

    def __call__(self, net: nn.Module, img1: torch.Tensor, img2: torch.Tensor, *,
                 run: Callable[..., Any] | None = None, params: Mapping[str, torch.Tensor] | None = None,
                 fixed: Mapping[str, torch.Tensor] | None = None, **net_options: Any) -> ObjectiveResult:
        """Score the network ``net`` on the pair ``img1, img2`` (N x 3 x H x W, 0..255).

        run:    what executes ``net`` (a MAML learner's ``inner_forward`` running it with fast weights);
                default: ``net`` itself.
        params / fixed: name -> current / reference tensors; with both, the keep-close term is added.
        """
        out = self._forward(net, run, img1, img2, net_options)
        res = self.loss(img1, img2, out.flow, out.flow_bw if self.bidirectional else None, **self._extras(out))
        total, terms = res.total, dict(res.terms)
        if params is not None and fixed is not None:
            kc = self.keep_close_term(params, fixed)
            if kc is not None:
                terms["keep_close"] = kc
                total = total + kc
        return ObjectiveResult(total, terms, out)

    def over_pairs(self, net: nn.Module, pairs: Sequence[Pair], *, params: Mapping[str, torch.Tensor],
                   fixed: Mapping[str, torch.Tensor] | None, backward: bool,
                   accept: Callable[[int, float], bool] | None = None, **net_options: Any) -> PairsScore:
        """The objective averaged over ``pairs`` plus the keep-close term of ``params`` to ``fixed`` once.

        With ``backward`` the gradients accumulate pair by pair (memory holds one pair's graph at a time), but only
        for a pair whose loss is finite, whose flow is finite and that ``accept(i, loss)`` approves: a state the
        guard will roll back is never differentiated (autograd through NaN/huge sampling coordinates can crash
        the process, not just produce NaN). A pair with a non-finite flow counts as a non-finite loss.
        """
        total, terms, flows, per_pair, refused = 0.0, {}, [], [], False
        with torch.set_grad_enabled(backward):
            for i, (img1, img2) in enumerate(pairs):
                res = self(net, img1, img2, **net_options)
                value = float(res.total.detach())
                flow = res.out_fw.flow.detach()
                if not bool(torch.isfinite(flow).all()):
                    value = math.inf
                if backward and not (math.isfinite(value) and (accept is None or accept(i, value))):
                    backward, refused = False, True  # this state will be rolled back: differentiate nothing more
                if backward and res.total.requires_grad:
                    (res.total / len(pairs)).backward()
                per_pair.append(value)
                total += value / len(pairs)
                for k, v in res.terms.items():
                    terms[k] = terms.get(k, 0.0) + float(v.detach()) / len(pairs)
                flows.append(flow)
                del res  # frees an undifferentiated graph before the next pair's forward
            kc = self.keep_close_term(params, fixed) if fixed is not None else None
            if kc is not None:
                if backward and kc.requires_grad:
                    kc.backward()
                terms["keep_close"] = float(kc.detach())
                total += terms["keep_close"]
        return PairsScore(total, terms, flows, per_pair, refused)

    def keep_close_term(self, params: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor]
                        ) -> torch.Tensor | None:
        """``keep_close_weight * sum ||p - p_fixed||^2`` over the names present in both mappings; None when the
        weight is 0 (the term is off)."""
        if not self.keep_close_weight > 0:
            return None
        names = [n for n in params if n in fixed]
        if not names:
            raise ValueError("keep-close: no parameter name is shared by params and fixed")
        return self.keep_close_weight * keep_close([params[n] for n in names], [fixed[n] for n in names])

    def _forward(self, net: nn.Module, run: Callable[..., Any] | None, img1: torch.Tensor, img2: torch.Tensor,
                 net_options: Mapping[str, Any]) -> Any:
        """One FlowOutput; with ``bidirectional`` its backward fields hold the output on (img2, img1)."""
        fn = net if run is None else run
        if self.bidirectional:
            return run_both(fn, net, img1, img2, batch=self.batch_directions, **net_options)
        return call_net(fn, net, img1, img2, **net_options)

    def _extras(self, out: Any) -> dict[str, Any]:
        # Pyramid networks (UPFlow) hand their per-level flows (finest first) to the loss (distillation,
        # multi-scale terms).
        extras: dict[str, Any] = {}
        if out.pyramid:
            extras["pyramid_fw"] = list(out.pyramid)
            if self.bidirectional and out.pyramid_bw:
                extras["pyramid_bw"] = list(out.pyramid_bw)
        return extras
