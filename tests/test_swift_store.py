"""The Swift store against the real Ceph RADOS Gateway that scripts/test.sh starts beside its Ceph cluster
(scripts/ceph-dev.sh with STREAMD_CEPH_RGW=1), through its Swift API with tempauth (the Swift subuser):
the contract the file, rbd and s3 stores pass (round trips of every size class, unknown sizes, Range
reads, delete, failed uploads leaving nothing), Static Large Objects above swift_store_large_object_size,
aborts and crashes leaving no object and no segment, orphaned segments reaped, an upload through the real
daemon, and imports into several stores from one read. What the container holds is checked with a client
of our own (python-swiftclient), on the gateway.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from conftest import MEMBER_A, ApiClient, make_config, start_api, start_daemon, stop_daemon
from test_import_rbd import show, stage, start_import, store_names, wait_task
from test_rbd_store import chunked, http, new_image, payload

OCTET = {"Content-Type": "application/octet-stream"}
MIB = 1 << 20
# The store under test: SLOs from 5 MiB, segments of 2 MiB.
LARGE = 5 * MIB
PART = 2 * MIB
SWIFT_VARS = ("STREAMD_TEST_SWIFT_AUTH_URL", "STREAMD_TEST_SWIFT_USER", "STREAMD_TEST_SWIFT_KEY")


def swift_env() -> dict[str, str]:
    missing = [v for v in SWIFT_VARS if not os.environ.get(v)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run the suite with scripts/test.sh, which starts Ceph with "
                    "its RADOS Gateway (STREAMD_CEPH_RGW=1 scripts/ceph-dev.sh start DIR)")
    return {v: os.environ[v] for v in SWIFT_VARS}


def swift_client() -> Any:
    import swiftclient.client

    env = swift_env()
    return swiftclient.client.Connection(authurl=env["STREAMD_TEST_SWIFT_AUTH_URL"], user=env["STREAMD_TEST_SWIFT_USER"],
                                         key=env["STREAMD_TEST_SWIFT_KEY"], auth_version="1")


def swift_section(container: str, **extra: str) -> dict[str, str]:
    env = swift_env()
    return {"swift_store_auth_version": "1", "swift_store_auth_address": env["STREAMD_TEST_SWIFT_AUTH_URL"],
            "swift_store_user": env["STREAMD_TEST_SWIFT_USER"], "swift_store_key": env["STREAMD_TEST_SWIFT_KEY"],
            "swift_store_container": container, "swift_store_create_container_on_put": "true",
            "swift_store_large_object_size": str(LARGE // MIB),
            "swift_store_large_object_chunk_size": str(PART // MIB), **extra}


def swift_sections(container: str, name: str = "sw", **extra: str) -> dict[str, dict[str, str]]:
    return {"DEFAULT": {"enabled_backends": f"fs:file,{name}:swift", "show_image_direct_url": "true"},
            "glance_store": {"default_backend": name}, name: swift_section(container, **extra)}


def listing(container: str) -> list[str]:
    """Every object of the container (manifests and segments); [] for a container that is not there."""
    import swiftclient.exceptions

    try:
        return sorted(o["name"] for o in swift_client().get_container(container, full_listing=True)[1])
    except swiftclient.exceptions.ClientException as exc:
        if exc.http_status == 404:
            return []
        raise


def segments_of(container: str, image_id: str) -> list[str]:
    return [n for n in listing(container) if n.startswith(f"{image_id}/streamd-segments/")]


def object_bytes(container: str, name: str) -> bytes:
    return swift_client().get_object(container, name)[1]  # type: ignore[no-any-return]


def is_slo(container: str, name: str) -> bool:
    return swift_client().head_object(container, name).get("x-static-large-object", "").lower() == "true"


def auth_host() -> str:
    return swift_env()["STREAMD_TEST_SWIFT_AUTH_URL"].removeprefix("http://")


@pytest.fixture
def container() -> str:
    return f"streamd-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def api(tmp_path: Path, container: str) -> AsyncIterator[ApiClient]:
    server, client, session = await start_api(make_config(tmp_path, None, **swift_sections(container)))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


async def put(api: ApiClient, image_id: str, data: Any, store: str = "sw", headers: dict[str, str] | None = None):
    return await api.call("PUT", f"/v2/images/{image_id}/file", as_=MEMBER_A, data=data,
                          headers={**OCTET, "X-Image-Meta-Store": store, **(headers or {})})


async def own_store(config: Any, name: str = "sw") -> Any:
    from streamd.stores.registry import open_store

    store = open_store(config.store(name), config)
    await store.start()
    return store


# -- the contract --------------------------------------------------------------------------------

@pytest.mark.parametrize("size,segments", [(0, 0), (1, 0), (LARGE - 1, 0), (LARGE, 3), (LARGE + 1, 3),
                                           (3 * PART + 5, 4)])
async def test_round_trip(api: ApiClient, container: str, size: int, segments: int) -> None:
    data = payload(size)
    image = await api.create()
    reply = await put(api, image["id"], data)
    assert reply.status == 204, reply.body
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["status"] == "active" and shown["size"] == size and shown["stores"] == "sw"
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    # glance_store's location, without the credentials
    assert shown["direct_url"] == f"swift+http://{auth_host()}/{container}/{image['id']}"
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.status == 200 and got.body == data
    # On the gateway: one object named by the image id, a plain one below the threshold and an SLO of
    # segments of swift_store_large_object_chunk_size from it.
    assert object_bytes(container, image["id"]) == data
    assert len(segments_of(container, image["id"])) == segments
    assert is_slo(container, image["id"]) == (segments > 0)
    assert set(listing(container)) - set(segments_of(container, image["id"])) == {image["id"]}


async def test_unknown_size_is_a_large_object(api: ApiClient, container: str) -> None:
    """As glance_store: data of unknown size goes in segments, whatever its size."""
    small, large = payload(LARGE - 3, 1), payload(2 * PART + 12345, 2)
    first, second = await api.create(), await api.create()
    assert (await put(api, first["id"], chunked(small, MIB))).status == 204
    assert (await put(api, second["id"], chunked(large, MIB + 7))).status == 204
    assert len(segments_of(container, first["id"])) == 3 and object_bytes(container, first["id"]) == small
    assert len(segments_of(container, second["id"])) == 3 and object_bytes(container, second["id"]) == large
    assert is_slo(container, first["id"]) and is_slo(container, second["id"])
    got = await api.call("GET", f"/v2/images/{second['id']}/file", as_=MEMBER_A)
    assert got.body == large
    empty = await api.create()
    assert (await put(api, empty["id"], chunked(b"", MIB))).status == 204
    assert object_bytes(container, empty["id"]) == b"" and segments_of(container, empty["id"]) == []


async def test_range_reads(api: ApiClient) -> None:
    data = payload(LARGE + 3 * MIB)
    image = await api.create()
    assert (await put(api, image["id"], data)).status == 204
    for header, (first, last) in [("bytes=0-99", (0, 99)), (f"bytes={PART - 10}-{PART + 9}", (PART - 10, PART + 9)),
                                  ("bytes=-100", (len(data) - 100, len(data) - 1)),
                                  (f"bytes={MIB}-", (MIB, len(data) - 1))]:
        reply = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A, headers={"Range": header})
        assert reply.status == 206 and reply.body == data[first:last + 1], header
    beyond = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A,
                            headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416


async def test_reader_reads_in_order_and_out_of_order(api: ApiClient) -> None:
    data = payload(3 * PART + 77, 5)
    image = await api.create()
    assert (await put(api, image["id"], data)).status == 204
    store = await own_store(api.config)
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    reader = await store.reader(shown["direct_url"])
    try:
        assert reader.size == len(data)
        pieces, offset = [], 0
        while offset < len(data):
            piece = reader.read(offset, 700 * 1024 + 3)
            assert piece
            pieces.append(piece)
            offset += len(piece)
        assert b"".join(pieces) == data
        for offset, length in [(len(data) - 5, 100), (3, 10), (2 * PART - 1, 2), (len(data), 10), (0, 0)]:
            assert reader.read(offset, length) == data[offset:offset + length]
    finally:
        reader.close()
        await store.stop()


async def test_delete_removes_manifest_and_segments_and_a_missing_one_is_no_error(api: ApiClient,
                                                                                  container: str) -> None:
    large, small = await api.create(), await api.create()
    assert (await put(api, large["id"], payload(LARGE + 1))).status == 204
    assert (await put(api, small["id"], payload(MIB))).status == 204
    assert len(listing(container)) == 2 + 3
    for image in (large, small):
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    assert listing(container) == []
    store = await own_store(api.config)
    try:
        await store.delete(store.url_of(large["id"]))  # gone already
        await store.delete(store.url_of("never-there"))
    finally:
        await store.stop()


async def test_glance_written_locations_are_read_and_deleted(api: ApiClient, container: str) -> None:
    """What glance_store writes: locations with user:key@ in front of the auth address, and Dynamic Large
    Objects (segments <image>-00001... and an X-Object-Manifest); swift+config:// locations too."""
    client = swift_client()
    image_id = str(uuid.uuid4())
    client.put_container(container)
    parts = [payload(1000, 1), payload(777, 2)]
    for number, part in enumerate(parts, 1):
        client.put_object(container, f"{image_id}-{number:05d}", part)
    client.put_object(container, image_id, b"", headers={"X-Object-Manifest": f"{container}/{image_id}-"})
    env = swift_env()
    from urllib.parse import quote

    with_creds = (f"swift+http://{quote(env['STREAMD_TEST_SWIFT_USER'])}:{quote(env['STREAMD_TEST_SWIFT_KEY'])}@"
                  f"{auth_host()}/{container}/{image_id}")
    store = await own_store(api.config)
    try:
        assert store.owns(with_creds) and store.owns(f"swift+config://ref1/{container}/{image_id}")
        assert not store.owns(f"swift+config://ref2/{container}/{image_id}")
        assert not store.owns(f"swift+http://elsewhere:8080/auth/1.0/{container}/{image_id}")
        assert not store.owns(f"s3://{auth_host()}/{container}/{image_id}")
        for url in (with_creds, f"swift+config://ref1/{container}/{image_id}"):
            reader = await store.reader(url)
            try:
                assert reader.size == 1777 and reader.read(0, 2000) == b"".join(parts)
                assert reader.read(990, 20) == b"".join(parts)[990:1010]
            finally:
                reader.close()
        # The orphan reaper leaves Glance's segments alone (they are no streamd upload's).
        assert await store._run(store.remove_orphaned_segments, 0.0) == []
        await store.delete(with_creds)
        assert listing(container) == []
    finally:
        await store.stop()


