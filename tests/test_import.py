"""Interoperable image import over HTTP, on file stores: stage, import, tasks, discovery, per-store delete.

Every test runs the real application on a loopback port with three file stores
(``fs``, ``fs2``, ``fs3``; ``fs`` the default unless a test says otherwise).
Imports run in the background after the 202, so the tests poll the image and its
tasks until the import settled (with a deadline, never a timing assertion), then
check the catalogue, the files in the stores and the staging directory.

File stores on the staging filesystem take a staged file by hard links and a
rename; with the staging area on another filesystem (/dev/shm) every store is
written a copy. The tests that matter run both ways.

Stores are made to fail for real: the tests run as root, so permissions stop
nothing; instead a store's ``.incoming`` directory (where a file store creates
its temporary files) is replaced by a regular file, and/or the image's final path
in a store is taken by a non-empty directory, so the link or rename into place fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conftest import ADMIN, MEMBER_A, MEMBER_B, ApiClient, both_databases, make_config, start_api
from streamd.status import status_of
from streamd.catalog import Catalog
from streamd.errors import StateConflict

MiB = 1 << 20
PAYLOAD = random.Random(5).randbytes(3 * MiB + 4321)
STORES = "fs:file,fs2:file,fs3:file"
OCTET = {"Content-Type": "application/octet-stream"}
SETTLE_DEADLINE = 60.0


# -- helpers -------------------------------------------------------------------------------------

@asynccontextmanager
async def running(tmp_path: Path, database_url: str | None = None, *, staging_elsewhere: bool = False,
                  **sections: dict[str, str]) -> AsyncIterator[ApiClient]:
    """The application with three file stores (sections add to or override the defaults).

    ``staging_elsewhere`` puts the staging area on another filesystem (/dev/shm), so that no
    store can take the staged file by a rename or a link: every store is written a copy.
    """
    merged: dict[str, dict[str, str]] = {"DEFAULT": {"enabled_backends": STORES}}
    elsewhere: Path | None = None
    if staging_elsewhere:
        elsewhere = Path("/dev/shm") / f"streamd-test-staging-{uuid.uuid4().hex}"
        merged["DEFAULT"]["node_staging_uri"] = elsewhere.as_uri()
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    config = make_config(tmp_path, database_url, **merged)
    if elsewhere is not None:
        assert os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev
    server, api, session = await start_api(config)
    try:
        yield api
    finally:
        await session.close()
        await server.close()
        if elsewhere is not None:
            shutil.rmtree(elsewhere, ignore_errors=True)


def data_dir(api: ApiClient) -> Path:
    return api.config.data_dir


def store_file(api: ApiClient, store: str, image_id: str) -> Path:
    return data_dir(api) / "images" / store / image_id


def staging_dir(api: ApiClient) -> Path:
    return api.config.staging_dir


def staging_leftovers(api: ApiClient) -> list[str]:
    """Everything in the staging area (its own ``.incoming`` directory is no leftover, its contents are)."""
    root = staging_dir(api)
    found = []
    for path in root.rglob("*"):
        if path.is_dir() and path.relative_to(root) == Path(".incoming"):
            continue
        found.append(str(path.relative_to(root)))
    return sorted(found)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


async def show(api: ApiClient, image_id: str, as_: dict[str, str] = ADMIN) -> dict[str, Any]:
    reply = await api.call("GET", f"/v2/images/{image_id}", as_=as_)
    assert reply.status == 200, reply.body
    return reply.json  # type: ignore[no-any-return]


async def tasks_of(api: ApiClient, image_id: str, as_: dict[str, str] = ADMIN) -> list[dict[str, Any]]:
    reply = await api.call("GET", f"/v2/images/{image_id}/tasks", as_=as_)
    assert reply.status == 200, reply.body
    return reply.json["tasks"]  # type: ignore[no-any-return]


async def stage(api: ApiClient, image_id: str, data: Any = PAYLOAD, *, as_: dict[str, str] = MEMBER_A,
                headers: dict[str, str] | None = None) -> Any:
    return await api.call("PUT", f"/v2/images/{image_id}/stage", as_=as_, data=data,
                          headers={**OCTET, **(headers or {})})


async def start_import(api: ApiClient, image_id: str, body: dict[str, Any], *, as_: dict[str, str] = MEMBER_A,
                       headers: dict[str, str] | None = None) -> Any:
    return await api.call("POST", f"/v2/images/{image_id}/import", as_=as_, json_body=body, headers=headers)


async def settle(api: ApiClient, image_id: str, *, tasks: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll until the image has ``tasks`` finished import tasks and no import lock; return image and tasks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_DEADLINE
    while True:
        image = await show(api, image_id)
        found = await tasks_of(api, image_id)
        if (len(found) >= tasks and all(t["status"] in ("success", "failure") for t in found)
                and image["status"] != "importing" and "os_glance_import_task" not in image):
            return image, found
        if loop.time() > deadline:
            raise AssertionError(f"import of {image_id} did not settle: {image} {found}")
        await asyncio.sleep(0.05)


async def staged_image(api: ApiClient, data: bytes = PAYLOAD, **create: Any) -> dict[str, Any]:
    image = await api.create(**create)
    reply = await stage(api, image["id"], data)
    assert reply.status == 204, reply.body
    return image


async def active_image(api: ApiClient, data: bytes = PAYLOAD) -> dict[str, Any]:
    """An image of MEMBER_A uploaded (PUT /file) to the default store."""
    image = await api.create()
    reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=data, headers=OCTET)
    assert reply.status == 204, reply.body
    return await show(api, image["id"])


async def download(api: ApiClient, image_id: str) -> bytes:
    reply = await api.call("GET", f"/v2/images/{image_id}/file", as_=ADMIN)
    assert reply.status == 200, reply.body
    return reply.body


def break_store(api: ApiClient, store: str, image_id: str) -> None:
    """Make ``store`` unable to take ``image_id``, however it would: its ``.incoming`` (where it
    creates temporary files) becomes a regular file, and the image's final path in it a
    non-empty directory (so a rename or link into place fails too)."""
    incoming = data_dir(api) / "images" / store / ".incoming"
    shutil.rmtree(incoming)
    incoming.write_bytes(b"not a directory")
    blocker = store_file(api, store, image_id)
    blocker.mkdir()
    (blocker / "occupied").write_bytes(b"x")


def incoming_leftovers(api: ApiClient, *stores: str) -> list[str]:
    found = []
    for store in stores:
        incoming = data_dir(api) / "images" / store / ".incoming"
        if incoming.is_dir():
            found += [f"{store}/{p.name}" for p in incoming.iterdir()]
    return found


def assert_good_image(image: dict[str, Any], data: bytes = PAYLOAD) -> None:
    assert image["status"] == "active"
    assert image["size"] == len(data)
    assert image["checksum"] == md5(data)
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == sha512(data)
    assert image.get("os_glance_importing_to_stores", "") == ""


def run(*args: str) -> bytes:
    done = subprocess.run(list(args), capture_output=True, timeout=120)
    assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
    return done.stdout


# -- web sources -----------------------------------------------------------------------------------

class Source:
    """An HTTP server on 127.0.0.1 playing web-download sources."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stalled = asyncio.Event()
        app = web.Application()
        app.router.add_get("/data", self._data)
        app.router.add_get("/missing", self._missing)
        app.router.add_get("/slow", self._slow)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        self.liar: asyncio.Server | None = None

    async def start(self) -> None:
        await self.server.start_server()
        self.liar = await asyncio.start_server(self._lie, "127.0.0.1", 0)

    async def close(self) -> None:
        self.release.set()
        assert self.liar is not None
        self.liar.close()
        await self.server.close()

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def liar_port(self) -> int:
        assert self.liar is not None
        return int(self.liar.sockets[0].getsockname()[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _data(self, request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/octet-stream")

    async def _missing(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such image")

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        """Sends a first part, then waits until released before the rest (bounded, never hangs a test)."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(PAYLOAD)
        await response.prepare(request)
        await response.write(PAYLOAD[:256 * 1024])
        self.stalled.set()
        try:
            await asyncio.wait_for(self.release.wait(), 30)
        except asyncio.TimeoutError:
            return response
        await response.write(PAYLOAD[256 * 1024:])
        await response.write_eof()
        return response

    async def _lie(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Declares the whole payload's length, sends a part of it and closes."""
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PAYLOAD))
            writer.write(PAYLOAD[:MiB])
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def source() -> AsyncIterator[Source]:
    src = Source()
    await src.start()
    try:
        yield src
    finally:
        await src.close()


def open_filter(*ports: int) -> dict[str, str]:
    return {"allow_private_networks": "true", "allowed_ports": ",".join(str(p) for p in ports)}


# -- 1. discovery ------------------------------------------------------------------------------------

async def test_discovery(tmp_path: Path) -> None:
    async with running(tmp_path, glance_store={"default_backend": "fs2"},
                       fs={"store_description": "Fast local disk"},
                       fs3={"store_description": "Slow archive"}) as api:
        reply = await api.call("GET", "/v2/info/import", as_=MEMBER_A)
        assert reply.status == 200
        methods = reply.json["import-methods"]
        assert methods["type"] == "array"
        assert methods["value"] == ["glance-direct", "web-download", "copy-image"]

        reply = await api.call("GET", "/v2/info/stores", as_=MEMBER_A)
        assert reply.status == 200
        assert reply.json["stores"] == [
            {"id": "fs", "description": "Fast local disk"},
            {"id": "fs2", "default": "true"},
            {"id": "fs3", "description": "Slow archive"},
        ]

        assert (await api.call("GET", "/v2/info/stores/detail", as_=MEMBER_A)).status == 403
        reply = await api.call("GET", "/v2/info/stores/detail", as_=ADMIN)
        assert reply.status == 200
        detail = {s["id"]: s for s in reply.json["stores"]}
        assert list(detail) == ["fs", "fs2", "fs3"]
        assert all(s["type"] == "file" for s in detail.values())
        assert detail["fs2"]["default"] == "true" and "default" not in detail["fs"]
        assert detail["fs"]["description"] == "Fast local disk"
        for name, info in detail.items():
            assert info["properties"]["data_dir"] == str(data_dir(api) / "images" / name)
            assert "chunk_size" in info["properties"] and "thin_provisioning" in info["properties"]

        # POST /images names the enabled methods and stores too.
        reply = await api.call("POST", "/v2/images", as_=MEMBER_A,
                               json_body={"disk_format": "raw", "container_format": "bare"})
        assert reply.headers["OpenStack-image-import-methods"] == "glance-direct,web-download,copy-image"
        assert reply.headers["OpenStack-image-store-ids"] == "fs,fs2,fs3"


# -- 2. stage --------------------------------------------------------------------------------------------

async def test_stage(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await api.create()
        assert (await stage(api, image["id"], headers={"Content-Type": "text/plain"})).status == 415
        assert (await show(api, image["id"]))["status"] == "queued"
        assert staging_leftovers(api) == []

        reply = await stage(api, image["id"])
        assert reply.status == 204, reply.body
        shown = await show(api, image["id"], as_=MEMBER_A)
        assert shown["status"] == "uploading" and shown["size"] == len(PAYLOAD)
        assert shown["checksum"] is None  # known once imported
        assert "os_glance_stage_host" not in shown  # hidden, as in Glance
        assert (staging_dir(api) / image["id"]).read_bytes() == PAYLOAD
        assert json.loads((staging_dir(api) / f"{image['id']}.json").read_text())["checksum"] == md5(PAYLOAD)
        # Nothing went to a store, and a download has nothing to give yet.
        assert not store_file(api, "fs", image["id"]).exists()
        assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).status == 204

        # A second stage: 409, and the staged data is untouched.
        assert (await stage(api, image["id"], b"other data")).status == 409
        assert (staging_dir(api) / image["id"]).read_bytes() == PAYLOAD
        # Another project cannot stage into the image (it does not even see it).
        other = await api.create()
        assert (await stage(api, other["id"], as_=MEMBER_B)).status == 404
        # Only a queued image can be staged: an active one is refused.
        active = await active_image(api)
        assert (await stage(api, active["id"])).status == 409
        assert (await show(api, active["id"]))["status"] == "active"


async def test_glance_direct_disabled(tmp_path: Path) -> None:
    async with running(tmp_path, DEFAULT={"enabled_import_methods": "web-download,copy-image"}) as api:
        info = (await api.call("GET", "/v2/info/import", as_=MEMBER_A)).json
        assert info["import-methods"]["value"] == ["web-download", "copy-image"]
        image = await api.create()
        assert (await stage(api, image["id"])).status == 404
        assert (await show(api, image["id"]))["status"] == "queued"
        assert staging_leftovers(api) == []
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}})).status == 400
        assert await tasks_of(api, image["id"]) == []


