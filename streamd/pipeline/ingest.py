"""One stream of image data into one or several stores at once: read once, hashed beside the writes.

``write_to_stores`` is the core every way in shares: ``PUT /file`` (one store,
``upload.upload_image``), ``PUT /stage`` and web-download (the staging area,
``imports.StagingArea.ingest``), and an import to several stores (staged or
copied data fanned out to all of them); ``measure`` is the same stream with no
store (hash and inspect a file a plugin rewrote). The size cap and a
declared size are enforced while streaming; the optional format inspection sees
each chunk before it is stored; the md5 and ``os_hash_value`` hashes and every
store writer run on the process-wide worker pools (``workpool``) beside the socket or file
reads, hashes on the hash pool and writers on their store's writer pool; so does
the hash an image signature covers (``signature``): a ``SignatureVerifier`` is
checked once the stream is whole, before any store commits (a mismatch aborts
the write like any failure: nothing stays in any store), a bare
``SignatureHash`` (staging) only records the digest for the import to check.

With ``isolate`` a store that fails is dropped and the others go on (an import
with ``all_stores_must_succeed = false``); without it the first failure aborts
the whole write. Either way, whatever a failed store wrote is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from .. import metrics
from ..errors import ImageSizeLimitExceeded, InvalidRequest, StoreFailure, StreamdError
from ..formats import ImageInspection
from ..quota import ByteBudget
from ..signing import SignatureHash, SignatureVerifier
from ..sizes import CHUNK
from ..stores import StoredData, Store, Writer
from .fanout import Consumer, FanOut
from .hashing import Digests, ImageHasher

log = logging.getLogger(__name__)

BATCH = CHUNK


@dataclass
class Ingested:
    size: int
    digests: Digests | None
    virtual_size: int | None
    stored: dict[str, StoredData] = field(default_factory=dict)   # store name -> what it wrote
    failed: dict[str, StreamdError] = field(default_factory=dict)  # store name -> why it failed
    signature_digest: bytes | None = None  # the digest the ``signature`` consumer computed


class _GuardedWriter:
    """A store writer whose failure is recorded instead of raised, so the other stores go on."""

    def __init__(self, store: Store, writer: Writer) -> None:
        self.store = store
        self.writer = writer
        self.error: StreamdError | None = None

    def write(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.writer.write(chunk)
        except StreamdError as exc:
            self.error = exc


class Progress:
    """Bytes moved so far, read by an import's heartbeat."""

    def __init__(self) -> None:
        self.bytes = 0


def refuse_oversized(declared_size: int | None, size_cap: int) -> None:
    """413 for data declared larger than ``image_size_cap``, before anything is read or recorded."""
    if declared_size is not None and declared_size > size_cap:
        raise ImageSizeLimitExceeded(
            f"Image size {declared_size} exceeds the maximum of {size_cap} bytes (image_size_cap)")


async def measure(chunks: AsyncIterator[bytes], *, declared_size: int | None, size_cap: int,
                  hashing_algorithm: str | None, inspection: ImageInspection | None = None,
                  signature: SignatureVerifier | SignatureHash | None = None) -> Ingested:
    """Size, digests (when ``hashing_algorithm``) and format inspection of data that goes to no
    store: the same checks as an upload (cap, declared size, a 415 for a refused format), and
    the signature's when one is given."""
    return await write_to_stores((), "", chunks, declared_size=declared_size, size_cap=size_cap,
                                 hashing_algorithm=hashing_algorithm, inspection=inspection, signature=signature)


