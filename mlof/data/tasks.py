"""Meta-learning tasks: meta-train / evaluation splits and a sampler of task batches.

A *task* is one or more frame pairs of a domain (MLOF: one annotated pair). ``split_indices`` gives the
meta-train and evaluation pair indices of a dataset:

* the splits published with MLOF (:mod:`mlof.data.mlof_splits`): ``kitti15`` (or ``kitti``) with
  ``"crossval-1".."crossval-3"`` (= Sm20_1..3, the paper's cross-validation splits), any ``"Sm<n>_<k>"``
  (Sm5/10/20/50/100/160) or ``"release-<N>"`` (the release's ``--crossval N``); ``sintel`` with
  ``"crossval-1".."crossval-3"`` (Sm20_1..3) and ``"Sm100_1"``;
* for any dataset (and KITTI-15 folds beyond 3 if asked as ``crossval-k/K``):
  ``"crossval-k"`` or ``"crossval-k/K"``: fold k (1-based) of a K-fold partition (K = 10 by default) of a
  permutation seeded 0 -> meta-train = that fold, evaluation = the rest;
  ``"n=20,seed=0"``: meta-train = 20 pairs drawn without replacement with that seed, evaluation = the rest.

All index lists are returned sorted. :class:`TaskSampler` turns the meta-train indices into batches of tasks, through
the same ``(seed, step)`` plan as every loader (:mod:`mlof.data.loaders`): it is what ``mlof meta-train`` draws its
tasks from.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Sampler

from mlof.data import mlof_splits as pub
from mlof.data.loaders import SeededSamples, StepPlan, collate, shard, worker_init
from mlof.seeding import derive_seed

__all__ = ["Split", "split_indices", "published_splits", "Task", "TaskSampler"]


@dataclass(frozen=True)
class Split:
    """Meta-train and evaluation pair indices (sorted), and the split's name.

    Iterating a split (or ``len``) goes over its meta-train indices: ``dataset.select(list(split))``.
    """

    train: list[int]
    eval: list[int]
    name: str

    def __iter__(self) -> Iterator[int]:
        return iter(self.train)

    def __len__(self) -> int:
        return len(self.train)


_PUBLISHED = {"kitti15": (pub.KITTI15_SPLITS, pub.KITTI15_RELEASE_NUMBERS, pub.KITTI15_TOTAL),
              "sintel": (pub.SINTEL_SPLITS, pub.SINTEL_RELEASE_NUMBERS, pub.SINTEL_TOTAL)}


def published_splits(dataset_name: str) -> list[str]:
    """Names of the splits published for ``dataset_name`` (empty for datasets without published splits)."""
    key = _dataset_key(dataset_name)
    return sorted(_PUBLISHED[key][0]) if key in _PUBLISHED else []


def _dataset_key(name: str) -> str:
    key = str(name).lower()
    return "kitti15" if key in ("kitti", "kitti15", "kitti2015") else key


def _canonical_sm(name: str) -> str | None:
    m = re.fullmatch(r"sm(\d+)[_-](\d+)", name.strip().lower())
    return f"Sm{int(m.group(1))}_{int(m.group(2))}" if m else None


def _published(key: str, name: str, n_total: int | None) -> Split:
    table, numbers, total = _PUBLISHED[key]
    if n_total is not None and n_total != total:
        raise ValueError(f"n_total: the published {key} split {name!r} indexes {total} pairs, got {n_total} "
                         f"(use the full training set of one pass)")
    train = sorted(table[name])
    if key == "kitti15" and name in pub.KITTI15_EVAL:
        ev = sorted(pub.KITTI15_EVAL[name])
    else:
        excluded = set(pub.KITTI15_EXCLUDED.get(name, ())) if key == "kitti15" else set()
        ev = sorted(set(range(total)) - set(train) - excluded)
    return Split(train, ev, f"{key}:{name}")


def split_indices(dataset_name: str, split: str, n_total: int | None = None) -> Split:
    """Meta-train / evaluation indices of ``split`` for ``dataset_name`` (see the module docstring).

    ``n_total`` (number of pairs in the dataset) is required by the general splits and checked against the
    published ones.
    """
    key = _dataset_key(dataset_name)
    text = str(split).strip()
    low = text.lower()
    if key in _PUBLISHED:
        table, numbers, _ = _PUBLISHED[key]
        m = re.fullmatch(r"(?:crossval|cv)-?(\d+)", low)
        if m and int(m.group(1)) in (1, 2, 3):
            return _published(key, f"Sm20_{int(m.group(1))}", n_total)
        m = re.fullmatch(r"release-?(\d+)", low)
        if m:
            num = int(m.group(1))
            if num not in numbers:
                raise ValueError(f"split: the release has no {key} --crossval {num} (has {sorted(numbers)})")
            return _published(key, numbers[num], n_total)
        sm = _canonical_sm(text)
        if sm is not None:
            if sm not in table:
                raise ValueError(f"split: {text!r} is not a published {key} split; published: {sorted(table)}")
            return _published(key, sm, n_total)
    return _general(key, low, n_total)


def _general(key: str, text: str, n_total: int | None) -> Split:
    cv = re.fullmatch(r"(?:crossval|cv)-?(\d+)(?:/(\d+))?", text)
    ns = re.fullmatch(r"n\s*=\s*(\d+)\s*(?:,\s*seed\s*=\s*(\d+))?", text)
    if not (cv or ns):
        published = f" or a published one ({', '.join(published_splits(key))})" if key in _PUBLISHED else ""
        raise ValueError(f"split: {text!r} not understood; use 'crossval-k', 'crossval-k/K', "
                         f"'n=20,seed=0'{published}")
    if n_total is None and key in _PUBLISHED:
        n_total = _PUBLISHED[key][2]
    if n_total is None or int(n_total) < 2:
        raise ValueError(f"n_total: split {text!r} of {key} needs the number of pairs (>= 2), got {n_total}")
    n_total = int(n_total)
    if cv:
        k, folds = int(cv.group(1)), int(cv.group(2) or 10)
        if not 1 <= k <= folds or folds > n_total:
            raise ValueError(f"split: {text!r} needs 1 <= k <= K <= n_total ({n_total})")
        perm = np.random.default_rng(0).permutation(n_total)
        train = sorted(int(i) for i in np.array_split(perm, folds)[k - 1])
        return Split(train, sorted(set(range(n_total)) - set(train)), f"{key}:crossval-{k}/{folds}")
    n, seed = int(ns.group(1)), int(ns.group(2) or 0)
    if not 1 <= n < n_total:
        raise ValueError(f"split: n={n} must be between 1 and n_total - 1 ({n_total - 1})")
    train = sorted(int(i) for i in np.random.default_rng(seed).choice(n_total, n, replace=False))
    return Split(train, sorted(set(range(n_total)) - set(train)), f"{key}:n={n},seed={seed}")


# ----------------------------------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """One task: dataset indices, the sample seed of each pair, and the loaded samples (same order)."""

    indices: list[int]
    samples: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def collated(self, pad: bool = True) -> dict[str, Any]:
        """The task's pairs as one batch (:func:`mlof.data.collate`): img1 / img2 k x 3 x H x W, flow k x 2 x H x W."""
        return collate(self.samples, pad=pad)


