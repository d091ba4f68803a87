"""Per-pair outputs of ``mlof infer``, ``mlof adapt`` and ``mlof evaluate``: names, sizes, streaming, resume.

* **Names after the inputs** (``output_stem``): a pair is named after its first frame's file, so Sintel's
  ``alley_1/frame_0001.png`` gives ``flows/alley_1/frame_0001.flo`` and KITTI's ``image_2/000000_10.png`` gives
  ``flows/000000_10.png`` (KITTI's 16-bit PNG format, what ``mlof.io.read_flow`` and the KITTI devkit read).
* **Smaller inputs** (``ResizePlan``): ``resize=`` (a factor or ``[H, W]``) and ``max_side=`` scale the frames
  before the network; flows are scaled back (size and values) to the original resolution, so files and
  metrics are at full resolution against full-resolution ground truth.
* **Streaming** (``PairStore``): each pair's files and its record (``pairs/NNNNNN.json``, the metrics and
  whatever the summary needs) are written, atomically, as soon as the pair is done; the summary is computed
  from the records on disk, so memory stays bounded whatever the number of pairs.
* **Resume**: a pair whose record exists is finished (its record is written last). ``--resume`` skips
  finished pairs; the final summary is computed from all records, so it equals an uninterrupted run's.

Run-folder layout written here::

    flows/<stem>.flo|png|pfm          the (adapted) prediction at the input's resolution
    flows_before/<stem>.<ext>         adapt / evaluate with adaptation: the unadapted prediction
    images/<stem>_panel.png           frames, flows, ground truth and error, colour key (unless images=false)
    images/<stem>_color.png           colour-coded flow (``_before_color.png`` for the unadapted one)
    pairs/NNNNNN.json                 one record per finished pair (NNNNNN = position in the run)
    state/online.pt                   adapt online=true: the carried weights after the last finished pair
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from backbones.checkpoint import read_checkpoint_file
from backbones.layers.upsample import resize_flow
from mlof.config import ConfigError, diff_keys, to_dict
from mlof.io import write_flow, write_image
from mlof.runs.rundir import RunDir, jsonable
from mlof.utils import atomic_open
from mlof.viz import flow_panel, flow_to_rgb

__all__ = ["output_stem", "flow_format_for", "ResizePlan", "PairStore", "prepare_run_folder", "pair_seed",
           "FLOW_FORMATS"]

FLOW_FORMATS = ("auto", "flo", "png", "pfm")
# Keys that may differ between a run and its --resume (they do not change any number).
_RESUME_FREE = ("device", "overwrite", "resume")
# What a previous run of these commands leaves; --overwrite removes exactly these.
_OUTPUTS = ("pairs", "flows", "flows_before", "images", "state", "metrics.json", "summary.png")


def output_stem(sample: Mapping[str, Any], position: int) -> str:
    """The file stem of a pair's outputs, after its first frame (``frame_0001``, ``alley_1/frame_0001``,
    ``000000_10``); a scene becomes a subfolder when its frames' names do not already carry it."""
    meta = sample.get("meta") or {}
    if meta.get("name"):
        return _safe(str(meta["name"]))
    scene = str(meta.get("scene") or "")
    frame = meta.get("frame", position)
    img1 = str((meta.get("paths") or {}).get("img1") or "")
    if meta.get("dataset") == "video" or not img1:
        base = f"{Path(scene).name}_{int(frame):06d}" if scene else f"{position:06d}"
        return _safe(base)
    stem = Path(img1).stem
    if scene and meta.get("dataset") != "folder" and not stem.startswith(scene):
        return f"{_safe(scene)}/{_safe(stem)}"   # Sintel: alley_1/frame_0001 (frame names repeat per scene)
    return _safe(stem)


def _safe(name: str) -> str:
    """A name usable as a (relative) path: no absolute paths, no '..', separators kept as subfolders."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "pair"


def flow_format_for(fmt: str, dataset: str | None) -> str:
    """``auto``: KITTI's 16-bit PNG for KITTI datasets, Middlebury ``.flo`` otherwise."""
    if fmt not in FLOW_FORMATS:
        raise ConfigError(f"flow_format: {fmt!r} is not one of {', '.join(FLOW_FORMATS)}")
    if fmt != "auto":
        return fmt
    return "png" if (dataset or "").startswith("kitti") else "flo"


def pair_seed(seed: int, position: int) -> int:
    """The seed of pair ``position``: every pair's randomness depends on (seed, position) only, so a resumed
    run draws the same numbers as an uninterrupted one."""
    return int(np.random.SeedSequence([int(seed) % (1 << 63), int(position)]).generate_state(1)[0])


