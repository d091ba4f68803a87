"""Helpers for tests against the official-output reference data (``shared/reference/<name>/``).

    ref = load_reference(reference_dir, "raft")           # meta.json, keys.json, outputs.npz, train_preds.npz
    assert state_dict_signature(model) == ref.keys         # names, order, shapes, dtypes
    model.load_state_dict(rule_weights_for(model, ref), strict=True)
    image1, image2 = case_images(flow_samples, ref.meta, "A")   # float32 1 x 3 x H x W, 0..255
    assert max_abs_diff(out.flow, ref.outputs["A_flow"]) < ref.tolerance

Reach the data through the ``reference_dir`` and ``flow_samples`` fixtures (they skip when absent).
Frames are read with OpenCV (BGR -> RGB); the reference README states PIL, cv2 and imageio agree on them.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Reference", "load_reference", "rule_weights_for", "case_images", "state_dict_signature",
           "max_abs_diff", "TOLERANCE"]

TOLERANCE = 1e-3  # px, max abs, for the 12-iteration outputs (reference README)


@dataclass
class Reference:
    name: str
    root: Path
    meta: dict[str, Any]
    keys: list[list[Any]]
    outputs: dict[str, np.ndarray]
    train_preds: dict[str, np.ndarray] = field(default_factory=dict)
    tolerance: float = TOLERANCE


def load_reference(reference_dir: Path, name: str) -> Reference:
    """Everything stored for model ``name`` (folder ``reference_dir / name``)."""
    root = Path(reference_dir) / name
    if not root.is_dir():
        raise FileNotFoundError(f"no reference folder {root}")
    meta = json.loads((root / "meta.json").read_text())
    keys = json.loads((root / "keys.json").read_text())
    with np.load(root / "outputs.npz") as z:
        outputs = {k: z[k] for k in z.files}
    train_preds = {}
    if (root / "train_preds.npz").is_file():
        with np.load(root / "train_preds.npz") as z:
            train_preds = {k: z[k] for k in z.files}
    return Reference(name, root, meta, keys, outputs, train_preds)


def _rule_module(reference_dir: Path):
    path = Path(reference_dir) / "rule_weights.py"
    spec = importlib.util.spec_from_file_location("_mlof_reference_rule_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def state_dict_signature(model: torch.nn.Module) -> list[list[Any]]:
    """``[key, shape, dtype]`` of every state_dict entry, in order, in keys.json's format."""
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]


def rule_weights_for(model: torch.nn.Module, ref: Reference) -> dict[str, torch.Tensor]:
    """The reference's deterministic rule weights for ``model`` (const buffers taken from the model itself)."""
    rule = _rule_module(ref.root.parent)
    own = model.state_dict()
    const = {k: own[k] for k in ref.meta.get("const_keys", {})}
    return rule.rule_state_dict({k: tuple(s) for k, s, _ in ref.keys}, set(ref.meta["norm_keys"]),
                                set(ref.meta["int_keys"]), ref.meta.get("multiplier", 1.0), const=const)


def case_images(flow_samples: Path, meta: dict[str, Any], case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two input crops of case ``"A"`` or ``"B"`` as float32 1 x 3 x H x W tensors in 0..255."""
    import cv2

    spec = meta["inputs"][f"case_{case}"]
    r0, r1, c0, c1 = spec["crop_rows_cols"]
    folder = Path(flow_samples) / "sintel" / "training" / spec["pass"] / spec["scene"]
    out = []
    for frame in spec["frames"]:
        bgr = cv2.imread(str(folder / frame), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read {folder / frame}")
        rgb = np.ascontiguousarray(bgr[r0:r1, c0:c1, ::-1])
        out.append(torch.from_numpy(rgb).permute(2, 0, 1).float()[None])
    return out[0], out[1]


def max_abs_diff(mine: torch.Tensor, ref: np.ndarray) -> float:
    """Max abs difference; shapes must agree."""
    mine = mine.detach().cpu().numpy()
    if mine.shape != ref.shape:
        raise AssertionError(f"shape {mine.shape} != reference {ref.shape}")
    return float(np.abs(mine - ref).max())


def assert_case_a_matches(model: torch.nn.Module, ref: Reference, flow_samples: Path) -> None:
    """Case A with every iteration: final, coarse and the training path's kept iterations match the official."""
    a1, a2 = case_images(flow_samples, ref.meta, "A")
    with torch.no_grad():
        out = model(a1, a2, iters=12, return_all=True)
    assert len(out.flows) == 12 and torch.equal(out.flows[-1], out.flow)
    assert max_abs_diff(out.flow, ref.outputs["A_flow"]) < ref.tolerance
    assert max_abs_diff(out.flow_low, ref.outputs["A_flow_low"]) < ref.tolerance
    kept = [int(i) for i in ref.train_preds["iterations"]]
    mine = torch.stack([out.flows[i - 1] for i in kept])
    assert max_abs_diff(mine, ref.train_preds["A_train_preds"]) < ref.tolerance


def assert_case_b_matches(model: torch.nn.Module, ref: Reference, flow_samples: Path) -> None:
    """Case B (non-multiple-of-8 input, padded inside, test mode) matches the official padded outputs."""
    b1, b2 = case_images(flow_samples, ref.meta, "B")
    with torch.no_grad():
        out = model(b1, b2, iters=12)
    assert out.flows == []
    assert max_abs_diff(out.flow, ref.outputs["B_flow"]) < ref.tolerance
    assert max_abs_diff(out.flow_low, ref.outputs["B_flow_low_padded"]) < ref.tolerance
