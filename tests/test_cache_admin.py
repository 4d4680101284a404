"""The cache with real daemon processes: the admin socket, streamd-cache-manage, and faults across restarts.

kill -9 during a fill, a corrupted cached file, a lost index; the admin socket's modes, its
exclusivity and its stale file; every streamd-cache-manage verb, as a table and as JSON, and
its exit codes (0 ok, 1 refused, 2 usage, 3 daemon unreachable).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ADMIN, MEMBER_A, PYTHON, Daemon, free_port, start_daemon, stop_daemon

MiB = 1 << 20
MANAGE = str(Path(sys.executable).with_name("streamd-cache-manage"))
NOBODY = 65534

# Loaded by the daemon's interpreter at start (PYTHONPATH): with STREAMD_TEST_STORE_READ_DELAY set,
# every read of the file store takes that much longer. A slow backend, for real, in a real process.
SLOW_STORE = """
import os, time
_delay = float(os.environ.get("STREAMD_TEST_STORE_READ_DELAY") or 0)
if _delay:
    from streamd.stores import file as _file
    _read = _file.FileReader.read

    def _slow_read(self, offset, length):
        time.sleep(_delay)
        return _read(self, offset, length)

    _file.FileReader.read = _slow_read
"""


def payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size)


def slow_env(tmp_path: Path, delay: float) -> dict[str, str]:
    hooks = tmp_path / "slowstore"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOW_STORE)
    return {"PYTHONPATH": str(hooks), "STREAMD_TEST_STORE_READ_DELAY": str(delay)}


def http(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, as_: dict[str, str] = ADMIN) -> tuple[int, bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body, headers={**as_, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def create(daemon: Daemon) -> str:
    status, body = http(daemon, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare"}).encode(), {"Content-Type": "application/json"},
        as_=MEMBER_A)
    assert status == 201, body
    return str(json.loads(body)["id"])


def upload(daemon: Daemon, data: bytes) -> str:
    image_id = create(daemon)
    status, body = http(daemon, "PUT", f"/v2/images/{image_id}/file", data,
                        {"Content-Type": "application/octet-stream"}, as_=MEMBER_A)
    assert status == 204, body
    return image_id


def download(daemon: Daemon, image_id: str, headers: dict[str, str] | None = None) -> bytes:
    status, body = http(daemon, "GET", f"/v2/images/{image_id}/file", headers=headers, as_=MEMBER_A)
    assert status in (200, 206), (status, body[:200])
    return body


def cache_dir(daemon: Daemon) -> Path:
    return daemon.data_dir / "cache"


def socket_of(daemon: Daemon) -> Path:
    return daemon.data_dir / "run" / "admin.sock"


def wait_until(predicate, timeout: float = 10.0, step: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)


def manage(*args: str, sock: Path | None = None, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [MANAGE]
    if sock is not None:
        command += ["--socket", str(sock)]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=60)


def connect_as_nobody(path: Path) -> str:
    """What another user gets when connecting to the admin socket (the system python: the venv may
    not be readable by them)."""
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)\n")
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", probe, str(path)], capture_output=True, text=True,
                            timeout=30, user=NOBODY, group=NOBODY, extra_groups=[])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def ok_json(daemon: Daemon, *args: str) -> Any:
    result = manage("--json", *args, sock=socket_of(daemon))
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["ok"] is True, answer
    return answer["result"]


def cached(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {e["image_id"]: e for e in ok_json(daemon, "list-cached")}


def queued(daemon: Daemon) -> list[str]:
    return [e["image_id"] for e in ok_json(daemon, "list-queued")]


def store_reads(daemon: Daemon) -> int:
    return sum(ok_json(daemon, "stats")["store_reads"].values())


def settled(daemon: Daemon) -> bool:
    return ok_json(daemon, "stats")["fills_in_flight"] == []


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, "cache_prefetcher_interval = 0\nimage_cache_maintenance_interval = 0\n")
    try:
        yield d
    finally:
        stop_daemon(d)


# -- the admin socket ---------------------------------------------------------------------------------

def test_admin_socket_is_0600_in_a_0700_directory_and_closed_to_others(tmp_path: Path) -> None:
    # A world-traversable base, so that only the socket's own directory and mode keep others out.
    base = Path(tempfile.mkdtemp(prefix="sd-admin-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        run = base / "run"
        run.mkdir(mode=0o755)  # made too open beforehand: the daemon tightens it
        os.chmod(run, 0o755)
        path = run / "admin.sock"
        daemon = start_daemon(tmp_path, f"admin_socket_path = {path}\n")
        try:
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.getuid()
            assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
            assert manage("list-cached", sock=path).returncode == 0
            assert connect_as_nobody(path) == "PermissionError"
            # Even with the directory opened up by hand, the socket's own mode keeps others out...
            os.chmod(run, 0o755)
            assert connect_as_nobody(path) == "PermissionError"
            # ...and that is what does it: with the socket opened up too, they would get in.
            os.chmod(path, 0o666)
            assert connect_as_nobody(path) == "connected"
            os.chmod(path, 0o600)
            assert manage("list-cached", sock=path).returncode == 0
        finally:
            stop_daemon(daemon)
        assert not path.exists()  # removed at a clean stop
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start_expecting_failure(directory: Path, extra: str) -> tuple[int, str]:
    directory.mkdir()
    port = free_port()
    config = directory / "streamd.conf"
    config.write_text(f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {port}\ndata_dir = {directory / 'data'}\n"
                      f"{extra}\n")
    result = subprocess.run([PYTHON, "-m", "streamd", "serve", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=directory)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the refused daemon opened its port"
    return result.returncode, result.stdout + result.stderr


def test_a_second_daemon_on_the_same_admin_socket_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "shared-run" / "admin.sock"
    (tmp_path / "first").mkdir()
    first = start_daemon(tmp_path / "first", f"admin_socket_path = {path}\n")
    try:
        code, log = _start_expecting_failure(tmp_path / "second", f"admin_socket_path = {path}")
        assert code != 0
        assert f"another streamd daemon is serving the admin socket {path}" in log
        # The first daemon still owns its socket and answers on it.
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert manage("list-cached", sock=path).returncode == 0
        assert "streamd stopped" not in first.log()
    finally:
        stop_daemon(first)


async def test_claim_never_replaces_a_file_nor_locks_a_shared_directory(tmp_path: Path) -> None:
    from streamd.admin import AdminSocketInUse
    from streamd.admin.server import claim

    path = tmp_path / "run" / "admin.sock"
    path.parent.mkdir()
    path.write_text("precious")
    with pytest.raises(AdminSocketInUse, match="exists and is not a socket"):
        await claim(path)
    assert path.read_text() == "precious"
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AdminSocketInUse, match="exists and is not a socket"):
        await claim(path)
    assert path.is_symlink()
    # A shared directory (like /tmp) is never made 0700 for the socket's sake.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(AdminSocketInUse, match="shared directory"):
        await claim(shared / "admin.sock")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


# -- streamd-cache-manage ------------------------------------------------------------------------------

def test_every_verb_as_a_table_and_as_json(node: Daemon) -> None:
    sock = socket_of(node)

    def table(*args: str, code: int = 0) -> str:
        result = manage(*args, sock=sock)
        assert result.returncode == code, result.stdout + result.stderr
        return result.stdout if code == 0 else result.stderr

    a, b, c = (upload(node, payload(100_000 + n, n)) for n in range(3))
    no_data = create(node)
    assert table("list-cached").strip() == "No cached images."
    assert table("list-queued").strip() == "No queued images."
    assert ok_json(node, "list-cached") == [] and ok_json(node, "list-queued") == []
    # --config finds the same socket as --socket.
    via_config = manage("--json", "list-cached", config=node.config_path)
    assert via_config.returncode == 0 and json.loads(via_config.stdout) == {"ok": True, "result": []}

    # queue-image: queued only (the prefetcher's interval is off here), or cached at once with --now.
    assert table("queue-image", a).strip() == "queued: True"
    assert table("queue-image", a).strip() == "queued: False"  # already queued
    assert table("queue-image", "--now", b).strip() == "queued: True, cached: True"
    assert (cache_dir(node) / b).read_bytes() == payload(100_001, 1)
    assert ok_json(node, "queue-image", c, "--now") == {"queued": True, "cached": True}
    listing = table("list-queued")
    assert listing.startswith("Found 1 queued image(s).") and a in listing and b not in listing
    [entry] = ok_json(node, "list-queued")
    assert entry["image_id"] == a and entry["queued_at"] > 0
    listing = table("list-cached")
    assert listing.startswith("Found 2 cached image(s).") and b in listing and c in listing
    assert "| ID" in listing and "Hits" in listing and "100001" in listing
    entries = cached(node)
    assert set(entries) == {b, c}
    assert entries[b]["size"] == 100_001 and entries[b]["verified"] is True and entries[b]["hits"] == 0
    assert entries[b]["checksum"] == hashlib.md5(payload(100_001, 1)).hexdigest()
    # Several ids at once: one answer each.
    both = manage("--json", "queue-image", a, c, sock=sock)
    assert both.returncode == 0
    assert [x["ok"] for x in json.loads(both.stdout)] == [True, True]

    # Refusals: exit 1, with the daemon's reason.
    assert "active" in table("queue-image", no_data, code=1)
    assert "No image found" in table("queue-image", "11111111-2222-3333-4444-555555555555", code=1)
    refused = manage("--json", "queue-image", no_data, sock=sock)
    assert refused.returncode == 1
    answer = json.loads(refused.stdout)
    assert answer["ok"] is False and answer["status"] == 400 and "active" in answer["error"]
    # One refused among several: exit 1, the others done.
    mixed = manage("--json", "delete-queued-image", a, a, sock=sock)
    assert mixed.returncode == 1 and [x["ok"] for x in json.loads(mixed.stdout)] == [True, False]
    assert queued(node) == [c]

    # verify, stats, prune, clean.
    assert table("verify", b).strip() == "valid: True, evicted: False"
    assert ok_json(node, "verify", c) == {"valid": True, "evicted": False}
    assert "not cached" in table("verify", a, code=1)
    # A verification is not a use: it counts no hit and does not make the image recently used (LRU).
    after = cached(node)
    assert (after[b]["hits"], after[b]["last_accessed"]) == (0, entries[b]["last_accessed"])
    stats = ok_json(node, "stats")
    assert stats == {"store_reads": {"fs": 2}, "peer_reads": {}, "fills_in_flight": []}
    assert table("stats").strip() == "store reads: {'fs': 2}, peer reads: {}, fills in flight: []"
    size = 100_001 + 100_002
    assert table("prune").strip() == f"files pruned: 0, bytes pruned: 0, size after: {size}"
    assert ok_json(node, "prune") == {"files_pruned": 0, "bytes_pruned": 0, "size_after": size}
    (cache_dir(node) / "invalid" / a).write_bytes(b"junk")
    assert table("clean").strip() == "files cleaned: 1"
    assert ok_json(node, "clean") == {"files_cleaned": 0}

    # Deletions.
    assert table("delete-cached-image", b).strip() == "deleted: 1"
    assert not (cache_dir(node) / b).exists() and set(cached(node)) == {c}
    assert "not cached" in table("delete-cached-image", b, code=1)
    assert table("delete-queued-image", c).strip() == "deleted: 1"
    assert "not queued" in table("delete-queued-image", c, code=1)
    assert ok_json(node, "queue-image", a) == {"queued": True}
    assert ok_json(node, "queue-image", b) == {"queued": True}
    assert table("delete-all-queued-images").strip() == "deleted: 2"
    assert ok_json(node, "delete-all-queued-images") == {"deleted": 0}
    assert table("delete-all-cached-images").strip() == "deleted: 1"
    assert ok_json(node, "delete-all-cached-images") == {"deleted": 0}
    assert cached(node) == {} and queued(node) == []
    assert [p.name for p in cache_dir(node).iterdir() if len(p.name) == 36] == []
    # A deleted image is still served, from the store.
    assert download(node, b) == payload(100_001, 1)


def test_usage_errors_exit_2_and_an_unreachable_daemon_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sock"
    image_id = "11111111-2222-3333-4444-555555555555"
    for args in ([], ["bogus"], ["queue-image"], ["verify"], ["list-cached", image_id], ["prune", image_id],
                 ["--json"]):
        result = manage(*args, sock=missing)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage:" in result.stderr
    result = manage("list-cached", config=tmp_path / "missing.conf")
    assert result.returncode == 2 and "cannot read" in result.stderr
    (tmp_path / "bad.conf").write_text("[DEFAULT]\nimage_cache_max_size = lots\n")
    result = manage("list-cached", config=tmp_path / "bad.conf")
    assert result.returncode == 2 and "image_cache_max_size" in result.stderr
    for args in (["list-cached"], ["--json", "stats"], ["queue-image", "--now", image_id]):
        result = manage(*args, sock=missing)
        assert result.returncode == 3, (args, result.stderr)
        assert "cannot reach the daemon" in result.stderr
    # (A stopped daemon and a stale socket: test_kill_9_during_a_fill_leaves_nothing_partial.)


def test_queue_image_with_the_periodic_prefetcher(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "cache_prefetcher_interval = 0.5\nimage_cache_maintenance_interval = 0\n")
    try:
        data = payload(2 * MiB, 10)
        image_id = upload(daemon, data)
        held = upload(daemon, payload(1000, 11))
        assert http(daemon, "POST", f"/v2/images/{held}/actions/deactivate")[0] == 204
        assert ok_json(daemon, "queue-image", image_id) == {"queued": True}
        wait_until(lambda: image_id in cached(daemon) and queued(daemon) == [], timeout=5)
        assert (cache_dir(daemon) / image_id).read_bytes() == data
        # Only active images: the socket refuses a deactivated one. (What the prefetcher does with a
        # non-active or deleted image queued some other way: test_cache.py, in process.)
        refused = manage("queue-image", held, sock=socket_of(daemon))
        assert refused.returncode == 1 and "active" in refused.stderr
        assert queued(daemon) == [] and set(cached(daemon)) == {image_id}
    finally:
        stop_daemon(daemon)


# -- faults across restarts -------------------------------------------------------------------------------

def test_kill_9_during_a_fill_leaves_nothing_partial(tmp_path: Path) -> None:
    data = payload(12 * MiB + 5, 20)
    daemon = start_daemon(tmp_path, "image_cache_maintenance_interval = 0\n", env=slow_env(tmp_path, 1.0))
    image_id = upload(daemon, data)
    partial = cache_dir(daemon) / "incomplete" / image_id
    # A client asks and does not read: the fill runs by itself, slowly (1 s per MiB: still running while
    # streamd-cache-manage starts and asks, even on a machine busy with other tests; killed before it ends).
    host, port = daemon.url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Project-Id: {MEMBER_A['X-Project-Id']}\r\n"
                   "X-Roles: member\r\n\r\n".encode())
    wait_until(lambda: partial.exists() and partial.stat().st_size >= 2 * MiB, step=0.01)
    assert image_id in ok_json(daemon, "stats")["fills_in_flight"]
    daemon.process.kill()
    daemon.process.wait()
    client.close()
    assert partial.exists() and partial.stat().st_size < len(data)
    # The socket file is left behind, and nobody answers on it.
    sock = socket_of(daemon)
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    result = manage("list-cached", sock=sock)
    assert result.returncode == 3 and "cannot reach the daemon" in result.stderr
    restarted = start_daemon(tmp_path, "image_cache_maintenance_interval = 0\n")
    try:
        assert "removing stale admin socket" in restarted.log()
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert list((cache_dir(restarted) / "incomplete").iterdir()) == []
        assert not (cache_dir(restarted) / image_id).exists()
        assert cached(restarted) == {}
        # Served correctly, through a new fill (one store read), then cached whole.
        assert download(restarted, image_id, {"Range": f"bytes={5 * MiB}-{5 * MiB + 9}"}) == data[5 * MiB:5 * MiB + 10]
        wait_until(lambda: settled(restarted))
        assert download(restarted, image_id) == data
        assert store_reads(restarted) == 1
        assert (cache_dir(restarted) / image_id).read_bytes() == data
        assert cached(restarted)[image_id]["size"] == len(data)
    finally:
        stop_daemon(restarted)
    # Stopped cleanly, the socket is gone: the daemon is unreachable, and the message names where it looked.
    assert not sock.exists()
    result = manage("list-cached", config=restarted.config_path)
    assert result.returncode == 3 and str(sock) in result.stderr


def _flip(path: Path, offset: int, count: int = 64) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        original = f.read(count)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in original))
    assert path.stat().st_size > offset


def test_a_corrupted_cached_file_is_found_by_verify_and_evicted(node: Daemon) -> None:
    data = payload(3 * MiB + 1, 30)
    image_id = upload(node, data)
    assert download(node, image_id) == data
    wait_until(lambda: settled(node))
    path = cache_dir(node) / image_id
    size = path.stat().st_size
    _flip(path, 2 * MiB)
    assert path.stat().st_size == size  # same size: only a checksum finds it
    result = manage("verify", image_id, sock=socket_of(node))
    assert result.returncode == 0 and result.stdout.strip() == "valid: False, evicted: True"
    assert cached(node) == {} and not path.exists()
    assert (cache_dir(node) / "invalid" / image_id).exists()
    assert "checksum" in (cache_dir(node) / "invalid" / f"{image_id}.reason").read_text()
    # The next download is correct (from the store, through a new fill) and cached again.
    assert download(node, image_id) == data
    wait_until(lambda: settled(node))
    assert store_reads(node) == 2 and path.read_bytes() == data
    assert ok_json(node, "verify", image_id) == {"valid": True, "evicted": False}


def test_a_lost_index_is_rebuilt_and_files_verified_before_use(tmp_path: Path) -> None:
    config = "image_cache_maintenance_interval = 0\ncache_prefetcher_interval = 0\n"
    daemon = start_daemon(tmp_path, config)
    good, bad = payload(2 * MiB, 40), payload(2 * MiB, 41)
    good_id, bad_id = upload(daemon, good), upload(daemon, bad)
    for image_id in (good_id, bad_id):
        download(daemon, image_id)
        wait_until(lambda: settled(daemon))
    assert set(cached(daemon)) == {good_id, bad_id}
    assert stop_daemon(daemon) == 0
    index = cache_dir(daemon) / "index.sqlite"
    assert index.exists()
    for leftover in cache_dir(daemon).glob("index.sqlite*"):
        leftover.unlink()
    _flip(cache_dir(daemon) / bad_id, MiB)  # and one file went bad while nobody watched
    daemon = start_daemon(tmp_path, config)
    try:
        entries = cached(daemon)
        assert set(entries) == {good_id, bad_id}  # rebuilt from the files
        assert all(e["verified"] is False and e["checksum"] is None for e in entries.values())
        # The good file is verified, then served from the cache: no store read.
        assert download(daemon, good_id) == good
        assert store_reads(daemon) == 0
        entry = cached(daemon)[good_id]
        assert entry["verified"] is True and entry["checksum"] == hashlib.md5(good).hexdigest()
        # The bad one fails its check: evicted, and the client gets the store's bytes.
        assert download(daemon, bad_id) == bad
        wait_until(lambda: settled(daemon))
        assert store_reads(daemon) == 1
        assert "checksum" in (cache_dir(daemon) / "invalid" / f"{bad_id}.reason").read_text()
        assert (cache_dir(daemon) / bad_id).read_bytes() == bad
        assert cached(daemon)[bad_id]["verified"] is True
        # From now on both are plain hits.
        assert download(daemon, good_id) == good and download(daemon, bad_id) == bad
        assert store_reads(daemon) == 1
    finally:
        stop_daemon(daemon)


def test_sigterm_during_a_fill_leaves_nothing_partial(tmp_path: Path) -> None:
    data = payload(16 * MiB, 50)  # 0.2 s per MiB: a fill of 3 s, stopped long before it ends
    daemon = start_daemon(tmp_path, "graceful_shutdown_timeout = 1\n", env=slow_env(tmp_path, 0.2))
    image_id = upload(daemon, data)
    assert http(daemon, "PUT", f"/v2/cache/{image_id}")[0] == 202
    wait_until(lambda: (cache_dir(daemon) / "incomplete" / image_id).exists())
    assert stop_daemon(daemon, signal.SIGTERM) == 0
    assert list((cache_dir(daemon) / "incomplete").iterdir()) == []
    assert not (cache_dir(daemon) / image_id).exists()
    restarted = start_daemon(tmp_path)
    try:
        assert image_id not in cached(restarted)
        # Still queued (it was never cached): the next prefetch run or a download fills it.
        assert queued(restarted) == [image_id]
        assert download(restarted, image_id) == data
    finally:
        stop_daemon(restarted)