@dataclass(frozen=True)
class ResizePlan:
    """How frames are scaled before the network: ``resize`` a factor (0.5) or a size ``[H, W]``;
    ``max_side`` caps the longer side (0: no cap). Applied in that order; aspect ratio kept by both except an
    explicit ``[H, W]``."""

    resize: Any = None
    max_side: int = 0

    def __post_init__(self) -> None:
        r = self.resize
        if r is not None:
            if isinstance(r, (int, float)) and not isinstance(r, bool):
                if not (math.isfinite(r) and r > 0):
                    raise ConfigError(f"resize: a scale factor must be a positive number, got {r!r}")
            elif isinstance(r, (list, tuple)):
                if len(r) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in r):
                    raise ConfigError(f"resize: a size must be [H, W] with positive integers, got {list(r)!r}")
            else:
                raise ConfigError(f"resize: give a factor (0.5) or a size [H, W], got {r!r}")
        if not isinstance(self.max_side, int) or isinstance(self.max_side, bool) or self.max_side < 0:
            raise ConfigError(f"max_side: must be an integer >= 0 (0: off), got {self.max_side!r}")

    @property
    def active(self) -> bool:
        return self.resize is not None or self.max_side > 0

    def size_for(self, h: int, w: int) -> tuple[int, int]:
        """The network's input size for frames of h x w."""
        if isinstance(self.resize, (list, tuple)):
            nh, nw = int(self.resize[0]), int(self.resize[1])
        elif self.resize is not None:
            nh, nw = max(1, round(h * float(self.resize))), max(1, round(w * float(self.resize)))
        else:
            nh, nw = h, w
        if self.max_side and max(nh, nw) > self.max_side:
            s = self.max_side / max(nh, nw)
            nh, nw = max(1, round(nh * s)), max(1, round(nw * s))
        return nh, nw

    def images(self, *imgs: torch.Tensor) -> list[torch.Tensor]:
        """Scale images N x 3 x H x W (0..255) to ``size_for(H, W)``: bilinear, antialiased when shrinking."""
        h, w = imgs[0].shape[-2:]
        size = self.size_for(h, w)
        if size == (h, w):
            return list(imgs)
        shrink = size[0] < h or size[1] < w
        return [F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
                for x in imgs]

    @staticmethod
    def flow_back(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A flow N x 2 x h x w computed on scaled frames -> N x 2 x H x W in pixels of the original frames
        (bilinear resampling; u scaled by W / w, v by H / h: ``backbones.layers.upsample.resize_flow``)."""
        return resize_flow(flow, size, align_corners=False)


def prepare_run_folder(cfg: Any, out_dir: str, name: str, *, resume: bool, overwrite: bool) -> None:
    """Check (before anything is written) that ``<out_dir>/<name>`` may be used, and clear it for
    ``overwrite``. A folder holding outputs needs ``resume`` or ``overwrite``; ``resume`` needs the folder and
    the same configuration (``device`` may change). Raises ``ConfigError`` naming the folder and the keys."""
    path = Path(out_dir) / name
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite (overwrite=true) exclude each other")
    has_outputs = path.is_dir() and any((path / o).exists() for o in _OUTPUTS)
    if resume:
        saved = path / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {path} holds no run to continue (no config.yaml)")

        old = to_dict(OmegaConf.load(saved))
        new = to_dict(cfg)
        changed = [k for k in diff_keys(old, new) if k.split(".")[0] not in _RESUME_FREE]
        if changed:
            raise ConfigError(f"--resume: the configuration differs from {saved} in {', '.join(changed)}; "
                              f"resume with the same settings, or use another name= / --overwrite")
        for o in _OUTPUTS:   # half-written temporary files of a killed run (atomic_open's .NAME.XXXX.tmp)
            if (path / o).is_dir():
                for tmp in (path / o).rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
        return
    if has_outputs and not overwrite:
        raise ConfigError(f"{path} already holds the outputs of a run; --resume continues it, --overwrite "
                          f"(overwrite=true) starts it over, or choose another name=")
    if overwrite and path.is_dir():
        for o in _OUTPUTS:
            p = path / o
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for events in path.glob("events.out.tfevents.*"):
            events.unlink()


class PairStore:
    """Writes each pair's files and record into a run folder as soon as the pair is done (see module doc).

    flow_format: ``flo`` | ``png`` (KITTI 16-bit) | ``pfm``; images: write panels and colour images.
    """

    def __init__(self, run: RunDir, flow_format: str = "flo", images: bool = True, save_flows: bool = True):
        if flow_format not in FLOW_FORMATS[1:]:
            raise ConfigError(f"flow_format: {flow_format!r} is not one of {', '.join(FLOW_FORMATS[1:])}")
        self.run, self.fmt, self.images, self.save_flows = run, flow_format, images, save_flows
        self.path = run.path

    # -- records ---------------------------------------------------------------------------------------------
    def _record_path(self, position: int) -> Path:
        return self.path / "pairs" / f"{position:06d}.json"

    def done(self, position: int) -> dict[str, Any] | None:
        """The record of a finished pair, or None (also for a record that cannot be read)."""
        p = self._record_path(position)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def finish(self, position: int, record: Mapping[str, Any]) -> None:
        """Mark pair ``position`` finished with ``record`` (written last, atomically)."""
        if not self.run.is_main:
            return
        with atomic_open(self._record_path(position), "w") as f:
            json.dump(jsonable(record), f)

    def records(self, n: int) -> Iterator[dict[str, Any]]:
        """The records of positions 0..n-1 in order, read from disk one at a time (missing ones raise)."""
        for k in range(n):
            rec = self.done(k)
            if rec is None:
                raise RuntimeError(f"{self._record_path(k)} is missing or unreadable: pair {k} did not finish")
            yield rec

    # -- files -----------------------------------------------------------------------------------------------
    def write_flow(self, stem: str, flow: torch.Tensor, folder: str = "flows", color_suffix: str = "",
                   max_radius: float | None = None) -> None:
        """flow: 2 x H x W (pixels). Writes ``<folder>/<stem>.<fmt>`` and ``images/<stem><suffix>_color.png``."""
        if not self.run.is_main:
            return

        f = flow.detach().float().cpu().permute(1, 2, 0).numpy()
        if self.save_flows:
            path = self.path / folder / f"{stem}.{self.fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_flow(path, f, clip=True) if self.fmt == "png" else write_flow(path, f)
        if self.images:
            path = self.path / "images" / f"{stem}{color_suffix}_color.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, flow_to_rgb(f, max_radius=max_radius))

    def write_panel(self, stem: str, sample: Mapping[str, Any], flow: torch.Tensor,
                    before: torch.Tensor | None = None) -> None:
        """``images/<stem>_panel.png``: frames, prediction (and ``before``), ground truth and error where the
        sample has it, colour key. Flows 2 x H x W at the sample's resolution."""
        if not (self.run.is_main and self.images):
            return

        img = flow_panel([sample["img1"], sample["img2"]], flow.detach().cpu(), gt=sample.get("flow"),
                         valid=sample.get("valid"), before=None if before is None else before.detach().cpu())
        self.write_picture(f"{stem}_panel.png", img)

    def write_picture(self, name: str, img: np.ndarray) -> None:
        """``images/<name>``, shrunk to at most ``PANEL_MAX_WIDTH`` px wide (a Sintel panel of four full-size
        tiles is 4100 px wide; the full-resolution colour flows are written separately)."""
        if not (self.run.is_main and self.images):
            return

        write_image(self.path / "images" / name, fit_width(img, PANEL_MAX_WIDTH))

    def write_online_state(self, state: Mapping[str, Any]) -> None:
        """``state/online.pt`` (tensors and ints; read back with ``weights_only=True``)."""
        if not self.run.is_main:
            return
        with atomic_open(self.path / "state" / "online.pt", "wb") as f:
            torch.save(dict(state), f)

    def read_online_state(self) -> dict[str, Any] | None:
        p = self.path / "state" / "online.pt"
        if not p.is_file():
            return None
        return read_checkpoint_file(p)   # the one checkpoint reader (one-line errors)


def open_streaming_run(cfg: Any, obj: Any, fmt: str, *, resume: bool, overwrite: bool) -> tuple[RunDir, PairStore]:
    """Claim the run folder of ``infer`` / ``adapt`` / ``evaluate`` once everything has been checked: refuse or
    empty an existing one (``prepare_run_folder``), take the lock, write config.yaml; returns the run folder
    and its per-pair store."""
    overwrite = overwrite or bool(getattr(obj, "overwrite", False))
    prepare_run_folder(cfg, obj.out_dir, obj.name, resume=resume, overwrite=overwrite)
    # RunDir: the lock (a second process on this folder is refused) and, with overwrite, an empty folder
    run = RunDir(obj.out_dir, obj.name, resume=resume, overwrite=overwrite)
    run.save_config(cfg)
    run.open()
    return run, PairStore(run, fmt, images=obj.images, save_flows=obj.save_flows)


PANEL_MAX_WIDTH = 2048


def fit_width(img: np.ndarray, max_width: int) -> np.ndarray:
    """Shrink an H x W x 3 uint8 picture (area interpolation) so that W <= max_width; smaller ones unchanged."""

    h, w = img.shape[:2]
    if w <= max_width:
        return img
    return cv2.resize(img, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when finite, else None (for JSON records)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def mean_of(values: Sequence[float | None]) -> float | None:
    xs = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None
