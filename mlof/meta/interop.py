"""Optional interoperability: the ``higher`` backend and conversion from learn2learn's MAML / MetaSGD.

Neither library is required. ``higher`` 0.2.1 installs on torch 2.x (``pip install mlof[higher]``);
learn2learn 0.2.0 does not build on CPython 3.11, but models meta-trained with it (the MLOF release) can be
continued here: ``from_learn2learn`` reads what its wrappers hold (duck-typed, no import of learn2learn).
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["require_higher", "HigherLearner", "from_learn2learn"]


def require_higher():
    """The ``higher`` module, or a ValueError explaining how to get it."""
    try:
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


def from_learn2learn(wrapper: Any, **overrides: Any):
    """An ``mlof.meta.MAML`` (or ``MetaSGD``) equivalent to a learn2learn ``MAML`` / ``MetaSGD`` wrapper.

    Reads ``wrapper.module``, ``wrapper.lr`` and ``wrapper.first_order`` (and ``wrapper.lrs`` for Meta-SGD,
    whose values are copied); the network is shared, not copied. learn2learn's clones share BatchNorm
    statistics, so ``buffers="shared"`` is the default here; ``overrides`` (e.g. ``buffers="copy"``,
    ``params="update_block"``) go to the constructor. Raises ValueError for objects that are not such wrappers.
    """
    from mlof.meta.maml import MAML, MetaSGD
    module = getattr(wrapper, "module", None)
    if not isinstance(module, nn.Module) or not hasattr(wrapper, "lr"):
        raise ValueError(f"{type(wrapper).__name__} is not a learn2learn MAML/MetaSGD wrapper (needs .module "
                         f"and .lr)")
    options = {"first_order": bool(getattr(wrapper, "first_order", False)), "buffers": "shared", **overrides}
    lrs = getattr(wrapper, "lrs", None)
    if lrs is None:
        return MAML(module, float(wrapper.lr), **options)
    lrs = list(lrs)
    out = MetaSGD(module, lr=float(lrs[0].detach().flatten()[0]) if lrs else 1e-3, **options)
    if len(lrs) != len(out.lrs) or any(a.shape != b.shape for a, b in zip(lrs, out.lrs)):
        raise ValueError(f"the wrapper has {len(lrs)} learning-rate tensors, the selected parameters need "
                         f"{len(out.lrs)} (learn2learn keeps one per parameter: select all parameters)")
    with torch.no_grad():
        for mine, theirs in zip(out.lrs, lrs):
            mine.copy_(theirs.detach())
    return out
