"""Interoperable import into REAL Ceph RBD stores (the throwaway cluster scripts/test.sh starts).

The catalogue has a file store ``fs`` (the default), two RBD stores ``ceph`` and ``edge`` on two
pools (the "edge sites"), and ``bad``: an RBD store whose pool does not exist, so that every
write to it fails for real, in librados, not in a fake.

What the stores hold is checked on the cluster itself (``rbd ls``, ``rbd export``), not only
through the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from conftest import ADMIN, MEMBER_A, ApiClient, make_config, start_api
from test_rbd_store import SECOND_POOL, ceph_env, chunked, payload, rbd, rbd_images, rbd_sections, second_pool

__all__ = ["second_pool"]  # the session fixture that creates the second pool, used here too

OCTET = {"Content-Type": "application/octet-stream"}
MIB = 1 << 20
MISSING_POOL = "streamd-no-such-pool"


def import_sections() -> dict[str, dict[str, str]]:
    sections = rbd_sections()
    sections["DEFAULT"] = {"enabled_backends": "fs:file,ceph:rbd,edge:rbd,bad:rbd"}
    sections["bad"] = {**sections["ceph"], "rbd_store_pool": MISSING_POOL, "rados_connect_timeout": "5"}
    return sections


@pytest.fixture
async def api(tmp_path: Path, second_pool: str) -> AsyncIterator[ApiClient]:
    server, client, session = await start_api(make_config(tmp_path, None, **import_sections()))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


# -- helpers ------------------------------------------------------------------------------------

def pool() -> str:
    return ceph_env()["CEPH_POOL"]


def rbd_export(pool_name: str, image_id: str) -> bytes:
    """The bytes of ``pool/image@snap``, read from the cluster by the rbd tool."""
    result = subprocess.run(["rbd", "--conf", ceph_env()["CEPH_CONF"], "export", f"{pool_name}/{image_id}@snap", "-"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def rbd_names_of(pool_name: str, image_id: str) -> list[str]:
    """Every RBD image of the pool named after the image (the final one and any incoming one)."""
    return [n for n in rbd_images(pool_name) if image_id in n]


def staging_dir(api: ApiClient) -> Path:
    return api.config.staging_dir


def staging_leftovers(api: ApiClient) -> list[str]:
    """Everything in the staging area but its (empty) ``.incoming`` directory."""
    directory = staging_dir(api)
    found = sorted(p.name for p in directory.iterdir() if p.name != ".incoming")
    incoming = directory / ".incoming"
    if incoming.exists():
        found += sorted(f".incoming/{p.name}" for p in incoming.iterdir())
    return found


def store_names(image: dict[str, Any]) -> set[str]:
    return set(filter(None, (image.get("stores") or "").split(",")))


def prop_list(image: dict[str, Any], name: str) -> set[str]:
    return set(filter(None, (image.get(name) or "").split(",")))


async def show(api: ApiClient, image_id: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/v2/images/{image_id}", as_=ADMIN)
    assert reply.status == 200, reply.body
    return reply.json  # type: ignore[no-any-return]


async def stage(api: ApiClient, image_id: str, data: bytes) -> None:
    reply = await api.call("PUT", f"/v2/images/{image_id}/stage", as_=MEMBER_A, data=chunked(data, MIB + 3),
                           headers=OCTET)
    assert reply.status == 204, reply.body
    assert (await show(api, image_id))["status"] == "uploading"


async def start_import(api: ApiClient, image_id: str, method: str, *, as_: dict[str, str] = MEMBER_A,
                       uri: str | None = None, **body: Any) -> None:
    reply = await api.call("POST", f"/v2/images/{image_id}/import", as_=as_,
                           json_body={"method": {"name": method, **({"uri": uri} if uri else {})}, **body})
    assert reply.status == 202, reply.body


async def wait_task(api: ApiClient, image_id: str, count: int = 1, timeout: float = 90) -> dict[str, Any]:
    """The newest import task of the image, once ``count`` tasks exist and none is running."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await api.call("GET", f"/v2/images/{image_id}/tasks", as_=MEMBER_A)
        assert reply.status == 200, reply.body
        tasks = reply.json["tasks"]
        if len(tasks) >= count and all(t["status"] in ("success", "failure") for t in tasks):
            return tasks[0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"the import did not finish: {tasks}"
        await asyncio.sleep(0.1)


async def glance_direct(api: ApiClient, data: bytes, stores: list[str], **body: Any) -> tuple[str, dict[str, Any]]:
    image = await api.create(name="imported")
    await stage(api, image["id"], data)
    await start_import(api, image["id"], "glance-direct", stores=stores, **body)
    return image["id"], await wait_task(api, image["id"])


# -- glance-direct -------------------------------------------------------------------------------

async def test_glance_direct_into_rbd(api: ApiClient) -> None:
    data = payload(3 * MIB + 5, seed=11)
    image = await api.create(name="to-ceph")
    await stage(api, image["id"], data)
    assert staging_leftovers(api)  # the staged data waits on this node's disk...
    await start_import(api, image["id"], "glance-direct", stores=["ceph"])
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task
    shown = await show(api, image["id"])
    assert shown["status"] == "active" and store_names(shown) == {"ceph"}
    assert shown["size"] == len(data) and shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    for lock_prop in ("os_glance_import_task", "os_glance_importing_to_stores", "os_glance_failed_import",
                      "os_glance_stage_host"):
        assert not shown.get(lock_prop), (lock_prop, shown)
    # On the cluster: the final RBD image (no incoming leftover), with the right bytes.
    assert rbd_names_of(pool(), image["id"]) == [image["id"]]
    assert rbd_export(pool(), image["id"]) == data
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.status == 200 and got.body == data
    assert staging_leftovers(api) == []  # ...and is gone once imported
    # Not written anywhere else.
    assert rbd_names_of(SECOND_POOL, image["id"]) == []
    assert not (api.config.data_dir / "images" / "fs" / image["id"]).exists()


async def test_glance_direct_into_file_and_two_rbd_stores(api: ApiClient) -> None:
    data = payload(2 * MIB + 4097, seed=12)
    image_id, task = await glance_direct(api, data, ["fs", "ceph", "edge"])
    assert task["status"] == "success", task
    shown = await show(api, image_id)
    assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph", "edge"}
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert not shown.get("os_glance_importing_to_stores") and not shown.get("os_glance_failed_import")
    # Each site holds its own whole copy.
    assert rbd_export(pool(), image_id) == data
    assert rbd_export(SECOND_POOL, image_id) == data
    assert rbd_names_of(pool(), image_id) == [image_id] and rbd_names_of(SECOND_POOL, image_id) == [image_id]
    assert (api.config.data_dir / "images" / "fs" / image_id).read_bytes() == data
    assert staging_leftovers(api) == []
    assert (await api.call("GET", f"/v2/images/{image_id}/file", as_=MEMBER_A)).body == data


async def test_web_download_into_rbd(tmp_path: Path, second_pool: str) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    data = payload(MIB + 77, seed=13)

    async def disk(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="application/octet-stream")

    source_app = web.Application()
    source_app.router.add_get("/disk.raw", disk)
    source = TestServer(source_app, host="127.0.0.1", port=0)
    await source.start_server()
    config = make_config(tmp_path, None, **import_sections(), import_filtering_opts={
        "allow_private_networks": "true", "allowed_ports": str(source.port)})
    server, client, session = await start_api(config)
    try:
        image = await client.create(name="from-web")
        no_uri = await client.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                                   json_body={"method": {"name": "web-download"}, "stores": ["edge"]})
        assert no_uri.status == 400
        await start_import(client, image["id"], "web-download", stores=["edge"],
                           uri=f"http://127.0.0.1:{source.port}/disk.raw")
        task = await wait_task(client, image["id"])
        assert task["status"] == "success", task
        shown = await show(client, image["id"])
        assert shown["status"] == "active" and store_names(shown) == {"edge"}
        assert shown["checksum"] == hashlib.md5(data).hexdigest() and shown["size"] == len(data)
        assert rbd_export(SECOND_POOL, image["id"]) == data
        assert rbd_names_of(pool(), image["id"]) == []
        assert staging_leftovers(client) == []
    finally:
        await session.close()
        await server.close()
        await source.close()