async def test_failed_segmented_upload_leaves_no_object_and_no_segment(api: ApiClient, container: str) -> None:
    image = await api.create()
    # 6 MiB sent, 7 MiB announced: three segments are written before the size check fails the upload.
    reply = await put(api, image["id"], chunked(payload(3 * PART), MIB),
                      headers={"x-openstack-image-size": str(3 * PART + MIB)})
    assert reply.status == 400
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"
    assert listing(container) == []
    data = payload(3 * PART + MIB)
    assert (await put(api, image["id"], data)).status == 204
    assert object_bytes(container, image["id"]) == data and len(segments_of(container, image["id"])) == 4
    # A small one cut short leaves nothing either.
    small = await api.create()
    reply = await put(api, small["id"], chunked(payload(MIB), MIB), headers={"x-openstack-image-size": str(2 * MIB)})
    assert reply.status == 400
    assert small["id"] not in listing(container)


async def test_writer_abort_removes_the_segments(tmp_path: Path, container: str) -> None:
    config = make_config(tmp_path, None, **swift_sections(container))
    store = await own_store(config)
    journal = config.data_dir / "swift" / "sw"
    try:
        writer = await store.writer("abort-me", None)
        for start in range(0, 3 * PART, MIB):
            writer.write(payload(MIB, start))
        assert len(segments_of(container, "abort-me")) >= 2 and "abort-me" not in listing(container)
        assert len(list(journal.glob("*.upload"))) == 1
        await store.reap()  # the reaper leaves a live upload alone, however old
        assert await store._run(store.remove_orphaned_segments, 0.0) == []
        assert len(segments_of(container, "abort-me")) >= 2
        await writer.abort()
        await writer.abort()  # twice is fine
        assert listing(container) == [] and list(journal.glob("*.upload")) == []
        # A small one whose data is all there: its PUT cannot complete before the commit, and the
        # abort leaves no object.
        writer = await store.writer("small", 10)
        writer.write(b"0123456789")
        await writer.abort()
        assert listing(container) == []
        # Committed, then aborted (another store failed): removed again.
        writer = await store.writer("both", LARGE + 5)
        writer.write(payload(LARGE + 5))
        await writer.commit()
        assert len(listing(container)) == 1 + 3
        await writer.abort()
        assert listing(container) == []
    finally:
        await store.stop()