async def test_stage_inspects_the_data(tmp_path: Path) -> None:
    """A stage is inspected while it arrives: data that is not the declared format is refused (415)."""
    async with running(tmp_path) as api:
        image = await api.create(disk_format="qcow2")
        garbage = random.Random(1).randbytes(MiB)
        reply = await stage(api, image["id"], garbage)
        assert reply.status == 415, reply.body
        assert (await show(api, image["id"]))["status"] == "queued"
        assert staging_leftovers(api) == []
        # Nothing blocks a proper stage afterwards.
        qcow2 = tmp_path / "small.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "8M")
        reply = await stage(api, image["id"], qcow2.read_bytes())
        assert reply.status == 204, reply.body
        assert (await show(api, image["id"]))["status"] == "uploading"


async def test_stage_shorter_than_declared(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await api.create()

        async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length, only the declared size
            for start in range(0, MiB, 64 * 1024):
                yield PAYLOAD[start:start + 64 * 1024]

        reply = await stage(api, image["id"], body(), headers={"x-openstack-image-size": str(2 * MiB)})
        assert reply.status == 400, reply.body
        shown = await show(api, image["id"])
        assert shown["status"] == "queued" and shown["size"] is None
        assert staging_leftovers(api) == []
        # A declared size contradicting Content-Length is refused before anything is written.
        reply = await stage(api, image["id"], PAYLOAD[:1000], headers={"x-openstack-image-size": "999"})
        assert reply.status == 400
        assert (await show(api, image["id"]))["status"] == "queued"
        assert staging_leftovers(api) == []
        # And the image can still be staged and imported.
        assert (await stage(api, image["id"])).status == 204
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}})).status == 202
        shown, _ = await settle(api, image["id"])
        assert_good_image(shown)


