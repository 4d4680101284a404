"""Feed each chunk of a stream to several blocking consumers at once, off the event loop.

Every consumer (the md5 hasher, the ``os_hash_value`` hasher, the store
writer) has its own worker thread and sees the chunks in order; consumers run
beside each other and beside the socket reads on the loop. hashlib and file
writes release the GIL on large buffers, so the stream goes as fast as the
slowest single consumer. Memory stays bounded: ``feed`` waits once more than
``max_inflight`` bytes are queued.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

Consumer = Callable[[bytes], None]


def _consume_all(consume: Consumer, pieces: list[bytes]) -> None:
    for piece in pieces:
        consume(piece)


class FanOut:
    def __init__(self, consumers: list[Consumer], *, max_inflight: int = 16 << 20, name: str = "fanout") -> None:
        self._consumers = consumers
        self._workers = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{n}") for n in range(len(consumers))]
        self._pending: collections.deque[tuple[int, asyncio.Future[list[None]]]] = collections.deque()
        self._inflight = 0
        self._max_inflight = max_inflight
        self._closed = False

    async def feed(self, chunk: bytes) -> None:
        """Queue ``chunk`` for every consumer; raises the first error a consumer hit."""
        await self.feed_many([chunk])

    async def feed_many(self, pieces: list[bytes]) -> None:
        """Queue several pieces as one job per consumer (fewer thread hops than one job per piece)."""
        loop = asyncio.get_running_loop()
        size = sum(len(p) for p in pieces)
        jobs = [loop.run_in_executor(worker, _consume_all, consume, pieces)
                for worker, consume in zip(self._workers, self._consumers)]
        self._pending.append((size, asyncio.gather(*jobs)))
        self._inflight += size
        while self._inflight > self._max_inflight:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        size, done = self._pending.popleft()
        self._inflight -= size
        await done

    async def drain(self) -> None:
        """Wait until every consumer has seen every chunk fed so far."""
        while self._pending:
            await self._settle_oldest()

    async def close(self) -> None:
        """Drain, then release the worker threads."""
        try:
            await self.drain()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Release the threads once everything fed has been consumed (after ``drain``)."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.shutdown(wait=False)

    async def abort(self) -> None:
        """Stop: queued chunks are dropped; returns once no consumer is running any more,
        so that what they write to (a file descriptor) can be closed safely."""
        for _, done in self._pending:
            done.cancel()
            # Retrieved, so that a consumer's error behind the one being handled is not logged as lost.
            done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.clear()
        self._closed = True
        workers = self._workers

        def stop_all() -> None:
            for worker in workers:
                worker.shutdown(wait=True, cancel_futures=True)

        await asyncio.to_thread(stop_all)
