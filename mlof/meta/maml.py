"""MAML and Meta-SGD on fast-weight swapping + ``torch.autograd.grad`` (no extra dependency).

learn2learn-style usage::

    maml = MAML(model, lr=5e-6, first_order=True, params="all")
    opt = torch.optim.Adam(maml.parameters(), lr=5e-6)
    for task in tasks:
        learner = maml.clone()                 # fast weights = the model's parameters (graph-connected)
        for _ in range(3):
            learner.adapt(inner_loss(learner(x_support)))   # one differentiable SGD step
        outer = outer_loss(learner(x_query))
        outer.backward()                       # gradients land on model's parameters (and MetaSGD's lrs)
    opt.step()

A learner never deep-copies the network: it holds a dict of "fast" tensors (differentiable functions of the
original parameters) and runs the wrapped module with them through ``swapped_tensors``, which swaps them in
for the duration of the call and restores the module afterwards. The wrapped model is never mutated.

Tied parameters (one module or one tensor reachable under several names, e.g. the official RAFT encoder's
``norm3`` that is also ``downsample.1``) are swapped under every name they have. ``torch.func.functional_call``
(torch 2.13) mishandles a submodule registered twice: it restores the second alias with the fast tensor, which
leaves the model holding a non-leaf tensor and cuts those parameters off the meta-gradient.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from mlof.meta.interop import HigherLearner, require_higher
from mlof.meta.params import ParamSpec, select_parameters

__all__ = ["MAML", "MetaSGD", "Learner", "BUFFER_POLICIES", "swapped_tensors", "tensor_aliases", "from_learn2learn"]

BUFFER_POLICIES = ("copy", "shared")


def tensor_aliases(module: nn.Module) -> dict[str, list[str]]:
    """Canonical name (the one ``named_parameters()``/``named_buffers()`` yield) -> every name of that tensor.

    A tensor has several names when a submodule is registered twice or a parameter is tied across modules.
    """
    out: dict[str, list[str]] = {}
    for named in (module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        first: dict[int, str] = {}
        for name, t in named:
            canonical = first.setdefault(id(t), name)
            out.setdefault(canonical, []).append(name)
    return out


@contextlib.contextmanager
def swapped_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor],
                    aliases: Mapping[str, list[str]] | None = None) -> Iterator[None]:
    """Run code with ``module``'s parameters/buffers replaced by ``tensors`` (name -> tensor), then restore.

    Each tensor is put in place under all of its ``aliases`` (default: ``tensor_aliases(module)``); every
    (owner module, attribute) slot is swapped and restored exactly once, so tied weights stay tied and the
    module is left as it was, also when the code raises.
    """
    aliases = tensor_aliases(module) if aliases is None else aliases
    saved: dict[tuple[int, str], tuple[dict, str, torch.Tensor | None]] = {}
    try:
        for name, tensor in tensors.items():
            for alias in aliases.get(name, [name]):
                owner_name, _, attr = alias.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                key = (id(owner), attr)
                if key in saved:
                    continue
                if attr in owner._parameters:
                    store = owner._parameters
                elif attr in owner._buffers:
                    store = owner._buffers
                else:
                    raise ValueError(f"{type(module).__name__} has no parameter or buffer {alias!r}")
                saved[key] = (store, attr, store[attr])
                store[attr] = tensor
        yield
    finally:
        for store, attr, original in saved.values():
            store[attr] = original


class MAML(nn.Module):
    """Model-Agnostic Meta-Learning wrapper (Finn et al. 2017), first and second order.

    model:        the network; wrapped as ``self.module`` (its parameters are ``self.parameters()``).
    lr:           inner-loop SGD learning rate.
    first_order:  if True the inner gradients are treated as constants (FOMAML): the outer gradient is the
                  gradient at the adapted point; if False they are differentiated (``create_graph=True``).
    params:       what adapts in the inner loop (see ``select_parameters``): None/"all", a group name of
                  ``backbones.param_groups(model)``, a list of names, or a predicate ``(name, param) -> bool``.
                  Parameters with ``requires_grad=False`` never adapt (learn2learn's ``allow_nograd=True``).
                  Non-adapted parameters get no inner gradient (the inner backward does not even visit the
                  parts of the graph only they need) and still receive the outer gradient.
    allow_unused: adapted parameters that do not influence an inner loss keep their value instead of raising.
    buffers:      "copy" (default): every clone gets its own copy of the buffers (BatchNorm running stats), so
                  statistics updated by one task never leak into other tasks or into the wrapped model;
                  "shared": clones use the model's own buffers, reproducing the official MLOF release (its
                  learn2learn clones share BatchNorm statistics, which drift across tasks).
    backend:      "func" (default: fast weights swapped in, see ``swapped_tensors``) or "higher" (needs the optional ``higher`` package).
    """

    def __init__(self, model: nn.Module, lr: float, first_order: bool = False, params: ParamSpec = None,
                 allow_unused: bool = True, buffers: str = "copy", backend: str = "func"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"buffers must be one of {BUFFER_POLICIES}, got {buffers!r}")
        if backend not in ("func", "higher"):
            raise ValueError(f"backend must be 'func' or 'higher', got {backend!r}")
        if backend == "higher":
            require_higher()
        self.module = model
        self.lr = float(lr)
        self.first_order = bool(first_order)
        self.allow_unused = bool(allow_unused)
        self.buffer_policy = buffers
        self.backend = backend
        self.selected = select_parameters(model, params)
        self.aliases = tensor_aliases(model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model with its own (meta) parameters."""
        return self.module(*args, **kwargs)

    @property
    def adapted_names(self) -> list[str]:
        """Names of the parameters the inner loop updates (selected and requiring grad)."""
        named = dict(self.module.named_parameters())
        return [n for n in self.selected if named[n].requires_grad]

    def clone(self, first_order: bool | None = None) -> "Learner":
        """A new task learner whose fast weights start at the model's current parameters."""
        fo = self.first_order if first_order is None else bool(first_order)
        if self.backend == "higher":
            return HigherLearner(self, fo)
        params = dict(self.module.named_parameters())
        buffers = None
        if self.buffer_policy == "copy":
            buffers = {n: b.detach().clone() for n, b in self.module.named_buffers()}
        return Learner(self, params, buffers, fo, self.adapted_names)

    def _update(self, index: int, name: str, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Inner SGD rule for the ``index``-th adapted parameter."""
        return param - self.lr * grad

    def extra_repr(self) -> str:
        return (f"lr={self.lr}, first_order={self.first_order}, adapted={len(self.adapted_names)} tensors, "
                f"buffers={self.buffer_policy!r}, backend={self.backend!r}")


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with a learned learning rate per parameter element.

    ``self.lrs[i]`` (an ``nn.Parameter`` shaped like the i-th adapted parameter, initialised to ``lr``) scales
    that parameter's inner gradient; the outer ``backward()`` reaches the learning rates in both first- and
    second-order mode (in first-order mode through ``-lr_i * g_i`` with ``g_i`` constant).
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, first_order: bool = False, params: ParamSpec = None,
                 allow_unused: bool = True, buffers: str = "copy"):
        super().__init__(model, lr, first_order=first_order, params=params, allow_unused=allow_unused,
                         buffers=buffers, backend="func")
        named = dict(model.named_parameters())
        self.lr_names = list(self.adapted_names)
        self.lrs = nn.ParameterList([nn.Parameter(torch.full_like(named[n].detach(), float(lr)))
                                     for n in self.lr_names])

    @property
    def adapted_names(self) -> list[str]:
        # Fixed at construction: the learned rates are aligned with this list.
        if hasattr(self, "lr_names"):
            return list(self.lr_names)
        return super().adapted_names

    def _update(self, index: int, name: str, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return param - self.lrs[index] * grad


class Learner:
    """Fast weights of one task; call it like the network.

    params:  name -> tensor for every parameter of the wrapped module (adapted ones are the fast weights).
    buffers: name -> this learner's own buffer copy, or None to use the module's buffers ("shared" policy).
    """

    def __init__(self, owner: MAML, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None,
                 first_order: bool, adapted: list[str]):
        self.owner = owner
        self.module = owner.module
        self.params = params
        self.buffers = buffers
        self.first_order = first_order
        self.adapted = list(adapted)
        self.steps = 0

    # -- running the network -------------------------------------------------------------------------------
    def _tensors(self, detach_frozen: bool) -> dict[str, torch.Tensor]:
        if detach_frozen:
            keep = set(self.adapted)
            tensors = {n: (t if n in keep else t.detach()) for n, t in self.params.items()}
        else:
            tensors = dict(self.params)
        if self.buffers is not None:
            tensors.update(self.buffers)
        return tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the network's ``forward`` with the fast weights."""
        with swapped_tensors(self.module, self._tensors(False), self.owner.aliases):
            return self.module(*args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run another method of the network (e.g. ``"infer_sequence"``) with the fast weights."""
        fn = getattr(self.module, method, None)
        if not callable(fn):
            raise ValueError(f"{type(self.module).__name__} has no method {method!r}")
        with swapped_tensors(self.module, self._tensors(False), self.owner.aliases):
            return fn(*args, **kwargs)

    def inner_forward(self, *args: Any, **kwargs: Any) -> Any:
        """Forward for an inner (support) loss: non-adapted parameters enter detached.

        Autograd then keeps no activations for their gradients (e.g. the encoders when only the update block
        adapts), which saves memory. Exact in first-order mode (the inner gradients are constants there); in
        second-order mode it drops the path of the non-adapted parameters through the inner gradient, so use
        the plain call when that term matters.
        """
        with swapped_tensors(self.module, self._tensors(True), self.owner.aliases):
            return self.module(*args, **kwargs)

    # -- adapting --------------------------------------------------------------------------------------------
    def adapt(self, loss: torch.Tensor, first_order: bool | None = None,
              allow_unused: bool | None = None) -> "Learner":
        """One inner SGD step on ``loss`` (a scalar computed with this learner). Returns ``self``."""
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss must be a scalar tensor, got "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        if not loss.requires_grad:
            raise ValueError("loss does not require grad: compute it from this learner's output")
        fo = self.first_order if first_order is None else bool(first_order)
        unused = self.owner.allow_unused if allow_unused is None else bool(allow_unused)
        names = [n for n in self.adapted if self.params[n].requires_grad]
        grads = torch.autograd.grad(loss, [self.params[n] for n in names], retain_graph=not fo,
                                    create_graph=not fo, allow_unused=unused)
        index = {n: i for i, n in enumerate(self.adapted)}
        for name, grad in zip(names, grads):
            if grad is None:
                continue
            self.params[name] = self.owner._update(index[name], name, self.params[name], grad)
        self.steps += 1
        return self

    def clone(self) -> "Learner":
        """A learner continuing from this one's fast weights (graph-connected) with its own buffer copies."""
        buffers = None if self.buffers is None else {n: b.clone() for n, b in self.buffers.items()}
        other = Learner(self.owner, dict(self.params), buffers, self.first_order, self.adapted)
        other.steps = self.steps
        return other

    # -- inspection ------------------------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.params.items())

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(self.params.values())

    def adapted_parameters(self) -> dict[str, torch.Tensor]:
        """name -> fast tensor of the adapted parameters only (e.g. for a keep-close regulariser)."""
        return {n: self.params[n] for n in self.adapted}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's state_dict with the fast weights and this learner's buffers (detached copies)."""
        out = {}
        for key, value in self.module.state_dict(keep_vars=True).items():
            if key in self.params:
                value = self.params[key]
            elif self.buffers is not None and key in self.buffers:
                value = self.buffers[key]
            out[key] = value.detach().clone()
        return out

    def to_module(self) -> nn.Module:
        """A deep copy of the network carrying the fast weights (detached), e.g. to keep an adapted model."""
        clone = copy.deepcopy(self.module)
        clone.load_state_dict(self.state_dict())
        return clone


def from_learn2learn(wrapper: Any, **overrides: Any):
    """An ``mlof.meta.MAML`` (or ``MetaSGD``) equivalent to a learn2learn ``MAML`` / ``MetaSGD`` wrapper.

    learn2learn 0.2.0 does not build on CPython 3.11, but models meta-trained with it (the MLOF release) can be
    continued here: this reads what its wrappers hold (duck-typed, no import of learn2learn).

    Reads ``wrapper.module``, ``wrapper.lr`` and ``wrapper.first_order`` (and ``wrapper.lrs`` for Meta-SGD,
    whose values are copied); the network is shared, not copied. learn2learn's clones share BatchNorm
    statistics, so ``buffers="shared"`` is the default here; ``overrides`` (e.g. ``buffers="copy"``,
    ``params="update_block"``) go to the constructor. Raises ValueError for objects that are not such wrappers.
    """
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
