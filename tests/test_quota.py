"""Quotas over HTTP: ``user_storage_quota`` and Keystone's unified limits, against a real Keystone.

The Keystone is the one ``scripts/test.sh`` starts (``STREAMD_TEST_KEYSTONE_URL`` and
``STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD``; without them these tests fail, they never skip). Each
test registers a service of its own (a unique name, an ``image`` endpoint in RegionOne), its
registered limits and projects with project limits through Keystone's API with the admin token,
so reruns on the same Keystone never meet an earlier run's limits. streamd reads them with the
admin's credentials from ``[oslo_limit]``; the requests to streamd name their project with the
noauth identity headers (the Keystone projects' ids as ``X-Project-Id``).

Glance's arithmetic throughout: sizes count in whole MiB (floored), so "at the limit" for a
limit of L MiB with U used is a size of (L - U + 1) MiB - 1 bytes, and one byte more is over.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conftest import ADMIN, ApiClient, Reply, both_databases, make_config, start_api
from streamd.catalog import Catalog, ProjectUsage
from streamd.config import load_config
from streamd.errors import ConfigError
from test_import import settle, show, staging_leftovers, start_import, store_file

MiB = 1 << 20
# Every Keystone round trip costs about a second on this machine (two uWSGI workers, shared):
# the tests of each path and of the limits client's failures run on both loops, the others on
# asyncio only (the client is plain aiohttp; nothing in it depends on the loop).
ONE_LOOP = pytest.mark.asyncio(loop_factories=["asyncio"])
OCTET = {"Content-Type": "application/octet-stream"}
GLANCE_413 = ("The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a "
              "quota threshold was breached.\n\nThe response body:\n")


def keystone_env() -> tuple[str, str]:
    url = os.environ.get("STREAMD_TEST_KEYSTONE_URL")
    password = os.environ.get("STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD")
    if not url or not password:
        pytest.fail("STREAMD_TEST_KEYSTONE_URL / STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD are not set: run the suite "
                    "with scripts/test.sh, which starts a throwaway Keystone (scripts/keystone-dev.sh)")
    return url, password


def member_of(project_id: str) -> dict[str, str]:
    return {"X-Project-Id": project_id, "X-User-Id": f"user-{project_id[:8]}", "X-Roles": "member,reader"}


async def chunks_of(data: bytes, size: int = 256 << 10) -> AsyncIterator[bytes]:
    """A body without Content-Length: aiohttp sends it chunked, of unknown size."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def upload(api: ApiClient, image_id: str, data: bytes, as_: dict[str, str], *, chunked: bool = False,
                 path: str = "file") -> Reply:
    body: Any = chunks_of(data) if chunked else data
    return await api.call("PUT", f"/v2/images/{image_id}/{path}", as_=as_, data=body, headers=OCTET)


def leftovers(api: ApiClient, image_id: str) -> list[str]:
    """Whatever of ``image_id`` is on disk: in the store, its temporary files, staging, the cache."""
    found = [str(p) for p in [store_file(api, "fs", image_id)] if p.exists()]
    incoming = api.config.data_dir / "images" / "fs" / ".incoming"
    found += [str(p) for p in incoming.glob("*")] if incoming.is_dir() else []
    found += [name for name in staging_leftovers(api) if image_id in name or ".incoming/" in name]
    cache = api.config.cache_dir
    assert cache is not None
    found += [str(p) for p in cache.rglob(f"*{image_id}*")]
    return found


def explanation(reply: Reply) -> str:
    """The message of an error answer without webob's trailer (what Glance's clients print)."""
    return str(reply.error["message"]).removesuffix("<br /><br />\n\n\n")


async def assert_refused_and_clean(api: ApiClient, reply: Reply, image_id: str, status: str = "queued") -> str:
    """A 413 that left the image ``status`` (queued: as before) and nothing of its data behind; its message."""
    assert reply.status == 413, reply.body
    assert (await show(api, image_id))["status"] == status
    assert (await show(api, image_id))["size"] is None
    assert leftovers(api, image_id) == []
    return explanation(reply)


