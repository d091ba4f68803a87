"""GMA's SharedAttention: one gradient of the attention matrix for all iterations equals plain autograd's."""
from __future__ import annotations

import pytest
import torch

import backbones
from backbones.layers.attention import SharedAttention

pytestmark = pytest.mark.usefixtures("single_thread")


def _grads(monkeypatch, shared: bool, train: bool = False, second_order: bool = False, **options):
    monkeypatch.setattr(SharedAttention, "usable", staticmethod(lambda m: shared and isinstance(m, torch.Tensor)
                                                                and m.requires_grad))
    torch.manual_seed(0)
    model = backbones.build("gma", **options).train(train)
    with torch.no_grad():
        model.update_block.aggregator.gamma.fill_(0.7)   # official init is 0: the aggregation path must count
    g = torch.Generator().manual_seed(1)
    im1, im2 = (255 * torch.rand(1, 3, 64, 80, generator=g) for _ in range(2))
    out = model(im1, im2, iters=3, bidirectional=True)
    loss = out.flow.abs().mean() + 0.1 * out.flow_bw.square().mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=second_order, allow_unused=True)
    if second_order:   # a MAML-like outer gradient through the inner one
        outer = sum((gr * gr).sum() for gr in grads if gr is not None)
        grads = torch.autograd.grad(outer, params, allow_unused=True)
    return out.flow.detach(), [None if gr is None else gr.detach() for gr in grads]


@pytest.mark.parametrize("options", [{"train": False}, {"train": True}, {"grad_checkpointing": True},
                                     {"second_order": True}])
def test_shared_attention_gradients_equal_plain_autograd(monkeypatch, options):
    flow_a, grads_a = _grads(monkeypatch, shared=False, **options)
    flow_b, grads_b = _grads(monkeypatch, shared=True, **options)
    torch.testing.assert_close(flow_a, flow_b, rtol=0, atol=0)
    att = [i for i, (n, _) in enumerate(backbones.build("gma").named_parameters()) if n.startswith("att.to_qk")]
    assert att and all(grads_a[i] is not None and grads_a[i].abs().sum() > 0 for i in att)
    # tolerance on the scale of all gradients: the feature encoder's biases before instance norm have a zero
    # gradient in exact arithmetic, so theirs (either path) is rounding noise of that scale
    scale = max(float(a.abs().max()) for a in grads_a if a is not None)
    for a, b in zip(grads_a, grads_b):
        if a is None:
            assert b is None or b.abs().max() == 0
            continue
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * scale)


def test_shared_attention_is_used_with_gradients_and_leaves_no_stash():
    model = backbones.build("gma").eval()
    seen = []
    original = SharedAttention.apply

    def spy(self, v):
        seen.append(self)
        return original(self, v)
    SharedAttention.apply = spy
    try:
        im = 255 * torch.rand(1, 3, 64, 80)
        model(im, im.flip(-1), iters=2).flow.sum().backward()
    finally:
        SharedAttention.apply = original
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0]._stash.items == []
    assert model.att.to_qk.weight.grad is not None


def _corr_grads(monkeypatch, shared: bool, second_order: bool):
    from backbones.layers.corr import CorrBlock
    from backbones.layers.shared_grad import SharedGradient
    if not shared:
        monkeypatch.setattr(SharedGradient, "usable", staticmethod(lambda t: False))
    torch.manual_seed(0)
    f1 = torch.randn(2, 16, 12, 14, requires_grad=True)
    f2 = torch.randn(2, 16, 12, 14, requires_grad=True)
    block = CorrBlock(f1, f2, num_levels=4, radius=2, bidirectional=True)   # level 3: a 1-pixel-high map
    coords = torch.rand(4, 2, 12, 14) * 14
    loss = sum((block(coords + k) * (k + 1)).sum() ** 2 / 1e4 for k in range(3))   # three lookups
    grads = torch.autograd.grad(loss, [f1, f2], create_graph=second_order)
    if second_order:
        grads = torch.autograd.grad(sum((g ** 2).sum() for g in grads), [f1, f2])
    monkeypatch.undo()
    return loss.detach(), grads, block


@pytest.mark.parametrize("second_order", [False, True])
def test_dense_pyramid_gradient_combined_over_lookups_equals_plain_autograd(monkeypatch, second_order):
    loss_a, grads_a, plain = _corr_grads(monkeypatch, False, second_order)
    loss_b, grads_b, shared = _corr_grads(monkeypatch, True, second_order)
    assert all(s is None for s in plain._shared) and all(s is not None for s in shared._shared)
    assert float(loss_a) == float(loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