async def test_writes_stream_with_bounded_memory(tmp_path: Path, container: str) -> None:
    """Neither a single PUT nor the segments are buffered whole: 24 MiB go through (one object of known
    size, then an SLO of unknown size) with at most a few chunks held at once."""
    import asyncio
    import tracemalloc

    store = await own_store(make_config(tmp_path, None, **swift_sections(
        container, swift_store_large_object_size="64", swift_store_large_object_chunk_size="16")))
    chunk = payload(MIB, 3)
    try:
        for name, size in (("single", 24 * MIB), ("segmented", None)):
            writer = await store.writer(name, size)
            tracemalloc.start()
            try:
                def feed() -> None:
                    for _ in range(24):
                        writer.write(bytes(chunk))  # a fresh chunk each time, as the pipeline hands them

                await asyncio.get_running_loop().run_in_executor(None, feed)
                await writer.commit()
                _current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 8 * MIB, (name, peak)
            assert object_bytes(container, name) == chunk * 24
        assert len(segments_of(container, "segmented")) == 2 and segments_of(container, "single") == []
    finally:
        await store.stop()


async def test_orphaned_segments_are_removed_once_stale(tmp_path: Path, container: str) -> None:
    """Segments no manifest carries the token of (another node's crash, or one that died with its disk)
    go once their newest is stale; those of a manifest stay."""
    config = make_config(tmp_path, None, **swift_sections(container))
    store = await own_store(config)
    try:
        kept = await store.writer("kept", LARGE)
        kept.write(payload(LARGE))
        await kept.commit()
        client = swift_client()
        for number in (1, 2):
            client.put_object(container, f"foreign/streamd-segments/0123456789abcdef/{number:05d}", b"x" * 100)
        # and a second try of "kept" that died before its manifest: not the manifest's token
        client.put_object(container, "kept/streamd-segments/fedcba9876543210/00001", b"y" * 100)
        assert await store._run(store.remove_orphaned_segments, 3600.0) == []  # fresh: a writer may be alive
        time.sleep(1.1)
        assert sorted(await store._run(store.remove_orphaned_segments, 1.0)) == ["foreign", "kept"]
        assert sorted(listing(container)) == ["kept", *segments_of(container, "kept")]
        assert len(segments_of(container, "kept")) == 3
        assert object_bytes(container, "kept") == payload(LARGE)
    finally:
        await store.stop()