# -- copy-image ----------------------------------------------------------------------------------

async def test_copy_image_from_file_store_to_rbd(api: ApiClient) -> None:
    data = payload(2 * MIB + 1, seed=14)
    image = await api.create(name="copied")
    reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=data, headers=OCTET)
    assert reply.status == 204, reply.body
    assert store_names(await show(api, image["id"])) == {"fs"}
    # copy-image is an admin action.
    denied = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                            json_body={"method": {"name": "copy-image"}, "stores": ["ceph"]})
    assert denied.status == 403
    await start_import(api, image["id"], "copy-image", as_=ADMIN, stores=["ceph"])
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task
    shown = await show(api, image["id"])
    assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph"}
    assert shown["checksum"] == hashlib.md5(data).hexdigest() and shown["size"] == len(data)
    assert rbd_export(pool(), image["id"]) == data
    assert rbd_names_of(pool(), image["id"]) == [image["id"]]
    assert (api.config.data_dir / "images" / "fs" / image["id"]).read_bytes() == data
    # Copying again to a store that holds the image is Glance's 400.
    again = await api.call("POST", f"/v2/images/{image['id']}/import", as_=ADMIN,
                           json_body={"method": {"name": "copy-image"}, "stores": ["ceph"]})
    assert again.status == 400