# -- what a project holds, as the quotas count it ---------------------------------------------------------


async def _active(catalog: Catalog, owner: str, size: int, *stores: str) -> str:
    image = await catalog.create_image({"owner": owner, "disk_format": "raw", "container_format": "bare"}, {}, [])
    await catalog.begin_upload(image.id, "h")
    await catalog.finish_upload(image.id, size=size, checksum="0" * 32, os_hash_algo="sha512", os_hash_value="0",
                                store=stores[0], url=f"file:///{stores[0]}/{image.id}")
    if stores[1:]:
        await catalog.record_import(image.id, {s: (f"file:///{s}/{image.id}", {}) for s in stores[1:]})
    return image.id


@both_databases
async def test_project_usage_counts_as_glance(database_url: str) -> None:
    """Stored bytes once per store, staged and copying images, uploading ones; deleted and other
    projects' images nowhere; one image left out of the byte counts on request."""
    catalog = await Catalog.open(database_url)
    try:
        owner, other = uuid.uuid4().hex, uuid.uuid4().hex
        twice = await _active(catalog, owner, 1000, "fs", "fs2")
        copying = await _active(catalog, owner, 300, "fs")
        await catalog.update_image(copying, set_properties={"os_glance_importing_to_stores": "fs2"})
        staged = await catalog.create_image({"owner": owner, "disk_format": "raw", "container_format": "bare"}, {}, [])
        await catalog.begin_upload(staged.id, "h", to_status="uploading")
        await catalog.finish_stage(staged.id, size=50, host="h")
        saving = await catalog.create_image({"owner": owner, "disk_format": "raw", "container_format": "bare"}, {}, [])
        await catalog.begin_upload(saving.id, "h")
        await catalog.create_image({"owner": owner}, {}, [])  # queued, empty
        gone = await _active(catalog, owner, 7777, "fs")
        await catalog.delete_image(gone)
        await _active(catalog, other, 99999, "fs")
        assert await catalog.project_usage(owner) == ProjectUsage(stored_bytes=2300, staged_bytes=350, images=5,
                                                                  uploading=3)
        assert await catalog.project_usage(owner, exclude_image=twice) == ProjectUsage(
            stored_bytes=300, staged_bytes=350, images=5, uploading=3)
        assert await catalog.project_usage(uuid.uuid4().hex) == ProjectUsage(0, 0, 0, 0)
    finally:
        await catalog.close()


# -- user_storage_quota ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("0", 0), ("12345", 12345), ("10B", 10), ("2KB", 2 << 10),
                                           ("3MB", 3 << 20), ("1GB", 1 << 30), ("2TB", 2 << 40)])
def test_user_storage_quota_takes_glances_suffixes(text: str, expected: int) -> None:
    assert load_config(None, overrides={"DEFAULT": {"user_storage_quota": text}}).default.user_storage_quota == expected


@pytest.mark.parametrize("text", ["1 GB", "1gb", "1K", "10XB", "-1", "1.5GB", "GB"])
def test_user_storage_quota_refuses_what_glance_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="user_storage_quota"):
        load_config(None, overrides={"DEFAULT": {"user_storage_quota": text}})


def test_keystone_limits_need_credentials_and_an_endpoint() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides={"DEFAULT": {"use_keystone_limits": "true"}})
    problems = "\n".join(caught.value.problems)
    assert "[oslo_limit] auth_url" in problems and "password" in problems and "endpoint_id" in problems


@asynccontextmanager
async def storage_quota(tmp_path: Path, quota: str) -> AsyncIterator[ApiClient]:
    server, api, session = await start_api(make_config(tmp_path, DEFAULT={"user_storage_quota": quota}))
    try:
        yield api
    finally:
        await session.close()
        await server.close()


PROJECT_Q = uuid.uuid4().hex


