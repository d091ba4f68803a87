"""Reading and writing optical flow and images.

Flow formats are chosen by the file extension (case-insensitive):

* ``.flo``  Middlebury: tag ``PIEH``, int32 width, int32 height, then float32 (u, v) row-major.
  A vector with ``|u|`` or ``|v|`` > 1e9 is *unknown* (``valid`` False); invalid pixels are written as 1e10.
* ``.png``  KITTI 16-bit RGB: ``u = (R - 2**15) / 64``, ``v = (G - 2**15) / 64``, ``valid = B > 0``.
  Representable range is [-512, 511.984] px in steps of 1/64 px; values are rounded to the nearest step.
* ``.pfm``  Portable float map (FlyingThings3D): ``PF`` (3 channels) or ``Pf`` (1 channel), rows stored
  bottom-to-top, negative scale = little endian. Flow uses the first two channels; the 1e9 "unknown"
  convention of ``.flo`` is applied here too (PFM has no validity channel of its own).

Conventions: flows are ``H x W x 2`` float32 (channel 0 = u/x, 1 = v/y); ``valid`` is ``H x W`` bool;
the flow at invalid pixels is returned as 0 so that it can never leak huge sentinel values into a loss.
Images are ``H x W x 3`` uint8 RGB.

Errors: every malformed file raises :class:`FlowFormatError` (a ``ValueError``) whose message starts with
the path and says what is wrong. A missing file raises :class:`FlowFileNotFoundError`, which is both a
``FlowFormatError`` and a ``FileNotFoundError``. Header sizes are checked against the file size before
any array is allocated, so a lying header cannot trigger a huge allocation. Bad arguments to the writers
raise ``ValueError``. Writes are atomic (temporary file + rename, :func:`mlof.utils.atomic_open`).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from mlof.utils import atomic_open

__all__ = [
    "FlowFormatError", "FlowFileNotFoundError", "read_flow", "write_flow", "read_pfm", "write_pfm",
    "read_image", "write_image", "FLOW_EXTENSIONS", "IMAGE_EXTENSIONS",
]

PathLike = Union[str, os.PathLike]

FLO_TAG = b"PIEH"             # the float 202021.25 in little-endian bytes
UNKNOWN_FLOW_THRESH = 1e9     # |u| or |v| above this marks an unknown vector (Middlebury)
UNKNOWN_FLOW_VALUE = 1e10     # what we write for invalid pixels
KITTI_SCALE = 64.0
KITTI_OFFSET = 2 ** 15
KITTI_MAX = (65535 - KITTI_OFFSET) / KITTI_SCALE   # 511.984375
KITTI_MIN = -KITTI_OFFSET / KITTI_SCALE            # -512.0
# A deflate stream expands at most ~1032:1; a PNG header that promises more raw bytes than that is lying.
_DEFLATE_MAX_RATIO = 1100
_MAX_DIM = 1 << 20            # no real image is a million pixels wide or high

FLOW_EXTENSIONS = (".flo", ".png", ".pfm")
IMAGE_EXTENSIONS = (".png", ".ppm", ".pgm", ".pnm", ".jpg", ".jpeg", ".bmp")


class FlowFormatError(ValueError):
    """A flow or image file is malformed or of an unsupported kind; the message names the file."""


class FlowFileNotFoundError(FlowFormatError, FileNotFoundError):
    """The file does not exist (catchable as ``FlowFormatError`` and as ``FileNotFoundError``)."""


def _fail(path: Path, problem: str) -> FlowFormatError:
    return FlowFormatError(f"{path}: {problem}")


def _read_bytes(path: PathLike) -> tuple[Path, bytes]:
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise _fail(path, "is not a regular file")
        raise FlowFileNotFoundError(2, "No such file", str(path))
    return path, path.read_bytes()


def _extension(path: Path, allowed: tuple[str, ...], what: str) -> str:
    ext = path.suffix.lower()
    if ext not in allowed:
        raise _fail(path, f"unknown {what} extension {path.suffix!r} (supported: {', '.join(allowed)})")
    return ext


# ----------------------------------------------------------------------------------------------------- flow API
def read_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a flow file; the format follows the extension (``.flo``, ``.png`` KITTI, ``.pfm``).

    Returns ``(flow, valid)``: ``flow`` H x W x 2 float32 (0 where invalid), ``valid`` H x W bool.
    Raises :class:`FlowFormatError` for malformed files, :class:`FlowFileNotFoundError` when missing.
    """
    path = Path(path)
    ext = _extension(path, FLOW_EXTENSIONS, "flow")
    if ext == ".flo":
        flow = _read_flo(path)
    elif ext == ".pfm":
        data = read_pfm(path)
        if data.shape[2] < 2:
            raise _fail(path, f"PFM has {data.shape[2]} channel ('Pf'); a flow needs at least 2 ('PF')")
        flow = np.ascontiguousarray(data[:, :, :2])
        if not np.isfinite(flow).all():
            raise _fail(path, "contains NaN or infinite flow values")
    else:
        return _read_kitti_png(path)
    valid = (np.abs(flow) <= UNKNOWN_FLOW_THRESH).all(axis=2)
    flow[~valid] = 0.0
    return flow, valid


