"""Frame pairs of a video file, decoded on demand with OpenCV (``cv2.VideoCapture``, FFmpeg backend).

Random access by frame index (seek, then read); consecutive requests are served by reading on without a
seek, so a sequential pass decodes each frame once. The capture is opened lazily in each process, so the
dataset can be sent to DataLoader workers (a capture cannot be pickled).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mlof.data.base import FlowDataset, RawSample, layout_error, make_meta

__all__ = ["VideoDataset", "read_video"]

_LAYOUT = "  a video file OpenCV/FFmpeg can decode (.mp4, .avi, .mkv, .mov, ...); pairs are frames (i, i+step)"


class VideoDataset(FlowDataset):
    """Pairs (i, i + step) of the frames of ``path``; no ground truth. Length from the container's frame count."""

    name = "video"

    def __init__(self, path: str | os.PathLike, *, step: int = 1, **options: Any):
        super().__init__(**options)
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise layout_error(self.path, "video file does not exist", _LAYOUT)
        if int(step) < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.step = int(step)
        cap = self._open()
        try:
            self.num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        finally:
            cap.release()
        if self.num_frames < self.step + 1:
            raise layout_error(self.path, f"the container reports {self.num_frames} frames; need at least "
                                          f"{self.step + 1}", _LAYOUT)
        self._cap: Any = None
        self._pid = -1
        self._next = -1           # index of the frame the capture will return on the next read()

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise layout_error(self.path, "OpenCV cannot open this file as a video (unknown container/codec "
                                          "or not a video)", _LAYOUT)
        return cap

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cap"], state["_pid"], state["_next"] = None, -1, -1
        return state

    def __len__(self) -> int:
        return self.num_frames - self.step

    def frame(self, k: int) -> np.ndarray:
        """Frame ``k`` as H x W x 3 uint8 RGB."""
        if not 0 <= k < self.num_frames:
            raise IndexError(f"{self.path}: frame {k} out of range (0..{self.num_frames - 1})")
        if self._cap is None or self._pid != os.getpid():
            self._cap, self._pid, self._next = self._open(), os.getpid(), 0
        if k != self._next:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, k)
        ok, img = self._cap.read()
        if not ok or img is None:
            self._next = -1
            raise ValueError(f"{self.path}: could not decode frame {k} (the container reports "
                             f"{self.num_frames} frames)")
        self._next = k + 1
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        return np.ascontiguousarray(img[:, :, 2::-1])

    def load_raw(self, index: int) -> RawSample:
        return {"img1": self.frame(index), "img2": self.frame(index + self.step)}

    def meta(self, index: int) -> dict[str, Any]:
        return make_meta(self.name, index, scene=self.path.stem, frame=index, img1=str(self.path),
                         img2=str(self.path))

    def __del__(self) -> None:
        cap = getattr(self, "_cap", None)
        if cap is not None:
            cap.release()


def read_video(root: Any, split: str = "training", *, step: int = 1, **options: Any) -> VideoDataset:
    """``build_dataset("video", path)``: ``root`` is the video file; ``split`` is ignored (no ground truth)."""
    if root is None:
        raise ValueError(f"video: root is None; give the video file. Expected:\n{_LAYOUT}")
    return VideoDataset(root, step=step, **options)
