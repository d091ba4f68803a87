"""Correlation layers: dense (official) vs on-demand, gradients, memory bound, auto selection, edge cases."""
from __future__ import annotations

import pytest
import torch

from backbones.layers import CorrBlock, OnDemandCorrBlock, bilinear_sampler, build_corr, coords_grid
from backbones.layers.corr import dense_corr_bytes


def _inputs(n=2, c=32, h=19, w=21, flow_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(n, c, h, w, generator=g)
    f2 = torch.randn(n, c, h, w, generator=g)
    coords = coords_grid(n, h, w) + flow_scale * torch.randn(n, 2, h, w, generator=g)
    return f1, f2, coords


# tile / max_spread / chunk settings exercise the tile kernel, the per-pixel fallback and chunking
SETTINGS = [{}, {"max_spread": 0}, {"tile": 4, "max_spread": 3}, {"tile": 3, "chunk_bytes": 50_000}]


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_ondemand_equals_dense_values_and_gradients(kwargs):
    f1, f2, coords = _inputs()
    leaves = {k: [t.clone().requires_grad_() for t in (f1, f2, coords)] for k in ("dense", "ondemand")}
    dense = CorrBlock(*leaves["dense"][:2], num_levels=4, radius=3)(leaves["dense"][2])
    ondemand = OnDemandCorrBlock(*leaves["ondemand"][:2], num_levels=4, radius=3, **kwargs)(leaves["ondemand"][2])
    assert dense.shape == ondemand.shape == (2, 4 * 7 * 7, 19, 21)
    assert (dense - ondemand).abs().max() < 1e-4
    weight = torch.randn_like(dense)
    (dense * weight).sum().backward()
    (ondemand * weight).sum().backward()
    for a, b in zip(leaves["dense"], leaves["ondemand"]):
        assert (a.grad - b.grad).abs().max() < 1e-3 * a.grad.abs().max()


def test_channel_order_is_the_official_transposed_one():
    """Channel a*(2r+1)+b of level 0 holds x offset a-r and y offset b-r (RAFT's meshgrid order)."""
    f1, f2, _ = _inputs(n=1, h=16, w=16)
    coords = coords_grid(1, 16, 16)
    corr = CorrBlock(f1, f2, num_levels=1, radius=1)(coords)
    y, x = 5, 7
    for a in range(3):
        for b in range(3):
            expected = (f1[0, :, y, x] * f2[0, :, y + b - 1, x + a - 1]).sum() / 32 ** 0.5
            assert torch.allclose(corr[0, a * 3 + b, y, x], expected, atol=1e-5)
    assert torch.allclose(OnDemandCorrBlock(f1, f2, num_levels=1, radius=1)(coords), corr, atol=1e-5)


def test_second_order_gradients_agree():
    f1, f2, coords = _inputs(h=12, w=10)
    grads = []
    for cls in (CorrBlock, OnDemandCorrBlock):
        a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
        out = cls(a, b, num_levels=2, radius=2)(coords).square().sum()
        (ga,) = torch.autograd.grad(out, a, create_graph=True)
        ga.square().sum().backward()
        grads.append(b.grad)
    assert (grads[0] - grads[1]).abs().max() < 1e-3 * grads[0].abs().max()


def test_ondemand_saved_memory_grows_linearly_with_pixels():
    """What autograd keeps for backward: O(pixels * C) for on-demand (no per-window feature copies), while
    dense keeps the O(pixels^2) volume."""

    def saved_bytes(cls, h, w, c=64):
        f1, f2, coords = _inputs(n=1, c=c, h=h, w=w)
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            cls(a, b, num_levels=4, radius=4)(coords).sum()
        return sum(total) / (h * w * c * 4)   # in units of one feature map

    for h, w in ((24, 32), (48, 64)):
        # fmap1 in two layouts (counted once per level), pooled fmap2 rows, box indices, weights
        assert saved_bytes(OnDemandCorrBlock, h, w) < 16
    assert saved_bytes(CorrBlock, 48, 64) > 100   # the all-pairs volume: 4 * (48*64)^2 bytes


def test_auto_picks_by_memory_budget():
    f1, f2, _ = _inputs(n=1, h=16, w=16)
    need = dense_corr_bytes(f1.shape, 4)
    assert need == 4 * 256 * (256 + 64 + 16 + 4)
    assert isinstance(build_corr("auto", f1, f2, 4, 4, memory_budget=need), CorrBlock)
    assert isinstance(build_corr("auto", f1, f2, 4, 4, memory_budget=need - 1), OnDemandCorrBlock)
    assert isinstance(build_corr("ondemand", f1, f2), OnDemandCorrBlock)
    with pytest.raises(ValueError, match="corr must be one of"):
        build_corr("sparse", f1, f2)


def test_bad_feature_maps_raise():
    f1, f2, _ = _inputs(n=1, h=8, w=8)
    with pytest.raises(ValueError, match="too small"):
        CorrBlock(f1[..., :7], f2[..., :7], num_levels=4)
    with pytest.raises(ValueError, match="equal shape"):
        OnDemandCorrBlock(f1, f2[..., :7])


def test_one_pixel_coarsest_level_is_finite_and_consistent():
    """8x8 features pool to 1x1 at level 3: the official sampler divides by W-1 = 0 there (NaN flow of small
    inputs); ours samples it correctly, and both kinds agree."""
    f1, f2, coords = _inputs(n=1, h=8, w=8, flow_scale=1.0)
    dense = CorrBlock(f1, f2, num_levels=4, radius=4)(coords)
    assert torch.isfinite(dense).all()
    assert (dense - OnDemandCorrBlock(f1, f2, num_levels=4, radius=4)(coords)).abs().max() < 1e-4
    # a 1x1 image sampled at its pixel gives the pixel, half a pixel away half of it, outside zero
    img = torch.full((1, 1, 1, 1), 2.0)
    pts = torch.tensor([[[[0.0, 0.0], [0.5, 0.0], [1.5, 0.0]]]])
    assert torch.allclose(bilinear_sampler(img, pts)[0, 0, 0], torch.tensor([2.0, 1.0, 0.0]))


def test_bilinear_sampler_uses_pixel_coordinates():
    img = torch.arange(20.0).view(1, 1, 4, 5)
    pts = torch.tensor([[[[1.0, 2.0], [1.5, 2.0], [4.0, 3.0], [-1.0, 0.0]]]])
    out, inside = bilinear_sampler(img, pts, mask=True)
    assert torch.allclose(out[0, 0, 0], torch.tensor([11.0, 11.5, 19.0, 0.0]))
    assert inside[0, 0, :, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
