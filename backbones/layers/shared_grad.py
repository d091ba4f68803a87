"""One gradient for a tensor that every refinement iteration reads: summed in one operation, not per iteration.

RAFT-style networks read the same tensors at each of their 12 iterations (the correlation pyramid, GMA's
attention matrix). Plain autograd gives each read its own full-size gradient (a fresh, zero-filled buffer the
size of the tensor) and adds them up one by one. A ``SharedGradient`` wraps such a tensor: each read
(``SharedGradient.read``) hands its small per-read inputs on to a list instead, and the wrapped tensor's
backward combines all of them in one call (``combine``): one buffer, one pass. The sum is the same up to float
summation order.

The wrapped tensor's backward runs after every read's backward (autograd's dependency order: every read
takes the wrapped tensor as input). Under ``create_graph`` (double backward), reads return their gradient
directly, as plain autograd would, so higher-order gradients are recorded as usual.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["SharedGradient"]


class _Sink(torch.autograd.Function):
    """Identity whose backward adds ``combine(stash)`` (what the reads left) to the incoming gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, owner: "_Stash") -> torch.Tensor:
        ctx.set_materialize_grads(False)   # reads hand in None: no full-size zeros
        ctx.owner = owner
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        owner = ctx.owner
        items, owner.items = owner.items, []
        if items:
            total = owner.combine(items)
            grad = total if grad is None else grad + total
        return grad, None


class _Stash:
    """The reads' contributions of one backward pass, and how to turn them into the tensor's gradient (no
    reference to the tensor itself: no reference cycle through the autograd graph)."""

    def __init__(self, combine: Callable[[list], torch.Tensor]):
        self.combine = combine
        self.items: list = []


class _Read(torch.autograd.Function):
    """``forward_fn(tensor, *inputs)``; backward: ``grad_inputs(grad, *inputs)`` for the inputs that need it, and
    (grad, *inputs) left in the stash for the tensor -- or, under create_graph, this read's own gradient of the
    tensor (``combine`` of it alone)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, stash: _Stash, read: "SharedGradient", *inputs: torch.Tensor):
        ctx.save_for_backward(tensor, *inputs)
        ctx.stash, ctx.read = stash, read
        return read.forward_fn(tensor, *inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tensor, *inputs = ctx.saved_tensors
        read = ctx.read
        grad_tensor = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():      # create_graph: the plain, recorded gradient
                grad_tensor = ctx.stash.combine([(grad, *inputs)])
            else:
                ctx.stash.items.append((grad, *inputs))
        grads = read.grad_inputs(grad, tensor, *inputs, needs=ctx.needs_input_grad[3:])
        return (grad_tensor, None, None, *grads)


class SharedGradient:
    """A tensor read at every iteration, whose gradient is combined once (see the module docstring).

    forward_fn(tensor, *inputs) -> output of one read;
    combine(items) -> the tensor's gradient from a list of reads' (grad_output, *inputs) (under create_graph
    it is called for each read alone);
    grad_inputs(grad_output, tensor, *inputs, needs) -> gradients of the inputs (None where not needed).
    """

    def __init__(self, tensor: torch.Tensor, forward_fn: Callable[..., torch.Tensor],
                 combine: Callable[[list], torch.Tensor], grad_inputs: Callable[..., tuple] | None = None):
        self.forward_fn = forward_fn
        self.grad_inputs = grad_inputs or (lambda grad, tensor, *inputs, needs: (None,) * len(inputs))
        self._stash = _Stash(combine)
        self.tensor = _Sink.apply(tensor, self._stash) if tensor.requires_grad else tensor

    @staticmethod
    def usable(tensor: Any) -> bool:
        """Whether wrapping pays: a float32 tensor autograd records (autocast keeps the plain path)."""
        return (isinstance(tensor, torch.Tensor) and tensor.requires_grad and tensor.dtype == torch.float32
                and not torch.is_autocast_enabled(tensor.device.type))

    def read(self, *inputs: torch.Tensor) -> torch.Tensor:
        """One read of the tensor (``forward_fn(tensor, *inputs)``), differentiable in the tensor and inputs."""
        if not self.tensor.requires_grad or torch.is_autocast_enabled(self.tensor.device.type):
            return self.forward_fn(self.tensor, *inputs)
        return _Read.apply(self.tensor, self._stash, self, *inputs)
