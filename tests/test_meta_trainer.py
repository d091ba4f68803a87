"""MLOFTrainer: release defaults, learning, exact resume, Meta-SGD, buffer policies, a real backbone step."""
from __future__ import annotations

import inspect

import pytest
import torch

import backbones
from mlof.meta import MLOFTrainer
from tests.meta_helpers import ToyFlowNet, shifted_pair

# Small tensors: one intra-op thread is 10-30x faster than two on a loaded machine (see single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


def _task(seed=0, shift=2):
    img1, img2 = shifted_pair(seed=seed, shift=shift)
    flow = torch.zeros(1, 2, *img1.shape[-2:])
    flow[:, 0] = shift
    return {"img1": img1, "img2": img2, "flow": flow, "valid": torch.ones(1, *img1.shape[-2:])}


FAST = dict(inner_lr=1e-3, outer_lr=3e-2, tasks_per_step=2, iters=1, inner_steps=1)


def test_defaults_equal_the_release():
    d = {k: p.default for k, p in inspect.signature(MLOFTrainer).parameters.items()}
    assert (d["inner_loss"], d["inner_steps"], d["inner_lr"], d["first_order"], d["params"], d["iters"],
            d["tasks_per_step"], d["outer_lr"], d["keep_close_weight"], d["gamma"], d["max_flow"],
            d["optimizer"], d["clip"], d["meta_algo"]) == \
        ("mlof", 3, 5e-6, True, "all", 12, 5, 5e-6, 10.0, 0.85, 400.0, "adam", None, "maml")
    trainer = MLOFTrainer(ToyFlowNet())
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.optimizer.param_groups[0]["lr"] == 5e-6


def test_outer_loss_falls_and_metrics_are_reported():
    trainer = MLOFTrainer(ToyFlowNet().train(), **dict(FAST, inner_steps=2))
    tasks = [_task(0), _task(1)]
    history = [trainer.step(tasks) for _ in range(5)]
    assert set(history[0]) >= {"loss", "epe", "inner_first", "inner_last", "grad_norm", "time"}
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert history[0]["inner_last"] < history[0]["inner_first"]  # the inner loop lowers its objective
    assert trainer.steps_done == 5


def test_resume_reproduces_the_uninterrupted_run():
    a = MLOFTrainer(ToyFlowNet().train(), **FAST)
    a.step([_task(0), _task(1)])
    state = a.state_dict()
    a.step([_task(2), _task(3)])
    b = MLOFTrainer(ToyFlowNet(seed=5).train(), **FAST)  # other weights: everything comes from the state
    b.load_state_dict(state)
    b.step([_task(2), _task(3)])
    for (n, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(pa, pb), n
    assert b.steps_done == 2
    with pytest.raises(ValueError, match="lacks"):
        b.load_state_dict({"optimizer": {}})


def test_theta_fixed_is_theta_0_unless_current():
    trainer = MLOFTrainer(ToyFlowNet().train(), **FAST)
    theta0 = {k: v.clone() for k, v in trainer.theta_fixed.items()}
    trainer.step([_task(0), _task(1)])
    assert all(torch.equal(theta0[k], v) for k, v in trainer.theta_fixed.items())
    current = MLOFTrainer(ToyFlowNet().train(), fixed="current", **FAST)
    current.step([_task(0), _task(1)])
    current.step([_task(0), _task(1)])
    assert not torch.equal(current.theta_fixed["bias"], theta0["bias"])


def test_meta_sgd_and_second_order():
    trainer = MLOFTrainer(ToyFlowNet().train(), meta_algo="metasgd", first_order=False,
                          **dict(FAST, inner_steps=2))
    lrs0 = [p.detach().clone() for p in trainer.maml.lrs]
    metrics = trainer.step([_task(0), _task(1)])
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(lrs0, trainer.maml.lrs))  # learning rates learn
    assert "lrs.0" in trainer.state_dict()["meta"]


@pytest.mark.parametrize("policy, leaks", [("copy", False), ("shared", True)])
def test_batchnorm_buffer_policy(policy, leaks):
    model = ToyFlowNet().train()
    mean0 = model.encoder[1].running_mean.clone()
    MLOFTrainer(model, buffers=policy, **FAST).step([_task(0), _task(1)])
    assert (not torch.equal(model.encoder[1].running_mean, mean0)) == leaks


def test_bad_tasks_and_options():
    trainer = MLOFTrainer(ToyFlowNet(), **FAST)
    with pytest.raises(ValueError, match="lacks valid"):
        trainer.step([{k: v for k, v in _task().items() if k != "valid"}, _task()])
    with pytest.raises(ValueError, match="tasks_per_step"):
        trainer.step([_task()])
    with pytest.raises(ValueError, match="meta_algo"):
        MLOFTrainer(ToyFlowNet(), meta_algo="reptile")


def test_one_meta_step_with_raft_small():
    torch.manual_seed(0)
    model = backbones.build("raft_small").train()
    img1, img2 = shifted_pair(64, 64, shift=2)
    task = {"img1": img1, "img2": img2, "flow": torch.full((1, 2, 64, 64), 2.0) * torch.tensor([1.0, 0.0])
            .view(1, 2, 1, 1), "valid": torch.ones(1, 64, 64)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = MLOFTrainer(model, inner_steps=1, iters=2, tasks_per_step=1)
    metrics = trainer.step([task])
    assert metrics["grad_norm"] > 0 and metrics["epe"] > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)  # every parameter got an outer gradient and moved


@pytest.mark.slow
@pytest.mark.parametrize("name", backbones.available())
def test_every_backbone_takes_a_meta_step(name):
    torch.manual_seed(0)
    model = backbones.build(name).train()
    img1, img2 = shifted_pair(64, 64, shift=2)
    flow = torch.zeros(1, 2, 64, 64)
    flow[:, 0] = 2.0
    task = {"img1": img1, "img2": img2, "flow": flow, "valid": torch.ones(1, 64, 64)}
    metrics = MLOFTrainer(model, inner_steps=1, iters=2, tasks_per_step=1).step([task])
    assert metrics["grad_norm"] > 0 and all(v == v for v in metrics.values())  # finite, no NaN
