"""Checkpoint files as other toolkits write them (mmflow/mmcv: numpy scalars in `meta`)."""
import numpy as np
import pytest
import torch

import backbones
from backbones.checkpoint import CheckpointError


def test_mmcv_style_file_with_numpy_meta_loads(tmp_path):
    model = backbones.build("raft_small")
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "mmflow_style.pth"
    torch.save({"meta": {"epoch": np.int64(3), "lr": np.float64(1e-4), "shape": np.array([1, 2])},
                "state_dict": sd, "optimizer": {}}, path)
    other = backbones.build("raft_small", checkpoint=path)
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading refuses a file that references arbitrary callables, with the file named."""
    import os
    import pickle

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": os.system}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        backbones.build("raft_small", checkpoint=path)
