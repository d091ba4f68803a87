"""Batching of flow samples, worker seeding and the DataLoader factory the pipelines use.

``collate(samples, pad=True)``: tensors of equal shape are stacked. When frame sizes differ, ``pad=True``
pads every spatial tensor at the bottom/right to the largest H x W in the batch (images, flow and masks
with 0 — so padded pixels are never ``valid``) and adds ``image_size`` (N x 2 long: the original H, W of
each sample); ``pad=False`` returns such keys as lists instead. ``meta`` becomes a dict of lists (nested
dicts likewise), keeping strings and ints as Python values.
"""
from __future__ import annotations

import functools
import random
from typing import Any, Iterator, Sequence, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = ["collate", "collate_meta", "WorkerSeeder", "SeededRandomSampler", "FlowLoader", "build_loader"]


def collate_meta(metas: Sequence[Any]) -> Any:
    """Dicts -> dict of lists (recursively); anything else -> list."""
    if metas and all(isinstance(m, dict) for m in metas):
        keys = list(metas[0])
        return {k: collate_meta([m.get(k) for m in metas]) for k in keys}
    return list(metas)


def collate(samples: Sequence[dict[str, Any]], pad: bool = True) -> dict[str, Any]:
    """Batch a list of samples (see module docstring)."""
    if not samples:
        raise ValueError("collate: empty batch")
    keys = [k for k in samples[0] if all(k in s for s in samples)]
    out: dict[str, Any] = {}
    spatial_sizes = {tuple(s["img1"].shape[-2:]) for s in samples if isinstance(s.get("img1"), torch.Tensor)}
    ragged = len(spatial_sizes) > 1
    if ragged and pad:
        hmax = max(h for h, _ in spatial_sizes)
        wmax = max(w for _, w in spatial_sizes)
        out["image_size"] = torch.tensor([list(s["img1"].shape[-2:]) for s in samples], dtype=torch.long)
    for k in keys:
        vals = [s[k] for s in samples]
        if k == "meta":
            out[k] = collate_meta(vals)
        elif all(isinstance(v, torch.Tensor) for v in vals):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) == 1:
                out[k] = torch.stack(vals)
            elif pad and ragged:
                out[k] = torch.stack([_pad_to(v, hmax, wmax) for v in vals])
            else:
                out[k] = vals
        elif all(isinstance(v, (int, float)) for v in vals):
            out[k] = torch.tensor(vals)
        else:
            out[k] = list(vals)
    return out


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) if x.dim() >= 2 else x


class WorkerSeeder:
    """``worker_init_fn``: seeds python, numpy and torch in worker ``i`` from ``(base_seed, epoch, i)``.

    mlof datasets do not depend on these global generators (they seed each sample themselves); this keeps
    user transforms that do draw from them reproducible too, and different across workers and epochs.
    """

    def __init__(self, base_seed: int, epoch: int = 0):
        self.base_seed, self.epoch = int(base_seed), int(epoch)

    def __call__(self, worker_id: int) -> None:
        ss = np.random.SeedSequence([self.base_seed & (2 ** 63 - 1), self.epoch, int(worker_id)])
        s64 = int(ss.generate_state(2, dtype=np.uint64)[0]) & (2 ** 63 - 1)
        random.seed(s64)
        np.random.seed(s64 % (2 ** 32))
        torch.manual_seed(s64)
        torch.set_num_threads(1)   # workers share the CPU with the main process


class SeededRandomSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``; ``set_epoch`` as DistributedSampler."""

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = len(data_source), int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        state = np.random.SeedSequence([self.seed & (2 ** 63 - 1), self.epoch]).generate_state(1, np.uint64)
        g = torch.Generator().manual_seed(int(state[0]) & (2 ** 62 - 1))
        return iter(torch.randperm(self.n, generator=g).tolist())


class FlowLoader(DataLoader):
    """A DataLoader with ``set_epoch(epoch)`` that reaches the sampler, the dataset and the worker seeder."""

    def set_epoch(self, epoch: int) -> None:
        sampler = self.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if isinstance(self.worker_init_fn, WorkerSeeder):
            self.worker_init_fn.epoch = int(epoch)


def build_loader(dataset: Dataset, batch_size: int = 1, shuffle: bool = True, seed: int = 0,
                 num_workers: int = 0, distributed: bool = False, drop_last: bool = False,
                 pad: bool = True, pin_memory: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> FlowLoader:
    """The loader the pipelines use: seeded order (``DistributedSampler`` when ``distributed``), :func:`collate`
    (with ``pad``), :class:`WorkerSeeder`. Call ``loader.set_epoch(e)`` before each epoch for a new order and
    new augmentation draws; workers are not persistent, so the dataset's epoch reaches them.
    ``rank`` / ``world_size`` default to the initialised process group's (``distributed=True``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("build_loader: the dataset is empty")
    sampler: Sampler[int]
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    else:
        sampler = SeededRandomSampler(dataset, seed=seed, shuffle=shuffle)
    return FlowLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=functools.partial(collate, pad=pad),
                      worker_init_fn=WorkerSeeder(seed) if num_workers > 0 else None, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=False)