# -- 3. glance-direct ------------------------------------------------------------------------------------

@both_databases
async def test_glance_direct_to_default_store_is_a_rename(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as api:
        image = await staged_image(api, name="direct")
        staged_inode = os.stat(staging_dir(api) / image["id"]).st_ino
        reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"}})
        assert reply.status == 202, reply.body
        shown, tasks = await settle(api, image["id"])

        assert_good_image(shown)
        assert shown["virtual_size"] == len(PAYLOAD)
        assert shown["stores"] == "fs"
        assert "os_glance_import_task" not in shown
        assert shown.get("os_glance_failed_import", "") == ""
        path = store_file(api, "fs", image["id"])
        assert os.stat(path).st_ino == staged_inode  # moved, not copied
        assert path.read_bytes() == PAYLOAD
        assert not store_file(api, "fs2", image["id"]).exists()
        assert await download(api, image["id"]) == PAYLOAD
        assert staging_leftovers(api) == []

        assert len(tasks) == 1
        task = tasks[0]
        assert task["status"] == "success", task
        assert task["type"] == "api_image_import"
        assert task["message"] == "Copied 3 MiB"
        assert task["result"] == {"image_id": image["id"]}
        assert task["image_id"] == image["id"]
        assert task["owner"] == MEMBER_A["X-Project-Id"] and task["user_id"] == MEMBER_A["X-User-Id"]
        assert task["input"]["import_req"]["method"]["name"] == "glance-direct"
        assert task["input"]["stores"] == ["fs"]
        # A finished import cannot run again: the image is active.
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}})).status == 409


@pytest.mark.parametrize("how, elsewhere", [("stores", False), ("stores", True), ("all_stores", False),
                                            ("header", False)])
async def test_glance_direct_to_several_stores(tmp_path: Path, how: str, elsewhere: bool) -> None:
    async with running(tmp_path, staging_elsewhere=elsewhere) as api:
        image = await staged_image(api)
        body: dict[str, Any] = {"method": {"name": "glance-direct"}}
        headers = None
        if how == "stores":
            body["stores"] = ["fs2", "fs", "fs3"]
            expected = ["fs", "fs2", "fs3"]
        elif how == "all_stores":
            body["all_stores"] = True
            expected = ["fs", "fs2", "fs3"]
        else:
            headers = {"X-Image-Meta-Store": "fs3"}
            expected = ["fs3"]
        reply = await start_import(api, image["id"], body, headers=headers)
        assert reply.status == 202, reply.body
        shown, tasks = await settle(api, image["id"])

        assert_good_image(shown)
        assert sorted(shown["stores"].split(",")) == expected
        for name in ("fs", "fs2", "fs3"):
            assert store_file(api, name, image["id"]).exists() == (name in expected)
            if name in expected:
                assert store_file(api, name, image["id"]).read_bytes() == PAYLOAD
        assert await download(api, image["id"]) == PAYLOAD
        assert staging_leftovers(api) == []
        assert incoming_leftovers(api, "fs", "fs2", "fs3") == []
        assert [t["status"] for t in tasks] == ["success"]
        assert tasks[0]["message"] == "Copied 3 MiB"
        assert sorted(tasks[0]["input"]["stores"]) == expected
        assert "os_glance_import_task" not in shown
        assert shown.get("os_glance_failed_import", "") == ""


# -- 4. request validation and preconditions --------------------------------------------------------

