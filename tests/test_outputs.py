"""Per-pair outputs of infer / adapt / evaluate: names after the inputs, resize, streaming records, resume
after SIGINT / SIGKILL, panels, the summary plot, before/after at one setting, AdaptResult's repr."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlof.cli import main
from mlof.io import read_flow
from mlof.config import ConfigError
from mlof.runs.outputs import ResizePlan, flow_format_for, output_stem
from tests._tiny_data import SIZE, sintel_args, tiny_sintel

pytestmark = pytest.mark.usefixtures("single_thread")
QUIET = ["--quiet", "device=cpu"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return tiny_sintel(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An mlof checkpoint of a seeded raft_small (what the outputs are does not matter here, only that they are
    deterministic)."""
    import backbones
    from mlof.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "raft_small.pt", backbones.build("raft_small"))


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _numbers(m: dict) -> dict:
    """A summary without wall times and paths (what must equal between interrupted and straight runs)."""
    drop = {"seconds", "seconds_per_pair", "run_dir", "metrics_path", "flows"}
    out = {}
    for k, v in m.items():
        if k in drop:
            continue
        if k == "per_pair":
            v = [{kk: vv for kk, vv in r.items() if kk != "seconds"} for r in v]
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------- names, sizes
def test_output_names_follow_the_inputs():
    sintel = {"meta": {"dataset": "sintel", "scene": "alley_1", "frame": 1,
                       "paths": {"img1": "/d/training/clean/alley_1/frame_0001.png"}}}
    kitti = {"meta": {"dataset": "kitti15", "scene": "000000", "frame": 10,
                      "paths": {"img1": "/d/training/image_2/000000_10.png"}}}
    folder = {"meta": {"dataset": "folder", "scene": "frames", "frame": 3, "paths": {"img1": "/f/frames/a_07.jpg"}}}
    video = {"meta": {"dataset": "video", "scene": "walk", "frame": 5, "paths": {"img1": "/v/walk.mp4"}}}
    files = {"meta": {"name": "img0", "scene": ""}}
    assert output_stem(sintel, 0) == "alley_1/frame_0001"
    assert output_stem(kitti, 0) == "000000_10"
    assert output_stem(folder, 0) == "a_07"
    assert output_stem(video, 0) == "walk_000005"
    assert output_stem(files, 0) == "img0"
    assert output_stem({"meta": {"name": "../../etc/x"}}, 0) == "etc/x"      # stays inside the run folder
    assert flow_format_for("auto", "kitti15") == "png" and flow_format_for("auto", "sintel") == "flo"
    with pytest.raises(ConfigError, match="flow_format"):
        flow_format_for("jpg", None)


def test_resize_plan_scales_inputs_and_flows_back():
    plan = ResizePlan(0.5)
    assert plan.size_for(436, 1024) == (218, 512)
    assert ResizePlan(max_side=256).size_for(436, 1024) == (109, 256)
    assert ResizePlan([100, 200], max_side=100).size_for(436, 1024) == (50, 100)
    assert ResizePlan(max_side=2000).size_for(436, 1024) == (436, 1024) and not ResizePlan().active
    img = torch.rand(1, 3, 40, 60) * 255
    (small,) = plan.images(img)
    assert small.shape == (1, 3, 20, 30) and 0 <= small.min() and small.max() <= 255
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0], flow[:, 1] = 1.5, -2.0                 # px of the small frames
    full = ResizePlan.flow_back(flow, (40, 60))
    assert full.shape == (1, 2, 40, 60)
    assert torch.allclose(full[:, 0], torch.tensor(3.0)) and torch.allclose(full[:, 1], torch.tensor(-4.0))
    for bad in (dict(resize=0), dict(resize="half"), dict(resize=[1, 2, 3]), dict(max_side=-1)):
        with pytest.raises(ConfigError):
            ResizePlan(**bad)