async def test_storage_quota_exactly_full_then_one_byte_over(tmp_path: Path) -> None:
    """3 KB: an image of 2 KiB, then one of the 1 KiB left fits exactly; one byte more, declared or
    chunked, is refused with Glance's message; deleting an image frees its bytes."""
    who = member_of(PROJECT_Q)
    async with storage_quota(tmp_path, "3KB") as api:
        first = await api.create(as_=who)
        assert (await upload(api, first["id"], b"a" * 2048, who)).status == 204
        over = await api.create(as_=who)
        message = await assert_refused_and_clean(api, await upload(api, over["id"], b"b" * 1025, who), over["id"])
        assert message == ("Image exceeds the storage quota: The size of the data 1025 will exceed the limit. "
                           "1024 bytes remaining.")
        message = await assert_refused_and_clean(
            api, await upload(api, over["id"], b"b" * 1025, who, chunked=True), over["id"])
        assert message.startswith("Image exceeds the storage quota: The size of the data ")
        assert message.endswith(" will exceed the limit. 1024 bytes remaining.")
        assert (await upload(api, over["id"], b"b" * 1024, who, chunked=True)).status == 204
        # Full: even an empty-looking chunked upload is refused at once (Glance: nothing remaining).
        third = await api.create(as_=who)
        await assert_refused_and_clean(api, await upload(api, third["id"], b"c", who, chunked=True), third["id"])
        # Other projects have quotas of their own.
        other = member_of(uuid.uuid4().hex)
        theirs = await api.create(as_=other)
        assert (await upload(api, theirs["id"], b"d" * 3072, other)).status == 204
        assert (await api.call("DELETE", f"/v2/images/{first['id']}", as_=who)).status == 204
        assert (await upload(api, third["id"], b"c" * 2048, who)).status == 204
        # Without unified limits the usage document is empty, as Glance's.
        assert (await api.call("GET", "/v2/info/usage", as_=who)).json == {"usage": {}}


async def test_storage_quota_stops_a_large_chunked_upload_at_the_quota(tmp_path: Path) -> None:
    """8 MiB of unknown size against 1 MB: refused once the quota is crossed, nothing stored anywhere."""
    who = member_of(uuid.uuid4().hex)
    async with storage_quota(tmp_path, "1MB") as api:
        image = await api.create(as_=who)
        reply = await upload(api, image["id"], os.urandom(8 * MiB), who, chunked=True)
        message = await assert_refused_and_clean(api, reply, image["id"])
        assert message.endswith(f"will exceed the limit. {MiB} bytes remaining.")
        exact = os.urandom(MiB)
        assert (await upload(api, image["id"], exact, who, chunked=True)).status == 204
        assert store_file(api, "fs", image["id"]).read_bytes() == exact


async def test_storage_quota_on_stage_and_import(tmp_path: Path) -> None:
    """Staged data counts: a stage past the quota is refused and leaves nothing staged; what was
    staged within it imports."""
    who = member_of(uuid.uuid4().hex)
    async with storage_quota(tmp_path, "2KB") as api:
        image = await api.create(as_=who)
        await assert_refused_and_clean(api, await upload(api, image["id"], b"s" * 2049, who, path="stage"),
                                       image["id"])
        await assert_refused_and_clean(api, await upload(api, image["id"], b"s" * 4096, who, chunked=True,
                                                         path="stage"), image["id"])
        assert (await upload(api, image["id"], b"s" * 2048, who, path="stage")).status == 204
        other = await api.create(as_=who)
        await assert_refused_and_clean(api, await upload(api, other["id"], b"o", who), other["id"])
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}}, as_=who)).status == 202
        shown, tasks = await settle(api, image["id"])
        assert shown["status"] == "active" and tasks[0]["status"] == "success"
        assert shown["size"] == 2048