async def test_import_body_validation(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await staged_image(api)
        path = f"/v2/images/{image['id']}/import"
        gd = {"name": "glance-direct"}
        bad: list[tuple[Any, dict[str, str] | None]] = [
            ({}, None),
            ({"method": "glance-direct"}, None),
            ({"method": {}}, None),
            ({"method": {"name": "no-such-method"}}, None),
            ({"method": {"name": "glance-download"}}, None),  # not enabled by default
            ({"method": gd, "stores": ["fs2"]}, {"X-Image-Meta-Store": "fs3"}),
            ({"method": gd, "all_stores": True, "stores": ["fs2"]}, None),
            ({"method": gd, "all_stores": True}, {"X-Image-Meta-Store": "fs3"}),
            ({"method": gd, "stores": ["fs", "nowhere"]}, None),
            ({"method": gd}, {"X-Image-Meta-Store": "nowhere"}),
            ({"method": gd, "stores": []}, None),
            ({"method": gd, "stores": "fs"}, None),
            ({"method": gd, "all_stores_must_succeed": "false"}, None),
            ({"method": gd, "all_stores_must_succeed": 0}, None),
            ({"method": gd, "all_stores": "yes"}, None),
        ]
        for body, headers in bad:
            reply = await api.call("POST", path, as_=MEMBER_A, json_body=body, headers=headers)
            assert reply.status == 400, (body, headers, reply.status, reply.body)
        reply = await api.call("POST", path, as_=MEMBER_A, data=b"{not json",
                               headers={"Content-Type": "application/json"})
        assert reply.status == 400
        # None of them started anything.
        shown = await show(api, image["id"])
        assert shown["status"] == "uploading" and "os_glance_import_task" not in shown
        assert await tasks_of(api, image["id"]) == []
        assert (staging_dir(api) / image["id"]).exists()
        # Another project: not found.
        assert (await start_import(api, image["id"], {"method": gd}, as_=MEMBER_B)).status == 404
        # web-download without a (usable) uri, on a queued image.
        queued = await api.create()
        for method in ({"name": "web-download"}, {"name": "web-download", "uri": ""},
                       {"name": "web-download", "uri": 42}):
            assert (await start_import(api, queued["id"], {"method": method})).status == 400, method
        assert (await show(api, queued["id"]))["status"] == "queued"
        assert await tasks_of(api, queued["id"]) == []


async def test_import_preconditions(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        queued = await api.create()
        # glance-direct without staged data.
        assert (await start_import(api, queued["id"], {"method": {"name": "glance-direct"}})).status == 409
        # web-download needs a queued image: a staged one is not.
        staged = await staged_image(api)
        reply = await start_import(api, staged["id"], {"method": {"name": "web-download",
                                                                  "uri": "http://example.com/x.img"}})
        assert reply.status == 409
        # An active image takes copy-image only.
        active = await active_image(api)
        for body in ({"method": {"name": "glance-direct"}},
                     {"method": {"name": "web-download", "uri": "http://example.com/x.img"}}):
            assert (await start_import(api, active["id"], body)).status == 409
        # copy-image on an image that is not active.
        assert (await start_import(api, queued["id"], {"method": {"name": "copy-image"}, "stores": ["fs2"]},
                                   as_=ADMIN)).status == 409
        # Formats must be set before an import (the stage itself does not need them).
        formatless = (await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={"name": "nf"})).json
        reply = await start_import(api, formatless["id"], {"method": {"name": "web-download",
                                                                      "uri": "http://example.com/x.img"}})
        assert reply.status == 409
        assert (await stage(api, formatless["id"])).status == 204
        assert (await start_import(api, formatless["id"], {"method": {"name": "glance-direct"}})).status == 409
        for image in (queued, staged, active, formatless):
            assert await tasks_of(api, image["id"]) == []
            assert "os_glance_import_task" not in await show(api, image["id"])
        assert (await show(api, queued["id"]))["status"] == "queued"
        assert (await show(api, staged["id"]))["status"] == "uploading"


# -- 5. all_stores_must_succeed ----------------------------------------------------------------------------

# Staging on the stores' filesystem (the stores take the staged file by links and a rename),
# or elsewhere (every store is written a copy).
LAYOUTS = pytest.mark.parametrize("elsewhere", [False, True], ids=["staging-beside-stores", "staging-elsewhere"])


@both_databases
@LAYOUTS
async def test_all_stores_must_succeed_true(tmp_path: Path, database_url: str, elsewhere: bool) -> None:
    async with running(tmp_path, database_url, staging_elsewhere=elsewhere) as api:
        image = await staged_image(api)
        break_store(api, "fs2", image["id"])
        reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"},
                                                      "stores": ["fs", "fs2", "fs3"]})
        assert reply.status == 202, reply.body
        shown, tasks = await settle(api, image["id"])

        assert shown["status"] == "queued"
        assert "stores" not in shown
        assert shown["checksum"] is None and shown["os_hash_value"] is None and shown["size"] is None
        failed = shown.get("os_glance_failed_import", "").split(",")
        assert "fs2" in failed and set(failed) <= {"fs", "fs2", "fs3"}
        assert shown.get("os_glance_importing_to_stores", "") == ""
        # The stores that took the data lost it again; the failing store's own files are untouched.
        for name in ("fs", "fs3"):
            assert not store_file(api, name, image["id"]).exists()
        assert (store_file(api, "fs2", image["id"]) / "occupied").exists()
        assert incoming_leftovers(api, "fs", "fs3") == []
        assert staging_leftovers(api) == []
        assert [t["status"] for t in tasks] == ["failure"]
        assert "fs2" in tasks[0]["message"]
        assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).status == 204

        # The image can be staged and imported again (to the stores that work).
        assert (await stage(api, image["id"])).status == 204
        reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"}, "stores": ["fs", "fs3"]})
        assert reply.status == 202
        shown, tasks = await settle(api, image["id"], tasks=2)
        assert_good_image(shown)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs3"]
        for name in ("fs", "fs3"):
            assert store_file(api, name, image["id"]).read_bytes() == PAYLOAD
        assert sorted(t["status"] for t in tasks) == ["failure", "success"]
        # The stores of the new import are off the failed list; fs2 stays on it.
        assert shown["os_glance_failed_import"] == "fs2"
        assert staging_leftovers(api) == []


@LAYOUTS
async def test_all_stores_must_succeed_true_removes_committed_data(tmp_path: Path, elsewhere: bool) -> None:
    """A store that fails at its very end (the rename into place): the store that took everything loses it."""
    async with running(tmp_path, staging_elsewhere=elsewhere) as api:
        image = await staged_image(api)
        blocker = store_file(api, "fs3", image["id"])
        blocker.mkdir()
        (blocker / "occupied").write_bytes(b"x")
        reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"},
                                                      "stores": ["fs2", "fs3"]})
        assert reply.status == 202
        shown, tasks = await settle(api, image["id"])
        assert shown["status"] == "queued" and "stores" not in shown
        assert "fs3" in shown.get("os_glance_failed_import", "").split(",")
        assert not store_file(api, "fs2", image["id"]).exists()
        assert (blocker / "occupied").exists()
        assert incoming_leftovers(api, "fs2", "fs3") == []
        assert [t["status"] for t in tasks] == ["failure"]
        assert staging_leftovers(api) == []


@LAYOUTS
async def test_all_stores_must_succeed_false(tmp_path: Path, elsewhere: bool) -> None:
    async with running(tmp_path, staging_elsewhere=elsewhere) as api:
        image = await staged_image(api)
        break_store(api, "fs2", image["id"])
        reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"}, "all_stores": True,
                                                      "all_stores_must_succeed": False})
        assert reply.status == 202, reply.body
        shown, tasks = await settle(api, image["id"])
        assert_good_image(shown)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs3"]
        assert shown["os_glance_failed_import"] == "fs2"
        for name in ("fs", "fs3"):
            assert store_file(api, name, image["id"]).read_bytes() == PAYLOAD
        assert (store_file(api, "fs2", image["id"]) / "occupied").exists()
        assert await download(api, image["id"]) == PAYLOAD
        assert incoming_leftovers(api, "fs", "fs3") == []
        assert staging_leftovers(api) == []
        assert [t["status"] for t in tasks] == ["success"]


@LAYOUTS
async def test_all_stores_must_succeed_false_every_store_fails(tmp_path: Path, elsewhere: bool) -> None:
    async with running(tmp_path, staging_elsewhere=elsewhere) as api:
        image = await staged_image(api)
        break_store(api, "fs2", image["id"])
        break_store(api, "fs3", image["id"])
        reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"}, "stores": ["fs2", "fs3"],
                                                      "all_stores_must_succeed": False})
        assert reply.status == 202
        shown, tasks = await settle(api, image["id"])
        assert shown["status"] == "queued" and "stores" not in shown
        assert sorted(shown["os_glance_failed_import"].split(",")) == ["fs2", "fs3"]
        assert [t["status"] for t in tasks] == ["failure"]
        assert staging_leftovers(api) == []


# -- 6. web-download -----------------------------------------------------------------------------------------

async def test_web_download(tmp_path: Path, source: Source) -> None:
    async with running(tmp_path, import_filtering_opts=open_filter(source.port)) as api:
        image = await api.create()
        reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": source.url("/data")},
                                                      "stores": ["fs", "fs2"]})
        assert reply.status == 202, reply.body
        shown, tasks = await settle(api, image["id"])
        assert_good_image(shown)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs2"]
        assert store_file(api, "fs2", image["id"]).read_bytes() == PAYLOAD
        assert await download(api, image["id"]) == PAYLOAD
        assert staging_leftovers(api) == []
        assert [t["status"] for t in tasks] == ["success"]
        assert tasks[0]["input"]["import_req"]["method"]["uri"] == source.url("/data")


