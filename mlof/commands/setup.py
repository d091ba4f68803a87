"""Building the pieces a run configuration names: the network and the datasets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import backbones
from backbones.base import warn_once
from backbones.fetch import fetch
from backbones.weights import UnknownWeightsError, WEIGHTS, resolve_name
from mlof.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, resolve_checkpoint
from mlof.config import ConfigError, DataConfig, ModelConfig
from mlof.data import FlowDataset, build_augmentor, build_dataset, collate as data_collate, split_indices
from mlof.meta.settings import adapt_settings

__all__ = ["DEFAULT_CHECKPOINT", "resolve_checkpoint", "build_model", "warn_if_demo_model", "is_real_input", "build_data", "check_adapt_options", "check_run_size", "PYRAMID_NETWORKS", "collate", "SplitView", "subset_indices"]

# Networks whose training loss is a weighted sum over pyramid levels rather than RAFT's sequence loss.
PYRAMID_NETWORKS = frozenset({"liteflownet2", "upflow"})


DEMO_MODEL_WARNING = (
    "the default checkpoint (mlof/checkpoints/mlof_default.pt) is a CPU demonstration model (RAFT-small, about 2.5 h "
    "of CPU training on synthetic frames): adapted it beats zero flow on the shared real samples, unadapted it does "
    "not everywhere (Middlebury). For real use take official weights: `mlof fetch raft-things` and "
    "model.checkpoint=raft-things (`mlof weights` lists them)")


def warn_if_demo_model(checkpoint: Any) -> bool:
    """Say once per process that the shipped default checkpoint is a demonstration model (commands call this
    when they run it on real frames). True if ``checkpoint`` is that file."""
    try:
        path = resolve_checkpoint(checkpoint)
        demo = path is not None and Path(path).resolve() == DEFAULT_CHECKPOINT.resolve()
    except (FileNotFoundError, OSError, ValueError):
        return False
    if demo:
        warn_once("demo-model", DEMO_MODEL_WARNING)
    return demo


def is_real_input(obj: Any) -> bool:
    """Whether a command's input is real frames (a dataset other than the synthetic generator, frames, a folder,
    a video or the bundled Sintel clip)."""
    data = getattr(obj, "data", None)
    name = getattr(data, "name", None) if data is not None else None
    return name != "synthetic"


def build_model(cfg: ModelConfig | Any, device: torch.device | str = "cpu",
                warn_random: bool = True) -> nn.Module:
    """The network of ``cfg`` (name, options, starting weights), on ``device``, in train mode.

    Without a checkpoint the weights are random: a warning (once per process) says so unless
    ``warn_random=False`` (supervised pretraining from scratch). A checkpoint that is not a torch file,
    pickles code, has NaN weights, wrong shapes or insane metadata raises ``CheckpointError``.

    An mlof checkpoint names its own backbone and options (``cfg.options`` override them, e.g. a
    correlation backend); an official release file needs ``cfg.name``. ``checkpoint: default`` is the
    shipped ``mlof.checkpoint.DEFAULT_CHECKPOINT``; a name of the official-weights registry (``raft-things``, see
    ``mlof weights``) is fetched into ``MLOF_HOME`` and verified on first use.
    """
    options = dict(cfg.options or {})
    ckpt = resolve_checkpoint(cfg.checkpoint)
    entry = _official_entry(ckpt, cfg.name)
    if entry is not None:
        # a name of the official-weights registry (``raft-things``): fetched and verified into MLOF_HOME

        path = fetch(entry, progress=True, check_keys=False)  # loaded strictly just below
        model = backbones.build(entry.backbone, checkpoint=str(path), **{**entry.options, **options})
        return model.to(device).train()
    if ckpt is not None:
        path = Path(ckpt)
        if not path.is_file():
            raise ConfigError(f"model.checkpoint: {path} does not exist")
        try:
            checkpoint = backbones.read_checkpoint(path)   # the one reader: any layout, read once
            if checkpoint.is_mlof:
                if cfg.name is not None and cfg.name != checkpoint.backbone:
                    raise ConfigError(f"model.name is {cfg.name!r} but {path} holds a {checkpoint.backbone!r} network")
                _warn_changed_options(path, checkpoint.options, options, checkpoint.contents.get("image_range"))
            elif cfg.name is None:
                raise ConfigError(f"model.checkpoint {path} is not an mlof checkpoint: set model.name to the "
                                  f"network it holds (one of {', '.join(backbones.available())})")
            model = backbones.build_from_checkpoint(checkpoint, cfg.name, **options)
        except CheckpointError as e:   # unreadable, insane metadata, mis-shaped / missing keys, NaN weights
            raise CheckpointError(f"model.checkpoint: {e}") from e
    else:
        if cfg.name is None:
            raise ConfigError(f"model.name: say which network to build (one of {', '.join(backbones.available())}) "
                              f"or give an mlof model.checkpoint")
        model = backbones.build(cfg.name, **options)
        if warn_random:
            warn_once("random-weights", f"model.checkpoint is null: {cfg.name} runs with RANDOM weights, so its "
                                        f"flow is meaningless; give model.checkpoint=default (the shipped "
                                        f"checkpoint) or a trained file")
    return model.to(device).train()


def _warn_changed_options(path: Path, saved: dict[str, Any], options: dict[str, Any], image_range: Any) -> None:
    """Warn (once) when a run overrides how the checkpoint's network was trained to see its input."""
    for key in ("padding", "dataset"):   # RAFT-family padding mode, KPA-Flow's patch setting
        if key in options and key in saved and options[key] != saved[key]:
            warn_once(f"ckpt-{key}", f"{path} was trained with {key}={saved[key]!r}, this run uses "
                                     f"model.options.{key}={options[key]!r}")
    if isinstance(image_range, (list, tuple)) and [float(v) for v in image_range] != [0.0, 255.0]:
        warn_once("ckpt-range", f"{path} was trained on images in {list(image_range)}, mlof feeds 0..255")


