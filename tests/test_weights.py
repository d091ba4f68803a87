"""Official-weights registry and fetch: against a local HTTP server (127.0.0.1) that serves files written here
in the official formats (RAFT's models.zip with `module.` keys; a GitHub-hosted file with its git blob id).
Cases: good, corrupt (deleted + error), interrupted (connection dropped mid-file, then resumed with Range),
offline (where to put the file by hand), hand-placed files, the CLI and `model.checkpoint=NAME`."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import backbones
from backbones import fetch as fetch_mod
from backbones import weights as W
from mlof.cli import main


# ------------------------------------------------------------------------------------------------- server
class _Server:
    """Serves ``files`` {url path: bytes}; honours ``Range: bytes=N-``; ``drop_after[path] = k`` closes the
    connection after k body bytes once (a dropped download). Records every request's Range header."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.drop_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLOF_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "home"


def _blob(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def _official_bytes(name: str, prefix: str = "module.", seed: int = 0) -> tuple[bytes, dict]:
    """An official-format checkpoint of network ``name``: its state dict with DataParallel's prefix."""
    torch.manual_seed(seed)
    sd = backbones.build(name).state_dict()
    buf = io.BytesIO()
    torch.save({prefix + k: v for k, v in sd.items()}, buf)
    return buf.getvalue(), sd


def _entry(monkeypatch, name: str, **changes) -> W.WeightEntry:
    entry = dataclasses.replace(W.WEIGHTS[name], **changes)
    monkeypatch.setitem(W.WEIGHTS, name, entry)
    return entry


@pytest.fixture(scope="module")
def small_ckpt():
    return _official_bytes("raft_small")


# -------------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_backbone_with_settings():
    backbones_seen = {e.backbone for e in W.WEIGHTS.values()}
    assert backbones_seen == {"raft", "raft_small", "gma", "kpaflow", "memflow", "upflow", "liteflownet2"}
    built = set()
    for want in ["raft-things", "raft-sintel", "raft-kitti", "raft-chairs", "raft-small", "gma-things",
                 "gma-sintel", "gma-kitti", "kpaflow-sintel", "kpaflow-kitti", "memflow-things", "upflow-kitti",
                 "liteflownet2-things", "mlof-gma-things"]:
        e = W.get(want)
        assert e.licence and e.trained_on and e.images and e.padding and e.iters and e.page
        assert e.backbone in backbones.available()
        key = (e.backbone, json.dumps(e.options, sort_keys=True))
        if key not in built:  # the recorded options build the network
            backbones.registry.factory(e.backbone)(**e.options)
            built.add(key)
    # the published git blob ids of shared/data/official-weights.md
    assert W.get("gma-things").git_blob == W.get("mlof-gma-things").git_blob == \
        "15e0e0a9eb2771c9ee6a3fe2093b27ead7ddd0d0"
    assert W.get("upflow-kitti").git_blob == "f6899579cc7367cc8d1124b764a63a5a5e2afb59"
    assert W.get("raft-kitti").padding == "kitti" and W.get("raft-things").padding == "sintel"
    assert W.get("kpaflow-kitti").options == {"dataset": "kitti"} and W.get("kpaflow-sintel").url is None


def test_resolve_short_and_full_names():
    assert W.resolve_name("raft", "things").name == "raft-things"
    assert W.resolve_name("raft", "raft-things").name == "raft-things"
    assert W.resolve_name("raft_small", "small").name == "raft-small"
    assert W.resolve_name("raft_small", "things").name == "raft-small"
    assert W.resolve_name("gma", "sintel").name == "gma-sintel"
    with pytest.raises(ValueError, match="for backbone 'raft_small', not 'raft'"):
        W.resolve_name("raft", "raft-small")
    with pytest.raises(ValueError, match="no official weights 'nope' for 'gma'.*gma-things"):
        W.resolve_name("gma", "nope")


def test_git_blob_id_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert _blob(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_cache_dir_follows_mlof_home(home):
    assert W.cache_dir() == home / "weights"
    assert W.cache_path("raft-things") == home / "weights" / "raft-things.pth"


# ------------------------------------------------------------------------------------------------- fetching
def test_fetch_git_blob_file_good_then_cached(server, home, monkeypatch, small_ckpt):
    data, sd = small_ckpt
    server.files["/w/file.pth"] = data
    e = _entry(monkeypatch, "raft-small", url=server.base + "/w/file.pth", member=None, git_blob=_blob(data))
    path = fetch_mod.fetch(e.name, progress=False)
    assert path == home / "weights" / "raft-small.pth" and path.read_bytes() == data
    assert not list(path.parent.glob("*.part")) and not list(path.parent.glob("*.tmp"))
    assert fetch_mod.recorded_checksums()["raft-small"]["sha256"] == hashlib.sha256(data).hexdigest()
    n = len(server.requests)
    assert fetch_mod.fetch(e.name, progress=False) == path and len(server.requests) == n  # no new download
    # backbones.build(weights=...) resolves through the registry and loads the file
    model = backbones.build("raft_small", weights="small")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_fetch_corrupt_file_is_deleted_with_clear_error(server, home, monkeypatch, small_ckpt):
    data, _ = small_ckpt
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    server.files["/w/file.pth"] = bytes(bad)
    e = _entry(monkeypatch, "raft-small", url=server.base + "/w/file.pth", member=None, git_blob=_blob(data))
    with pytest.raises(fetch_mod.ChecksumError, match=r"git blob id [0-9a-f]{40}, the published file has "
                                                      + _blob(data) + r".*deleted"):
        fetch_mod.fetch(e.name, progress=False)
    assert not W.cache_path(e).exists() and not list(W.cache_dir().glob("raft-small*"))
    assert "raft-small" not in fetch_mod.recorded_checksums()


def test_fetch_wrong_keys_without_checksum_is_deleted(server, home, monkeypatch):
    buf = io.BytesIO()
    torch.save({"fnet.conv1.weight": torch.zeros(3)}, buf)
    server.files["/w/bad.pth"] = buf.getvalue()
    e = _entry(monkeypatch, "raft-small", url=server.base + "/w/bad.pth", member=None, git_blob=None)
    with pytest.raises(fetch_mod.ChecksumError, match="does not load into 'raft_small'.*deleted"):
        fetch_mod.fetch(e.name, progress=False)
    assert not W.cache_path(e).exists() and "raft-small" not in fetch_mod.recorded_checksums()


def test_fetch_interrupted_then_resumed_with_range(server, home, monkeypatch, small_ckpt):
    data, _ = small_ckpt
    server.files["/w/file.pth"] = data
    server.drop_after["/w/file.pth"] = len(data) // 3
    e = _entry(monkeypatch, "raft-small", url=server.base + "/w/file.pth", member=None, git_blob=_blob(data))
    with pytest.raises(fetch_mod.DownloadInterruptedError, match="run `mlof fetch raft-small` again to resume"):
        fetch_mod.fetch(e.name, progress=False, retries=0)
    part = W.cache_path(e).with_name("raft-small.pth.part")
    assert part.stat().st_size == len(data) // 3 and not W.cache_path(e).exists()
    path = fetch_mod.fetch(e.name, progress=False)
    assert path.read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("/w/file.pth", f"bytes={len(data) // 3}-")  # resumed, not restarted


def test_fetch_retries_a_dropped_connection_in_one_call(server, home, monkeypatch, small_ckpt):
    data, _ = small_ckpt
    server.files["/w/file.pth"] = data
    server.drop_after["/w/file.pth"] = 1000
    e = _entry(monkeypatch, "raft-small", url=server.base + "/w/file.pth", member=None, git_blob=_blob(data))
    assert fetch_mod.fetch(e.name, progress=False, retries=2).read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]


def test_fetch_zip_member_trust_on_first_use(server, home, monkeypatch, small_ckpt):
    """RAFT's layout: one models.zip holding models/raft-small.pth (keys with `module.`), no checksum."""
    data, sd = small_ckpt
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("models/raft-small.pth", data)
        z.writestr("models/raft-things.pth", b"not used here")
    server.files["/s/models.zip"] = buf.getvalue()
    e = _entry(monkeypatch, "raft-small", url=server.base + "/s/models.zip")
    assert e.member == "models/raft-small.pth" and e.git_blob is None
    path = fetch_mod.fetch(e.name, progress=False)
    assert path.read_bytes() == data and (W.cache_dir() / "archives" / "models.zip").is_file()
    rec = fetch_mod.recorded_checksums()["raft-small"]
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["source"].endswith("models.zip")
    # a later change of the cached file is caught against the recorded sha256, and the file deleted
    path.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(fetch_mod.ChecksumError, match="but the file fetched on .* had .*deleted"):
        fetch_mod.fetch(e.name, progress=False)
    assert not path.exists()
    # fetching again re-extracts from the kept archive and matches the record
    assert fetch_mod.fetch(e.name, progress=False).read_bytes() == data


def test_offline_says_where_to_put_the_file(home, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/gma-things.pth"
    e = _entry(monkeypatch, "gma-things", url=url)
    with pytest.raises(fetch_mod.WeightsUnavailableError) as info:
        fetch_mod.fetch(e.name, progress=False, retries=0)
    msg = str(info.value)
    assert f"cannot reach {url}" in msg and f"download it by hand from  {url}" in msg
    assert f"and put it at            {home / 'weights' / 'gma-things.pth'}" in msg
    assert not list(W.cache_dir().glob("gma-things*"))


def test_manual_entry_then_hand_placed_file_verified(home, monkeypatch):
    with pytest.raises(fetch_mod.WeightsUnavailableError, match=r"web page only(.|\n)*drive.google.com"
                                                                r"(.|\n)*kpaflow-sintel.pth"):
        fetch_mod.fetch("kpaflow-sintel", progress=False)
    # a wrong file put there by hand is refused (keys) and removed; the right one is accepted and recorded
    dest = W.cache_path("kpaflow-sintel")
    dest.parent.mkdir(parents=True)
    torch.save({"module.x": torch.zeros(1)}, dest)
    with pytest.raises(fetch_mod.ChecksumError, match="does not load into 'kpaflow'"):
        fetch_mod.fetch("kpaflow-sintel", progress=False)
    assert not dest.exists()
    torch.save({"module." + k: v for k, v in backbones.build("kpaflow").state_dict().items()}, dest)
    assert fetch_mod.fetch("kpaflow-sintel", progress=False) == dest
    assert "kpaflow-sintel" in fetch_mod.recorded_checksums()


def test_http_error_names_the_url(server, home, monkeypatch):
    e = _entry(monkeypatch, "gma-things", url=server.base + "/missing.pth")
    with pytest.raises(fetch_mod.WeightsUnavailableError, match="HTTP 404"):
        fetch_mod.fetch(e.name, progress=False)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_weights_lists_every_entry(home, capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in W.WEIGHTS:
        assert name in out
    assert "git blob 15e0e0a9eb27" in out and "keys + sha256 at first use" in out and "manual" in out
    assert main(["weights", "backbone=gma", "format=json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["gma-chairs", "gma-kitti", "gma-sintel", "gma-things", "mlof-gma-things"]
    assert rows[0]["url"].startswith("https://github.com/zacjiang/GMA/raw/2f1fd294")
    assert main(["weights", "format=long", "-q"]) == 0
    assert "licence" in capsys.readouterr().out


def test_cli_fetch_and_model_checkpoint_name(server, home, monkeypatch, small_ckpt, capsys):
    data, sd = small_ckpt
    server.files["/w/file.pth"] = data
    _entry(monkeypatch, "raft-small", url=server.base + "/w/file.pth", member=None, git_blob=_blob(data))
    assert main(["fetch", "raft-small", "-q"]) == 0
    assert "raft-small: " in capsys.readouterr().out and W.cache_path("raft-small").is_file()
    assert main(["fetch", "nope"]) == 2
    assert "unknown weights 'nope'" in capsys.readouterr().err
    # model.checkpoint=<registry name> builds the right network with the fetched weights
    from mlof.config import ModelConfig
    from mlof.commands.setup import build_model

    model = build_model(ModelConfig(name=None, checkpoint="raft-small"))
    assert type(model).__name__ == "RAFTSmall"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(ValueError, match="model.checkpoint=raft-small holds a 'raft_small' network but "
                                         "model.name is 'raft': set model.name=raft_small"):
        build_model(ModelConfig(name="raft", checkpoint="raft-small"))


def test_cli_fetch_offline_exit_2_with_path(home, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _entry(monkeypatch, "upflow-kitti", url=f"http://127.0.0.1:{port}/upflow_kitti2015.pth")
    assert main(["fetch", "upflow-kitti", "retries=0", "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and str(Path(home) / "weights" / "upflow-kitti.pth") in err


def test_build_with_weights_never_records_a_wrong_hand_placed_file(home):
    """build(weights=) skips the redundant key check of a verified cached file, but not of a new one."""
    dest = W.cache_path("kpaflow-kitti")
    dest.parent.mkdir(parents=True)
    torch.save({"module.x": torch.zeros(1)}, dest)
    with pytest.raises(fetch_mod.ChecksumError, match="does not load into 'kpaflow'"):
        backbones.build("kpaflow", weights="kitti")
    assert "kpaflow-kitti" not in fetch_mod.recorded_checksums() and not dest.exists()
