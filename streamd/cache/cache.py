"""The on-disk image cache: files, LRU pruning, cleaning, and fills in flight.

Layout under ``image_cache_dir``::

    <image_id>              a whole, verified image
    incomplete/<image_id>   a fill in progress; never served as a hit
    invalid/<image_id>      a fill that failed, with <image_id>.reason beside it
    index.sqlite            size, digests, hits and last access of each entry

A fill is verified against the image's checksum and os_hash_value, fsynced and
renamed into place; anything else is never served. Clients that ask for an
image while it is being filled read the partial file as it grows (``Fill``),
so the store is read once however many clients ask.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from .. import metrics
from ..errors import DoesNotExist
from ..kernels.sparse import DirectAppender, pwrite_all
from .index import CacheEntry, CacheIndex

log = logging.getLogger(__name__)
T = TypeVar("T")


class Fill:
    """One image being copied into the cache. ``written`` only grows; waiters are woken on each step."""

    def __init__(self, image_id: str, size: int, path: Path) -> None:
        self.image_id = image_id
        self.size = size
        self.path = path
        self.written = 0
        self.finished = False
        # Set when the copy into the cache failed: readers carry on from the store themselves.
        self.cache_failure: str | None = None
        # Set when the source (store or peer) failed: there is nothing to carry on from.
        self.source_failure: BaseException | None = None
        self._changed = asyncio.Event()
        self.fd: int | None = None
        # Open for reading while the fill runs: readers dup it (a path may already be renamed away).
        # Closed on the loop when the fill leaves ``ImageCache.fills``.
        self.read_fd: int | None = None
        # Set when the image is deleted from the cache (or the catalogue) while it is being filled:
        # the fill still serves its readers, but is dropped instead of committed.
        self.discarded = False
        # Bytes readers may not see before the fill is verified: a peer's copy is not trusted until
        # its digests match, so the end of the image is held back and a bad copy never completes.
        self.holdback = 0
        self.origin = "store"
        # Set when the file was opened with O_DIRECT (image_cache_direct_io): writes go through it.
        self.appender: DirectAppender | None = None

    @property
    def direct_io(self) -> bool:
        """The file is written with O_DIRECT: readers read it so too (its pages are not cached)."""
        return self.appender is not None

    def advance(self, n: int) -> None:
        self.written += n
        self._wake()

    def finish(self) -> None:
        self.finished = True
        self._wake()

    def fail_cache(self, reason: str) -> None:
        if self.cache_failure is None:
            self.cache_failure = reason
        self._wake()

    def fail_source(self, exc: BaseException) -> None:
        self.source_failure = exc
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self) -> None:
        """Wait for the next step of the fill (call right after checking its state: no await between)."""
        await self._changed.wait()

    def readable(self) -> int:
        """Bytes readers may be given now."""
        if self.finished:
            return self.written
        return min(self.written, self.size - self.holdback)

    async def wait_past(self, offset: int) -> None:
        """Return once bytes beyond ``offset`` exist, or the fill ended one way or another."""
        while self.written <= offset and not (self.finished or self.cache_failure or self.source_failure):
            await self._changed.wait()


@dataclass(frozen=True)
class PruneResult:
    removed: int
    freed: int
    size_after: int


class ImageCache:
    def __init__(self, directory: Path, max_size: int, stall_time: float, *, direct_io: bool = False) -> None:
        self.directory = directory
        self.max_size = max_size
        self.stall_time = stall_time
        # image_cache_direct_io; turned off (with one warning) if the filesystem refuses O_DIRECT.
        self.direct_io = direct_io
        self.incomplete = directory / "incomplete"
        self.invalid = directory / "invalid"
        self.fills: dict[str, Fill] = {}
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="cache")
        # A fill's commit (check ``discarded``, rename, index) and a delete's removal run in the
        # executor's threads; without this lock a delete could remove nothing while a commit that
        # had already passed its check went on to cache the image.
        self._commit_lock = threading.Lock()
        self.index: CacheIndex | None = None
        self._prune_lock = asyncio.Lock()
        # Told (image_id, cached) whenever an image enters or leaves the cache (peer announcements).
        self.listeners: list[Callable[[str, bool], Awaitable[None]]] = []

    async def _notify(self, image_id: str, cached: bool) -> None:
        for listener in self.listeners:
            await listener(image_id, cached)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for d in (self.directory, self.incomplete, self.invalid):
            d.mkdir(parents=True, exist_ok=True)
        self.index = await self._run(CacheIndex, self.directory / "index.sqlite")
        await self._run(self._reconcile)

    def _reconcile(self) -> None:
        """Make the index agree with the files. Partial fills of a crashed run are discarded."""
        assert self.index is not None
        for leftover in self.incomplete.iterdir():
            leftover.unlink(missing_ok=True)
        on_disk = {p.name: p for p in self.directory.iterdir() if p.is_file() and _is_image_name(p.name)}
        indexed = {e.image_id: e for e in self.index.entries()}
        for image_id, entry in indexed.items():
            path = on_disk.get(image_id)
            if path is None or path.stat().st_size != entry.size:
                self.index.remove(image_id)
                if path is not None:
                    path.unlink(missing_ok=True)
        for image_id, path in on_disk.items():
            if image_id not in indexed:
                # Found on disk but not indexed (the index was lost): keep it, unverified; it is
                # verified against the catalogue's digests before it is first served.
                self.index.add(image_id, path.stat().st_size, None, None, None, verified=False)

    async def stop(self) -> None:
        if self.index is not None:
            await self._run(self.index.close)
        self._executor.shutdown(wait=False)

    # -- hits ----------------------------------------------------------------------------------

    def path_of(self, image_id: str) -> Path:
        return self.directory / image_id

    async def entry(self, image_id: str) -> CacheEntry | None:
        assert self.index is not None
        return await self._run(self.index.get, image_id)

    async def open_hit(self, image_id: str, size: int | None, touch: bool = True) -> tuple[int, CacheEntry] | None:
        """An open fd on the cached file and its entry, if it is there whole; the size is always checked.
        ``touch``: count a hit and make it the most recently used (not for a verification)."""
        assert self.index is not None
        entry = await self._run(self.index.get, image_id)
        if entry is None:
            return None
        try:
            fd = os.open(self.path_of(image_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            await self._run(self.index.remove, image_id)
            return None
        actual = os.fstat(fd).st_size
        if actual != entry.size or (size is not None and actual != size):
            os.close(fd)
            log.warning("cache: %s has %d bytes, expected %s: evicted", image_id, actual, size or entry.size)
            await self.invalidate(image_id, f"size {actual} does not match {size or entry.size}")
            return None
        if touch:
            await self._run(self.index.touch, image_id)
        return fd, entry

    # -- fills -----------------------------------------------------------------------------------

    async def begin_fill(self, image_id: str, size: int) -> Fill | None:
        """Start a fill, or None if the image cannot be cached (larger than the cache)."""
        if size > self.max_size:
            return None
        await self.prune(reserve=size)
        fill = Fill(image_id, size, self.incomplete / image_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        if self.direct_io:
            try:
                fill.fd = os.open(fill.path, flags | os.O_DIRECT, 0o640)
                fill.appender = DirectAppender(fill.fd)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.warning("cache: %s refuses O_DIRECT: image_cache_direct_io is off", self.incomplete)
                self.direct_io = False
        if fill.fd is None:
            fill.fd = os.open(fill.path, flags, 0o640)
        try:
            fill.read_fd = os.open(fill.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._close_writer(fill)
            fill.path.unlink(missing_ok=True)
            raise
        self.fills[image_id] = fill
        return fill

    def _release(self, fill: Fill) -> None:
        """The fill is over: it leaves ``fills`` and its read descriptor is closed (on the loop)."""
        if self.fills.get(fill.image_id) is fill:
            del self.fills[fill.image_id]
        if fill.read_fd is not None:
            os.close(fill.read_fd)
            fill.read_fd = None

    def write_fill(self, fill: Fill, chunk: bytes | memoryview, offset: int) -> None:
        """Blocking, from the fill's writer thread; the bytes are in the file when it returns."""
        assert fill.fd is not None
        if fill.appender is None:
            pwrite_all(fill.fd, chunk, offset)
            return
        assert offset == fill.appender.end, (fill.image_id, offset, fill.appender.end)  # fills are sequential
        fill.appender.append(chunk)
        fill.appender.flush()

    @staticmethod
    def _close_writer(fill: Fill) -> None:
        if fill.appender is not None:
            fill.appender.close()
        if fill.fd is not None:
            os.close(fill.fd)
            fill.fd = None

    async def commit_fill(self, fill: Fill, checksum: str | None, algo: str | None, value: str | None) -> None:
        assert self.index is not None and fill.fd is not None

        def finish() -> None:
            assert fill.fd is not None
            if fill.appender is not None:
                fill.appender.finish()  # the last block's padding cut off
            os.fsync(fill.fd)
            self._close_writer(fill)
            with self._commit_lock:
                if fill.discarded:
                    fill.path.unlink(missing_ok=True)
                    return
                os.rename(fill.path, self.path_of(fill.image_id))
                assert self.index is not None
                self.index.add(fill.image_id, fill.written, checksum, algo, value, verified=True)

        try:
            await self._run(finish)
        finally:
            self._release(fill)
        fill.finish()
        if fill.discarded:
            log.info("cache: %s was deleted during its fill: not cached", fill.image_id)
            return
        log.info("cache: %s cached (%d bytes)", fill.image_id, fill.written)
        await self._notify(fill.image_id, True)
        await self.prune()

    async def abort_fill(self, fill: Fill, reason: str, keep: bool = True) -> None:
        """The fill failed: its partial file goes to invalid/ with the reason, never to be served.
        With ``keep`` false (the disk is full) the partial file is dropped at once to give the space back."""
        self._release(fill)
        fill.fail_cache(reason)

        def move() -> None:
            self._close_writer(fill)
            target = self.invalid / fill.image_id
            reason_path = self.invalid / f"{fill.image_id}.reason"
            if not keep:
                fill.path.unlink(missing_ok=True)
                return
            try:
                os.rename(fill.path, target)
                reason_path.write_text(f"{time.ctime()}: {reason}\n")
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Even the reason cannot be written (the disk is full): just drop the partial file.
                log.warning("cache: could not keep %s in invalid/: %s", fill.image_id, exc.strerror)
                for path in (target, reason_path, fill.path):
                    path.unlink(missing_ok=True)

        await self._run(move)
        log.warning("cache: fill of %s failed: %s", fill.image_id, reason)

    # -- removal, pruning, cleaning ---------------------------------------------------------------

    async def invalidate(self, image_id: str, reason: str) -> None:
        assert self.index is not None

        def move() -> None:
            assert self.index is not None
            self.index.remove(image_id)
            try:
                os.rename(self.path_of(image_id), self.invalid / image_id)
                (self.invalid / f"{image_id}.reason").write_text(f"{time.ctime()}: {reason}\n")
            except FileNotFoundError:
                pass

        await self._run(move)
        await self._notify(image_id, False)

    async def delete(self, image_id: str) -> bool:
        assert self.index is not None

        def remove() -> bool:
            assert self.index is not None
            with self._commit_lock:
                known = self.index.get(image_id) is not None
                self.index.remove(image_id)
                try:
                    self.path_of(image_id).unlink()
                except FileNotFoundError:
                    return known
                return True

        fill = self.fills.get(image_id)
        if fill is not None:
            fill.discarded = True  # being filled: it will not be committed
        if not await self._run(remove) and fill is None:
            raise DoesNotExist(f"Image {image_id} is not cached")
        await self._notify(image_id, False)
        return True

    async def delete_all(self) -> int:
        assert self.index is not None
        entries = await self._run(self.index.entries)
        for entry in entries:
            try:
                await self.delete(entry.image_id)
            except DoesNotExist:
                pass
        return len(entries)

    def size_in_flight(self) -> int:
        return sum(f.size for f in self.fills.values())

    async def prune(self, reserve: int = 0) -> PruneResult:
        """Evict least recently used images until the cache (plus ``reserve``) fits ``image_cache_max_size``."""
        assert self.index is not None
        async with self._prune_lock:
            entries = await self._run(self.index.entries)  # least recently accessed first
            total = sum(e.size for e in entries)
            budget = self.max_size - reserve - self.size_in_flight()
            removed = freed = 0
            for entry in entries:
                if total <= budget:
                    break
                await self._run(self._evict, entry.image_id)
                metrics.cache_event("eviction", entry.size)
                await self._notify(entry.image_id, False)
                total -= entry.size
                freed += entry.size
                removed += 1
            if removed:
                log.info("cache: pruned %d image(s), %d bytes", removed, freed)
            return PruneResult(removed, freed, total)

    def _evict(self, image_id: str) -> None:
        assert self.index is not None
        self.index.remove(image_id)
        # Readers that have it open keep reading: unlinking an open file is safe.
        self.path_of(image_id).unlink(missing_ok=True)

    async def clean(self, stall_time: float | None = None) -> int:
        """Remove stalled partial fills and everything in invalid/."""
        stall = self.stall_time if stall_time is None else stall_time
        active = set(self.fills)

        def sweep() -> int:
            removed = 0
            now = time.time()
            for path in self.incomplete.iterdir():
                if path.name not in active and now - path.stat().st_mtime >= stall:
                    path.unlink(missing_ok=True)
                    removed += 1
            for path in self.invalid.iterdir():
                path.unlink(missing_ok=True)
                removed += not path.name.endswith(".reason")
            return removed

        return await self._run(sweep)

    # -- queue -------------------------------------------------------------------------------------

    async def queue(self, image_id: str) -> bool:
        assert self.index is not None
        return await self._run(self.index.queue, image_id)

    async def dequeue(self, image_id: str) -> bool:
        assert self.index is not None
        return await self._run(self.index.dequeue, image_id)

    async def queued(self) -> list[tuple[str, float]]:
        assert self.index is not None
        return await self._run(self.index.queued)

    async def clear_queue(self) -> int:
        assert self.index is not None
        return await self._run(self.index.clear_queue)

    async def entries(self) -> list[CacheEntry]:
        assert self.index is not None
        return await self._run(self.index.entries)

    async def mark_verified(self, image_id: str, checksum: str | None = None, algo: str | None = None,
                            value: str | None = None) -> None:
        assert self.index is not None
        await self._run(self.index.mark_verified, image_id, checksum, algo, value)

    def is_disk_full(self, exc: OSError) -> bool:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_image_name(name: str) -> bool:
    return len(name) == 36 and name.count("-") == 4
