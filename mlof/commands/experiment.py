"""``mlof experiment``: MLOF's six-column comparison in one command.

For every labelled-pair split of the target dataset (``splits``) and every training seed (``seeds``):

=========  =======================================================================================
column     network
=========  =======================================================================================
theta0     the pretrained network (``model.checkpoint``), as it is
theta0*    theta0, then adapted per held-out pair without labels (``adapt``)
ft         theta0 fine-tuned (supervised, ``mlof pretrain``) on the split's n labelled pairs
ft*        ft, then adapted per pair
ml         theta0 meta-trained (MLOF, ``mlof meta-train``) on the same n labelled pairs
ml*        ml, then adapted per pair
=========  =======================================================================================

Fine-tuning and meta-training see the same labelled pairs and the same budget: ``steps`` optimizer steps of
``batch_size`` pairs (fine-tuning batches ``batch_size`` pairs, meta-training takes ``batch_size`` one-pair
tasks per outer step). Every column is scored on the split's held-out pairs (at most ``eval_pairs``), each
evaluation scoring before and after adaptation in one run (``mlof evaluate adapt=...``).

Every part is a run folder of its own under ``<out_dir>/<name>/``, written as it finishes: a killed experiment
started again with ``resume=true`` skips finished parts and resumes an interrupted training run. The result is
``results.json`` (every figure), ``table.md`` / ``table.csv`` (mean ± standard deviation over splits x seeds per
column) and ``plot.png``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from omegaconf import OmegaConf

from mlof.commands.evaluate import EvaluateConfig, run_evaluate
from mlof.commands.meta_train import MetaConfig, MetaTrainConfig, MetaTrainJob
from mlof.commands.pretrain import OptimConfig, PretrainConfig, PretrainJob
from mlof.commands.report import say
from mlof.config import ConfigError, DataConfig, ModelConfig, RunConfig, to_dict
from mlof.io import write_image
from mlof.train.runner import run_training
from mlof.utils import atomic_open
from mlof.viz import bar_plot

__all__ = ["ExperimentConfig", "FinetuneConfig", "COLUMNS", "run_experiment", "summarize", "paired", "verdict",
           "main"]

COLUMNS = ("theta0", "theta0*", "ft", "ft*", "ml", "ml*")


@dataclass
class FinetuneConfig:
    """The supervised fine-tuning of column ft (keys of ``mlof pretrain``; steps and batch are shared)."""

    iters: int = 6
    gamma: float = 0.8
    freeze_bn: bool = False
    # the optimizer of ml's outer step (Adam, constant lr, no clipping), so ft and ml differ only by the inner loop
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, schedule="constant",
                                                                   clip=0.0))


def _default_meta() -> MetaConfig:
    # Meta-training's inner loop is what ml* runs at test time, so ml is trained for the adaptation it gets.
    return MetaConfig(inner_loss="smurf", inner_steps=3, inner_lr=1e-4, first_order=True, iters=6,
                      outer_lr=1e-4, keep_close_weight=0.0)


@dataclass
class ExperimentConfig(RunConfig):
    """``mlof experiment``: the six columns (theta0, theta0*, ft, ft*, ml, ml*) on a target dataset.

    The CPU default (about 25 min on 2 cores): the shipped RAFT-small on the synthetic TARGET domain at
    64 x 96, two splits of 10 labelled pairs x two seeds, 30 steps of 4 pairs, 12 held-out pairs per split.
    """

    name: str = "experiment"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=None, checkpoint="default"))   # theta0
    data: DataConfig = field(default_factory=lambda: DataConfig(   # the target dataset (training augment kept)
        name="synthetic", options={"domain": "target", "size": [64, 96], "length": 60, "seed": 7}))
    # labelled-pair splits of the target data (data.subset names: n=20,seed=0 | crossval-k | Sm20_1 ...)
    splits: List[str] = field(default_factory=lambda: ["n=10,seed=0", "n=10,seed=1"])
    seeds: List[int] = field(default_factory=lambda: [0, 1])   # training seeds of ft and ml, per split
    steps: int = 30                  # optimizer steps of ft and of ml (the same budget)
    batch_size: int = 4              # labelled pairs per step (ml: one-pair tasks per outer step)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)   # column ft: supervised fine-tuning
    meta: MetaConfig = field(default_factory=_default_meta)            # column ml: MLOF meta-training
    adapt: Dict[str, Any] = field(default_factory=dict)   # mlof.adapt options of the starred columns ({}: default)
    eval_pairs: int = 12             # held-out pairs scored per split (0: all)
    iters: Optional[int] = 12        # evaluation iterations (None: the dataset's protocol)
    metric: str = "epe"              # the figure of the table (a metric of mlof evaluate)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "split"


def _part_done(path: Path) -> bool:
    return (path / "metrics.json").is_file()


def _training_done(run_dir: Path, steps: int) -> bool:
    try:
        with open(run_dir / "metrics.json", encoding="utf-8") as f:
            return int(json.load(f).get("step", -1)) >= steps
    except (OSError, ValueError):
        return False


class _Runner:
    """Runs the parts of one experiment in its folder, skipping those already finished."""

    def __init__(self, cfg: Any, root: Path, progress: bool, say: Callable[[str], None]):
        self.cfg, self.root, self.progress, self.say = cfg, root, progress, say
        self.base = {"seed": int(cfg.seed), "device": cfg.device}

    def _where(self, part: str) -> dict[str, str]:
        # a run folder's name is one path component: the part's folders become its out_dir
        folder, _, name = part.rpartition("/")
        return {"out_dir": str(self.root / folder), "name": name}

    def _resolve(self, defaults: Any, values: dict[str, Any]) -> Any:
        cfg = OmegaConf.merge(OmegaConf.structured(defaults), OmegaConf.create(values))
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        return cfg

    def _data(self, subset: str) -> dict[str, Any]:
        d = to_dict(self.cfg.data)
        d["subset"] = subset
        if subset.endswith(":eval"):
            d["augment"] = None    # augmentation is for training: held-out pairs are scored as they are
        return d

    def train(self, kind: str, split: str, seed: int) -> Path:
        """Train column ft or ml of (split, seed); returns its latest checkpoint."""
        cfg = self.cfg
        name = f"{_slug(split)}/seed{seed}/{kind}"
        run_dir = self.root / name
        common = {**self.base, **self._where(name), "seed": int(seed), "model": to_dict(cfg.model),
                  "data": self._data(split), "steps": int(cfg.steps),
                  "log": {"every": 5, "images_every": 0, "latest_every": 5, "checkpoint_every": 0,
                          "tensorboard": False}}
        if kind == "ft":
            job, values = PretrainJob, {**common, "batch_size": int(cfg.batch_size),
                                         **to_dict(cfg.finetune)}
            defaults = PretrainConfig
        else:
            job, values = MetaTrainJob, {**common, "tasks_per_step": int(cfg.batch_size), "pairs_per_task": 1,
                                         "meta": to_dict(cfg.meta)}
            defaults = MetaTrainConfig
        ckpt = run_dir / "checkpoints" / "latest.pt"
        if _training_done(run_dir, cfg.steps) and ckpt.is_file():
            self.say(f"  {name}: done before, kept")
            return ckpt
        resume = ckpt.is_file()
        self.say(f"  {name}: {'resuming' if resume else 'training'} ({cfg.steps} steps of {cfg.batch_size} pairs)")
        summary = run_training(job, self._resolve(defaults, values), resume=resume, overwrite=not resume,
                               progress=self.progress)
        return Path(summary["checkpoint"])

    def evaluate(self, name: str, checkpoint: str, split: str) -> dict[str, Any]:
        """Score ``checkpoint`` on the held-out pairs of ``split``, before and after adaptation."""
        cfg = self.cfg
        run_dir = self.root / name
        if _part_done(run_dir):
            self.say(f"  {name}: done before, kept")
            with open(run_dir / "metrics.json", encoding="utf-8") as f:
                return json.load(f)
        model = {**to_dict(cfg.model), "checkpoint": str(checkpoint)}
        # {} would mean "no adaptation" to evaluate: the default setting is asked for by its preset name
        adapt = to_dict(cfg.adapt) or {"preset": "mlof"}
        values = {**self.base, **self._where(name), "model": model, "data": self._data(f"{split}:eval"),
                  "iters": cfg.iters, "max_samples": int(cfg.eval_pairs), "adapt": adapt,
                  "images": False, "save_flows": False, "tensorboard_images": 0}
        self.say(f"  {name}: evaluating before and after adaptation")
        resume = run_dir.exists()
        return run_evaluate(self._resolve(EvaluateConfig, values), progress=self.progress, resume=resume,
                            overwrite=not resume)


def _metric(summary: dict[str, Any], metric: str) -> Optional[float]:
    v = summary.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean_std(a: np.ndarray) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value) of a 1-D array."""
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per column: mean, sample standard deviation (0 for one value), min, max and count of its values."""
    out: dict[str, dict[str, Any]] = {}
    for col in COLUMNS:
        vals = [r["value"] for r in records if r["column"] == col and r["value"] is not None]
        if vals:
            a = np.asarray(vals, np.float64)
            out[col] = {**_mean_std(a), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}
        else:
            out[col] = {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return out


def paired(records: list[dict[str, Any]], column: str = "ml*") -> dict[str, dict[str, Any]]:
    """``column`` minus every other column, paired by (split, seed): mean and sample std of the differences.

    Splits differ in difficulty, which inflates the spread of each column; the paired difference removes that
    shared part (negative = ``column`` is better)."""
    value = {(r["split"], r["seed"], r["column"]): r["value"] for r in records if r["value"] is not None}
    keys = {(sp, se) for sp, se, c in value if c == column}
    out = {}
    for other in COLUMNS:
        if other == column:
            continue
        d = [value[(sp, se, column)] - value[(sp, se, other)] for sp, se in sorted(keys, key=str)
             if (sp, se, other) in value]
        if d:
            a = np.asarray(d, np.float64)
            out[other] = {**_mean_std(a), "n": int(a.size), "wins": int((a < 0).sum())}
    return out


def verdict(stats: dict[str, dict[str, Any]]) -> str:
    """One sentence: which column is best, and whether ml* beats every other column beyond the spread."""
    have = {c: s for c, s in stats.items() if s["mean"] is not None}
    if not have:
        return "no column was scored"
    best = min(have, key=lambda c: have[c]["mean"])
    ml = have.get("ml*")
    if ml is None:
        return f"best: {best}; ml* was not scored"
    others = [c for c in have if c != "ml*"]
    beyond = all(ml["mean"] + ml["std"] < have[c]["mean"] - have[c]["std"] for c in others)
    if best == "ml*" and beyond:
        return "ml* is best, beyond the spread over splits and seeds: meta-training helps here"
    if best == "ml*":
        return "ml* has the lowest mean, but not beyond the spread over splits and seeds: not conclusive"
    return f"{best} is best; ml* does not beat it: meta-training did not help in this setting"


def _tables(stats: dict[str, dict[str, Any]], diffs: dict[str, dict[str, Any]], conclusion: str, metric: str,
            records: list[dict[str, Any]]) -> tuple[str, str]:
    def cell(s: dict[str, Any]) -> str:
        return "n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"

    md = [f"| {metric} (mean ± std, n) | " + " | ".join(COLUMNS) + " |",
          "|---|" + "---|" * len(COLUMNS),
          "| all splits x seeds | " + " | ".join(f"{cell(stats[c])} ({stats[c]['n']})" for c in COLUMNS) + " |"]
    for split in dict.fromkeys(r["split"] for r in records):
        per = summarize([r for r in records if r["split"] == split])
        md.append(f"| {split} | " + " | ".join(cell(per[c]) for c in COLUMNS) + " |")
    if diffs:
        md += ["", "| ml* minus (paired by split and seed) | " + " | ".join(diffs) + " |",
               "|---|" + "---|" * len(diffs),
               "| mean ± std (ml* better in k of n) | " + " | ".join(
                   f"{d['mean']:+.3f} ± {d['std']:.3f} ({d['wins']} of {d['n']})" for d in diffs.values()) + " |"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "seed", "column", metric])
    for r in records:
        w.writerow([r["split"], "" if r["seed"] is None else r["seed"], r["column"],
                    "" if r["value"] is None else f"{r['value']:.6f}"])
    return "\n".join(md) + "\n\n" + conclusion + ".\n", buf.getvalue()


def run_experiment(cfg: Any, progress: bool = True, resume: bool = False, overwrite: bool = False,
                   say: Callable[[str], None] = say) -> dict[str, Any]:
    """Run (or resume) the experiment of ``cfg`` (a resolved :class:`ExperimentConfig`); returns the results
    (also ``<out_dir>/<name>/results.json``)."""
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise ConfigError(f"steps and batch_size must be positive, got {cfg.steps} and {cfg.batch_size}")
    if not cfg.splits or not cfg.seeds:
        raise ConfigError("splits and seeds must each list at least one entry")
    if len(set(map(str, cfg.splits))) != len(cfg.splits) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("splits and seeds must not repeat entries")
    root = Path(cfg.out_dir) / cfg.name
    if root.exists() and any(root.iterdir()) and not (resume or overwrite):
        raise ConfigError(f"{root} already holds an experiment: pass resume=true to continue it or "
                          f"overwrite=true to start over")
    if overwrite and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_open(root / "config.yaml", "w") as f:
        f.write(OmegaConf.to_yaml(cfg))
    runner = _Runner(cfg, root, progress, say)
    records: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def add(split: str, seed: Optional[int], summary: dict[str, Any], plain: str, starred: str) -> None:
        before = summary.get("before") or {}
        records.append({"split": split, "seed": seed, "column": plain, "value": _metric(before, cfg.metric)})
        records.append({"split": split, "seed": seed, "column": starred, "value": _metric(summary, cfg.metric)})

    for split in cfg.splits:
        split = str(split)
        t = time.perf_counter()
        base = runner.evaluate(f"{_slug(split)}/theta0", cfg.model.checkpoint, split)
        seconds[f"{split}/theta0"] = time.perf_counter() - t
        for seed in cfg.seeds:
            add(split, int(seed), base, "theta0", "theta0*")   # seed-independent: listed once per seed
            for kind in ("ft", "ml"):
                t = time.perf_counter()
                ckpt = runner.train(kind, split, int(seed))
                summary = runner.evaluate(f"{_slug(split)}/seed{seed}/{kind}_eval", str(ckpt), split)
                seconds[f"{split}/seed{seed}/{kind}"] = time.perf_counter() - t
                add(split, int(seed), summary, kind, kind + "*")
    stats = summarize(records)
    diffs, conclusion = paired(records), verdict(stats)
    md, table_csv = _tables(stats, diffs, conclusion, cfg.metric, records)
    results = {"metric": cfg.metric, "columns": list(COLUMNS), "stats": stats, "paired_ml_star": diffs,
               "records": records,
               "verdict": conclusion, "seconds": seconds, "wall_time_s": time.perf_counter() - t_all,
               "config": to_dict(cfg)}
    with atomic_open(root / "results.json", "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    with atomic_open(root / "table.md", "w") as f:
        f.write(md)
    with atomic_open(root / "table.csv", "w") as f:
        f.write(table_csv)
    plot = bar_plot({c: stats[c]["mean"] for c in COLUMNS}, {c: stats[c]["std"] for c in COLUMNS},
                    title=f"{cfg.data.name}: {cfg.metric}, mean +- std over {len(cfg.splits)} split(s) x "
                          f"{len(cfg.seeds)} seed(s)", ylabel=cfg.metric)
    write_image(root / "plot.png", plot)
    results["run_dir"] = str(root)
    return results


def main(cfg: Any, progress: bool = True) -> int:
    """``mlof experiment``: run (or resume) the six columns and print the table."""
    results = run_experiment(cfg, progress=progress, resume=cfg.resume, overwrite=cfg.overwrite)
    root = Path(results["run_dir"])
    say((root / "table.md").read_text(encoding="utf-8").rstrip())
    say(f"  results: {root / 'results.json'}, {root / 'table.csv'}, {root / 'plot.png'}  "
        f"({results['wall_time_s']:.0f} s)")
    return 0
