"""The RBD store against the real throwaway Ceph cluster that scripts/test.sh starts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from conftest import MEMBER_A, ApiClient, Daemon, make_config, start_api, start_daemon, stop_daemon

OCTET = {"Content-Type": "application/octet-stream"}
MIB = 1 << 20
OBJECT = 8 * MIB
SECOND_POOL = "images2"


def ceph_env() -> dict[str, str]:
    missing = [v for v in ("CEPH_CONF", "CEPH_POOL", "STREAMD_TEST_CEPH_DIR") if not os.environ.get(v)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run the suite with scripts/test.sh, which starts a Ceph cluster")
    return {k: os.environ[k] for k in ("CEPH_CONF", "CEPH_POOL", "STREAMD_TEST_CEPH_DIR")}


def rbd(*args: str) -> str:
    result = subprocess.run(["rbd", "--conf", ceph_env()["CEPH_CONF"], *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rbd_images(pool: str) -> list[str]:
    return json.loads(rbd("ls", "--format", "json", pool) or "[]")


def extents(pool: str, image: str, snap: str = "snap") -> list[tuple[int, int]]:
    diff = json.loads(rbd("diff", "--format", "json", f"{pool}/{image}@{snap}") or "[]")
    return [(e["offset"], e["length"]) for e in diff if e["exists"] in (True, "true")]


@pytest.fixture(scope="session")
def second_pool() -> str:
    conf = ceph_env()["CEPH_CONF"]
    subprocess.run(["ceph", "--conf", conf, "osd", "pool", "create", SECOND_POOL, "8"], capture_output=True,
                   timeout=60, check=True)
    subprocess.run(["rbd", "--conf", conf, "pool", "init", SECOND_POOL], capture_output=True, timeout=60, check=True)
    return SECOND_POOL


def rbd_sections(thin: bool = True, op_timeout: str = "30") -> dict[str, dict[str, str]]:
    env = ceph_env()
    common = {"rbd_store_ceph_conf": env["CEPH_CONF"], "rbd_store_user": "admin",
              "rbd_thin_provisioning": str(thin).lower(), "rados_connect_timeout": "10",
              "rados_op_timeout": op_timeout}
    return {
        "DEFAULT": {"enabled_backends": "fs:file,ceph:rbd,edge:rbd"},
        "ceph": {**common, "rbd_store_pool": env["CEPH_POOL"]},
        "edge": {**common, "rbd_store_pool": SECOND_POOL},
    }


@pytest.fixture
async def api(tmp_path: Path, second_pool: str) -> AsyncIterator[ApiClient]:
    server, client, session = await start_api(make_config(tmp_path, None, **rbd_sections()))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


def payload(size: int, seed: int = 7) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size) if size else b""


async def put(api: ApiClient, image_id: str, data, store: str = "ceph", headers=None):
    return await api.call("PUT", f"/v2/images/{image_id}/file", as_=MEMBER_A, data=data,
                          headers={**OCTET, "X-Image-Meta-Store": store, **(headers or {})})


async def chunked(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start:start + piece]


@pytest.mark.parametrize("size", [0, 1, OBJECT - 1, OBJECT, OBJECT + 1, 3 * MIB + 5])
async def test_round_trip(api: ApiClient, size: int) -> None:
    data = payload(size)
    image = await api.create()
    reply = await put(api, image["id"], data)
    assert reply.status == 204, reply.body
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["status"] == "active" and shown["size"] == size and shown["stores"] == "ceph"
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.status == 200 and got.body == data
    info = json.loads(rbd("info", "--format", "json", f"{ceph_env()['CEPH_POOL']}/{image['id']}"))
    assert info["size"] == size


async def test_sparse_layout_only_data_is_written(api: ApiClient) -> None:
    # 64 KiB data | 1 MiB zeros | 64 KiB data | zeros to the end of object 0 | object 1 all zeros |
    # object 2: 4 KiB of data at 100 KiB | a partial object 3 of zeros.
    block = 64 * 1024
    layout = bytearray(3 * OBJECT + 5 * MIB)
    layout[0:block] = payload(block, 1)
    layout[block + MIB:2 * block + MIB] = payload(block, 2)
    layout[2 * OBJECT + 100 * 1024:2 * OBJECT + 104 * 1024] = payload(4096, 3)
    data = bytes(layout)
    image = await api.create()
    assert (await put(api, image["id"], chunked(data, 3 * MIB + 1))).status == 204
    written = extents(ceph_env()["CEPH_POOL"], image["id"])
    # rbd diff reports whole objects that exist: exactly objects 0 and 2.
    assert [(off // OBJECT) for off, _ in written] == [0, 2], written
    # And `rbd du` (object map, fast-diff: the cluster's default features) counts just those two.
    du = json.loads(rbd("du", "--format", "json", f"{ceph_env()['CEPH_POOL']}/{image['id']}"))
    used = {entry.get("snapshot") or "head": entry["used_size"] for entry in du["images"]}
    assert used["snap"] == 2 * OBJECT, du
    # Inside the objects only the data blocks were sent (the store reports the bytes it sent).
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.body == data


async def test_dense_store_writes_everything(tmp_path: Path, second_pool: str) -> None:
    server, api, session = await start_api(make_config(tmp_path, None, **rbd_sections(thin=False)))
    try:
        image = await api.create()
        assert (await put(api, image["id"], bytes(2 * OBJECT))).status == 204
        assert len(extents(ceph_env()["CEPH_POOL"], image["id"])) == 2
    finally:
        await session.close()
        await server.close()


async def test_unknown_size_grows_and_is_trimmed(api: ApiClient) -> None:
    data = payload(OBJECT + 12345)
    image = await api.create()
    assert (await put(api, image["id"], chunked(data, MIB))).status == 204
    info = json.loads(rbd("info", "--format", "json", f"{ceph_env()['CEPH_POOL']}/{image['id']}"))
    assert info["size"] == len(data)
    got = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
    assert got.body == data


async def test_range_reads(api: ApiClient) -> None:
    data = payload(OBJECT + 3 * MIB)
    image = await api.create()
    assert (await put(api, image["id"], data)).status == 204
    for header, (first, last) in [("bytes=0-99", (0, 99)), (f"bytes={OBJECT - 10}-{OBJECT + 9}", (OBJECT - 10, OBJECT + 9)),
                                  ("bytes=-100", (len(data) - 100, len(data) - 1))]:
        reply = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A, headers={"Range": header})
        assert reply.status == 206 and reply.body == data[first:last + 1]
    beyond = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A,
                            headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416


async def test_snapshot_protected_location_and_delete(api: ApiClient) -> None:
    pool = ceph_env()["CEPH_POOL"]
    image = await api.create()
    assert (await put(api, image["id"], payload(MIB))).status == 204
    snaps = json.loads(rbd("snap", "ls", "--format", "json", f"{pool}/{image['id']}"))
    assert [s["name"] for s in snaps] == ["snap"]
    info = json.loads(rbd("info", "--format", "json", f"{pool}/{image['id']}@snap"))
    assert info["protected"] in (True, "true")
    assert image["id"] in rbd_images(pool)
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    assert image["id"] not in rbd_images(pool)


async def test_delete_with_clone_is_409(api: ApiClient) -> None:
    pool = ceph_env()["CEPH_POOL"]
    image = await api.create()
    assert (await put(api, image["id"], payload(MIB))).status == 204
    clone = f"clone-{image['id'][:8]}"
    rbd("clone", f"{pool}/{image['id']}@snap", f"{pool}/{clone}")
    try:
        reply = await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)
        assert reply.status == 409 and "clone" in reply.error["message"]
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "active"
        assert image["id"] in rbd_images(pool)
    finally:
        rbd("rm", f"{pool}/{clone}")
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    assert image["id"] not in rbd_images(pool)


async def test_several_rbd_stores(api: ApiClient) -> None:
    data = payload(2 * MIB)
    first, second = await api.create(), await api.create()
    assert (await put(api, first["id"], data, store="ceph")).status == 204
    assert (await put(api, second["id"], data, store="edge")).status == 204
    assert first["id"] in rbd_images(ceph_env()["CEPH_POOL"]) and first["id"] not in rbd_images(SECOND_POOL)
    assert second["id"] in rbd_images(SECOND_POOL)
    shown = (await api.call("GET", f"/v2/images/{second['id']}", as_=MEMBER_A)).json
    assert shown["stores"] == "edge"
    assert (await api.call("GET", f"/v2/images/{second['id']}/file", as_=MEMBER_A)).body == data


async def test_failed_upload_leaves_no_rbd_image(api: ApiClient) -> None:
    pool = ceph_env()["CEPH_POOL"]
    image = await api.create()
    reply = await put(api, image["id"], chunked(payload(3 * MIB), MIB), headers={"x-openstack-image-size": str(4 * MIB)})
    assert reply.status == 400
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "queued"
    assert not [n for n in rbd_images(pool) if image["id"] in n]


def _nonzero_blocks(data: bytes, block: int) -> int:
    """Bytes of ``data`` in ``block``-sized blocks (from offset 0) that are not all zeros."""
    zero = bytes(block)
    return sum(len(data[i:i + block]) for i in range(0, len(data), block) if data[i:i + block] != zero[:len(data[i:i + block])])


async def test_writer_takes_pieces_of_every_shape_and_keeps_no_caller_buffer(second_pool: str) -> None:
    """The store's writer alone: small pieces gathered, large whole buffers handed to librbd as they
    are, views of part of a buffer, pieces across object ends, a short tail; a buffer the caller
    overwrites right after each write (the thread-read upload reuses its batches) must not change
    what was stored. Zero blocks are never sent and leave their objects absent."""
    from streamd.config import RbdStoreOptions
    from streamd.stores.rbd import RbdStore

    env = ceph_env()
    block = 64 * 1024
    objects = [payload(OBJECT, 11),                                  # 0: small pieces, gathered
               bytes(4 * MIB) + payload(4 * MIB, 12),                # 1: two 4 MiB whole buffers (one all zeros)
               bytes(OBJECT),                                        # 2: zeros, a view of part of a buffer
               b"".join(payload(block, 13 + i) + bytes(block) for i in range(8)) + payload(7 * MIB, 14),
               payload(OBJECT, 15), payload(2 * MIB, 16) + bytes(MIB) + payload(5 * MIB, 17)]  # 4, 5: a piece across
    data = b"".join(objects) + payload(12345, 18)                       # a short object 6
    reused = bytearray(4 * MIB)

    def feed(writer) -> None:
        for start in range(0, OBJECT, 192 * 1024):  # object 0
            writer.write(data[start:min(start + 192 * 1024, OBJECT)])
        for start in (OBJECT, OBJECT + 4 * MIB):  # object 1, through one reused buffer
            reused[:] = data[start:start + 4 * MIB]
            writer.write(memoryview(reused))
            reused[:] = b"\xa5" * len(reused)  # what librbd would send if it still read the caller's buffer
        bigger = bytearray(OBJECT + MIB)
        bigger[:OBJECT] = data[2 * OBJECT:3 * OBJECT]
        writer.write(memoryview(bigger)[:OBJECT])  # object 2
        writer.write(data[3 * OBJECT:3 * OBJECT + MIB])  # object 3: 1 MiB whole, half zero blocks...
        writer.write(data[3 * OBJECT + MIB:4 * OBJECT])  # ...then 7 MiB to the end of the object
        writer.write(data[4 * OBJECT:5 * OBJECT + 2 * MIB])  # objects 4 and the start of 5
        for start in range(5 * OBJECT + 2 * MIB, len(data), 512 * 1024):
            writer.write(data[start:start + 512 * 1024])

    options = RbdStoreOptions(rbd_store_pool=env["CEPH_POOL"], rbd_store_ceph_conf=env["CEPH_CONF"],
                              rbd_store_user="admin")
    store = RbdStore("direct", options, "test-writer-shapes")
    await store.start()
    image_id = f"writer-shapes-{os.getpid()}-{time.monotonic_ns()}"
    stored = writer = None
    try:
        writer = await store.writer(image_id, len(data))
        await asyncio.to_thread(feed, writer)
        stored = await writer.commit()
        assert stored.size == len(data)
        assert stored.metadata["bytes_written"] == _nonzero_blocks(data, block)
        reader = await store.reader(stored.url)
        try:
            got = b"".join([await asyncio.to_thread(reader.read, off, 4 * MIB) for off in range(0, len(data), 4 * MIB)])
        finally:
            reader.close()
        assert got == data
        assert sorted({off // OBJECT for off, _ in extents(env["CEPH_POOL"], image_id)}) == [0, 1, 3, 4, 5, 6]
    finally:
        if stored is not None:
            await store.delete(stored.url)
        elif writer is not None:
            await writer.abort()
        await store.stop()
    assert image_id not in rbd_images(env["CEPH_POOL"])


# -- faults, with the daemon as a real process ---------------------------------------------------

def daemon_config(op_timeout: str = "30", conf: str | None = None) -> str:
    env = ceph_env()
    return ("enabled_backends = fs:file,ceph:rbd\n[glance_store]\ndefault_backend = ceph\n"
            f"[ceph]\nrbd_store_ceph_conf = {conf or env['CEPH_CONF']}\nrbd_store_pool = {env['CEPH_POOL']}\n"
            f"rados_connect_timeout = 3\nrados_op_timeout = {op_timeout}\n")


def http(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body,
                                     headers={"Accept": "application/json", **MEMBER_A, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def new_image(daemon: Daemon) -> str:
    status, body = http(daemon, "POST", "/v2/images", json.dumps({"disk_format": "raw", "container_format": "bare"}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 201
    return str(body["id"])


def test_kill_9_mid_upload_leaves_nothing_after_restart(tmp_path: Path) -> None:
    import socket

    pool = ceph_env()["CEPH_POOL"]
    daemon = start_daemon(tmp_path, daemon_config())
    image_id = new_image(daemon)
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Project-Id: {MEMBER_A['X-Project-Id']}\r\n"
                  "X-Roles: member\r\nContent-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\r\n").encode())
    sock.sendall(payload(20 * MIB))
    deadline = time.monotonic() + 20
    while not [n for n in rbd_images(pool) if image_id in n]:
        assert time.monotonic() < deadline, "the upload never reached the cluster"
        time.sleep(0.1)
    daemon.process.kill()
    daemon.process.wait()
    sock.close()
    assert [n for n in rbd_images(pool) if image_id in n]  # the half-written image is there...
    restarted = start_daemon(tmp_path, daemon_config())
    try:
        # ...and gone after the restart, once the dead client's watch has expired (osd client
        # watch timeout: 10 s in the test cluster, 30 s by default).
        deadline = time.monotonic() + 60
        while [n for n in rbd_images(pool) if image_id in n]:
            assert time.monotonic() < deadline, "the interrupted upload's RBD image was never removed"
            time.sleep(0.5)
        status, body = http(restarted, "GET", f"/v2/images/{image_id}")
        assert body["status"] == "queued"
        status, _ = http(restarted, "PUT", f"/v2/images/{image_id}/file", payload(MIB), OCTET)
        assert status == 204
    finally:
        stop_daemon(restarted)


def test_cluster_unreachable_at_startup_is_503(tmp_path: Path) -> None:
    env = ceph_env()
    dead_conf = tmp_path / "dead.conf"
    text = Path(env["CEPH_CONF"]).read_text()
    import re

    dead_conf.write_text(re.sub(r"(mon[ _]host\s*=\s*).*", r"\1v2:127.0.0.1:1", text))
    daemon = start_daemon(tmp_path, daemon_config(conf=str(dead_conf)))
    try:
        image_id = new_image(daemon)
        status, body = http(daemon, "PUT", f"/v2/images/{image_id}/file", payload(MIB), OCTET)
        assert status == 503, body
        assert "Ceph" in body["message"]
        assert http(daemon, "GET", f"/v2/images/{image_id}")[1]["status"] == "queued"
    finally:
        stop_daemon(daemon)


def test_cluster_stalls_mid_upload_is_503_and_cleans_up(tmp_path: Path) -> None:
    """The OSD stops answering (SIGSTOP) in the middle of an upload: a real stall, not a fake."""
    import socket

    env = ceph_env()
    pool = env["CEPH_POOL"]
    osd_pid = int((Path(env["STREAMD_TEST_CEPH_DIR"]) / "run" / "osd.0.pid").read_text().strip())
    daemon = start_daemon(tmp_path, daemon_config(op_timeout="3"))
    try:
        image_id = new_image(daemon)
        host, port = daemon.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        total = 40 * MIB
        sock.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                      f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n").encode())
        sock.sendall(payload(10 * MIB))
        deadline = time.monotonic() + 20
        while not [n for n in rbd_images(pool) if image_id in n]:
            assert time.monotonic() < deadline, "the upload never reached the cluster"
            time.sleep(0.1)
        os.kill(osd_pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            sock.settimeout(60)
            try:
                sock.sendall(payload(total - 10 * MIB, 2))
            except OSError:
                pass  # the server may answer and close before reading everything
            reply = sock.recv(65536)
        finally:
            os.kill(osd_pid, signal.SIGCONT)
        # The 503 comes after the first timed-out operation, not after cleanup attempts that would
        # time out too (those go to the background reaper). A single OSD stopped past its read
        # lease (~16 s) can leave its PGs stuck, so a short stall also keeps the cluster healthy.
        print(f"OSD stopped for {time.monotonic() - stopped:.1f} s")
        sock.close()
        assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
        assert b"Ceph" in reply
        assert http(daemon, "GET", f"/v2/images/{image_id}")[1]["status"] == "queued"
        # Once the cluster answers again the partial image is removed, without a restart.
        deadline = time.monotonic() + 60
        while [n for n in rbd_images(pool) if image_id in n]:
            assert time.monotonic() < deadline, "the partial RBD image was not removed"
            time.sleep(0.5)
    finally:
        stop_daemon(daemon)
