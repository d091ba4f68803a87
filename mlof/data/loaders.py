"""Batching and the one data pipeline: a plan that depends only on ``(seed, step)``.

``mlof pretrain``, ``mlof meta-train`` (through :class:`mlof.data.TaskSampler`) and a user's own loop all draw
their batches here, so the same seed gives the same batches, the same augmentation pixels and therefore the
same trained weights, whichever of them runs it, however many DataLoader workers or processes it uses and
wherever a resumed run restarts.

The plan (:class:`StepPlan`): step ``s`` of a run with global batch ``B`` consumes stream positions
``s*B .. s*B+B-1``; position ``p`` is item ``perm_e[p % N]`` of epoch ``e = p // N`` (``perm_e`` a permutation
seeded by ``(seed, e)``), drawn under its own sample seed ``(seed, s, j)``. mlof datasets take that seed
(``dataset[(index, seed)]`` draws the augmentation from it); for any other dataset python's, numpy's and torch's
global generators are seeded for the call (:class:`SeededSamples`). Under ``torchrun`` each rank takes a
contiguous share of the ``B`` positions, in whole groups (the pairs of one task).

``collate(samples, pad=True)``: tensors of equal shape are stacked. When frame sizes differ, ``pad=True``
pads every spatial tensor at the bottom/right to the largest H x W in the batch (images, flow and masks
with 0 — so padded pixels are never ``valid``) and adds ``image_size`` (N x 2 long: the original H, W of
each sample); ``pad=False`` returns such keys as lists instead. ``meta`` becomes a dict of lists (nested
dicts likewise), keeping strings and ints as Python values.
"""
from __future__ import annotations

import functools
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from mlof.data.base import FlowDataset
from mlof.seeding import derive_seed

__all__ = ["collate", "collate_meta", "shard", "StepPlan", "SeededSamples", "StepBatchSampler", "step_loader",
           "build_loader"]


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


def shard(n: int, rank: int = 0, world_size: int = 1) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items (the first ``n % world_size`` ranks get one more)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class StepPlan:
    """Which items (position in the dataset, sample seed) step ``step`` uses, globally and on one rank.

    length: items the plan runs over; batch_size: the global batch (all processes together); group: the batch
    is sharded across processes in whole groups of this many consecutive entries (a task's pairs);
    shuffle=False: positions in order, epoch after epoch.
    """

    def __init__(self, length: int, batch_size: int, seed: int, shuffle: bool = True, group: int = 1):
        if length <= 0:
            raise ValueError("the training dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if group <= 0 or batch_size % group:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the group size {group}")
        self.length, self.batch_size, self.seed, self.shuffle, self.group = length, batch_size, seed, shuffle, group
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            if self.shuffle:
                g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0xDA7A))
                self._perm_cache[epoch] = torch.randperm(self.length, generator=g).tolist()
            else:
                self._perm_cache[epoch] = list(range(self.length))
        return self._perm_cache[epoch]

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        """All ``batch_size`` (position, sample seed) pairs of ``step``."""
        out = []
        for j in range(self.batch_size):
            p = step * self.batch_size + j
            out.append((self._perm(p // self.length)[p % self.length], derive_seed(self.seed, step, j)))
        return out

    def local_batch(self, step: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        """Rank ``rank``'s share of ``step``, in whole groups of ``group`` consecutive entries."""
        batch, g = self.global_batch(step), self.group
        return [batch[j * g + i] for j in shard(len(batch) // g, rank, world_size) for i in range(g)]


class SeededSamples(Dataset):
    """Item ``(position, seed)`` is sample ``indices[position]`` of ``dataset`` drawn under ``seed``.

    mlof datasets (``FlowDataset``, or any with ``accepts_seed = True``) take the seed explicitly; for any other
    dataset python's, numpy's and torch's global generators are seeded for the call. The caller's random
    streams are restored afterwards in both cases.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = None if indices is None else [int(i) for i in indices]
        self._explicit = isinstance(dataset, FlowDataset) or bool(getattr(dataset, "accepts_seed", False))

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        position, seed = item
        index = self.indices[position] if self.indices is not None else position
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            torch.manual_seed(seed)
            try:
                return self.dataset[(index, seed)] if self._explicit else self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields rank ``rank``'s batch of steps ``start .. stop-1`` of a ``StepPlan``."""

    def __init__(self, plan: StepPlan, start: int, stop: int, rank: int = 0, world_size: int = 1):
        self.plan, self.start, self.stop, self.rank, self.world_size = plan, start, stop, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.plan.local_batch(step, self.rank, self.world_size)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` of the plan's loaders."""
    # Samples are seeded one by one (SeededSamples); only keep worker threads from oversubscribing the CPU.
    torch.set_num_threads(1)


def step_loader(dataset: Dataset, plan: StepPlan, start: int = 0, stop: int | None = None,
                collate_fn: Callable[[Sequence[Any]], Any] = collate, num_workers: int = 0,
                rank: int = 0, world_size: int = 1, indices: Sequence[int] | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over steps ``start .. stop-1`` of ``plan`` (``stop`` None: one epoch's worth of steps);
    batch k is rank ``rank``'s share of step ``start + k``. ``indices``: the plan runs over these dataset
    indices only (a split), else over the whole dataset."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if stop is None:
        stop = start + -(-plan.length // plan.batch_size)
    return DataLoader(SeededSamples(dataset, indices),
                      batch_sampler=StepBatchSampler(plan, start, stop, rank, world_size),
                      collate_fn=collate_fn, num_workers=num_workers,
                      worker_init_fn=worker_init if num_workers > 0 else None, pin_memory=pin_memory,
                      persistent_workers=False)


def _process_group(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0 .. world_size-1 ({world_size - 1}), got {rank}")
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_loader(dataset: Dataset, batch_size: int = 1, steps: int | None = None, start: int = 0,
                 seed: int = 0, shuffle: bool = True, num_workers: int = 0, pad: bool = True,
                 indices: Sequence[int] | None = None, pin_memory: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> DataLoader:
    """The loader ``mlof pretrain`` uses: steps ``start .. start+steps-1`` of ``StepPlan(len, batch_size, seed,
    shuffle)`` over ``dataset`` (or its ``indices``), batched by :func:`collate` (with ``pad``).

    ``batch_size`` is the global batch: with ``rank`` / ``world_size`` (default: the initialised process
    group's, else 0 / 1) each process gets its contiguous share. ``steps`` None: one epoch's worth of steps
    (``ceil(N / batch_size)``; the last batch is completed from the next epoch's order). Every batch is full.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0 or None, got {steps}")
    n = len(indices) if indices is not None else len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("build_loader: the dataset is empty")
    rank, world_size = _process_group(rank, world_size)
    plan = StepPlan(n, batch_size, seed, shuffle=shuffle)
    stop = None if steps is None else start + steps
    return step_loader(dataset, plan, start, stop, functools.partial(collate, pad=pad), num_workers, rank,
                       world_size, indices, pin_memory)