async def write_to_stores(stores: Sequence[Store], image_id: str, chunks: AsyncIterator[bytes], *,
                          declared_size: int | None, size_cap: int, hashing_algorithm: str | None,
                          inspection: ImageInspection | None = None, isolate: bool = False,
                          max_inflight: int = 16 << 20, progress: Progress | None = None,
                          budget: ByteBudget | None = None,
                          signature: SignatureVerifier | SignatureHash | None = None, operation: str = "upload",
                          ) -> Ingested:
    """``budget`` (a quota) stops the stream as ``size_cap`` does, with its own 413, before the bytes
    past it reach any store. ``signature``: one more consumer of the stream (its own thread); a
    verifier is checked before the stores commit, and a mismatch fails the whole write. ``operation``
    labels the bytes each store took (metrics)."""
    refuse_oversized(declared_size, size_cap)
    if budget is not None and declared_size is not None and declared_size > budget.max_bytes:
        raise budget.refuse(declared_size)
    # One bound for the loop: the smaller of the cap and the budget; which one it was is decided
    # only when it is crossed.
    most = size_cap if budget is None else min(size_cap, budget.max_bytes)
    guarded: list[_GuardedWriter] = []
    fanout: FanOut | None = None
    committed: list[tuple[Store, StoredData]] = []
    try:
        for store in stores:
            try:
                guarded.append(_GuardedWriter(store, await store.writer(image_id, declared_size)))
            except StreamdError as exc:
                if not isolate:
                    raise
                log.warning("store %s cannot take image %s: %s", store.name, image_id, exc)
                failed_early = _GuardedWriter(store, _NullWriter())
                failed_early.error = exc
                guarded.append(failed_early)
        hasher = ImageHasher(hashing_algorithm) if hashing_algorithm else None
        hashers: list[Consumer] = [hasher.update_md5, hasher.update_os_hash] if hasher else []
        # A signature over the os_hash algorithm's digest (SHA-512 and the default hashing_algorithm)
        # shares that hash; any other is one more consumer.
        sig_name = signature.hashlib_name if isinstance(signature, SignatureHash) else (
            signature.hash.hashlib_name if signature is not None else None)
        shared = hasher is not None and sig_name == hashing_algorithm
        if signature is not None and not shared:
            hashers.append(signature.update)
        writers: list[tuple[str, Consumer]] = [(g.store.name, g.write if isolate else g.writer.write)
                                               for g in guarded if g.error is None]
        fanout = FanOut(hashers, writers, max_inflight=max_inflight, name=f"ingest-{image_id[:8]}")
        received = 0
        # Bytes each store took, counted per batch (~4 MiB: a few calls per batch, none per chunk).
        counted = 0
        names = [g.store.name for g in guarded if g.error is None]
        async with contextlib.aclosing(_batches(chunks, BATCH, fanout.busy_until)) as batches:
            async for batch in batches:
                for chunk in batch:
                    received += len(chunk)
                    if received > most:
                        if received > size_cap:
                            raise ImageSizeLimitExceeded(
                                f"Image exceeds the maximum size of {size_cap} bytes (image_size_cap)")
                        assert budget is not None
                        raise budget.refuse(received)
                    if declared_size is not None and received > declared_size:
                        raise InvalidRequest(f"Image data is longer than the declared size of {declared_size} bytes")
                    if inspection is not None:
                        inspection.feed(chunk)
                await fanout.feed_many(batch)
                for name in names:
                    metrics.store_bytes(name, "in", operation, received - counted)
                counted = received
                if progress is not None:
                    progress.bytes = received
                if isolate and guarded and all(g.error is not None for g in guarded):
                    break  # every store failed: no point reading on
        if declared_size is not None and received != declared_size and not _all_failed(guarded):
            raise InvalidRequest(f"Image data ended after {received} of the declared {declared_size} bytes")
        virtual_size = inspection.finish().virtual_size if inspection is not None else None
        await fanout.close()
        digests = hasher.digests() if hasher else None
        digest: bytes | None = None
        if signature is not None:
            if shared:
                assert digests is not None
                digest = bytes.fromhex(digests.os_hash_value)
            else:
                digest = signature.hash.digest() if isinstance(signature, SignatureVerifier) else signature.digest()
        if isinstance(signature, SignatureVerifier) and not _all_failed(guarded):
            signature.verify(digest)  # before any store commits: a mismatch leaves nothing anywhere
        result = Ingested(received, digests, virtual_size, signature_digest=digest)
        outcomes = await asyncio.gather(*(_commit(g, received) for g in guarded), return_exceptions=True)
        for g, outcome in zip(guarded, outcomes):
            if isinstance(outcome, StoredData):
                committed.append((g.store, outcome))
                result.stored[g.store.name] = outcome
            elif isinstance(outcome, StreamdError):
                result.failed[g.store.name] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        if result.failed and (not isolate or not result.stored):
            raise next(iter(result.failed.values()))
        return result
    except BaseException:
        # Cleanup must finish even if this task is being cancelled (client gone, shutdown).
        await asyncio.shield(_undo(fanout, guarded, committed))
        raise


