"""The adaptation engine (mlof.meta.engine.Adapter): the caller's model untouched, reset() back to the start
state, online state carried across run() calls, and the modes / fronts that must agree bit for bit."""
from __future__ import annotations

import pytest
import torch

import mlof
from mlof.losses import build_loss
from mlof.meta.engine import Adapter
from mlof.meta.online import OnlineAdapter
from mlof.meta.settings import AdaptSettings, adapt_settings
from tests.meta_helpers import ToyFlowNet, shifted_pair

pytestmark = pytest.mark.usefixtures("single_thread")

# bn="train": the batch-norm buffers move too, so reset() has buffers to put back
OPTS = dict(preset="release-optimizer", steps=2, optimizer="adam", lr=1e-2, schedule=None, bn="train")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _frames(n):
    return [shifted_pair(seed=s)[0] for s in range(n)]


def _pairs(n):
    f = _frames(n + 1)
    return list(zip(f[:-1], f[1:]))


def _without_time(history):
    return [{k: v for k, v in h.items() if k != "time"} for h in history]


def test_caller_model_untouched_and_reset_restores_the_start_state():
    model = ToyFlowNet()
    model.encoder[0].weight.requires_grad_(False)
    before = _state(model)
    engine = Adapter(model, **OPTS)
    start = _state(engine.model)
    assert _same_state(before, start) and engine.model is not model
    result = engine.run(_pairs(2))
    assert result.model is engine.model
    assert _same_state(before, _state(model)) and model.training
    assert not model.encoder[0].weight.requires_grad and all(p.grad is None for p in model.parameters())
    moved = _state(engine.model)
    assert not torch.equal(moved["bias"], before["bias"])
    assert not torch.equal(moved["encoder.1.running_mean"], before["encoder.1.running_mean"])
    # the returned copy has the caller's mode and flags
    assert engine.model.training and not engine.model.encoder[0].weight.requires_grad
    engine.reset()
    assert _same_state(start, _state(engine.model))
    # after a reset the engine adapts exactly as a fresh one
    again = engine.run(_pairs(2))
    fresh = Adapter(model, **OPTS).run(_pairs(2))
    assert all(torch.equal(a, b) for a, b in zip(again.flows, fresh.flows))
    assert _without_time(again.history) == _without_time(fresh.history)


def test_online_mode_carries_its_state_across_run_calls():
    pairs = _pairs(4)
    whole = Adapter(ToyFlowNet(), mode="online", reset_every=3, **OPTS)
    res = whole.run(pairs)
    split = Adapter(ToyFlowNet(), mode="online", reset_every=3, **OPTS)
    parts = [split.run(pairs[:1]), split.run(pairs[1:3]), split.run(pairs[3:])]
    assert [f for p in parts for f in p.flows] and all(
        torch.equal(a, b) for a, b in zip(res.flows, [f for p in parts for f in p.flows]))
    assert _without_time(res.history) == _without_time([h for p in parts for h in p.history])
    assert res.resets == [r for p in parts for r in p.resets] == [(3, "every")]
    assert [h["pair"] for h in res.history if h["step"] == 0] == [0, 1, 2, 3]
    assert _same_state(_state(whole.model), _state(split.model))
    assert split.pairs_done == 4


def test_one_pair_gives_the_same_flow_in_every_mode_and_front():
    pair = _pairs(1)
    joint = Adapter(ToyFlowNet(), **OPTS).run(pair)
    for mode in ("pairwise", "online"):
        other = Adapter(ToyFlowNet(), mode=mode, **OPTS).run(pair)
        assert torch.equal(other.flow, joint.flow) and torch.equal(other.flows_before[0], joint.flows_before[0])
        assert other.steps_taken == joint.steps_taken
    api = mlof.adapt(ToyFlowNet(), pair[0], **OPTS)
    assert torch.equal(api.flow, joint.flow) and _without_time(api.history) == _without_time(joint.history)


def test_pairwise_is_each_pair_from_the_start_weights():
    pairs = _pairs(3)
    pairwise = Adapter(ToyFlowNet(), mode="pairwise", **OPTS).run(pairs)
    for i, pair in enumerate(pairs):
        alone = Adapter(ToyFlowNet(), **OPTS).run([pair])
        assert torch.equal(pairwise.flows[i], alone.flow)
        assert [h["total"] for h in pairwise.history if h["pair"] == i] == [h["total"] for h in alone.history]


def test_streaming_front_matches_online_mode_and_resumes_from_its_state():
    frames = _frames(5)
    online = mlof.adapt(ToyFlowNet(), frames, mode="online", **OPTS)
    stream = OnlineAdapter(ToyFlowNet(), **OPTS)
    flows = [stream.step(f) for f in frames][1:]
    assert all(torch.equal(a, b) for a, b in zip(flows, online.flows))
    assert _without_time(stream.history) == _without_time(online.history)
    # stop after two pairs, continue in a new adapter from the saved state: the same flows follow
    first = OnlineAdapter(ToyFlowNet(), **OPTS)
    for f in frames[:3]:
        first.step(f)
    resumed = OnlineAdapter(ToyFlowNet(), **OPTS)
    resumed.load_state_dict(first.state_dict())
    resumed.step(frames[2])
    assert all(torch.equal(resumed.step(f), online.flows[k]) for k, f in enumerate(frames[3:], 2))