async def test_web_download_refused_by_the_filter(tmp_path: Path, source: Source) -> None:
    async with running(tmp_path) as api:  # default filter: ports 80 and 443, no private networks
        image = await api.create()
        for uri in (source.url("/data"),            # port not allowed
                    "http://127.0.0.1/data",         # no port: loopback refused
                    "http://[::1]/data",
                    "ftp://example.com/x.img",       # scheme
                    "http://2130706433/data"):       # numeric host
            reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": uri}})
            assert reply.status == 400, (uri, reply.body)
        shown = await show(api, image["id"])
        assert shown["status"] == "queued" and "os_glance_import_task" not in shown
        assert await tasks_of(api, image["id"]) == []
    async with running(tmp_path / "other", import_filtering_opts=open_filter(source.port + 1)) as api:
        image = await api.create()
        reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": source.url("/data")}})
        assert reply.status == 400
        assert (await show(api, image["id"]))["status"] == "queued"
        assert await tasks_of(api, image["id"]) == []


async def test_web_download_source_failures(tmp_path: Path, source: Source) -> None:
    async with running(tmp_path, import_filtering_opts=open_filter(source.port, source.liar_port)) as api:
        missing = await api.create()
        reply = await start_import(api, missing["id"], {"method": {"name": "web-download",
                                                                   "uri": source.url("/missing")}})
        assert reply.status == 202
        liar = await api.create()
        reply = await start_import(api, liar["id"], {"method": {"name": "web-download",
                                                                "uri": f"http://127.0.0.1:{source.liar_port}/x"}})
        assert reply.status == 202
        for image in (missing, liar):
            shown, tasks = await settle(api, image["id"])
            assert shown["status"] == "queued", shown
            assert "stores" not in shown and shown["checksum"] is None
            assert shown["os_glance_failed_import"] == "fs"
            assert [t["status"] for t in tasks] == ["failure"]
            assert not store_file(api, "fs", image["id"]).exists()
        assert "404" in (await tasks_of(api, missing["id"]))[0]["message"]
        assert staging_leftovers(api) == []
        assert incoming_leftovers(api, "fs") == []
        # A failed web-download can be retried.
        reply = await start_import(api, missing["id"], {"method": {"name": "web-download", "uri": source.url("/data")}})
        assert reply.status == 202
        shown, tasks = await settle(api, missing["id"], tasks=2)
        assert_good_image(shown)
        assert shown.get("os_glance_failed_import", "") == ""


# -- 7. copy-image -------------------------------------------------------------------------------------------

