"""Serving image data: from the cache when it is there, else from a store, filling the cache once.

``ImageDelivery.open`` returns an ``ImageSource`` whatever the data comes from:

- a cache hit: the cached file (its size always checked; its digests once);
- a fill in flight: the partial cache file, read as it grows (single flight:
  however many clients ask at once, the store is read once);
- a new fill: a background task copies the store into the cache, hashing as
  it goes, and the client reads the partial file like any other joiner;
- no cache: the store directly.

Across nodes sharing a catalogue (peers on), single flight is cluster-wide: the node that wins the
image's fill lease reads the backend, recording the BLAKE3 of each 4 MiB chunk as it goes; the others
stream its fill while it runs (``open_fill_for_peer``), check each chunk against its digest before a
reader sees it, and carry on from the backend at the last verified byte if the filler goes away.

A cache fault never breaks a download: if the copy into the cache fails
(disk full, I/O error), every reader of that fill carries on from the store
at the offset it had reached.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import errno
import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Awaitable, Callable

import blake3

from .. import metrics
from ..cache import Fill, ImageCache
from ..catalog import ImageRecord
from ..errors import StoreFailure, StoreUnavailable, StreamdError
from ..sizes import CHUNK
from ..stores import Reader, StoreRegistry
from ..stores.base import FdReader
from .fanout import FanOut
from .hashing import ImageHasher
from .peers import PeerClient, PeerSource
from .readahead import read_ahead

log = logging.getLogger(__name__)

# The end of a peer's copy that readers only get once its digests match.
PEER_HOLDBACK = 1 << 20


# A piece of a growing file: (offset, count) of ``ImageSource.piece_fd``, or bytes read elsewhere.
FilePiece = tuple[int, int] | bytes


class ImageSource(abc.ABC):
    # The store the bytes are read from (None: the cache or a fill).
    store: str | None = None

    size: int
    origin: str  # "cache", "fill", "store": for logs and tests

    @abc.abstractmethod
    def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        ...

    def fileno(self) -> int | None:
        """A plain file's descriptor when the whole image is one (see ``Reader.fileno``)."""
        return None

    def file_pieces(self, offset: int, length: int) -> AsyncIterator[FilePiece] | None:
        """For a file that is still being written (a fill being followed): the bytes from ``offset``
        as ranges of ``piece_fd``, each readable once yielded, or as bytes where they come from
        elsewhere (the store, once a fill failed; nothing follows them). None: see ``fileno``."""
        return None

    @property
    def piece_fd(self) -> int:
        raise NotImplementedError

    @property
    def direct_io(self) -> bool:
        """``fileno``'s file is best read with O_DIRECT (see ``Reader.direct_io``)."""
        return False

    def close(self) -> None:
        return None


class ReaderSource(ImageSource):
    """Any blocking ``Reader``, read one chunk ahead in a worker thread while the loop sends."""

    def __init__(self, reader: Reader, origin: str, store: str | None = None) -> None:
        self.store = store
        self.reader = reader
        self.size = reader.size
        self.origin = origin

    def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        return read_ahead(self.reader.read, offset, offset + length, what="image data", error=StoreFailure)

    def fileno(self) -> int | None:
        return self.reader.fileno()

    @property
    def direct_io(self) -> bool:
        return self.reader.direct_io

    def close(self) -> None:
        self.reader.close()


