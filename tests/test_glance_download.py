"""glance-download between two regions: two streamd services (one per region) behind one real Keystone.

The Keystone of the suite gets two regions and an ``image`` service with an endpoint in each,
pointing at the two daemons (real apps on loopback ports, keystone mode). A member of one
project imports, in region one, an image that lives in region two: the record's formats and
``extra_properties`` come over, the data is the same bytes, and every failure (bad region,
missing image, an image the caller may not read, a source not active) leaves the target queued
with the formats and properties it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from conftest import ApiClient, make_config
from keystone import Keystone, keystone
from test_keystone_auth import as_token, keystone_config, serving

ONE, TWO = "streamd-region-one", "streamd-region-two"


@pytest.fixture(scope="module")
def ks() -> Keystone:
    return keystone()


@contextlib.contextmanager
def image_service_in_regions(ks: Keystone, urls: dict[str, str]) -> Iterator[None]:
    """An ``image`` service with public and internal endpoints at ``urls`` (region -> URL), removed after."""
    for region in urls:
        status, _, _ = ks.request("POST", "/regions", {"region": {"id": region}}, ks.admin_token())
        assert status in (201, 409), status
    service = ks._ok("POST", "/services", {"service": {"type": "image", "name": f"streamd-gd-{uuid.uuid4().hex[:8]}"}})
    service_id = service["service"]["id"]
    try:
        for region, url in urls.items():
            for interface in ("public", "internal"):
                ks._ok("POST", "/endpoints", {"endpoint": {"service_id": service_id, "interface": interface,
                                                           "url": url, "region_id": region}})
        yield
    finally:
        for endpoint in ks._ok("GET", f"/endpoints?service_id={service_id}")["endpoints"]:
            ks._ok("DELETE", f"/endpoints/{endpoint['id']}")
        ks._ok("DELETE", f"/services/{service_id}")


@contextlib.asynccontextmanager
async def two_regions(tmp_path: Path, ks: Keystone, **default: str) -> AsyncIterator[tuple[ApiClient, ApiClient]]:
    methods = "glance-direct,web-download,copy-image,glance-download"
    one = make_config(tmp_path / "one", DEFAULT={"auth_strategy": "keystone", "enabled_import_methods": methods,
                                                 **default},
                      keystone_authtoken=ks.authtoken_options())
    two = keystone_config(tmp_path / "two", ks)
    async with serving(one) as (api_one, _), serving(two) as (api_two, _):
        with image_service_in_regions(ks, {ONE: api_one.base, TWO: api_two.base}):
            yield api_one, api_two


async def remote_image(api: ApiClient, token: str, data: bytes, **body: Any) -> dict[str, Any]:
    reply = await api.call("POST", "/v2/images", as_=as_token(token),
                           json_body={"disk_format": "raw", "container_format": "bare", **body})
    assert reply.status == 201, reply.body
    image = reply.json
    put = await api.call("PUT", f"/v2/images/{image['id']}/file", data=data,
                         as_=as_token(token, **{"Content-Type": "application/octet-stream"}))
    assert put.status == 204, put.body
    return dict((await api.call("GET", f"/v2/images/{image['id']}", as_=as_token(token))).json)


async def target_image(api: ApiClient, token: str) -> dict[str, Any]:
    reply = await api.call("POST", "/v2/images", as_=as_token(token),
                           json_body={"disk_format": "iso", "container_format": "ovf", "hw_cpu_cores": "1",
                                      "os_distro": "windows", "name": "target"})
    assert reply.status == 201, reply.body
    return dict(reply.json)


async def glance_download(api: ApiClient, token: str, image_id: str, **method: str) -> Any:
    return await api.call("POST", f"/v2/images/{image_id}/import", as_=as_token(token),
                          json_body={"method": {"name": "glance-download", **method}})


async def finished_task(api: ApiClient, token: str, image_id: str) -> dict[str, Any]:
    for _ in range(400):
        tasks = (await api.call("GET", f"/v2/images/{image_id}/tasks", as_=as_token(token))).json["tasks"]
        if tasks and tasks[0]["status"] in ("success", "failure"):
            return dict(tasks[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the import of {image_id} did not finish")


async def test_an_image_comes_over_from_another_region(tmp_path: Path, ks: Keystone) -> None:
    token = ks.token("a-member")
    data = os.urandom(3 << 20) + bytes(1 << 20)
    async with two_regions(tmp_path, ks) as (one, two):
        source = await remote_image(two, token, data, name="source", hw_cpu_cores="5",
                                    **{"trait:STORAGE_DISK_SSD": "required"}, os_distro="rhel", speed="88mph")
        target = await target_image(one, token)
        reply = await glance_download(one, token, target["id"], glance_image_id=source["id"], glance_region=TWO)
        assert reply.status == 202, reply.body
        task = await finished_task(one, token, target["id"])
        assert task["status"] == "success", task
        assert task["input"]["import_req"]["method"] == {
            "name": "glance-download", "glance_image_id": source["id"], "glance_region": TWO,
            "glance_service_interface": "public"}
        assert token not in str(task)  # the caller's token is never recorded
        image = (await one.call("GET", f"/v2/images/{target['id']}", as_=as_token(token))).json
        assert image["status"] == "active"
        assert (image["disk_format"], image["container_format"]) == ("raw", "bare")
        assert (image["hw_cpu_cores"], image["trait:STORAGE_DISK_SSD"], image["os_distro"]) == ("5", "required", "rhel")
        assert "speed" not in image
        assert image["name"] == "target"
        assert image["size"] == len(data)
        assert image["checksum"] == hashlib.md5(data).hexdigest() == source["checksum"]
        assert image["os_hash_value"] == source["os_hash_value"]
        body = await one.call("GET", f"/v2/images/{target['id']}/file", as_=as_token(token))
        assert body.status == 200 and body.body == data


async def test_the_internal_interface_and_a_region_in_other_case(tmp_path: Path, ks: Keystone) -> None:
    token = ks.token("a-member")
    async with two_regions(tmp_path, ks) as (one, two):
        source = await remote_image(two, token, b"x" * 70000)
        target = await target_image(one, token)
        reply = await glance_download(one, token, target["id"], glance_image_id=source["id"],
                                      glance_region=TWO.upper(), glance_service_interface="internal")
        assert reply.status == 202, reply.body
        assert (await finished_task(one, token, target["id"]))["status"] == "success"


async def test_requests_glance_refuses_at_once(tmp_path: Path, ks: Keystone) -> None:
    token = ks.token("a-member")
    async with two_regions(tmp_path, ks) as (one, _):
        target = await target_image(one, token)
        refused = {
            "Remote image id does not look like a UUID: foo": {"glance_image_id": "foo", "glance_region": TWO},
            "'glance_region' needs to be set for glance-download import method": {
                "glance_image_id": str(uuid.uuid4())},
            "'glance_image_id' needs to be set for glance-download import method": {"glance_region": TWO},
        }
        for message, method in refused.items():
            reply = await glance_download(one, token, target["id"], **method)
            assert reply.status == 400, (method, reply.body)
            assert message in reply.body.decode(), reply.body
        # An active image, or one with staged data, is no target (409), as for web-download.
        active = await remote_image(one, token, b"y" * 1000)
        reply = await glance_download(one, token, active["id"], glance_image_id=str(uuid.uuid4()), glance_region=TWO)
        assert reply.status == 409, reply.body
        assert "Image with status active cannot be target for import" in reply.body.decode()
        staged = await target_image(one, token)
        put = await one.call("PUT", f"/v2/images/{staged['id']}/stage", data=b"s" * 1000,
                             as_=as_token(token, **{"Content-Type": "application/octet-stream"}))
        assert put.status == 204, put.body
        reply = await glance_download(one, token, staged["id"], glance_image_id=str(uuid.uuid4()), glance_region=TWO)
        assert reply.status == 409, reply.body
        assert "Image needs to be in 'queued' state to use 'glance-download' method" in reply.body.decode()
        tasks = (await one.call("GET", f"/v2/images/{target['id']}/tasks", as_=as_token(token))).json["tasks"]
        assert tasks == []


async def test_failures_leave_the_target_queued_as_it_was(tmp_path: Path, ks: Keystone) -> None:
    token, other_project = ks.token("a-member"), ks.token("b-member")
    async with two_regions(tmp_path, ks) as (one, two):
        private = await remote_image(two, other_project, b"z" * 5000, name="b's own")
        queued = (await two.call("POST", "/v2/images", as_=as_token(token),
                                 json_body={"disk_format": "qcow2", "container_format": "bare"})).json
        cases = {
            "no endpoint there": ({"glance_image_id": private["id"], "glance_region": "not a region",
                                   "glance_service_interface": "not an interface"},
                                  "not an interface glance endpoint not found for region not a region"),
            "no such image": ({"glance_image_id": str(uuid.uuid4()), "glance_region": TWO}, "HTTP 404"),
            "another project's private image": ({"glance_image_id": private["id"], "glance_region": TWO}, "HTTP 404"),
            "a source not active": ({"glance_image_id": queued["id"], "glance_region": TWO},
                                    "Source image status should be active instead of queued"),
        }
        for what, (method, message) in cases.items():
            target = await target_image(one, token)
            reply = await glance_download(one, token, target["id"], **method)
            assert reply.status == 202, (what, reply.body)
            task = await finished_task(one, token, target["id"])
            assert task["status"] == "failure" and message in task["message"], (what, task)
            image = (await one.call("GET", f"/v2/images/{target['id']}", as_=as_token(token))).json
            assert image["status"] == "queued", what
            assert (image["disk_format"], image["container_format"]) == ("iso", "ovf"), what
            assert (image["hw_cpu_cores"], image["os_distro"]) == ("1", "windows"), what
            assert "os_glance_import_task" not in image or not image["os_glance_import_task"], what


async def test_data_short_of_the_record_fails_and_puts_the_metadata_back(tmp_path: Path, ks: Keystone) -> None:
    """The remote record says one size and the data is another (an image whose stored file was
    truncated behind the service's back): the import fails, and the formats and properties it had
    already copied go back."""
    token = ks.token("a-member")
    async with two_regions(tmp_path, ks) as (one, two):
        source = await remote_image(two, token, b"d" * 100000, hw_cpu_cores="8", hw_vif_model="virtio")
        stored = next((tmp_path / "two" / "data").rglob(source["id"]))
        with open(stored, "r+b") as f:
            f.truncate(1000)
        target = await target_image(one, token)
        reply = await glance_download(one, token, target["id"], glance_image_id=source["id"], glance_region=TWO)
        assert reply.status == 202
        task = await finished_task(one, token, target["id"])
        assert task["status"] == "failure", task
        image = (await one.call("GET", f"/v2/images/{target['id']}", as_=as_token(token))).json
        assert image["status"] == "queued"
        assert (image["disk_format"], image["container_format"], image["hw_cpu_cores"]) == ("iso", "ovf", "1")
        assert "hw_vif_model" not in image