@both_databases
async def test_copy_image(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as api:
        image = await active_image(api)
        image_id = image["id"]
        # Only admins copy.
        assert (await start_import(api, image_id, {"method": {"name": "copy-image"}, "stores": ["fs2"]})).status == 403
        reply = await start_import(api, image_id, {"method": {"name": "copy-image"}, "stores": ["fs2"]}, as_=ADMIN)
        assert reply.status == 202, reply.body
        shown, tasks = await settle(api, image_id)
        assert_good_image(shown)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs2"]
        assert store_file(api, "fs2", image_id).read_bytes() == PAYLOAD
        assert [t["status"] for t in tasks] == ["success"]
        assert tasks[0]["owner"] == ADMIN["X-Project-Id"]

        # A store that already holds the image: 400, nothing started.
        for stores in (["fs"], ["fs2", "fs3"]):
            reply = await start_import(api, image_id, {"method": {"name": "copy-image"}, "stores": stores}, as_=ADMIN)
            assert reply.status == 400, stores
        reply = await start_import(api, image_id, {"method": {"name": "copy-image"}},
                                   headers={"X-Image-Meta-Store": "fs"}, as_=ADMIN)
        assert reply.status == 400  # neither stores nor header: the default store, which holds it
        assert len(await tasks_of(api, image_id)) == 1

        # all_stores copies to the stores that lack it only.
        reply = await start_import(api, image_id, {"method": {"name": "copy-image"}, "all_stores": True}, as_=ADMIN)
        assert reply.status == 202
        shown, tasks = await settle(api, image_id, tasks=2)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs2", "fs3"]
        assert tasks[0]["input"]["stores"] == ["fs3"]
        assert store_file(api, "fs3", image_id).read_bytes() == PAYLOAD
        assert_good_image(shown)

        # Every store holds it: 202, and nothing happens.
        reply = await start_import(api, image_id, {"method": {"name": "copy-image"}, "all_stores": True}, as_=ADMIN)
        assert reply.status == 202
        assert len(await tasks_of(api, image_id)) == 2
        assert "os_glance_import_task" not in await show(api, image_id)


async def test_copy_image_failure_keeps_the_image(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await active_image(api)
        break_store(api, "fs3", image["id"])
        reply = await start_import(api, image["id"], {"method": {"name": "copy-image"}, "stores": ["fs2", "fs3"]},
                                   as_=ADMIN)
        assert reply.status == 202
        shown, tasks = await settle(api, image["id"])
        assert_good_image(shown)
        assert shown["stores"] == "fs"
        assert "fs3" in shown["os_glance_failed_import"].split(",")
        assert not store_file(api, "fs2", image["id"]).exists()
        assert store_file(api, "fs", image["id"]).read_bytes() == PAYLOAD
        assert [t["status"] for t in tasks] == ["failure"]

        reply = await start_import(api, image["id"], {"method": {"name": "copy-image"}, "stores": ["fs2", "fs3"],
                                                      "all_stores_must_succeed": False}, as_=ADMIN)
        assert reply.status == 202
        shown, tasks = await settle(api, image["id"], tasks=2)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs2"]
        assert shown["os_glance_failed_import"] == "fs3"
        assert store_file(api, "fs2", image["id"]).read_bytes() == PAYLOAD
        assert_good_image(shown)


# -- 8. DELETE /v2/stores/{store}/{image} ---------------------------------------------------------------------

async def test_delete_from_store(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await staged_image(api)
        image_id = image["id"]
        assert (await start_import(api, image_id, {"method": {"name": "glance-direct"},
                                                   "stores": ["fs", "fs2"]})).status == 202
        await settle(api, image_id)

        assert (await api.call("DELETE", f"/v2/stores/fs2/{image_id}", as_=MEMBER_A)).status == 403
        assert (await api.call("DELETE", f"/v2/stores/nowhere/{image_id}", as_=ADMIN)).status == 409
        assert (await api.call("DELETE", f"/v2/stores/fs3/{image_id}", as_=ADMIN)).status == 404
        assert (await api.call("DELETE", f"/v2/stores/fs2/{uuid.uuid4()}", as_=ADMIN)).status == 404
        assert store_file(api, "fs2", image_id).exists()

        reply = await api.call("DELETE", f"/v2/stores/fs2/{image_id}", as_=ADMIN)
        assert reply.status == 204, reply.body
        assert not store_file(api, "fs2", image_id).exists()
        shown = await show(api, image_id)
        assert shown["stores"] == "fs"
        assert_good_image(shown)  # digests stay while a location is left
        assert await download(api, image_id) == PAYLOAD

        # The only location left: 403, and the data stays.
        assert (await api.call("DELETE", f"/v2/stores/fs/{image_id}", as_=ADMIN)).status == 403
        assert store_file(api, "fs", image_id).read_bytes() == PAYLOAD
        assert (await api.call("DELETE", f"/v2/stores/fs2/{image_id}", as_=ADMIN)).status == 404

        # A copy back to fs2 works again afterwards.
        reply = await start_import(api, image_id, {"method": {"name": "copy-image"}, "stores": ["fs2"]}, as_=ADMIN)
        assert reply.status == 202
        shown, _ = await settle(api, image_id, tasks=2)
        assert sorted(shown["stores"].split(",")) == ["fs", "fs2"]

        # Not active: 409.
        queued = await api.create()
        assert (await api.call("DELETE", f"/v2/stores/fs/{queued['id']}", as_=ADMIN)).status == 409


# -- 9. the import lock -------------------------------------------------------------------------------------

async def test_second_import_while_one_runs(tmp_path: Path, source: Source) -> None:
    async with running(tmp_path, import_filtering_opts=open_filter(source.port)) as api:
        image = await api.create()
        reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": source.url("/slow")}})
        assert reply.status == 202
        await asyncio.wait_for(source.stalled.wait(), 30)
        running_image = await show(api, image["id"])
        tasks = await tasks_of(api, image["id"])
        assert running_image["status"] == "importing"
        assert [t["status"] for t in tasks] == ["processing"]
        assert running_image["os_glance_import_task"] == tasks[0]["id"]
        assert running_image["os_glance_importing_to_stores"] == "fs"

        for body in ({"method": {"name": "web-download", "uri": source.url("/data")}},
                     {"method": {"name": "glance-direct"}}):
            reply = await start_import(api, image["id"], body)
            assert reply.status == 409, reply.body
        assert (await stage(api, image["id"])).status == 409
        assert len(await tasks_of(api, image["id"])) == 1
        assert (await show(api, image["id"]))["os_glance_import_task"] == tasks[0]["id"]

        source.release.set()
        shown, tasks = await settle(api, image["id"])
        assert_good_image(shown)
        assert [t["status"] for t in tasks] == ["success"]
        assert staging_leftovers(api) == []


async def test_live_lock_refuses_copy_image(tmp_path: Path, database_url: str) -> None:
    """A lock held by a task that beats (another node's import): copy-image gets 409."""
    async with running(tmp_path, database_url) as api:
        image = await active_image(api)
        catalog = await Catalog.open(database_url)
        try:
            other = str(uuid.uuid4())
            await catalog.begin_import(image["id"], task_id=other, owner=None, user_id=None, request_id=None,
                                       host="another-node", task_input={"stores": ["fs3"]}, stores=["fs3"],
                                       from_status="active", to_status=None, lock_timeout=60)
        finally:
            await catalog.close()
        reply = await start_import(api, image["id"], {"method": {"name": "copy-image"}, "stores": ["fs2"]}, as_=ADMIN)
        assert reply.status == 409, reply.body
        shown = await show(api, image["id"])
        assert shown["os_glance_import_task"] == other
        assert shown["os_glance_importing_to_stores"] == "fs3"
        assert [t["id"] for t in await tasks_of(api, image["id"])] == [other]
        assert not store_file(api, "fs2", image["id"]).exists()


@both_databases
async def test_lock_expiry(database_url: str) -> None:
    catalog = await Catalog.open(database_url)
    try:
        image = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, [])

        async def begin(task_id: str, stores: list[str], timeout: float) -> Any:
            return await catalog.begin_import(
                image.id, task_id=task_id, owner="p", user_id="u", request_id=None, host="dead-node",
                task_input={"stores": stores}, stores=stores, from_status="queued", to_status=None,
                lock_timeout=timeout)

        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        locked, task = await begin(first, ["fs", "fs2"], 1.0)
        assert locked.properties["os_glance_import_task"] == first
        assert locked.properties["os_glance_importing_to_stores"] == "fs,fs2"
        assert task.status == "processing"
        # Before the timeout the lock holds (the first task never beats).
        with pytest.raises(StateConflict) as refused:
            await begin(second, ["fs3"], 30.0)
        assert status_of(refused.value) == 409
        await asyncio.sleep(1.5)
        # Still within a long timeout: refused again.
        with pytest.raises(StateConflict):
            await begin(second, ["fs3"], 30.0)
        # Past a short one: broken.
        relocked, task2 = await begin(second, ["fs3"], 1.0)
        assert relocked.properties["os_glance_import_task"] == second
        assert relocked.properties["os_glance_importing_to_stores"] == "fs3"
        assert task2.status == "processing"
        dead = await catalog.get_task(first)
        assert dead.status == "failure" and dead.message == "Expired lock preempted"
        # The dead task's heartbeat reports the lost lock; the live one's does not.
        assert await catalog.task_heartbeat(first, "Copied 1 MiB") is False
        assert await catalog.task_heartbeat(second, "Copied 1 MiB") is True
        # Finishing the dead task later does not release the new task's lock.
        await catalog.finish_import(image.id, first, success=False, message="late")
        assert (await catalog.get_image(image.id)).properties["os_glance_import_task"] == second
    finally:
        await catalog.close()


@both_databases
async def test_dead_imports_are_swept_and_their_images_freed(database_url: str) -> None:
    """A node that dies mid-import stops beating; any node's sweeper then fails the task, releases the
    lock and queues the image again, without waiting for that node to come back."""
    catalog = await Catalog.open(database_url)
    try:
        image = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, [])
        live = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, [])
        dead_task, live_task = str(uuid.uuid4()), str(uuid.uuid4())
        for target, task_id in ((image, dead_task), (live, live_task)):
            await catalog.begin_import(target.id, task_id=task_id, owner="p", user_id="u", request_id=None,
                                       host="node-x", task_input={"stores": ["fs"]}, stores=["fs"],
                                       from_status="queued", to_status="importing", lock_timeout=60.0)
        await asyncio.sleep(1.2)
        assert await catalog.task_heartbeat(live_task, "Copied 3 MiB")  # this one is alive
        swept = await catalog.expire_dead_imports(1.0)
        assert [t.id for t in swept] == [dead_task]
        freed = await catalog.get_image(image.id)
        assert freed.status == "queued"
        assert "os_glance_import_task" not in freed.properties
        assert freed.properties["os_glance_importing_to_stores"] == ""  # Glance keeps the emptied list
        assert freed.properties["os_glance_failed_import"] == "fs"
        task = await catalog.get_task(dead_task)
        assert task.status == "failure" and task.message.startswith("Expired lock preempted")
        still = await catalog.get_image(live.id)
        assert still.status == "importing" and still.properties["os_glance_import_task"] == live_task
        assert await catalog.expire_dead_imports(1.0) == []
    finally:
        await catalog.close()


