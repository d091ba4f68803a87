"""The registry of official checkpoints: where each is published, how to verify it, how it was trained.

    >>> import backbones
    >>> backbones.weights.names("raft")
    ['raft-chairs', 'raft-kitti', 'raft-sintel', 'raft-things']
    >>> model = backbones.build("raft", weights="things")     # downloads once into MLOF_HOME, verified

An entry names the mlof backbone (and the build options the file needs, e.g. KPA-Flow's ``dataset="kitti"``),
the publication URL (``None`` where the authors publish only through a web page, e.g. a Google Drive folder:
those are placed by hand), an archive member where the file ships inside a zip (RAFT's ``models.zip``), and
the training settings that matter at inference (input range, padding mode, iterations).

Verification: GitHub-hosted files have a public git blob id, ``sha1(b"blob <size>\\0" + bytes)``; a download
is accepted only if it reproduces it. Files without a published checksum are checked by loading them
strictly into their backbone (every key and shape), and their sha256 is recorded at the first download
(trust on first use, ``<cache>/checksums.json``): later fetches and hand-placed copies must match it.

This module only describes and resolves; downloading is :mod:`backbones.fetch` (standard library only).
``backbones`` never imports ``mlof``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WeightEntry", "WEIGHTS", "get", "names", "cache_dir", "cache_path", "resolve_name",
           "UnknownWeightsError"]


class UnknownWeightsError(ValueError):
    """A weights name that the registry does not list."""


@dataclass(frozen=True)
class WeightEntry:
    """One official checkpoint.

    name: registry name (``raft-things``); backbone: ``backbones.build`` name; options: build options the file
    needs; url: download URL (None: published on a web page only, see ``page``); member: path inside the
    downloaded zip archive (None: the URL is the file itself); git_blob: public git blob id (None: unknown,
    trust on first use); sha256: published sha256 (None: unknown); trained_on: training schedule;
    images / padding / iters: what the official evaluation feeds the network (mlof backbones all take RGB
    0..255 and normalise inside, as the official code does).
    """

    name: str
    backbone: str
    url: str | None
    page: str
    licence: str
    trained_on: str
    images: str
    padding: str
    iters: str
    options: dict[str, Any] = field(default_factory=dict)
    member: str | None = None
    git_blob: str | None = None
    sha256: str | None = None
    notes: str = ""

    @property
    def checksum(self) -> str:
        """How a download is verified, in words."""
        if self.git_blob:
            return f"git blob {self.git_blob}"
        if self.sha256:
            return f"sha256 {self.sha256}"
        return "none published: keys checked strictly, sha256 recorded at first download"


_RAFT_ZIP = "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
_RAFT_PAGE = "https://github.com/princeton-vl/RAFT (download_models.sh @ 2888e15a)"
_RAFT_LICENCE = "BSD-3-Clause (princeton-vl/RAFT LICENSE)"
_RAFT_IMAGES = "RGB 0..255, normalised to 2*I/255-1 inside"
_GMA_COMMIT = "2f1fd29468a86a354d44dd25d107930b3f175043"
_GMA_LICENCE = "as stated by zacjiang/GMA (no LICENSE file in the indexed tree): check before redistributing"
_MLOF_COMMIT = "7b2c279f679a0c155c56b9b609160d9e3c53a744"
_UPFLOW_COMMIT = "54c26608b31c548212f337300c2c96789bfa594f"
_KPA_FOLDER = "https://drive.google.com/drive/folders/1rt8q7EkbeWoivTxijtPJbOsdwGYctYt_"
_KPA_LICENCE = "as stated by megvii-research/KPAFlow (no LICENSE file in the indexed tree): research use"
_MEMFLOW_RELEASE = "https://github.com/DQiaole/MemFlow/releases/download/v1.0.0/"
_MEMFLOW_LICENCE = "as stated by DQiaole/MemFlow (no LICENSE file in the indexed tree): research use"
_MMFLOW = "https://download.openmmlab.com/mmflow/liteflownet2/"
_MMFLOW_LICENCE = "Apache-2.0 (open-mmlab/mmflow)"
_MMFLOW_IMAGES = "RGB 0..255 (BGR/255 minus mmflow's means inside), padded to multiples of 32 by mlof"
_RAFT_EVAL = "train 12; official evaluation 24 (chairs, KITTI) / 32 (Sintel)"


def _raft(name: str, trained_on: str, padding: str = "sintel", backbone: str = "raft") -> WeightEntry:
    return WeightEntry(name=name, backbone=backbone, url=_RAFT_ZIP, member=f"models/{name}.pth", page=_RAFT_PAGE,
                       licence=_RAFT_LICENCE, trained_on=trained_on, images=_RAFT_IMAGES, padding=padding,
                       iters=_RAFT_EVAL, notes="one zip holds all five RAFT files; keys carry 'module.'")


def _gma(name: str, trained_on: str, blob: str, padding: str = "sintel") -> WeightEntry:
    return WeightEntry(name=name, backbone="gma",
                       url=f"https://github.com/zacjiang/GMA/raw/{_GMA_COMMIT}/checkpoints/{name}.pth",
                       page=f"https://github.com/zacjiang/GMA @ {_GMA_COMMIT[:8]}", licence=_GMA_LICENCE,
                       trained_on=trained_on, images=_RAFT_IMAGES, padding=padding, iters=_RAFT_EVAL,
                       git_blob=blob, notes="GMA options num_heads=1, position_only=False (evaluate.py defaults)")


def _kpa(dataset: str, trained_on: str, padding: str) -> WeightEntry:
    return WeightEntry(name=f"kpaflow-{dataset}", backbone="kpaflow", options={"dataset": dataset}, url=None,
                       page=f"{_KPA_FOLDER} (megvii-research/KPAFlow README @ 98213dc7)", licence=_KPA_LICENCE,
                       trained_on=trained_on, images=_RAFT_IMAGES, padding=padding, iters=_RAFT_EVAL,
                       notes=f"Google Drive folder: download the {dataset} file by hand; built with "
                             f"dataset={dataset!r} (KPA patch {19 if dataset == 'sintel' else 15})")


def _memflow(split: str, trained_on: str, padding: str, avg_length: float) -> WeightEntry:
    return WeightEntry(name=f"memflow-{split}", backbone="memflow", options={"train_avg_length": avg_length},
                       url=f"{_MEMFLOW_RELEASE}MemFlowNet_{split}.pth",
                       page="https://github.com/DQiaole/MemFlow/releases/tag/v1.0.0 (@ c7fe6da0)",
                       licence=_MEMFLOW_LICENCE, trained_on=trained_on,
                       images="RGB 0..255, normalised to 2*I/255-1 inside (official: before step())",
                       padding=padding, iters="train 12 (decoder_depth); official evaluation 15 (val_decoder_depth)",
                       notes=f"MemFlowNet (GMA-SK2); train_avg_length {avg_length:g} from configs/{split}_memflownet.py")


def _lfn(name: str, file: str, config: str, trained_on: str) -> WeightEntry:
    return WeightEntry(name=name, backbone="liteflownet2", options={"config": config}, url=_MMFLOW + file,
                       page=f"{_MMFLOW} (mmflow model zoo; configs and logs beside the file)",
                       licence=_MMFLOW_LICENCE, trained_on=trained_on, images=_MMFLOW_IMAGES,
                       padding="replicate to multiples of 32 (mmflow's test pipeline resizes to multiples of 64)",
                       iters="none (pyramid network)", notes=f"mmflow file {file}; {{'state_dict', 'meta'}} wrapper")


_ENTRIES = [
    _raft("raft-chairs", "FlyingChairs"),
    _raft("raft-things", "FlyingChairs -> FlyingThings3D"),
    _raft("raft-sintel", "C -> T -> Sintel + KITTI + HD1K + Things (C+T+S+K+H)"),
    _raft("raft-kitti", "C -> T -> C+T+S+K+H -> KITTI 2015", padding="kitti"),
    _raft("raft-small", "FlyingChairs -> FlyingThings3D", backbone="raft_small"),
    _gma("gma-chairs", "FlyingChairs", "baf6922de3a78470e9b92b2949d0a3c732319936"),
    _gma("gma-things", "FlyingChairs -> FlyingThings3D", "15e0e0a9eb2771c9ee6a3fe2093b27ead7ddd0d0"),
    _gma("gma-sintel", "C -> T -> C+T+S+K+H", "4a18602892b78de4c991ddb264262d5e38bdbd66"),
    _gma("gma-kitti", "C -> T -> C+T+S+K+H -> KITTI 2015", "dc923ce096921dfb8411777d9df6420257c7fc77",
         padding="kitti"),
    _kpa("sintel", "C -> T -> C+T+S+K+H", "sintel"),
    _kpa("kitti", "C -> T -> C+T+S+K+H -> KITTI 2015", "kitti"),
    _memflow("things", "FlyingChairs -> FlyingThings3D", "sintel", (400 * 720 // 64) * 3 / 2),
    _memflow("sintel", "C -> T -> C+T+S+K+H", "sintel", (368 * 768 // 64) * 3 / 2),
    _memflow("kitti", "C -> T -> C+T+S+K+H -> KITTI 2015", "kitti", (288 * 960 // 64) * 3 / 2),
    WeightEntry(name="upflow-kitti", backbone="upflow",
                url=f"https://github.com/coolbeam/UPFlow_pytorch/raw/{_UPFLOW_COMMIT}/scripts/upflow_kitti2015.pth",
                page=f"https://github.com/coolbeam/UPFlow_pytorch @ {_UPFLOW_COMMIT[:8]}",
                licence="MIT (coolbeam/UPFlow_pytorch LICENSE)", trained_on="KITTI 2015 multi-view (unsupervised)",
                images="RGB 0..255 (official (RGB - means) * 0.0039216 inside)", padding="none (raw size)",
                iters="none (pyramid network)", git_blob="f6899579cc7367cc8d1124b764a63a5a5e2afb59"),
    _lfn("liteflownet2-pre-m6s6", "liteflownet2_pre_M6S6_8x1_flyingchairs_320x448.pth", "pre-M6S6",
         "FlyingChairs (pre-training stage M6S6)"),
    _lfn("liteflownet2-pre-m6s6r6", "liteflownet2_pre_M6S6R6_8x1_flyingchairs_320x448.pth", "pre-M6S6R6",
         "FlyingChairs (stage M6S6R6)"),
    _lfn("liteflownet2-pre-m5s5r5", "liteflownet2_pre_M5S5R5_8x1_flyingchairs_320x448.pth", "pre-M5S5R5",
         "FlyingChairs (stage M5S5R5)"),
    _lfn("liteflownet2-pre-m4s4r4", "liteflownet2_pre_M4S4R4_8x1_flyingchairs_320x448.pth", "pre-M4S4R4",
         "FlyingChairs (stage M4S4R4)"),
    _lfn("liteflownet2-chairs", "liteflownet2_pre_M3S3R3_8x1_flyingchairs_320x448.pth", "pre",
         "FlyingChairs (stage M3S3R3, all levels)"),
    _lfn("liteflownet2-things", "liteflownet2_8x1_500k_flyingthing3d_subset_384x768.pth", "full",
         "FlyingChairs -> FlyingThings3D subset"),
    _lfn("liteflownet2-sintel", "liteflownet2_ft_4x1_600k_sintel_kitti_320x768.pth", "full",
         "... -> Sintel + KITTI fine-tuning"),
    _lfn("liteflownet2-kitti", "liteflownet2_ft_4x1_500k_kitti_320x896.pth", "full",
         "... -> KITTI fine-tuning"),
    WeightEntry(name="mlof-gma-things", backbone="gma",
                url=f"https://github.com/ChaerinMin/MLOF/raw/{_MLOF_COMMIT}/checkpoints/gma-things.pth",
                page=f"https://github.com/ChaerinMin/MLOF @ {_MLOF_COMMIT[:8]}",
                licence="as stated by ChaerinMin/MLOF (no LICENSE file in the indexed tree): research use",
                trained_on="MLOF's theta_0: GMA C -> T (the same file as GMA's gma-things.pth)",
                images=_RAFT_IMAGES, padding="sintel", iters="MLOF meta-training/inference: 12 (RAFT/GMA schedule)",
                git_blob="15e0e0a9eb2771c9ee6a3fe2093b27ead7ddd0d0",
                notes="starting point of MLOF meta-training (checkpoints/gma-things.pth of the MLOF release)"),
]
WEIGHTS: dict[str, WeightEntry] = {e.name: e for e in _ENTRIES}


def get(name: str) -> WeightEntry:
    """The entry called ``name``; ``UnknownWeightsError`` lists the known names otherwise."""
    if name not in WEIGHTS:
        raise UnknownWeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(WEIGHTS))} "
                                  f"(`mlof weights` lists them)")
    return WEIGHTS[name]


def names(backbone: str | None = None) -> list[str]:
    """Sorted registry names, optionally only those of one backbone."""
    return sorted(n for n, e in WEIGHTS.items() if backbone is None or e.backbone == backbone)


def resolve_name(backbone: str | None, weights: str) -> WeightEntry:
    """The entry for ``backbone`` + ``weights``: a full name (``raft-things``) or a short one (``things``,
    meaning ``<backbone>-things``; ``raft_small`` + ``small``/``things`` both give ``raft-small``).

    Raises ``UnknownWeightsError`` when nothing matches or the entry belongs to another backbone.
    """
    candidates = [weights]
    if backbone is not None:
        candidates += [f"{backbone.replace('_', '-')}-{weights}", f"{backbone.split('_')[0]}-{weights}"]
        if backbone == "raft_small":
            candidates.insert(1, "raft-small")
    for cand in candidates:
        entry = WEIGHTS.get(cand)
        if entry is not None and (backbone is None or entry.backbone == backbone):
            return entry
    if weights in WEIGHTS:
        raise UnknownWeightsError(f"weights {weights!r} are for backbone {WEIGHTS[weights].backbone!r}, "
                                  f"not {backbone!r}")
    known = ", ".join(names(backbone)) if backbone else ", ".join(sorted(WEIGHTS))
    raise UnknownWeightsError(f"no official weights {weights!r}{f' for {backbone!r}' if backbone else ''}; "
                              f"known: {known or 'none'}")


def cache_dir() -> Path:
    """``$MLOF_HOME/weights`` (``MLOF_HOME`` defaults to ``~/.cache/mlof``)."""
    home = os.environ.get("MLOF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "mlof")
    return Path(home) / "weights"


def cache_path(entry: WeightEntry | str) -> Path:
    """Where the checkpoint of ``entry`` lives once fetched (or where to put it by hand)."""
    entry = get(entry) if isinstance(entry, str) else entry
    return cache_dir() / f"{entry.name}.pth"