async def test_storage_quota_is_checked_again_when_racing_uploads_finish(tmp_path: Path) -> None:
    """3 KB, two uploads of 2 KiB each started while the project holds nothing: each fits alone.
    The one that finishes second is refused when its data is whole (Glance's re-check), and its
    data removed."""
    who = member_of(uuid.uuid4().hex)
    async with storage_quota(tmp_path, "3KB") as api:
        slow, fast = await api.create(as_=who), await api.create(as_=who)
        release = asyncio.Event()

        async def held_back() -> AsyncIterator[bytes]:
            yield b"s" * 1024
            await release.wait()
            yield b"s" * 1024

        pending = asyncio.ensure_future(api.call("PUT", f"/v2/images/{slow['id']}/file", as_=who,
                                                 data=held_back(), headers=OCTET))
        while (await show(api, slow["id"]))["status"] != "saving":
            await asyncio.sleep(0.02)
        assert (await upload(api, fast["id"], b"f" * 2048, who)).status == 204
        release.set()
        message = await assert_refused_and_clean(api, await pending, slow["id"])
        assert message == ("Image exceeds the storage quota: The size of the data 2048 will exceed the limit. "
                           "1024 bytes remaining.")


# -- Keystone unified limits ----------------------------------------------------------------------------------


class KeystoneAdmin:
    """Keystone's v3 API with the admin's token: services, endpoints, projects and limits."""

    def __init__(self, session: aiohttp.ClientSession, url: str, password: str) -> None:
        self.session = session
        self.url = url
        self.password = password
        self.token = ""

    async def login(self) -> None:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": self.password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
        async with self.session.post(self.url + "/auth/tokens", json=body) as reply:
            assert reply.status == 201, await reply.text()
            self.token = reply.headers["X-Subject-Token"]

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.url + path, json=body,
                                        headers={"X-Auth-Token": self.token}) as reply:
            assert reply.status < 300, (method, path, reply.status, await reply.text())
            return await reply.json() if reply.status != 204 else None

    async def service(self) -> tuple[str, str, str]:
        """A new image service with a public endpoint in RegionOne: (service id, its name, endpoint id)."""
        name = f"streamd-test-{uuid.uuid4().hex[:12]}"
        service = (await self.call("POST", "/services", {"service": {"type": "image", "name": name}}))["service"]
        endpoint = (await self.call("POST", "/endpoints", {"endpoint": {
            "service_id": service["id"], "interface": "public", "region_id": "RegionOne",
            "url": "http://127.0.0.1:9292"}}))["endpoint"]
        return service["id"], name, endpoint["id"]

    async def register(self, service_id: str, **defaults: int) -> None:
        await self.call("POST", "/registered_limits", {"registered_limits": [
            {"service_id": service_id, "region_id": "RegionOne", "resource_name": name, "default_limit": value}
            for name, value in defaults.items()]})

    async def project(self) -> str:
        body = {"project": {"name": f"streamd-test-{uuid.uuid4().hex[:12]}", "domain_id": "default"}}
        return str((await self.call("POST", "/projects", body))["project"]["id"])

    async def limit(self, service_id: str, project_id: str, **limits: int) -> dict[str, str]:
        """Project limits; returns resource name -> limit id."""
        created = (await self.call("POST", "/limits", {"limits": [
            {"service_id": service_id, "region_id": "RegionOne", "project_id": project_id, "resource_name": name,
             "resource_limit": value} for name, value in limits.items()]}))["limits"]
        return {item["resource_name"]: item["id"] for item in created}

    async def set_limit(self, limit_id: str, value: int) -> None:
        await self.call("PATCH", f"/limits/{limit_id}", {"limit": {"resource_limit": value}})


ALL_UNLIMITED = {"image_size_total": -1, "image_stage_total": -1, "image_count_total": -1,
                 "image_count_uploading": -1}


@pytest.fixture
async def keystone() -> AsyncIterator[KeystoneAdmin]:
    url, password = keystone_env()
    async with aiohttp.ClientSession() as session:
        admin = KeystoneAdmin(session, url, password)
        await admin.login()
        yield admin


def limits_config(admin: KeystoneAdmin, *, endpoint_id: str | None = None, **oslo_limit: str) -> dict[str, str]:
    values = {"auth_url": admin.url, "auth_type": "password", "username": "admin", "password": admin.password,
              "user_domain_id": "default", "project_name": "admin", "project_domain_id": "default",
              # Long enough for the checks of one request to share one read; tests that change a
              # limit while streamd runs set 0.
              "limits_cache_time": "2"}
    if endpoint_id is not None:
        values["endpoint_id"] = endpoint_id
    values.update(oslo_limit)
    return values