# -- 10. tasks API -----------------------------------------------------------------------------------------------

async def test_tasks_api(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await staged_image(api, visibility="private")
        accepted = await start_import(api, image["id"], {"method": {"name": "glance-direct"}})
        assert accepted.status == 202
        request_id = accepted.headers["X-Openstack-Request-Id"]
        assert request_id.startswith("req-")
        await settle(api, image["id"])

        mine = await tasks_of(api, image["id"], as_=MEMBER_A)
        assert len(mine) == 1 and mine[0]["status"] == "success"
        assert mine[0]["request_id"] == request_id  # the task names the request that made it
        task_id = mine[0]["id"]
        assert mine[0]["self"] == f"/v2/tasks/{task_id}"
        assert mine[0]["expires_at"] is not None
        assert (await api.call("GET", f"/v2/images/{image['id']}/tasks", as_=MEMBER_B)).status == 404
        assert (await api.call("GET", f"/v2/images/{uuid.uuid4()}/tasks", as_=MEMBER_A)).status == 404

        assert (await api.call("GET", "/v2/tasks", as_=MEMBER_A)).status == 403
        assert (await api.call("GET", f"/v2/tasks/{task_id}", as_=MEMBER_A)).status == 403
        reply = await api.call("GET", "/v2/tasks", as_=ADMIN)
        assert reply.status == 200
        listed = reply.json["tasks"]
        assert [t["id"] for t in listed] == [task_id]
        assert "input" not in listed[0] and listed[0]["status"] == "success"
        reply = await api.call("GET", f"/v2/tasks/{task_id}", as_=ADMIN)
        assert reply.status == 200
        assert reply.json["result"] == {"image_id": image["id"]} and reply.json["image_id"] == image["id"]
        assert (await api.call("GET", f"/v2/tasks/{uuid.uuid4()}", as_=ADMIN)).status == 404


# -- 11. plugins through the API ------------------------------------------------------------------------------------

async def test_image_conversion_plugin(tmp_path: Path) -> None:
    raw = tmp_path / "source.raw"
    with raw.open("wb") as handle:
        handle.truncate(6 * MiB)
        handle.seek(MiB)
        handle.write(random.Random(3).randbytes(MiB + 512))
        handle.seek(5 * MiB)
        handle.write(b"end of the disk" * 100)
    qcow2 = tmp_path / "source.qcow2"
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 3M 64k", str(qcow2))
    expected_raw = tmp_path / "expected.raw"
    run("qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(qcow2), str(expected_raw))
    expected = expected_raw.read_bytes()
    assert expected != raw.read_bytes()  # the qemu-io write is in it

    async with running(tmp_path / "srv", image_import_opts={"image_import_plugins": "image_conversion"}) as api:
        image = await staged_image(api, qcow2.read_bytes(), disk_format="qcow2")
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"},
                                                      "stores": ["fs", "fs2"]})).status == 202
        shown, tasks = await settle(api, image["id"])
        assert [t["status"] for t in tasks] == ["success"], tasks
        assert shown["disk_format"] == "raw"
        assert shown["status"] == "active"
        assert shown["size"] == len(expected) == 6 * MiB
        assert shown["virtual_size"] == 6 * MiB
        assert shown["checksum"] == md5(expected)
        assert shown["os_hash_value"] == sha512(expected)
        assert md5(await download(api, image["id"])) == md5(expected)
        assert md5(store_file(api, "fs2", image["id"]).read_bytes()) == md5(expected)
        assert staging_leftovers(api) == []


async def test_inject_metadata_plugin(tmp_path: Path) -> None:
    async with running(tmp_path, image_import_opts={"image_import_plugins": "inject_image_metadata"},
                       inject_metadata_properties={"inject": "k1:v1"}) as api:
        member_image = await staged_image(api)
        admin_image = await api.create(as_=ADMIN)
        assert (await stage(api, admin_image["id"], as_=ADMIN)).status == 204
        for image, who in ((member_image, MEMBER_A), (admin_image, ADMIN)):
            reply = await start_import(api, image["id"], {"method": {"name": "glance-direct"}}, as_=who)
            assert reply.status == 202
        member_shown, _ = await settle(api, member_image["id"])
        admin_shown, _ = await settle(api, admin_image["id"])
        assert_good_image(member_shown)
        assert_good_image(admin_shown)
        assert member_shown["k1"] == "v1"
        assert "k1" not in admin_shown


# -- 12. deleting a staged image ------------------------------------------------------------------------------------

async def test_delete_staged_image_removes_staging(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await staged_image(api)
        kept = await staged_image(api)
        assert sorted(staging_leftovers(api)) == sorted([image["id"], f"{image['id']}.json",
                                                         kept["id"], f"{kept['id']}.json"])
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
        assert staging_leftovers(api) == sorted([kept["id"], f"{kept['id']}.json"])
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 404


# -- 13. interrupted stages and imports, limits, and the data plugins change ------------------------------------

async def test_delete_during_import(tmp_path: Path, source: Source) -> None:
    """An image deleted while its web-download runs: the import fails and leaves nothing behind."""
    async with running(tmp_path, import_filtering_opts=open_filter(source.port)) as api:
        image = await api.create()
        reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": source.url("/slow")},
                                                      "stores": ["fs", "fs2"]})
        assert reply.status == 202
        await asyncio.wait_for(source.stalled.wait(), 30)
        [task] = await tasks_of(api, image["id"])
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
        source.release.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_DEADLINE
        while (await api.call("GET", f"/v2/tasks/{task['id']}", as_=ADMIN)).json["status"] == "processing":
            assert loop.time() < deadline, "the import of a deleted image never ended"
            await asyncio.sleep(0.05)
        assert (await api.call("GET", f"/v2/tasks/{task['id']}", as_=ADMIN)).json["status"] == "failure"
        for name in ("fs", "fs2", "fs3"):
            assert not store_file(api, name, image["id"]).exists()
        assert incoming_leftovers(api, "fs", "fs2", "fs3") == []
        assert staging_leftovers(api) == []