async def test_empty_images_and_health_check(tmp_path: Path, container: str) -> None:
    store = await own_store(make_config(tmp_path, None, **swift_sections(container)))
    try:
        for size in (0, None):
            writer = await store.writer(f"empty-{size}", size)
            stored = await writer.commit()
            assert stored.size == 0 and object_bytes(container, f"empty-{size}") == b""
        health = await store.check()
        assert container in health.details and listing(container) == ["empty-0", "empty-None"]  # the probe is gone
    finally:
        await store.stop()


async def test_multiple_containers_seed(tmp_path: Path, container: str) -> None:
    """glance_store's rule: <container>_<first N characters of the id, dashes not counted>."""
    image_id = "fdae39a1-bac5-4238-aba4-69bcc726e848"
    store = await own_store(make_config(tmp_path, None, **swift_sections(
        container, swift_store_multiple_containers_seed="10")))
    try:
        assert store.container_of(image_id) == f"{container}_fdae39a1-ba"
        writer = await store.writer(image_id, 3)
        writer.write(b"abc")
        stored = await writer.commit()
        assert stored.url == f"swift+http://{auth_host()}/{container}_fdae39a1-ba/{image_id}"
        assert object_bytes(f"{container}_fdae39a1-ba", image_id) == b"abc"
        await store.delete(stored.url)
        assert listing(f"{container}_fdae39a1-ba") == []
    finally:
        await store.stop()


