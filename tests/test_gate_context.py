"""The GRU's context split (``GateContext``): the same function as the plain GRU on cat([h, context, x])."""
from __future__ import annotations

import pytest
import torch

import backbones
from backbones.layers.update import ConvGRU, SepConvGRU


@pytest.mark.parametrize("cls", [ConvGRU, SepConvGRU])
def test_split_gru_equals_the_plain_gru_in_value_and_gradient(cls):
    torch.manual_seed(0)
    gru = cls(hidden_dim=8, input_dim=6 + 5).double()
    h = torch.randn(2, 8, 7, 9, dtype=torch.double, requires_grad=True)
    inp = torch.randn(2, 6, 7, 9, dtype=torch.double, requires_grad=True)
    x = torch.randn(2, 5, 7, 9, dtype=torch.double, requires_grad=True)
    plain = gru(h, torch.cat([inp, x], dim=1))
    split = gru(h, x, gru.precompute(inp))
    assert torch.allclose(plain, split, atol=1e-12)
    weights = torch.randn_like(plain)
    grads_plain = torch.autograd.grad((plain * weights).sum(), [h, inp, x, *gru.parameters()])
    grads_split = torch.autograd.grad((split * weights).sum(), [h, inp, x, *gru.parameters()])
    for a, b in zip(grads_plain, grads_split):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name", ["raft", "raft_small", "gma", "kpaflow"])
def test_networks_with_and_without_the_split_agree(name, monkeypatch):
    torch.manual_seed(0)
    model = backbones.build(name).eval()
    a, b = torch.rand(1, 3, 128, 160) * 255, torch.rand(1, 3, 128, 160) * 255
    with torch.no_grad():
        split = model(a, b, iters=4).flow
        assert model.gate_context(torch.zeros(1, model.context_dim, 16, 20)) is not None
        monkeypatch.setattr(type(model), "gate_context", lambda self, inp: None)
        plain = model(a, b, iters=4).flow
    assert (split - plain).abs().max() < 1e-4 * (1 + plain.abs().max())