class FillSource(ImageSource):
    """Reads a fill's partial file as it grows; falls back to the store if the fill's cache copy fails."""

    origin = "fill"

    def __init__(self, fill: Fill, open_store: Callable[[], Awaitable[Reader]]) -> None:
        self.fill = fill
        self.size = fill.size
        self.open_store = open_store
        # Our own descriptor: it stays valid when the file is renamed into place or moved away.
        # Taken from the fill's own, not by path: the path may be renamed away at any moment.
        assert fill.read_fd is not None
        self.fd = os.dup(fill.read_fd)

    @property
    def direct_io(self) -> bool:
        return self.fill.direct_io

    async def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        async for piece in self._pieces(offset, length, CHUNK):
            if isinstance(piece, bytes):
                yield piece
                continue
            at, want = piece
            while want:
                data = await loop.run_in_executor(None, os.pread, self.fd, want, at)
                if not data:
                    raise StoreFailure(f"cache file of {self.fill.image_id} ended early at {at}")
                at += len(data)
                want -= len(data)
                yield data

    def file_pieces(self, offset: int, length: int) -> AsyncIterator[FilePiece]:
        # All the fill has written at once: a follower that keeps up gets one range per step of
        # the fill, one that lags behind fewer, longer ones.
        return self._pieces(offset, length, None)

    @property
    def piece_fd(self) -> int:
        return self.fd

    async def _pieces(self, offset: int, length: int, most: int | None) -> AsyncIterator[FilePiece]:
        end = offset + length
        fill = self.fill
        while offset < end:
            available = fill.readable()
            if offset < available:
                want = min(end, available) - offset
                if most is not None:
                    want = min(want, most)
                yield offset, want
                offset += want
                continue
            if fill.source_failure is not None:
                raise StoreFailure(f"reading image {fill.image_id} failed: {fill.source_failure}")
            if fill.cache_failure is not None:
                if fill.origin == "peer":
                    # What we sent came from an unverified peer copy: never complete it from elsewhere.
                    raise StoreFailure(f"fetching image {fill.image_id} from a peer failed: {fill.cache_failure}")
                log.info("image %s: cache fill failed (%s); serving from the store at byte %d",
                         fill.image_id, fill.cache_failure, offset)
                source = ReaderSource(await self.open_store(), "store")
                try:
                    async for data in source.chunks(offset, end - offset):
                        yield data
                finally:
                    source.close()
                return
            if fill.finished:
                raise StoreFailure(f"cache file of {fill.image_id} is shorter than {end}")
            await fill.wait_change()

    def close(self) -> None:
        os.close(self.fd)


