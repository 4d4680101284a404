"""Image locations as Glance 33 shows and changes them: ``show_image_direct_url``,
``show_multiple_locations``, PATCH ``/locations`` (add, replace, remove) and the 2.17 API
(``POST``/``GET /v2/images/{id}/locations``), on file stores and on the real Ceph cluster
(as Nova uses them: clone the image's protected snapshot, or write an RBD image and add it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import unquote, urlparse

import pytest

from conftest import (ADMIN, MEMBER_A, MEMBER_B, PROJECT_A, READER_A, ROOT, ApiClient, make_config, start_api,
                      start_daemon, stop_daemon)

OCTET = {"Content-Type": "application/octet-stream"}
PATCH_21 = "application/openstack-images-v2.1-json-patch"
SHOWN = {"DEFAULT": {"show_multiple_locations": "true", "show_image_direct_url": "true"}}
TWO_STORES = {"enabled_backends": "fs:file,fast:file"}
# A service acting for project A's user (Nova, Cinder): the add_image_location / fetch_image_location caller.
SERVICE_A = {"X-Project-Id": PROJECT_A, "X-User-Id": "nova", "X-Roles": "member,reader,service"}
DATA = os.urandom(3 * 65536 + 17)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **sections: dict[str, str]) -> AsyncIterator[ApiClient]:
    server, client, session = await start_api(make_config(tmp_path, None, **sections))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


def merged(*parts: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for part in parts:
        for section, values in part.items():
            out.setdefault(section, {}).update(values)
    return out


async def show(api: ApiClient, image_id: str, as_: dict[str, str] = MEMBER_A) -> dict[str, Any]:
    reply = await api.call("GET", f"/v2/images/{image_id}", as_=as_)
    assert reply.status == 200, reply.body
    return reply.json  # type: ignore[no-any-return]


async def uploaded(api: ApiClient, data: bytes = DATA, **body: Any) -> dict[str, Any]:
    image = await api.create(**body)
    reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=data, headers=OCTET)
    assert reply.status == 204, reply.body
    return await show(api, image["id"])


async def in_two_stores(api: ApiClient) -> dict[str, Any]:
    """An active image whose data is in both file stores (glance-direct into fs and fast)."""
    image = await api.create()
    reply = await api.call("PUT", f"/v2/images/{image['id']}/stage", as_=MEMBER_A, data=DATA, headers=OCTET)
    assert reply.status == 204, reply.body
    reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                           json_body={"method": {"name": "glance-direct"}, "stores": ["fs", "fast"]})
    assert reply.status == 202, reply.body
    for _ in range(500):
        shown = await show(api, image["id"])
        if shown["status"] == "active" and len(shown.get("locations", [])) == 2:
            return shown
        await asyncio.sleep(0.02)
    raise AssertionError(f"the import never finished: {shown}")


async def settled(api: ApiClient, image_id: str, as_: dict[str, str] = MEMBER_A) -> dict[str, Any]:
    """The image once its location_import task has ended (POST /v2/images/{id}/locations)."""
    for _ in range(1000):
        reply = await api.call("GET", f"/v2/images/{image_id}/tasks", as_=as_)
        tasks = reply.json["tasks"] if reply.status == 200 else []
        if tasks and all(t["status"] in ("success", "failure") for t in tasks):
            return await show(api, image_id, as_)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the location_import task of {image_id} never ended")


def error_of(reply: Any) -> dict[str, Any]:
    """Code, title and message of an error answer, without webob's trailing ``<br /><br />``."""
    error = reply.error
    return {**error, "message": error["message"].split("<br />")[0]}


