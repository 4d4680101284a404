"""Image data in and out: round trips, limits, failures that lose nothing, ranges."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from conftest import ADMIN, MEMBER_A, MEMBER_B, ApiClient, Daemon, both_databases, make_config, start_api
from streamd.sizes import CHUNK  # the data path's chunk: uploads are batched and stores read in it

OCTET = {"Content-Type": "application/octet-stream"}


def payload(size: int, seed: int = 1) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size) if size else b""


def store_dir(api: ApiClient) -> Path:
    return api.config.data_dir / "images" / "fs"


def stray_files(api: ApiClient) -> list[str]:
    root = store_dir(api)
    incoming = [p.name for p in (root / ".incoming").iterdir()] if (root / ".incoming").exists() else []
    return incoming


async def upload(api: ApiClient, image_id: str, data, *, as_=MEMBER_A, headers=None) -> "object":
    return await api.call("PUT", f"/v2/images/{image_id}/file", as_=as_, data=data,
                          headers={**OCTET, **(headers or {})})


async def chunked(data: bytes, piece: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start:start + piece]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345])
async def test_round_trip_sizes(api: ApiClient, size: int) -> None:
    data = payload(size)
    image = await api.create()
    reply = await upload(api, image["id"], data)
    assert reply.status == 204, reply.body
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["status"] == "active" and shown["size"] == size
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_algo"] == "sha512" and shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert shown["stores"] == "fs"
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.status == 200 and got.body == data
    assert got.headers["Content-Length"] == str(size)
    assert got.headers["Content-MD5"] == shown["checksum"]
    assert got.headers["Accept-Ranges"] == "bytes" and got.headers["ETag"].startswith('"')
    assert (store_dir(api) / image["id"]).read_bytes() == data
    assert stray_files(api) == []


@both_databases
async def test_chunked_upload_without_length(api: ApiClient) -> None:
    data = payload(5 * (1 << 20) + 7)
    image = await api.create()
    reply = await upload(api, image["id"], chunked(data))
    assert reply.status == 204, reply.body
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.body == data


async def test_declared_size_header(api: ApiClient) -> None:
    data = payload(100_000)
    image = await api.create()
    reply = await upload(api, image["id"], chunked(data, 30_000), headers={"x-openstack-image-size": "100000"})
    assert reply.status == 204
    short = await api.create()
    reply = await upload(api, short["id"], chunked(data, 30_000), headers={"x-openstack-image-size": "100001"})
    assert reply.status == 400 and "ended after" in reply.error["message"]
    long = await api.create()
    reply = await upload(api, long["id"], chunked(data, 30_000), headers={"x-openstack-image-size": "99999"})
    assert reply.status == 400 and "longer than" in reply.error["message"]
    for image_id in (short["id"], long["id"]):
        shown = (await api.call("GET", f"/v2/images/{image_id}", as_=MEMBER_A)).json
        assert shown["status"] == "queued" and shown["size"] is None
        assert not (store_dir(api) / image_id).exists()
    bad = await upload(api, short["id"], b"x", headers={"x-openstack-image-size": "ten"})
    assert bad.status == 400
    assert stray_files(api) == []


async def test_wrong_content_type_is_415(api: ApiClient) -> None:
    image = await api.create()
    reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=b"abc",
                           headers={"Content-Type": "text/plain"})
    assert reply.status == 415 and reply.error["code"] == 415
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"


async def test_upload_needs_formats_and_queued_status(api: ApiClient) -> None:
    bare = await api.create(disk_format=None, container_format=None)
    reply = await upload(api, bare["id"], b"abc")
    assert reply.status == 400 and "disk_format" in reply.error["message"]
    image = await api.create()
    assert (await upload(api, image["id"], b"first")).status == 204
    again = await upload(api, image["id"], b"second")
    assert again.status == 409
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.body == b"first"


async def test_upload_permissions(api: ApiClient) -> None:
    image = await api.create(visibility="public", as_=ADMIN)
    assert (await upload(api, image["id"], b"x", as_=MEMBER_B)).status == 403
    private = await api.create(visibility="private")
    assert (await upload(api, private["id"], b"x", as_=MEMBER_B)).status == 404


async def test_unknown_store_header_is_400(api: ApiClient) -> None:
    image = await api.create()
    reply = await upload(api, image["id"], b"abc", headers={"X-Image-Meta-Store": "nowhere"})
    assert reply.status == 400
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"


async def test_size_cap_enforced_while_streaming(tmp_path: Path) -> None:
    server, api, session = await start_api(make_config(tmp_path, None, DEFAULT={"image_size_cap": str(3 << 20)}))
    try:
        image = await api.create()
        # Declared too large: refused before reading.
        reply = await upload(api, image["id"], payload(4 << 20))
        assert reply.status == 413
        # Undeclared (chunked): refused as soon as the cap is crossed.
        sent = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(1000):  # would be 1000 MiB if the server read it all
                sent += 1 << 20
                yield payload(1 << 20)

        reply = await upload(api, image["id"], endless())
        assert reply.status == 413, reply.body
        assert sent < 64 << 20
        shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
        assert shown["status"] == "queued"
        assert not (store_dir(api) / image["id"]).exists() and stray_files(api) == []
        exact = await upload(api, image["id"], payload(3 << 20))
        assert exact.status == 204
    finally:
        await session.close()
        await server.close()


async def test_client_disconnect_mid_upload_leaves_nothing(api: ApiClient) -> None:
    image = await api.create()
    host, port = api.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    headers = (f"PUT /v2/images/{image['id']}/file HTTP/1.1\r\nHost: x\r\n"
               f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n"
               "Content-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\r\n")
    writer.write(headers.encode())
    for _ in range(10):
        writer.write(payload(1 << 20))
        await writer.drain()
    # Wait until the server has started the upload, then vanish.
    for _ in range(100):
        if (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "saving":
            break
        await asyncio.sleep(0.02)
    writer.transport.abort()
    for _ in range(200):
        shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
        if shown["status"] == "queued":
            break
        await asyncio.sleep(0.025)
    assert shown["status"] == "queued"
    for _ in range(100):
        if not stray_files(api):
            break
        await asyncio.sleep(0.02)
    assert stray_files(api) == [] and not (store_dir(api) / image["id"]).exists()
    # The image takes a new upload afterwards.
    assert (await upload(api, image["id"], b"again")).status == 204


async def test_delete_during_upload_is_410_and_removes_data(api: ApiClient) -> None:
    image = await api.create()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield payload(1 << 20)
        started.set()
        await release.wait()
        yield payload(1 << 20, 2)

    task = asyncio.create_task(upload(api, image["id"], slow()))
    await started.wait()
    for _ in range(100):
        if (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "saving":
            break
        await asyncio.sleep(0.02)
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    release.set()
    reply = await task
    assert reply.status == 410, reply.body
    assert not (store_dir(api) / image["id"]).exists() and stray_files(api) == []


async def test_two_racing_uploads_one_wins(api: ApiClient) -> None:
    image = await api.create()
    gate = asyncio.Event()

    async def body(seed: int) -> AsyncIterator[bytes]:
        await gate.wait()
        yield payload(1 << 20, seed)

    tasks = [asyncio.create_task(upload(api, image["id"], body(n))) for n in (1, 2)]
    await asyncio.sleep(0.2)
    gate.set()
    statuses = sorted(r.status for r in await asyncio.gather(*tasks))
    assert statuses == [204, 409]
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.body in (payload(1 << 20, 1), payload(1 << 20, 2))


async def test_thin_provisioning_leaves_holes(tmp_path: Path) -> None:
    server, api, session = await start_api(make_config(
        tmp_path, None, fs={"filesystem_thin_provisioning": "true",
                            "filesystem_thin_provisioning_block_size": "4096"}))
    try:
        mib = 1 << 20
        data = payload(mib) + bytes(8 * mib) + payload(mib, 3) + bytes(2 * mib)
        image = await api.create()
        assert (await upload(api, image["id"], chunked(data, 3 * mib + 5))).status == 204
        path = store_dir(api) / image["id"]
        assert path.stat().st_size == len(data)
        allocated = path.stat().st_blocks * 512
        assert allocated <= 2 * mib + 64 * 1024, allocated  # the 10 MiB of zeros are holes
        got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
        assert got.body == data
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["checksum"] == \
            hashlib.md5(data).hexdigest()
    finally:
        await session.close()
        await server.close()


async def test_dense_store_writes_every_block(api: ApiClient) -> None:
    data = bytes(4 << 20)
    image = await api.create()
    assert (await upload(api, image["id"], data)).status == 204
    assert (store_dir(api) / image["id"]).stat().st_blocks * 512 >= len(data)


async def test_download_of_queued_image_is_204(api: ApiClient) -> None:
    image = await api.create()
    reply = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert reply.status == 204 and reply.body == b""


async def test_deactivated_download_is_403_unless_admin(api: ApiClient) -> None:
    image = await api.create(visibility="community")
    assert (await upload(api, image["id"], b"secret")).status == 204
    assert (await api.call("POST", f"/v2/images/{image['id']}/actions/deactivate", as_=MEMBER_A)).status == 204
    assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).status == 403
    assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_B)).status == 403
    admin = await api.call("GET", f"/v2/images/{image['id']}/file", as_=ADMIN)
    assert admin.status == 200 and admin.body == b"secret"
    assert (await api.call("POST", f"/v2/images/{image['id']}/actions/reactivate", as_=MEMBER_A)).status == 204
    assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_B)).body == b"secret"


async def test_delete_removes_data(api: ApiClient) -> None:
    image = await api.create()
    assert (await upload(api, image["id"], b"data")).status == 204
    assert (store_dir(api) / image["id"]).exists()
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    assert not (store_dir(api) / image["id"]).exists()


@pytest.mark.parametrize("header,expected", [
    ("bytes=0-9", (0, 9)),
    ("bytes=1000-1999", (1000, 1999)),
    ("bytes=99990-", (99990, 99999)),
    ("bytes=99990-200000", (99990, 99999)),
    ("bytes=-10", (99990, 99999)),
    ("bytes=-200000", (0, 99999)),
])
async def test_ranges(api: ApiClient, header: str, expected: tuple[int, int]) -> None:
    data = payload(100_000)
    image = await api.create()
    assert (await upload(api, image["id"], data)).status == 204
    reply = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A, headers={"Range": header})
    first, last = expected
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {first}-{last}/100000"
    assert reply.body == data[first:last + 1]


@pytest.mark.parametrize("header", ["bytes=100000-", "bytes=200000-300000", "bytes=-0", "bytes=5-2", "items=1-2",
                                    "bytes=x-y"])
async def test_unsatisfiable_ranges_are_416(api: ApiClient, header: str) -> None:
    image = await api.create()
    assert (await upload(api, image["id"], payload(100_000))).status == 204
    reply = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A, headers={"Range": header})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == "bytes */100000"
    assert reply.error["code"] == 416


async def test_multi_range_is_400_and_if_range(api: ApiClient) -> None:
    data = payload(50_000)
    image = await api.create()
    assert (await upload(api, image["id"], data)).status == 204
    path = f"/v2/images/{image['id']}/file"
    assert (await api.call("GET", path, as_=MEMBER_A, headers={"Range": "bytes=0-1,5-6"})).status == 400
    etag = (await api.call("GET", path, as_=MEMBER_A)).headers["ETag"]
    fresh = await api.call("GET", path, as_=MEMBER_A, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert fresh.status == 206 and fresh.body == data[10:20]
    stale = await api.call("GET", path, as_=MEMBER_A, headers={"Range": "bytes=10-19", "If-Range": '"stale"'})
    assert stale.status == 200 and stale.body == data
    legacy = await api.call("GET", path, as_=MEMBER_A, headers={"Content-Range": "bytes 5-9/50000"})
    assert legacy.status == 206 and legacy.body == data[5:10]


async def test_disk_full_puts_image_back_to_queued(tmp_path: Path) -> None:
    """A real full file system: a 2 MiB tmpfs as the store (needs root, as in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = os.system(f"mount -t tmpfs -o size=2m tmpfs {mount}")
    assert result == 0, "mounting a tmpfs needs root (CI runs as root)"
    try:
        server, api, session = await start_api(make_config(tmp_path, None, fs={"filesystem_store_datadir": str(mount)}))
        try:
            image = await api.create()
            reply = await upload(api, image["id"], payload(3 << 20))
            assert reply.status == 413, reply.body
            assert "space" in reply.error["message"]
            assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"
            assert [p.name for p in mount.iterdir()] == [".incoming"]
            assert list((mount / ".incoming").iterdir()) == []
            assert (await upload(api, image["id"], payload(1 << 20))).status == 204
        finally:
            await session.close()
            await server.close()
    finally:
        os.system(f"umount {mount}")


async def test_local_store_images_are_served_straight_from_the_store(tmp_path: Path) -> None:
    """The product default: no second copy of a local file-store image in the cache."""
    from streamd.api.keys import SERVICES

    server, api, session = await start_api(make_config(tmp_path, None, DEFAULT={"image_cache_local_stores": "false"}))
    try:
        data = payload(3 << 20)
        image = await api.create()
        assert (await upload(api, image["id"], data)).status == 204
        for _ in range(2):
            assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).body == data
        assert server.app[SERVICES].delivery.store_reads["fs"] == 2
        assert not (api.config.cache_dir / image["id"]).exists()
        # An explicit request still caches it (PUT /v2/cache/{id} or queue-image).
        assert (await api.call("PUT", f"/v2/cache/{image['id']}", as_=ADMIN)).status == 202
        for _ in range(100):
            if (api.config.cache_dir / image["id"]).exists():
                break
            await asyncio.sleep(0.05)
        assert (api.config.cache_dir / image["id"]).read_bytes() == data
        assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).body == data
        assert server.app[SERVICES].delivery.store_reads["fs"] == 3  # the prefetch read; the GET was a hit
    finally:
        await session.close()
        await server.close()