async def test_health_check_of_an_unreachable_gateway(tmp_path: Path, container: str) -> None:
    from streamd.errors import StoreUnavailable

    store = await own_store(make_config(tmp_path, None, **swift_sections(
        container, swift_store_auth_address="http://127.0.0.1:1/auth/1.0")))
    try:
        with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
            await store.check()
    finally:
        await store.stop()


async def test_wrong_key_is_a_store_failure(tmp_path: Path, container: str) -> None:
    from streamd.errors import StoreFailure, StoreUnavailable

    store = await own_store(make_config(tmp_path, None, **swift_sections(container, swift_store_key="wrong")))
    try:
        with pytest.raises(StoreFailure) as caught:
            await store.writer("x", 1)
        assert not isinstance(caught.value, StoreUnavailable)
        assert "401" in caught.value.message or "Unauthorized" in caught.value.message
    finally:
        await store.stop()


async def test_missing_container_without_create_on_put_fails_and_stores_detail(tmp_path: Path,
                                                                                container: str) -> None:
    server, api, session = await start_api(make_config(tmp_path, None, **swift_sections(
        container, swift_store_create_container_on_put="false")))
    try:
        image = await api.create()
        reply = await put(api, image["id"], payload(100))
        assert reply.status >= 500, reply.body
        assert "does not exist" in reply.body.decode() and container in reply.body.decode()
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"
        swift_client().put_container(container)
        assert (await put(api, image["id"], payload(100))).status == 204
        detail = (await api.call("GET", "/v2/info/stores/detail", as_={**MEMBER_A, "X-Roles": "admin"})).json
        sw = next(s for s in detail["stores"] if s["id"] == "sw")
        assert sw["type"] == "swift" and sw["properties"] == {  # Glance 33's keys
            "container": container, "large_object_size": LARGE, "large_object_chunk_size": PART}
    finally:
        await session.close()
        await server.close()


async def test_import_into_file_and_swift_from_one_read(api: ApiClient, container: str) -> None:
    data = payload(2 * PART + 3, 9)
    image = await api.create(name="imported")
    await stage(api, image["id"], data)
    await start_import(api, image["id"], "glance-direct", stores=["fs", "sw"])
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task
    shown = await show(api, image["id"])
    assert shown["status"] == "active" and store_names(shown) == {"fs", "sw"}
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    # the staged size is known: below LARGE, one object
    assert object_bytes(container, image["id"]) == data and segments_of(container, image["id"]) == []
    assert (api.config.data_dir / "images" / "fs" / image["id"]).read_bytes() == data


