"""The read-only http store (glance_store's ``http``) and the ``location_import`` task of
``POST /v2/images/{id}/locations``, against a real web server on a loopback port.

The server is Python's own ``http.server`` in a thread of the test: it serves a few files by
``HEAD`` and ``GET`` (with byte ranges), redirects, answers 404, and streams one body slowly
so a hash can be caught in flight."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import os
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from conftest import ADMIN, MEMBER_A, ApiClient, make_config, start_api
from streamd.config import load_config
from streamd.errors import ConfigError

DATA = os.urandom(5 * (1 << 20) + 123)
SMALL = os.urandom(70_000)
SLOW_SIZE = 64 << 20  # streamed at 1 MiB per 0.2 s: never read to the end in a test


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {"/images/data.raw": DATA, "/images/small.raw": SMALL}
    requests: list[tuple[str, str, str | None]] = []

    def log_message(self, *args: Any) -> None:
        return None

    def _target(self) -> bytes | None:
        path = self.path.split("#")[0]
        self.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/redirect302/"):
            self.send_response(302)
            self.send_header("Location", path.removeprefix("/redirect302"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path.startswith("/redirect307/"):
            self.send_response(307)
            self.send_header("Location", path.removeprefix("/redirect307"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == "/slow":
            return b""
        data = self.files.get(path)
        if data is None:
            self.send_error(404)
        return data

    def do_HEAD(self) -> None:
        data = self._target()
        if data is None:
            return
        self.send_response(200)
        self.send_header("Content-Length", str(SLOW_SIZE if self.path == "/slow" else len(data)))
        self.end_headers()

    def do_GET(self) -> None:
        data = self._target()
        if data is None:
            return
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(SLOW_SIZE))
            self.end_headers()
            chunk = os.urandom(1 << 20)
            with contextlib.suppress(OSError):
                for _ in range(SLOW_SIZE >> 20):
                    self.wfile.write(chunk)
                    time.sleep(0.2)
            return
        ranged = self.headers.get("Range")
        if ranged:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def sections(web: str, **default: str) -> dict[str, dict[str, str]]:
    port = web.rsplit(":", 1)[1]
    return {"DEFAULT": {"enabled_backends": "fs:file,web:http", "show_multiple_locations": "true",
                        "show_image_direct_url": "true", **default},
            "glance_store": {"default_backend": "fs"},
            "import_filtering_opts": {"allowed_ports": f"[80,443,{port}]", "allow_private_networks": "true"}}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, web: str, **default: str) -> AsyncIterator[ApiClient]:
    server, client, session = await start_api(make_config(tmp_path, None, **sections(web, **default)))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


def message(reply: Any) -> str:
    """An error's message without webob's trailing ``<br /><br />``."""
    return str(reply.error["message"].split("<br />")[0])


async def show(api: ApiClient, image_id: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/v2/images/{image_id}", as_=MEMBER_A)
    assert reply.status == 200, reply.body
    return reply.json  # type: ignore[no-any-return]


async def tasks_of(api: ApiClient, image_id: str) -> list[dict[str, Any]]:
    reply = await api.call("GET", f"/v2/images/{image_id}/tasks", as_=MEMBER_A)
    assert reply.status == 200, reply.body
    return reply.json["tasks"]  # type: ignore[no-any-return]


async def settled(api: ApiClient, image_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image and its one location_import task, once the task has ended."""
    for _ in range(1500):
        tasks = await tasks_of(api, image_id)
        if tasks and tasks[0]["status"] in ("success", "failure"):
            [task] = tasks
            assert task["type"] == "location_import"
            return await show(api, image_id), task
        await asyncio.sleep(0.02)
    raise AssertionError(f"the location_import task of {image_id} never ended")


async def add_location(api: ApiClient, image_id: str, url: str, as_: dict[str, str] = MEMBER_A,
                       **validation: str) -> Any:
    body: dict[str, Any] = {"url": url}
    if validation:
        body["validation_data"] = validation
    return await api.call("POST", f"/v2/images/{image_id}/locations", as_=as_, json_body=body)


async def download(api: ApiClient, image_id: str, headers: dict[str, str] | None = None) -> Any:
    return await api.call("GET", f"/v2/images/{image_id}/file", as_=MEMBER_A, headers=headers)


