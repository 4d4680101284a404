"""Peers: real daemons sharing one catalogue serve each other from their caches."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ADMIN, Daemon, start_node, stop_daemon

TOKEN = "s3cret-peer-token"


def node(tmp_path: Path, name: str, catalogue: Path, *, token: str = TOKEN, default: str = "") -> Daemon:
    return start_node(tmp_path, name, catalogue, token=token, default=default)


def call(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body, headers={**ADMIN, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stats(daemon: Daemon) -> dict:
    socket_path = daemon.data_dir / "run" / "admin.sock"
    out = subprocess.run([str(Path(sys.executable).with_name("streamd-cache-manage")), "--socket", str(socket_path),
                          "--json", "stats"], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)["result"]


def wait_cached(daemon: Daemon, image_id: str) -> Path:
    """The fill commits just after the last byte went out: wait for the file under its final name."""
    import time

    path = daemon.data_dir / "cache" / image_id
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"{image_id} was never cached by {daemon.url}"
        time.sleep(0.05)
    return path


def upload(daemon: Daemon, data: bytes) -> str:
    status, body = call(daemon, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare", "visibility": "public"}).encode(),
        {"Content-Type": "application/json"})
    assert status == 201
    image_id = json.loads(body)["id"]
    assert call(daemon, "PUT", f"/v2/images/{image_id}/file", data,
                {"Content-Type": "application/octet-stream"})[0] == 204
    return str(image_id)


def test_a_miss_is_served_by_the_peer_that_caches_it(tmp_path: Path) -> None:
    catalogue = tmp_path / "shared.sqlite"
    a = node(tmp_path, "a", catalogue)
    b = node(tmp_path, "b", catalogue)
    c = None
    try:
        data = hashlib.shake_256(b"peer").digest(6 << 20)
        image_id = upload(a, data)
        assert call(a, "GET", f"/v2/images/{image_id}/file") == (200, data)  # a caches it
        wait_cached(a, image_id)
        assert stats(a)["store_reads"] == {"fs": 1}
        # a verified its copy against md5 and sha512 and recorded the data's BLAKE3 in the shared
        # catalogue: the digest peers' copies are checked with (at several GB/s instead of ~0.75).
        import sqlite3

        import blake3

        with sqlite3.connect(catalogue) as db:
            recorded = db.execute("SELECT blake3, os_hash_value FROM image_data_digests WHERE image_id = ?",
                                  (image_id,)).fetchall()
        assert recorded == [(blake3.blake3(data).hexdigest(), hashlib.sha512(data).hexdigest())]

        assert call(b, "GET", f"/v2/images/{image_id}/file") == (200, data)
        assert stats(b)["store_reads"] == {}  # b never touched the store: a served it
        assert wait_cached(b, image_id).read_bytes() == data  # and b verified and cached it

        # A peer that is down is skipped: with a stopped, c is served by b.
        stop_daemon(a)
        c = node(tmp_path, "c", catalogue)
        assert call(c, "GET", f"/v2/images/{image_id}/file") == (200, data)
        assert stats(c)["store_reads"] == {}
    finally:
        for d in (a, b, c):
            if d is not None:
                stop_daemon(d)


def test_a_miss_is_served_by_a_peer_with_direct_io_on_both_nodes(tmp_path: Path) -> None:
    """image_cache_direct_io on both nodes: the filler's copy is written and served with O_DIRECT,
    the receiving node writes the peer's bytes so and serves its own hit back, all exactly the image."""
    catalogue = tmp_path / "shared.sqlite"
    a = node(tmp_path, "a", catalogue, default="image_cache_direct_io = true\n")
    b = node(tmp_path, "b", catalogue, default="image_cache_direct_io = true\n")
    try:
        data = hashlib.shake_256(b"direct").digest((9 << 20) + 123)
        image_id = upload(a, data)
        assert call(a, "GET", f"/v2/images/{image_id}/file") == (200, data)
        assert wait_cached(a, image_id).read_bytes() == data
        assert call(b, "GET", f"/v2/images/{image_id}/file") == (200, data)  # from a's cache
        assert wait_cached(b, image_id).read_bytes() == data
        assert stats(b)["store_reads"] == {} and stats(b)["peer_reads"] == {a.url: 1}, stats(b)
        assert call(b, "GET", f"/v2/images/{image_id}/file", headers={"Range": "bytes=4097-"}) == (206, data[4097:])
        assert "O_DIRECT" not in a.log() + b.log()  # no fallback warning: the filesystem took it
    finally:
        stop_daemon(a)
        stop_daemon(b)


def test_a_peer_serving_bad_bytes_is_skipped(tmp_path: Path) -> None:
    catalogue = tmp_path / "shared.sqlite"
    a = node(tmp_path, "a", catalogue)
    b = node(tmp_path, "b", catalogue)
    try:
        data = hashlib.shake_256(b"bad-peer").digest(3 << 20)
        image_id = upload(a, data)
        assert call(a, "GET", f"/v2/images/{image_id}/file") == (200, data)
        cached = wait_cached(a, image_id)
        corrupt = bytearray(cached.read_bytes())
        corrupt[12345] ^= 0xFF
        cached.write_bytes(bytes(corrupt))  # same size: a still serves it as a hit

        # b's first try gets a's bad copy: the digests do not match, so the body is never completed.
        import http.client

        try:
            status, body = call(b, "GET", f"/v2/images/{image_id}/file")
            raise AssertionError(f"b completed a body from a bad peer copy ({status}, {len(body)} bytes)")
        except (http.client.IncompleteRead, ConnectionError, urllib.error.URLError):
            pass  # the connection is cut before the held-back end of the image
        assert not (b.data_dir / "cache" / image_id).exists()
        # From then on b skips that peer for that image and reads its own store.
        assert call(b, "GET", f"/v2/images/{image_id}/file") == (200, data)
        assert stats(b)["store_reads"] == {"fs": 1}
    finally:
        stop_daemon(a)
        stop_daemon(b)


def test_peer_route_needs_the_token_and_serves_only_the_cache(tmp_path: Path) -> None:
    catalogue = tmp_path / "shared.sqlite"
    a = node(tmp_path, "a", catalogue)
    try:
        image_id = upload(a, b"x" * 1000)
        path = f"/peer/v1/images/{image_id}"
        assert call(a, "GET", path)[0] == 403
        assert call(a, "GET", path, headers={"X-Streamd-Peer-Token": "wrong"})[0] == 403
        assert call(a, "GET", path, headers={"X-Streamd-Peer-Token": TOKEN})[0] == 404  # not cached yet
        call(a, "GET", f"/v2/images/{image_id}/file")
        wait_cached(a, image_id)
        assert call(a, "GET", path, headers={"X-Streamd-Peer-Token": TOKEN}) == (200, b"x" * 1000)
    finally:
        stop_daemon(a)