def path_of(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file" and not parsed.netloc
    return Path(unquote(parsed.path))


async def download(api: ApiClient, image_id: str) -> bytes:
    reply = await api.call("GET", f"/v2/images/{image_id}/file", as_=MEMBER_A)
    assert reply.status == 200, reply.body
    return reply.body


# -- views --------------------------------------------------------------------------------------

async def test_locations_are_not_shown_by_default(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await uploaded(api)
        assert "locations" not in image and "direct_url" not in image
        listed = (await api.call("GET", "/v2/images", as_=MEMBER_A)).json["images"]
        assert all("locations" not in i and "direct_url" not in i for i in listed)


async def test_direct_url_and_locations_name_the_stored_file(tmp_path: Path) -> None:
    async with running(tmp_path, **SHOWN) as api:
        queued = await api.create()
        # Allowed to be shown, but there are none yet: an empty list and no direct_url (Glance).
        assert queued["locations"] == [] and "direct_url" not in queued
        image = await uploaded(api)
        [location] = image["locations"]
        assert location["metadata"] == {"store": "fs"}
        assert image["direct_url"] == location["url"]
        assert path_of(location["url"]).read_bytes() == DATA
        assert path_of(location["url"]).name == image["id"]
        listed = {i["id"]: i for i in (await api.call("GET", "/v2/images", as_=MEMBER_A)).json["images"]}
        assert listed[image["id"]]["locations"] == image["locations"]
        assert listed[image["id"]]["direct_url"] == location["url"]


async def test_each_option_alone(tmp_path: Path) -> None:
    async with running(tmp_path, DEFAULT={"show_image_direct_url": "true"}) as api:
        image = await uploaded(api)
        assert "locations" not in image and path_of(image["direct_url"]).read_bytes() == DATA
    async with running(tmp_path / "2", DEFAULT={"show_multiple_locations": "true"}) as api:
        image = await uploaded(api)
        assert "direct_url" not in image and len(image["locations"]) == 1


async def test_whoever_sees_the_image_sees_its_locations(tmp_path: Path) -> None:
    """As Glance 33's serializer: the views do not ask get_image_location (it guards the PATCH
    paths), so another project's member sees a community image's locations and direct_url
    (Nova booting it), and a policy file refusing the rule hides nothing."""
    async with running(tmp_path, **SHOWN) as api:
        image = await uploaded(api, visibility="community")
        assert len((await show(api, image["id"], READER_A))["locations"]) == 1
        assert "direct_url" in await show(api, image["id"], ADMIN)
        other = await show(api, image["id"], MEMBER_B)
        assert len(other["locations"]) == 1 and other["direct_url"] == other["locations"][0]["url"]
    policy = tmp_path / "policy.yaml"
    policy.write_text('get_image_location: "!"\n')
    async with running(tmp_path / "2", **merged(SHOWN, {"oslo_policy": {"policy_file": str(policy)}})) as api:
        image = await uploaded(api)
        shown = await show(api, image["id"], ADMIN)
        assert len(shown["locations"]) == 1 and "direct_url" in shown


async def test_store_weight_and_store_type_order_the_locations(tmp_path: Path) -> None:
    async with running(tmp_path, **merged(SHOWN, {"DEFAULT": TWO_STORES})) as api:
        image = await in_two_stores(api)
        assert [loc["metadata"]["store"] for loc in image["locations"]] == ["fs", "fast"]
        assert image["stores"] == "fs,fast"
        assert image["direct_url"] == image["locations"][0]["url"]
    # Glance 33: the store of higher weight first, in the list and for direct_url.
    sections = merged(SHOWN, {"DEFAULT": TWO_STORES, "fast": {"weight": "10"}})
    async with running(tmp_path / "2", **sections) as api:
        image = await in_two_stores(api)
        assert [loc["metadata"]["store"] for loc in image["locations"]] == ["fast", "fs"]
        assert path_of(image["direct_url"]).parent.name == "fast" and image["stores"] == "fast,fs"
        detail = (await api.call("GET", "/v2/info/stores/detail", as_=ADMIN)).json["stores"]
        assert {s["id"]: s["weight"] for s in detail} == {"fs": 0, "fast": 10}


def test_store_type_strategy_orders_by_preference() -> None:
    from streamd.catalog.records import Location
    from streamd.config import load_config
    from streamd.pipeline.locations import ordered

    overrides = {"DEFAULT": {"enabled_backends": "ceph:rbd,fs:file", "location_strategy": "store_type"},
                 "store_type_location_strategy": {"store_type_preference": "file,rbd"}}
    config = load_config(None, overrides=overrides)
    locations = [Location("ceph", "rbd://f/p/i/snap", {}), Location("fs", "file:///x/i", {})]
    assert [loc.store for loc in ordered(locations, config)] == ["fs", "ceph"]
    overrides["store_type_location_strategy"]["store_type_preference"] = "rbd"
    assert [loc.store for loc in ordered(locations, load_config(None, overrides=overrides))] == ["ceph", "fs"]
    # location_order (the default) keeps the catalogue's order.
    assert [loc.store for loc in ordered(locations, load_config(None, overrides={"DEFAULT": {
        "enabled_backends": "ceph:rbd,fs:file"}}))] == ["ceph", "fs"]


# -- PATCH /locations ----------------------------------------------------------------------------

async def test_location_changes_are_refused_while_locations_are_invisible(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await uploaded(api)
        for op, path, value, message in (
                ("add", "/locations/-", {"url": "file:///etc/passwd", "metadata": {}}, "add"),
                ("replace", "/locations", [{"url": "file:///etc/passwd", "metadata": {}}], "update")):
            reply = await api.patch(image["id"], [{"op": op, "path": path, "value": value}])
            assert error_of(reply) == {"code": 403, "title": "Forbidden",
                                   "message": f"It's not allowed to {message} locations if locations are invisible."}
        reply = await api.patch(image["id"], [{"op": "remove", "path": "/locations/0"}], as_=ADMIN)
        assert error_of(reply)["message"] == "It's not allowed to remove locations if locations are invisible."
        assert (await download(api, image["id"])) == DATA


async def test_patch_errors(tmp_path: Path) -> None:
    async with running(tmp_path, **merged(SHOWN, {"DEFAULT": {"image_location_quota": "1"}})) as api:
        image = await uploaded(api)
        url = image["locations"][0]["url"]
        queued = await api.create()

        async def error(image_id: str, ops: list[dict[str, Any]], as_: dict[str, str] = MEMBER_A) -> tuple[int, str]:
            reply = await api.patch(image_id, ops, as_=as_)
            return error_of(reply)["code"], error_of(reply)["message"]

        other_file = tmp_path / "elsewhere"
        other_file.write_bytes(DATA)
        # file: locations are never accepted (Glance's restricted scheme), even one into the store.
        for bad in (other_file.as_uri(), url, "rbd://fsid/images/x/snap", "http://example.com/x", "nonsense"):
            assert await error(queued["id"], [{"op": "add", "path": "/locations/-",
                                               "value": {"url": bad, "metadata": {}}}]) == (400, "Invalid location")
        assert await error(queued["id"], [{"op": "add", "path": "/locations/x",
                                           "value": {"url": bad, "metadata": {}}}]) == (
            400, "Invalid position for adding a location.")
        assert await error(image["id"], [{"op": "add", "path": "/locations/-",
                                          "value": {"url": bad, "metadata": {}}}]) == (
            413, "The limit has been exceeded on the number of allowed image locations. Attempted: 2, Maximum: 1")
        assert await error(image["id"], [{"op": "replace", "path": "/locations", "value": []}]) == (
            403, "Cannot set locations to empty list.")
        code, message = await error(image["id"], [{"op": "replace", "path": "/locations",
                                                   "value": [{"url": other_file.as_uri(), "metadata": {}}]}])
        assert code == 400 and message.startswith("Original locations is not empty: [{'url': "), message
        # Glance words it as webob's detail after the default explanation.
        reply = await api.patch(image["id"], [{"op": "remove", "path": "/locations/0"}], as_=ADMIN)
        assert reply.error["message"] == ("Access was denied to this resource.<br /><br />\n"
                                          "Cannot remove last location in the image.\n\n")
        assert await error(queued["id"], [{"op": "remove", "path": "/locations/0"}], ADMIN) == (
            409, "It's not allowed to remove locations if image status is queued.")
        # The rules: set_image_location (admin or a member of the project), delete_image_location (admin).
        assert await error(image["id"], [{"op": "replace", "path": "/locations", "value": image["locations"]}],
                           READER_A) == (403, "You are not authorized to complete set_image_location action.")
        assert await error(image["id"], [{"op": "remove", "path": "/locations/0"}]) == (
            403, "You are not authorized to complete delete_image_location action.")
        assert (await api.patch(image["id"], [{"op": "remove", "path": "/locations/0"}], as_=MEMBER_B)).status == 404
        # validation_data must agree with what the image has.
        same = [{"url": url, "metadata": {}, "validation_data": {"os_hash_algo": "sha512",
                                                                  "os_hash_value": "ab" * 64}}]
        assert await error(image["id"], [{"op": "replace", "path": "/locations", "value": same}]) == (
            409, "os_hash_value is already set with a different value")
        same[0]["validation_data"] = {"os_hash_algo": "sha512"}
        assert (await api.patch(image["id"], [{"op": "replace", "path": "/locations", "value": same}])).status == 400
        # Schema: url and metadata are required.
        assert (await api.patch(image["id"], [{"op": "add", "path": "/locations/-", "value": {"url": url}}])).status == 400
        # Deactivated: no changes.
        assert (await api.call("POST", f"/v2/images/{image['id']}/actions/deactivate", as_=ADMIN)).status == 204
        assert await error(image["id"], [{"op": "replace", "path": "/locations", "value": image["locations"]}]) == (
            409, "It's not allowed to replace locations if image status is deactivated.")
        # Nothing changed on the way.
        assert (await show(api, image["id"]))["locations"] == image["locations"]
        assert path_of(url).read_bytes() == DATA
        assert (await show(api, queued["id"]))["status"] == "queued"


async def test_replace_changes_metadata_and_remove_drops_the_data(tmp_path: Path) -> None:
    async with running(tmp_path, **merged(SHOWN, {"DEFAULT": TWO_STORES})) as api:
        image = await in_two_stores(api)
        first, second = image["locations"]
        # The same URLs with new metadata: only the metadata changes (Tempest's test_replace_location).
        changed = [{"url": first["url"], "metadata": {"date": "2015-10-15"}}, second]
        reply = await api.patch(image["id"], [{"op": "replace", "path": "/locations", "value": changed}])
        assert reply.status == 200, reply.body
        assert reply.json["locations"] == [{"url": first["url"], "metadata": {"date": "2015-10-15", "store": "fs"}},
                                           second]
        assert (await show(api, image["id"]))["locations"] == reply.json["locations"]
        # Dropping one by replace is refused; by remove (admin) the data goes with it.
        assert (await api.patch(image["id"], [{"op": "replace", "path": "/locations", "value": [second]}])).status == 400
        assert error_of(await api.patch(image["id"], [{"op": "remove", "path": "/locations/2"}], as_=ADMIN)) == {
            "code": 400, "title": "Bad Request", "message": "Invalid position for removing a location."}
        reply = await api.patch(image["id"], [{"op": "remove", "path": "/locations/0"}], as_=ADMIN)
        assert reply.status == 200, reply.body
        assert reply.json["locations"] == [second] and reply.json["stores"] == "fast"
        assert reply.json["direct_url"] == second["url"] and reply.json["status"] == "active"
        assert not path_of(first["url"]).exists() and path_of(second["url"]).read_bytes() == DATA
        assert await download(api, image["id"]) == DATA


async def test_a_location_change_and_a_property_change_are_one_update(tmp_path: Path) -> None:
    async with running(tmp_path, **merged(SHOWN, {"DEFAULT": TWO_STORES})) as api:
        image = await in_two_stores(api)
        reply = await api.patch(image["id"], [{"op": "add", "path": "/x_note", "value": "kept"},
                                              {"op": "remove", "path": "/locations/-"}], as_=ADMIN)
        assert reply.status == 200, reply.body
        assert reply.json["x_note"] == "kept" and len(reply.json["locations"]) == 1
        # A failing change refuses the whole patch: the property stays unset.
        reply = await api.patch(image["id"], [{"op": "add", "path": "/x_other", "value": "no"},
                                              {"op": "remove", "path": "/locations/0"}], as_=ADMIN)
        assert reply.status == 403
        assert "x_other" not in await show(api, image["id"])


# -- the 2.17 API --------------------------------------------------------------------------------

async def test_locations_api_rules_and_errors(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        image = await uploaded(api)
        queued = await api.create()
        reply = await api.call("GET", f"/v2/images/{image['id']}/locations", as_=MEMBER_A)
        assert error_of(reply) == {"code": 403, "title": "Forbidden",
                               "message": "You are not authorized to complete fetch_image_location action."}
        # A service (and an admin) may read them, whatever show_multiple_locations says.
        for who in (SERVICE_A, ADMIN):
            reply = await api.call("GET", f"/v2/images/{image['id']}/locations", as_=who)
            assert reply.status == 200, reply.body
            [location] = reply.json
            assert location["metadata"] == {"store": "fs"} and path_of(location["url"]).read_bytes() == DATA
        assert (await api.call("GET", f"/v2/images/{queued['id']}/locations", as_=SERVICE_A)).json == []
        assert (await api.call("GET", f"/v2/images/{image['id']}/locations", as_=MEMBER_B)).status == 404

        async def add(image_id: str, body: Any, as_: dict[str, str] = SERVICE_A) -> Any:
            return await api.call("POST", f"/v2/images/{image_id}/locations", as_=as_, json_body=body)

        url = (await api.call("GET", f"/v2/images/{image['id']}/locations", as_=ADMIN)).json[0]["url"]
        assert error_of(await add(image["id"], {"url": url})) == {
            "code": 409, "title": "Conflict", "message": "It's not allowed to add locations if image status is active."}
        # The owner's member passes add_image_location but only a service may add non-http locations.
        assert error_of(await add(queued["id"], {"url": url}, MEMBER_A))["message"] == (
            "http store must be enabled to use location API by normal user.")
        assert error_of(await add(queued["id"], {"url": url}, READER_A))["message"] == (
            "You are not authorized to complete add_image_location action.")
        assert (await add(queued["id"], {"url": url}, MEMBER_B)).status == 404
        for body in ({}, {"url": 5}, {"url": url, "validation_data": {"os_hash_value": "ab" * 64}},
                     {"url": url, "validation_data": {"os_hash_algo": "sha123", "os_hash_value": "ab"}},
                     {"url": url, "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "ab", "x": 1}}):
            reply = await add(queued["id"], body)
            assert reply.status == 400, body
            assert error_of(reply)["message"].startswith("Provided object does not match schema 'location': ")
        reply = await add(queued["id"], {"url": url, "validation_data": {"os_hash_algo": "sha512",
                                                                         "os_hash_value": "ab" * 32}})
        assert error_of(reply)["message"] == (f"os_hash_value: ({'ab' * 32}) is not the correct size for (sha512) "
                                          "(should be (64) bytes)")
        reply = await add(queued["id"], {"url": url, "validation_data": {"os_hash_algo": "sha256",
                                                                         "os_hash_value": "zz" * 32}})
        assert error_of(reply)["message"] == f"os_hash_value ({'zz' * 32}) is not a valid hexadecimal value"
        # file: URLs are refused as by PATCH.
        assert error_of(await add(queued["id"], {"url": url}))["message"] == "Invalid location"
        assert (await show(api, queued["id"]))["status"] == "queued"


async def test_versions_list_2_17(tmp_path: Path) -> None:
    async with running(tmp_path) as api:
        versions = (await api.call("GET", "/versions")).json["versions"]
        assert {"id": "v2.17", "status": "SUPPORTED"} in [{k: v[k] for k in ("id", "status")} for v in versions]
        reply = await api.call("GET", f"/v2.17/images/{(await api.create())['id']}/locations", as_=ADMIN)
        assert reply.status == 200 and reply.json == []


def test_schema_documents_validation_data() -> None:
    from streamd.api.schemas import image_schema
    from streamd.config import load_config

    item = image_schema(load_config(None))["properties"]["locations"]["items"]
    assert item["properties"]["validation_data"]["required"] == ["os_hash_algo", "os_hash_value"]
    assert hashlib.new("sha512").digest_size * 2 == 128  # the hex digest the schema's maxLength allows


# -- RBD, as Nova uses it (the real Ceph cluster of scripts/test.sh) ------------------------------

def ceph() -> tuple[str, str]:
    """(ceph.conf, pool) of the test cluster."""
    missing = [v for v in ("CEPH_CONF", "CEPH_POOL") if not os.environ.get(v)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run with scripts/test.sh (or /tmp/dev/ceph.env), which starts Ceph")
    return os.environ["CEPH_CONF"], os.environ["CEPH_POOL"]


@contextlib.contextmanager
def ioctx(pool: str) -> Any:
    import rados

    cluster = rados.Rados(conffile=ceph()[0], rados_id="admin")
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(pool) as ctx:
            yield cluster, ctx
    finally:
        cluster.shutdown()


def rbd_sections() -> dict[str, dict[str, str]]:
    conf, pool = ceph()
    return merged(SHOWN, {"DEFAULT": {"enabled_backends": "fs:file,ceph:rbd"},
                          "glance_store": {"default_backend": "ceph"},
                          "ceph": {"rbd_store_pool": pool, "rbd_store_ceph_conf": conf, "rbd_store_user": "admin"}})


def parse_rbd(url: str) -> tuple[str, str, str, str]:
    assert url.startswith("rbd://"), url
    fsid, pool, image, snap = url[len("rbd://"):].split("/")
    return fsid, pool, image, snap


async def test_nova_clones_the_protected_snapshot_of_direct_url(tmp_path: Path) -> None:
    import rbd

    data = os.urandom(5 << 20) + bytes(3 << 20) + os.urandom(12345)
    clone = f"test-clone-{os.getpid()}-{id(data):x}"
    async with running(tmp_path, **rbd_sections()) as api:
        image = await uploaded(api, data)
        [location] = image["locations"]
        # The store id, beside what the RBD store recorded of the write (bytes_written).
        assert location["metadata"]["store"] == "ceph" and image["direct_url"] == location["url"]
        fsid, pool, name, snap = parse_rbd(image["direct_url"])
        assert (pool, name, snap) == (ceph()[1], image["id"], "snap")
        with ioctx(pool) as (cluster, ctx):
            assert fsid == cluster.get_fsid()
            with rbd.Image(ctx, name, snapshot=snap, read_only=True) as parent:
                assert parent.is_protected_snap(snap)
            rbd.RBD().clone(ctx, name, snap, ctx, clone, features=rbd.RBD_FEATURE_LAYERING)
            try:
                with rbd.Image(ctx, clone, read_only=True) as child:
                    assert child.size() == len(data)
                    assert child.read(0, len(data)) == data
                # The clone depends on the image's data: deleting the image is refused meanwhile.
                reply = await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)
                assert reply.status == 409, reply.body
            finally:
                rbd.RBD().remove(ctx, clone)
            assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
            assert name not in rbd.RBD().list(ctx)


def _write_rbd_image(ctx: Any, name: str, data: bytes) -> None:
    """What Nova does for a snapshot in RBD: an image of its own, written, with a protected snapshot."""
    import rbd

    rbd.RBD().create(ctx, name, len(data), old_format=False, features=rbd.RBD_FEATURE_LAYERING)
    with rbd.Image(ctx, name) as img:
        img.write(data, 0)
        img.create_snap("snap")
        img.protect_snap("snap")


async def test_a_service_adds_the_rbd_image_it_wrote(tmp_path: Path) -> None:
    """POST /v2/images/{id}/locations (2.17) and PATCH add /locations with an rbd:// URL: the queued
    image becomes active with the data's size, the hashes of validation_data, and the data reads
    back; deleting the image deletes the RBD image (it is the image's data now)."""
    import rbd

    data = os.urandom(2 << 20)
    sha512 = hashlib.sha512(data).hexdigest()
    names = [f"test-nova-{os.getpid()}-{n}-{id(data):x}" for n in range(2)]
    async with running(tmp_path, **rbd_sections()) as api:
        with ioctx(ceph()[1]) as (cluster, ctx):
            for name in names:
                _write_rbd_image(ctx, name, data)
            try:
                urls = [f"rbd://{cluster.get_fsid()}/{ceph()[1]}/{name}/snap" for name in names]
                # Into no store of this node (another cluster or pool), or without the snapshot: refused.
                queued = await api.create()
                for bad in (f"rbd://{'0' * 8}-0000-0000-0000-{'0' * 12}/{ceph()[1]}/{names[0]}/snap",
                            f"rbd://{cluster.get_fsid()}/elsewhere/{names[0]}/snap",
                            f"rbd://{cluster.get_fsid()}/{ceph()[1]}/{names[0]}/nosnap",
                            f"rbd://{cluster.get_fsid()}/{ceph()[1]}/missing-{names[0]}/snap"):
                    reply = await api.call("POST", f"/v2/images/{queued['id']}/locations", as_=SERVICE_A,
                                           json_body={"url": bad})
                    assert error_of(reply)["message"] == "Invalid location", bad
                reply = await api.call("POST", f"/v2/images/{queued['id']}/locations", as_=SERVICE_A,
                                       json_body={"url": urls[0], "validation_data": {"os_hash_algo": "sha512",
                                                                                      "os_hash_value": sha512}})
                assert reply.status == 202 and reply.body == b"", reply.body
                # A location_import task: the data is read once, its hash checked (do_secure_hash).
                shown = await settled(api, queued["id"])
                assert (shown["status"], shown["size"], shown["os_hash_algo"], shown["os_hash_value"]) == (
                    "active", len(data), "sha512", sha512)
                assert shown["checksum"] == hashlib.md5(data).hexdigest()
                [task] = (await api.call("GET", f"/v2/images/{queued['id']}/tasks", as_=MEMBER_A)).json["tasks"]
                assert (task["type"], task["status"]) == ("location_import", "success")
                assert shown["locations"] == [{"url": urls[0], "metadata": {"store": "ceph"}}]
                assert shown["direct_url"] == urls[0] and shown["stores"] == "ceph"
                assert await download(api, queued["id"]) == data
                reply = await api.call("GET", f"/v2/images/{queued['id']}/locations", as_=SERVICE_A)
                assert reply.json == [{"url": urls[0], "metadata": {"store": "ceph"}}]

                # The same by PATCH (set_image_location: a member of the project suffices).
                other = await api.create()
                reply = await api.patch(other["id"], [{"op": "add", "path": "/locations/-",
                                                       "value": {"url": urls[1], "metadata": {"from": "nova"}}}])
                assert reply.status == 200, reply.body
                assert (reply.json["status"], reply.json["size"], reply.json["checksum"]) == ("active", len(data), None)
                assert reply.json["locations"] == [{"url": urls[1], "metadata": {"from": "nova", "store": "ceph"}}]
                assert await download(api, other["id"]) == data
                # The same URL twice is a duplicate.
                reply = await api.patch(other["id"], [{"op": "add", "path": "/locations/0",
                                                       "value": {"url": urls[1], "metadata": {"from": "nova"}}}])
                assert error_of(reply)["message"] == f"The location {urls[1]} already exists"

                for image_id in (queued["id"], other["id"]):
                    assert (await api.call("DELETE", f"/v2/images/{image_id}", as_=MEMBER_A)).status == 204
                assert not set(names) & set(rbd.RBD().list(ctx))
            finally:
                for name in names:
                    if name in rbd.RBD().list(ctx):
                        with rbd.Image(ctx, name) as img:
                            img.unprotect_snap("snap")
                            img.remove_snap("snap")
                        rbd.RBD().remove(ctx, name)


# -- the real CLIs, against streamd and against Glance 33 ---------------------------------------

CLI_IMAGE = "44444444-2222-3333-4444-555555555555"
CLI_QUEUED = "55555555-2222-3333-4444-555555555555"
_FILE_URL = re.compile(r"file://[^\s\"'|,]*/(" + CLI_IMAGE + ")")


def _normalized(text: str) -> str:
    """Where each server keeps its files differs: the directory is replaced by DIR."""
    return _FILE_URL.sub(r"file://DIR/\1", text)


def _rows(table: str, *names: str) -> dict[str, str]:
    """The rows ``names`` of a glanceclient property table."""
    rows: dict[str, str] = {}
    current = None
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2:
            continue
        if cells[0]:
            current = cells[0]
            if current in names:
                rows[current] = cells[1]
        elif current in names:  # a long value wraps onto the next lines
            rows[current] += cells[1]
    # The wrapping drops the blanks it breaks at: compare without blanks.
    return {k: re.sub(r"\s", "", _normalized(v)) for k, v in rows.items()}


def _cli_scenario(url: str, workdir: Path, *, reference: bool) -> list[tuple[str, object]]:
    from test_glance_parity import _DROPPED, _glance, _openstack

    small = workdir / "small.img"
    small.write_bytes(b"locations of streamd and glance" * 11)

    def g(*args: str, setup: bool = False) -> tuple[int, str]:
        return _glance(url, workdir, *args, retry_resets=reference, setup=setup)

    def g_out(*args: str) -> str:
        for _ in range(10):
            done = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(ROOT / ".venv/bin/glance"),
                                   "--os-image-url", url, "--os-auth-token", "x", *args],
                                  capture_output=True, text=True, timeout=60, cwd=workdir)
            # Glance's uWSGI workers sometimes reset a connection: only then the command runs again.
            if not (reference and _DROPPED.search(done.stderr)):
                break
            time.sleep(1)
        assert done.returncode == 0, done.stderr
        return done.stdout

    setup = [g("image-create", "--id", CLI_IMAGE, "--disk-format", "raw", "--container-format", "bare", setup=True),
             g("image-upload", "--file", str(small), CLI_IMAGE, setup=True),
             g("image-create", "--id", CLI_QUEUED, "--disk-format", "raw", "--container-format", "bare", setup=True)]
    assert [rc for rc, _ in setup] == [0, 0, 0], setup
    shown = _rows(g_out("image-show", CLI_IMAGE), "direct_url", "locations", "stores", "status", "size")
    with urllib.request.urlopen(f"{url}/v2/images/{CLI_IMAGE}", timeout=30) as reply:
        raw_url = json.loads(reply.read())["direct_url"]
    steps: list[tuple[str, object]] = [("image-show", shown)]
    steps.append(("location-add file:", g("location-add", "--url", "file:///etc/passwd", CLI_QUEUED)))
    steps.append(("location-add its own file", g("location-add", "--url", raw_url, CLI_QUEUED)))
    steps.append(("location-delete the last", g("location-delete", "--url", raw_url, CLI_IMAGE)))
    steps.append(("add-location (2.17) to an active image", g("add-location", "--url", raw_url, CLI_IMAGE)))
    steps.append(("add-location (2.17) without the service role", g("add-location", "--url", raw_url, CLI_QUEUED)))
    rc, printed = g("location-update", "--url", raw_url, "--metadata", '{"date": "2015-10-15"}', CLI_IMAGE)
    steps.append(("location-update", (rc, _normalized(printed))))
    steps.append(("image-show after the update", _rows(g_out("image-show", CLI_IMAGE), "direct_url", "locations")))
    rc, printed = _openstack(url, workdir, "image", "show", CLI_IMAGE, "-c", "properties", "-f", "json",
                             retry_resets=reference)
    assert rc == 0, printed
    properties = json.loads(printed)["properties"]
    steps.append(("openstack image show: properties", {k: _normalized(json.dumps(properties.get(k), sort_keys=True))
                                                       for k in ("direct_url", "locations", "stores")}))
    return steps


def test_glance_and_openstack_cli_show_and_change_locations_as_with_glance(tmp_path: Path) -> None:
    from test_glance_parity import Glance, _warm_up

    class LocationsGlance(Glance):  # type: ignore[misc, valid-type]
        def prepare(self) -> list[str]:
            command = super().prepare()
            conf = self.workdir / "etc/glance-api.conf"
            conf.write_text(conf.read_text().replace(
                "[DEFAULT]\n", "[DEFAULT]\nshow_multiple_locations = true\nshow_image_direct_url = true\n", 1))
            return command

    (tmp_path / "streamd").mkdir()
    (tmp_path / "glance-work").mkdir()
    daemon = start_daemon(tmp_path / "streamd", extra_config="show_multiple_locations = true\n"
                                                              "show_image_direct_url = true\n")
    def reference() -> list[tuple[str, object]]:
        with LocationsGlance(tmp_path / "glance", ROOT / ".venv-glance") as glance:
            _warm_up(glance.url)
            return _cli_scenario(glance.url, tmp_path / "glance-work", reference=True)

    try:
        # The two servers share nothing: Glance starts and runs the scenario while streamd runs it.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            glance_side = pool.submit(reference)
            ours = _cli_scenario(daemon.url, tmp_path / "streamd", reference=False)
            theirs = glance_side.result()
    finally:
        stop_daemon(daemon)
    assert dict(ours) == dict(theirs)
    shown = dict(ours)["image-show after the update"]
    assert json.loads(shown["locations"]) == [  # type: ignore[index]
        {"url": f"file://DIR/{CLI_IMAGE}", "metadata": {"date": "2015-10-15", "store": "fs"}}]
