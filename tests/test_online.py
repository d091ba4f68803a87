"""Online adaptation along a video: streaming object, carried weights, reset rules, the 4-frame alley_1 clip."""
from __future__ import annotations

import math

import pytest
import torch

import backbones
import mlof
from mlof.meta.engine import Adapter
from mlof.meta.online import OnlineAdapter
from tests.meta_helpers import ToyFlowNet, shifted_pair, sintel_clip

# Small tensors: one intra-op thread is 10-30x faster than two on a loaded machine (see single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")

OPTS = dict(preset="release-optimizer", steps=1, optimizer="adam", lr=1e-2, schedule=None)


def test_online_over_alley_1_clip(flow_samples):
    torch.manual_seed(0)
    model = backbones.build("raft_small")
    clip = sintel_clip(flow_samples, (64, 96))  # frames 1..4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = mlof.adapt(model, clip, mode="online", preset="release-optimizer", steps=1, iters=2, optimizer="adam", lr=3e-5, schedule=None)
    assert result.mode == "online" and len(result.flows) == 3 and len(result.flows_before) == 3
    assert all(f.shape == (1, 2, 64, 96) and torch.isfinite(f).all() for f in result.flows)
    assert sorted({h["pair"] for h in result.history}) == [0, 1, 2]
    assert all(math.isfinite(h["total"]) for h in result.history if "total" in h)
    # Pairs 1 and 2 start from the carried weights, which already score better than the start model there.
    first = [h for h in result.history if h["step"] == 0]
    assert [h["keep_close"] > 0 for h in first] == [False, True, True]
    assert first[0]["total"] == pytest.approx(first[0]["start_total"], rel=1e-5)
    assert all(h["total"] - h["keep_close"] < 0.9 * h["start_total"] for h in first[1:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_streaming_object_returns_none_first_and_carries_weights():
    adapter = OnlineAdapter(ToyFlowNet(), reset_margin=None, **OPTS)
    frames = [shifted_pair(seed=0)[0], shifted_pair(seed=0)[1], shifted_pair(seed=1)[0]]
    assert adapter.step(frames[0]) is None
    w0 = adapter.model.bias.detach().clone()
    f1 = adapter.step(frames[1])
    assert f1.shape == (1, 2, 32, 48)
    w1 = adapter.model.bias.detach().clone()
    assert not torch.equal(w0, w1)                      # adapted on pair 0 ...
    adapter.step(frames[2])
    first_of_pair1 = [h for h in adapter.history if h["pair"] == 1][0]
    assert first_of_pair1["keep_close"] > 0              # ... and pair 1 starts from the carried weights
    adapter.restart()
    assert adapter.step(frames[0]) is None
    assert torch.equal(adapter.model.bias, adapter.start_model.bias)


def test_reset_every_k_pairs():
    adapter = OnlineAdapter(ToyFlowNet(), reset_every=1, reset_margin=None, **OPTS)
    for seed in range(4):
        adapter.step(shifted_pair(seed=seed)[0])
    assert [r for r in adapter.resets] == [(1, "every"), (2, "every")]
    for pair in (1, 2):  # every pair after a reset starts at the start weights: no keep-close yet
        assert [h for h in adapter.history if h["pair"] == pair][0]["keep_close"] == 0.0


def test_drift_reset_when_carried_weights_are_worse(monkeypatch):
    adapter = OnlineAdapter(ToyFlowNet(), reset_margin=0.0, **OPTS)
    monkeypatch.setattr(Adapter, "_data_total", staticmethod(lambda outcome: math.inf))
    for seed in range(3):
        adapter.step(shifted_pair(seed=seed)[0])
    # Pair 0 starts fresh (nothing to compare), pair 1 is carried -> judged worse -> reset and re-adapted.
    assert adapter.resets == [(1, "drift")]
    assert [h["reset"] for h in adapter.history if h["pair"] == 1] == ["", "", "drift", "drift"]


def test_online_bad_arguments():
    with pytest.raises(ValueError, match="reset_every"):
        OnlineAdapter(ToyFlowNet(), reset_every=0)
    with pytest.raises(ValueError, match="unknown adapt option"):
        OnlineAdapter(ToyFlowNet(), bogus=1)
    adapter = OnlineAdapter(ToyFlowNet(), **OPTS)
    adapter.step(torch.rand(3, 32, 48) * 255)
    with pytest.raises(ValueError, match="previous"):
        adapter.step(torch.rand(3, 32, 40) * 255)
