"""TensorBoard event files hold the expected scalar and image tags (training, adaptation, evaluation)."""
from __future__ import annotations

import numpy as np
import pytest

from mlof.cli import main
from tests._tiny_data import sintel_args, tiny_sintel


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(run_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {run_dir}"
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    tree = tiny_sintel(tmp_path_factory)
    assert main(["pretrain", "--quiet", f"out_dir={out}", "name=pt", "steps=2", "batch_size=2", "iters=1",
                 "device=cpu", "log.every=1", "log.images_every=2", *sintel_args(tree)]) == 0
    return out, tree


def test_training_scalars_and_image_grid(runs):
    acc = _events(runs[0] / "pt")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/epe", "train/lr", "train/grad_norm", "train/outlier_3px"} <= scalars
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(loss) == 2 and all(np.isfinite(loss))
    assert "train/panel" in acc.Tags()["images"]
    img = acc.Images("train/panel")[0]
    # frames on top; prediction, ground truth and error below: two rows of 72 x 96 tiles, three wide
    assert img.width > 2 * 96 and img.height > 2 * 72


def test_evaluation_logs(runs, tmp_path):
    out, tree = runs
    ckpt = out / "pt" / "checkpoints" / "latest.pt"
    assert main(["evaluate", "--quiet", f"out_dir={tmp_path}", "name=ev", f"model.checkpoint={ckpt}", "iters=1",
                 "device=cpu", "max_samples=1", "tensorboard_images=1", *sintel_args(tree)]) == 0
    ev = _events(tmp_path / "ev")
    assert "eval/panel" in ev.Tags()["images"]
    assert {"eval/epe", "eval/sample_epe"} <= set(ev.Tags()["scalars"])


def test_adaptation_logs(runs, tmp_path):
    out, tree = runs
    ckpt = out / "pt" / "checkpoints" / "latest.pt"
    assert main(["adapt", "--quiet", f"out_dir={tmp_path}", "name=ad", f"model.checkpoint={ckpt}", "iters=1",
                 "device=cpu", "max_pairs=1", "options.steps=1", *sintel_args(tree)]) == 0
    ad = _events(tmp_path / "ad")
    assert {"adapt/before", "adapt/after"} <= set(ad.Tags()["images"])
    scalars = set(ad.Tags()["scalars"])
    assert {"adapt/epe_before", "adapt/epe_after", "adapt/loss_first", "adapt/loss_last"} <= scalars
    assert not any("pair0" in t for t in scalars)            # a few series indexed by the pair, not tags per pair