async def test_import_into_file_rbd_s3_and_swift_from_one_read(tmp_path: Path, container: str) -> None:
    from test_import_rbd import rbd_export
    from test_rbd_store import ceph_env, rbd_sections
    from test_s3_store import etag_parts, new_bucket_name, open_uploads, s3_section
    from test_s3_store import object_bytes as s3_bytes

    bucket = new_bucket_name()
    sections = swift_sections(container)
    sections["DEFAULT"]["enabled_backends"] = "fs:file,ceph:rbd,s3:s3,sw:swift"
    sections["ceph"] = rbd_sections()["ceph"]
    sections["s3"] = s3_section(bucket)
    server, api, session = await start_api(make_config(tmp_path, None, **sections))
    try:
        data = payload(LARGE + 4 * MIB + 1, 10)  # multipart in s3, an SLO in swift
        image = await api.create(name="everywhere")
        await stage(api, image["id"], data)
        await start_import(api, image["id"], "glance-direct", stores=["fs", "ceph", "s3", "sw"])
        task = await wait_task(api, image["id"])
        assert task["status"] == "success", task
        shown = await show(api, image["id"])
        assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph", "s3", "sw"}
        md5 = hashlib.md5(data).hexdigest()
        assert shown["checksum"] == md5
        stored = {
            "sw": object_bytes(container, image["id"]),
            "s3": s3_bytes(bucket, image["id"]),
            "ceph": rbd_export(ceph_env()["CEPH_POOL"], image["id"]),
            "fs": (api.config.data_dir / "images" / "fs" / image["id"]).read_bytes(),
        }
        assert {name: hashlib.md5(got).hexdigest() for name, got in stored.items()} == dict.fromkeys(stored, md5)
        assert len(segments_of(container, image["id"])) == 5 and etag_parts(bucket, image["id"]) == 2
        assert open_uploads(bucket) == []
        got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
        assert got.body == data
    finally:
        await session.close()
        await server.close()


# -- with the daemon as a real process ------------------------------------------------------------

def daemon_config(container: str, **extra: str) -> str:
    section = "".join(f"{k} = {v}\n" for k, v in swift_section(container, **extra).items())
    return f"enabled_backends = fs:file,sw:swift\n[glance_store]\ndefault_backend = sw\n[sw]\n{section}"


def test_upload_and_download_through_the_daemon(tmp_path: Path, container: str) -> None:
    daemon = start_daemon(tmp_path, daemon_config(container))
    try:
        for size in (MIB + 3, LARGE + PART + 1):
            image_id = new_image(daemon)
            data = payload(size, size % 7)
            status, body = http(daemon, "PUT", f"/v2/images/{image_id}/file", data, OCTET)
            assert status == 204, body
            request = urllib.request.Request(f"{daemon.url}/v2/images/{image_id}/file", headers=MEMBER_A)
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.read() == data
            status, shown = http(daemon, "GET", f"/v2/images/{image_id}")
            assert shown["stores"] == "sw" and shown["checksum"] == hashlib.md5(data).hexdigest()
            assert object_bytes(container, image_id) == data
    finally:
        stop_daemon(daemon)


def test_kill_9_mid_upload_removes_the_segments_after_restart(tmp_path: Path, container: str) -> None:
    daemon = start_daemon(tmp_path, daemon_config(container))
    image_id = new_image(daemon)
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Project-Id: {MEMBER_A['X-Project-Id']}\r\n"
                  "X-Roles: member\r\nContent-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\r\n").encode())
    sock.sendall(payload(3 * PART))
    deadline = time.monotonic() + 20
    while len(segments_of(container, image_id)) < 2:
        assert time.monotonic() < deadline, "the upload never reached the gateway"
        time.sleep(0.1)
    daemon.process.kill()
    daemon.process.wait()
    sock.close()
    assert image_id not in listing(container) and segments_of(container, image_id)  # the segments are there...
    restarted = start_daemon(tmp_path, daemon_config(container))
    try:
        # ...and removed by the start-up, from the node's journal.
        assert listing(container) == []
        status, body = http(restarted, "GET", f"/v2/images/{image_id}")
        assert body["status"] == "queued"
        status, _ = http(restarted, "PUT", f"/v2/images/{image_id}/file", payload(MIB), OCTET)
        assert status == 204
        assert listing(container) == [image_id]
    finally:
        stop_daemon(restarted)