async def test_copy_image_from_rbd_to_file_and_the_other_pool(api: ApiClient) -> None:
    data = payload(3 * MIB + 17, seed=21)
    image_id, task = await glance_direct(api, data, ["ceph"])
    assert task["status"] == "success", task
    # The image is not in the default (file) store: the copy reads it from the cluster.
    await start_import(api, image_id, "copy-image", as_=ADMIN, stores=["fs", "edge"])
    task = await wait_task(api, image_id, count=2)
    assert task["status"] == "success", task
    shown = await show(api, image_id)
    assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph", "edge"}
    assert (api.config.data_dir / "images" / "fs" / image_id).read_bytes() == data
    assert rbd_export(SECOND_POOL, image_id) == data
    assert shown["checksum"] == hashlib.md5(data).hexdigest()


async def test_copy_image_to_all_stores_with_a_failing_one(api: ApiClient) -> None:
    data = payload(MIB + 3, seed=15)
    image = await api.create(name="everywhere")
    assert (await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=data,
                           headers=OCTET)).status == 204
    await start_import(api, image["id"], "copy-image", as_=ADMIN, all_stores=True, all_stores_must_succeed=False)
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task
    shown = await show(api, image["id"])
    assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph", "edge"}
    assert prop_list(shown, "os_glance_failed_import") == {"bad"}
    assert not shown.get("os_glance_importing_to_stores") and not shown.get("os_glance_import_task")
    assert rbd_export(pool(), image["id"]) == data and rbd_export(SECOND_POOL, image["id"]) == data


async def test_copy_image_must_succeed_keeps_the_image_as_it_was(api: ApiClient) -> None:
    data = payload(MIB, seed=16)
    image = await api.create(name="copy-fails")
    assert (await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=data,
                           headers=OCTET)).status == 204
    await start_import(api, image["id"], "copy-image", as_=ADMIN, stores=["ceph", "bad"])
    task = await wait_task(api, image["id"])
    assert task["status"] == "failure", task
    assert "bad" in task["message"], task
    shown = await show(api, image["id"])
    # copy-image never changes the status; the copy that did succeed is taken back.
    assert shown["status"] == "active" and store_names(shown) == {"fs"}
    assert "bad" in prop_list(shown, "os_glance_failed_import")
    assert not shown.get("os_glance_import_task") and not shown.get("os_glance_importing_to_stores")
    assert rbd_names_of(pool(), image["id"]) == []
    assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).body == data


