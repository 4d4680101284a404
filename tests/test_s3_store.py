"""The S3 store against the real Ceph RADOS Gateway that scripts/test.sh starts beside its Ceph cluster
(scripts/ceph-dev.sh with STREAMD_CEPH_RGW=1): the contract the file and rbd stores pass (round trips
of every size class, unknown sizes, Range reads, delete, failed uploads leaving nothing), multipart
uploads, aborts and crashes leaving no object and no open multipart upload, and imports into the file
and S3 stores from one read. What the bucket holds is checked with a client of our own, on the gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from conftest import MEMBER_A, ApiClient, make_config, start_api, start_daemon, stop_daemon
from test_import_rbd import show, stage, start_import, store_names, wait_task
from test_rbd_store import chunked, http, new_image, payload

OCTET = {"Content-Type": "application/octet-stream"}
MIB = 1 << 20
# The store under test: multipart from 5 MiB (the least glance_store's options allow), parts of 5 MiB.
LARGE = 5 * MIB
PART = 5 * MIB
S3_VARS = ("STREAMD_TEST_S3_ENDPOINT", "STREAMD_TEST_S3_ACCESS_KEY", "STREAMD_TEST_S3_SECRET_KEY")


def s3_env() -> dict[str, str]:
    missing = [v for v in S3_VARS if not os.environ.get(v)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run the suite with scripts/test.sh, which starts Ceph with "
                    "its RADOS Gateway (STREAMD_CEPH_RGW=1 scripts/ceph-dev.sh start DIR)")
    return {v: os.environ[v] for v in S3_VARS}


def s3_client() -> Any:
    import botocore.session

    env = s3_env()
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=env["STREAMD_TEST_S3_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=env["STREAMD_TEST_S3_ACCESS_KEY"], aws_secret_access_key=env["STREAMD_TEST_S3_SECRET_KEY"])


def new_bucket_name() -> str:
    return f"streamd-{uuid.uuid4().hex[:16]}"


def s3_section(bucket: str, **extra: str) -> dict[str, str]:
    env = s3_env()
    return {"s3_store_host": env["STREAMD_TEST_S3_ENDPOINT"], "s3_store_access_key": env["STREAMD_TEST_S3_ACCESS_KEY"],
            "s3_store_secret_key": env["STREAMD_TEST_S3_SECRET_KEY"], "s3_store_bucket": bucket,
            "s3_store_create_bucket_on_put": "true", "s3_store_large_object_size": str(LARGE // MIB),
            "s3_store_large_object_chunk_size": str(PART // MIB), "s3_store_bucket_url_format": "path", **extra}


def s3_sections(bucket: str, **extra: str) -> dict[str, dict[str, str]]:
    return {"DEFAULT": {"enabled_backends": "fs:file,s3:s3", "show_image_direct_url": "true"},
            "glance_store": {"default_backend": "s3"}, "s3": s3_section(bucket, **extra)}


def objects(bucket: str) -> list[str]:
    reply = s3_client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in reply.get("Contents", []))


def open_uploads(bucket: str) -> list[str]:
    """The keys of the bucket's multipart uploads not completed nor aborted."""
    return sorted(u["Key"] for u in s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def object_bytes(bucket: str, key: str) -> bytes:
    body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    with body:
        return body.read()  # type: ignore[no-any-return]


def etag_parts(bucket: str, key: str) -> int:
    """How many parts the object was uploaded in (a multipart ETag ends in -N; 0 for a single PUT)."""
    etag = s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 0


@pytest.fixture
def bucket() -> str:
    return new_bucket_name()


@pytest.fixture
async def api(tmp_path: Path, bucket: str) -> AsyncIterator[ApiClient]:
    server, client, session = await start_api(make_config(tmp_path, None, **s3_sections(bucket)))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


async def put(api: ApiClient, image_id: str, data: Any, store: str = "s3", headers: dict[str, str] | None = None):
    return await api.call("PUT", f"/v2/images/{image_id}/file", as_=MEMBER_A, data=data,
                          headers={**OCTET, "X-Image-Meta-Store": store, **(headers or {})})


# -- the contract --------------------------------------------------------------------------------

@pytest.mark.parametrize("size,parts", [(0, 0), (1, 0), (LARGE - 1, 0), (LARGE, 1), (LARGE + 1, 2),
                                        (2 * PART + 5, 3)])
async def test_round_trip(api: ApiClient, bucket: str, size: int, parts: int) -> None:
    data = payload(size)
    image = await api.create()
    reply = await put(api, image["id"], data)
    assert reply.status == 204, reply.body
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["status"] == "active" and shown["size"] == size and shown["stores"] == "s3"
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    # glance_store's location, without the credentials
    host = s3_env()["STREAMD_TEST_S3_ENDPOINT"].removeprefix("http://")
    assert shown["direct_url"] == f"s3://{host}/{bucket}/{image['id']}"
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.status == 200 and got.body == data
    # On the gateway: one object named by the image id, uploaded in one PUT below the threshold and in
    # parts of s3_store_large_object_chunk_size from it; no upload left open.
    assert objects(bucket) == [image["id"]]
    assert object_bytes(bucket, image["id"]) == data
    assert etag_parts(bucket, image["id"]) == parts
    assert open_uploads(bucket) == []


async def test_unknown_size_turns_multipart_past_the_threshold(api: ApiClient, bucket: str) -> None:
    small, large = payload(LARGE - 3, 1), payload(2 * PART + 12345, 2)
    first, second = await api.create(), await api.create()
    assert (await put(api, first["id"], chunked(small, MIB))).status == 204
    assert (await put(api, second["id"], chunked(large, MIB + 7))).status == 204
    assert etag_parts(bucket, first["id"]) == 0 and object_bytes(bucket, first["id"]) == small
    assert etag_parts(bucket, second["id"]) == 3 and object_bytes(bucket, second["id"]) == large
    got = await api.call("GET", f"/v2/images/{second['id']}/file", as_=MEMBER_A)
    assert got.body == large
    assert open_uploads(bucket) == []


async def test_range_reads(api: ApiClient) -> None:
    data = payload(PART + 3 * MIB)
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
    """The store's reader itself: ranged GETs whose windows grow in order, and jumps anywhere."""
    data = payload(3 * PART + 77, 5)
    image = await api.create()
    assert (await put(api, image["id"], data)).status == 204
    from streamd.stores.registry import open_store

    store = open_store(api.config.store("s3"), api.config)
    await store.start()
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


async def test_delete_removes_the_object_and_a_missing_one_is_no_error(api: ApiClient, bucket: str) -> None:
    image = await api.create()
    assert (await put(api, image["id"], payload(MIB))).status == 204
    assert objects(bucket) == [image["id"]]
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    assert objects(bucket) == []
    from streamd.stores.registry import open_store

    store = open_store(api.config.store("s3"), api.config)
    await store.start()
    try:
        await store.delete(store.url_of(image["id"]))  # gone already
        await store.delete(store.url_of("never-there"))
    finally:
        await store.stop()


async def test_failed_multipart_upload_leaves_no_object_and_no_open_upload(api: ApiClient, bucket: str) -> None:
    image = await api.create()
    # 12 MiB sent, 13 MiB announced: two parts are uploaded before the size check fails the upload.
    reply = await put(api, image["id"], chunked(payload(2 * PART + 2 * MIB), MIB),
                      headers={"x-openstack-image-size": str(2 * PART + 3 * MIB)})
    assert reply.status == 400
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"
    assert objects(bucket) == [] and open_uploads(bucket) == []
    # and the image can be uploaded again
    data = payload(2 * PART + 3 * MIB)
    assert (await put(api, image["id"], data)).status == 204
    assert object_bytes(bucket, image["id"]) == data and open_uploads(bucket) == []


async def test_writer_abort_aborts_the_multipart_upload(tmp_path: Path, bucket: str) -> None:
    from streamd.stores.registry import open_store

    config = make_config(tmp_path, None, **s3_sections(bucket))
    store = open_store(config.store("s3"), config)
    await store.start()
    try:
        writer = await store.writer("abort-me", None)
        for start in range(0, 3 * PART, MIB):
            writer.write(payload(MIB, start))
        assert open_uploads(bucket) == ["abort-me"]
        journal = config.data_dir / "s3" / "s3"
        assert len(list(journal.glob("*.upload"))) == 1
        await store.reap()  # the reaper leaves a live upload alone
        assert open_uploads(bucket) == ["abort-me"]
        await writer.abort()
        await writer.abort()  # twice is fine
        assert open_uploads(bucket) == [] and objects(bucket) == []
        assert list(journal.glob("*.upload")) == []
        # A small one never reaches the gateway before its commit, and aborting it leaves nothing either.
        writer = await store.writer("small", 10)
        writer.write(b"0123456789")
        await writer.abort()
        assert objects(bucket) == [] and open_uploads(bucket) == []
    finally:
        await store.stop()


async def test_a_crash_while_the_upload_is_created_is_cleaned_up_at_the_next_start(tmp_path: Path,
                                                                                   bucket: str) -> None:
    """The journal names the key before the gateway is asked for the upload: a crash between its
    reply and the upload id's entry leaves an upload that the next start aborts all the same. The
    crash is the one fake here (no kill lands in that window on purpose): the journal directory is
    copied as it stands the instant the gateway has replied, and a new node starts on the copy."""
    import shutil

    from streamd.stores.registry import open_store

    config = make_config(tmp_path / "node", None, **s3_sections(bucket))
    journal = config.data_dir / "s3" / "s3"
    at_the_crash = tmp_path / "journal-at-the-crash"
    store = open_store(config.store("s3"), config)
    await store.start()
    try:
        real_create = store.client.create_multipart_upload

        def create_and_crash(**kwargs: Any) -> Any:
            reply = real_create(**kwargs)
            shutil.copytree(journal, at_the_crash)
            return reply

        store.client.create_multipart_upload = create_and_crash
        writer = await store.writer("crashed", None)
        for start in range(0, 2 * PART, MIB):
            writer.write(payload(MIB, start))
        assert open_uploads(bucket) == ["crashed"]
        foreign = s3_client().create_multipart_upload(Bucket=bucket, Key="another")  # not this node's
    finally:
        await store.stop()
    assert [json.loads(p.read_text())["upload_id"] for p in at_the_crash.glob("*.upload")] == [""]

    restarted_config = make_config(tmp_path / "restarted", None, **s3_sections(bucket))
    shutil.copytree(at_the_crash, restarted_config.data_dir / "s3" / "s3")
    restarted = open_store(restarted_config.store("s3"), restarted_config)
    await restarted.start()
    try:
        assert open_uploads(bucket) == ["another"]
        assert list((restarted_config.data_dir / "s3" / "s3").glob("*.upload")) == []
    finally:
        s3_client().abort_multipart_upload(Bucket=bucket, Key="another", UploadId=foreign["UploadId"])
        await restarted.stop()


async def test_empty_image_with_everything_multipart(tmp_path: Path, bucket: str) -> None:
    """s3_store_large_object_size = 0: every image is a multipart upload, and an empty one (which S3
    cannot complete with no part) becomes an empty object."""
    from streamd.stores.registry import open_store

    config = make_config(tmp_path, None, **s3_sections(bucket, s3_store_large_object_size="0"))
    store = open_store(config.store("s3"), config)
    await store.start()
    try:
        writer = await store.writer("empty", 0)
        stored = await writer.commit()
        assert stored.size == 0 and objects(bucket) == ["empty"] and object_bytes(bucket, "empty") == b""
        writer = await store.writer("tiny", 3)
        writer.write(b"abc")
        await writer.commit()
        assert object_bytes(bucket, "tiny") == b"abc" and etag_parts(bucket, "tiny") == 1
        assert open_uploads(bucket) == [] and list((config.data_dir / "s3" / "s3").glob("*.upload")) == []
        health = await store.check()
        assert bucket in health.details and objects(bucket) == ["empty", "tiny"]  # the probe is gone
    finally:
        await store.stop()


async def test_health_check_of_an_unreachable_gateway(tmp_path: Path, bucket: str) -> None:
    from streamd.errors import StoreUnavailable
    from streamd.stores.registry import open_store

    config = make_config(tmp_path, None, **s3_sections(bucket, s3_store_host="127.0.0.1:1"))
    store = open_store(config.store("s3"), config)
    await store.start()
    try:
        with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
            await store.check()
    finally:
        await store.stop()


async def test_stale_uploads_of_the_bucket_are_aborted(tmp_path: Path, bucket: str) -> None:
    """Uploads no journal names (another node's, or one that died with its disk) go once they are stale."""
    from streamd.stores.registry import open_store

    config = make_config(tmp_path, None, **s3_sections(bucket))
    store = open_store(config.store("s3"), config)
    await store.start()
    try:
        client = s3_client()
        client.create_bucket(Bucket=bucket)
        upload = client.create_multipart_upload(Bucket=bucket, Key="foreign")
        client.upload_part(Bucket=bucket, Key="foreign", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100)
        assert await store._run(store.abort_stale_uploads, 3600.0) == []  # fresh: a writer may be alive
        assert open_uploads(bucket) == ["foreign"]
        time.sleep(1.1)
        assert await store._run(store.abort_stale_uploads, 1.0) == ["foreign"]
        assert open_uploads(bucket) == []
    finally:
        await store.stop()


async def test_missing_bucket_without_create_on_put_fails_and_stores_detail(tmp_path: Path, bucket: str) -> None:
    server, api, session = await start_api(make_config(tmp_path, None, **s3_sections(
        bucket, s3_store_create_bucket_on_put="false")))
    try:
        image = await api.create()
        reply = await put(api, image["id"], payload(100))
        assert reply.status >= 500, reply.body
        assert "does not exist" in reply.body.decode() and bucket in reply.body.decode()
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"
        s3_client().create_bucket(Bucket=bucket)
        assert (await put(api, image["id"], payload(100))).status == 204
        detail = (await api.call("GET", "/v2/info/stores/detail", as_={**MEMBER_A, "X-Roles": "admin"})).json
        s3 = next(s for s in detail["stores"] if s["id"] == "s3")
        assert s3["type"] == "s3" and s3["properties"] == {
            "s3_store_large_object_size": LARGE, "s3_store_large_object_chunk_size": PART,
            "s3_store_thread_pools": 10}
    finally:
        await session.close()
        await server.close()


async def test_import_into_file_and_s3_from_one_read(api: ApiClient, bucket: str) -> None:
    data = payload(2 * PART + 3, 9)
    image = await api.create(name="imported")
    await stage(api, image["id"], data)
    await start_import(api, image["id"], "glance-direct", stores=["fs", "s3"])
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task
    shown = await show(api, image["id"])
    assert shown["status"] == "active" and store_names(shown) == {"fs", "s3"}
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert object_bytes(bucket, image["id"]) == data and etag_parts(bucket, image["id"]) == 3
    assert open_uploads(bucket) == []
    assert (api.config.data_dir / "images" / "fs" / image["id"]).read_bytes() == data


async def test_import_into_file_rbd_and_s3_from_one_read(tmp_path: Path, bucket: str) -> None:
    from test_import_rbd import rbd_export
    from test_rbd_store import ceph_env, rbd_sections

    sections = s3_sections(bucket)
    sections["DEFAULT"]["enabled_backends"] = "fs:file,ceph:rbd,s3:s3"
    sections["ceph"] = rbd_sections()["ceph"]
    server, api, session = await start_api(make_config(tmp_path, None, **sections))
    try:
        data = payload(PART + 4 * MIB + 1, 10)
        image = await api.create(name="everywhere")
        await stage(api, image["id"], data)
        await start_import(api, image["id"], "glance-direct", stores=["fs", "ceph", "s3"])
        task = await wait_task(api, image["id"])
        assert task["status"] == "success", task
        shown = await show(api, image["id"])
        assert shown["status"] == "active" and store_names(shown) == {"fs", "ceph", "s3"}
        assert object_bytes(bucket, image["id"]) == data and open_uploads(bucket) == []
        assert rbd_export(ceph_env()["CEPH_POOL"], image["id"]) == data
        assert (api.config.data_dir / "images" / "fs" / image["id"]).read_bytes() == data
        # Every location reads back the same bytes.
        got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
        assert got.body == data
    finally:
        await session.close()
        await server.close()


# -- faults, with the daemon as a real process ---------------------------------------------------

def daemon_config(bucket: str, **extra: str) -> str:
    section = "".join(f"{k} = {v}\n" for k, v in s3_section(bucket, **extra).items())
    return f"enabled_backends = fs:file,s3:s3\n[glance_store]\ndefault_backend = s3\n[s3]\n{section}"


def test_kill_9_mid_upload_aborts_the_upload_after_restart(tmp_path: Path, bucket: str) -> None:
    daemon = start_daemon(tmp_path, daemon_config(bucket))
    image_id = new_image(daemon)
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Project-Id: {MEMBER_A['X-Project-Id']}\r\n"
                  "X-Roles: member\r\nContent-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\r\n").encode())
    sock.sendall(payload(3 * PART))
    deadline = time.monotonic() + 20
    while True:
        try:
            if open_uploads(bucket) == [image_id]:
                break
        except Exception:  # noqa: BLE001 - the bucket is created by the first write
            pass
        assert time.monotonic() < deadline, "the upload never reached the gateway"
        time.sleep(0.1)
    daemon.process.kill()
    daemon.process.wait()
    sock.close()
    assert open_uploads(bucket) == [image_id] and objects(bucket) == []  # the half-written upload is there...
    restarted = start_daemon(tmp_path, daemon_config(bucket))
    try:
        # ...and aborted by the start-up, from the node's journal.
        assert open_uploads(bucket) == [] and objects(bucket) == []
        status, body = http(restarted, "GET", f"/v2/images/{image_id}")
        assert body["status"] == "queued"
        status, _ = http(restarted, "PUT", f"/v2/images/{image_id}/file", payload(MIB), OCTET)
        assert status == 204
        assert objects(bucket) == [image_id]
    finally:
        stop_daemon(restarted)


def test_gateway_unreachable_is_503(tmp_path: Path, bucket: str) -> None:
    daemon = start_daemon(tmp_path, daemon_config(bucket, s3_store_host="http://127.0.0.1:1"))
    try:
        image_id = new_image(daemon)
        status, body = http(daemon, "PUT", f"/v2/images/{image_id}/file", payload(MIB), OCTET)
        assert status == 503, body
        assert "127.0.0.1:1" in body["message"]
        assert http(daemon, "GET", f"/v2/images/{image_id}")[1]["status"] == "queued"
    finally:
        stop_daemon(daemon)


def test_config_requires_the_s3_options(tmp_path: Path) -> None:
    from streamd.config import load_config
    from streamd.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides={"DEFAULT": {"enabled_backends": "fs:file,s3:s3", "data_dir": str(tmp_path)},
                                     "s3": {"s3_store_host": "127.0.0.1:1", "s3_store_large_object_chunk_size": "4"}})
    text = json.dumps(caught.value.problems)
    for option in ("s3_store_access_key", "s3_store_secret_key", "s3_store_bucket", "s3_store_large_object_chunk_size"):
        assert option in text, text