def test_gateway_unreachable_is_503(tmp_path: Path, container: str) -> None:
    daemon = start_daemon(tmp_path, daemon_config(container, swift_store_auth_address="http://127.0.0.1:1/auth/1.0"))
    try:
        image_id = new_image(daemon)
        status, body = http(daemon, "PUT", f"/v2/images/{image_id}/file", payload(MIB), OCTET)
        assert status == 503, body
        assert "127.0.0.1:1" in body["message"]
        assert http(daemon, "GET", f"/v2/images/{image_id}")[1]["status"] == "queued"
    finally:
        stop_daemon(daemon)


# -- configuration ----------------------------------------------------------------------------------

def test_config_requires_the_swift_options_and_refuses_multi_tenant(tmp_path: Path) -> None:
    from streamd.config import load_config
    from streamd.errors import ConfigError

    base = {"DEFAULT": {"enabled_backends": "fs:file,sw:swift", "data_dir": str(tmp_path)}}
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides={**base, "sw": {"swift_store_auth_address": "http://127.0.0.1:1/v3",
                                                    "swift_store_user": "no-project", "swift_store_multi_tenant": "true",
                                                    "swift_store_auth_version": "2"}})
    text = json.dumps(caught.value.problems)
    for option in ("swift_store_key", "swift_store_multi_tenant", "swift_store_auth_version"):
        assert option in text, text
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides={**base, "sw": {"swift_store_auth_address": "http://127.0.0.1:1/v3",
                                                    "swift_store_user": "no-project", "swift_store_key": "k"}})
    assert "PROJECT:USER" in json.dumps(caught.value.problems)
    # Glance's options streamd does not use are accepted, with a warning that says why.
    config = load_config(None, overrides={**base, "sw": {
        "swift_store_auth_address": "http://127.0.0.1:1/v3", "swift_store_user": "p:u", "swift_store_key": "k",
        "swift_buffer_on_upload": "true", "swift_store_config_file": "/etc/glance/swift.conf"}})
    assert config.store("sw").type == "swift"
    assert {i.option for i in config.ignored} >= {"swift_buffer_on_upload", "swift_store_config_file"}


# -- Keystone v3 ------------------------------------------------------------------------------------

