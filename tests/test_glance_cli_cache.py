"""The real glance CLI's cache commands against a real daemon: cache-list, cache-queue, cache-delete,
cache-clear (with --target), and the 2.18 cache-prune and cache-clean. The server's state is checked
after every call, over HTTP and on disk.

glanceclient's default identity against streamd (noauth) is the [noauth] default: an admin.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ADMIN, Daemon, start_daemon, stop_daemon

GLANCE = str(Path(sys.executable).with_name("glance"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # No periodic prefetcher: what is queued stays queued unless a command caches it.
    daemon = start_daemon(tmp_path_factory.mktemp("cli-cache"),
                          "cache_prefetcher_interval = 0\nimage_cache_maintenance_interval = 0\n")
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


@pytest.fixture(autouse=True)
def empty_cache(server: Daemon) -> None:
    assert call(server, "DELETE", "/v2/cache")[0] == 204


def glance(server: Daemon, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(home)
    # glanceclient would upload a non-terminal stdin: it starts with none (`exec ... <&-`; a
    # preexec_fn would fork this process, where eventlet, imported by another test file on the same
    # pytest-xdist worker, warns at every fork).
    return subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', GLANCE, "--os-image-url", server.url,
                           "--os-auth-token", "x", "--os-image-api-version", "2", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def call(server: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url + path, method=method, data=body, headers={**ADMIN, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def state(server: Daemon) -> dict[str, Any]:
    status, body = call(server, "GET", "/v2/cache")
    assert status == 200
    return json.loads(body)  # type: ignore[no-any-return]


def cached_ids(server: Daemon) -> set[str]:
    return {e["image_id"] for e in state(server)["cached_images"]}


def queued_ids(server: Daemon) -> list[str]:
    return state(server)["queued_images"]  # type: ignore[no-any-return]


def image(server: Daemon, data: bytes | None) -> str:
    status, body = call(server, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare"}).encode(), {"Content-Type": "application/json"})
    assert status == 201
    image_id = str(json.loads(body)["id"])
    if data is not None:
        status, _ = call(server, "PUT", f"/v2/images/{image_id}/file", data,
                         {"Content-Type": "application/octet-stream"})
        assert status == 204
    return image_id


def payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size)


def cache_file(server: Daemon, image_id: str) -> Path:
    return server.data_dir / "cache" / image_id


def wait_cached(server: Daemon, image_id: str) -> None:
    deadline = time.monotonic() + 20
    while image_id not in cached_ids(server):
        assert time.monotonic() < deadline, f"{image_id} was never cached"
        time.sleep(0.05)


def rows(output: str) -> dict[str, list[str]]:
    """A prettytable's rows, by their first column."""
    table = {}
    for line in output.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0]] = cells[1:]
    return table


def test_cache_queue_caches_and_cache_list_shows_both_states(server: Daemon, tmp_path: Path) -> None:
    data = payload(2 << 20, 1)
    cached, waiting = image(server, data), image(server, payload(1000, 2))
    empty = glance(server, tmp_path, "cache-list")
    assert empty.returncode == 0, empty.stderr
    assert set(rows(empty.stdout)) == {"ID"}  # the header only
    result = glance(server, tmp_path, "cache-queue", cached)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    wait_cached(server, cached)  # PUT /v2/cache/{id} caches it right away
    assert queued_ids(server) == []
    assert cache_file(server, cached).read_bytes() == data
    assert call(server, "PUT", f"/v2/queued_images/{waiting}")[0] == 200  # queued, not fetched
    listing = glance(server, tmp_path, "cache-list")
    assert listing.returncode == 0, listing.stderr
    table = rows(listing.stdout)
    assert table["ID"] == ["State", "Last Accessed (UTC)", "Last Modified (UTC)", "Size", "Hits"]
    assert table[cached][0] == "cached" and table[cached][3] == str(len(data)) and table[cached][4] == "0"
    assert table[waiting] == ["queued", "N/A", "N/A", "N/A", "N/A"]
    # Several ids at once; a refused one is reported and changes nothing.
    no_data = image(server, None)
    other = image(server, payload(3000, 3))
    result = glance(server, tmp_path, "cache-queue", no_data, other)
    assert result.stderr == (f"'HTTP 400 Bad Request: Only images with status active can be targeted for queueing': "
                             f"Unable to queue image '{no_data}' for caching.\n")
    wait_cached(server, other)
    assert cached_ids(server) == {cached, other} and queued_ids(server) == [waiting]


