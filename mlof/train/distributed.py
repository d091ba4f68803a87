"""Multi-process data parallelism without wrapping the model.

Launch with ``torchrun --nproc_per_node=N -m mlof.cli pretrain ...``: every process reads the same
global batch plan and takes its shard; after ``backward`` the gradients are averaged with weights
``n_local / n_global`` (so uneven shards still give the global-batch mean), then every rank takes the
same optimizer step. This works equally for plain training and for meta-learning, where the forward
pass goes through ``torch.func`` and a ``DistributedDataParallel`` wrapper would see no forward call.
Backend: gloo on CPU, nccl on CUDA. Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "init_distributed", "sync_gradients", "broadcast_module", "all_ranks_true",
           "reduce_metrics", "resolve_device", "shutdown", "barrier"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's CUDA device when there is one, else CPU; ``cpu``/``cuda``/``cuda:K`` as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' asked for but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a torch device ({e})") from e


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a 1-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a 1-process run)."""
    if ctx.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sync_gradients(params: Iterable[nn.Parameter], n_local: int, n_global: int, ctx: DistContext) -> None:
    """Average gradients over ranks, weighting each rank by its share of the global batch.

    Each rank's loss is a mean over its ``n_local`` items; the sum over ranks of
    ``grad * n_local / n_global`` is the gradient of the mean over the global batch. One flat all-reduce.
    """
    if not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * (n_local / n_global)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        k = p.numel()
        p.grad = flat[offset:offset + k].view_as(p).clone()
        offset += k


def all_ranks_true(flag: bool, ctx: DistContext) -> bool:
    """``flag`` and-ed over every process (itself when not distributed): a decision all ranks share."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting points)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def reduce_metrics(metrics: Mapping[str, float], n_local: int, n_global: int,
                   ctx: DistContext) -> dict[str, float]:
    """Global-batch means of per-rank means (same weighting as ``sync_gradients``)."""
    if not ctx.distributed or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    vec = torch.tensor([float(metrics[k]) * n_local / n_global for k in keys], dtype=torch.float64)
    if ctx.device.type == "cuda":
        vec = vec.to(ctx.device)
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return dict(zip(keys, vec.tolist()))