async def test_a_member_points_an_image_at_a_web_server_by_patch(tmp_path: Path, web: str) -> None:
    """PATCH add /locations with an http URL: active at once with the size the server names and no
    hashes (Glance's behaviour); the data is read from the server; deleting the image leaves it."""
    url = f"{web}/images/data.raw"
    async with running(tmp_path, web) as api:
        image = await api.create()
        reply = await api.patch(image["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": url, "metadata": {"foo": "bar"}}}])
        assert reply.status == 200, reply.body
        shown = reply.json
        assert (shown["status"], shown["size"], shown["checksum"], shown["os_hash_value"]) == (
            "active", len(DATA), None, None)
        assert shown["locations"] == [{"url": url, "metadata": {"foo": "bar", "store": "web"}}]
        assert shown["direct_url"] == url and shown["stores"] == "web"
        reply = await download(api, image["id"])
        assert reply.status == 200 and reply.body == DATA
        # A byte range: read from the server with a Range of its own.
        _Handler.requests.clear()
        reply = await download(api, image["id"], {"Range": "bytes=3000000-3000099"})
        assert reply.status == 206 and reply.body == DATA[3000000:3000100]
        # A second location with the same data (another URL of it), then removing the first.
        reply = await api.patch(image["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": f"{url}#copy", "metadata": {}}}])
        assert reply.status == 200 and len(reply.json["locations"]) == 2, reply.body
        reply = await api.patch(image["id"], [{"op": "remove", "path": "/locations/0"}], as_=ADMIN)
        assert reply.status == 200 and [loc["url"] for loc in reply.json["locations"]] == [f"{url}#copy"]
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
        assert _Handler.files["/images/data.raw"] is DATA  # nothing on the server is touched

        # Of a different size than the image's: refused.
        other = await api.create()
        reply = await api.patch(other["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": f"{web}/images/small.raw", "metadata": {}}}])
        assert reply.status == 200, reply.body
        reply = await api.patch(other["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": url, "metadata": {}}}])
        assert reply.status == 400 and f"is {len(DATA)} bytes, the image 70000" in message(reply)


async def test_locations_the_server_or_the_filter_refuse(tmp_path: Path, web: str) -> None:
    async with running(tmp_path, web) as api:
        image = await api.create()

        async def patched(url: str) -> Any:
            return await api.patch(image["id"], [{"op": "add", "path": "/locations/-",
                                                  "value": {"url": url, "metadata": {}}}])

        for url in (f"{web}/images/missing.raw", f"{web}/redirect307/images/small.raw", "http://127.0.0.1/nothing-listens-on-80"):
            reply = await patched(url)
            assert (reply.status, message(reply)) == (400, "Invalid location"), url
        # A port the filtering rules do not allow: web-download's rules, Glance's message.
        reply = await patched("http://127.0.0.1:8/images/small.raw")
        assert message(reply) == "URI for add location does not pass filtering: http://127.0.0.1:8/images/small.raw"
        reply = await add_location(api, image["id"], "http://127.0.0.1:8/images/small.raw")
        assert (reply.status, message(reply)) == (
            400, "URI for add location does not pass filtering: http://127.0.0.1:8/images/small.raw")
        assert (await show(api, image["id"]))["status"] == "queued"
        # Redirects (301/302) are followed, as glance_store follows them.
        reply = await patched(f"{web}/redirect302/images/small.raw")
        assert (reply.status, reply.json["size"]) == (200, len(SMALL)), reply.body
        assert (await download(api, image["id"])).body == SMALL


async def test_the_location_api_hashes_and_checks_what_the_server_sends(tmp_path: Path, web: str) -> None:
    """POST /v2/images/{id}/locations with an http store: anyone who may add a location may add an
    http one; the location_import task reads the data once for md5 + the named hash and activates
    the image only if the hash matches validation_data (do_secure_hash, Glance's default)."""
    url = f"{web}/images/data.raw"
    sha256 = hashlib.sha256(DATA).hexdigest()
    async with running(tmp_path, web) as api:
        image = await api.create()
        reply = await add_location(api, image["id"], url, os_hash_algo="sha256", os_hash_value=sha256)
        assert reply.status == 202, reply.body
        shown, task = await settled(api, image["id"])
        assert task["status"] == "success", task
        assert (shown["status"], shown["size"], shown["os_hash_algo"], shown["os_hash_value"], shown["checksum"]) == (
            "active", len(DATA), "sha256", sha256, hashlib.md5(DATA).hexdigest())
        assert shown["stores"] == "web" and "os_glance_import_task" not in shown

        # A hash that does not match: the task fails, the image is queued again without hashes; the
        # http location stays (as in Glance: its store cannot delete).
        wrong = await api.create()
        reply = await add_location(api, wrong["id"], url, os_hash_algo="sha512", os_hash_value="beefdead" * 16)
        assert reply.status == 202, reply.body
        shown, task = await settled(api, wrong["id"])
        assert task["status"] == "failure" and task["message"].startswith(
            f"os_hash_value: ({'beefdead' * 16}) not matched with actual os_hash_value: (")
        assert (shown["status"], shown["checksum"], shown["os_hash_algo"], shown["os_hash_value"]) == (
            "queued", None, None, None)
        assert shown["stores"] == "web"

        # No validation data: active at once, the hashes (hashing_algorithm) follow.
        plain = await api.create()
        assert (await add_location(api, plain["id"], url)).status == 202
        shown, task = await settled(api, plain["id"])
        assert task["status"] == "success"
        assert (shown["status"], shown["os_hash_algo"], shown["os_hash_value"]) == (
            "active", "sha512", hashlib.sha512(DATA).hexdigest())
        # An image that is not queued: 409; a URL of no store: 400 before any task.
        assert (await add_location(api, plain["id"], url)).status == 409
        bad = await api.create()
        reply = await add_location(api, bad["id"], f"{web}/images/missing.raw")
        assert (reply.status, message(reply)) == (400, "Invalid location")
        assert await tasks_of(api, bad["id"]) == []