# --------------------------------------------------------------------------------------- commands, in-process
def test_infer_names_resize_panels_and_refusal(tmp_path, tree, pretrained):
    args = ["infer", *QUIET, f"out_dir={tmp_path}", "name=inf", f"model.checkpoint={pretrained}", "iters=1",
            "max_side=80", *sintel_args(tree)]
    assert main(args) == 0
    run = tmp_path / "inf"
    flows = sorted(p.relative_to(run / "flows").as_posix() for p in (run / "flows").rglob("*.flo"))
    assert len(flows) == 4 and all(f.split("/")[-1].startswith("frame_") for f in flows), flows
    flow, _ = read_flow(run / "flows" / flows[0])
    assert flow.shape == (*SIZE, 2)                      # computed at 60 x 80, written at the input's size
    assert (run / "images" / (flows[0][:-4] + "_panel.png")).is_file()
    m = _metrics(run)
    assert m["max_side"] == 80 and m["iters"] == 1 and m["scored_pairs"] == 4 and np.isfinite(m["epe"])
    assert len(list((run / "pairs").glob("*.json"))) == 4
    assert main(args) == 2                              # a folder with outputs needs --resume / --overwrite
    assert main(args + ["images=false", "--overwrite"]) == 0
    assert not (run / "images").exists() and len(list((run / "flows").rglob("*.flo"))) == 4


def test_evaluate_adapted_reports_before_and_after_at_one_setting(tmp_path, tree, pretrained):
    common = [*QUIET, f"out_dir={tmp_path}", f"model.checkpoint={pretrained}", "max_samples=1", "iters=2",
              "padding=kitti", *sintel_args(tree)]
    assert main(["evaluate", *common, "name=plain", "images=false"]) == 0
    assert main(["evaluate", *common, "name=ad", "adapt={steps: 1}"]) == 0
    plain, ad = _metrics(tmp_path / "plain"), _metrics(tmp_path / "ad")
    assert ad["iters"] == 2 and ad["padding"] == "kitti" and ad["adapted"]
    # "before" of the adapted run = the plain evaluation at the same iterations and padding
    assert ad["before"]["epe"] == pytest.approx(plain["epe"], rel=1e-5)
    assert ad["per_pair_epe_before"] == pytest.approx(plain["per_pair_epe"], rel=1e-5)
    run = tmp_path / "ad"
    assert (run / "summary.png").is_file() and len(list((run / "flows_before").rglob("*.flo"))) == 1
    assert len(list((run / "images").rglob("*_panel.png"))) == 1
    assert not (tmp_path / "plain" / "summary.png").exists()
    assert main(["evaluate", *common, "name=bad", "adapt={steps: 1, iters: 5}"]) == 2   # one setting only
    assert not (tmp_path / "bad").exists()               # refused before anything is written


def test_evaluate_resume_rebuilds_the_exact_summary(tmp_path, tree, pretrained):
    args = ["evaluate", *QUIET, f"out_dir={tmp_path}", "name=ev", f"model.checkpoint={pretrained}", "iters=1",
            "images=false", *sintel_args(tree)]
    assert main(args) == 0
    straight = _numbers(_metrics(tmp_path / "ev"))
    run = tmp_path / "ev"
    for k in (2, 3):            # as if killed after pair 1: its records and the summary are missing
        (run / "pairs" / f"{k:06d}.json").unlink()
    (run / "metrics.json").unlink()
    assert main(args + ["--resume"]) == 0
    assert _numbers(_metrics(run)) == straight
    assert main(args + ["iters=2", "--resume"]) == 2     # resuming with other settings is refused


def test_kitti_outputs_in_kitti_format_at_full_resolution(tmp_path, flow_samples, pretrained):
    root = flow_samples / "kitti2015"
    assert main(["evaluate", *QUIET, f"out_dir={tmp_path}", "name=k", f"model.checkpoint={pretrained}", "iters=1",
                 "data.name=kitti15", f"data.root={root}", "data.options={flow: noc}", "resize=0.25"]) == 0
    run = tmp_path / "k"
    flow, valid = read_flow(run / "flows" / "000000_10.png")
    gt, _ = read_flow(root / "training" / "flow_noc" / "000000_10.png")
    assert flow.shape == gt.shape and valid.all()         # KITTI 16-bit PNG at the original 375 x 1242
    m = _metrics(run)
    assert m["padding"] == "kitti" and m["resize"] == 0.25 and np.isfinite(m["fl_all"])