@asynccontextmanager
async def with_limits(tmp_path: Path, oslo_limit: dict[str, str], *, default: dict[str, str] | None = None,
                      **sections: dict[str, str]) -> AsyncIterator[ApiClient]:
    config = make_config(tmp_path, DEFAULT={"use_keystone_limits": "true", **(default or {})},
                         oslo_limit=oslo_limit, **sections)
    server, api, session = await start_api(config)
    try:
        yield api
    finally:
        await session.close()
        await server.close()


def over(project: str, name: str, limit: int, usage: int, delta: int) -> str:
    return (f"{GLANCE_413}Project {project} is over a limit for [Resource {name} is over limit of {limit} due to "
            f"current usage {usage} and delta {delta}]")


async def test_image_count_total_registered_limit_and_project_override(tmp_path: Path,
                                                                       keystone: KeystoneAdmin) -> None:
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_count_total": 2})
    plain, raised = await keystone.project(), await keystone.project()
    await keystone.limit(service, raised, image_count_total=3)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint)) as api:
        for _ in range(2):
            await api.create(as_=member_of(plain))
        reply = await api.call("POST", "/v2/images", as_=member_of(plain),
                               json_body={"disk_format": "raw", "container_format": "bare"})
        assert reply.status == 413 and explanation(reply) == over(plain, "image_count_total", 2, 2, 1)
        for _ in range(3):
            await api.create(as_=member_of(raised))
        reply = await api.call("POST", "/v2/images", as_=member_of(raised),
                               json_body={"disk_format": "raw", "container_format": "bare"})
        assert reply.status == 413 and explanation(reply) == over(raised, "image_count_total", 3, 3, 1)
        usage = (await api.call("GET", "/v2/info/usage", as_=member_of(raised))).json
        assert usage == {"usage": {"image_size_total": {"limit": -1, "usage": 0},
                                   "image_stage_total": {"limit": -1, "usage": 0},
                                   "image_count_total": {"limit": 3, "usage": 3},
                                   "image_count_uploading": {"limit": -1, "usage": 0}}}


@ONE_LOOP
async def test_a_limit_nobody_registered_is_zero(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """As oslo.limit: no registered limit means a limit of 0, so nothing that needs it is allowed."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, image_size_total=10)  # image_count_total not registered
    project = await keystone.project()
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint)) as api:
        reply = await api.call("POST", "/v2/images", as_=member_of(project),
                               json_body={"disk_format": "raw", "container_format": "bare"})
        assert reply.status == 413 and explanation(reply) == over(project, "image_count_total", 0, 0, 1)
        usage = (await api.call("GET", "/v2/info/usage", as_=member_of(project))).json["usage"]
        assert usage["image_count_total"] == {"limit": 0, "usage": 0}
        assert usage["image_size_total"] == {"limit": 10, "usage": 0}


async def test_image_size_total_on_upload_declared_and_chunked(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """Limit 2 MiB: 2 MiB declared fills it; then 1 MiB declared is refused before anything is read,
    and chunked data stops at its 1 MiB-th byte (MiB - 1 bytes still fit, as 0 whole MiB)."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_size_total": 2})
    project = await keystone.project()
    who = member_of(project)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint)) as api:
        first = await api.create(as_=who)
        assert (await upload(api, first["id"], os.urandom(2 * MiB), who)).status == 204
        second = await api.create(as_=who)
        message = await assert_refused_and_clean(api, await upload(api, second["id"], os.urandom(MiB), who),
                                                 second["id"])
        assert message == over(project, "image_size_total", 2, 2, 1)
        message = await assert_refused_and_clean(
            api, await upload(api, second["id"], os.urandom(5 * MiB), who, chunked=True), second["id"])
        assert message == over(project, "image_size_total", 2, 2, 1)
        exact = os.urandom(MiB - 1)
        assert (await upload(api, second["id"], exact, who, chunked=True)).status == 204
        assert store_file(api, "fs", second["id"]).read_bytes() == exact
        usage = (await api.call("GET", "/v2/info/usage", as_=who)).json["usage"]
        assert usage["image_size_total"] == {"limit": 2, "usage": 2}  # 3 MiB - 1 byte, in whole MiB
        assert usage["image_count_total"] == {"limit": -1, "usage": 2}