@contextlib.contextmanager
def keystone_gateway(directory: Path, keystone_url: str) -> Iterator[str]:
    """A second RADOS Gateway on the test cluster (the same zone and pools) that validates Swift tokens
    at our Keystone, as the glance service user; its base URL. Stopped (and its key removed) after."""
    from keystone import SERVICE_PASSWORD, SERVICE_PROJECT, SERVICE_USER
    from test_rbd_store import ceph_env

    conf = ceph_env()["CEPH_CONF"]
    name = f"client.rgw.ks{uuid.uuid4().hex[:6]}"
    directory.mkdir(parents=True, exist_ok=True)
    keyring = directory / "keyring"
    subprocess.run(["ceph", "--conf", conf, "auth", "get-or-create", name, "mon", "allow rw", "osd", "allow rwx",
                    "-o", str(keyring)], check=True, capture_output=True, timeout=60)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    own_conf = directory / "ceph.conf"
    own_conf.write_text(Path(conf).read_text() + f"""
[{name}]
keyring = {keyring}
rgw data = {directory / "data"}
rgw frontends = beast endpoint=127.0.0.1:{port}
log file = {directory / "rgw.log"}
pid file = {directory / "rgw.pid"}
admin socket =
rgw enable usage log = false
rgw keystone url = {keystone_url.removesuffix("/v3")}
rgw keystone api version = 3
rgw keystone admin user = {SERVICE_USER}
rgw keystone admin password = {SERVICE_PASSWORD}
rgw keystone admin project = {SERVICE_PROJECT}
rgw keystone admin domain = Default
rgw keystone accepted roles = member,admin
rgw keystone implicit tenants = false
rgw keystone verify ssl = false
rgw swift account in url = true
rgw s3 auth use keystone = false
""")
    (directory / "data").mkdir(exist_ok=True)
    process = subprocess.Popen(["radosgw", "-f", "-c", str(own_conf), "-n", name], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                assert process.poll() is None, f"radosgw exited: see {directory / 'rgw.log'}"
                assert time.monotonic() < deadline, "radosgw did not answer"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        subprocess.run(["ceph", "--conf", conf, "auth", "del", name], capture_output=True, timeout=60)


async def test_keystone_v3_auth(tmp_path: Path, container: str) -> None:
    """swift_store_auth_version = 3: a project-scoped Keystone token (PROJECT:USER, its password),
    taken by a RADOS Gateway that validates it at Keystone; the storage URL from swift_store_endpoint
    (the test Keystone has no object-store endpoint in its catalogue)."""
    from keystone import keystone

    ks = keystone()
    member = ks.users["a-member"]
    with keystone_gateway(tmp_path / "rgw", ks.url) as gateway:
        section = swift_section(
            container, swift_store_auth_version="3", swift_store_auth_address=ks.url,
            swift_store_user=f"{member.project_name}:{member.name}", swift_store_key=member.password,
            swift_store_endpoint=f"{gateway}/swift/v1/AUTH_{member.project_id}")
        config = make_config(tmp_path, None, **{**swift_sections(container), "sw": section})
        store = await own_store(config)
        try:
            data = payload(LARGE + PART + 3, 4)
            writer = await store.writer("v3-image", len(data))
            for start in range(0, len(data), MIB):
                writer.write(data[start:start + MIB])
            stored = await writer.commit()
            assert stored.url == f"swift+http://{ks.url.removeprefix('http://')}/{container}/v3-image"
            assert store._auth is not None and store._auth[0].endswith(member.project_id)
            assert ks.is_valid(store._auth[1])  # a Keystone token, not tempauth's
            reader = await store.reader(stored.url)
            try:
                assert reader.read(0, len(data)) == data and reader.read(PART - 1, 2) == data[PART - 1:PART + 1]
            finally:
                reader.close()
            await store.delete(stored.url)
            await store.delete(stored.url)
            assert (await store.check()).details
            listed = await store._run(store._listing, container)
            assert listed == []
        finally:
            await store.stop()


async def test_keystone_v3_refusals(tmp_path: Path, container: str) -> None:
    """A wrong password is the operator's to fix (a store failure, not 503); Keystone down is 503's."""
    from keystone import keystone

    from streamd.errors import StoreFailure, StoreUnavailable

    ks = keystone()
    member = ks.users["a-member"]
    for address, key, error in [(ks.url, "wrong", StoreFailure), ("http://127.0.0.1:1/v3", member.password,
                                                                    StoreUnavailable)]:
        section = swift_section(container, swift_store_auth_version="3", swift_store_auth_address=address,
                                swift_store_user=f"{member.project_name}:{member.name}", swift_store_key=key,
                                swift_store_endpoint="http://127.0.0.1:1/swift/v1")
        store = await own_store(make_config(tmp_path, None, **{**swift_sections(container), "sw": section}))
        try:
            with pytest.raises(StoreFailure) as caught:
                await store.writer("x", 1)
            assert type(caught.value) is error, caught.value
            if error is StoreUnavailable:
                assert "127.0.0.1:1" in caught.value.message
        finally:
            await store.stop()