# -- all_stores_must_succeed with a store that fails for real -------------------------------------

async def test_must_succeed_true_with_a_failing_rbd_store_queues_the_image(api: ApiClient) -> None:
    assert MISSING_POOL not in subprocess.run(["ceph", "--conf", ceph_env()["CEPH_CONF"], "osd", "pool", "ls"],
                                              capture_output=True, text=True, timeout=60, check=True).stdout.split()
    data = payload(2 * MIB + 9, seed=17)
    image_id, task = await glance_direct(api, data, ["fs", "ceph", "bad"], all_stores_must_succeed=True)
    assert task["status"] == "failure", task
    assert MISSING_POOL in task["message"], task  # librados' own refusal, passed on
    shown = await show(api, image_id)
    assert shown["status"] == "queued", shown
    assert store_names(shown) == set() and shown["size"] is None and shown["checksum"] is None
    # As Glance's revert: every store of the failed import is listed as failed.
    assert prop_list(shown, "os_glance_failed_import") == {"fs", "ceph", "bad"}
    assert not shown.get("os_glance_import_task") and not shown.get("os_glance_importing_to_stores")
    # Nothing is left in the good stores: no RBD image (final or incoming) in the pool...
    assert rbd_names_of(pool(), image_id) == []
    # ...no file in the file store, nothing in staging.
    fs_dir = api.config.data_dir / "images" / "fs"
    assert not (fs_dir / image_id).exists()
    assert not (fs_dir / ".incoming").exists() or list((fs_dir / ".incoming").iterdir()) == []
    assert staging_leftovers(api) == []
    # The image can be staged and imported again, into the good stores.
    await stage(api, image_id, data)
    await start_import(api, image_id, "glance-direct", stores=["fs", "ceph"])
    task = await wait_task(api, image_id, count=2)
    assert task["status"] == "success", task
    shown = await show(api, image_id)
    assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph"}
    assert prop_list(shown, "os_glance_failed_import") == {"bad"}  # an earlier failure, not retried
    assert rbd_export(pool(), image_id) == data


async def test_must_succeed_false_with_a_failing_rbd_store_activates_the_good_ones(api: ApiClient) -> None:
    data = payload(2 * MIB + 11, seed=18)
    image_id, task = await glance_direct(api, data, ["ceph", "bad", "edge"], all_stores_must_succeed=False)
    assert task["status"] == "success", task
    shown = await show(api, image_id)
    assert shown["status"] == "active", shown
    assert store_names(shown) == {"ceph", "edge"}
    assert prop_list(shown, "os_glance_failed_import") == {"bad"}
    assert not shown.get("os_glance_importing_to_stores") and not shown.get("os_glance_import_task")
    assert shown["checksum"] == hashlib.md5(data).hexdigest() and shown["size"] == len(data)
    assert rbd_export(pool(), image_id) == data and rbd_export(SECOND_POOL, image_id) == data
    assert staging_leftovers(api) == []
    assert (await api.call("GET", f"/v2/images/{image_id}/file", as_=MEMBER_A)).body == data


async def test_must_succeed_false_file_store_first_then_the_cluster(api: ApiClient) -> None:
    """The file store takes the staged file by a rename and the image is active at once; the RBD
    copies follow, the failing one is recorded as failed."""
    data = payload(MIB + 123, seed=22)
    image_id, task = await glance_direct(api, data, ["fs", "ceph", "bad"], all_stores_must_succeed=False)
    assert task["status"] == "success", task
    shown = await show(api, image_id)
    assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph"}
    assert prop_list(shown, "os_glance_failed_import") == {"bad"}
    assert not shown.get("os_glance_importing_to_stores") and not shown.get("os_glance_import_task")
    assert (api.config.data_dir / "images" / "fs" / image_id).read_bytes() == data
    assert rbd_export(pool(), image_id) == data
    assert staging_leftovers(api) == []


