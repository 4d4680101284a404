"""Feed each chunk of a stream to several blocking consumers at once, off the event loop.

Every consumer (the md5 hasher, the ``os_hash_value`` hasher, the store
writer) is a lane of the process-wide pools (``workpool``): hashers on the hash
pool (never more busy hash threads than cores, whatever the number of streams),
writers on their store's writer pool. A consumer sees the chunks in order, one batch at a
time; consumers run beside each other and beside the socket reads on the loop.
hashlib and file writes release the GIL on large buffers, so one stream goes
as fast as its slowest single consumer, and many streams share the cores
instead of crowding them with threads of their own.

Memory stays bounded: ``feed_many`` waits once more than ``max_inflight``
bytes of this stream are queued, or once all streams together have queued more
than the pools' ``max_queued``; it then waits for this stream's own oldest batch,
so a slow consumer holds back only the socket of its own stream.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

from . import workpool

Consumer = Callable[[bytes], None]


def _consume_all(consume: Consumer, pieces: list[bytes]) -> None:
    for piece in pieces:
        consume(piece)


def _all_done(jobs: list[Future[None]]) -> asyncio.Future[None]:
    """A loop future that ends once every job has: with the first error among them, else None.
    The worker thread that finishes last wakes the loop, once per batch (a gather of each job's
    wrapped future would wake it once per consumer)."""
    loop = asyncio.get_running_loop()
    batch: asyncio.Future[None] = loop.create_future()
    left = [len(jobs)]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def settle() -> None:
        if batch.done():
            return
        if errors:
            batch.set_exception(errors[0])
        else:
            batch.set_result(None)

    def job_done(job: Future[None]) -> None:  # in the job's thread, or wherever it was cancelled
        error = None if job.cancelled() else job.exception()
        with lock:
            if error is not None:
                errors.append(error)
            left[0] -= 1
            last = left[0] == 0
        if last and not loop.is_closed():
            loop.call_soon_threadsafe(settle)

    if not jobs:  # no consumer left (every store refused the image early)
        batch.set_result(None)
    for job in jobs:
        job.add_done_callback(job_done)
    return batch


class FanOut:
    def __init__(self, hashers: Sequence[Consumer], writers: Sequence[tuple[str, Consumer]] = (), *,
                 max_inflight: int = 16 << 20, name: str = "fanout",
                 pools: workpool.WorkPools | None = None) -> None:
        """``writers``: (store name, its writer's ``write``), each a lane of that store's writer pool."""
        self.name = name
        self._pools = pools if pools is not None else workpool.current()
        self._lanes = ([(self._pools.hash.lane(), c) for c in hashers]
                       + [(self._pools.writer(store).lane(), c) for store, c in writers])
        # Per batch: its size, all its consumers' jobs as one future, and the pool's own futures.
        self._pending: collections.deque[tuple[int, asyncio.Future[None], list[Future[None]]]] = \
            collections.deque()
        self._inflight = 0
        self._max_inflight = max_inflight
        self._closed = False

    @property
    def inflight(self) -> int:
        """Bytes fed and not yet seen by every consumer."""
        return self._inflight

    def idle(self) -> bool:
        """True when every consumer has finished what it was given (nothing to overlap with)."""
        return not self._pending or self._pending[-1][1].done()

    def busy_until(self) -> asyncio.Future[None] | None:
        """A future that ends when every consumer has finished what it was given; None when idle."""
        return None if self.idle() else self._pending[-1][1]

    async def feed(self, chunk: bytes) -> None:
        """Queue ``chunk`` for every consumer; raises the first error a consumer hit."""
        await self.feed_many([chunk])

    async def feed_many(self, pieces: list[bytes]) -> None:
        """Queue several pieces as one job per consumer (fewer thread hops than one job per piece)."""
        if self._closed:
            raise RuntimeError(f"{self.name}: fed after close or abort")
        size = sum(len(p) for p in pieces)
        jobs = [lane.submit(_consume_all, consume, pieces) for lane, consume in self._lanes]
        self._pending.append((size, _all_done(jobs), jobs))
        self._inflight += size
        self._pools.add_queued(size)
        while self._pending and (self._inflight > self._max_inflight or self._pools.over_budget()):
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        size, done, _ = self._pending.popleft()
        self._inflight -= size
        self._pools.add_queued(-size)
        await done

    async def drain(self) -> None:
        """Wait until every consumer has seen every chunk fed so far."""
        while self._pending:
            await self._settle_oldest()

    async def close(self) -> None:
        """Drain; nothing may be fed after."""
        try:
            await self.drain()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Nothing more will be fed (the pools' threads are shared: nothing to release)."""
        self._closed = True

    async def abort(self) -> None:
        """Stop: queued chunks are dropped; returns once no consumer is running any more,
        so that what they write to (a file descriptor) can be closed safely."""
        self._closed = True
        running: list[Future[None]] = []
        while self._pending:
            size, done, jobs = self._pending.popleft()
            self._inflight -= size
            self._pools.add_queued(-size)
            # Retrieved, so that a consumer's error behind the one being handled is not logged as lost.
            done.add_done_callback(lambda f: f.cancelled() or f.exception())
            for job in jobs:
                # A job not started is skipped by its lane; one running cannot be stopped: wait for it.
                if not job.cancel() and not job.done():
                    running.append(job)
        if running:
            await asyncio.wait([asyncio.wrap_future(job) for job in running])
