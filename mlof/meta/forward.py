"""Calling a flow network the same way everywhere in mlof.meta: the call options its declared capabilities
allow, and both directions (I1->I2, I2->I1) for the bidirectional unsupervised losses, batched into one call when
exact. What a network takes is read from ``Capabilities`` (``backbones.capabilities``), never from its signature."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from backbones.base import Capabilities, FlowOutput

__all__ = ["call_options", "has_iterations", "call_net", "bidirectional", "can_batch_directions", "split_output"]

NetFn = Callable[..., Any]


def _capabilities(module: nn.Module) -> Capabilities | None:
    caps = getattr(type(module), "capabilities", None)
    return caps if isinstance(caps, Capabilities) else None


def call_options(module: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options of one call of ``module``, from mlof's generic set.

    ``None`` values mean "the network's default" and are dropped; ``corr`` is a build option (set on the working
    copy), never a call keyword. For a backbone (it declares ``Capabilities``): ``iters`` only where it has
    iterations (UPFlow/LiteFlowNet2 take none), ``flow_init`` only where it warm-starts, ``bidirectional`` only
    where it has a shared-encoder bidirectional call. Other modules (the user's own) get every option as given.
    """
    caps = _capabilities(module)
    kwargs = {k: v for k, v in options.items() if v is not None and k != "corr"}
    if caps is not None:
        dropped = {"iters": not caps.iterations, "flow_init": not caps.warm_start,
                   "bidirectional": not caps.bidirectional}
        kwargs = {k: v for k, v in kwargs.items() if not dropped.get(k, False)}
    return kwargs


def has_iterations(module: nn.Module) -> bool:
    """Whether ``module`` is a backbone that declares refinement iterations (the RAFT family)."""
    caps = _capabilities(module)
    return caps is not None and caps.iterations


def call_net(fn: NetFn, module: nn.Module, img1: torch.Tensor, img2: torch.Tensor, **options: Any) -> Any:
    """``fn(img1, img2, **call_options(module, options))``.

    fn is the module itself or something that runs it (a MAML learner); ``module`` is the network whose
    capabilities decide the options, so one call site serves every backbone.
    """
    return fn(img1, img2, **call_options(module, options))


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


def bidirectional(fn: NetFn, module: nn.Module, img1: torch.Tensor, img2: torch.Tensor,
                  batch: bool | None = None, **options: Any) -> FlowOutput:
    """One FlowOutput for (img1, img2) whose backward fields (``flow_bw``, ``flow_bw_low``, ``flows_bw``,
    ``pyramid_bw``) hold the network's output on (img2, img1).

    Networks with a shared-encoder bidirectional call (``Capabilities.bidirectional``: the RAFT family) compute
    both from one encoder pass whenever ``batch`` is not False. Otherwise ``batch`` runs both directions as one
    call on 2N images (None = whenever that is exact, see ``can_batch_directions``), else as two calls.
    """
    caps = _capabilities(module)
    if batch is not False and caps is not None and caps.bidirectional:
        return call_net(fn, module, img1, img2, bidirectional=True, **options)
    if batch is None:
        batch = can_batch_directions(module)
    if batch:
        out_fw, out_bw = split_output(call_net(fn, module, torch.cat([img1, img2]), torch.cat([img2, img1]),
                                               **options), img1.shape[0])
    else:
        out_fw, out_bw = call_net(fn, module, img1, img2, **options), call_net(fn, module, img2, img1, **options)
    return out_fw.with_backward(out_bw)
