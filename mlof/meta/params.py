"""Choosing which parameters adapt: one rule shared by MAML, the meta-trainer and ``mlof.adapt``."""
from __future__ import annotations

from typing import Callable, Iterable, Union

import torch
from torch import nn

from backbones import param_groups

__all__ = ["ParamSpec", "select_parameters"]

# None / "all", a parameter-group name, a list of names (parameter names or group names), or a predicate.
ParamSpec = Union[None, str, Iterable[str], Callable[[str, torch.Tensor], bool]]


def _groups(model: nn.Module) -> dict[str, list[str]]:
    return param_groups(model)


def select_parameters(model: nn.Module, params: ParamSpec = None, *, argument: str = "params") -> list[str]:
    """Names of the parameters of ``model`` chosen by ``params``, in ``named_parameters()`` order.

    params:
      - ``None`` or ``"all"``: every parameter;
      - a group name from ``backbones.param_groups(model)`` (``"update_block"``, ``"feature_encoder"``, ...);
      - a list/tuple/set of parameter names and/or group names;
      - a predicate ``(name, parameter) -> bool``.
    Raises ``ValueError`` naming ``argument`` for unknown names or an empty selection.
    """
    named = dict(model.named_parameters())
    if params is None:
        chosen = set(named)
    elif isinstance(params, str):
        groups = _groups(model)
        if params not in groups:
            raise ValueError(f"{argument}={params!r} is not a parameter group of {type(model).__name__}; "
                             f"groups: {', '.join(sorted(groups))} (or pass a list of names or a predicate)")
        chosen = set(groups[params])
    elif callable(params):
        chosen = {n for n, p in named.items() if params(n, p)}
    else:
        try:
            items = list(params)
        except TypeError:
            raise ValueError(f"{argument} must be None, 'all', a group name, a list of names or a predicate "
                             f"(name, param) -> bool, got {type(params).__name__}") from None
        groups = _groups(model) if any(isinstance(i, str) and i not in named for i in items) else {}
        chosen = set()
        unknown = []
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"{argument} lists {item!r}: entries must be parameter or group names (str)")
            if item in named:
                chosen.add(item)
            elif item in groups:
                chosen.update(groups[item])
            else:
                unknown.append(item)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(f"{argument} names {len(unknown)} unknown parameter(s)/group(s) of "
                             f"{type(model).__name__}: {shown}")
    if not chosen:
        raise ValueError(f"{argument}={params!r} selects no parameter of {type(model).__name__}")
    return [n for n in named if n in chosen]
