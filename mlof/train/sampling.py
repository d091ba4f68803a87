"""A data plan that depends only on (seed, step): the key to bit-identical resume and to DDP == 1 process.

Step ``s`` of a run with global batch ``B`` consumes stream positions ``s*B .. s*B+B-1``; position ``p``
is sample ``perm_e[p % N]`` of epoch ``e = p // N``, with ``perm_e`` a permutation seeded by
``(seed, e)``. Every sample is produced under its own seed ``(seed, s, j)``, so random augmentation gives
the same pixels whichever process, worker or resumed run produces it. Each rank takes a contiguous
shard of the ``B`` positions.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlof.train.distributed import DistContext, shard_range
from mlof.seeding import derive_seed

__all__ = ["StepPlan", "SeededSamples", "StepBatchSampler", "step_loader"]


class StepPlan:
    """Which samples (index, sample seed) step ``step`` uses, globally and on one rank."""

    def __init__(self, length: int, batch_size: int, seed: int, shuffle: bool = True, group: int = 1):
        if group <= 0 or batch_size % group:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the group size {group}")
        self.group = group
        if length <= 0:
            raise ValueError("the training dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.length, self.batch_size, self.seed, self.shuffle = length, batch_size, seed, shuffle
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
        """All ``batch_size`` (dataset index, sample seed) pairs of ``step``."""
        out = []
        for j in range(self.batch_size):
            p = step * self.batch_size + j
            out.append((self._perm(p // self.length)[p % self.length], derive_seed(self.seed, step, j)))
        return out

    def local_batch(self, step: int, ctx: DistContext) -> list[tuple[int, int]]:
        """This rank's share, in whole groups of ``group`` consecutive entries (e.g. the pairs of one task)."""
        batch, g = self.global_batch(step), self.group
        return [batch[j * g + i] for j in shard_range(len(batch) // g, ctx) for i in range(g)]


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(position, seed)`` is sample ``indices[position]`` drawn under ``seed``.

    mlof datasets (``mlof.data.FlowDataset``) take the seed explicitly (``dataset[(index, seed)]`` draws
    the augmentation from it); for any other dataset python's, numpy's and torch's global generators are
    seeded for the call. The caller's random streams are restored afterwards in both cases.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = None if indices is None else [int(i) for i in indices]
        try:
            from mlof.data.base import FlowDataset
            self._explicit = isinstance(dataset, FlowDataset) or bool(getattr(dataset, "accepts_seed", False))
        except ImportError:
            self._explicit = bool(getattr(dataset, "accepts_seed", False))

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
    """Yields this rank's batch of steps ``start .. stop-1`` of a ``StepPlan``."""

    def __init__(self, plan: StepPlan, start: int, stop: int, ctx: DistContext):
        self.plan, self.start, self.stop, self.ctx = plan, start, stop, ctx

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.plan.local_batch(step, self.ctx)


def _worker_init(worker_id: int) -> None:
    # Samples are seeded one by one (SeededSamples); only keep worker threads from oversubscribing the CPU.
    torch.set_num_threads(1)


def step_loader(dataset: Dataset, plan: StepPlan, start: int, stop: int, ctx: DistContext,
                collate: Callable[[Sequence[Any]], Any], num_workers: int = 0,
                indices: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader over steps ``start .. stop-1``; batch k is this rank's share of step ``start + k``.

    ``indices``: the plan runs over these dataset indices only (a split), else over the whole dataset.
    """
    return DataLoader(SeededSamples(dataset, indices), batch_sampler=StepBatchSampler(plan, start, stop, ctx),
                      collate_fn=collate, num_workers=num_workers,
                      worker_init_fn=_worker_init if num_workers > 0 else None,
                      persistent_workers=False)