@ONE_LOOP
async def test_chunked_upload_at_the_limit_and_one_byte_over(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """Nothing used, limit 1 MiB: 2 MiB - 1 bytes of unknown size are 1 whole MiB and fit; 2 MiB do not."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_size_total": 1})
    project = await keystone.project()
    who = member_of(project)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint)) as api:
        image = await api.create(as_=who)
        message = await assert_refused_and_clean(api, await upload(api, image["id"], os.urandom(2 * MiB), who,
                                                                   chunked=True), image["id"])
        assert message == over(project, "image_size_total", 1, 0, 2)
        assert (await upload(api, image["id"], os.urandom(2 * MiB - 1), who, chunked=True)).status == 204


@ONE_LOOP
async def test_image_count_uploading_refuses_once_the_image_is_saving(tmp_path: Path,
                                                                       keystone: KeystoneAdmin) -> None:
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_count_uploading": 0})
    project = await keystone.project()
    who = member_of(project)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint)) as api:
        image = await api.create(as_=who)
        message = await assert_refused_and_clean(api, await upload(api, image["id"], b"x" * 100, who), image["id"])
        # The image itself is saving when this is checked: usage 1 (Glance's delta 0).
        assert message == over(project, "image_count_uploading", 0, 1, 0)
        message = await assert_refused_and_clean(api, await upload(api, image["id"], b"x" * 100, who, path="stage"),
                                                 image["id"])
        assert message == over(project, "image_count_uploading", 0, 1, 0)


async def test_image_stage_total_on_stage_and_glance_direct_import(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """image_stage_total 1 MiB: a stage past it (declared or chunked) is refused and leaves nothing
    staged; 1 MiB staged fits. image_size_total 1 MiB, filled by another image meanwhile: the
    glance-direct import of that MiB fails its task (Glance's assert_quota) and queues the image."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_stage_total": 1, "image_size_total": 1})
    project = await keystone.project()
    who = member_of(project)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint)) as api:
        image = await api.create(as_=who)
        message = await assert_refused_and_clean(api, await upload(api, image["id"], os.urandom(2 * MiB), who,
                                                                   path="stage"), image["id"])
        assert message == over(project, "image_stage_total", 1, 0, 2)
        message = await assert_refused_and_clean(api, await upload(api, image["id"], os.urandom(3 * MiB), who,
                                                                   chunked=True, path="stage"), image["id"])
        assert message == over(project, "image_stage_total", 1, 0, 2)
        assert (await upload(api, image["id"], os.urandom(MiB), who, path="stage")).status == 204
        usage = (await api.call("GET", "/v2/info/usage", as_=who)).json["usage"]
        assert usage["image_stage_total"] == {"limit": 1, "usage": 1}
        assert usage["image_count_uploading"] == {"limit": -1, "usage": 1}
        # Another image fills image_size_total meanwhile: the import cannot bring its MiB in.
        filler = await api.create(as_=who)
        assert (await upload(api, filler["id"], os.urandom(MiB), who)).status == 204
        assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}}, as_=who)).status == 202
        shown, tasks = await settle(api, image["id"])
        assert shown["status"] == "queued" and tasks[0]["status"] == "failure"
        assert tasks[0]["message"] == over(project, "image_size_total", 1, 1, 1)
        assert leftovers(api, image["id"]) == []


