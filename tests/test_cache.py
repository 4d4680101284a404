"""The image cache in process: real files under image_cache_dir, real HTTP on a loopback port.

Fills, hits, ranges from the cache, single flight under concurrency (with late joiners
that catch up from the partial file), LRU pruning, the cleaner, prefetch, Glance's
/v2/cache quirks and legacy routes, admin-only access, and cache faults (a file whose
size changed, a full disk) that never break a download.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from conftest import ADMIN, MEMBER_A, MEMBER_B, READER_A, ApiClient, make_config, start_api
from streamd.api.keys import SERVICES
from streamd.cache import ImageCache
from streamd.stores.base import Reader

MiB = 1 << 20
OCTET = {"Content-Type": "application/octet-stream"}


def payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size)


class Api:
    """One in-process server and what the tests look at inside it."""

    def __init__(self, server: TestServer, client: ApiClient, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.client = client
        self.session = session

    @property
    def cache(self) -> ImageCache:
        return self.server.app[SERVICES].cache

    @property
    def cache_dir(self) -> Path:
        return self.cache.directory

    def store_reads(self) -> int:
        return sum(self.server.app[SERVICES].delivery.store_reads.values())

    async def call(self, method: str, path: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        return await self.client.call(method, path, **kwargs)

    async def image(self, data: bytes, as_: dict[str, str] = MEMBER_A) -> str:
        image = await self.client.create(as_=as_)
        reply = await self.call("PUT", f"/v2/images/{image['id']}/file", as_=as_, data=data, headers=OCTET)
        assert reply.status == 204, reply.body
        return str(image["id"])

    async def get(self, image_id: str, headers: dict[str, str] | None = None, as_: dict[str, str] = MEMBER_A):
        return await self.call("GET", f"/v2/images/{image_id}/file", as_=as_, headers=headers)

    async def get_settled(self, image_id: str, headers: dict[str, str] | None = None):
        """GET, then wait for the fill it started (if any) to be committed or aborted: the client
        has every byte as soon as the fill has written it, before the fill is fsynced and renamed."""
        reply = await self.get(image_id, headers)
        await wait_for(lambda: _no_fills(self))
        return reply

    async def state(self) -> dict[str, Any]:
        reply = await self.call("GET", "/v2/cache", as_=ADMIN)
        assert reply.status == 200, reply.body
        return reply.json  # type: ignore[no-any-return]

    async def cached_ids(self) -> list[str]:
        return sorted(e["image_id"] for e in (await self.state())["cached_images"])

    def files(self) -> list[str]:
        """Whole cached files on disk (not the index, not the subdirectories)."""
        return sorted(p.name for p in self.cache_dir.iterdir() if p.is_file() and len(p.name) == 36)

    def partial_files(self) -> list[str]:
        return sorted(p.name for p in (self.cache_dir / "incomplete").iterdir())

    def invalid_files(self) -> list[str]:
        return sorted(p.name for p in (self.cache_dir / "invalid").iterdir())

    def store_path(self, image_id: str) -> Path:
        return self.client.config.data_dir / "images" / "fs" / image_id

    def slow_down_store(self, delay: float, open_delay: float = 0.0) -> None:
        """Make every read of the file store take ``delay`` seconds longer, and opening it ``open_delay``
        (a remote backend such as RBD, where opening an image is a round trip): a slow store, for real."""
        store = self.server.app[SERVICES].stores.get(None)
        original = store.reader

        async def reader(url: str) -> Reader:
            await asyncio.sleep(open_delay)
            return SlowReader(await original(url), delay)

        store.reader = reader  # type: ignore[method-assign]


class SlowReader(Reader):
    def __init__(self, inner: Reader, delay: float) -> None:
        self.inner = inner
        self.size = inner.size
        self.delay = delay

    def read(self, offset: int, length: int) -> bytes:
        time.sleep(self.delay)
        return self.inner.read(offset, length)

    def close(self) -> None:
        self.inner.close()


async def open_api(tmp_path: Path, **default: str) -> Api:
    config = make_config(tmp_path, None, DEFAULT={"cache_prefetcher_interval": "0",
                                                  "image_cache_maintenance_interval": "0", **default})
    return Api(*await start_api(config))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await open_api(tmp_path)
    try:
        yield a
    finally:
        await a.session.close()
        await a.server.close()


async def close(a: Api) -> None:
    await a.session.close()
    await a.server.close()


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(step)


# -- fills and hits ----------------------------------------------------------------------------------

async def test_first_get_fills_second_is_a_hit(api: Api) -> None:
    data = payload(5 * MiB + 123, 1)
    image_id = await api.image(data)
    assert api.files() == [] and await api.cached_ids() == []
    first = await api.get_settled(image_id)
    assert first.status == 200 and first.body == data
    assert api.store_reads() == 1
    # The file is in place, whole and verified, and listed.
    assert (api.cache_dir / image_id).read_bytes() == data
    assert api.partial_files() == [] and api.invalid_files() == []
    entry = await api.cache.entry(image_id)
    assert entry is not None and entry.verified_at is not None
    assert entry.checksum == hashlib.md5(data).hexdigest()
    assert entry.os_hash_value == hashlib.sha512(data).hexdigest()
    [listed] = (await api.state())["cached_images"]
    assert listed["image_id"] == image_id and listed["size"] == len(data) and listed["hits"] == 0
    # A hit: no store read, same bytes and headers, the hit counted.
    second = await api.get(image_id)
    assert second.status == 200 and second.body == data
    assert second.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    assert second.headers["Content-Length"] == str(len(data))
    assert api.store_reads() == 1
    [listed] = (await api.state())["cached_images"]
    assert listed["hits"] == 1 and listed["last_accessed"] >= listed["last_modified"]
    # Even with the store's copy gone, the cache serves it.
    api.store_path(image_id).unlink()
    third = await api.get(image_id)
    assert third.status == 200 and third.body == data


async def test_ranges_are_served_from_the_cache(api: Api) -> None:
    size = 3 * MiB + 7
    data = payload(size, 2)
    image_id = await api.image(data)
    # A cold Range request is answered correctly and fills the cache.
    cold = await api.get(image_id, {"Range": "bytes=100-199"})
    assert cold.status == 206 and cold.body == data[100:200]
    await wait_for(lambda: _is_cached(api, image_id))
    reads = api.store_reads()
    api.store_path(image_id).unlink()  # from here on, only the cache can answer
    for header, first, last in [("bytes=0-99", 0, 99), ("bytes=1048570-2097160", 1048570, 2097160),
                                ("bytes=-500", size - 500, size - 1), (f"bytes={size - 10}-", size - 10, size - 1),
                                (f"bytes=5-{size * 2}", 5, size - 1)]:
        reply = await api.get(image_id, {"Range": header})
        assert reply.status == 206, (header, reply.body)
        assert reply.body == data[first:last + 1], header
        assert reply.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert reply.headers["Content-Length"] == str(last - first + 1)
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
        reply = await api.get(image_id, {"Range": header})
        assert reply.status == 416, header
        assert reply.headers["Content-Range"] == f"bytes */{size}"
    whole = await api.get(image_id)
    assert whole.status == 200 and whole.body == data
    assert api.store_reads() == reads
    [listed] = (await api.state())["cached_images"]
    assert listed["hits"] >= 6


async def _is_cached(api: Api, image_id: str) -> bool:
    return image_id in await api.cached_ids()


# -- single flight -------------------------------------------------------------------------------------

async def _download(session: aiohttp.ClientSession, url: str) -> tuple[int, str, int]:
    async with session.get(url, headers=MEMBER_A) as resp:
        digest = hashlib.sha256()
        count = 0
        async for chunk in resp.content.iter_chunked(1 << 18):
            digest.update(chunk)
            count += len(chunk)
        return resp.status, digest.hexdigest(), count


async def test_single_flight_50_concurrent_cold_gets_read_the_store_once(api: Api) -> None:
    size = 12 * MiB + 5
    data = payload(size, 3)
    want = hashlib.sha256(data).hexdigest()
    image_id = await api.image(data)
    api.slow_down_store(0.04, open_delay=0.05)  # ~0.5 s for the fill: late joiners arrive while it runs
    url = f"{api.client.base}/v2/images/{image_id}/file"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        first_wave = [asyncio.create_task(_download(session, url)) for _ in range(30)]
        # Late joiners: once the fill has written part of the image, but not all of it.
        fill = await wait_for(lambda: _fill_past(api, image_id, 3 * MiB), step=0.005)
        late_wave = [asyncio.create_task(_download(session, url)) for _ in range(20)]
        await asyncio.sleep(0)
        assert not fill.finished and fill.written < size, "the late joiners came too late to test anything"
        results = await asyncio.gather(*first_wave, *late_wave)
    assert [r for r in results if r != (200, want, size)] == []
    assert api.store_reads() == 1, dict(api.server.app[SERVICES].delivery.store_reads)
    await wait_for(lambda: _no_fills(api))
    assert await api.cached_ids() == [image_id]
    assert (api.cache_dir / image_id).read_bytes() == data
    assert api.partial_files() == [] and api.cache.fills == {}
    # Afterwards, hits: still one store read.
    again = await asyncio.gather(*(api.get(image_id) for _ in range(5)))
    assert all(r.status == 200 and r.body == data for r in again)
    assert api.store_reads() == 1


async def test_direct_io_fills_and_hits_serve_the_same_bytes(tmp_path: Path) -> None:
    """image_cache_direct_io: the fill is written with O_DIRECT (a size that is no multiple of the
    alignment, pieces of the store's shape), its followers and later hits read it with O_DIRECT
    (whole image and unaligned ranges), and the cached file is exactly the image."""
    api = await open_api(tmp_path, image_cache_direct_io="true")
    try:
        size = 12 * MiB + 4097
        data = payload(size, 13)
        want = hashlib.sha256(data).hexdigest()
        image_id = await api.image(data)
        api.slow_down_store(0.04)
        url = f"{api.client.base}/v2/images/{image_id}/file"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            first_wave = [asyncio.create_task(_download(session, url)) for _ in range(5)]
            fill = await wait_for(lambda: _fill_past(api, image_id, 3 * MiB), step=0.005)
            assert fill.direct_io and not fill.finished
            late = [asyncio.create_task(_download(session, url)) for _ in range(5)]
            ranges = await asyncio.gather(api.get(image_id, {"Range": f"bytes={MiB + 1}-{2 * MiB + 2}"}),
                                          api.get(image_id, {"Range": "bytes=-5"}))
            results = await asyncio.gather(*first_wave, *late)
        assert results == [(200, want, size)] * 10
        assert [r.body for r in ranges] == [data[MiB + 1:2 * MiB + 3], data[-5:]]
        await wait_for(lambda: _no_fills(api))
        assert (api.cache_dir / image_id).read_bytes() == data  # the last block's padding is cut off
        assert api.store_reads() == 1
        hit = await api.get(image_id)
        assert hit.status == 200 and hit.body == data
        part = await api.get(image_id, {"Range": f"bytes={5 * MiB - 3}-{9 * MiB + 11}"})
        assert part.status == 206 and part.body == data[5 * MiB - 3:9 * MiB + 12]
        assert api.store_reads() == 1
    finally:
        await close(api)


async def _fill_past(api: Api, image_id: str, offset: int):  # type: ignore[no-untyped-def]
    fill = api.cache.fills.get(image_id)
    return fill if fill is not None and fill.written >= offset else None


async def test_a_range_joining_a_fill_gets_its_bytes(api: Api) -> None:
    size = 8 * MiB
    data = payload(size, 4)
    image_id = await api.image(data)
    api.slow_down_store(0.04)
    whole = asyncio.create_task(api.get(image_id))
    await wait_for(lambda: _fill_past(api, image_id, 1), step=0.005)
    ranges = await asyncio.gather(api.get(image_id, {"Range": "bytes=0-9"}),
                                  api.get(image_id, {"Range": f"bytes={6 * MiB}-{6 * MiB + 99}"}),
                                  api.get(image_id, {"Range": "bytes=-3"}))
    assert [r.body for r in ranges] == [data[:10], data[6 * MiB:6 * MiB + 100], data[-3:]]
    assert all(r.status == 206 for r in ranges)
    assert (await whole).body == data
    assert api.store_reads() == 1


# -- LRU pruning -----------------------------------------------------------------------------------------

async def test_lru_pruning_keeps_the_cache_under_its_limit(tmp_path: Path) -> None:
    limit = 3 * MiB
    api = await open_api(tmp_path, image_cache_max_size=str(limit))
    try:
        data = {name: payload(MiB, seed) for seed, name in enumerate("ABCDE", 10)}
        ids = {name: await api.image(blob) for name, blob in data.items()}

        async def get(name: str) -> None:
            reply = await api.get_settled(ids[name])
            assert reply.status == 200 and reply.body == data[name]
            on_disk = sum((api.cache_dir / f).stat().st_size for f in api.files())
            assert on_disk <= limit and api.cache.index is not None and api.cache.index.total_size() <= limit

        def cached() -> set[str]:
            return {name for name, i in ids.items() if (api.cache_dir / i).exists()}

        for name in "ABC":
            await get(name)
        assert cached() == {"A", "B", "C"}
        await get("A")  # A is now the most recently used
        await get("D")  # evicts B, the least recently accessed
        assert cached() == {"A", "C", "D"}
        await get("C")
        await get("E")  # evicts A
        assert cached() == {"C", "D", "E"}
        assert set(await api.cached_ids()) == {ids[n] for n in "CDE"}
        # An evicted image is read from the store again, and cached again (evicting D now).
        reads = api.store_reads()
        await get("B")
        assert api.store_reads() == reads + 1 and cached() == {"C", "E", "B"}
        # An image larger than the whole cache is served, never cached, and evicts nothing.
        big = payload(limit + 1, 20)
        big_id = await api.image(big)
        for _ in range(2):
            reply = await api.get(big_id)
            assert reply.status == 200 and reply.body == big
        assert not (api.cache_dir / big_id).exists() and cached() == {"C", "E", "B"}
        prune = await api.call("POST", "/v2/cache/prune", as_=ADMIN)
        assert prune.status == 200 and prune.json == {"total_files_pruned": 0, "total_bytes_pruned": 0}
    finally:
        await close(api)
    # The index survives a restart; with a smaller limit, the pruner evicts the least recently used.
    api = await open_api(tmp_path, image_cache_max_size=str(2 * MiB))
    try:
        entries = {e["image_id"]: e for e in (await api.state())["cached_images"]}
        assert set(entries) == {ids[n] for n in "CEB"} and entries[ids["C"]]["hits"] == 1
        prune = await api.call("POST", "/v2/cache/prune", as_=ADMIN)
        assert prune.status == 200 and prune.json == {"total_files_pruned": 1, "total_bytes_pruned": MiB}
        assert set(await api.cached_ids()) == {ids["E"], ids["B"]}
        assert api.files() == sorted([ids["E"], ids["B"]])
    finally:
        await close(api)


# -- the cleaner -----------------------------------------------------------------------------------------

async def test_cleaner_removes_stalled_partials_and_invalid_fills(tmp_path: Path) -> None:
    api = await open_api(tmp_path, image_cache_stall_time="60")
    try:
        # A real failed fill: the store's copy is corrupt (same size), so the fill fails verification.
        data = payload(2 * MiB, 30)
        image_id = await api.image(data)
        with open(api.store_path(image_id), "r+b") as f:
            f.seek(MiB)
            f.write(bytes(b ^ 0xFF for b in data[MiB:MiB + 16]))
        await api.get(image_id)
        await wait_for(lambda: _no_fills(api))
        assert await api.cached_ids() == [] and api.files() == []
        assert api.invalid_files() == sorted([image_id, f"{image_id}.reason"])
        assert "checksum" in (api.cache_dir / "invalid" / f"{image_id}.reason").read_text()
        # Partial fills nobody is writing: one stalled for two minutes, one fresh.
        stalled, fresh = str(uuid.uuid4()), str(uuid.uuid4())
        for name in (stalled, fresh):
            (api.cache_dir / "incomplete" / name).write_bytes(b"partial")
        past = time.time() - 120
        os.utime(api.cache_dir / "incomplete" / stalled, (past, past))
        reply = await api.call("POST", "/v2/cache/clean", as_=ADMIN)
        assert reply.status == 200 and reply.json == {"total_files_cleaned": 2}
        assert api.partial_files() == [fresh] and api.invalid_files() == []
        again = await api.call("POST", "/v2/cache/clean", as_=ADMIN)
        assert again.json == {"total_files_cleaned": 0} and api.partial_files() == [fresh]
    finally:
        await close(api)


async def _no_fills(api: Api) -> bool:
    return not api.cache.fills


async def test_maintenance_runs_by_itself(tmp_path: Path) -> None:
    api = await open_api(tmp_path, image_cache_stall_time="30", image_cache_maintenance_interval="0.2")
    try:
        stalled, fresh = str(uuid.uuid4()), str(uuid.uuid4())
        for name in (stalled, fresh):
            (api.cache_dir / "incomplete" / name).write_bytes(b"x")
        past = time.time() - 60
        os.utime(api.cache_dir / "incomplete" / stalled, (past, past))
        (api.cache_dir / "invalid" / stalled).write_bytes(b"y")

        async def swept() -> bool:
            return api.partial_files() == [fresh] and api.invalid_files() == []

        await wait_for(swept, timeout=5)
    finally:
        await close(api)


async def test_scheduled_verification_evicts_a_corrupted_file(tmp_path: Path) -> None:
    api = await open_api(tmp_path, image_cache_maintenance_interval="0.2", image_cache_verify_interval="0.3")
    try:
        data = payload(2 * MiB, 35)
        image_id = await api.image(data)
        await api.get_settled(image_id)
        path = api.cache_dir / image_id
        with open(path, "r+b") as f:  # same size: only a checksum finds it
            f.seek(MiB)
            f.write(bytes(b ^ 0x55 for b in data[MiB:MiB + 8]))

        async def evicted() -> bool:
            return not path.exists() and await api.cached_ids() == []

        await wait_for(evicted, timeout=5)  # (its copy in invalid/ goes at the next clean, in the same job)
        reads = api.store_reads()
        assert (await api.get_settled(image_id)).body == data
        assert api.store_reads() == reads + 1 and path.read_bytes() == data
    finally:
        await close(api)


# -- prefetch ----------------------------------------------------------------------------------------------

async def test_put_cache_queues_and_caches_right_away(api: Api) -> None:
    data = payload(3 * MiB, 40)
    image_id = await api.image(data)
    started = time.monotonic()
    reply = await api.call("PUT", f"/v2/cache/{image_id}", as_=ADMIN)
    assert reply.status == 202 and reply.body == b""

    async def done() -> bool:
        state = await api.state()
        return [e["image_id"] for e in state["cached_images"]] == [image_id] and state["queued_images"] == []

    await wait_for(done, timeout=5)
    assert time.monotonic() - started < 5  # the prefetcher's own interval is off here: this was immediate
    assert (api.cache_dir / image_id).read_bytes() == data
    reads = api.store_reads()
    assert (await api.get(image_id)).body == data and api.store_reads() == reads
    # Queueing a cached image again is accepted and changes nothing.
    assert (await api.call("PUT", f"/v2/cache/{image_id}", as_=ADMIN)).status == 202
    await wait_for(lambda: _queue_is(api, []))
    assert api.store_reads() == reads
    # Only active images: queued (no data) and deactivated ones are refused; unknown ones are 404.
    queued = await api.client.create()
    assert (await api.call("PUT", f"/v2/cache/{queued['id']}", as_=ADMIN)).status == 400
    deactivated = await api.image(payload(10, 41))
    assert (await api.call("POST", f"/v2/images/{deactivated}/actions/deactivate", as_=ADMIN)).status == 204
    assert (await api.call("PUT", f"/v2/cache/{deactivated}", as_=ADMIN)).status == 400
    assert (await api.call("PUT", f"/v2/cache/{uuid.uuid4()}", as_=ADMIN)).status == 404
    assert (await api.call("PUT", "/v2/cache/not-a-uuid", as_=ADMIN)).status == 404
    state = await api.state()
    assert state["queued_images"] == [] and [e["image_id"] for e in state["cached_images"]] == [image_id]


async def _queue_is(api: Api, expected: list[str]) -> bool:
    return (await api.state())["queued_images"] == expected


async def test_periodic_prefetcher_caches_active_and_drops_deleted(tmp_path: Path) -> None:
    api = await open_api(tmp_path, cache_prefetcher_interval="0.5")
    try:
        active = await api.image(payload(MiB, 50))
        held = await api.image(payload(MiB, 51))
        assert (await api.call("POST", f"/v2/images/{held}/actions/deactivate", as_=ADMIN)).status == 204
        # The legacy route queues without fetching; the periodic prefetcher does the rest.
        for image_id in (active, held):
            assert (await api.call("PUT", f"/v2/queued_images/{image_id}", as_=ADMIN)).status == 200
        await wait_for(lambda: _queue_is(api, [held]), timeout=5)
        assert await api.cached_ids() == [active]
        await asyncio.sleep(1.2)  # two more runs: a deactivated image stays queued and uncached
        assert await _queue_is(api, [held]) and await api.cached_ids() == [active]
        # A deleted image leaves the queue at the next run.
        assert (await api.call("DELETE", f"/v2/images/{held}", as_=ADMIN)).status == 204
        await wait_for(lambda: _queue_is(api, []), timeout=5)
        assert await api.cached_ids() == [active] and api.files() == [active]
    finally:
        await close(api)


# -- Glance's routes and quirks ---------------------------------------------------------------------------

async def _prepare(api: Api) -> tuple[str, str]:
    """One image cached, one queued (the prefetcher's interval is off: it stays queued)."""
    cached = await api.image(payload(1000, 60))
    queued = await api.image(payload(1000, 61))
    assert (await api.get_settled(cached)).status == 200
    assert (await api.call("PUT", f"/v2/queued_images/{queued}", as_=ADMIN)).status == 200
    state = await api.state()
    assert [e["image_id"] for e in state["cached_images"]] == [cached] and state["queued_images"] == [queued]
    return cached, queued


async def test_cache_state_and_clear_targets(api: Api) -> None:
    cached, queued = await _prepare(api)
    [entry] = (await api.state())["cached_images"]
    assert set(entry) == {"image_id", "hits", "last_accessed", "last_modified", "size"}
    assert entry["size"] == 1000
    # 'both' is refused, as Glance does (its client sends no header for both); so is anything else.
    for target in ("both", "all", "nonsense"):
        reply = await api.call("DELETE", "/v2/cache", as_=ADMIN, headers={"x-image-cache-clear-target": target})
        assert reply.status == 400, target
    assert await api.cached_ids() == [cached] and await _queue_is(api, [queued])
    reply = await api.call("DELETE", "/v2/cache", as_=ADMIN, headers={"x-image-cache-clear-target": "cache"})
    assert reply.status == 204 and reply.body == b""
    assert await api.cached_ids() == [] and await _queue_is(api, [queued]) and api.files() == []
    await api.get_settled(cached)
    reply = await api.call("DELETE", "/v2/cache", as_=ADMIN, headers={"x-image-cache-clear-target": "QUEUE"})
    assert reply.status == 204
    assert await api.cached_ids() == [cached] and await _queue_is(api, [])
    assert (await api.call("PUT", f"/v2/queued_images/{queued}", as_=ADMIN)).status == 200
    reply = await api.call("DELETE", "/v2/cache", as_=ADMIN)  # no header: both
    assert reply.status == 204
    assert await api.cached_ids() == [] and await _queue_is(api, []) and api.files() == []
    # DELETE /v2/cache/{id}: from the cache, from the queue, 404 when in neither.
    cached, queued = await _prepare(api)
    assert (await api.call("DELETE", f"/v2/cache/{cached}", as_=ADMIN)).status == 204
    assert await api.cached_ids() == [] and not (api.cache_dir / cached).exists()
    assert (await api.call("DELETE", f"/v2/cache/{queued}", as_=ADMIN)).status == 204
    assert await _queue_is(api, [])
    for image_id in (cached, queued, str(uuid.uuid4())):
        assert (await api.call("DELETE", f"/v2/cache/{image_id}", as_=ADMIN)).status == 404
    # prune and clean (2.18), also under a versioned prefix.
    reply = await api.call("POST", "/v2.18/cache/prune", as_=ADMIN)
    assert reply.status == 200 and reply.json == {"total_files_pruned": 0, "total_bytes_pruned": 0}
    reply = await api.call("POST", "/v2.18/cache/clean", as_=ADMIN)
    assert reply.status == 200 and reply.json == {"total_files_cleaned": 0}
    assert (await api.call("GET", "/v2.14/cache", as_=ADMIN)).status == 200


async def test_deleting_an_image_purges_its_cached_file(api: Api) -> None:
    image_id = await api.image(payload(1000, 65))
    await api.get_settled(image_id)
    assert api.files() == [image_id]
    assert (await api.call("DELETE", f"/v2/images/{image_id}", as_=MEMBER_A)).status == 204
    assert api.files() == [] and await api.cached_ids() == []
    assert (await api.get(image_id)).status == 404


async def test_an_image_deleted_during_its_fill_is_not_cached(api: Api) -> None:
    data = payload(6 * MiB, 66)
    image_id, other = await api.image(data), await api.image(data[:3 * MiB])
    api.slow_down_store(0.1)
    reading = asyncio.create_task(api.get(image_id))
    await wait_for(lambda: _fill_past(api, image_id, 1), step=0.005)
    assert (await api.call("DELETE", f"/v2/images/{image_id}", as_=MEMBER_A)).status == 204
    reply = await reading
    assert reply.status == 200 and reply.body == data  # the client that was reading still gets it all
    await wait_for(lambda: _no_fills(api))
    assert await api.cached_ids() == [] and api.files() == [] and api.partial_files() == []
    # The same through the cache API: DELETE /v2/cache/{id} of an image being filled.
    reading = asyncio.create_task(api.get(other))
    # Its 3 MiB come in one read of the slowed store: the fill is caught while that read waits (once
    # the bytes are in, the commit may follow within one poll).
    await wait_for(lambda: _fill_past(api, other, 0), step=0.005)
    assert (await api.call("DELETE", f"/v2/cache/{other}", as_=ADMIN)).status == 204
    assert (await reading).body == data[:3 * MiB]
    await wait_for(lambda: _no_fills(api))
    assert await api.cached_ids() == [] and api.files() == []
    # Asked for again, it is cached as usual.
    assert (await api.get_settled(other)).body == data[:3 * MiB]
    assert await api.cached_ids() == [other]


async def test_legacy_routes(api: Api) -> None:
    cached, queued = await _prepare(api)
    listed = await api.call("GET", "/v2/cached_images", as_=ADMIN)
    assert listed.status == 200 and [e["image_id"] for e in listed.json["cached_images"]] == [cached]
    assert set(listed.json) == {"cached_images"}
    reply = await api.call("GET", "/v2/queued_images", as_=ADMIN)
    assert reply.status == 200 and reply.json == {"queued_images": [queued]}
    assert (await api.call("PUT", f"/v2/queued_images/{uuid.uuid4()}", as_=ADMIN)).status == 404
    assert (await api.call("PUT", "/v2/queued_images/nope", as_=ADMIN)).status == 404
    assert (await api.call("DELETE", f"/v2/queued_images/{queued}", as_=ADMIN)).status == 200
    assert (await api.call("DELETE", f"/v2/queued_images/{queued}", as_=ADMIN)).status == 404
    assert (await api.call("PUT", f"/v2/queued_images/{queued}", as_=ADMIN)).status == 200
    assert (await api.call("PUT", f"/v2/queued_images/{cached}", as_=ADMIN)).status == 200
    reply = await api.call("DELETE", "/v2/queued_images", as_=ADMIN)
    assert reply.status == 200 and reply.json == {"num_deleted": 2}
    assert await _queue_is(api, [])
    assert (await api.call("DELETE", f"/v2/cached_images/{cached}", as_=ADMIN)).status == 204
    assert (await api.call("DELETE", f"/v2/cached_images/{cached}", as_=ADMIN)).status == 404
    assert api.files() == []
    for image_id in (cached, queued):
        await api.get_settled(image_id)
    reply = await api.call("DELETE", "/v2/cached_images", as_=ADMIN)
    assert reply.status == 200 and reply.json == {"num_deleted": 2}
    assert await api.cached_ids() == [] and api.files() == []


def _cache_routes(server: TestServer, image_id: str) -> list[tuple[str, str]]:
    """Every route the cache module serves, with a concrete path (checked against the router)."""
    from streamd.api import cache as cache_module

    routes = []
    for route in server.app.router.routes():
        handler = getattr(route, "handler", None)
        if getattr(handler, "__module__", None) != cache_module.__name__:
            continue
        template = route.resource.canonical  # type: ignore[union-attr]
        if not template.startswith("/{version}"):
            continue  # the unprefixed twin of a route, for media-type versioning
        path = template.replace("{version}", "v2").replace("{image_id}", image_id)
        routes.append((route.method, path))
    return sorted(routes)


EXPECTED_ROUTES = {
    ("GET", "/v2/cache"), ("DELETE", "/v2/cache"), ("POST", "/v2/cache/clean"), ("POST", "/v2/cache/prune"),
    ("PUT", "/v2/cache/{id}"), ("DELETE", "/v2/cache/{id}"), ("GET", "/v2/cached_images"),
    ("DELETE", "/v2/cached_images"), ("DELETE", "/v2/cached_images/{id}"), ("GET", "/v2/queued_images"),
    ("DELETE", "/v2/queued_images"), ("PUT", "/v2/queued_images/{id}"), ("DELETE", "/v2/queued_images/{id}"),
    ("HEAD", "/v2/cache"), ("HEAD", "/v2/cached_images"), ("HEAD", "/v2/queued_images"),
    ("GET", "/v2/cache/nodes/{id}"), ("HEAD", "/v2/cache/nodes/{id}"),
}


async def test_non_admin_gets_403_on_every_cache_route(api: Api) -> None:
    cached, queued = await _prepare(api)
    routes = _cache_routes(api.server, cached)
    assert {(m, p.replace(cached, "{id}")) for m, p in routes} == EXPECTED_ROUTES
    owner_of_image = MEMBER_A  # even the image's owner is not a cache admin
    for identity in (owner_of_image, MEMBER_B, READER_A):
        for method, path in routes:
            for prefix_path in (path, path.replace("/v2/", "/v2.18/", 1)):
                reply = await api.call(method, prefix_path, as_=identity,
                                       headers={"x-image-cache-clear-target": "cache"})
                assert reply.status == 403, (identity["X-User-Id"], method, prefix_path, reply.status)
    # Nothing changed.
    state = await api.state()
    assert [e["image_id"] for e in state["cached_images"]] == [cached] and state["queued_images"] == [queued]
    assert api.files() == [cached]


async def test_versions_list_2_18_when_the_cache_is_on(api: Api) -> None:
    reply = await api.call("GET", "/versions")
    current = [v["id"] for v in reply.json["versions"] if v["status"] == "CURRENT"]
    assert current == ["v2.18"]
    # Glance 33's list with the cache: 2.18 current, then 2.17 (the locations API) down to 2.14.
    assert [v["id"] for v in reply.json["versions"]][:5] == ["v2.18", "v2.17", "v2.16", "v2.15", "v2.14"]


async def test_cache_off_means_no_cache_routes_and_2_17_current(tmp_path: Path) -> None:
    api = Api(*await start_api(make_config(tmp_path, None, DEFAULT={"image_cache_dir": "none"})))
    try:
        assert api.server.app[SERVICES].cache is None
        reply = await api.call("GET", "/versions")
        listed = {v["id"]: v["status"] for v in reply.json["versions"]}
        # Glance 33 without the cache: 2.17 (the locations API) is current, 2.15 supported.
        assert [v for v, s in listed.items() if s == "CURRENT"] == ["v2.17"] and listed["v2.15"] == "SUPPORTED"
        assert "v2.18" not in listed and "v2.14" not in listed
        data = payload(MiB, 70)
        image_id = await api.image(data)
        for _ in range(2):
            got = await api.get(image_id)
            assert got.status == 200 and got.body == data
        assert api.store_reads() == 2  # no cache: every download reads the store
        assert not (tmp_path / "data" / "cache").exists()
        for method, path in sorted(EXPECTED_ROUTES):
            reply = await api.call(method, path.replace("{id}", image_id), as_=ADMIN)
            assert reply.status == 404, (method, path, reply.status)
        # 2.18 is not a version of this node: the version negotiation answer, as Glance gives.
        assert (await api.call("GET", "/v2.18/cache", as_=ADMIN)).status == 300
    finally:
        await close(api)


# -- faults ------------------------------------------------------------------------------------------------

async def test_a_cached_file_whose_size_changed_is_evicted_at_the_next_get(api: Api) -> None:
    data = payload(2 * MiB + 3, 80)
    image_id = await api.image(data)
    await api.get_settled(image_id)
    path = api.cache_dir / image_id

    def grow() -> None:
        with path.open("ab") as cached:
            cached.write(b"extra")

    for damage in (grow, lambda: os.truncate(path, MiB)):
        damage()
        reads = api.store_reads()
        reply = await api.get(image_id)
        assert reply.status == 200 and reply.body == data
        assert api.store_reads() == reads + 1  # from the store, through a new fill
        await wait_for(lambda: _no_fills(api))
        assert path.read_bytes() == data  # cached again, whole
        assert image_id in api.invalid_files()
        [entry] = (await api.state())["cached_images"]
        assert entry["size"] == len(data)
        assert (await api.get(image_id)).body == data and api.store_reads() == reads + 1


@pytest.mark.parametrize("direct_io", ["false", "true"])
async def test_disk_full_during_a_fill_still_serves_every_client(tmp_path: Path, direct_io: str) -> None:
    """image_cache_dir on a real 2 MiB tmpfs (root, as in CI); the image is 3 MiB. With
    image_cache_direct_io the clients following the fill go on from the store where it failed."""
    mount = tmp_path / "small"
    mount.mkdir()
    assert os.system(f"mount -t tmpfs -o size=2m tmpfs {mount}") == 0, "mounting a tmpfs needs root"
    try:
        api = await open_api(tmp_path, image_cache_dir=str(mount), image_cache_direct_io=direct_io)
        try:
            assert api.cache.direct_io is (direct_io == "true")  # this kernel's tmpfs takes O_DIRECT
            data = payload(3 * MiB + 11, 90)
            want = hashlib.sha256(data).hexdigest()
            image_id = await api.image(data)
            api.slow_down_store(0.01)
            url = f"{api.client.base}/v2/images/{image_id}/file"
            async with aiohttp.ClientSession() as session:
                results = await asyncio.gather(*(_download(session, url) for _ in range(5)))
            assert results == [(200, want, len(data))] * 5
            await wait_for(lambda: _no_fills(api))
            assert await api.cached_ids() == []
            assert api.files() == [] and api.partial_files() == []
            assert image_id not in api.invalid_files()  # no partial copy kept on a full disk
            # The space is given back: a small image is cached fine afterwards.
            small = payload(MiB // 2, 91)
            small_id = await api.image(small)
            assert (await api.get_settled(small_id)).body == small
            assert await api.cached_ids() == [small_id]
            # And the big one is still served correctly.
            assert (await api.get(image_id)).body == data
        finally:
            await close(api)
    finally:
        os.system(f"umount {mount}")
