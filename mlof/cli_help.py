"""What ``mlof SUB --help`` says: one line per configuration key, and examples per subcommand.

A key's help is looked up as ``HELP[sub][key]``, then ``HELP["*"][key]`` (keys many subcommands share, by
dotted name), then the trailing ``# comment`` of the dataclass field that defines it, so a new key documented
where it is declared shows up without touching this table. ``tests/test_cli_help.py`` checks that every key
of every subcommand gets a line.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from typing import Any

import yaml
from omegaconf import OmegaConf

__all__ = ["HELP", "EXAMPLES", "key_help", "annotated_listing", "flat_keys", "examples_text"]

WIDTH = 118  # columns of the key listing

_SHARED = {
    "name": "run folder name: outputs go to <out_dir>/<name>/",
    "out_dir": "parent folder of the run folders",
    "seed": "random seed (data order, augmentation, initialisation)",
    "device": "auto (cuda when available, else cpu) | cpu | cuda | cuda:1",
    "model": "the network and its starting weights",
    "model.name": "network: raft | raft_small | gma | kpaflow | memflow | upflow | liteflownet2 (`mlof models`); "
                  "null = the one stored in model.checkpoint",
    "model.options": "build options of the network, e.g. model.options.corr=ondemand (memory-bounded "
                     "correlation), model.options.padding=kitti, model.options.dataset=kitti (KPA-Flow)",
    "model.checkpoint": "starting weights: default (shipped checkpoint), an official name (raft-things, "
                        "`mlof weights`; fetched on first use), an mlof checkpoint, or an official .pth file",
    "data": "a dataset: data.name, data.root, data.split, data.options",
    "data.name": "dataset: synthetic | chairs | things | sintel | kitti15 | kitti12 | hd1k | ... "
                 "(mlof.data.build_dataset)",
    "data.root": "dataset folder as the authors ship it (null: the synthetic set needs none)",
    "data.split": "training | testing (| validation where the dataset has one)",
    "data.options": "reader options, e.g. data.options.pass_=final (Sintel), data.options.flow=noc (KITTI)",
    "data.augment": "augmentation: null, a preset (raft-chairs, raft-things, mlof-meta-kitti, ...) or "
                    "{preset: raft-chairs, crop_size: [64, 96]}",
    "data.subset": "a meta-learning split: crossval-1, Sm20_2, n=20,seed=0; add :eval for its held-out pairs",
    "data.num_workers": "DataLoader worker processes (0: load in the main process)",
    "iters": "GRU refinement iterations of the RAFT family (ignored by pyramid networks)",
    "padding": "sintel (pad both sides to a multiple of 8) | kitti (pad bottom), as the official InputPadder",
    "warm_start": "start each pair from the previous pair's coarse flow (video sequences)",
    "input": "frames to process: null or clip (the bundled 4-frame Sintel clip), a folder of frames, a video "
             "file, or a list [a.png, b.png, ...] (consecutive pairs)",
    "pairs": "only these pair indices, e.g. pairs=[1] (the clip's annotated pair); null: every pair",
    "max_pairs": "process at most this many pairs (0: all)",
    "save_flows": "write the flow of every pair to <run>/flows/",
    "flow_format": "flo (Middlebury) | png (KITTI 16-bit) | pfm",
    "images": "pictures: colour flow / panels written or logged (false or 0: none)",
    "resize": "scale the inputs by this factor (or to [H, W]); flows and metrics are scaled back",
    "max_side": "downscale inputs whose longer side exceeds this many pixels; results scaled back",
    "overwrite": "true: start an existing run folder over, deleting its previous outputs (as --overwrite)",
    "log": "how often a training run logs and saves (in optimizer steps)",
    "log.every": "scalars to TensorBoard and the progress bar every N steps",
    "log.images_every": "image grid (frames, flow, ground truth, error) every N steps",
    "log.latest_every": "checkpoints/latest.pt every N steps (atomic; --resume continues from it)",
    "log.checkpoint_every": "keep checkpoints/step_XXXXXX.pt every N steps (0: only the final one)",
    "log.tensorboard": "write TensorBoard events",
    "steps": "optimizer steps",
    "batch_size": "global batch (split across processes under torchrun)",
    "gamma": "sequence-loss decay over iterations (RAFT 0.8)",
    "max_flow": "ignore ground-truth pixels with larger flow (px) in the loss",
}

HELP: dict[str, dict[str, str]] = {
    "*": _SHARED,
    "pretrain": {
        "loss": "auto (sequence loss for the RAFT family, multi-level for pyramids) | sequence | multilevel",
        "freeze_bn": "keep BatchNorm statistics fixed (RAFT does after the Chairs stage)",
        "optim": "AdamW optimizer and learning-rate schedule",
        "optim.lr": "peak learning rate", "optim.weight_decay": "AdamW weight decay", "optim.eps": "AdamW epsilon",
        "optim.schedule": "onecycle (RAFT: linear warm-up then decay) | constant",
        "optim.pct_start": "fraction of the schedule spent warming up",
        "optim.schedule_pad": "RAFT anneals over steps + 100; short runs want 1 (the lr then ends near 0)",
        "optim.clip": "max gradient norm (0: no clipping)",
    },
    "meta-train": {
        "tasks_per_step": "tasks (annotated target-domain pairs) averaged in one outer step",
        "pairs_per_task": "pairs per task",
        "meta": "the MLOF inner/outer loop (mlof.meta.MLOFTrainer)",
        "meta.inner_loss": "unsupervised inner-loop recipe (mlof.losses.build_loss): mlof | ...",
        "meta.inner_steps": "SGD steps per task in the inner loop",
        "meta.inner_lr": "inner-loop learning rate",
        "meta.first_order": "FOMAML (true, as the release) or exact second-order gradients (false)",
        "meta.params": "what adapts in the inner loop: all, or a parameter group (`mlof models` lists them)",
        "meta.iters": "GRU iterations inside the inner and outer losses",
        "meta.outer_lr": "outer (meta) learning rate",
        "meta.keep_close_weight": "weight of the term keeping the adapted weights near the start weights",
        "meta.gamma": "sequence-loss decay of the outer (supervised) loss",
        "meta.max_flow": "ignore ground-truth pixels with larger flow (px) in the outer loss",
        "meta.options": "any further MLOFTrainer keyword",
    },
    "adapt": {
        "data": "or a dataset instead of input (data.name=..., data.root=...): pairs with ground truth are scored",
        "online": "carry the adapted weights along the sequence (OnlineAdapter) instead of restarting per pair",
        "iters": "GRU iterations of adaptation and of the before/after flows",
        "options": "adaptation settings of mlof.adapt, e.g. options.steps=3 options.lr=1e-5 options.params=all "
                   "options.recipe=mlof",
    },
    "infer": {
        "data": "or a dataset instead of input (data.name=..., data.root=...): pairs with ground truth are scored",
        "color": "also write colour-coded flow PNGs",
    },
    "experiment": {
        "model": "theta0: the pretrained network every column starts from",
        "data": "the target dataset (its augment is used for training only; held-out pairs are scored as they are)",
        "splits": "labelled-pair splits (data.subset names): n=20,seed=0 | crossval-1 | Sm20_1 ...; their other "
                  "pairs are held out",
        "seeds": "training seeds of ft and ml, per split",
        "steps": "optimizer steps of ft and of ml (the same budget)",
        "batch_size": "labelled pairs per step (ml: one-pair tasks per outer step)",
        "finetune": "column ft: supervised fine-tuning (keys of mlof pretrain)",
        "meta": "column ml: MLOF meta-training (keys of mlof meta-train's meta)",
        "adapt": "mlof.adapt options of the starred columns ({}: mlof.adapt's default setting)",
        "eval_pairs": "held-out pairs scored per split (0: all)",
        "iters": "GRU iterations of the evaluation; null: the dataset's protocol",
        "metric": "the metric of the table: epe, outlier_3px, fl_all, ... (a key of mlof evaluate's metrics)",
        "data.options.domain": "synthetic domain of the target data: target (another camera and world than the "
                               "source domain), source, natural, or a YAML file",
        "data.options.size": "frame size [H, W] of the synthetic pairs",
        "data.options.length": "number of synthetic pairs (labelled + held out)",
        "data.options.seed": "seed of the synthetic pairs",
    },
    "evaluate": {
        "iters": "GRU iterations; null: the dataset's protocol (32 Sintel, 24 KITTI / Chairs)",
        "padding": "sintel | kitti; null: the dataset's protocol",
        "max_samples": "evaluate at most this many pairs (0: all)",
        "adapt": "score after per-pair unsupervised adaptation: null (off) or mlof.adapt options, "
                 "e.g. adapt={steps:3,lr:1e-5}",
        "images": "panels logged to TensorBoard (0: none)",
    },
    "bench": {
        "backbones": "networks to measure, e.g. backbones=[raft_small,raft]",
        "sizes": "input sizes [[H, W], ...]",
        "corr": "correlation backends to compare: dense | ondemand | auto | - (the network's default)",
        "precision": "precisions to compare: fp32 | bf16 | fp16 (CUDA only), e.g. precision=[fp32,bf16]",
        "modes": "inference, adaptation (one mlof.adapt call) and/or training (one supervised optimizer step)",
        "adapt_steps": "adaptation steps per measured adaptation",
        "memory_budget": "memory plan budget for adaptation/training, e.g. 8GB; null: the default; plain: no plan",
        "repeats": "timed repetitions (the median is reported)",
        "warmup": "untimed repetitions first",
        "batch": "batch size",
        "checkpoint": "weights to load (only with a single backbone)",
        "threads": "torch.set_num_threads in every measuring subprocess (0: torch's default)",
        "timeout": "seconds per case before its subprocess is stopped",
        "subprocess": "measure every case in a fresh process (false: in this one; peak memory is then cumulative)",
    },
    "models": {
        "names": "only these networks, e.g. names=[raft,gma]; null: every available one",
        "format": "table | json",
    },
    "weights": {
        "backbone": "only this backbone's checkpoints, e.g. backbone=raft; null: all",
        "format": "table | json | long (URLs, licences, training settings, cache paths)",
    },
    "fetch": {
        "names": "registry names to fetch (`mlof weights`); bare NAME arguments are added here",
        "all": "fetch every entry that has a download URL",
        "force": "download again even if cached",
        "retries": "reconnections after a dropped connection (each resumes with an HTTP Range request)",
    },
    "export": {
        "model.name": "network to export: raft | raft_small | gma | kpaflow",
        "out": "the .onnx file to write (atomically)",
        "size": "[H, W] of the inputs: fixed in the graph (export one file per size)",
        "iters": "GRU iterations, fixed in the graph",
        "corr": "dense (official all-pairs volume) | ondemand (grid_sample lookups, no volume: large frames)",
        "batch": "batch size, fixed in the graph",
        "opset": "ONNX opset (>= 16 for GridSample)",
        "check": "run the graph with onnxruntime and compare with torch (fails above tolerance)",
        "tolerance": "largest accepted |onnx - torch| flow difference, pixels",
    },
}

EXAMPLES: dict[str, list[str]] = {
    "pretrain": [
        "mlof pretrain --config recipes/quick_pretrain.yaml",
        "mlof pretrain model.name=raft data.name=chairs data.root=data/FlyingChairs_release "
        "data.augment=raft-chairs steps=1000 -q",
        "mlof pretrain --config recipes/pretrain_things.yaml model.checkpoint=gma-chairs --resume",
    ],
    "meta-train": [
        "mlof meta-train --config recipes/quick_meta_train.yaml",
        "mlof meta-train --config recipes/meta_train_sintel.yaml model.checkpoint=mlof-gma-things",
        "mlof meta-train --config recipes/meta_train_kitti15.yaml data.root=data/KITTI meta.inner_steps=1",
    ],
    "adapt": [
        "mlof adapt                                   # the bundled clip, shipped checkpoint",
        "mlof adapt input=path/to/frames/             # a folder of frames (consecutive pairs)",
        "mlof adapt input=[frame_0001.png,frame_0002.png] options.steps=5",
        "mlof adapt input=video.mp4 --online          # carry the weights along the video",
        "mlof adapt --config recipes/meta_inference_sintel.yaml data.root=data/Sintel",
        "mlof adapt data.name=kitti15 data.root=data/KITTI data.options.flow=noc model.checkpoint=raft-kitti "
        "model.options.padding=kitti",
    ],
    "infer": [
        "mlof infer                                   # the bundled clip, shipped checkpoint",
        "mlof infer input=path/to/frames/ model.checkpoint=raft-things",
        "mlof infer input=[a.png,b.png] model.checkpoint=gma-sintel flow_format=png",
        "mlof infer input=video.mp4 iters=32 warm_start=true -q",
    ],
    "evaluate": [
        "mlof evaluate data.name=sintel data.root=data/Sintel model.checkpoint=raft-things",
        "mlof evaluate data.name=kitti15 data.root=data/KITTI data.options.flow=noc "
        "model.checkpoint=raft-kitti",
        "mlof evaluate data.name=sintel data.root=data/Sintel adapt={steps:3} max_samples=20",
    ],
    "experiment": [
        "mlof experiment                                # CPU default: synthetic target, shipped checkpoint",
        "mlof experiment --config recipes/experiment_kitti15.yaml data.root=data/KITTI15",
        "mlof experiment splits=[n=20,seed=0] seeds=[0,1,2] steps=100 adapt={preset:release}",
        "mlof experiment --resume                       # continue an interrupted experiment",
    ],
    "bench": [
        "mlof bench",
        "mlof bench backbones=[raft_small,raft] sizes=[[224,320],[436,1024]] corr=[dense,ondemand] -q",
        "mlof bench backbones=[raft] sizes=[[436,1024]] precision=[fp32,bf16] modes=[inference,training] -q",
    ],
    "models": ["mlof models", "mlof models names=[raft,gma] format=json"],
    "weights": ["mlof weights", "mlof weights backbone=gma format=long", "mlof weights format=json"],
    "fetch": [
        "mlof fetch raft-things",
        "mlof fetch raft-things gma-things -q",
        "mlof fetch all=true                          # every downloadable checkpoint",
        "MLOF_HOME=/data/weights mlof fetch raft-kitti  # another cache folder",
    ],
    "export": [
        "mlof export model.name=raft_small model.checkpoint=raft-small out=raft_small.onnx size=[256,320] iters=12",
        "mlof export model.name=raft model.checkpoint=raft-things corr=ondemand size=[440,1024] out=raft.onnx",
        "mlof export model.checkpoint=runs/quick_pretrain/checkpoints/latest.pt out=mine.onnx check=false",
    ],
    "synth": [
        "mlof synth out=data/synth-target domain=target scenes=200 size=[436,1024] seed=0",
        "mlof synth out=data/custom domain=my_domain.yaml scenes=20 -q   # domain parameters from a YAML file",
        "mlof synth --out data/custom --scenes 20     # the flag form works too",
    ],
}


def _comment_help(cls: Any) -> dict[str, str]:
    """Trailing ``# comment`` of each field in the source of dataclass ``cls`` and its bases."""
    found: dict[str, str] = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
            if m:
                found[m.group(1)] = m.group(2).strip()
    return found