def test_options_are_parsed_by_one_function():
    s = adapt_settings({"preset": "release", "crop": [48, 64]}, steps=1)
    assert isinstance(s, AdaptSettings) and s.crop == (48, 64) and s.steps == 1 and s.bn == "train"
    assert Adapter(ToyFlowNet(), s).settings == Adapter(ToyFlowNet(), preset="release", crop=(48, 64),
                                                        steps=1).settings
    assert adapt_settings(s, steps=2).steps == 2 and s.steps == 1
    for bad, match in [({"mode": "sometimes"}, "mode must be one of"), ({"reset_every": 0}, "reset_every"),
                       ({"reset_margin": -1.0}, "reset_margin"), ({"device": "toaster"}, "device"),
                       ({"stpes": 3}, "unknown adapt option")]:
        with pytest.raises(ValueError, match=match):
            adapt_settings(bad)
    with pytest.raises(ValueError, match="OnlineAdapter adapts online"):
        OnlineAdapter(ToyFlowNet(), mode="joint")
    with pytest.raises(ValueError, match="pairs"):
        Adapter(ToyFlowNet()).run([])


def test_keep_close_pulls_towards_the_start_weights_only_after_they_moved():
    engine = Adapter(ToyFlowNet(), **OPTS, keep="last")
    res = engine.run(_pairs(1))
    assert res.history[0]["keep_close"] == 0.0 and res.history[-1]["keep_close"] > 0
    weight = engine.objective.keep_close_weight
    assert weight == build_loss("mlof").keep_close_weight
    drift = sum(float(((engine.adapted[n].detach() - engine.fixed[n]) ** 2).sum()) for n in engine.names)
    assert res.history[-1]["keep_close"] == pytest.approx(weight * drift, rel=1e-5)


def _raft_pair():
    torch.manual_seed(0)
    img1 = torch.rand(3, 32, 48) * 255
    return img1, torch.roll(img1, shifts=(1, 2), dims=(1, 2))


def test_adapt_iters_runs_the_steps_with_fewer_iterations_and_predicts_with_iters():
    import backbones

    torch.manual_seed(0)
    model = backbones.build("raft_small").eval()
    pair = _raft_pair()
    opts = dict(steps=2, recipe="smurf", optimizer="adam", lr=1e-4, schedule=None, memory_budget=None)
    plain = mlof.adapt(model, pair, iters=3, adapt_iters=None, **opts)
    same = mlof.adapt(model, pair, iters=3, adapt_iters=3, **opts)
    assert torch.equal(plain.flows[0], same.flows[0])
    assert _without_time(plain.history) == _without_time(same.history)
    fewer = mlof.adapt(model, pair, iters=3, adapt_iters=1, **opts)
    with torch.no_grad():
        direct = model(pair[0][None], pair[1][None], iters=3).flow
    assert torch.equal(fewer.flows_before[0], direct)                 # before: at iters
    at_one = mlof.adapt(model, pair, iters=1, steps=0, recipe="smurf", memory_budget=None)
    assert fewer.history[0]["total"] == pytest.approx(at_one.history[0]["total"], rel=1e-6)   # steps: at adapt_iters
    with torch.no_grad():
        adapted = fewer.model(pair[0][None], pair[1][None], iters=3).flow
    assert torch.allclose(fewer.flows[0], adapted, atol=1e-5)          # after: the kept state at iters


@pytest.mark.parametrize("bad", [0, 1.5, True, "2"])
def test_adapt_iters_is_checked(bad):
    with pytest.raises(ValueError, match="adapt_iters"):
        adapt_settings(adapt_iters=bad)


def test_adapt_iters_check_keeps_the_start_when_the_returned_flow_is_worse(monkeypatch):
    import backbones

    torch.manual_seed(0)
    model = backbones.build("raft_small").eval()
    pair = _raft_pair()
    opts = dict(steps=2, recipe="smurf", optimizer="adam", lr=1e-4, schedule=None, memory_budget=None, iters=3,
                adapt_iters=1)
    ok = mlof.adapt(model, pair, **opts)
    last = ok.history[-1]
    assert last["check"] in ("adapted", "start") and "check_before" in last and "total" in last
    # a check loss that calls the adapted flow worse than the start flow: the start state must come back
    engine = Adapter(model, **opts)
    real, check = engine.objective.loss, engine._check_at_prediction
    calls = []

    def skewed(a, b, f):                 # first call: the start flow, second: the adapted flow
        calls.append(f)
        out = real(a, b, f)
        return type(out)(out.total + (1.0 if len(calls) == 2 else 0.0), out.terms)

    def skewed_check(*args, **kwargs):
        monkeypatch.setattr(engine.objective, "loss", skewed)
        try:
            return check(*args, **kwargs)
        finally:
            monkeypatch.setattr(engine.objective, "loss", real)

    monkeypatch.setattr(engine, "_check_at_prediction", skewed_check)
    result = engine.run([tuple(x[None] for x in pair)])
    assert len(calls) == 2 and result.history[-1]["check"] == "start" and result.steps_taken == 0
    assert torch.equal(result.flows[0], result.flows_before[0])
    assert all(torch.equal(p, q) for p, q in zip(engine.model.parameters(), model.parameters()))
