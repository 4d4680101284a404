"""Interoperable import against a real daemon process that dies (kill -9) or is stopped (SIGTERM)
in each phase of an import, then starts again on the same data directory.

The web-download source is a real aiohttp server in the test process (on its own thread and
loop, since the daemon is driven with blocking HTTP): ``/stall`` declares a large body, sends
its first MiB and then sends nothing more until the test ends; ``/disk.raw`` serves a whole
image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp import web

from conftest import ADMIN, MEMBER_A, Daemon, start_daemon, stop_daemon

MIB = 1 << 20
DATA = hashlib.shake_256(b"import-crash").digest(2 * MIB + 123)
STALL_DECLARED = 64 * MIB


# -- the web-download source ----------------------------------------------------------------------

class Source:
    """An aiohttp server on 127.0.0.1 in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.release: asyncio.Event | None = None
        self.stall_started = threading.Event()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="web-source", daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Source:
        self._thread.start()
        assert self._ready.wait(10), "the web-download source did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop_soon)
        self._thread.join(15)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()
        assert self._runner is not None
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def _stop_soon(self) -> None:
        assert self.release is not None
        self.release.set()
        self.loop.stop()

    async def _start(self) -> None:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/stall", self._stall)
        app.router.add_get("/disk.raw", self._whole)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = STALL_DECLARED
        await response.prepare(request)
        for start in range(0, MIB, 64 * 1024):
            await response.write(DATA[start:start + 64 * 1024])
        self.stall_started.set()
        assert self.release is not None
        await self.release.wait()  # never finishes while the test runs
        return response

    async def _whole(self, request: web.Request) -> web.Response:
        return web.Response(body=DATA, content_type="application/octet-stream")


@pytest.fixture
def source() -> Iterator[Source]:
    with Source() as s:
        yield s


def web_config(source: Source, extra: str = "") -> str:
    # [DEFAULT] options first: start_daemon writes this text right after its own [DEFAULT] lines.
    return (f"enabled_backends = fs:file,fs2:file\n{extra}"
            f"[import_filtering_opts]\nallow_private_networks = true\nallowed_ports = {source.port}\n")


# -- talking to the daemon -------------------------------------------------------------------------