class TaskSampler:
    """Batches of tasks from ``dataset`` (optionally restricted to ``indices``, e.g. ``split.train``): the tasks of
    ``mlof meta-train``.

    Batch ``s`` (an outer step) holds ``tasks_per_batch`` tasks of ``pairs_per_task`` pairs. They come from the
    ``(seed, step)`` plan of :mod:`mlof.data.loaders` over the pool: ``StepPlan(len(pool), tasks_per_batch *
    pairs_per_task, seed, group=pairs_per_task)``, a task being ``pairs_per_task`` consecutive entries of the
    step's batch, every pair loaded under its own sample seed. ``group_by="scene"``: the pairs of a task are
    consecutive pairs of one scene (``meta(i)["scene"]``); the plan then runs over those fixed tasks.

    Iterating yields the batches of the current epoch: steps ``epoch * len(self) .. (epoch + 1) * len(self) - 1``
    (``set_epoch``; ``reshuffle=False``: always the first ``len(self)`` steps, the release's fixed batches).
    ``len()`` = ceil(tasks in the pool / tasks_per_batch) (floor with ``drop_last``); every batch is full.
    ``load=False`` yields tasks with indices and seeds only. :meth:`loader` gives any range of steps as a
    DataLoader (workers, one process's share under torchrun).
    """

    def __init__(self, dataset: Any, pairs_per_task: int = 1, tasks_per_batch: int = 5, seed: int = 0,
                 indices: Sequence[int] | None = None, reshuffle: bool = True, drop_last: bool = False,
                 group_by: str | None = None, load: bool = True):
        if pairs_per_task < 1 or tasks_per_batch < 1:
            raise ValueError(f"pairs_per_task and tasks_per_batch must be >= 1, got {pairs_per_task}, "
                             f"{tasks_per_batch}")
        if group_by not in (None, "scene"):
            raise ValueError(f"group_by must be None or 'scene', got {group_by!r}")
        n = len(dataset)
        self.pool = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.pool if not 0 <= i < n]
        if bad:
            raise ValueError(f"indices: {bad[:5]} out of range for a dataset of {n} pairs")
        if len(self.pool) < pairs_per_task:
            raise ValueError(f"{len(self.pool)} pairs cannot make a task of {pairs_per_task} pairs")
        self.dataset, self.pairs_per_task, self.tasks_per_batch = dataset, pairs_per_task, tasks_per_batch
        self.seed, self.reshuffle, self.drop_last, self.group_by, self.load = seed, reshuffle, drop_last, \
            group_by, load
        self.epoch = 0
        k = pairs_per_task
        if group_by == "scene":
            groups: dict[str, list[int]] = {}
            for i in self.pool:
                groups.setdefault(str(dataset.meta(i)["scene"]), []).append(i)
            self.units = [members[j:j + k] for scene in sorted(groups) for members in [groups[scene]]
                          for j in range(0, len(members) - k + 1, k)]
            if not self.units:
                raise ValueError(f"no scene has {k} pairs to make a task")
            self.plan = StepPlan(len(self.units), tasks_per_batch, seed)
        else:
            self.units = None
            self.plan = StepPlan(len(self.pool), tasks_per_batch * k, seed, group=k)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.units) if self.units is not None else len(self.pool) // self.pairs_per_task
        return n // self.tasks_per_batch if self.drop_last else -(-n // self.tasks_per_batch)

    def step_pairs(self, step: int, rank: int = 0, world_size: int = 1) -> list[list[tuple[int, int]]]:
        """The tasks of outer step ``step`` (this rank's share): per task its (dataset index, sample seed) pairs."""
        k = self.pairs_per_task
        if self.units is None:
            batch = self.plan.local_batch(step, rank, world_size)
            flat = [(self.pool[p], s) for p, s in batch]
            return [flat[j:j + k] for j in range(0, len(flat), k)]
        batch = self.plan.global_batch(step)
        return [[(i, derive_seed(s, m)) for m, i in enumerate(self.units[u])]
                for u, s in (batch[j] for j in shard(len(batch), rank, world_size))]

    def loader(self, start: int = 0, stop: int | None = None, num_workers: int = 0, rank: int = 0,
               world_size: int = 1) -> DataLoader:
        """Steps ``start .. stop-1`` (``stop`` None: ``start + len(self)``) as a DataLoader of lists of loaded
        ``Task`` (rank ``rank``'s share of each step; ``num_workers`` load in parallel, same samples)."""
        stop = start + len(self) if stop is None else stop
        return DataLoader(_IndexedSamples(self.dataset), batch_sampler=_TaskSteps(self, start, stop, rank, world_size),
                          collate_fn=functools.partial(_to_tasks, k=self.pairs_per_task), num_workers=num_workers,
                          worker_init_fn=worker_init if num_workers > 0 else None, persistent_workers=False)

    def __iter__(self) -> Iterator[list[Task]]:
        start = self.epoch * len(self) if self.reshuffle else 0
        if not self.load:
            for step in range(start, start + len(self)):
                yield [Task([i for i, _ in t], [], [s for _, s in t]) for t in self.step_pairs(step)]
            return
        yield from self.loader(start)


class _IndexedSamples(SeededSamples):
    """``(index, seed)`` -> ``(index, seed, sample)`` (the task keeps which pairs it holds)."""

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return item[0], item[1], super().__getitem__(item)


class _TaskSteps(Sampler[list[tuple[int, int]]]):
    """Yields the (index, seed) pairs of steps ``start .. stop-1`` of a TaskSampler, flattened."""

    def __init__(self, sampler: TaskSampler, start: int, stop: int, rank: int, world_size: int):
        self.sampler, self.start, self.stop, self.rank, self.world_size = sampler, start, stop, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield [p for task in self.sampler.step_pairs(step, self.rank, self.world_size) for p in task]


def _to_tasks(items: list[tuple[int, int, dict[str, Any]]], k: int) -> list[Task]:
    return [Task([i for i, _, _ in chunk], [x for _, _, x in chunk], [s for _, s, _ in chunk])
            for chunk in (items[j:j + k] for j in range(0, len(items), k))]