def test_adapt_result_repr_is_short():
    import backbones
    import mlof

    model = backbones.build("raft_small").eval()
    img = torch.rand(3, 64, 64) * 255
    res = mlof.adapt(model, (img, img), steps=1, iters=1)
    text = repr(res)
    assert text.startswith("AdaptResult(") and len(text) < 300 and "Conv2d" not in text, text


# ----------------------------------------------------------------------------------- interrupted subprocesses
def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "mlof.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _interrupt_after(args: list[str], run: Path, records: int, sig: int, delay: float = 0.0) -> int:
    """Start the command, send ``sig`` once ``records`` pair records exist (plus ``delay`` s); return its code."""
    proc = subprocess.Popen(_cli(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list((run / "pairs").glob("*.json"))) >= records if (run / "pairs").is_dir() else records == 0:
                time.sleep(delay)
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def test_sigkill_then_resume_equals_a_straight_run(tmp_path, tree, pretrained):
    base = ["infer", "--quiet", "device=cpu", f"out_dir={tmp_path}", f"model.checkpoint={pretrained}", "iters=1",
            *sintel_args(tree)]
    assert main(base + ["name=straight"]) == 0
    run = tmp_path / "cut"
    code = _interrupt_after(base + ["name=cut"], run, records=1, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL
    done = len(list((run / "pairs").glob("*.json")))
    assert 1 <= done <= 4
    (run / "pairs" / ".000003.json.abcd.tmp").write_text("{")   # what a kill inside a write leaves
    assert main(base + ["name=cut", "--resume"]) == 0
    assert _numbers(_metrics(run)) == _numbers(_metrics(tmp_path / "straight"))
    assert not list(run.rglob(".*.tmp"))
    for f in (tmp_path / "straight" / "flows").rglob("*.flo"):
        a, _ = read_flow(f)
        b, _ = read_flow(run / "flows" / f.relative_to(tmp_path / "straight" / "flows"))
        assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["adapt", "adapt-online", "evaluate"])
def test_random_interrupts_then_resume(tmp_path, tree, pretrained, command):
    """SIGINT and SIGKILL at random moments, several times, then --resume until done: the same numbers."""
    rng = random.Random(0)
    name = command.split("-")[0]
    extra = {"adapt": ["options.steps=1", *sintel_args(tree)],
             "adapt-online": ["options.steps=1", "online=true", "resize=0.5"],   # the bundled 4-frame clip
             "evaluate": ["adapt={steps: 1}", *sintel_args(tree)]}[command]
    base = [name, "--quiet", "device=cpu", f"out_dir={tmp_path}", f"model.checkpoint={pretrained}", "iters=1",
            *extra]
    assert main(base + ["name=straight"]) == 0
    run = tmp_path / "cut"
    first, interrupted = True, 0
    for attempt in range(6):
        sig = rng.choice([signal.SIGINT, signal.SIGKILL])
        args = base + ["name=cut"] + ([] if first else ["--resume"])
        code = _interrupt_after(args, run, records=rng.randint(0, 3), sig=sig, delay=rng.uniform(0, 1.5))
        first = first and not (run / "config.yaml").is_file()
        if code == 0:
            break
        assert code in (-signal.SIGKILL, 130, -signal.SIGINT), code
        interrupted += 1
    else:
        assert main(base + ["name=cut"] + ([] if first else ["--resume"])) == 0
    if not (run / "metrics.json").is_file():
        assert main(base + ["name=cut", "--resume"]) == 0
    assert interrupted >= 1
    straight, cut = _numbers(_metrics(tmp_path / "straight")), _numbers(_metrics(run))
    if command != "evaluate":
        straight.pop("input", None), cut.pop("input", None)
    assert cut == straight