async def test_must_succeed_false_when_every_store_fails_queues_the_image(api: ApiClient) -> None:
    image_id, task = await glance_direct(api, payload(MIB, seed=19), ["bad"], all_stores_must_succeed=False)
    assert task["status"] == "failure", task
    shown = await show(api, image_id)
    assert shown["status"] == "queued" and store_names(shown) == set()
    assert prop_list(shown, "os_glance_failed_import") == {"bad"}
    assert staging_leftovers(api) == []


# -- DELETE /v2/stores/{store}/{image} ------------------------------------------------------------

async def test_delete_from_rbd_store_removes_the_rbd_image(api: ApiClient) -> None:
    data = payload(MIB + 1, seed=20)
    image_id, task = await glance_direct(api, data, ["fs", "ceph", "edge"])
    assert task["status"] == "success", task
    assert image_id in rbd_images(pool())
    # Only admins may remove a store's copy.
    assert (await api.call("DELETE", f"/v2/stores/ceph/{image_id}", as_=MEMBER_A)).status == 403
    # While a clone depends on the snapshot, the copy cannot go (RBD refuses; Glance's 409).
    clone = f"clone-{image_id[:8]}"
    rbd("clone", f"{pool()}/{image_id}@snap", f"{pool()}/{clone}")
    try:
        busy = await api.call("DELETE", f"/v2/stores/ceph/{image_id}", as_=ADMIN)
        assert busy.status == 409, busy.body
        assert store_names(await show(api, image_id)) == {"fs", "ceph", "edge"}
        assert image_id in rbd_images(pool())
    finally:
        rbd("rm", f"{pool()}/{clone}")
    reply = await api.call("DELETE", f"/v2/stores/ceph/{image_id}", as_=ADMIN)
    assert reply.status == 204, reply.body
    assert rbd_names_of(pool(), image_id) == []
    shown = await show(api, image_id)
    assert shown["status"] == "active" and store_names(shown) == {"fs", "edge"}
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert (await api.call("GET", f"/v2/images/{image_id}/file", as_=MEMBER_A)).body == data
    # Not there any more: 404; the other site keeps its copy.
    assert (await api.call("DELETE", f"/v2/stores/ceph/{image_id}", as_=ADMIN)).status == 404
    assert (await api.call("DELETE", f"/v2/stores/edge/{image_id}", as_=ADMIN)).status == 204
    assert rbd_names_of(SECOND_POOL, image_id) == []
    # The last copy cannot be removed this way.
    assert (await api.call("DELETE", f"/v2/stores/fs/{image_id}", as_=ADMIN)).status == 403
    assert store_names(await show(api, image_id)) == {"fs"}
    # Copied back to the cluster, it can be removed with the image.
    await start_import(api, image_id, "copy-image", as_=ADMIN, stores=["ceph"])
    assert (await wait_task(api, image_id, count=2))["status"] == "success"
    assert rbd_export(pool(), image_id) == data
    assert (await api.call("DELETE", f"/v2/images/{image_id}", as_=MEMBER_A)).status == 204
    assert rbd_names_of(pool(), image_id) == []


async def test_stores_detail_names_the_pools(api: ApiClient) -> None:
    reply = await api.call("GET", "/v2/info/stores/detail", as_=ADMIN)
    assert reply.status == 200, reply.body
    stores = {s["id"]: s for s in reply.json["stores"]}
    assert set(stores) == {"fs", "ceph", "edge", "bad"}
    assert stores["fs"]["type"] == "file" and stores["fs"].get("default") == "true"
    assert stores["ceph"]["type"] == "rbd" and stores["ceph"]["properties"]["pool"] == pool()
    assert stores["edge"]["properties"]["pool"] == SECOND_POOL
    assert stores["bad"]["properties"]["pool"] == MISSING_POOL
    fsid = json.loads(subprocess.run(["ceph", "--conf", ceph_env()["CEPH_CONF"], "fsid", "--format", "json"],
                                     capture_output=True, text=True, timeout=60, check=True).stdout)["fsid"]
    assert stores["ceph"]["properties"]["fsid"] == fsid