@ONE_LOOP
async def test_import_is_refused_at_the_api_when_already_over(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """A project already past image_size_total (its limit lowered) gets 413 from POST /import, as
    from Glance, before anything is locked; uploads too; a raised limit lets it go on."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **ALL_UNLIMITED)
    project = await keystone.project()
    limit_ids = await keystone.limit(service, project, image_size_total=5)
    who = member_of(project)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint, limits_cache_time="0")) as api:
        stored = await api.create(as_=who)
        assert (await upload(api, stored["id"], os.urandom(2 * MiB), who)).status == 204
        staged = await api.create(as_=who)
        assert (await upload(api, staged["id"], os.urandom(MiB), who, path="stage")).status == 204
        await keystone.set_limit(limit_ids["image_size_total"], 1)
        reply = await start_import(api, staged["id"], {"method": {"name": "glance-direct"}}, as_=who)
        assert reply.status == 413 and explanation(reply) == over(project, "image_size_total", 1, 2, 0)
        assert (await show(api, staged["id"]))["status"] == "uploading"
        await keystone.set_limit(limit_ids["image_size_total"], 3)
        assert (await start_import(api, staged["id"], {"method": {"name": "glance-direct"}}, as_=who)).status == 202
        shown, tasks = await settle(api, staged["id"])
        assert shown["status"] == "active", tasks


class BigSource:
    """A web-download source sending ``size`` bytes, chunked (no Content-Length)."""

    def __init__(self, size: int) -> None:
        self.size = size
        app = web.Application()
        app.router.add_get("/big", self._big)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def _big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"w" * (256 << 10)
        for _ in range(self.size // len(block)):
            await response.write(block)
        await response.write_eof()
        return response


@ONE_LOOP
async def test_web_download_stops_at_image_stage_total(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_stage_total": 1})
    project = await keystone.project()
    who = member_of(project)
    source = BigSource(8 * MiB)
    await source.server.start_server()
    try:
        async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint),
                                     import_filtering_opts={"allowed_ports": "", "allow_private_networks": "true"}) as api:
            image = await api.create(as_=who)
            uri = f"http://127.0.0.1:{source.server.port}/big"
            body = {"method": {"name": "web-download", "uri": uri}}
            reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=who, json_body=body)
            assert reply.status == 202, reply.body
            shown, tasks = await settle(api, image["id"])
            assert shown["status"] == "queued" and tasks[0]["status"] == "failure"
            assert tasks[0]["message"] == over(project, "image_stage_total", 1, 0, 2)
            assert leftovers(api, image["id"]) == []
    finally:
        await source.server.close()


@ONE_LOOP
async def test_endpoint_found_by_service_name_and_region(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """Without endpoint_id, oslo.limit's lookup: the service by type and name, the region, the interface."""
    service, name, _ = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_count_total": 1})
    project = await keystone.project()
    config = limits_config(keystone, endpoint_service_type="image", endpoint_service_name=name,
                           endpoint_region_name="RegionOne", endpoint_interface="publicURL")
    async with with_limits(tmp_path, config) as api:
        await api.create(as_=member_of(project))
        reply = await api.call("POST", "/v2/images", as_=member_of(project),
                               json_body={"disk_format": "raw", "container_format": "bare"})
        assert reply.status == 413
    # A second service of the same name: the lookup is no longer unique, and says so (500, as Glance).
    await keystone.call("POST", "/services", {"service": {"type": "image", "name": name}})
    async with with_limits(tmp_path / "2", config) as api:
        reply = await api.call("GET", "/v2/info/usage", as_=member_of(project))
        assert reply.status == 500 and "Multiple services found" in reply.body.decode()


@ONE_LOOP
async def test_limits_are_cached_for_limits_cache_time(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **ALL_UNLIMITED)
    project = await keystone.project()
    ids = await keystone.limit(service, project, image_count_total=7)
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint, limits_cache_time="300")) as api:
        async def shown() -> int:
            usage = (await api.call("GET", "/v2/info/usage", as_=member_of(project))).json["usage"]
            return int(usage["image_count_total"]["limit"])

        assert await shown() == 7
        await keystone.set_limit(ids["image_count_total"], 8)
        assert await shown() == 7  # within limits_cache_time: Keystone is not asked again


