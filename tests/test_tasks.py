"""Meta-learning splits (published MLOF indices, general mechanism) and the task sampler."""
from __future__ import annotations

import re

import pytest
import torch

from mlof.data import TaskSampler, published_splits, split_indices
from mlof.data import mlof_splits as pub


def test_kitti_crossval_1_is_the_published_split():
    s = split_indices("kitti15", "crossval-1")
    assert s.train == list(range(5, 200, 10)) and len(s.train) == 20
    assert 104 not in s.eval and len(s.eval) == 179 and not set(s.train) & set(s.eval)
    assert split_indices("kitti", "Sm20_1") == s == split_indices("kitti15", "release-1", n_total=200)
    assert list(s) == s.train and len(s) == 20                  # a split iterates over its meta-train ids


def test_kitti_published_tables():
    names = published_splits("kitti15")
    assert {re.match(r"Sm(\d+)_", n).group(1) for n in names} == {"5", "10", "20", "50", "100", "160"}
    for name in names:
        s = split_indices("kitti15", name)
        n = int(re.match(r"Sm(\d+)_", name).group(1))
        assert len(s.train) == len(set(s.train)) == n, name
        assert all(0 <= i < 200 for i in s.train + s.eval) and not set(s.train) & set(s.eval)
    for name in ("Sm160_1", "Sm160_2", "Sm160_3"):   # published eval lists = complement of the train ids
        s = split_indices("kitti15", name)
        assert set(s.eval) == set(range(200)) - set(s.train) == set(pub.KITTI15_EVAL[name])
    assert split_indices("kitti15", "Sm5_1").train == [0, 50, 100, 150, 199]
    assert split_indices("kitti15", "sm10-2").train == list(range(10, 200, 20))
    assert split_indices("kitti15", "crossval-2").train[:3] == [4, 16, 28]
    assert split_indices("kitti15", "release-14").name == "kitti15:Sm50_1"
    assert len(split_indices("kitti15", "Sm5_3").eval) == 195


def test_sintel_published_and_errors():
    s = split_indices("sintel", "crossval-1", n_total=1041)
    assert len(s.train) == 20 and 611 in s.train and len(s.eval) == 1021
    assert len(split_indices("sintel", "Sm100_1").train) == 100
    with pytest.raises(ValueError, match="1041"):
        split_indices("sintel", "crossval-1", n_total=23)
    with pytest.raises(ValueError, match="not a published"):
        split_indices("kitti15", "Sm30_1")
    with pytest.raises(ValueError, match="not understood"):
        split_indices("kitti15", "halves")


def test_general_mechanism():
    folds = [split_indices("chairs", f"crossval-{k}/4", n_total=22) for k in range(1, 5)]
    allt = sorted(i for f in folds for i in f.train)
    assert allt == list(range(22))                                  # folds partition the pairs
    for f in folds:
        assert sorted(f.train + f.eval) == list(range(22))
    assert len(split_indices("synthetic", "crossval-3", n_total=100).train) == 10   # K = 10 by default
    a = split_indices("synthetic", "n=20,seed=0", n_total=100)
    assert len(a.train) == 20 and a == split_indices("synthetic", "n=20, seed=0", n_total=100)
    assert a.train != split_indices("synthetic", "n=20,seed=1", n_total=100).train
    assert split_indices("kitti15", "crossval-5/10", n_total=200).name == "kitti15:crossval-5/10"
    with pytest.raises(ValueError, match="n_total"):
        split_indices("synthetic", "n=20")
    with pytest.raises(ValueError, match="between"):
        split_indices("synthetic", "n=200", n_total=100)


class _Toy:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"img1": torch.full((3, 4, 4), float(i)), "meta": {"index": i}}

    def meta(self, i):
        return {"scene": f"s{i // 4}"}


def test_task_sampler():
    ds = _Toy(20)
    ts = TaskSampler(ds, pairs_per_task=2, tasks_per_batch=3, seed=0, indices=range(12))
    batches = list(ts)
    assert len(batches) == len(ts) == 2 and [len(b) for b in batches] == [3, 3]
    idx = [i for b in batches for t in b for i in t.indices]
    assert sorted(idx) == list(range(12))
    t = batches[0][0]
    assert [float(s["img1"][0, 0, 0]) for s in t.samples] == [float(i) for i in t.indices]
    assert t.collated()["img1"].shape == (2, 3, 4, 4)
    again = [[tk.indices for tk in b] for b in TaskSampler(ds, 2, 3, seed=0, indices=range(12))]
    assert again == [[tk.indices for tk in b] for b in batches]
    ts.set_epoch(1)
    assert [[tk.indices for tk in b] for b in ts] != again
    fixed = TaskSampler(ds, 2, 3, seed=0, indices=range(12), reshuffle=False)
    e0 = [[tk.indices for tk in b] for b in fixed]
    fixed.set_epoch(5)
    assert [[tk.indices for tk in b] for b in fixed] == e0           # the release's fixed batches
    drop = TaskSampler(ds, 1, 3, seed=0, indices=range(7), drop_last=True, load=False)
    assert len(drop) == 2 and all(not t.samples for b in drop for t in b)
    scene = TaskSampler(ds, 2, 2, seed=0, group_by="scene", load=False)
    for b in scene:
        for tk in b:
            assert len({i // 4 for i in tk.indices}) == 1
    with pytest.raises(ValueError, match="out of range"):
        TaskSampler(ds, indices=[25])
