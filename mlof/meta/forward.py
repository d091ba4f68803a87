"""Calling a flow network the same way everywhere in mlof.meta: supported keyword options only, and both
directions (I1->I2, I2->I1) for the bidirectional unsupervised losses, batched into one call when exact."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["accepted_options", "call_net", "bidirectional", "can_batch_directions", "split_output"]

NetFn = Callable[..., Any]


def accepted_options(module: nn.Module) -> set[str] | None:
    """Keyword names ``module.forward`` accepts, or None when it takes ``**kwargs`` (accepts anything)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):  # builtins / C++ modules: no signature to read
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def call_net(fn: NetFn, module: nn.Module, img1: torch.Tensor, img2: torch.Tensor, **options: Any) -> Any:
    """``fn(img1, img2, **options)`` keeping only the options ``module.forward`` accepts.

    fn is the module itself or something that runs it (a MAML learner). Options a network does not take
    (``iters`` for UPFlow/LiteFlowNet2, ``corr`` for networks without a correlation switch) are dropped, so one
    call site serves every backbone; ``None`` values are dropped too (meaning "the network's default").
    """
    accepted = accepted_options(module)
    kwargs = {k: v for k, v in options.items() if v is not None and (accepted is None or k in accepted)}
    return fn(img1, img2, **kwargs)


def can_batch_directions(module: nn.Module) -> bool:
    """True when running both directions as one batch of 2N gives the same result as two calls.

    Not the case when a BatchNorm layer is in training mode: its batch statistics would mix the directions.
    """
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules())


def split_output(out: Any, n: int) -> tuple[Any, Any]:
    """Split a FlowOutput computed on a batch of 2n into the first n and the last n samples."""
    def cut(x: Any, sl: slice) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 2 * n:
            return x[sl]
        if isinstance(x, (list, tuple)):
            return type(x)(cut(v, sl) for v in x)
        if isinstance(x, dict):
            return {k: cut(v, sl) for k, v in x.items()}
        return x

    halves = []
    for sl in (slice(0, n), slice(n, 2 * n)):
        if hasattr(out, "__dataclass_fields__"):
            halves.append(type(out)(**{f: cut(getattr(out, f), sl) for f in out.__dataclass_fields__}))
        else:
            halves.append(cut(out, sl))
    return halves[0], halves[1]


def _native_bidirectional(module: nn.Module) -> bool:
    accepted = accepted_options(module)
    return accepted is not None and "bidirectional" in accepted


def bidirectional(fn: NetFn, module: nn.Module, img1: torch.Tensor, img2: torch.Tensor,
                  batch: bool | None = None, **options: Any) -> tuple[Any, Any]:
    """Outputs of the network on (img1, img2) and on (img2, img1).

    Networks whose forward takes ``bidirectional=True`` (the RAFT family) compute both directions from one
    encoder pass and return the backward flow in ``extras['flow_bw']`` -- used whenever ``batch`` is not False.
    Otherwise ``batch`` runs both directions as one call on 2N images (None = whenever that is exact, see
    ``can_batch_directions``), else as two calls.
    """
    if batch is not False and _native_bidirectional(module):
        out = call_net(fn, module, img1, img2, bidirectional=True, **options)
        extras = dict(out.extras)
        bw = type(out)(flow=extras.pop("flow_bw"), flow_low=extras.pop("flow_bw_low", None),
                       flows=extras.pop("flows_bw", []), extras={})
        return type(out)(flow=out.flow, flow_low=out.flow_low, flows=out.flows, extras=extras), bw
    if batch is None:
        batch = can_batch_directions(module)
    if batch:
        n = img1.shape[0]
        out = call_net(fn, module, torch.cat([img1, img2]), torch.cat([img2, img1]), **options)
        return split_output(out, n)
    return (call_net(fn, module, img1, img2, **options), call_net(fn, module, img2, img1, **options))
