"""mlof against the OFFICIAL MLOF release (``shared/reference/mlof_release``, computed by ChaerinMin/MLOF itself).

* the inner objective (``build_loss("mlof")``) on two crops: totals within 1e-4 relative, d total / d flow_fw and
  d flow_bw within 1e-4 of their largest magnitude;
* one meta-training step (``MLOFTrainer`` with its defaults) on the GMA rule weights (multiplier 0.5) with 0, 1
  and 3 inner steps: inner objectives and outer loss within 1e-4 relative, the meta-gradient sketch within
  1e-2 per parameter on the README's scale, and every sketched parameter receives a meta-gradient.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
from mlof.losses import build_loss
from mlof.meta import MLOFTrainer
from reference_utils import _rule_module, load_reference

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def release(reference_dir: Path) -> tuple[dict, dict]:
    root = reference_dir / "mlof_release"
    if not (root / "cases.npz").is_file():
        pytest.skip(f"no MLOF release reference at {root}")
    with np.load(root / "cases.npz") as z:
        cases = {k: z[k] for k in z.files}
    return cases, json.loads((root / "meta.json").read_text())


def _t(cases: dict, key: str) -> torch.Tensor:
    return torch.from_numpy(cases[key]).clone()


@pytest.mark.parametrize("case", [0, 1])
def test_inner_objective_matches_release(release, case):
    cases, meta = release
    spec = meta["loss_cases"][case]
    name = spec["name"]
    fw = _t(cases, f"{name}_flow_fw").requires_grad_()
    bw = _t(cases, f"{name}_flow_bw").requires_grad_()
    out = build_loss("mlof")(_t(cases, f"{name}_img1"), _t(cases, f"{name}_img2"), fw, bw)
    out.total.backward()
    total = float(out.total.detach())
    assert abs(total - spec["total"]) <= 1e-4 * abs(spec["total"]), (total, spec["total"])
    photo = float(out.terms["photo_l1"] + out.terms["photo_ssim"])
    assert abs(photo - spec["photo_x4"]) <= 1e-4 * abs(spec["photo_x4"])
    assert abs(float(out.terms["smooth2"]) - spec["smooth_x75"]) <= 1e-4 * abs(spec["smooth_x75"])
    for grad, key in ((fw.grad, "grad_fw"), (bw.grad, "grad_bw")):
        ref = cases[f"{name}_{key}"]
        err = np.abs(grad.numpy() - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, f"{key}: max diff {err:.2e} of the largest magnitude"


def test_mlof_paper_recipe_switches_the_quirks_off(release):
    # The corrected recipe must differ where the quirks act: images in 0..1 and a real backward smoothness.
    cases, meta = release
    args = [_t(cases, f"L1_{k}") for k in ("img1", "img2", "flow_fw", "flow_bw")]
    rel = build_loss("mlof")(*args)
    paper = build_loss("mlof_paper")(*args)
    quirk_off = build_loss({"base": "mlof", "smooth_bw_min_hw": False})(*args)
    assert float(quirk_off.terms["smooth2"]) > 1.5 * float(rel.terms["smooth2"])  # bw smoothness no longer ~0
    assert abs(float(paper.total) - float(rel.total)) > 1e-2 * float(rel.total)


# ----------------------------------------------------------------------------------------- meta-training step
@pytest.fixture(scope="module")
def gma_rule_state(reference_dir: Path, release) -> dict[str, torch.Tensor]:
    _, meta = release
    ref = load_reference(reference_dir, "gma")
    rule = _rule_module(reference_dir)
    own = backbones.build("gma").state_dict()
    const = {k: own[k] for k in ref.meta.get("const_keys", {})}
    return rule.rule_state_dict({k: tuple(s) for k, s, _ in ref.keys}, set(ref.meta["norm_keys"]),
                                set(ref.meta["int_keys"]), meta["step_rule_multiplier"], const=const)


@pytest.fixture(scope="module")
def step_results(release, gma_rule_state):
    """Our release-default meta-training step for each stored case: (metrics, inner objectives, gradients)."""
    cases, meta = release
    flow = _t(cases, "S_flow")
    task = {"img1": _t(cases, "S_img1"), "img2": _t(cases, "S_img2"), "flow": flow,
            "valid": torch.ones(flow.shape[0], *flow.shape[-2:], dtype=torch.bool)}
    out = {}
    for spec in meta["step_cases"]:
        model = backbones.build("gma")
        model.load_state_dict(gma_rule_state, strict=True)
        model.train()
        trainer = MLOFTrainer(model, inner_steps=spec["inner_steps"], tasks_per_step=1)
        grads: dict[str, torch.Tensor | None] = {}

        def capture(optimizer, args, kwargs):   # read the meta-gradient before the Adam update
            for n, p in model.named_parameters():
                grads[n] = None if p.grad is None else p.grad.detach().clone()
        trainer.optimizer.register_step_pre_hook(capture)
        metrics = trainer.step([task])
        out[spec["name"]] = (metrics, trainer.last_inner[0], grads)
    return out


def _sketch(name: str, g: torch.Tensor) -> list[float]:
    g = g.double().numpy()
    dots = [float((g * np.random.default_rng(zlib.crc32(name.encode()) + k).standard_normal(g.shape)
                   .astype(np.float32)).sum()) for k in (1, 2)]
    return [float(np.linalg.norm(g))] + dots


@pytest.mark.parametrize("case", [0, 1, 2])
def test_meta_training_step_matches_release(release, step_results, case):
    _, meta = release
    spec = meta["step_cases"][case]
    metrics, inner, grads = step_results[spec["name"]]
    assert len(inner) == spec["inner_steps"]
    for mine, ref in zip(inner, spec["inner_objectives"]):
        assert abs(mine - ref) <= 1e-4 * abs(ref), (inner, spec["inner_objectives"])
    assert abs(metrics["loss"] - spec["outer_loss"]) <= 1e-4 * abs(spec["outer_loss"])
    sketch = spec["meta_gradient_sketch"]
    floor = 1e-3 * float(np.sqrt(sum(v[0] ** 2 for v in sketch.values())))
    missing = [n for n in sketch if grads.get(n) is None]
    assert not missing, f"no meta-gradient for {missing}"
    for name, ref in sketch.items():
        mine = _sketch(name, grads[name])
        tol = 1e-2 * (abs(ref[0]) + floor)
        assert max(abs(a - b) for a, b in zip(mine, ref)) <= tol, (name, mine, ref)
