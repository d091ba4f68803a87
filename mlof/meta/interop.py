"""The optional ``higher`` backend of ``mlof.meta.MAML`` (``backend="higher"``).

``higher`` is not required: 0.2.1 installs on torch 2.x (``pip install mlof[higher]``) and is imported only
when that backend is asked for. (Conversion from learn2learn wrappers: ``mlof.meta.maml.from_learn2learn``.)
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["require_higher", "HigherLearner"]


def require_higher():
    """The ``higher`` module, or a ValueError explaining how to get it."""
    try:  # optional dependency (mlof[higher]), needed by backend='higher' only
        import higher
    except ImportError as e:
        raise ValueError("backend='higher' needs the optional package higher (pip install 'mlof[higher]' or "
                         "pip install higher); the default backend='func' needs nothing") from e
    return higher


class HigherLearner:
    """A task learner on ``higher.monkeypatch`` with the same surface as ``mlof.meta.Learner``.

    ``copy_initial_weights=False`` makes the initial fast weights the model's own parameters, so the outer
    gradient reaches them (higher's default copies them and MAML silently learns nothing). First-order mode
    keeps higher's graph but detaches the inner gradients, which gives FOMAML exactly. BatchNorm buffers are
    the module's own under higher (the "shared" policy); parameter selection and learning rates follow the
    owner (MAML or MetaSGD).
    """

    def __init__(self, owner: Any, first_order: bool):
        higher = require_higher()
        self.owner = owner
        self.module = owner.module
        self.first_order = first_order
        self.fmodel = higher.monkeypatch(owner.module, copy_initial_weights=False, track_higher_grads=True)
        self.names = [n for n, _ in owner.module.named_parameters()]
        self.adapted = list(owner.adapted_names)
        self.steps = 0

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.fmodel.fast_params))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fmodel(*args, **kwargs)

    inner_forward = __call__

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("backend='higher' runs forward only; use the default backend='func' for other methods")

    def adapt(self, loss: torch.Tensor, first_order: bool | None = None,
              allow_unused: bool | None = None) -> "HigherLearner":
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss must be a scalar tensor")
        fo = self.first_order if first_order is None else bool(first_order)
        unused = self.owner.allow_unused if allow_unused is None else bool(allow_unused)
        params = self.params
        grads = torch.autograd.grad(loss, [params[n] for n in self.adapted], retain_graph=not fo,
                                    create_graph=not fo, allow_unused=unused)
        for i, (name, grad) in enumerate(zip(self.adapted, grads)):
            if grad is not None:
                params[name] = self.owner._update(i, name, params[name], grad)
        self.fmodel.update_params([params[n] for n in self.names])
        self.steps += 1
        return self

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.params.items())

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(self.fmodel.fast_params)

    def adapted_parameters(self) -> dict[str, torch.Tensor]:
        params = self.params
        return {n: params[n] for n in self.adapted}

    def state_dict(self) -> dict[str, torch.Tensor]:
        params = self.params
        return {k: (params[k] if k in params else v).detach().clone()
                for k, v in self.module.state_dict(keep_vars=True).items()}

    def to_module(self) -> nn.Module:
        clone = copy.deepcopy(self.module)
        clone.load_state_dict(self.state_dict())
        return clone
