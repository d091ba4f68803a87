"""RAFT, RAFT-small and GMA against the official implementations (shared/reference, rule weights)."""
from __future__ import annotations

import pytest
import torch

import backbones
from reference_utils import (case_images, load_reference, max_abs_diff, rule_weights_for,
                             state_dict_signature)

MODELS = ["raft", "raft_small", "gma"]
ANCHOR_PARAMS = {"raft": 5_257_536, "raft_small": 990_162, "gma": 5_879_873}


_CACHE: dict[str, dict] = {}


def _reference_run(name, reference_dir, flow_samples) -> dict:
    """name, model (rule weights loaded strictly), reference, case A/B images and the two reference runs:
    case A with every iteration (``return_all``) and case B in test mode (padded internally). Cached."""
    if name not in _CACHE:
        ref = load_reference(reference_dir, name)
        model = backbones.build(name).eval()
        model.load_state_dict(rule_weights_for(model, ref), strict=True)
        a = case_images(flow_samples, ref.meta, "A")
        b = case_images(flow_samples, ref.meta, "B")
        with torch.no_grad():
            out_a = model(*a, iters=12, return_all=True)
            out_b = model(*b, iters=12)
        _CACHE[name] = {"name": name, "model": model, "ref": ref, "a": a, "b": b, "out_a": out_a, "out_b": out_b}
    return _CACHE[name]


@pytest.fixture(scope="module", params=MODELS)
def loaded(request, reference_dir, flow_samples):
    return _reference_run(request.param, reference_dir, flow_samples)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_layout_equals_official(name, reference_dir):
    ref = load_reference(reference_dir, name)
    model = backbones.build(name)
    assert state_dict_signature(model) == ref.keys
    assert backbones.count_parameters(model) == ANCHOR_PARAMS[name] == ref.meta["num_parameters"]


def test_gma_rel_ind_buffer_is_the_official_table(reference_dir):
    import hashlib

    ref = load_reference(reference_dir, "gma")
    rel_ind = backbones.build("gma").state_dict()["att.pos_emb.rel_ind"]
    expected = torch.arange(160).view(1, -1) - torch.arange(160).view(-1, 1) + 159
    assert torch.equal(rel_ind, expected)
    digest = hashlib.sha256(rel_ind.numpy().astype("<i8").tobytes(order="C")).hexdigest()
    assert digest == ref.meta["const_keys"]["att.pos_emb.rel_ind"]["sha256_int64_le_c_order"]


def test_final_and_coarse_flow_match_official(loaded):
    ref, out_a, out_b = loaded["ref"], loaded["out_a"], loaded["out_b"]
    assert max_abs_diff(out_a.flow, ref.outputs["A_flow"]) < ref.tolerance
    assert max_abs_diff(out_a.flow_low, ref.outputs["A_flow_low"]) < ref.tolerance
    # Test mode (upsampling only at the last iteration), non-multiple-of-8 input padded internally in Sintel
    # mode and cropped back, as the official InputPadder.
    assert out_b.flows == []
    assert max_abs_diff(out_b.flow, ref.outputs["B_flow"]) < ref.tolerance
    assert max_abs_diff(out_b.flow_low, ref.outputs["B_flow_low_padded"]) < ref.tolerance


def test_every_iteration_matches_official_training_path(loaded):
    ref, out = loaded["ref"], loaded["out_a"]
    assert len(out.flows) == 12
    kept = [int(i) for i in ref.train_preds["iterations"]]
    mine = torch.stack([out.flows[i - 1] for i in kept])
    assert max_abs_diff(mine, ref.train_preds["A_train_preds"]) < ref.tolerance
    assert torch.equal(out.flows[-1], out.flow)


@pytest.mark.parametrize("kind", ["ondemand", "auto"])
@pytest.mark.parametrize("name", ["raft_small", pytest.param("raft", marks=pytest.mark.slow),
                                  pytest.param("gma", marks=pytest.mark.slow)])
def test_ondemand_correlation_matches_official(name, kind, reference_dir, flow_samples):
    # The correlation code is shared: the big models' runs are slow tests.
    loaded = _reference_run(name, reference_dir, flow_samples)
    ref = loaded["ref"]
    # budget 1 byte: "auto" must pick on-demand
    other = backbones.build(name, corr=kind, corr_memory_budget=1).eval()
    other.load_state_dict(loaded["model"].state_dict())
    with torch.no_grad():
        out_a = other(*loaded["a"], iters=12)
        out_b = other(*loaded["b"], iters=12)
    assert max_abs_diff(out_a.flow, ref.outputs["A_flow"]) < ref.tolerance
    assert max_abs_diff(out_a.flow_low, ref.outputs["A_flow_low"]) < ref.tolerance
    assert max_abs_diff(out_b.flow, ref.outputs["B_flow"]) < ref.tolerance
    assert max_abs_diff(out_b.flow_low, ref.outputs["B_flow_low_padded"]) < ref.tolerance


def test_ondemand_gradients_match_dense(reference_dir, flow_samples):
    """Training-mode gradients of every parameter agree between dense and on-demand correlation."""
    ref = load_reference(reference_dir, "raft_small")
    a1, a2 = case_images(flow_samples, ref.meta, "A")
    a1, a2 = a1[..., :96, :128], a2[..., :96, :128]
    grads = {}
    for kind in ("dense", "ondemand"):
        model = backbones.build("raft_small", corr=kind).train()
        model.load_state_dict(rule_weights_for(model, ref))
        out = model(a1, a2, iters=3)
        assert len(out.flows) == 3
        loss = sum(0.8 ** (2 - i) * f.abs().mean() for i, f in enumerate(out.flows))
        loss.backward()
        grads[kind] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["dense"].keys() == grads["ondemand"].keys()
    assert any(n.startswith("fnet.") for n in grads["dense"])  # gradient reaches the features through corr
    scale = max(g.abs().max() for g in grads["dense"].values())
    for n, g in grads["dense"].items():
        assert (g - grads["ondemand"][n]).abs().max() < 1e-4 * scale, n
        if g.norm() > 1e-3 * scale:
            assert (g - grads["ondemand"][n]).norm() < 1e-3 * g.norm(), n
