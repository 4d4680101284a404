"""The data path's shared worker pools (pipeline/workpool.py) in a real daemon: concurrent
uploads all land whole, the threads stay bounded however many clients there are, an upload
cut off midway frees what it held, and a failing store write fails only its own upload."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from conftest import MEMBER_A, Daemon, free_port, start_daemon, stop_daemon

OCTET = {"Content-Type": "application/octet-stream"}
MiB = 1 << 20


def payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size)


def thread_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            continue  # ended meanwhile
    return names


async def create(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/v2/images", json={"disk_format": "raw", "container_format": "bare"},
                            headers=MEMBER_A) as reply:
        assert reply.status == 201, await reply.text()
        return str((await reply.json())["id"])


async def show(session: aiohttp.ClientSession, base: str, image_id: str) -> dict:
    async with session.get(f"{base}/v2/images/{image_id}", headers=MEMBER_A) as reply:
        assert reply.status == 200
        return dict(await reply.json())


async def upload(session: aiohttp.ClientSession, base: str, image_id: str, data: bytes,
                 store: str | None = None) -> tuple[int, str]:
    headers = {**MEMBER_A, **OCTET, **({"X-Image-Meta-Store": store} if store else {})}
    async with session.put(f"{base}/v2/images/{image_id}/file", data=io.BytesIO(data), headers=headers) as reply:
        return reply.status, await reply.text()


def incoming(store_dir: Path) -> list[str]:
    root = store_dir / ".incoming"
    return [p.name for p in root.iterdir()] if root.exists() else []


@pytest.fixture
def pooled(tmp_path: Path) -> Daemon:
    return start_daemon(tmp_path, "upload_worker_threads = 2\nupload_writer_threads = 3\n"
                                  "upload_buffer_size = 8MB\n")


async def test_concurrent_uploads_land_whole_with_bounded_threads(pooled: Daemon) -> None:
    base, pid = pooled.url, pooled.process.pid
    try:
        async with aiohttp.ClientSession() as session:
            datas = [payload(24 * MiB + n * 4099, seed=n) for n in range(8)]
            ids = [await create(session, base) for _ in datas]
            before = thread_names(pid)
            peak: list[str] = before
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    names = thread_names(pid)
                    if len(names) > len(peak):
                        peak = names
                    await asyncio.sleep(0.01)

            sampler = asyncio.create_task(sample())
            results = await asyncio.gather(*(upload(session, base, i, d) for i, d in zip(ids, datas)))
            sampling = False
            await sampler
            assert [status for status, _ in results] == [204] * 8, results
            for image_id, data in zip(ids, datas):
                shown = await show(session, base, image_id)
                assert shown["status"] == "active"
                assert shown["size"] == len(data)
                assert shown["checksum"] == hashlib.md5(data).hexdigest()
                assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
                async with session.get(f"{base}/v2/images/{image_id}/file", headers=MEMBER_A) as reply:
                    assert await reply.read() == data
    finally:
        stop_daemon(pooled)
    # The hashing and the writes of all 8 uploads ran on the pools' threads, never more than configured.
    assert 1 <= sum(1 for n in peak if n.startswith("hash-pool")) <= 2, peak
    assert 1 <= sum(1 for n in peak if n.startswith("write-pool")) <= 3, peak
    # No threads per request: 8 uploads with 2 consumers each and a writer would have added 24. The
    # socket readers (one read at a time per connection with bytes waiting) are one bounded pool.
    assert sum(1 for n in peak if n.startswith("socketcopy")) <= 8, peak
    others = [n for n in peak if not n.startswith(("hash-pool", "write-pool", "socketcopy"))]
    assert len(others) <= len(before) + 8, (before, peak)


async def test_upload_cut_off_midway_frees_its_share_of_the_pools(tmp_path: Path) -> None:
    metrics_port = free_port()
    daemon = start_daemon(tmp_path, f"upload_worker_threads = 1\n[metrics]\nenabled = true\n"
                                    f"bind_port = {metrics_port}\n")
    store_dir = daemon.data_dir / "images" / "fs"
    try:
        async with aiohttp.ClientSession() as session:
            image_id = await create(session, daemon.url)
            host, port = daemon.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                          f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n"
                          "Content-Type: application/octet-stream\r\nContent-Length: 209715200\r\n\r\n").encode())
            for n in range(24):
                writer.write(payload(MiB, seed=n))
                await writer.drain()
            for _ in range(200):
                if (await show(session, daemon.url, image_id))["status"] == "saving":
                    break
                await asyncio.sleep(0.02)
            writer.transport.abort()
            for _ in range(400):
                status = (await show(session, daemon.url, image_id))["status"]
                if status == "queued" and not incoming(store_dir):
                    break
                await asyncio.sleep(0.025)
            assert status == "queued"
            assert incoming(store_dir) == [] and not (store_dir / image_id).exists()
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
                text = await reply.text()
            queued = re.search(r"^streamd_data_path_queued_bytes (\S+)$", text, re.M)
            assert queued is not None, text[:2000]
            assert float(queued.group(1)) == 0.0
            # The pools serve the next uploads as before (a single hash thread: nothing left busy on it).
            again = payload(12 * MiB, seed=99)
            assert (await upload(session, daemon.url, image_id, again))[0] == 204
            shown = await show(session, daemon.url, image_id)
            assert shown["status"] == "active" and shown["checksum"] == hashlib.md5(again).hexdigest()
    finally:
        stop_daemon(daemon)


async def test_failing_store_write_fails_only_its_own_upload(tmp_path: Path) -> None:
    """A 2 MiB tmpfs as a second file store (needs root, as in CI): the upload into it runs out
    of space midway while three others into the main store, sharing the same hash threads, land."""
    small = tmp_path / "small"
    small.mkdir()
    assert os.system(f"mount -t tmpfs -o size=2m tmpfs {small}") == 0, "mounting a tmpfs needs root"
    try:
        daemon = start_daemon(tmp_path, "upload_writer_threads = 1\nenabled_backends = fs:file, small:file\n"
                                        f"[glance_store]\ndefault_backend = fs\n"
                                        f"[small]\nfilesystem_store_datadir = {small}\n")
        try:
            async with aiohttp.ClientSession() as session:
                datas = [payload(16 * MiB, seed=n) for n in range(3)]
                ids = [await create(session, daemon.url) for _ in range(4)]
                results = await asyncio.gather(
                    upload(session, daemon.url, ids[0], payload(8 * MiB, seed=7), store="small"),
                    *(upload(session, daemon.url, i, d) for i, d in zip(ids[1:], datas)))
                (status, body), *others = results
                assert status == 413 and "space" in body, body
                assert [s for s, _ in others] == [204] * 3, others
                assert (await show(session, daemon.url, ids[0]))["status"] == "queued"
                assert incoming(small) == []
                for image_id, data in zip(ids[1:], datas):
                    shown = await show(session, daemon.url, image_id)
                    assert shown["status"] == "active"
                    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        finally:
            stop_daemon(daemon)
    finally:
        os.system(f"umount {small}")


async def test_abort_waits_for_the_running_job_and_skips_the_queued() -> None:
    """FanOut.abort returns only once no consumer runs (its file descriptor may then be closed);
    what was queued behind is never run, and the pools' queue is given back."""
    import threading

    from streamd.pipeline.fanout import FanOut
    from streamd.pipeline.workpool import WorkPools

    pools = WorkPools(1, 1)
    try:
        started, release = threading.Event(), threading.Event()
        seen: list[bytes] = []

        def slow_write(piece: bytes) -> None:
            started.set()
            release.wait(10)
            seen.append(piece)

        fanout = FanOut([hashlib.md5().update], [("slow", slow_write)], max_inflight=1 << 30, pools=pools)
        for n in range(3):
            await fanout.feed_many([bytes([n]) * 10])
        assert pools.queued == 30
        await asyncio.to_thread(started.wait, 10)
        aborting = asyncio.create_task(fanout.abort())
        await asyncio.sleep(0.1)
        assert not aborting.done()  # the first write is still running
        release.set()
        await asyncio.wait_for(aborting, 10)
        assert seen == [bytes([0]) * 10]
        assert pools.queued == 0
        # Other streams go on on the same threads.
        other: list[bytes] = []
        again = FanOut([], [("slow", other.append)], pools=pools)
        await again.feed_many([b"a", b"b"])
        await again.close()
        assert other == [b"a", b"b"]
    finally:
        pools.shutdown()


