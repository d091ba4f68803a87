"""A training loop written from the docs (docs/data.md, "Your own loop") reproduces the commands bit for bit.

The commands and a user's loop draw their data from the same public pipeline (``mlof.data.build_loader`` and
``mlof.data.TaskSampler``, both on the ``(seed, step)`` plan), so the same seed gives the same final weights.
"""
from __future__ import annotations

import pytest
import torch

import backbones
from mlof.cli import main
from mlof.data import TaskSampler, build_dataset, build_loader
from mlof.losses import sequence_loss
from mlof.meta import MLOFTrainer
from mlof.optim import build_optimizer, onecycle
from mlof.seeding import seed_everything

DATA = {"domain": "target", "size": (48, 64), "length": 6, "seed": 1}
DATA_ARGS = ["data.name=synthetic", "data.options.domain=target", "data.options.size=[48,64]",
             "data.options.length=6", "data.options.seed=1"]


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]


def _assert_same(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    mine = model.state_dict()
    assert set(mine) == set(saved)
    different = [k for k in mine if not torch.equal(mine[k], saved[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.filterwarnings("ignore:model.checkpoint is null")
def test_meta_train_loop_from_the_docs_reproduces_the_command(tmp_path):
    seed, steps = 3, 2
    assert main(["meta-train", "-q", f"out_dir={tmp_path}", "name=mt", f"seed={seed}", f"steps={steps}",
                 "model.name=raft_small", "tasks_per_step=2", "meta.iters=2", "meta.inner_steps=2",
                 "meta.inner_lr=1e-4", "meta.outer_lr=1e-4", "log.tensorboard=false", *DATA_ARGS]) == 0

    # the loop of docs/data.md
    seed_everything(seed)
    model = backbones.build("raft_small")
    dataset = build_dataset("synthetic", None, **DATA)
    trainer = MLOFTrainer(model, inner_steps=2, inner_lr=1e-4, iters=2, tasks_per_step=2, outer_lr=1e-4)
    tasks = TaskSampler(dataset, pairs_per_task=1, tasks_per_batch=2, seed=seed)
    for batch in tasks.loader(0, steps):
        trainer.step([task.collated() for task in batch])
    _assert_same(model, _final_weights(tmp_path / "mt"))


def test_pretrain_loop_from_the_docs_reproduces_the_command(tmp_path):
    seed, steps, lr = 5, 3, 4e-4
    assert main(["pretrain", "-q", f"out_dir={tmp_path}", "name=pt", f"seed={seed}", f"steps={steps}",
                 "batch_size=2", "iters=2", "optim.schedule_pad=1", "log.tensorboard=false", *DATA_ARGS]) == 0

    seed_everything(seed)
    model = backbones.build("raft_small").train()
    dataset = build_dataset("synthetic", None, **DATA)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, "adamw", lr=lr, weight_decay=1e-4)
    schedule = onecycle(optimizer, steps, pad=1)
    for batch in build_loader(dataset, batch_size=2, steps=steps, seed=seed):
        out = model(batch["img1"], batch["img2"], iters=2, return_all=True)
        loss, _ = sequence_loss(out.flows, batch["flow"], batch["valid"], gamma=0.8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
    _assert_same(model, _final_weights(tmp_path / "pt"))