def http(daemon: Daemon, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         as_: dict[str, str] = MEMBER_A) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    all_headers = {**as_, **(headers or {})}
    if data is not None and not isinstance(body, bytes):
        all_headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(daemon.url + path, method=method, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


def create_image(daemon: Daemon, name: str = "x") -> str:
    status, body = http(daemon, "POST", "/v2/images", {"name": name, "disk_format": "raw", "container_format": "bare"})
    assert status == 201, body
    return str(body["id"])


def show(daemon: Daemon, image_id: str) -> dict[str, Any]:
    status, body = http(daemon, "GET", f"/v2/images/{image_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def tasks(daemon: Daemon, image_id: str) -> list[dict[str, Any]]:
    status, body = http(daemon, "GET", f"/v2/images/{image_id}/tasks")
    assert status == 200, body
    return body["tasks"]  # type: ignore[no-any-return]


def start_import(daemon: Daemon, image_id: str, method: str, uri: str | None = None,
                 **body: Any) -> tuple[int, Any]:
    name: dict[str, Any] = {"name": method}
    if uri is not None:
        name["uri"] = uri
    return http(daemon, "POST", f"/v2/images/{image_id}/import", {"method": name, **body})


def wait_until(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_task(daemon: Daemon, image_id: str, count: int = 1) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def done() -> bool:
        found[:] = tasks(daemon, image_id)
        return len(found) >= count and all(t["status"] in ("success", "failure") for t in found)

    wait_until(done, f"the import of {image_id} to finish", timeout=60)
    return found[0]


def staging(daemon: Daemon) -> Path:
    return daemon.data_dir / "staging"


def staging_contents(daemon: Daemon) -> list[str]:
    """What the staging area holds, ``.incoming/`` entries included."""
    root = staging(daemon)
    found = [p.name for p in root.iterdir() if p.name != ".incoming"]
    incoming = root / ".incoming"
    if incoming.exists():
        found += [f".incoming/{p.name}" for p in incoming.iterdir()]
    return sorted(found)


def incoming_bytes(daemon: Daemon) -> int:
    incoming = staging(daemon) / ".incoming"
    return sum(p.stat().st_size for p in incoming.iterdir()) if incoming.exists() else 0


def store_files(daemon: Daemon, image_id: str, store: str = "fs") -> list[str]:
    root = daemon.data_dir / "images" / store
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"{image_id}*"))


def kill_9(daemon: Daemon) -> None:
    daemon.process.kill()
    daemon.process.wait()


def assert_clean_queued(daemon: Daemon, image_id: str) -> dict[str, Any]:
    image = show(daemon, image_id)
    assert image["status"] == "queued", image
    for prop in ("os_glance_import_task", "os_glance_importing_to_stores", "os_glance_stage_host"):
        assert not image.get(prop), (prop, image)
    assert image["size"] is None and image["checksum"] is None and not image.get("stores")
    assert staging_contents(daemon) == [], staging_contents(daemon)
    assert (staging(daemon) / ".incoming").is_dir()
    assert store_files(daemon, image_id) == []
    return image


def stage_and_import(daemon: Daemon, image_id: str, stores: list[str]) -> None:
    status, body = http(daemon, "PUT", f"/v2/images/{image_id}/stage", DATA,
                        {"Content-Type": "application/octet-stream"})
    assert status == 204, body
    status, body = start_import(daemon, image_id, "glance-direct", stores=stores)
    assert status == 202, body
    task = wait_task(daemon, image_id, count=len(tasks(daemon, image_id)))
    assert task["status"] == "success", task


# -- (a) kill -9 while PUT /stage streams ---------------------------------------------------------

def test_kill_9_during_stage(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    image_id = create_image(daemon)
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    try:
        # A chunked upload (no declared size) that sends 1 MiB and then waits.
        sock.sendall((f"PUT /v2/images/{image_id}/stage HTTP/1.1\r\nHost: x\r\n"
                      f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n"
                      "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        for start in range(0, MIB, 128 * 1024):
            piece = DATA[start:start + 128 * 1024]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        wait_until(lambda: show(daemon, image_id)["status"] == "uploading", "the image to be uploading")
        wait_until(lambda: incoming_bytes(daemon) > 0, "staged bytes on disk")
        assert staging_contents(daemon) != []  # the partial staged file is there...
        kill_9(daemon)
    finally:
        sock.close()
    restarted = start_daemon(tmp_path)
    try:
        # ...and gone after the restart; the image waits for data again.
        assert_clean_queued(restarted, image_id)
        assert not show(restarted, image_id).get("os_glance_failed_import")
        assert "recovered 1 interrupted upload" in restarted.log()
        # A glance-direct import without staged data is refused: the image is not uploading.
        status, _ = start_import(restarted, image_id, "glance-direct")
        assert status == 409
        # Staging again works at once (no 409 "already has data on staging"), and so does the import.
        stage_and_import(restarted, image_id, ["fs"])
        image = show(restarted, image_id)
        assert image["status"] == "active" and image["checksum"] == hashlib.md5(DATA).hexdigest()
        assert staging_contents(restarted) == []
    finally:
        stop_daemon(restarted)


def test_sigterm_during_stalled_stage(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "graceful_shutdown_timeout = 1\n")
    image_id = create_image(daemon)
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    try:
        sock.sendall((f"PUT /v2/images/{image_id}/stage HTTP/1.1\r\nHost: x\r\n"
                      f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {8 * MIB}\r\n\r\n").encode())
        sock.sendall(DATA[:MIB])
        wait_until(lambda: incoming_bytes(daemon) > 0, "staged bytes on disk")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0, daemon.log()
    finally:
        sock.close()
    # The stage was aborted cleanly by the daemon itself, before it exited.
    assert staging_contents(daemon) == []
    restarted = start_daemon(tmp_path)
    try:
        assert_clean_queued(restarted, image_id)
        assert "recovered" not in restarted.log()
        stage_and_import(restarted, image_id, ["fs"])
        assert show(restarted, image_id)["status"] == "active"
    finally:
        stop_daemon(restarted)


# -- (b) kill -9 while a web-download runs ---------------------------------------------------------

def test_kill_9_during_web_download(tmp_path: Path, source: Source) -> None:
    config = web_config(source)
    daemon = start_daemon(tmp_path, config)
    image_id = create_image(daemon)
    status, body = start_import(daemon, image_id, "web-download", source.url("/stall"), stores=["fs", "fs2"])
    assert status == 202, body
    assert source.stall_started.wait(30), "the daemon never fetched the source"
    wait_until(lambda: incoming_bytes(daemon) >= MIB, "the downloaded MiB in staging")
    during = show(daemon, image_id)
    assert during["status"] == "importing" and during["os_glance_import_task"]
    task_id = during["os_glance_import_task"]
    # While the import runs, a second one is refused.
    assert start_import(daemon, image_id, "web-download", source.url("/disk.raw"))[0] == 409
    kill_9(daemon)

    restarted = start_daemon(tmp_path, config)
    try:
        image = assert_clean_queued(restarted, image_id)
        assert store_files(restarted, image_id, "fs2") == []
        # The dead import's stores did not get the image: they are listed as failed.
        assert set(image.get("os_glance_failed_import", "").split(",")) == {"fs", "fs2"}
        (task,) = tasks(restarted, image_id)
        assert task["id"] == task_id and task["status"] == "failure", task
        assert "abandoned" in restarted.log()
        # The lock went with the task: a new import starts at once (202, not 409).
        status, body = start_import(restarted, image_id, "web-download", source.url("/disk.raw"),
                                    stores=["fs", "fs2"])
        assert status == 202, body
        task = wait_task(restarted, image_id, count=2)
        assert task["status"] == "success", task
        image = show(restarted, image_id)
        assert image["status"] == "active" and set(image["stores"].split(",")) == {"fs", "fs2"}
        assert image["checksum"] == hashlib.md5(DATA).hexdigest()
        assert not image.get("os_glance_failed_import") and not image.get("os_glance_import_task")
        assert http(restarted, "GET", f"/v2/images/{image_id}/file")[1] == DATA
        assert staging_contents(restarted) == []
    finally:
        stop_daemon(restarted)


# -- (c) after a successful glance-direct ----------------------------------------------------------

def test_kill_9_after_a_finished_import_keeps_it(tmp_path: Path) -> None:
    config = "enabled_backends = fs:file,fs2:file\n"
    daemon = start_daemon(tmp_path, config)
    image_id = create_image(daemon)
    stage_and_import(daemon, image_id, ["fs", "fs2"])
    before = show(daemon, image_id)
    assert before["status"] == "active"
    kill_9(daemon)

    restarted = start_daemon(tmp_path, config)
    try:
        image = show(restarted, image_id)
        assert image["status"] == "active" and set(image["stores"].split(",")) == {"fs", "fs2"}
        assert {k: image[k] for k in ("size", "checksum", "os_hash_value")} == \
               {k: before[k] for k in ("size", "checksum", "os_hash_value")}
        assert not image.get("os_glance_failed_import") and not image.get("os_glance_import_task")
        assert "abandoned" not in restarted.log()
        (task,) = tasks(restarted, image_id)
        assert task["status"] == "success"
        # Every location is whole on disk and readable through the daemon: read the image, drop
        # the first store's copy, and read it again from the second.
        for store in ("fs", "fs2"):
            assert (restarted.data_dir / "images" / store / image_id).read_bytes() == DATA
        assert http(restarted, "GET", f"/v2/images/{image_id}/file")[1] == DATA
        assert http(restarted, "DELETE", f"/v2/stores/fs/{image_id}", as_=ADMIN)[0] == 204
        assert store_files(restarted, image_id, "fs") == []
        assert show(restarted, image_id)["stores"] == "fs2"
        assert http(restarted, "GET", f"/v2/images/{image_id}/file")[1] == DATA
        assert staging_contents(restarted) == []
    finally:
        stop_daemon(restarted)


# -- graceful SIGTERM while a web-download never finishes -------------------------------------------

def test_sigterm_during_endless_web_download(tmp_path: Path, source: Source) -> None:
    config = web_config(source, "graceful_shutdown_timeout = 2\n")
    daemon = start_daemon(tmp_path, config)
    image_id = create_image(daemon)
    status, body = start_import(daemon, image_id, "web-download", source.url("/stall"))
    assert status == 202, body
    assert source.stall_started.wait(30), "the daemon never fetched the source"
    wait_until(lambda: incoming_bytes(daemon) >= MIB, "the downloaded MiB in staging")
    daemon.process.send_signal(signal.SIGTERM)
    # Exits by itself, well before stop_daemon's kill would (the source never ends).
    assert daemon.process.wait(30) == 0, daemon.log()
    assert "waiting for 1 import(s) in flight" in daemon.log()
    # The abort was clean before the process ended: nothing staged, the task failed, no lock.
    assert staging_contents(daemon) == []

    restarted = start_daemon(tmp_path, config)
    try:
        assert_clean_queued(restarted, image_id)
        (task,) = tasks(restarted, image_id)
        assert task["status"] == "failure" and "stopped" in task["message"], task
        assert "abandoned" not in restarted.log()  # nothing was left for the restart to recover
        status, body = start_import(restarted, image_id, "web-download", source.url("/disk.raw"))
        assert status == 202, body
        assert wait_task(restarted, image_id, count=2)["status"] == "success"
        assert show(restarted, image_id)["status"] == "active"
    finally:
        stop_daemon(restarted)
