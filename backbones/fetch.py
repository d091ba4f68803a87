"""Downloading official checkpoints into the cache: atomic, resumable, verified (standard library only).

``fetch(name)`` returns the cached path of registry entry ``name`` (:mod:`backbones.weights`), downloading it
first if needed:

* the download goes to ``<file>.part`` and continues from its end with an HTTP ``Range`` request after an
  interruption (a dropped connection is retried ``retries`` times; a later call resumes too);
* a zip archive (RAFT's ``models.zip``) is kept in ``<cache>/archives/`` and its member extracted;
* the file is verified before it takes its final name (``os.replace``: never a half-written checkpoint):
  against the public git blob id where there is one, against the sha256 recorded by an earlier download
  otherwise (trust on first use, ``<cache>/checksums.json``), and always by loading it strictly into its
  backbone. A mismatch deletes the file and raises ``ChecksumError``;
* without a network (or for files published only on a web page) ``WeightsUnavailableError`` says which URL
  to open and the exact path to put the file at; a hand-placed file is verified like a download.

``MLOF_HOME`` sets the cache root (default ``~/.cache/mlof``); ``MLOF_WEIGHTS_MIRROR=URL`` fetches
``URL/<file name>`` instead of the publication URL (an organisation's mirror). A progress bar (tqdm) is shown
when tqdm is installed and ``progress`` is true.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from backbones.checkpoint import load_weights
from backbones.registry import factory
from backbones.weights import WeightEntry, cache_dir, cache_path, get

__all__ = ["fetch", "verify", "git_blob_id", "sha256_file", "recorded_checksums", "manual_instructions",
           "ChecksumError", "WeightsUnavailableError", "DownloadInterruptedError"]

CHUNK = 1 << 20
TIMEOUT_S = 30.0


class ChecksumError(ValueError):
    """A downloaded or hand-placed checkpoint does not match its checksum or its backbone's keys."""


class WeightsUnavailableError(FileNotFoundError):
    """The checkpoint is not cached and cannot be downloaded (offline, or published on a web page only)."""


class DownloadInterruptedError(OSError):
    """The connection dropped and the retries ran out; the ``.part`` file is kept for resuming."""


# ------------------------------------------------------------------------------------------------ checksums
def git_blob_id(path: str | os.PathLike) -> str:
    """Git's object id of a file: ``sha1(b"blob <size>\\0" + content)`` (hex)."""
    size = os.path.getsize(path)
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _db_path() -> Path:
    return cache_dir() / "checksums.json"