def _official_entry(ckpt: str | None, name: str | None) -> Any:
    """The registry entry named by ``model.checkpoint`` (``raft-things``, or ``things`` with ``model.name``),
    or None when it is a path (an existing file always wins over a registry name)."""
    if ckpt is None or Path(ckpt).exists() or any(c in str(ckpt) for c in "/\\") or str(ckpt).endswith(
            (".pt", ".pth", ".tar", ".ckpt")):
        return None

    if ckpt in WEIGHTS and name is not None and WEIGHTS[ckpt].backbone != name:
        net = WEIGHTS[ckpt].backbone
        raise ConfigError(f"model.checkpoint={ckpt} holds a {net!r} network but model.name is {name!r}: set "
                          f"model.name={net} (or model.name=null)")
    try:
        return resolve_name(name, ckpt) if name is not None else WEIGHTS.get(ckpt)
    except UnknownWeightsError:
        return None


def check_adapt_options(options: dict[str, Any], key: str = "options", online: bool = False) -> None:
    """Validate keyword options of ``mlof.adapt`` (types, ranges, choices) before a run writes anything, with the
    one parser of adaptation options (``mlof.meta.settings.adapt_settings``).

    Raises ``ConfigError`` naming ``key`` and the option (``options: lr must be a number, got 'abc'``).
    (``online`` is kept for callers; the same checks apply.)
    """
    try:
        adapt_settings(options)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from e


def check_run_size(steps: int, per_step: int, per_step_key: str, world_size: int) -> None:
    """``ConfigError`` unless ``steps`` > 0 and the samples of a step (``per_step``, config key ``per_step_key``:
    the batch or the tasks, split across processes) give every one of ``world_size`` processes at least one."""
    if steps <= 0:
        raise ConfigError(f"steps must be positive, got {steps}")
    if per_step < world_size:
        raise ConfigError(f"{per_step_key} {per_step} is smaller than the {world_size} processes")


def build_data(cfg: DataConfig | Any, key: str = "data") -> Dataset:
    """``mlof.data.build_dataset(name, root, split, **options)`` with ``augment`` as its transform."""

    options = dict(cfg.options or {})
    if getattr(cfg, "augment", None) is not None:
        options["transform"] = _augmentor(cfg.augment, key)
    try:
        dataset = build_dataset(cfg.name, cfg.root, split=cfg.split, **options)
    except TypeError as e:  # an option the dataset does not take
        raise ConfigError(f"{key}.options: {e}") from e
    if getattr(cfg, "subset", None):
        dataset = SplitView(dataset, subset_indices(cfg.name, cfg.subset, len(dataset), key))
    return dataset


def _augmentor(spec: Any, key: str) -> Any:
    try:
        if isinstance(spec, str):
            return build_augmentor(spec)
        spec = dict(spec)
        preset = spec.pop("preset", None)
        return build_augmentor(preset, **spec) if preset is not None else build_augmentor(spec)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{key}.augment: {e}") from e


def subset_indices(name: str, spec: str, n_total: int, key: str = "data") -> list[int]:
    """Indices of ``spec`` = ``SPLIT`` (its meta-train pairs) or ``SPLIT:eval`` (its held-out pairs)."""

    split, _, part = str(spec).partition(":")
    part = part or "train"
    if part not in ("train", "eval"):
        raise ConfigError(f"{key}.subset: {spec!r} must be SPLIT or SPLIT:eval")
    try:
        s = split_indices(name, split, n_total)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{key}.subset: {e}") from e
    return [int(i) for i in (s.train if part == "train" else s.eval)]


class SplitView(Dataset):
    """Some pairs of a dataset; items are positions, or (position, sample seed) for mlof datasets."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        if not indices:
            raise ConfigError("data.subset selects no pairs")
        self.dataset, self.indices = dataset, indices
        self.accepts_seed = isinstance(dataset, FlowDataset) or getattr(dataset, "accepts_seed", False)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, tuple):
            return self.dataset[(self.indices[item[0]], item[1])]
        return self.dataset[self.indices[item]]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors stacked, everything else (``meta``) kept as lists."""

    return data_collate(samples)