async def test_a_batch_settles_once_all_its_consumers_ran_and_with_the_first_error() -> None:
    """Each batch's consumers report to the loop once, together: a batch with no consumer at all
    (every store refused the image before its first byte) settles at once, and a failing consumer's
    error reaches the stream once the batch's other consumers are done with it."""
    from streamd.pipeline.fanout import FanOut
    from streamd.pipeline.workpool import WorkPools

    pools = WorkPools(2, 1)
    try:
        nobody = FanOut([], [], max_inflight=1, pools=pools)
        for _ in range(3):
            await asyncio.wait_for(nobody.feed_many([b"x" * 10]), 10)
        await asyncio.wait_for(nobody.close(), 10)
        assert pools.queued == 0

        hashed: list[int] = []

        def broken_write(piece: bytes) -> None:
            raise OSError(28, "No space left on device")

        failing = FanOut([lambda piece: hashed.append(len(piece))], [("full", broken_write)],
                         max_inflight=1, pools=pools)
        with pytest.raises(OSError, match="No space left"):
            for _ in range(3):
                await asyncio.wait_for(failing.feed_many([b"y" * 10]), 10)
            await asyncio.wait_for(failing.close(), 10)
        assert hashed and hashed[0] == 10
    finally:
        pools.shutdown()


async def test_a_stalled_source_does_not_hold_its_bytes_back_while_the_consumers_are_busy() -> None:
    """A piece that arrives while the consumers are busy waits for more only as long as they stay
    busy: once they are done it is handed on, though the source sends nothing more (a web-download
    or a client that stalls keeps nothing back from the store)."""
    import threading

    from streamd.pipeline.fanout import FanOut
    from streamd.pipeline.ingest import _batches
    from streamd.pipeline.workpool import WorkPools

    pools = WorkPools(1, 1)
    second_ready, never = asyncio.Event(), asyncio.Event()
    release = threading.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b"first"
        await second_ready.wait()
        yield b"second"
        await never.wait()  # the source stalls for good

    def slow_write(piece: bytes) -> None:
        release.wait(10)

    try:
        fanout = FanOut([], [("slow", slow_write)], max_inflight=1 << 30, pools=pools)
        batches = _batches(source(), 1 << 30, fanout.busy_until)
        try:
            assert await asyncio.wait_for(batches.__anext__(), 10) == [b"first"]
            await fanout.feed_many([b"first"])  # the writer is now busy with it
            second_ready.set()
            asyncio.get_running_loop().call_later(0.2, release.set)
            assert await asyncio.wait_for(batches.__anext__(), 10) == [b"second"]
            assert release.is_set()  # handed on once the writer was done, not before
        finally:
            await batches.aclose()
            release.set()
            await fanout.close()
    finally:
        pools.shutdown()