def _field_types(cls: Any) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        t = hints.get(f.name, f.type)
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if not dataclasses.is_dataclass(t) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
            t = args[0]  # Optional[SomeConfig]
        out[f.name] = t
    return out


# sections of a command's config that take another command's keys (and their help lines)
_BORROWED = {"experiment": {"finetune": "pretrain", "meta": "meta-train"}}


def key_help(sub: str, key: str, defaults: Any = None) -> str:
    """The help line of dotted ``key`` of subcommand ``sub`` ('' when none is known)."""
    text = HELP.get(sub, {}).get(key) or HELP["*"].get(key)
    if text:
        return text
    for section, owner in _BORROWED.get(sub, {}).items():   # a section that is another command's config
        if key.startswith(section + "."):
            return key_help(owner, key[len(section) + 1:] if owner == "pretrain" else key)
    cls = defaults
    parts = key.split(".")
    for part in parts[:-1]:
        if cls is None or not dataclasses.is_dataclass(cls):
            return ""
        cls = _field_types(cls).get(part)
    if cls is None or not dataclasses.is_dataclass(cls):
        return ""
    return _comment_help(cls).get(parts[-1], "")


def _inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def flat_keys(container: dict, prefix: str = "") -> list[str]:
    """Dotted keys of a nested dict (a non-empty dict is a section; its own key is listed too)."""
    keys = []
    for k, v in container.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and v:
            keys += flat_keys(v, f"{prefix}{k}.")
    return keys


