"""Optical-flow networks, each weight-compatible with its official release.

    >>> import backbones
    >>> backbones.available()
    ['gma', 'kpaflow', 'liteflownet2', 'memflow', 'raft', 'raft_small', 'upflow']
    >>> model = backbones.build("raft", checkpoint="raft-things.pth")
    >>> model = backbones.build("raft", weights="things")   # official file, fetched + verified (backbones.weights)
    >>> out = model(image1, image2, iters=12)   # float N x 3 x H x W in 0..255
    >>> out.flow.shape                          # N x 2 x H x W, pixels, (u, v)

`backbones` never imports `mlof`: it is usable on its own.
"""
from backbones.base import Capabilities, FlowOutput, InputPadder, InvalidImageError, validate_images
from backbones.builder import build, build_from_checkpoint
from backbones.checkpoint import (Checkpoint, CheckpointError, CheckpointMismatchError, load_weights, read_checkpoint,
                                  read_checkpoint_file)
from backbones.registry import available, capabilities, count_parameters, param_groups, register
from backbones import weights

__all__ = [
    "Capabilities", "FlowOutput", "InputPadder", "InvalidImageError", "validate_images",
    "available", "build", "build_from_checkpoint", "capabilities", "param_groups", "register", "count_parameters",
    "Checkpoint", "CheckpointError", "CheckpointMismatchError", "load_weights", "read_checkpoint",
    "read_checkpoint_file",
    "weights",
]
