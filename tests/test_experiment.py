"""mlof experiment: the six MLOF columns, their bookkeeping, resume, and the table's verdict."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from mlof.cli import main
from mlof.commands import experiment as ex
from mlof.config import ConfigError, resolve
from mlof.viz import bar_plot

TINY = ["steps=2", "batch_size=2", "eval_pairs=2", "splits=['n=3,seed=0']", "seeds=[0]", "iters=2",
        "data.options={domain: target, size: [32, 48], length: 8, seed: 3}", "adapt={steps: 1, lr: 1.0e-4}",
        "finetune.iters=2", "meta.iters=2", "meta.inner_steps=1", "device=cpu"]


def _cfg(tmp_path, *extra):
    return resolve(ex.ExperimentConfig, None, [f"out_dir={tmp_path}", "name=exp", *TINY, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    results = ex.run_experiment(_cfg(out), progress=False, say=lambda m: None)
    return out / "exp", results


def test_six_columns_written(finished):
    root, results = finished
    for name in ("results.json", "table.md", "table.csv", "plot.png", "config.yaml"):
        assert (root / name).is_file(), name
    assert results["columns"] == list(ex.COLUMNS)
    values = {r["column"]: r["value"] for r in results["records"]}
    assert set(values) == set(ex.COLUMNS) and all(np.isfinite(v) for v in values.values())
    # fine-tuning and meta-training changed the network (else ft == ml == theta0 and the table says nothing)
    assert values["ft"] != values["theta0"] and values["ml"] != values["theta0"]
    table = (root / "table.md").read_text()
    assert all(c in table for c in ex.COLUMNS) and results["verdict"] in table
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert {r["column"] for r in rows} == set(ex.COLUMNS) and len(rows) == 6


def test_same_pairs_and_budget_for_ft_and_ml(finished):
    root, _ = finished
    ft = yaml.safe_load((root / "n_3_seed_0" / "seed0" / "ft" / "config.yaml").read_text())
    ml = yaml.safe_load((root / "n_3_seed_0" / "seed0" / "ml" / "config.yaml").read_text())
    assert ft["data"] == ml["data"] and ft["data"]["subset"] == "n=3,seed=0"
    assert ft["steps"] == ml["steps"] == 2 and ft["batch_size"] == ml["tasks_per_step"] == 2
    assert ml["pairs_per_task"] == 1 and ft["model"]["checkpoint"] == ml["model"]["checkpoint"]
    ev = yaml.safe_load((root / "n_3_seed_0" / "theta0" / "config.yaml").read_text())
    assert ev["data"]["subset"] == "n=3,seed=0:eval" and ev["data"]["augment"] is None
    metrics = json.loads((root / "n_3_seed_0" / "theta0" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["adapted"] and metrics["before"]


def test_resume_keeps_finished_parts(finished, tmp_path, monkeypatch):
    root, results = finished
    copy = tmp_path / "exp"
    import shutil
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "n_3_seed_0" / "seed0" / "ml_eval")       # as if killed while scoring ml
    calls = []
    real_eval = ex.run_evaluate
    monkeypatch.setattr(ex, "run_training", lambda *a, **k: pytest.fail("a finished training ran again"))
    monkeypatch.setattr(ex, "run_evaluate", lambda cfg, **k: calls.append(cfg.name) or real_eval(cfg, **k))
    again = ex.run_experiment(_cfg(tmp_path), progress=False, resume=True, say=lambda m: None)
    assert calls == ["ml_eval"]
    assert again["records"] == results["records"]


def test_existing_folder_needs_resume_or_overwrite(finished, tmp_path):
    root, _ = finished
    with pytest.raises(ConfigError, match="resume=true"):
        ex.run_experiment(_cfg(root.parent), progress=False, say=lambda m: None)


@pytest.mark.parametrize("bad, match", [(["steps=0"], "steps"), (["splits=[]"], "splits"),
                                        (["seeds=[1,1]"], "repeat")])
def test_bad_config(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        ex.run_experiment(_cfg(tmp_path, *bad), progress=False, say=lambda m: None)


def _records(values: dict[str, list[float]]) -> list[dict]:
    return [{"split": "s", "seed": i, "column": c, "value": v} for c, vs in values.items() for i, v in enumerate(vs)]


def test_summarize_and_verdict():
    base = {"theta0": [3.0, 3.2], "theta0*": [2.8, 3.0], "ft": [2.5, 2.7], "ft*": [2.4, 2.6], "ml": [2.5, 2.6]}
    stats = ex.summarize(_records({**base, "ml*": [1.0, 1.1]}))
    assert stats["ml*"]["mean"] == pytest.approx(1.05) and stats["ml*"]["std"] == pytest.approx(np.std([1, 1.1],
                                                                                                         ddof=1))
    assert ex.verdict(stats).startswith("ml* is best, beyond the spread")
    close = ex.summarize(_records({**base, "ml*": [2.2, 2.6]}))
    assert "not conclusive" in ex.verdict(close)
    worse = ex.summarize(_records({**base, "ml*": [2.9, 3.1]}))
    assert ex.verdict(worse).startswith("ft* is best") and "did not help" in ex.verdict(worse)
    assert ex.summarize([])["ml*"]["n"] == 0 and ex.verdict(ex.summarize([])) == "no column was scored"
    d = ex.paired(_records({**base, "ml*": [2.2, 2.6]}))
    assert d["ft*"]["mean"] == pytest.approx(-0.1) and d["ft*"]["wins"] == 1 and d["ft*"]["n"] == 2
    assert d["theta0"]["mean"] == pytest.approx(-0.7) and d["theta0"]["wins"] == 2


def test_bar_plot():
    img = bar_plot({"a": 1.0, "b": None, "c": 2.5}, {"a": 0.2, "c": 0.1}, title="t")
    assert img.shape == (420, 760, 3) and img.dtype == np.uint8 and (img < 255).any()
    with pytest.raises(ValueError, match="values"):
        bar_plot({})


def test_cli_print_config(capsys):
    assert main(["experiment", "--config", "recipes/experiment_cpu.yaml", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "splits:" in out and "inner_loss: smurf" in out and "name: experiment_cpu" in out
