"""The `mlof` command line end to end on tiny synthetic data (raft_small, 1-2 iterations, a step or two).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mlof
from mlof.cli import COMMANDS, main
from mlof.io import read_flow
from tests._tiny_data import sintel_args, tiny_sintel

QUIET = ["--quiet"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return tiny_sintel(tmp_path_factory)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 1-step pretrain run on the synthetic generator; returns its latest checkpoint."""
    out = tmp_path_factory.mktemp("runs")
    rc = main(["pretrain", *QUIET, f"out_dir={out}", "name=pt", "steps=1", "batch_size=2", "iters=1", "device=cpu",
               "data.options={domain: source, size: [64, 64], length: 4}", "log.images_every=0"])
    assert rc == 0
    return out / "pt" / "checkpoints" / "latest.pt"


# --------------------------------------------------------------------------------------------- configuration
def test_every_subcommand_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "--config" in text, name
        if name not in ("synth",):
            assert "key=value" in text, name
        if name not in ("synth", "weights", "fetch"):  # these two write no run folder: no `name` key
            assert "name:" in text, name   # the keys and their defaults are listed


def test_defaults_recipe_overrides_precedence(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: from_yaml\nsteps: 7\noptim: {lr: 0.5}\n")
    assert main(["pretrain", "--config", str(recipe), "optim.lr=0.25", "--print-config"]) == 0
    import yaml
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "from_yaml" and cfg["steps"] == 7          # YAML over defaults
    assert cfg["optim"]["lr"] == 0.25                               # override over YAML
    assert cfg["optim"]["weight_decay"] == 1e-4                     # untouched default


@pytest.mark.parametrize("args, needle", [
    (["pretrain", "no_such_key=1"], "unknown key 'no_such_key'"),
    (["meta-train", "meta.inner_stepz=1"], "unknown key 'meta.inner_stepz'"),
    (["pretrain", "steps=many"], "steps"),
    (["pretrain", "steps"], "key=value"),
    (["adapt", "--config", "no/such/recipe.yaml"], "does not exist"),
])
def test_user_errors_are_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.startswith(f"mlof {args[0]}: error:")


def test_recipe_with_unknown_key(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: {name: raft_small, colour: red}\n")
    assert main(["pretrain", "--config", str(recipe)]) == 2
    assert "unknown key 'model.colour'" in capsys.readouterr().err


def test_shipped_recipes_resolve():
    from pathlib import Path
    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert len(recipes) >= 9
    for r in recipes:
        sub = ("meta-train" if "meta_train" in r.name else "adapt" if "meta_inference" in r.name
               else "experiment" if r.name.startswith("experiment") else "pretrain")
        assert main([sub, "--config", str(r), "--print-config"]) == 0, r.name
        assert r.read_text().startswith("#"), f"{r.name} needs a header comment saying what it reproduces"


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "mlof", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "meta-train" in r.stdout


# ------------------------------------------------------------------------------------------------ end to end
def test_pretrain_writes_a_loadable_run(pretrained):
    run = pretrained.parent.parent
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 1 and np.isfinite(metrics["train"]["loss"])
    model = mlof.load(pretrained)
    assert model.mlof_spec["name"] == "raft_small"


def test_meta_train(tmp_path, pretrained):
    rc = main(["meta-train", *QUIET, f"out_dir={tmp_path}", "name=mt", f"model.checkpoint={pretrained}", "steps=1",
               "tasks_per_step=1", "meta.inner_steps=1", "meta.iters=1", "device=cpu", "log.images_every=0",
               "data.options={domain: target, size: [64, 64], length: 4}"])
    assert rc == 0
    ckpt = mlof.checkpoint.load_checkpoint(tmp_path / "mt" / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 1 and ckpt["recipe"]["meta"]["inner_steps"] == 1
    before = mlof.checkpoint.load_checkpoint(pretrained)["state_dict"]
    assert any(not torch.equal(v, before[k]) for k, v in ckpt["state_dict"].items())   # theta moved


def test_adapt_scores_before_and_after(tmp_path, tree, pretrained, capsys):
    rc = main(["adapt", *QUIET, f"out_dir={tmp_path}", "name=ad", f"model.checkpoint={pretrained}", "iters=1",
               "options.steps=1", "max_pairs=1", "device=cpu", *sintel_args(tree)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "EPE before adaptation" in out and "EPE after adaptation" in out
    m = json.loads((tmp_path / "ad" / "metrics.json").read_text())
    assert m["pairs"] == 1 and m["scored_pairs"] == 1
    assert np.isfinite(m["epe_before"]) and np.isfinite(m["epe_after"])
    flo = next((tmp_path / "ad" / "flows").rglob("*.flo"))
    assert flo.stem.startswith("frame_") and flo.parent.name != "flows"   # <scene>/frame_NNNN.flo, as the input
    flow, _ = read_flow(flo)
    assert flow.shape == (72, 96, 2) and np.isfinite(flow).all()


def test_infer_on_image_files(tmp_path, tree, pretrained):
    frames = sorted((tree / "training" / "clean").glob("*/frame_*.png"))[:2]
    files = []
    for i, f in enumerate(frames):     # two frames of one size, as a user would pass them
        dst = tmp_path / f"img{i}.png"
        dst.write_bytes(f.read_bytes())
        files.append(str(dst))
    rc = main(["infer", *QUIET, f"out_dir={tmp_path}", "name=inf", f"model.checkpoint={pretrained}", "iters=1",
               f"input=[{files[0]},{files[1]}]", "device=cpu"])
    assert rc == 0
    outdir = tmp_path / "inf" / "flows"
    flow, _ = read_flow(outdir / "img0.flo")
    assert flow.shape == (72, 96, 2)
    assert (tmp_path / "inf" / "images" / "img0_color.png").is_file()
    assert (tmp_path / "inf" / "images" / "img0_panel.png").is_file()


def test_evaluate_follows_the_protocol(tmp_path, tree, pretrained, capsys):
    rc = main(["evaluate", *QUIET, f"out_dir={tmp_path}", "name=ev", f"model.checkpoint={pretrained}", "iters=1",
               "device=cpu", "max_samples=2", "tensorboard_images=1", *sintel_args(tree)])
    assert rc == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["num_images"] == 2 and m["padding"] == "sintel" and m["iters"] == 1
    assert set(m["headline"]) == {"epe", "outlier_1px", "outlier_3px", "outlier_5px"}
    assert "epe_per_image" in m and "epe_noc" in m                    # both averagings, occ/noc split
    assert "evaluate on sintel" in capsys.readouterr().out


def test_bench_models_synth(tmp_path, capsys):
    rc = main(["bench", *QUIET, f"out_dir={tmp_path}", "backbones=[raft_small]", "sizes=[[64,64]]",
               "modes=[inference,training]", "precision=[fp32,fp16]", "repeats=1", "warmup=0", "iters=1",
               "device=cpu"])
    assert rc == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [(r["mode"], r["precision"]) for r in rows] == [("inference", "fp32"), ("training", "fp32"),
                                                             ("inference", "fp16"), ("training", "fp16")]
    assert rows[1]["seconds"] > 0 and "error" not in rows[1]
    assert "CUDA" in rows[2]["error"]                              # fp16 is refused on CPU, with the reason
    assert rows[0]["backbone"] == "raft_small" and rows[0]["seconds"] > 0
    # absolute peak resident memory of a fresh process: at least the interpreter, torch and the model
    assert rows[0]["peak_rss_mb"] > 50 and rows[0]["peak_rss_mb"] >= rows[0]["baseline_rss_mb"]
    assert "| raft_small | 64x64 |" in (tmp_path / "bench" / "bench.md").read_text()
    assert "raft_small" in capsys.readouterr().out
    assert main(["models", f"out_dir={tmp_path}", "names=[raft_small]"]) == 0
    assert "990,162" in capsys.readouterr().out                    # the official RAFT-small count
    assert main(["synth", f"out={tmp_path / 'syn'}", "scenes=1", "size=[64,96]", "quiet=true"]) == 0
    assert len(list((tmp_path / "syn" / "training" / "flow").rglob("*.flo"))) == 1


def test_demo_model_warning_on_real_input_only():
    # The shipped default checkpoint is a demonstration model: commands running it on real frames say so once.
    from backbones.base import _WARNED
    from mlof.commands.setup import DEMO_MODEL_WARNING, is_real_input, warn_if_demo_model
    from mlof.commands.adapt import AdaptConfig
    from mlof.config import DataConfig
    _WARNED.discard("demo-model")
    with pytest.warns(UserWarning, match="demonstration model"):
        assert warn_if_demo_model("default")
    assert "mlof fetch raft-things" in DEMO_MODEL_WARNING
    assert not warn_if_demo_model(None)
    assert is_real_input(AdaptConfig()) and not is_real_input(AdaptConfig(data=DataConfig(name="synthetic")))