async def wait_status(api: ApiClient, image_id: str, status: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_DEADLINE
    while True:
        shown = await show(api, image_id)
        if shown["status"] == status:
            return shown
        assert loop.time() < deadline, f"image {image_id} never became {status}: {shown}"
        await asyncio.sleep(0.02)


async def test_stage_body_shorter_than_content_length(tmp_path: Path) -> None:
    """The client sends part of what its Content-Length declares, then closes its side of the
    connection: the stage fails (aiohttp drops a request whose body ended early, so there may be
    no answer to read), the image is queued again and nothing is left on staging."""
    async with running(tmp_path) as api:
        image = await api.create()
        port = int(api.base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write((f"PUT /v2/images/{image['id']}/stage HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Content-Type: application/octet-stream\r\nContent-Length: {2 * MiB}\r\n"
                          + "".join(f"{k}: {v}\r\n" for k, v in MEMBER_A.items()) + "\r\n").encode())
            writer.write(PAYLOAD[:MiB])
            await writer.drain()
            await wait_status(api, image["id"], "uploading")  # the stage is under way
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:300]
        shown = await wait_status(api, image["id"], "queued")
        assert shown["size"] is None
        assert staging_leftovers(api) == []
        assert (await stage(api, image["id"])).status == 204


async def test_stage_over_the_size_cap(tmp_path: Path) -> None:
    async with running(tmp_path, DEFAULT={"image_size_cap": str(MiB)}) as api:
        image = await api.create()
        assert (await stage(api, image["id"], PAYLOAD[:MiB + 1])).status == 413

        async def body() -> AsyncIterator[bytes]:  # no declared size: the cap is crossed while streaming
            for start in range(0, 2 * MiB, 64 * 1024):
                yield PAYLOAD[start:start + 64 * 1024]

        assert (await stage(api, image["id"], body())).status == 413
        assert (await show(api, image["id"]))["status"] == "queued"
        assert staging_leftovers(api) == []


async def test_shutdown_during_import(tmp_path: Path, database_url: str, source: Source) -> None:
    """The daemon stops while an import runs: the task fails, the image is queued again, staging is clean,
    and the next start finds nothing to recover."""
    sections = {"import_filtering_opts": open_filter(source.port)}
    async with running(tmp_path, database_url, **sections) as api:
        image = await api.create()
        reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": source.url("/slow")}})
        assert reply.status == 202
        await asyncio.wait_for(source.stalled.wait(), 30)
        staging = staging_dir(api)
    # The server is closed: the import was aborted.
    assert [p.name for p in staging.iterdir() if p.name != ".incoming"] == []
    assert list((staging / ".incoming").iterdir()) == []
    async with running(tmp_path, database_url, **sections) as api:
        shown = await show(api, image["id"])
        assert shown["status"] == "queued" and "os_glance_import_task" not in shown
        [task] = await tasks_of(api, image["id"])
        assert task["status"] == "failure" and "stopped" in task["message"]
        assert not store_file(api, "fs", image["id"]).exists()
        # And it can be imported now.
        source.release.set()
        reply = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": source.url("/data")}})
        assert reply.status == 202
        shown, _ = await settle(api, image["id"], tasks=2)
        assert_good_image(shown)


async def test_image_decompression_plugin(tmp_path: Path) -> None:
    """A gzip archive staged as a raw image is stored as its content, with the content's size and digests."""
    import gzip

    archive = gzip.compress(PAYLOAD, compresslevel=1)
    assert len(archive) != len(PAYLOAD)
    async with running(tmp_path, image_import_opts={"image_import_plugins": "image_decompression"}) as api:
        image = await staged_image(api, archive)
        assert (await show(api, image["id"]))["size"] == len(archive)
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"},
                                                      "stores": ["fs", "fs2"]})).status == 202
        shown, tasks = await settle(api, image["id"])
        assert [t["status"] for t in tasks] == ["success"], tasks
        assert_good_image(shown)
        assert shown["virtual_size"] == len(PAYLOAD)  # measured on the content, not the archive
        assert await download(api, image["id"]) == PAYLOAD
        assert store_file(api, "fs2", image["id"]).read_bytes() == PAYLOAD
        assert staging_leftovers(api) == []


async def test_decompressed_data_is_inspected(tmp_path: Path) -> None:
    """What decompression yields is checked as an upload would be: a qcow2 (with a backing file)
    inside a gzip staged as a raw image is refused, and nothing is stored."""
    import gzip

    qcow2 = tmp_path / "backed.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(qcow2), "4M")
    async with running(tmp_path / "srv", image_import_opts={"image_import_plugins": "image_decompression"}) as api:
        # As an upload, the same bytes declared raw are refused.
        plain = await api.create()
        reply = await api.call("PUT", f"/v2/images/{plain['id']}/file", as_=MEMBER_A, data=qcow2.read_bytes(),
                               headers=OCTET)
        assert reply.status == 415, reply.body
        image = await staged_image(api, gzip.compress(qcow2.read_bytes()))
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"},
                                                      "stores": ["fs", "fs2"]})).status == 202
        shown, tasks = await settle(api, image["id"])
        assert [t["status"] for t in tasks] == ["failure"], tasks
        assert shown["status"] == "queued" and "stores" not in shown
        for name in ("fs", "fs2"):
            assert not store_file(api, name, image["id"]).exists()
        assert staging_leftovers(api) == []


# -- legacy tasks (POST /v2/tasks) -----------------------------------------------------------------

async def test_legacy_import_task_makes_and_fills_an_image(tmp_path: Path, source: Source) -> None:
    """Glance's deprecated ``import`` task: a new image from ``image_properties``, filled from
    ``import_from``; the task the client polls says which image and ends in success."""
    async with running(tmp_path, import_filtering_opts=open_filter(source.port)) as api:
        body = {"type": "import", "input": {
            "import_from": f"http://127.0.0.1:{source.port}/data", "import_from_format": "raw",
            "image_properties": {"name": "legacy", "disk_format": "raw", "container_format": "bare"}}}
        created = await api.call("POST", "/v2/tasks", as_=ADMIN, json_body=body)
        assert created.status == 201, created.body
        task = created.json
        image_id = task["image_id"]
        image = await wait_status(api, image_id, "active")
        assert image["name"] == "legacy" and image["size"] == len(PAYLOAD)
        for _ in range(200):  # the task ends just after the image turns active
            status = (await api.call("GET", f"/v2/tasks/{task['id']}", as_=ADMIN)).json["status"]
            if status != "processing":
                break
            await asyncio.sleep(0.02)
        assert status == "success"


async def test_legacy_import_task_refusals(tmp_path: Path) -> None:
    """Bad task bodies are 400s, a URI the filtering rules refuse is a 400 before any image exists
    (Glance 33), and the tasks API is the admin's."""
    async with running(tmp_path) as api:
        good_input = {"import_from": "http://example.org/x.qcow2", "image_properties": {}}
        assert (await api.call("POST", "/v2/tasks", as_=MEMBER_A,
                               json_body={"type": "import", "input": good_input})).status == 403
        for body, text in (({"input": good_input}, "Task 'type' is required"),
                           ({"type": "import"}, "Task 'input' is required"),
                           ({"type": "bogus", "input": good_input}, "is not one of"),
                           ({"type": "import", "input": {"import_from": "http://127.0.0.1:8080/x"}},
                            "does not pass filtering"),
                           ({"type": "import", "input": {"import_from": "file:///etc/passwd"}},
                            "does not pass filtering")):
            reply = await api.call("POST", "/v2/tasks", as_=ADMIN, json_body=body)
            assert reply.status == 400 and text in reply.error["message"], (body, reply.body)
        listed = await api.call("GET", "/v2/images", as_=ADMIN)
        assert listed.json["images"] == []