def write_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None, *, clip: bool = False) -> None:
    """Write ``flow`` (numpy H x W x 2, or a torch 2 x H x W tensor) with optional ``valid`` (H x W bool)
    in the format of the extension.

    ``.flo`` / ``.pfm`` store invalid pixels as 1e10 (Middlebury "unknown"). ``.png`` (KITTI) stores them with
    B = 0; valid vectors outside [-512, 511.984] px raise ``ValueError`` unless ``clip=True`` clamps them.
    Non-finite values at valid pixels raise ``ValueError``. The write is atomic.
    """
    path = Path(path)
    ext = _extension(path, FLOW_EXTENSIONS, "flow")
    flow = _check_flow_array(flow, "flow")
    if valid is None:
        valid = np.ones(flow.shape[:2], dtype=bool)
    else:
        valid = _as_numpy(valid)
        if valid.shape != flow.shape[:2]:
            raise ValueError(f"valid: shape {valid.shape} does not match flow {flow.shape[:2]} (H x W)")
        valid = valid if valid.dtype == bool else valid >= 0.5   # same rule as mlof.metrics
    bad = valid & ~np.isfinite(flow).all(axis=2)
    if bad.any():
        raise ValueError(f"flow: {int(bad.sum())} valid pixels are NaN or infinite (mark them invalid), "
                         f"writing {path}")
    if ext == ".png":
        _write_kitti_png(path, flow, valid, clip)
        return
    out = flow.astype(np.float32, copy=True)
    out[~valid] = UNKNOWN_FLOW_VALUE
    if ext == ".flo":
        h, w = out.shape[:2]
        with atomic_open(path, "wb") as f:
            f.write(FLO_TAG + struct.pack("<ii", w, h))
            f.write(out.astype("<f4").tobytes())
    else:
        write_pfm(path, out)