async def test_without_do_secure_hash_validation_data_is_taken_as_given(tmp_path: Path, web: str) -> None:
    async with running(tmp_path, web, do_secure_hash="false") as api:
        image = await api.create()
        _Handler.requests.clear()
        reply = await add_location(api, image["id"], f"{web}/images/data.raw", os_hash_algo="sha512",
                                   os_hash_value="ab" * 64)
        assert reply.status == 202, reply.body
        shown, task = await settled(api, image["id"])
        assert task["status"] == "success"
        assert (shown["status"], shown["os_hash_algo"], shown["os_hash_value"], shown["checksum"]) == (
            "active", "sha512", "ab" * 64, None)
        assert [r[0] for r in _Handler.requests] == ["HEAD"]  # the data itself was never read


async def test_deleting_the_image_stops_its_hash(tmp_path: Path, web: str) -> None:
    """HashCalculationRemoteDeletionTest's case: the image is deleted while its data is hashed; the
    task ends within a second or two instead of reading the rest."""
    async with running(tmp_path, web) as api:
        image = await api.create()
        assert (await add_location(api, image["id"], f"{web}/slow")).status == 202
        for _ in range(500):
            shown = await show(api, image["id"])
            if shown["status"] == "active":
                break
            await asyncio.sleep(0.02)
        assert (shown["status"], shown["os_hash_algo"], shown["os_hash_value"]) == ("active", "sha512", None)
        await asyncio.sleep(0.5)
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
        for _ in range(250):
            reply = await api.call("GET", "/v2/tasks", as_=ADMIN)
            [task] = [t for t in reply.json["tasks"] if t["type"] == "location_import"]
            if task["status"] != "processing":
                break
            await asyncio.sleep(0.02)
        assert task["status"] == "failure", task


async def test_the_http_store_takes_no_data(tmp_path: Path, web: str) -> None:
    async with running(tmp_path, web) as api:
        reply = await api.call("GET", "/v2/info/stores", as_=MEMBER_A)
        assert reply.json["stores"] == [{"id": "fs", "default": "true"}, {"id": "web", "read-only": "true"}]
        image = await api.create()
        reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=SMALL,
                               headers={"Content-Type": "application/octet-stream", "X-Image-Meta-Store": "web"})
        assert (reply.status, message(reply)) == (400, "Store web is read-only")
        assert (await show(api, image["id"]))["status"] == "queued"
        # all_stores imports skip it (Glance's _get_available_stores); naming it is a 400.
        reply = await api.call("PUT", f"/v2/images/{image['id']}/stage", as_=MEMBER_A, data=SMALL,
                               headers={"Content-Type": "application/octet-stream"})
        assert reply.status == 204, reply.body
        reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                               json_body={"method": {"name": "glance-direct"}, "stores": ["web"]})
        assert (reply.status, message(reply)) == (400, "Store web is read-only")
        reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                               json_body={"method": {"name": "glance-direct"}, "all_stores": True})
        assert reply.status == 202, reply.body
        for _ in range(500):
            shown = await show(api, image["id"])
            if shown["status"] == "active":
                break
            await asyncio.sleep(0.02)
        assert shown["stores"] == "fs"


def test_an_http_store_cannot_be_the_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="an http store is read-only, it cannot be the default store"):
        load_config(None, overrides={"DEFAULT": {"data_dir": str(tmp_path), "enabled_backends": "web:http,fs:file"}})


async def test_added_locations_count_against_user_storage_quota(tmp_path: Path, web: str) -> None:
    """Glance's _check_user_storage_quota: each added location brings the image's size once more."""
    small = f"{web}/images/small.raw"
    async with running(tmp_path, web, user_storage_quota=str(len(SMALL) * 3 // 2)) as api:
        image = await api.create()
        reply = await api.patch(image["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": small, "metadata": {}}}])
        assert reply.status == 200, reply.body
        reply = await api.patch(image["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": f"{small}#again", "metadata": {}}}])
        left = len(SMALL) * 3 // 2 - len(SMALL)
        assert (reply.status, message(reply)) == (413, (
            f"Image exceeds the storage quota: The size of the data {len(SMALL)} will exceed the limit. "
            f"{left} bytes remaining."))
        assert len((await show(api, image["id"]))["locations"]) == 1
        # The 2.17 call is refused before any task when the data cannot fit.
        other = await api.create()
        reply = await add_location(api, other["id"], f"{web}/images/data.raw")
        assert reply.status == 413, reply.body
        assert await tasks_of(api, other["id"]) == []
        assert (await show(api, other["id"]))["status"] == "queued"
