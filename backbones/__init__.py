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
from backbones.base import FlowOutput, InputPadder, validate_images
from backbones.registry import (available, build, capabilities, count_parameters, load_weights, param_groups,
                                read_checkpoint_file, register)
from backbones import weights

__all__ = [
    "FlowOutput", "InputPadder", "validate_images",
    "available", "build", "capabilities", "param_groups", "register", "load_weights", "count_parameters",
    "read_checkpoint_file",
    "weights",
]