async def _batches(chunks: AsyncIterator[bytes], limit: int,
                   busy_until: Callable[[], asyncio.Future[None] | None] = lambda: None,
                   ) -> AsyncIterator[list[bytes]]:
    """Group the source's pieces (a socket gives a few hundred KiB at a time) into lists of about
    ``limit`` bytes: one thread hop per consumer per list. A list is handed on early when the source
    has nothing more right now and the consumers are idle (``busy_until`` is None: they are done
    with what they had), so a slow
    client's bytes are stored as they come, not held back. While the consumers are still busy
    (many streams sharing the pools) there is nothing to gain from a small batch: it grows to
    ``limit``, and the thread hops and lane turns per GiB stay as few as with one client. A source
    that stalls while they are busy does not hold its list back either: ``busy_until()`` (the
    consumers' work in hand) is raced against the next piece, and the list goes once they are done."""
    source = chunks.__aiter__()
    batch: list[bytes] = []
    size = 0
    # The next piece as a task, only while a batch is held: the task tells whether the source has
    # more right now, and lets the wait for it end when the consumers become idle first. With
    # nothing held the piece is awaited directly: no task per piece.
    following: asyncio.Future[bytes] | None = None
    try:
        while True:
            if batch:
                if following is None:
                    following = asyncio.ensure_future(source.__anext__())
                if not following.done():
                    waiter = busy_until()
                    if waiter is None:
                        await asyncio.sleep(0)  # one turn of the loop: what is already buffered arrives in it
                    else:
                        await _first_done(following, waiter)
                    if not following.done():
                        yield batch
                        batch, size = [], 0
            try:
                if following is not None:
                    chunk = await following
                    following = None
                else:
                    chunk = await source.__anext__()
            except StopAsyncIteration:
                break
            if chunk:
                batch.append(chunk)
                size += len(chunk)
            if size >= limit:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch
    finally:
        if following is not None and not following.done():
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await following


async def _first_done(*futures: asyncio.Future[Any]) -> None:
    """Wait until one of ``futures`` is done, without taking its result or exception (a lighter
    ``asyncio.wait(..., return_when=FIRST_COMPLETED)``: no set, no tasks)."""
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(_: asyncio.Future[Any]) -> None:
        if not wake.done():
            wake.set_result(None)

    for future in futures:
        future.add_done_callback(done)
    try:
        await wake
    finally:
        for future in futures:
            future.remove_done_callback(done)


def _all_failed(guarded: list[_GuardedWriter]) -> bool:
    return bool(guarded) and all(g.error is not None for g in guarded)


async def _commit(g: _GuardedWriter, received: int) -> StoredData:
    if g.error is not None:
        await g.writer.abort()
        raise g.error
    stored = await g.writer.commit()
    if stored.size != received:
        # Every store's result is checked here, in one place.
        await g.store.delete(stored.url)
        raise StoreFailure(f"Store {g.store.name} wrote {stored.size} bytes of {received}")
    return stored


async def _undo(fanout: FanOut | None, guarded: list[_GuardedWriter],
                committed: list[tuple[Store, StoredData]]) -> None:
    if fanout is not None:
        await fanout.abort()
    for g in guarded:
        await g.writer.abort()
    for store, stored in committed:
        await store.delete(stored.url)


class _NullWriter(Writer):
    def write(self, chunk: bytes) -> None:
        return None

    async def commit(self) -> StoredData:
        raise AssertionError("a failed store is never committed")

    async def abort(self) -> None:
        return None
