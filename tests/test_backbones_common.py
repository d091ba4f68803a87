"""Registry, checkpoints, call contract and input checks of the RAFT-family networks."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import backbones
from backbones.checkpoint import CheckpointError, CheckpointMismatchError
from reference_utils import load_reference

RAFT_FAMILY = ["raft", "raft_small", "gma"]


def _pair(n=1, h=64, w=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 255 * torch.rand(n, 3, h, w, generator=g), 255 * torch.rand(n, 3, h, w, generator=g)


@pytest.fixture(scope="module")
def small():
    return backbones.build("raft_small").eval()


# ----------------------------------------------------------------------------------------------- registry
def test_available_lists_the_raft_family():
    names = backbones.available()
    assert set(RAFT_FAMILY) <= set(names)
    assert names == sorted(names)


def test_cli_table_prints_anchor_parameter_counts():
    out = subprocess.run([sys.executable, "-m", "backbones"], capture_output=True, text=True, check=False,
                         cwd=str(backbones.__path__[0] + "/.."))
    assert out.stdout.startswith("model")
    for name, count in (("raft", "5,257,536"), ("raft_small", "990,162"), ("gma", "5,879,873")):
        line = next(l for l in out.stdout.splitlines() if l.split()[:1] == [name])
        assert count in line


def test_default_correlation_is_auto(small):
    assert small.corr == "auto" and small.padding == "sintel"


def test_unknown_names_and_options_raise_value_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.build("flownet")
    with pytest.raises(ValueError, match="corr_kind"):
        backbones.build("raft_small", corr_kind="dense")
    with pytest.raises(ValueError, match="corr must be one of"):
        backbones.build("raft", corr="sparse")
    with pytest.raises(ValueError, match="padding must be one of"):
        backbones.build("raft_small", padding="middlebury")
    with pytest.raises(ValueError, match="num_heads"):
        backbones.build("gma", num_heads=0)


@pytest.mark.parametrize("name", RAFT_FAMILY)
def test_param_groups_partition_the_parameters(name):
    model = backbones.build(name)
    groups = backbones.param_groups(model)
    expected = {"feature_encoder", "context_encoder", "update_block", "all"} | ({"attention"} if name == "gma"
                                                                                 else set())
    assert set(groups) == expected
    parts = [groups[g] for g in groups if g != "all"]
    assert all(parts)
    flat = [n for part in parts for n in part]
    assert len(flat) == len(set(flat)), "groups overlap"
    assert sorted(flat) == sorted(groups["all"]) == sorted(n for n, _ in model.named_parameters())


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", RAFT_FAMILY)
def test_official_checkpoint_layouts_load(name, reference_dir, tmp_path):
    """Files built from the official key list alone (module. prefix, wrappers) load strictly."""
    import importlib.util

    ref = load_reference(reference_dir, name)
    spec = importlib.util.spec_from_file_location("rw", ref.root.parent / "rule_weights.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    const = {"att.pos_emb.rel_ind": torch.arange(160).view(1, -1) - torch.arange(160).view(-1, 1) + 159}
    sd = rule.rule_state_dict({k: tuple(s) for k, s, _ in ref.keys}, ref.meta["norm_keys"], ref.meta["int_keys"],
                              const={k: const[k] for k in ref.meta["const_keys"]})
    prefixed = {"module." + k: v for k, v in sd.items()}
    key = ref.keys[-3][0]
    for i, obj in enumerate([prefixed, {"model": sd}, {"state_dict": prefixed}, sd]):
        path = tmp_path / f"{name}-{i}.pth"
        torch.save(obj, path)
        model = backbones.build(name, checkpoint=path)
        assert torch.equal(model.state_dict()[key], sd[key])


def test_mlof_checkpoint_loads_and_checks_the_network(small, tmp_path):
    path = tmp_path / "mine.pth"
    torch.save({"format": "mlof", "version": 1, "backbone": {"name": "raft_small", "options": {}},
                "state_dict": small.state_dict(), "step": 3}, path)
    model = backbones.build("raft_small", checkpoint=path)
    for k, v in small.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(CheckpointMismatchError, match="'raft_small' network, not 'raft'"):
        backbones.build("raft", checkpoint=path)


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped_keys(small, tmp_path):
    sd = dict(small.state_dict())
    sd.pop("update_block.flow_head.conv2.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["fnet.conv1.weight"] = torch.zeros(1, 2, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as info:
        backbones.build("raft_small", checkpoint=path)
    msg = str(info.value)
    assert "missing keys (1): update_block.flow_head.conv2.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "fnet.conv1.weight: checkpoint (1, 2, 3) vs model (32, 3, 7, 7)" in msg
    loose = backbones.build("raft_small", checkpoint=path, strict=False)  # loads what fits
    assert torch.equal(loose.state_dict()["fnet.conv2.bias"], small.state_dict()["fnet.conv2.bias"])


def test_unreadable_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        backbones.build("raft_small", checkpoint=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch checkpoint .*'not a checkpoint'"):
        backbones.build("raft_small", checkpoint=junk)


# ----------------------------------------------------------------------------------------- call contract
def test_any_size_batch_and_crop_back(small):
    im1, im2 = _pair(n=2, h=61, w=75)
    with torch.no_grad():
        out = small(im1, im2, iters=3)
        single = small(im1[1:], im2[1:], iters=3)
    assert out.flow.shape == (2, 2, 61, 75)
    assert out.flow_low.shape == (2, 2, 16, 16)  # padded grid 128 x 128 (the smallest padded size)
    assert torch.isfinite(out.flow).all()
    assert (out.flow[1:] - single.flow).abs().max() < 1e-4


def test_kitti_padding_matches_manual_padding(small):
    im1, im2 = _pair(h=130, w=134)
    kitti = backbones.build("raft_small", padding="kitti").eval()
    kitti.load_state_dict(small.state_dict())
    padder = backbones.InputPadder(im1.shape, mode="kitti")
    assert padder.pad == [1, 1, 0, 6]
    assert kitti.padder((1, 3, 66, 70)).pad == [29, 29, 0, 62]   # small inputs: up to 128, same rule
    with torch.no_grad():
        out = kitti(im1, im2, iters=2)
        manual = small(*padder.pad_tensors(im1, im2), iters=2)
    assert torch.equal(out.flow, padder.unpad(manual.flow))


def test_small_inputs_are_padded_to_128_and_empty_ones_fail(small):
    """Under 128 px the official code returns NaN (one-row coarsest level): mlof pads to 128 and crops back."""
    assert small.min_input_size == 1 and small.min_padded_size == 128
    im1, im2 = _pair(h=57, w=100)
    padder = small.padder(im1.shape)
    assert padder.pad == [14, 14, 35, 36]
    for kind in ("dense", "ondemand"):
        small.corr = kind
        with torch.no_grad():
            out = small(im1, im2, iters=2)
            manual = small(*padder.pad_tensors(im1, im2), iters=2)
        assert out.flow.shape == (1, 2, 57, 100) and torch.isfinite(out.flow).all()
        assert torch.equal(out.flow, padder.unpad(manual.flow))
    small.corr = "auto"
    with pytest.raises(ValueError, match="0x100: too small"):
        small(*_pair(h=0, w=100))


def test_flows_filled_in_training_or_on_request(small):
    im1, im2 = _pair()
    with torch.no_grad():
        assert small(im1, im2, iters=3).flows == []
        assert len(small(im1, im2, iters=3, return_all=True).flows) == 3
        small.train()
        try:
            assert len(small(im1, im2, iters=3).flows) == 3
        finally:
            small.eval()


def test_warm_start_uses_the_coarse_flow(small):
    im1, im2 = _pair()
    with torch.no_grad():
        first = small(im1, im2, iters=2)
        cold = small(im1, im2, iters=2, flow_init=torch.zeros_like(first.flow_low))
        warm = small(im1, im2, iters=2, flow_init=first.flow_low)
    assert torch.equal(cold.flow, first.flow)
    assert (warm.flow - first.flow).abs().max() > 1e-3
    with pytest.raises(ValueError, match="flow_init must be the coarse flow"):
        small(im1, im2, flow_init=first.flow)


def test_bidirectional_equals_two_calls(small):
    im1, im2 = _pair()
    with torch.no_grad():
        both = small(im1, im2, iters=3, return_all=True, bidirectional=True)
        fw, bw = small(im1, im2, iters=3), small(im2, im1, iters=3)
    assert (both.flow - fw.flow).abs().max() < 1e-4
    assert (both.flow_bw - bw.flow).abs().max() < 1e-4
    assert (both.flow_bw_low - bw.flow_low).abs().max() < 1e-4
    assert len(both.flows) == len(both.flows_bw) == 3


def test_freeze_bn_keeps_batchnorm_statistics():
    model = backbones.build("raft", freeze_bn=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.fnet.training and model.update_block.training
    before = model.cnet.norm1.running_mean.clone()
    model(*_pair(), iters=1)
    assert torch.equal(model.cnet.norm1.running_mean, before)
    live = backbones.build("raft").train()
    live(*_pair(), iters=1)
    assert not torch.equal(live.cnet.norm1.running_mean, torch.zeros(64))


def test_grad_checkpointing_gives_the_same_gradients():
    im1, im2 = _pair(w=96)
    results = []
    for enabled in (False, True):
        torch.manual_seed(1)  # same initial weights
        model = backbones.build("raft_small", grad_checkpointing=enabled).train()
        out = model(im1, im2, iters=3)
        (sum(f.abs().mean() for f in out.flows) + out.flow_low.abs().mean()).backward()
        results.append((out.flow.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (flow_a, grads_a), (flow_b, grads_b) = results
    assert torch.equal(flow_a, flow_b)
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-6, rtol=1e-5) for n in grads_a)


def test_autocast_keeps_correlation_in_float32(small):
    im1, im2 = _pair()
    with torch.no_grad():
        ref = small(im1, im2, iters=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = small(im1, im2, iters=2)
    assert out.flow.dtype == torch.float32 and torch.isfinite(out.flow).all()
    assert (out.flow - ref.flow).abs().mean() < 0.1 * ref.flow.abs().mean() + 0.5


# ------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("case, match", [
    ("size", "same shape"), ("channels", "3 colour channels"), ("nan", "NaN or inf"), ("inf", "NaN or inf"),
    ("uint8", "floating-point"), ("dims", "N x 3 x H x W"), ("small", "too small"), ("iters", "iters"),
])
def test_bad_inputs_raise_value_error(small, case, match):
    im1, im2 = _pair()
    kwargs = {}
    if case == "size":
        im2 = im2[..., :72]
    elif case == "channels":
        im1, im2 = im1[:, :1], im2[:, :1]
    elif case == "nan":
        im1[0, 0, 3, 3] = float("nan")
    elif case == "inf":
        im2[0, 1, 0, 0] = float("inf")
    elif case == "uint8":
        im1, im2 = im1.to(torch.uint8), im2.to(torch.uint8)
    elif case == "dims":
        im1, im2 = im1[0], im2[0]
    elif case == "small":
        im1, im2 = im1[..., :0, :], im2[..., :0, :]
    elif case == "iters":
        kwargs["iters"] = 0
    with pytest.raises(ValueError, match=match):
        small(im1, im2, **kwargs)


def test_gma_position_options_run_and_reject_too_large_maps():
    model = backbones.build("gma", position_and_content=True).eval()
    with torch.no_grad():
        out = model(*_pair(), iters=1)
    assert torch.isfinite(out.flow).all()
    with pytest.raises(ValueError, match="exclusive"):
        backbones.build("gma", position_only=True, position_and_content=True)
    with pytest.raises(ValueError, match="at most 160 positions"):
        model.att(torch.zeros(1, 128, 161, 2))