async def test_clients_that_leave_or_read_slowly_mid_download(api: ApiClient) -> None:
    """File-backed downloads are copied to the socket by a thread: a client that hangs up halfway
    frees it, a slow reader still gets every byte, and the connection after each is served as usual."""
    data = payload(48 << 20, 9)
    image = await api.create()
    assert (await upload(api, image["id"], data)).status == 204
    host, port = api.base.removeprefix("http://").split(":")
    request = (f"GET /v2/images/{image['id']}/file HTTP/1.1\r\nHost: x\r\n"
               f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member,reader\r\n\r\n").encode()
    for _ in range(3):  # hang up after the first MiB, three times
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await reader.readexactly(1 << 20)
        writer.transport.abort()
    # A reader that takes its time (the socket buffer fills, the thread waits for it).
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(data)}".encode() in head
    body = bytearray()
    while len(body) < len(data):
        body += await reader.read(1 << 20)
        if len(body) < 8 << 20:
            await asyncio.sleep(0.02)
    assert bytes(body) == data
    writer.close()
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A, headers={"Range": "bytes=1000-"})
    assert got.status == 206 and got.body == data[1000:]


def test_several_empty_uploads_in_a_row(daemon: Daemon) -> None:
    """aiohttp hands every empty body one shared reader; reading it must end each time (a real daemon,
    so that a server stuck in a loop fails this test by timeout instead of hanging the suite)."""
    import json
    import urllib.request

    for _ in range(3):
        request = urllib.request.Request(daemon.url + "/v2/images", method="POST", data=json.dumps(
            {"disk_format": "raw", "container_format": "bare"}).encode(),
            headers={**MEMBER_A, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            image_id = json.loads(response.read())["id"]
        request = urllib.request.Request(f"{daemon.url}/v2/images/{image_id}/file", method="PUT", data=b"",
                                         headers={**MEMBER_A, **OCTET})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
        with urllib.request.urlopen(urllib.request.Request(f"{daemon.url}/v2/images/{image_id}",
                                                           headers=MEMBER_A), timeout=10) as response:
            shown = json.loads(response.read())
        assert shown["status"] == "active" and shown["size"] == 0


# -- filesystem_store_direct_io ---------------------------------------------------------------------

def _direct_dir(tmp_path: Path) -> Path:
    """A directory on the checkout's filesystem (a disk: O_DIRECT works there, where /tmp may be a tmpfs)."""
    return Path(__file__).resolve().parents[1] / "data" / f"test-direct-{tmp_path.name}-{os.getpid()}"


@pytest.mark.parametrize("thin", [False, True])
async def test_direct_io_writer_lands_every_byte_from_pieces_of_any_shape(tmp_path: Path, thin: bool) -> None:
    import fcntl
    import shutil

    from streamd.config import FileStoreOptions
    from streamd.stores.file import DirectFileWriter, FileStore

    directory = _direct_dir(tmp_path)
    try:
        store = FileStore("fs", FileStoreOptions(filesystem_store_datadir=str(directory), filesystem_store_direct_io=True,
                                                 filesystem_thin_provisioning=thin,
                                                 filesystem_thin_provisioning_block_size=4096), tmp_path)
        await store.start()
        mib = 1 << 20
        # Unaligned lengths throughout, zeros across stage boundaries, a tail that is not a block.
        data = payload(mib + 3) + bytes(3 * mib) + payload(5000, 2) + bytes(2 * mib + 17) + payload(777, 3)
        writer = await store.writer("img", len(data))
        assert isinstance(writer, DirectFileWriter)
        assert fcntl.fcntl(writer.fd, fcntl.F_GETFL) & os.O_DIRECT
        view = memoryview(data)
        for piece in (1, 4095, 4097, mib, 3 * mib + 1, 12345):
            writer.write(view[:piece])
            view = view[piece:]
        writer.write(view)
        stored = await writer.commit()
        path = directory / "img"
        assert stored.size == len(data) == path.stat().st_size
        assert path.read_bytes() == data
        allocated = path.stat().st_blocks * 512
        if thin:
            assert allocated <= 2 * mib, allocated  # the 5 MiB of zeros are holes
        else:
            assert allocated >= len(data) - 4096, allocated
        # An abort leaves nothing behind.
        aborted = await store.writer("gone", None)
        aborted.write(payload(3 * mib + 1))
        await aborted.abort()
        assert sorted(p.name for p in directory.iterdir()) == [".incoming", "img"]
        assert list((directory / ".incoming").iterdir()) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_uploads_through_a_direct_io_store_round_trip(tmp_path: Path) -> None:
    import shutil

    directory = _direct_dir(tmp_path)
    server, api, session = await start_api(make_config(
        tmp_path, None, fs={"filesystem_store_datadir": str(directory), "filesystem_store_direct_io": "true",
                            "filesystem_thin_provisioning": "true"}))
    try:
        mib = 1 << 20
        data = payload(mib) + bytes(8 * mib) + payload(3 * mib + 5, 3)
        for body in (data, chunked(data, 3 * mib + 5)):
            image = await api.create()
            assert (await upload(api, image["id"], body)).status == 204
            assert (directory / image["id"]).stat().st_blocks * 512 <= 5 * mib
            got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
            assert got.body == data
            assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["checksum"] == \
                hashlib.md5(data).hexdigest()
            # Ranges of a thread-sent length, at offsets that are no block's.
            for first, last in ((1, 2 * mib), (4097, len(data) - 1), (len(data) - mib - 3, len(data) - 2)):
                got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A,
                                     headers={"Range": f"bytes={first}-{last}"})
                assert (got.status, got.body) == (206, data[first:last + 1])
    finally:
        await session.close()
        await server.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_direct_reads_send_any_range_and_stop_at_the_end_of_the_file(tmp_path: Path) -> None:
    import shutil
    import socket
    import threading

    from streamd.pipeline import socketcopy

    directory = _direct_dir(tmp_path)
    directory.mkdir(parents=True)
    try:
        data = payload(3 * (1 << 20) + 1234)
        (directory / "f").write_bytes(data)
        fd = os.open(directory / "f", os.O_RDONLY)
        direct = socketcopy._open_direct(fd)
        assert direct is not None, "the checkout's filesystem refuses O_DIRECT"
        os.close(direct)
        try:
            def send(offset: int, count: int) -> bytes:
                ours, theirs = socket.socketpair()
                received = bytearray()

                def drain() -> None:
                    while piece := theirs.recv(1 << 16):
                        received.extend(piece)

                reader = threading.Thread(target=drain)
                reader.start()
                ours.setblocking(False)
                try:
                    socketcopy._copy_range(ours.fileno(), fd, offset, count, 10, threading.Event(), True)
                finally:
                    ours.close()
                    reader.join()
                    theirs.close()
                return bytes(received)

            for offset, count in ((0, len(data)), (1, 4095), (4095, 2), (5000, len(data) - 5000),
                                  ((1 << 20) - 1, (1 << 20) + 2), (len(data) - 1, 1)):
                assert send(offset, count) == data[offset:offset + count], (offset, count)
            with pytest.raises(EOFError):
                send(4096, len(data))
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_direct_appender_puts_every_appended_byte_in_the_file_at_each_flush(tmp_path: Path) -> None:
    """kernels.sparse.DirectAppender on a real O_DIRECT file: pieces of every shape (inside a block,
    across blocks and across the stage), each flush makes all appended bytes readable by another
    descriptor (the partial last block padded, then written again with what follows), and finish
    cuts the padding off."""
    import random

    from streamd.kernels.sparse import DirectAppender

    path = tmp_path / "direct.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    reader = os.open(path, os.O_RDONLY)
    rng = random.Random(7)
    data = hashlib.shake_256(b"appender").digest(3 * (1 << 20) + 12345)
    appender = DirectAppender(fd, stage_size=64 << 10)
    try:
        at = 0
        for size in [1, 4095, 1, 4096, 100, 70000, 65536, 3, *[rng.randrange(1, 300000) for _ in range(40)]]:
            piece = data[at:at + size]
            if not piece:
                break
            appender.append(memoryview(piece))
            at += len(piece)
            assert appender.end == at
            if rng.random() < 0.7:
                appender.flush()
                assert os.pread(reader, at, 0) == data[:at]
                assert os.fstat(fd).st_size % 4096 == 0 and os.fstat(fd).st_size >= at
        appender.append(data[at:])
        appender.finish()
        assert path.read_bytes() == data
    finally:
        appender.close()
        os.close(reader)
        os.close(fd)
