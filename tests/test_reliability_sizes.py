"""Every backbone takes any input size from 1 x 1 and any memory layout: pad, run, crop back, never NaN."""
from __future__ import annotations

import warnings

import pytest
import torch

import backbones
from backbones.base import _WARNED

# (registry name, build options); random weights, eval mode. KPA-Flow's KITTI setting has another patch size.
NETWORKS = [("raft", {}), ("raft_small", {}), ("gma", {}), ("kpaflow", {}), ("kpaflow", {"dataset": "kitti"}),
            ("liteflownet2", {}), ("upflow", {}), ("memflow", {})]
FAST_SIZES = [(1, 1), (37, 53), (127, 129)]
MORE_SIZES = [(7, 7), (64, 48), (1, 9), (13, 2), (3, 130), (129, 5)]
_IDS = [f"{n}-{o['dataset']}" if o else n for n, o in NETWORKS]


@pytest.fixture(scope="module", params=NETWORKS, ids=_IDS)
def net(request):
    name, options = request.param
    torch.manual_seed(0)
    return backbones.build(name, **options).eval()


def _pair(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    im1 = torch.rand(1, 3, h, w, generator=g) * 255
    return im1, torch.roll(im1, shifts=1, dims=-1)


def _check_sizes(net, sizes):
    for h, w in sizes:
        with torch.no_grad():
            out = net(*_pair(h, w), iters=1)
        assert out.flow.shape == (1, 2, h, w), (h, w)
        assert torch.isfinite(out.flow).all(), (h, w)


def test_any_size_gives_a_finite_flow_of_the_input_size(net):
    _check_sizes(net, FAST_SIZES)


@pytest.mark.slow
def test_more_sizes_give_a_finite_flow_of_the_input_size(net):
    _check_sizes(net, MORE_SIZES)


def test_channels_last_and_non_contiguous_inputs_give_the_same_flow(net, request):
    # one network per code path by default (RAFTBase, UPFlow, LiteFlowNet2); all of them with -m slow
    name = request.node.callspec.id
    if name not in ("raft_small", "upflow", "liteflownet2") and "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("same code path as raft_small; run with -m slow")
    im1, im2 = _pair(37, 53)
    wide1, wide2 = torch.zeros(1, 3, 37, 106), torch.zeros(1, 3, 37, 106)
    wide1[..., ::2], wide2[..., ::2] = im1, im2
    strided = (wide1[..., ::2], wide2[..., ::2])
    assert not strided[0].is_contiguous()
    with torch.no_grad():
        ref = net(im1, im2, iters=1).flow
        cl = net(im1.to(memory_format=torch.channels_last), im2.to(memory_format=torch.channels_last), iters=1).flow
        nc = net(*strided, iters=1).flow
    assert torch.equal(ref, cl) and torch.equal(ref, nc)


def test_empty_input_error_names_the_input_size(net):
    im = torch.zeros(1, 3, 0, 5)
    with pytest.raises(ValueError, match=r"image1 is 0x5: too small"):
        net(im, im, iters=1)


def test_memflow_infer_sequence_takes_tiny_frames():
    torch.manual_seed(0)
    model = backbones.build("memflow").eval()
    with torch.no_grad():
        outs = model.infer_sequence(torch.rand(3, 3, 5, 9) * 255, iters=1)
    assert [tuple(o.flow.shape) for o in outs] == [(1, 2, 5, 9)] * 2
    assert all(torch.isfinite(o.flow).all() for o in outs)


def test_padding_is_official_at_sizes_the_official_code_takes():
    model = backbones.build("raft_small")
    assert model.padder((1, 3, 436, 1024)).pad == [0, 0, 2, 2]      # the official Sintel padding
    assert model.padder((1, 3, 375, 1242)).pad == [3, 3, 0, 1]
    kitti = backbones.build("raft_small", padding="kitti")
    assert kitti.padder((1, 3, 370, 1226)).pad == [3, 3, 0, 6]     # the official KITTI padding
    assert model.padder((1, 3, 1, 200)).pad == [0, 0, 63, 64]       # 1 row -> 128 rows, 200 -> 200
    assert kitti.padder((1, 3, 37, 53)).pad == [37, 38, 0, 91]


@pytest.mark.parametrize("scale, match", [(1 / 255, "0..1"), (257.0, "exceed 255")])
def test_images_in_another_value_range_warn_once(scale, match):
    model = backbones.build("raft_small").eval()
    im1, im2 = _pair(16, 16)
    _WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(im1 * scale, im2 * scale, iters=1)
            model(im1 * scale, im2 * scale, iters=1)
    hits = [w for w in caught if match in str(w.message)]
    assert len(hits) == 1
    _WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(im1, im2, iters=1)                       # 0..255: silent
            model(torch.zeros_like(im1), torch.zeros_like(im2), iters=1)   # black frames: silent
    assert not [w for w in caught if "expect 0..255" in str(w.message)]