class ChunkDigester:
    """A fill consumer: the BLAKE3 of each ``CHUNK`` of the stream (chunk-aligned whatever the pieces),
    handed to the loop as each one completes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._hash = blake3.blake3()
        self._in_chunk = 0
        self._index = 0
        self._lock = threading.Lock()
        self._done: dict[int, str] = {}
        self.changed = asyncio.Event()
        self.stopping = False  # the recorder's last flush: set with ``stop``

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            take = min(len(view), CHUNK - self._in_chunk)
            self._hash.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == CHUNK:
                self._emit()

    def finish(self) -> None:
        if self._in_chunk:
            self._emit()

    def _emit(self) -> None:
        with self._lock:
            self._done[self._index] = self._hash.hexdigest()
        self._index += 1
        self._hash = blake3.blake3()
        self._in_chunk = 0
        self._loop.call_soon_threadsafe(self.changed.set)

    def stop(self) -> None:
        self.stopping = True
        self.changed.set()

    def take(self) -> dict[int, str]:
        with self._lock:
            done, self._done = self._done, {}
        return done


def _read_full(source: PeerSource, view: memoryview, want: int) -> int:
    """Blocking: ``want`` bytes into ``view`` unless the stream ends first."""
    got = 0
    while got < want:
        n = source.readinto(view[got:want])
        if not n:
            break
        got += n
    return got


def _digest_fd(fd: int, algo: str) -> tuple[str, str]:
    """Blocking: md5 and ``algo`` of a whole file."""
    md5, other = hashlib.md5(usedforsecurity=False), hashlib.new(algo)
    offset = 0
    while chunk := os.pread(fd, 8 << 20, offset):
        md5.update(chunk)
        other.update(chunk)
        offset += len(chunk)
    return md5.hexdigest(), other.hexdigest()


async def _no_store() -> Reader:
    raise StoreFailure("the fill's cache copy failed; peers are never served from the store")


class ImageDelivery:
    def __init__(self, stores: StoreRegistry, cache: ImageCache | None, peers: PeerClient | None = None,
                 *, cache_local_stores: bool = False) -> None:
        self.stores = stores
        self.cache = cache
        self.peers = peers
        self.cache_local_stores = cache_local_stores
        self._fill_tasks: set[asyncio.Task[None]] = set()
        # Fills being started (peer or store opened, space reserved): callers arriving meanwhile wait
        # for the same one instead of starting their own (single flight).
        self._starting: dict[str, asyncio.Task[Fill | None]] = {}
        # Reads opened per store: what single flight is measured by.
        self.store_reads: collections.Counter[str] = collections.Counter()
        self.peer_reads: collections.Counter[str] = collections.Counter()
        # Threads that copy peers' bytes into the cache (one per fill from a peer).
        self._pump_pool = ThreadPoolExecutor(4, thread_name_prefix="peer-fill")

    async def open_store_reader(self, image: ImageRecord) -> Reader:
        return (await self._open_store(image))[0]

    async def _open_store(self, image: ImageRecord) -> tuple[Reader, str]:
        """A reader of the image in the first store that opens it, and that store's name."""
        last: StreamdError | None = None
        for location in image.locations:
            store = self.stores.for_location(location.store)
            if store is None or location.status != "active":
                continue
            try:
                reader = await store.reader(location.url)
            except StreamdError as exc:
                log.warning("image %s: location in store %s unreadable: %s", image.id, location.store, exc.message)
                last = exc
                continue
            self.store_reads[store.name] += 1
            return reader, store.name
        if last is not None:
            raise last
        elsewhere = sorted({loc.store for loc in image.locations if loc.status == "active" and loc.store})
        if elsewhere:
            # An edge node: the data is in another site's store, and no peer had it cached.
            raise StoreUnavailable(f"Image {image.id} is stored in {', '.join(elsewhere)}, "
                                   "which this node does not reach, and no peer caches it")
        raise StoreFailure(f"No readable location for image {image.id}")

    def has_data(self, image: ImageRecord) -> bool:
        """Data somewhere: in a store of this node, or one only other nodes reach (then their
        caches may serve it)."""
        return any(loc.status == "active" for loc in image.locations)

    async def open_cached(self, image: ImageRecord) -> ImageSource | None:
        """Only a whole, verified cached copy (what peers are served): never the store."""
        if self.cache is None:
            return None
        return await self._open_hit(image)

    async def open_fill_for_peer(self, image: ImageRecord, offset: int) -> ImageSource | None:
        """For another node that lost the race for this image's fill lease: this node's fill of it,
        read as it grows (never completed from a store), or the cached copy once the fill is over."""
        if self.cache is None:
            return None
        starting = self._starting.get(image.id)
        if starting is not None:
            # The lease is taken while the fill starts: a peer may ask before the fill exists.
            with contextlib.suppress(StreamdError, OSError):
                await asyncio.shield(starting)
        fill = self.cache.fills.get(image.id)
        if fill is not None and fill.origin == "store" and fill.read_fd is not None:
            return FillSource(fill, _no_store)
        return await self.open_cached(image)

    def _worth_filling(self, image: ImageRecord) -> bool:
        """Copy into the cache on a miss only what is slower to read than the cache itself."""
        if self.cache_local_stores:
            return True
        for location in image.locations:
            store = self.stores.for_location(location.store)
            if store is not None and location.status == "active":
                return not store.local
        return True

    async def open(self, image: ImageRecord) -> ImageSource:
        cache = self.cache
        if cache is not None and image.status in ("active", "deactivated") and image.size is not None:
            for attempt in range(3):
                hit = await self._open_hit(image)
                if hit is not None:
                    metrics.cache_event("hit")
                    return hit
                if attempt == 0:
                    metrics.cache_event("miss")
                if not self._worth_filling(image):
                    break  # a local store: straight from it
                fill = await self._join_or_start_fill(image)
                if fill is None:
                    if image.size > cache.max_size or await cache.entry(image.id) is None:
                        break  # not cacheable now: straight from the store
                    continue  # cached meanwhile: a hit
                if fill.read_fd is not None:  # still running: join it
                    return FillSource(fill, lambda: self.open_store_reader(image))
                if not fill.finished:
                    break  # it failed meanwhile
        reader, store = await self._open_store(image)
        return ReaderSource(reader, "store", store)

    async def _join_or_start_fill(self, image: ImageRecord) -> Fill | None:
        """The fill of this image in flight, or a new one: however many callers ask at once, one is started."""
        assert self.cache is not None
        fill = self.cache.fills.get(image.id)
        if fill is not None:
            metrics.cache_event("join")  # single flight: one backend read for every reader
            return fill
        starting = self._starting.get(image.id)
        if starting is not None:
            metrics.cache_event("join")
        else:
            starting = asyncio.create_task(self._start_fill(image), name=f"cache-start-{image.id}")
            self._starting[image.id] = starting

            def done(task: asyncio.Task[Fill | None], image_id: str = image.id) -> None:
                if self._starting.get(image_id) is task:
                    del self._starting[image_id]
                if not task.cancelled():
                    task.exception()  # retrieved here too: its callers may all have gone

            starting.add_done_callback(done)
        # Shielded: a caller that goes away does not cancel the start for the others.
        return await asyncio.shield(starting)

    async def _open_hit(self, image: ImageRecord) -> ImageSource | None:
        assert self.cache is not None
        hit = await self.cache.open_hit(image.id, image.size)
        if hit is None:
            return None
        fd, entry = hit
        if entry.verified_at is None or entry.checksum != image.checksum or entry.os_hash_value != image.os_hash_value:
            # Found on disk without digests (index rebuilt) or digests that disagree: check before serving.
            if not await self._verify_fd(fd, image):
                os.close(fd)
                await self.cache.invalidate(image.id, "checksum does not match the image")
                return None
        reader = FdReader(fd, entry.size)
        reader.direct_io = self.cache.direct_io
        return ReaderSource(reader, "cache")

    async def _verify_fd(self, fd: int, image: ImageRecord) -> bool:
        assert self.cache is not None
        algo = image.os_hash_algo or "sha512"

        checksum, value = await asyncio.to_thread(_digest_fd, fd, algo)
        ok = (image.checksum in (None, checksum)) and (image.os_hash_value in (None, value))
        if ok:
            await self.cache.mark_verified(image.id, checksum, algo, value)
        return ok

    async def verify_cached(self, image: ImageRecord) -> bool:
        """Re-hash a cached image (on demand or on a schedule); evict it if it is corrupt."""
        assert self.cache is not None
        hit = await self.cache.open_hit(image.id, image.size, touch=False)
        if hit is None:
            return False
        fd, _ = hit
        try:
            ok = await self._verify_fd(fd, image)
        finally:
            os.close(fd)
        if not ok:
            await self.cache.invalidate(image.id, "checksum does not match the image")
        return ok

    async def prefetch(self, image: ImageRecord) -> bool:
        """Cache an image now (prefetch queue, PUT /v2/cache/{id}); True once it is cached."""
        if self.cache is None or image.status != "active" or image.size is None:
            return False
        if (await self.cache.entry(image.id)) is not None:
            return True
        fill = await self._join_or_start_fill(image)
        if fill is None:
            return (await self.cache.entry(image.id)) is not None
        while not (fill.finished or fill.cache_failure or fill.source_failure):
            await fill.wait_change()
        return fill.finished

    async def _start_fill(self, image: ImageRecord) -> Fill | None:
        assert self.cache is not None and image.size is not None
        if await self.cache.entry(image.id) is not None:
            return None  # a fill finished while this caller was on its way here
        peer = await self.peers.open(image) if self.peers is not None else None
        reader: Reader | None = None
        store: str | None = None
        leased = False
        filler: str | None = None  # another node filling it now: stream its fill
        if peer is None and self.peers is not None:
            leased = await self.peers.take_lease(image)
            if not leased:
                filler = await self.peers.filler(image)
        try:
            if peer is None and filler is None:
                reader, store = await self._open_store(image)
            try:
                fill = await self.cache.begin_fill(image.id, image.size)
            except OSError as exc:
                log.warning("image %s: cannot start a cache fill: %s", image.id, exc.strerror)
                fill = None
        except BaseException:
            if leased:
                await asyncio.shield(self._release_lease(image))
            raise
        if fill is None:
            if reader is not None:
                reader.close()
            if peer is not None:
                await peer.close()
            if leased:
                await self._release_lease(image)
            return None
        if filler is not None:
            fill.origin = "cluster"
            self.peer_reads[filler] += 1
            task = asyncio.create_task(self._run_cluster_fill(fill, image, filler), name=f"cluster-fill-{image.id}")
            self._fill_tasks.add(task)
            task.add_done_callback(self._fill_tasks.discard)
            return fill
        expected: str | None = None
        if peer is not None:
            fill.origin = "peer"
            fill.holdback = min(PEER_HOLDBACK, image.size)
            self.peer_reads[peer.url] += 1
            assert self.peers is not None
            expected = await self.peers.expected_digest(image)
        task = asyncio.create_task(self._run_fill(fill, image, reader, peer, expected, store, leased),
                                   name=f"cache-fill-{image.id}")
        self._fill_tasks.add(task)
        task.add_done_callback(self._fill_tasks.discard)
        return fill

    async def _run_fill(self, fill: Fill, image: ImageRecord, reader: Reader | None,
                        peer: PeerSource | None, expected_blake3: str | None = None,
                        store: str | None = None, leased: bool = False) -> None:
        """Copy into the cache, hashing on the way. A store's copy is checked against the image's md5
        and os_hash_value, and its BLAKE3 recorded; a peer's copy only against that BLAKE3 when one
        is recorded (cheap: the peer's fill was checked the long way), else the long way too."""
        assert self.cache is not None
        cache = self.cache
        loop = asyncio.get_running_loop()
        hasher = ImageHasher(image.os_hash_algo or "sha512")
        fast = blake3.blake3()
        # A peer's copy with a recorded BLAKE3 is checked against it alone.
        quick_check = expected_blake3 is not None
        position = 0
        failed = False

        def write(chunk: bytes) -> None:
            # Chunks already queued behind a failed write must not land at its offset (readers would
            # be served them as the bytes there): after one failure, every later write fails too.
            nonlocal position, failed
            if failed:
                raise OSError(errno.EIO, "an earlier write to the cache file failed")
            try:
                cache.write_fill(fill, chunk, position)
            except BaseException:
                failed = True
                raise
            position += len(chunk)
            loop.call_soon_threadsafe(fill.advance, len(chunk))

        hashers: list[Callable[[bytes], object]] = [fast.update]
        if not quick_check:
            hashers += [hasher.update_md5, hasher.update_os_hash]
        digester: ChunkDigester | None = None
        recorder: asyncio.Task[None] | None = None
        if leased:
            # The other nodes stream this fill: each chunk's digest goes to the catalogue as it is read.
            digester = ChunkDigester(loop)
            hashers.append(digester.update)
            recorder = asyncio.create_task(self._record_chunks(image, digester), name=f"fill-lease-{image.id}")
        fanout = FanOut(hashers, [("cache", write)], name=f"fill-{image.id[:8]}")  # type: ignore[arg-type]
        store_source = ReaderSource(reader, "store") if reader is not None else None
        if store_source is not None:
            chunks = store_source.chunks(0, fill.size)
        else:
            assert peer is not None
            chunks = peer.chunks()
        source_name = f"peer {peer.url}" if peer is not None else "store"
        received = 0
        pump_stop = threading.Event()
        pump: asyncio.Future[int] | None = None
        filled = False
        try:
            try:
                if quick_check:
                    assert peer is not None
                    # One thread reads the peer into its buffer, hashes and writes: the loop only wakes readers.
                    pump = asyncio.wrap_future(self._pump_pool.submit(
                        self._pump_peer, fill, peer, fast, pump_stop, loop))
                    received = await asyncio.shield(pump)
                else:
                    async for chunk in chunks:
                        received += len(chunk)
                        if received > fill.size:
                            raise StoreFailure(f"the {source_name} sent more than the image's {fill.size} bytes")
                        await fanout.feed(chunk)
                    await fanout.close()
                if received != fill.size:
                    raise StoreFailure(f"the {source_name} stopped after {received} of {fill.size} bytes")
                if digester is not None:
                    # The last digests go in now; the recorder keeps the lease renewed through the commit.
                    assert self.peers is not None
                    digester.finish()
                    await self.peers.catalog.add_chunk_digests(image.id, digester.take())
            except OSError as exc:
                await fanout.abort()
                await cache.abort_fill(fill, f"writing the cache failed: {exc.strerror or exc}",
                                       keep=not cache.is_disk_full(exc))
                return
            except (StreamdError, TimeoutError) as exc:
                await fanout.abort()
                fill.fail_source(exc)
                if peer is not None and self.peers is not None:
                    self.peers.mark_bad(peer.url, image.id)
                await cache.abort_fill(fill, f"reading the {source_name} failed: {exc}")
                return
            fast_digest = fast.hexdigest()
            if quick_check:
                matches = fast_digest == expected_blake3
                checksum, algo, value = image.checksum, image.os_hash_algo, image.os_hash_value
            else:
                digests = hasher.digests()
                matches = (image.checksum in (None, digests.checksum)
                           and image.os_hash_value in (None, digests.os_hash_value))
                checksum, algo, value = digests.checksum, digests.os_hash_algo, digests.os_hash_value
            if not matches:
                if peer is not None and self.peers is not None:
                    self.peers.mark_bad(peer.url, image.id)
                    fill.fail_source(StoreFailure(f"{source_name} served bytes that do not match the image"))
                await cache.abort_fill(fill, "checksum does not match the image")
                return
            try:
                await cache.commit_fill(fill, checksum, algo, value)
            except OSError as exc:
                await cache.abort_fill(fill, f"committing the cache file failed: {exc.strerror or exc}")
                return
            filled = True
            if not quick_check and self.peers is not None and image.os_hash_value:
                try:
                    await self.peers.record_digest(image, fast_digest)
                except StreamdError as exc:
                    log.warning("image %s: cannot record its BLAKE3: %s", image.id, exc)
        except asyncio.CancelledError:
            if pump is not None:
                # The thread writes to the fill's descriptor: stop it before the fill is aborted.
                pump_stop.set()
                assert peer is not None
                peer.abort()
                await asyncio.wait([pump])
            await fanout.abort()
            await asyncio.shield(cache.abort_fill(fill, "the daemon stopped during the fill"))
            raise
        finally:
            if recorder is not None and digester is not None:
                # Stopped, not cancelled: a catalogue write is never cut in the middle, and the
                # digests it holds are in before the lease goes.
                digester.stop()
                await asyncio.wait([recorder])
                if not recorder.cancelled() and recorder.exception() is not None:
                    log.warning("image %s: recording its chunk digests failed: %s", image.id, recorder.exception())
            if leased:
                # After the commit (and its announcement): a node asking from now on finds the cached copy.
                await asyncio.shield(self._release_lease(image))
            _count_fill(filled, received, store, peer is not None)
            if store_source is not None:
                store_source.close()
            if peer is not None:
                await peer.close()

    async def _release_lease(self, image: ImageRecord) -> None:
        assert self.peers is not None
        try:
            await self.peers.release_lease(image)
        except StreamdError as exc:
            log.warning("image %s: cannot release its fill lease (it expires by itself): %s", image.id, exc)

    async def _record_chunks(self, image: ImageRecord, digester: ChunkDigester) -> None:
        """While this node fills ``image`` under its lease: chunk digests to the catalogue as they come,
        and the lease renewed every third of its time to live."""
        assert self.peers is not None
        loop = asyncio.get_running_loop()
        every = self.peers.lease_ttl / 3
        renewed = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(digester.changed.wait(), every)
            digester.changed.clear()
            await self.peers.catalog.add_chunk_digests(image.id, digester.take())
            if digester.stopping:
                return
            if loop.time() - renewed >= every:
                if not await self.peers.renew_lease(image):
                    log.warning("image %s: this node lost its fill lease", image.id)
                renewed = loop.time()

    async def _chunk_digest(self, image: ImageRecord, index: int, known: dict[int, str], filler: str) -> str:
        """The recorded BLAKE3 of chunk ``index``, waiting for the filler to record it while it holds
        the lease; StoreFailure once it no longer does and the digest never came."""
        assert self.peers is not None
        while index not in known:
            known.update(await self.peers.catalog.chunk_digests(image.id, index))
            if index in known:
                break
            if await self.peers.filler(image) != filler:
                known.update(await self.peers.catalog.chunk_digests(image.id, index))
                if index in known:
                    break
                raise StoreFailure(f"the filling peer {filler} lost its lease before recording chunk {index}")
            await asyncio.sleep(0.05)
        return known[index]

    def _check_and_write(self, fill: Fill, view: memoryview, expected: str, offset: int,
                         whole: "blake3.blake3") -> bool:
        """Blocking: write a peer's chunk to the cache file only if its BLAKE3 is the recorded one."""
        assert self.cache is not None
        if blake3.blake3(view).hexdigest() != expected:
            return False
        whole.update(view)
        self.cache.write_fill(fill, view, offset)
        return True

    def _write_hashed(self, fill: Fill, data: bytes, offset: int, whole: "blake3.blake3") -> None:
        assert self.cache is not None
        whole.update(data)
        self.cache.write_fill(fill, data, offset)

    async def _run_cluster_fill(self, fill: Fill, image: ImageRecord, filler: str) -> None:
        """Stream another node's fill of ``image`` into this cache, each chunk checked against the digest
        the filler recorded before any reader sees it; if the filler goes away (its stream breaks or its
        lease ends) or sends a bad chunk, carry on from the backend at the last verified byte."""
        assert self.cache is not None and self.peers is not None
        cache, peers = self.cache, self.peers
        loop = asyncio.get_running_loop()
        whole = blake3.blake3()
        buffer = memoryview(bytearray(CHUNK))
        known: dict[int, str] = {}
        position = from_peer = 0
        store: str | None = None
        source: PeerSource | None = None
        filled = False
        try:
            try:
                source = await peers.open_fill(filler, image, 0)
                while position < fill.size:
                    want = min(CHUNK, fill.size - position)
                    n = await loop.run_in_executor(self._pump_pool, _read_full, source, buffer, want)
                    if n != want:
                        raise StoreFailure(f"the filling peer {filler} stopped at byte {position + n}")
                    expected = await self._chunk_digest(image, position // CHUNK, known, filler)
                    if not await loop.run_in_executor(self._pump_pool, self._check_and_write, fill,
                                                      buffer[:n], expected, position, whole):
                        peers.mark_bad(filler, image.id)
                        raise StoreFailure(f"chunk {position // CHUNK} from peer {filler} does not match its digest")
                    position += n
                    from_peer += n
                    fill.advance(n)
            except (StreamdError, TimeoutError) as exc:
                log.warning("image %s: %s; reading the rest from the backend at byte %d", image.id, exc, position)
                if source is not None:
                    await source.close()
                    source = None
                reader, store = await self._open_store(image)
                backend = ReaderSource(reader, "store", store)
                try:
                    async for data in backend.chunks(position, fill.size - position):
                        await loop.run_in_executor(self._pump_pool, self._write_hashed, fill, data, position, whole)
                        position += len(data)
                        fill.advance(len(data))
                finally:
                    backend.close()
            # Every chunk matched the filler's digests; the whole copy must match the image too: the
            # filler's BLAKE3 once it has checked its own copy against md5 and os_hash_value, else ours.
            digest = whole.hexdigest()
            expected = await peers.expected_digest(image)
            while expected is None and store is None and await peers.filler(image) == filler:
                await asyncio.sleep(0.05)
                expected = await peers.expected_digest(image)
            if expected is not None:
                matches = digest == expected
            else:
                assert fill.read_fd is not None
                checksum, value = await asyncio.to_thread(_digest_fd, fill.read_fd, image.os_hash_algo or "sha512")
                matches = image.checksum in (None, checksum) and image.os_hash_value in (None, value)
            if not matches:
                fill.fail_source(StoreFailure(f"the copy of image {image.id} does not match the image"))
                await cache.abort_fill(fill, "checksum does not match the image")
                return
            await cache.commit_fill(fill, image.checksum, image.os_hash_algo, image.os_hash_value)
            filled = True
        except OSError as exc:
            await cache.abort_fill(fill, f"writing the cache failed: {exc.strerror or exc}",
                                   keep=not cache.is_disk_full(exc))
        except (StreamdError, TimeoutError) as exc:
            fill.fail_source(exc)
            await cache.abort_fill(fill, f"reading image {image.id} failed: {exc}")
        except asyncio.CancelledError:
            if source is not None:
                source.abort()
            await asyncio.shield(cache.abort_fill(fill, "the daemon stopped during the fill"))
            raise
        finally:
            if source is not None:
                await source.close()
            metrics.cache_event("fill" if filled else "fill_failed", position if filled else 0)
            metrics.peer_fetch("ok" if filled else "failed", from_peer)
            if store is not None:
                metrics.store_bytes(store, "out", "cache_fill", position - from_peer)

    def _pump_peer(self, fill: Fill, peer: PeerSource, fast: "blake3.blake3", stop: threading.Event,
                   loop: asyncio.AbstractEventLoop) -> int:
        """Blocking, in a fill thread: the peer's bytes into the cache file, hashed on the way."""
        assert self.cache is not None
        view = memoryview(bytearray(CHUNK))
        position = 0
        while position < fill.size:
            if stop.is_set():
                raise StoreFailure("the fill was stopped")
            n = peer.readinto(view[:min(CHUNK, fill.size - position)])
            if not n:
                break
            piece = view[:n]
            fast.update(piece)
            self.cache.write_fill(fill, piece, position)
            position += n
            loop.call_soon_threadsafe(fill.advance, n)
        return position

    async def stop(self) -> None:
        for start in list(self._starting.values()):
            start.cancel()
        if self._starting:
            await asyncio.wait(list(self._starting.values()))
        for task in list(self._fill_tasks):
            task.cancel()
        if self._fill_tasks:
            await asyncio.wait(self._fill_tasks)
        self._pump_pool.shutdown(wait=False)


def _count_fill(filled: bool, received: int, store: str | None, from_peer: bool) -> None:
    """One cache fill ended (metrics): its result, and the bytes it read from a store or a peer."""
    metrics.cache_event("fill" if filled else "fill_failed", received if filled else 0)
    if from_peer:
        metrics.peer_fetch("ok" if filled else "failed", received)
    elif store is not None:
        metrics.store_bytes(store, "out", "cache_fill", received)