async def test_keystone_unreachable_is_503_never_a_pass(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = limits_config(keystone, endpoint_id="0" * 32, auth_url=f"http://127.0.0.1:{closed_port}/v3")
    async with with_limits(tmp_path, config) as api:
        reply = await api.call("POST", "/v2/images", as_=ADMIN, json_body={"disk_format": "raw",
                                                                           "container_format": "bare"})
        assert reply.status == 503, reply.body
        assert "cannot be reached" in explanation(reply)
        assert (await api.call("GET", "/v2/info/usage", as_=ADMIN)).status == 503
        assert (await api.call("GET", "/v2/images", as_=ADMIN)).status == 200  # nothing else needs Keystone


@ONE_LOOP
async def test_refused_service_credentials_are_500(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    _, _, endpoint = await keystone.service()
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint, password="wrong")) as api:
        reply = await api.call("GET", "/v2/info/usage", as_=ADMIN)
        assert reply.status == 500 and "refused the [oslo_limit] credentials" in reply.body.decode()


@ONE_LOOP
async def test_user_storage_quota_is_not_used_with_keystone_limits(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **ALL_UNLIMITED)
    who = member_of(await keystone.project())
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint),
                           default={"user_storage_quota": "1KB"}) as api:
        image = await api.create(as_=who)
        assert (await upload(api, image["id"], b"z" * 4096, who)).status == 204


@ONE_LOOP
async def test_copy_image_past_image_stage_total_fails_its_task(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """copy-image works through staging in Glance, so it counts against image_stage_total (delta
    its size in MiB): the task fails, the image stays active in its one store, the target gets nothing."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_stage_total": 0})
    project = await keystone.project()
    admin = {"X-Project-Id": project, "X-User-Id": "admin-user", "X-Roles": "admin,member,reader"}
    async with with_limits(tmp_path, limits_config(keystone, endpoint_id=endpoint),
                           default={"enabled_backends": "fs:file,fs2:file"}) as api:
        image = await api.create(as_=admin)
        assert (await upload(api, image["id"], os.urandom(MiB), admin)).status == 204
        body = {"method": {"name": "copy-image"}, "stores": ["fs2"]}
        assert (await start_import(api, image["id"], body, as_=admin)).status == 202
        shown, tasks = await settle(api, image["id"])
        assert tasks[0]["status"] == "failure"
        # Glance's count: the image being copied is already in the usage (os_glance_importing_to_stores).
        assert tasks[0]["message"] == over(project, "image_stage_total", 0, 1, 1)
        assert shown["status"] == "active" and shown["stores"] == "fs"
        assert not store_file(api, "fs2", image["id"]).exists()


@ONE_LOOP
async def test_a_revoked_service_token_is_renewed(tmp_path: Path, keystone: KeystoneAdmin) -> None:
    """streamd's own token revoked (its user's password changed and changed back): the next read
    gets 401, authenticates again and goes on."""
    service, _, endpoint = await keystone.service()
    await keystone.register(service, **{**ALL_UNLIMITED, "image_count_total": 4})
    name, password = f"streamd-svc-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    user = (await keystone.call("POST", "/users", {"user": {"name": name, "password": password,
                                                             "domain_id": "default"}}))["user"]
    admin_project = (await keystone.call("GET", "/projects?name=admin"))["projects"][0]["id"]
    admin_role = (await keystone.call("GET", "/roles?name=admin"))["roles"][0]["id"]
    await keystone.call("PUT", f"/projects/{admin_project}/users/{user['id']}/roles/{admin_role}")
    project = await keystone.project()
    config = limits_config(keystone, endpoint_id=endpoint, username=name, password=password, limits_cache_time="0")
    async with with_limits(tmp_path, config) as api:
        usage = (await api.call("GET", "/v2/info/usage", as_=member_of(project))).json["usage"]
        assert usage["image_count_total"] == {"limit": 4, "usage": 0}
        for new in (uuid.uuid4().hex, password):  # a password change revokes the user's tokens
            await keystone.call("PATCH", f"/users/{user['id']}", {"user": {"password": new}})
        await asyncio.sleep(1.1)  # Keystone's revocations are by the second: the new token must be later
        reply = await api.call("GET", "/v2/info/usage", as_=member_of(project))
        assert reply.status == 200, reply.body
        assert reply.json["usage"]["image_count_total"] == {"limit": 4, "usage": 0}