def _as_numpy(x):
    """numpy as is; a torch tensor (any device) to numpy without importing torch here."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _check_flow_array(flow: np.ndarray, name: str) -> np.ndarray:
    is_tensor = hasattr(flow, "detach")
    flow = _as_numpy(flow)
    if is_tensor and flow.ndim == 3 and flow.shape[0] == 2:
        flow = flow.transpose(1, 2, 0)    # torch convention 2 x H x W -> H x W x 2
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] == 0 or flow.shape[1] == 0:
        raise ValueError(f"{name}: expected an H x W x 2 array, got shape {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating) and not np.issubdtype(flow.dtype, np.integer):
        raise ValueError(f"{name}: expected a numeric array, got dtype {flow.dtype}")
    return flow


# ---------------------------------------------------------------------------------------------------- Middlebury
def _read_flo(path: Path) -> np.ndarray:
    path, raw = _read_bytes(path)
    if len(raw) < 12:
        raise _fail(path, f"truncated .flo header ({len(raw)} bytes, need 12)")
    if raw[:4] != FLO_TAG:
        raise _fail(path, f"bad .flo magic {raw[:4]!r} (expected b'PIEH')")
    w, h = struct.unpack("<ii", raw[4:12])
    if w <= 0 or h <= 0 or w > _MAX_DIM or h > _MAX_DIM:
        raise _fail(path, f"absurd .flo size {w} x {h} (width x height)")
    expected = 12 + 8 * w * h
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise _fail(path, f"{kind}: header says {w} x {h} -> {expected} bytes, file has {len(raw)}")
    flow = np.frombuffer(raw, dtype="<f4", offset=12).reshape(h, w, 2).astype(np.float32)
    if np.isnan(flow).any():
        raise _fail(path, "contains NaN flow values (unknown vectors must be written as > 1e9)")
    return flow


# ---------------------------------------------------------------------------------------------------------- KITTI
def _read_kitti_png(path: Path) -> tuple[np.ndarray, np.ndarray]:
    path, raw = _read_bytes(path)
    w, h, depth, channels = _png_header(path, raw)
    if depth != 16 or channels != 3:
        raise _fail(path, f"a KITTI flow PNG must be 16-bit RGB, got {depth}-bit with {channels} channel(s)")
    bgr = _decode(path, raw)
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise _fail(path, f"decoded to {bgr.dtype} {bgr.shape}, expected uint16 H x W x 3")
    # OpenCV returns BGR: B = valid, G = v, R = u.
    flow = (bgr[:, :, [2, 1]].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
    valid = bgr[:, :, 0] > 0
    flow[~valid] = 0.0
    return flow, valid


def _write_kitti_png(path: Path, flow: np.ndarray, valid: np.ndarray, clip: bool) -> None:
    flow = flow.astype(np.float64)
    safe = np.where(valid[..., None], flow, 0.0)
    outside = valid & ((safe < KITTI_MIN) | (safe > KITTI_MAX)).any(axis=2)
    if outside.any() and not clip:
        raise ValueError(f"flow: {int(outside.sum())} valid vectors lie outside the KITTI PNG range "
                         f"[{KITTI_MIN}, {KITTI_MAX}] px (pass clip=True to clamp), writing {path}")
    coded = np.clip(np.round(safe * KITTI_SCALE + KITTI_OFFSET), 0, 65535).astype(np.uint16)
    bgr = np.empty(flow.shape[:2] + (3,), dtype=np.uint16)
    bgr[:, :, 2] = coded[:, :, 0]
    bgr[:, :, 1] = coded[:, :, 1]
    bgr[:, :, 0] = valid
    bgr[~valid] = 0
    _encode_write(path, ".png", bgr)


# ------------------------------------------------------------------------------------------------------------ PFM
def read_pfm(path: PathLike) -> np.ndarray:
    """Read a PFM file as an H x W x C float32 array (C = 3 for ``PF``, 1 for ``Pf``), top row first.

    Accepts both endians (sign of the scale). Raises :class:`FlowFormatError` for malformed files.
    """
    path, raw = _read_bytes(path)
    tokens, offset = _pfm_header_tokens(path, raw)
    magic, w_s, h_s, scale_s = tokens
    if magic not in (b"PF", b"Pf"):
        raise _fail(path, f"bad PFM magic {magic[:8]!r} (expected b'PF' or b'Pf')")
    try:
        w, h, scale = int(w_s), int(h_s), float(scale_s)
    except ValueError:
        raise _fail(path, f"unparsable PFM header {b' '.join(tokens)[:80]!r}") from None
    if w <= 0 or h <= 0 or w > _MAX_DIM or h > _MAX_DIM:
        raise _fail(path, f"absurd PFM size {w} x {h} (width x height)")
    if scale == 0 or not np.isfinite(scale):
        raise _fail(path, f"PFM scale must be a non-zero number, got {scale_s!r}")
    channels = 3 if magic == b"PF" else 1
    expected = w * h * channels * 4
    got = len(raw) - offset
    if got < expected:
        raise _fail(path, f"truncated: header says {w} x {h} x {channels} -> {expected} data bytes, "
                          f"file has {got}")
    if got > expected:
        raise _fail(path, f"has {got - expected} trailing bytes after {w} x {h} x {channels} float32 data")
    dtype = "<f4" if scale < 0 else ">f4"
    data = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(h, w, channels)
    return np.ascontiguousarray(data[::-1]).astype(np.float32)   # rows are stored bottom-to-top


def _pfm_header_tokens(path: Path, raw: bytes) -> tuple[list[bytes], int]:
    """Split the three header lines (magic, 'W H', scale); return the tokens and the data offset."""
    tokens: list[bytes] = []
    pos = 0
    limit = min(len(raw), 256)   # a PFM header is a few dozen bytes
    while len(tokens) < 4:
        while pos < limit and raw[pos:pos + 1].isspace():
            pos += 1
        start = pos
        while pos < limit and not raw[pos:pos + 1].isspace():
            pos += 1
        if pos >= limit:
            raise _fail(path, "truncated or malformed PFM header")
        tokens.append(raw[start:pos])
        if len(tokens) == 1 and tokens[0] not in (b"PF", b"Pf"):
            raise _fail(path, f"bad PFM magic {tokens[0][:8]!r} (expected b'PF' or b'Pf')")
    return tokens, pos + 1   # exactly one whitespace byte ends the scale line


def write_pfm(path: PathLike, data: np.ndarray) -> None:
    """Write an H x W, H x W x 1, H x W x 2 or H x W x 3 float array as little-endian PFM (atomic).

    Two channels are padded with a zero third channel (as FlyingThings3D stores flow).
    """
    path = Path(path)
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"data: expected H x W x C with C in 1..3, got shape {np.shape(data)}")
    if arr.shape[2] == 2:
        arr = np.concatenate([arr, np.zeros_like(arr[:, :, :1])], axis=2)
    h, w, c = arr.shape
    header = f"{'PF' if c == 3 else 'Pf'}\n{w} {h}\n-1.0\n".encode("ascii")
    with atomic_open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(arr[::-1]).astype("<f4").tobytes())


# --------------------------------------------------------------------------------------------------------- images
def read_image(path: PathLike) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB (png 8/16-bit, ppm/pgm, jpg, bmp).

    16-bit samples are rounded to 8 bits (x / 257); gray is replicated to 3 channels; alpha is dropped.
    """
    path = Path(path)
    _extension(path, IMAGE_EXTENSIONS, "image")
    path, raw = _read_bytes(path)
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        _png_header(path, raw)          # size sanity before decoding
    elif raw[:1] == b"P" and raw[1:2] in (b"5", b"6"):
        _pnm_check(path, raw)
    elif raw[:2] == b"\xff\xd8" and b"\xff\xd9" not in raw[-4096:]:
        # OpenCV silently fills a truncated JPEG with grey; the missing end-of-image marker gives it away.
        raise _fail(path, "truncated JPEG (no end-of-image marker)")
    img = _decode(path, raw)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise _fail(path, f"unsupported sample type {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 3:
        return np.ascontiguousarray(img[:, :, ::-1])
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, 2::-1])
    raise _fail(path, f"unsupported channel count {img.shape[2]}")


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write an H x W x 3 (RGB) or H x W (gray) uint8 image; format by extension; atomic."""
    path = Path(path)
    ext = _extension(path, IMAGE_EXTENSIONS, "image")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image: expected uint8, got {img.dtype} (convert with np.clip(x, 0, 255).astype"
                         f"(np.uint8))")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim != 2:
        raise ValueError(f"image: expected H x W x 3 or H x W, got shape {img.shape}")
    if ext in (".pgm", ".ppm", ".pnm"):
        ext = ".pgm" if img.ndim == 2 else ".ppm"
    _encode_write(path, ext, np.ascontiguousarray(img))


# ------------------------------------------------------------------------------------------------ shared helpers
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}   # colour type -> channels as decoded (palette -> RGB)


def _png_header(path: Path, raw: bytes) -> tuple[int, int, int, int]:
    """Parse IHDR: (width, height, bit depth, channels), after checking it against the file size."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise _fail(path, "bad PNG signature")
    if len(raw) < 33 or raw[12:16] != b"IHDR":
        raise _fail(path, "truncated PNG (no IHDR chunk)")
    w, h, depth, ctype = struct.unpack(">IIBB", raw[16:26])
    if ctype not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or w == 0 or h == 0:
        raise _fail(path, f"invalid PNG header (size {w} x {h}, depth {depth}, colour type {ctype})")
    channels = _PNG_CHANNELS[ctype]
    stored_channels = 1 if ctype == 3 else channels
    raw_bytes = h * (1 + (w * stored_channels * depth + 7) // 8)
    if w > _MAX_DIM or h > _MAX_DIM or raw_bytes > _DEFLATE_MAX_RATIO * len(raw):
        raise _fail(path, f"absurd PNG size {w} x {h}: {raw_bytes} bytes of pixels cannot come from a "
                          f"{len(raw)}-byte file")
    return w, h, depth, channels


def _pnm_check(path: Path, raw: bytes) -> None:
    """Check a binary PGM/PPM header (P5/P6) against the file size before decoding."""
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:
        while pos < len(raw) and (raw[pos:pos + 1].isspace() or raw[pos:pos + 1] == b"#"):
            if raw[pos:pos + 1] == b"#":              # comment to end of line
                end = raw.find(b"\n", pos)
                pos = len(raw) if end < 0 else end
            pos += 1
        start = pos
        while pos < len(raw) and not raw[pos:pos + 1].isspace():
            pos += 1
        if pos >= len(raw) or pos - start > 12:
            raise _fail(path, "truncated or malformed PNM header")
        tokens.append(raw[start:pos])
    try:
        w, h, maxval = (int(t) for t in tokens)
    except ValueError:
        raise _fail(path, f"unparsable PNM header {b' '.join(tokens)!r}") from None
    if w <= 0 or h <= 0 or not 0 < maxval < 65536:
        raise _fail(path, f"absurd PNM header: size {w} x {h}, maxval {maxval}")
    channels = 3 if raw[1:2] == b"6" else 1
    need = w * h * channels * (2 if maxval > 255 else 1)
    have = len(raw) - (pos + 1)
    if have < need:
        raise _fail(path, f"truncated: header says {w} x {h} -> {need} pixel bytes, file has {have}")


def _decode(path: Path, raw: bytes) -> np.ndarray:
    # imdecode on the bytes (not imread on the name): works for any path encoding, and we already hold them.
    try:
        img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise _fail(path, f"cannot decode image ({e.msg.strip() if hasattr(e, 'msg') else e})") from None
    if img is None:
        raise _fail(path, "cannot decode image (corrupt, truncated or unsupported)")
    return img


def _encode_write(path: Path, ext: str, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise ValueError(f"cannot encode image of shape {img.shape} {img.dtype} as {ext} for {path}")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())
