"""Data: dataset readers, augmentation, meta-learning tasks and splits, synthetic domain-shift generator, loaders.

Main entry points (see docs/data.md):
    build_dataset(name, root, split="training", **options) -> Dataset   every reader and the generator
    build_augmentor(preset_or_dict, **overrides)                         RAFT-lineage / MLOF augmentation
    split_indices(dataset, split, n_total) / TaskSampler(...)            meta-learning splits and tasks
    Domain, SyntheticFlowDataset, write_tree                              synthetic data with exact flow
    collate, build_loader, StepPlan, step_loader                           batching: the one (seed, step) data plan
"""
from __future__ import annotations

from mlof.data.augment import PRESETS, FlowAugmentor, SparseFlowAugmentor, build_augmentor
from mlof.data.base import DatasetLayoutError, FlowDataset, PairRecord, RecordDataset
from mlof.data.datasets import DATASETS, available_datasets, build_dataset
from mlof.data.loaders import SeededSamples, StepPlan, build_loader, collate, step_loader
from mlof.data.synthetic import DOMAINS, Domain, SyntheticFlowDataset, get_domain, render_sample, write_tree
from mlof.data.tasks import Split, Task, TaskSampler, published_splits, split_indices

__all__ = [
    "build_dataset", "available_datasets", "DATASETS", "FlowDataset", "RecordDataset", "PairRecord",
    "DatasetLayoutError",
    "FlowAugmentor", "SparseFlowAugmentor", "build_augmentor", "PRESETS",
    "Split", "Task", "TaskSampler", "split_indices", "published_splits",
    "Domain", "DOMAINS", "get_domain", "SyntheticFlowDataset", "render_sample", "write_tree",
    "collate", "build_loader", "StepPlan", "step_loader", "SeededSamples",
]