def recorded_checksums() -> dict[str, dict]:
    """``{name: {"sha256", "size", "source", "recorded"}}`` of the files fetched so far (trust on first use)."""
    path = _db_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ChecksumError(f"{path} is not valid JSON ({e}); delete it to re-record the checksums") from e
    return data if isinstance(data, dict) else {}


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _record(entry: WeightEntry, path: Path, digest: str, source: str) -> None:
    db = recorded_checksums()
    db[entry.name] = {"sha256": digest, "size": path.stat().st_size, "source": source,
                      "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_write_text(_db_path(), json.dumps(db, indent=1, sort_keys=True) + "\n")


def _check_keys(entry: WeightEntry, path: Path) -> None:
    """Load ``path`` strictly into a fresh ``entry.backbone``: every key and shape must match."""
    load_weights(factory(entry.backbone)(**entry.options), path, strict=True)


def verify(entry: WeightEntry | str, path: str | os.PathLike, source: str = "download",
           check_keys: bool = True) -> str:
    """Check ``path`` against ``entry``; returns how it was verified. Records the sha256 on first use.

    Raises ``ChecksumError`` (without deleting anything: the caller decides) on a blob, sha256 or key mismatch.
    """
    entry = get(entry) if isinstance(entry, str) else entry
    path = Path(path)
    how = []
    if entry.git_blob:
        got = git_blob_id(path)
        if got != entry.git_blob:
            raise ChecksumError(f"{entry.name}: {path} has git blob id {got}, the published file has "
                                f"{entry.git_blob} (a corrupt or different file)")
        how.append("git blob id")
    digest = sha256_file(path)
    if entry.sha256 and digest != entry.sha256:
        raise ChecksumError(f"{entry.name}: {path} has sha256 {digest}, the published file has {entry.sha256}")
    known = recorded_checksums().get(entry.name)
    if known and known.get("sha256") != digest:
        raise ChecksumError(f"{entry.name}: {path} has sha256 {digest}, but the file fetched on "
                            f"{known.get('recorded')} had {known.get('sha256')}; if the authors replaced it, "
                            f"remove its entry from {_db_path()}")
    if check_keys:
        try:
            _check_keys(entry, path)
        except ValueError as e:  # CheckpointError: unreadable file or wrong keys
            raise ChecksumError(f"{entry.name}: {path} does not load into {entry.backbone!r}: "
                                f"{str(e).splitlines()[0]}") from e
        how.append(f"keys of {entry.backbone}")
    if known:
        how.append("sha256 recorded at first download")
    else:
        _record(entry, path, digest, source)
        how.append("sha256 now recorded (first use)")
    return ", ".join(how)


# ------------------------------------------------------------------------------------------------- download
def _url(entry: WeightEntry) -> str | None:
    mirror = os.environ.get("MLOF_WEIGHTS_MIRROR")
    if mirror and entry.url:
        return mirror.rstrip("/") + "/" + entry.url.rsplit("/", 1)[-1]
    return entry.url


def manual_instructions(entry: WeightEntry | str, reason: str = "") -> str:
    """What to do by hand: the URL (or page) to download from and the exact path to put the file at."""
    entry = get(entry) if isinstance(entry, str) else entry
    dest = cache_path(entry)
    where = _url(entry) or entry.page
    lines = [f"{entry.name}: {reason}" if reason else f"{entry.name}: not in the cache",
             f"  download it by hand from  {where}"]
    if entry.member:
        lines.append(f"  (a zip archive: take its member {entry.member})")
    if entry.url is None and entry.notes:
        lines.append(f"  ({entry.notes})")
    lines += [f"  and put it at            {dest}",
              f"  then `mlof fetch {entry.name}` (or any use of it) verifies it ({entry.checksum})"]
    return "\n".join(lines)


def _download(url: str, dest: Path, progress: bool, retries: int, label: str,
              opener: Callable[..., object] = urllib.request.urlopen) -> None:
    """``url`` -> ``dest`` via ``dest.part`` (resumed with Range), renamed into place when complete."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        try:
            _download_once(url, part, progress, label, opener)
            break
        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as e:
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadInterruptedError(
                    f"{label}: download of {url} interrupted ({type(e).__name__}) after {have} bytes; "
                    f"run `mlof fetch {label}` again to resume from {part}") from e
            time.sleep(min(2.0 ** attempt * 0.1, 5.0))
        except urllib.error.HTTPError as e:
            raise WeightsUnavailableError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:
            if isinstance(e, (FileNotFoundError, PermissionError)):
                raise
            reason = getattr(e, "reason", e)
            raise WeightsUnavailableError(f"cannot reach {url} ({reason})") from e
    os.replace(part, dest)


def _download_once(url: str, part: Path, progress: bool, label: str, opener: Callable[..., object]) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mlof-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is already complete (or the server's copy shrank): start over
            part.unlink()
            return _download_once(url, part, progress, label, opener)
        raise
    with response:  # type: ignore[attr-defined]
        status = getattr(response, "status", 200)
        if have and status != 206:
            have = 0  # the server ignored the Range header: it sends the whole file
        length = response.headers.get("Content-Length")  # type: ignore[attr-defined]
        total = have + int(length) if length is not None else None
        bar = _bar(total, have, label) if progress else None
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    block = response.read(CHUNK)  # type: ignore[attr-defined]
                    if not block:
                        break
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    got = part.stat().st_size
    if total is not None and got < total:
        raise http.client.IncompleteRead(b"", total - got)


def _bar(total: int | None, initial: int, label: str):
    try:  # optional here: backbones needs only torch (tqdm comes with mlof)
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                dynamic_ncols=True)


def _extract(archive: Path, member: str, dest: Path) -> None:
    """Copy ``member`` of zip ``archive`` to ``dest`` through a temporary file (atomic)."""
    try:
        with zipfile.ZipFile(archive) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise ChecksumError(f"{archive} has no member {member} (it holds "
                                    f"{', '.join(z.namelist()[:10])})") from None
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out, z.open(info) as src:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as e:
        archive.unlink(missing_ok=True)
        raise ChecksumError(f"{archive} is not a valid zip archive ({e}); deleted, fetch again") from e


def fetch(name: str | WeightEntry, *, force: bool = False, progress: bool = True, retries: int = 3,
          check_keys: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The verified cached checkpoint of registry entry ``name``, downloaded first if missing.

    force: download again even if cached. check_keys: also load a cached file strictly (a new download is
    always loaded; skip it for a cached file when the caller loads it strictly anyway). retries: reconnections (resumed with Range) after a dropped
    connection. Raises ``WeightsUnavailableError`` (offline / manual-only: the message says where to put the
    file), ``ChecksumError`` (the bad file is deleted), ``DownloadInterruptedError`` (``.part`` kept).
    """
    entry = get(name) if isinstance(name, str) else name
    dest = cache_path(entry)
    say = log or (lambda msg: None)
    if dest.exists() and not force:
        # a file never verified before (placed by hand) is loaded once before its sha256 is recorded
        first_use = entry.name not in recorded_checksums()
        try:
            how = verify(entry, dest, source="cache", check_keys=check_keys or first_use)
        except ChecksumError as e:
            dest.unlink(missing_ok=True)
            raise ChecksumError(f"{e}; deleted {dest}") from e
        say(f"{entry.name}: {dest} (verified: {how})")
        return dest
    url = _url(entry)
    if url is None:
        raise WeightsUnavailableError(manual_instructions(entry, "published on a web page only (no direct URL)"))
    if force:
        dest.unlink(missing_ok=True)
    try:
        if entry.member:
            archive = cache_dir() / "archives" / url.rsplit("/", 1)[-1]
            if force or not archive.exists():
                _download(url, archive, progress, retries, entry.name)
            _extract(archive, entry.member, dest)
        else:
            _download(url, dest, progress, retries, entry.name)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(manual_instructions(entry, str(e))) from e
    try:
        how = verify(entry, dest, source=url, check_keys=True)  # a new file is always loaded once
    except ChecksumError as e:
        dest.unlink(missing_ok=True)
        deleted = str(dest)
        if entry.member:  # the member came from a bad archive: the next fetch must download it again
            (cache_dir() / "archives" / url.rsplit("/", 1)[-1]).unlink(missing_ok=True)
            deleted += " and its archive"
        raise ChecksumError(f"{e}; deleted {deleted}") from e
    say(f"{entry.name}: {dest} (verified: {how})")
    return dest
