"""LiteFlowNet2: model sizes per mmflow zoo configuration, mmflow's state-dict layout and checkpoint format,
shapes, flow-scale invariants, bad input, and short training runs on synthetic translated pairs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import backbones
from backbones.liteflownet2 import CONFIGS, LOSS_WEIGHTS, BilinearUpsample, LiteFlowNet2
from backbones.checkpoint import CheckpointMismatchError
from mlof.losses import multilevel_loss, pyramid_supervision

# Learnable parameters per configuration. "full"/"pre" is the published LiteFlowNet2 (6.42M in the TPAMI paper);
# the pre-training stages are counted from mmflow's configs (they add one NetE level at a time).
PARAMS = {"pre-M6S6": 1_725_156, "pre-M6S6R6": 2_238_541, "pre-M5S5R5": 3_697_466, "pre-M4S4R4": 5_101_701,
          "pre": 6_428_112, "full": 6_428_112}

# A sample of mmflow's key names and shapes (mmflow/models/{encoders/liteflownet_encoder,
# decoders/liteflownet_decoder}.py with configs/_base_/models/liteflownet2/liteflownet2.py).
MMFLOW_KEYS = {
    "encoder.layers.0.layers.0.conv.weight": (32, 3, 7, 7),
    "encoder.layers.1.layers.2.conv.bias": (32,),
    "encoder.layers.5.layers.0.conv.weight": (192, 128, 3, 3),
    "decoder.decoders.level3.NetM.layers.0.conv.weight": (128, 49, 3, 3),
    "decoder.decoders.level3.NetM.corr_up.weight": (49, 1, 4, 4),
    "decoder.decoders.level3.NetM.pred_flow.weight": (2, 32, 5, 5),
    "decoder.decoders.level3.NetS.layers.0.conv.weight": (128, 130, 3, 3),
    "decoder.decoders.level3.NetR.dist_layer.0.weight": (25, 32, 5, 1),
    "decoder.decoders.level3.NetR.dist_layer.1.weight": (25, 25, 1, 5),
    "decoder.decoders.level3.rfeat_layer.conv.weight": (128, 64, 1, 1),
    "decoder.decoders.level4.upflow_layer.weight": (2, 1, 4, 4),
    "decoder.decoders.level5.NetR.layers.0.conv.weight": (128, 131, 3, 3),
    "decoder.decoders.level6.NetS.layers.0.conv.weight": (128, 386, 3, 3),
    "decoder.decoders.level6.NetR.layers.0.conv.weight": (128, 195, 3, 3),
    "decoder.decoders.level6.NetR.layers.5.conv.weight": (32, 32, 3, 3),
    "decoder.decoders.level6.NetR.dist_layer.weight": (9, 32, 3, 3),
}
NOT_IN_MMFLOW = ["decoder.decoders.level3.upflow_layer.weight", "decoder.decoders.level5.rfeat_layer.conv.weight",
                 "decoder.decoders.level6.NetM.corr_up.weight", "decoder.decoders.level3.feat_layer.conv.weight"]


@pytest.mark.parametrize("config", list(PARAMS))
def test_parameter_count_per_config(config):
    assert backbones.count_parameters(backbones.build("liteflownet2", config=config)) == PARAMS[config]


def test_full_model_matches_published_size():
    # TPAMI paper: 6.42M, "25.3 times smaller" than FlowNet2's 162.49M.
    assert abs(PARAMS["full"] / 1e6 - 6.42) < 0.01
    assert round(162.49e6 / PARAMS["full"], 1) == 25.3
    assert backbones.build("liteflownet2", config="pre-M3S3R3").config == "pre"


def test_mmflow_key_layout():
    sd = LiteFlowNet2("full").state_dict()
    assert len(sd) == 184
    for key, shape in MMFLOW_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert not set(NOT_IN_MMFLOW) & set(sd)
    first = LiteFlowNet2("pre-M6S6").state_dict()
    assert {k.split(".")[2] for k in first if k.startswith("decoder")} == {"level6"}
    assert not any(".NetR." in k or "upflow_layer" in k for k in first)


def test_mmflow_checkpoint_loads(tmp_path):
    torch.manual_seed(3)
    src = LiteFlowNet2("pre-M5S5R5")
    path = tmp_path / "liteflownet2_pre_M5S5R5_8x1_flyingchairs_320x448.pth"
    torch.save({"meta": {"mmflow_version": "0.5.2", "iter": 240000, "config": "model = dict(...)"},
                "state_dict": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, path)
    model = backbones.build("liteflownet2", checkpoint=path, config="pre-M5S5R5")
    for (k, a), (_, b) in zip(model.state_dict().items(), src.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointMismatchError, match="level4"):    # a checkpoint of another stage
        backbones.build("liteflownet2", checkpoint=path, config="pre-M4S4R4")


def test_mmflow_upsampling_filter():
    # mmflow's Caffe-style filter with its Python-3 row coordinate (i / 4) % 4: entry [r, c] is
    # (1 - |c/2 - 0.75|) * (1 - |(r + c/4)/2 - 0.75|).
    w = BilinearUpsample(2).weight
    assert w.shape == (2, 1, 4, 4)
    for r in range(4):
        for c in range(4):
            expect = (1 - abs(c / 2 - 0.75)) * (1 - abs((r + c / 4) / 2 - 0.75))
            assert abs(w[1, 0, r, c].item() - expect) < 1e-7


@pytest.mark.parametrize("config", ["full", "pre-M6S6"])
def test_shapes_any_size(config):
    torch.manual_seed(0)
    model = LiteFlowNet2(config).eval()
    im = torch.rand(2 if config == "pre-M6S6" else 1, 3, 70, 90) * 255
    with torch.no_grad():
        out = model(im, im.flip(-1), iters=3, return_all=True)
    levels = CONFIGS[config]["levels"]
    assert out.flow.shape == (im.shape[0], 2, 70, 90) and out.flow_low is None
    assert len(out.flows) == len(levels) and torch.equal(out.flows[-1], out.flow)
    assert out.extras["pad"] == [3, 3, 13, 13]                    # padded to 96 x 96
    assert [tuple(f.shape[-2:]) for f in out.pyramid[::-1]] == [(96 >> (lv - 1),) * 2 for lv in levels]
    assert torch.isfinite(out.flow).all()


def _constant_flow_net(config: str, u: float, v: float) -> LiteFlowNet2:
    """Every flow head predicts zero except the level-6 matching unit, whose bias is (u, v) (in /20 units)."""
    model = LiteFlowNet2(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".pred_flow." in name:
                p.zero_()
        model.decoder.decoders["level6"]["NetM"].pred_flow.bias.copy_(torch.tensor([u, v]))
    return model


def test_flow_is_in_pixels_of_the_input():
    # The decoder stores flow / 20 in full-resolution pixels: a stored (0.25, -0.1) is (5, -2) px at full
    # resolution and (5, -2) / 32 px on the level-6 grid, whatever the input size.
    im1, im2 = torch.rand(1, 3, 64, 96) * 255, torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        out = _constant_flow_net("pre-M6S6", 0.25, -0.1)(im1, im2)
    torch.testing.assert_close(out.flow[:, 0], torch.full((1, 64, 96), 5.0))
    torch.testing.assert_close(out.flow[:, 1], torch.full((1, 64, 96), -2.0))
    torch.testing.assert_close(out.pyramid[-1][:, 0], torch.full((1, 2, 3), 5.0 / 32))
    # With the regularisation unit: a constant flow stays constant away from the zero-padded border.
    with torch.no_grad():
        out = _constant_flow_net("pre-M6S6R6", 0.25, -0.1)(torch.rand(1, 3, 128, 160) * 255,
                                                           torch.rand(1, 3, 128, 160) * 255)
    raw = out.extras["raw_flows"]["level6"]
    torch.testing.assert_close(raw[:, :, 1:-1, 1:-1], torch.tensor([0.25, -0.1]).view(1, 2, 1, 1).expand(1, 2, 2, 3))


def test_pyramid_loss_weights_are_the_official_ones():
    # mmflow configs/_base_/models/liteflownet2/*.py, MultiLevelEPE weights ("level0": full resolution)
    assert LOSS_WEIGHTS == {"level6": 0.32, "level5": 0.08, "level4": 0.02, "level3": 0.01, "level0": 6.25e-4}
    assert LiteFlowNet2("full").pyramid_loss_weights() == (6.25e-4, 0.01, 0.02, 0.08, 0.32)
    assert LiteFlowNet2("pre-M5S5R5").pyramid_loss_weights() == (0.0, 0.08, 0.32)   # level0 not trained there
    model = _constant_flow_net("pre-M6S6", 0.25, 0.0)
    out = model(torch.rand(2, 3, 64, 64) * 255, torch.rand(2, 3, 64, 64) * 255)
    levels, weights = pyramid_supervision(model, out)          # what `mlof pretrain` trains it with
    assert levels[0] is out.flow and levels[1:] == out.pyramid and weights == (0.0, 0.32)
    # level 6 (2 x 2) predicts 5 px / 32 against a zero ground truth, weight 0.32; level0 weighs 0
    loss, _ = multilevel_loss(levels, torch.zeros(2, 2, 64, 64), None, weights=weights)
    torch.testing.assert_close(loss, torch.tensor(0.32 * 5 / 32))


def _supervised_loss(model: LiteFlowNet2, img1: torch.Tensor, img2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    levels, weights = pyramid_supervision(model, model(img1, img2))
    return multilevel_loss(levels, flow, None, weights=weights)[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(config="pre-M2S2R2"), "unknown liteflownet2 config"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        backbones.build("liteflownet2", **kwargs)


def test_bad_input_raises():
    model = LiteFlowNet2("pre-M6S6")
    a = torch.rand(1, 3, 64, 64) * 255
    with pytest.raises(ValueError, match="3 colour channels"):
        model(a[:, :1], a[:, :1])
    with pytest.raises(ValueError, match="same shape"):
        model(a, a[..., :32])
    with pytest.raises(ValueError, match="too small"):
        model(a[..., :0], a[..., :0])
    with pytest.raises(ValueError, match="flow_init"):
        model(a, a, flow_init=torch.zeros(1, 2, 16, 16))


def test_param_groups():
    groups = backbones.param_groups(LiteFlowNet2("full"))
    assert groups["context_encoder"] == []
    assert set(groups["feature_encoder"]) | set(groups["update_block"]) == set(groups["all"])
    assert set(groups["matching"]) | set(groups["subpixel"]) | set(groups["regularization"]) \
        == set(groups["update_block"])
    assert all(".NetR." in n or ".rfeat_layer." in n for n in groups["regularization"])


# ---------------------------------------------------------------------------------------------------------------
# training on synthetic translated pairs

def _translated_pairs(n: int, size: int, gen: torch.Generator, max_shift: int = 4, coarse: bool = False):
    """Smooth random textures and copies shifted by an integer flow (u, v) in [-max_shift, max_shift]:
    img2(p + f) = img1(p). Returns img1, img2 (N x 3 x size x size, 0..255) and the flow N x 2 x size x size.
    ``coarse`` adds structure at 16-pixel scale (visible to the 1/32 level)."""
    m, big = max_shift, size + 2 * max_shift

    def noise(scale: int) -> torch.Tensor:
        return F.interpolate(torch.rand(n, 3, big // scale, big // scale, generator=gen), size=(big, big),
                             mode="bicubic", align_corners=False)

    tex = noise(4) + 0.3 * torch.rand(n, 3, big, big, generator=gen) + (noise(16) if coarse else 0)
    tex = tex.clamp(0, 2.3 if coarse else 1.3) * (110 if coarse else 190)
    f = torch.randint(-m, m + 1, (n, 2), generator=gen)
    img1 = tex[:, :, m:m + size, m:m + size]
    img2 = torch.stack([tex[i, :, m - f[i, 1]:m - f[i, 1] + size, m - f[i, 0]:m - f[i, 0] + size]
                        for i in range(n)])
    return img1, img2, f.float().view(n, 2, 1, 1).expand(n, 2, size, size).contiguous()


def _epe(model: LiteFlowNet2, batch) -> float:
    model.eval()
    with torch.no_grad():
        out = model(batch[0], batch[1])
    model.train()
    return (out.flow - batch[2]).norm(dim=1).mean().item()


def test_training_step_fits_a_batch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = LiteFlowNet2("pre-M6S6").train()
    batch = _translated_pairs(1, 64, gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        loss = _supervised_loss(model, batch[0], batch[1], batch[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.slow
def test_training_recovers_distinct_translations_of_a_batch():
    # The matching path works: trained on one batch, the network tells apart different shifts (|f| up to 16 px)
    # instead of predicting their average. (Learning to generalise takes far longer: mmflow trains 300k steps.)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = LiteFlowNet2("pre-M6S6").train()
    img1, img2, flow = _translated_pairs(2, 128, gen, max_shift=16, coarse=True)
    assert (flow[0, :, 0, 0] - flow[1, :, 0, 0]).norm() > 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    for _ in range(60):
        loss = _supervised_loss(model, img1, img2, flow)
        opt.zero_grad()
        loss.backward()
        opt.step()
    epe = _epe(model, (img1, img2, flow))
    assert epe < 0.25 * flow.norm(dim=1).mean().item(), epe


@pytest.mark.slow
def test_training_lowers_epe_on_held_out_pairs():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = LiteFlowNet2("full").train()
    held_out = _translated_pairs(4, 64, gen)
    before = _epe(model, held_out)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for _ in range(30):
        img1, img2, flow = _translated_pairs(4, 64, gen)
        loss = _supervised_loss(model, img1, img2, flow)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _epe(model, held_out)
    assert after < 0.25 * before and after < 6.0, (before, after)


@pytest.mark.slow
def test_runs_at_sintel_size():
    model = LiteFlowNet2("full").eval()
    im = torch.rand(1, 3, 436, 1024) * 255
    with torch.no_grad():
        out = model(im, torch.roll(im, (1, 4), dims=(-2, -1)))
    assert out.flow.shape == (1, 2, 436, 1024) and torch.isfinite(out.flow).all()
    assert out.extras["pad"] == [0, 0, 6, 6]
