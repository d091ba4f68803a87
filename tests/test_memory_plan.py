"""Memory plans and reduced precision of the RAFT family: plans change where values live, never the values."""
from __future__ import annotations

import logging

import pytest
import torch

import backbones
import mlof
from backbones.memory_plan import CallShape, MemoryPlan, parse_bytes, plan_memory

pytestmark = pytest.mark.usefixtures("single_thread")


def _pair(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 255 * torch.rand(1, 3, h, w, generator=g), 255 * torch.rand(1, 3, h, w, generator=g)


def _run(name: str, train: bool, **options):
    """Flows, gradients and BatchNorm buffers of one bidirectional forward + backward (same init weights)."""
    torch.manual_seed(3)
    model = backbones.build(name, **options)
    for p in model.parameters():   # rule-like non-zero gains, so attention/aggregation paths matter
        if p.dim() == 1 and p.numel() == 1:
            p.data.fill_(0.3)
    model.train(train)
    im1, im2 = _pair()
    out = model(im1, im2, iters=3, bidirectional=True)
    loss = out.flow.abs().mean() + out.flow_bw.square().mean() * 0.01 + out.flow_low.abs().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return out.flow.detach(), out.flow_bw.detach(), grads, buffers


def _assert_same(a, b, atol=1e-4):
    flow_a, bw_a, grads_a, buf_a = a
    flow_b, bw_b, grads_b, buf_b = b
    assert (flow_a - flow_b).abs().max() < atol and (bw_a - bw_b).abs().max() < atol
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        # relative to the tensor's own scale; the floor covers gradients that are zero up to rounding (biases
        # right before an instance norm: ~1e-6 of pure rounding noise, recomputation rounds differently)
        scale = grads_a[n].abs().max()
        assert (grads_a[n] - grads_b[n]).abs().max() <= 1e-4 * scale + 1e-6, n
    for n in buf_a:   # BatchNorm statistics updated once, as without recomputation
        assert torch.allclose(buf_a[n].float(), buf_b[n].float(), atol=1e-6), n


@pytest.mark.parametrize("name, train", [
    ("raft_small", False),
    ("raft", True),                                          # BatchNorm in training mode: statistics once
    pytest.param("raft", False, marks=pytest.mark.slow),
    pytest.param("raft_small", True, marks=pytest.mark.slow),
])
def test_checkpointing_plans_keep_flows_gradients_and_bn_statistics(name, train):
    plain = _run(name, train, corr="dense")
    saved = _run(name, train, corr="dense", grad_checkpointing=True, checkpoint_encoder=True)
    _assert_same(plain, saved)


def test_gma_chunked_attention_and_full_plan_equal_the_plain_path():
    plain = _run("gma", False, corr="dense", position_and_content=True)
    chunked = _run("gma", False, corr="ondemand", position_and_content=True, attention_chunk=3,
                   grad_checkpointing=True, checkpoint_encoder=True)
    _assert_same(plain, chunked)


def test_gma_attention_softmax_in_place_without_gradient_equals_softmax():
    # no-grad attention normalises the (hw)^2 logits in place (one matrix, not two); values must not change
    from backbones.layers.attention import Attention
    torch.manual_seed(0)
    att = Attention(dim=16, dim_head=16, position_and_content=True)
    fmap = torch.randn(2, 16, 6, 7) * 3
    with torch.no_grad():
        in_place = att(fmap)
    recorded = att(fmap)
    assert recorded.requires_grad and not in_place.requires_grad
    torch.testing.assert_close(in_place, recorded.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(in_place.sum(-1), torch.ones(2, 1, 42))


def test_kpaflow_checkpointed_patch_attention_equals_the_plain_path():
    plain = _run("kpaflow", False, corr="dense")
    saved = _run("kpaflow", False, corr="dense", checkpoint_attention=True, grad_checkpointing=True)
    _assert_same(plain, saved)


def test_kpaflow_plans_checkpoint_the_patch_attention_when_tight():
    shape = CallShape(family="kpaflow", encoder="basic", height=1080, width=1920, batch=2, images=2, iters=1,
                      grad=True, attention=False, patch_attention=True)
    roomy = plan_memory(shape, 10 ** 15, dense_corr_bytes=10 ** 10)
    tight = plan_memory(shape, 1, dense_corr_bytes=10 ** 10)
    assert not roomy.checkpoint_attention and tight.checkpoint_attention
    assert tight.estimated_bytes < plan_memory(shape, 10 ** 15, 0).estimated_bytes
    assert "checkpoint patch attention" in tight.describe()
    model = backbones.build("kpaflow", memory_budget="1MB")
    model(*_pair(), iters=1, bidirectional=True).flow.sum().backward()
    assert model.last_memory_plan.checkpoint_attention
    with pytest.raises(ValueError, match="checkpoint_attention"):
        backbones.build("kpaflow", checkpoint_attention="yes")


def test_budget_picks_savers_in_order_and_logs_the_plan(caplog):
    shape = CallShape(family="gma", encoder="basic", height=1080, width=1920, batch=2, images=2, iters=12,
                      grad=True, attention=True)
    roomy = plan_memory(shape, 10 ** 15, dense_corr_bytes=10 ** 10)
    assert roomy == MemoryPlan("dense", estimated_bytes=roomy.estimated_bytes, budget=10 ** 15)
    tight = plan_memory(shape, 1, dense_corr_bytes=10 ** 10)
    assert tight.corr == "ondemand" and tight.checkpoint_iterations and tight.checkpoint_encoder
    assert tight.attention_chunk > 0 and tight.estimated_bytes < roomy.estimated_bytes
    mid = plan_memory(shape, plan_memory(shape, 10 ** 15, 0).estimated_bytes, dense_corr_bytes=10 ** 10)
    assert mid.corr == "ondemand" and not mid.checkpoint_encoder   # the cheapest saver first
    model = backbones.build("raft_small", memory_budget="1MB")
    with caplog.at_level(logging.INFO, logger="mlof.memory"):
        model(*_pair(), iters=2)                     # no grad wanted: nothing to checkpoint
        out = model(*_pair(), iters=2, bidirectional=True)
        out.flow.sum().backward()
    plan = model.last_memory_plan
    assert plan.corr == "ondemand" and plan.checkpoint_iterations and plan.checkpoint_encoder
    assert any("memory plan" in r.getMessage() and "checkpoint encoder" in r.getMessage() for r in caplog.records)


def test_plans_keep_the_dense_pyramid_within_the_corr_memory_budget():
    # A roomy budget must not buy a dense pyramid larger than corr_memory_budget: above it the on-demand
    # lookup is no slower, and a 1080p prediction inside mlof.adapt peaked at +5.6 GB for it.
    shape = CallShape(family="raft", encoder="basic", height=1080, width=1920, batch=1, images=2, iters=12,
                      grad=False, attention=False)
    assert plan_memory(shape, 10 ** 15, dense_corr_bytes=10 ** 10).corr == "dense"
    assert plan_memory(shape, 10 ** 15, dense_corr_bytes=10 ** 10, dense_limit=10 ** 9).corr == "ondemand"
    assert plan_memory(shape, 10 ** 15, dense_corr_bytes=10 ** 8, dense_limit=10 ** 9).corr == "dense"
    assert plan_memory(shape, 10 ** 15, dense_corr_bytes=10 ** 10, corr="dense", dense_limit=10 ** 9).corr == "dense"
    model = backbones.build("raft_small", memory_budget=10 ** 15)
    assert model.memory_plan(1080, 1920).corr == "ondemand"          # 5.6 GiB pyramid > 2 GiB default limit
    assert model.memory_plan(440, 1024).corr == "dense"
    model.corr_memory_budget = 10 ** 12
    assert model.memory_plan(1080, 1920).corr == "dense"


def test_memory_budget_values_are_checked():
    assert parse_bytes("8GB") == 8 * 1024 ** 3 and parse_bytes("512 MiB") == 512 * 1024 ** 2
    assert parse_bytes(1e9) == 10 ** 9
    for bad in ("lots", -1, 0, True):
        with pytest.raises(ValueError, match="memory_budget"):
            backbones.build("raft_small", memory_budget=bad)
    with pytest.raises(ValueError, match="memory_budget"):
        mlof.adapt(backbones.build("raft_small"), _pair(), memory_budget="8 apples", steps=1)


def test_precision_option_is_validated_and_declared():
    with pytest.raises(ValueError, match="precision must be one of"):
        backbones.build("raft", precision="fp8")
    model = backbones.build("raft_small", precision="fp16").eval()
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        model(*_pair(), iters=1)
    for name in backbones.available():
        assert {"fp32", "bf16"} <= set(backbones.capabilities(name).precisions), name
    assert "attention_chunk" in backbones.capabilities("gma").memory
    assert backbones.capabilities("raft").iterations and not backbones.capabilities("upflow").iterations


@pytest.mark.parametrize("name", ["raft_small", "gma", "upflow"])
def test_bf16_outputs_are_float32_and_close_to_fp32(name):
    torch.manual_seed(0)
    ref = backbones.build(name).eval()
    low = backbones.build(name, precision="bf16").eval()
    low.load_state_dict(ref.state_dict())
    im1, im2 = _pair()
    with torch.no_grad():
        a, b = ref(im1, im2, iters=4), low(im1, im2, iters=4)
    assert b.flow.dtype == torch.float32 and torch.isfinite(b.flow).all()
    assert not torch.equal(a.flow, b.flow)                       # autocast really ran
    # documented tolerance (docs/performance.md): mean difference well under 0.1 px at these flow sizes
    assert (a.flow - b.flow).abs().mean() < 0.05 * a.flow.abs().mean() + 0.05


def test_adapt_in_bf16_keeps_float32_weights_and_reports_the_plan():
    model = backbones.build("raft_small").eval()
    res = mlof.adapt(model, _pair(), steps=1, iters=2, precision="bf16", memory_budget="1MB")
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert res.model.precision == "bf16" and model.precision == "fp32"
    assert "checkpoint iterations" in res.history[0]["memory_plan"]
    assert torch.isfinite(res.flow).all()
