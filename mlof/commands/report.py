"""What the commands print: one process speaks (rank 0 under torchrun), numbers in one format."""
from __future__ import annotations

import os
from typing import Any

__all__ = ["say", "fmt", "report_training"]


def say(msg: str = "") -> None:
    """Print ``msg`` on rank 0 only (every rank of a torchrun job runs the command)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, flush=True)


def fmt(x: Any) -> str:
    """A metric with 3 decimals, ``n/a`` for None."""
    return "n/a" if x is None else f"{x:.3f}"


def report_training(kind: str, summary: dict[str, Any]) -> None:
    """The closing lines of ``pretrain`` / ``meta-train``: steps, first metrics, run folder, checkpoint."""
    train = summary.get("train") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(train.items())[:4])
    say(f"{kind}: {summary['step']} steps done ({summary['world_size']} process(es), "
        f"{summary['wall_time_s']:.0f} s){': ' + shown if shown else ''}")
    say(f"  run folder:  {summary['run_dir']}   (tensorboard --logdir {summary['run_dir']})")
    say(f"  checkpoint:  {summary['checkpoint']}")