def annotated_listing(sub: str, defaults: Any) -> str:
    """Every key of ``sub`` with its default and its help line, nested as the YAML of a recipe."""

    container = OmegaConf.to_container(OmegaConf.structured(defaults), resolve=True)
    lines: list[str] = []

    def walk(d: dict, prefix: str, indent: int) -> None:
        for k, v in d.items():
            key = prefix + k
            helptext = key_help(sub, key, defaults)
            pad = "  " * indent
            head = f"{pad}{k}:" if isinstance(v, dict) and v else f"{pad}{k}: {_inline(v)}"
            if not helptext:
                lines.append(head)
            else:
                # wrapped at ~118 columns, continuation lines aligned under the first comment
                wrapped = textwrap.wrap(helptext, width=max(40, WIDTH - 36)) or [""]
                lines.append(f"{head:<34} # {wrapped[0]}")
                lines.extend(f"{'':<34} #   {more}" for more in wrapped[1:])
            if isinstance(v, dict) and v:
                walk(v, key + ".", indent + 1)

    walk(container, "", 1)
    return "\n".join(lines)


def examples_text(sub: str) -> str:
    """The ``examples:`` block of ``mlof SUB --help``."""
    ex = EXAMPLES.get(sub, [])
    return ("examples:\n" + "\n".join(f"  {e}" for e in ex)) if ex else ""