def test_cache_delete_removes_from_cache_and_queue(server: Daemon, tmp_path: Path) -> None:
    cached, waiting = image(server, payload(5000, 4)), image(server, payload(6000, 5))
    assert call(server, "PUT", f"/v2/cache/{cached}")[0] == 202
    wait_cached(server, cached)
    assert call(server, "PUT", f"/v2/queued_images/{waiting}")[0] == 200
    result = glance(server, tmp_path, "cache-delete", cached)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert cached_ids(server) == set() and not cache_file(server, cached).exists()
    assert queued_ids(server) == [waiting]
    result = glance(server, tmp_path, "cache-delete", waiting)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert queued_ids(server) == []
    # Neither cached nor queued: Glance's 404, reported by the client.
    result = glance(server, tmp_path, "cache-delete", waiting)
    assert result.stderr == f"'HTTP 404 Not Found: Image {waiting} not found.': Unable to delete image '{waiting}' from cache.\n"


def test_cache_clear_targets(server: Daemon, tmp_path: Path) -> None:
    cached, waiting = image(server, payload(7000, 6)), image(server, payload(8000, 7))

    def prepare() -> None:
        if cached not in cached_ids(server):
            assert call(server, "PUT", f"/v2/cache/{cached}")[0] == 202
            wait_cached(server, cached)
        assert call(server, "PUT", f"/v2/queued_images/{waiting}")[0] == 200
        assert cached_ids(server) == {cached} and queued_ids(server) == [waiting]

    prepare()
    result = glance(server, tmp_path, "cache-clear", "--target", "cache")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert cached_ids(server) == set() and queued_ids(server) == [waiting]
    assert not cache_file(server, cached).exists()
    prepare()
    result = glance(server, tmp_path, "cache-clear", "--target", "queue")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert cached_ids(server) == {cached} and queued_ids(server) == []
    prepare()
    # 'both' is sent as no header at all, which the server takes as both.
    result = glance(server, tmp_path, "cache-clear", "--target", "both")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert cached_ids(server) == set() and queued_ids(server) == []
    prepare()
    result = glance(server, tmp_path, "cache-clear")  # the default target is both
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert cached_ids(server) == set() and queued_ids(server) == []


def test_cache_prune_and_clean(server: Daemon, tmp_path: Path) -> None:
    cached = image(server, payload(9000, 8))
    assert call(server, "PUT", f"/v2/cache/{cached}")[0] == 202
    wait_cached(server, cached)
    result = glance(server, tmp_path, "cache-prune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Pruned 0 file(s), 0 byte(s)."  # under the limit: nothing to do
    assert cached_ids(server) == {cached}
    junk = server.data_dir / "cache" / "invalid" / "11111111-2222-3333-4444-555555555555"
    junk.write_bytes(b"left by a failed fill")
    result = glance(server, tmp_path, "cache-clean")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert not junk.exists() and cached_ids(server) == {cached}


def test_a_non_admin_is_refused_by_every_command(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "cache_prefetcher_interval = 0\n[noauth]\ndefault_roles = member,reader\n")
    try:
        image_id = image(daemon, payload(1000, 9))
        assert call(daemon, "PUT", f"/v2/queued_images/{image_id}")[0] == 200  # as the admin
        listing = glance(daemon, tmp_path, "cache-list")
        assert listing.returncode == 1 and listing.stderr == "HTTP 403 Forbidden: You are not authorized to manage the image cache.\n"
        for command, message in ((["cache-queue", image_id], "not permitted to queue"),
                                 (["cache-delete", image_id], "not permitted to delete"),
                                 (["cache-clear"], "not permitted to delete")):
            result = glance(daemon, tmp_path, *command)
            assert message in result.stderr, (command, result.stdout, result.stderr)
        assert queued_ids(daemon) == [image_id] and cached_ids(daemon) == set()
    finally:
        stop_daemon(daemon)
