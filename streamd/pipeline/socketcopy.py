"""Moving a byte range of a file to a client's socket in a worker thread, off the event loop.

For data that is a plain file (a cache hit, a local file store) nothing needs
the event loop: a thread reads the file into one reused 1 MiB buffer and writes
it to (a duplicate of) the connection's socket, waiting for writability with
``poll`` when the socket buffer is full. No per-chunk Python objects, no fresh
memory per chunk, and several downloads run on several cores at once.

Measured on this project's 2-core machines, loopback, 1 GiB to ``curl -o /dev/null``:
this read/write loop 1.93-2.14 GB/s at 0.46-0.52 CPU-s/GiB;
``os.sendfile`` in the same thread 1.58-1.81 GB/s at 0.52-0.60; the previous
4 MiB reads handed to the loop 1.16-1.7 GB/s at 0.52-0.6. (uvloop has no
``loop.sendfile``; aiohttp's ``FileResponse`` falls back to 256 KiB executor reads.)

The caller hands over a socket whose transport has nothing buffered (the
headers already went out).

The other way, ``receive_from_socket`` reads a request body of known length
(``PUT /file``) from the socket into reused batch buffers in the same threads.
Measured with bench/threadcpu.py (512 MiB, 1 client, loaded 2-core machine),
server CPU beyond the two hash threads: 0.74-0.88 CPU-s/GiB (loop 0.20-0.26,
this reader 0.24-0.26, store writer 0.26-0.32) against 1.06-1.18 with aiohttp
reading on the loop (loop 0.70-0.80).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import select
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import AsyncIterator

from . import workpool
from ..sizes import DIRECT_IO_ALIGN
from .workpool import _name_os_thread

CHUNK = 1 << 20
# Threads that may be copying at once (each a client being served); more wait for a turn.
_pool = ThreadPoolExecutor(32, thread_name_prefix="socketcopy",
                           initializer=lambda: _name_os_thread(threading.current_thread().name))


class CopyStopped(Exception):
    """The transfer was stopped (the request was cancelled)."""


# O_DIRECT reads: whole aligned blocks into page-aligned memory (one mmap per copy thread, kept).
_direct_buffers = threading.local()


def _open_direct(file_fd: int) -> int | None:
    """The same file again, opened with O_DIRECT; None if its filesystem refuses."""
    try:
        return os.open(f"/proc/self/fd/{file_fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def _copy_range(sock_fd: int, file_fd: int, offset: int, count: int, idle_timeout: float,
                stop: threading.Event, direct_io: bool = False) -> None:
    direct_fd = _open_direct(file_fd) if direct_io else None
    if direct_fd is not None:
        try:
            _copy_range_direct(sock_fd, direct_fd, offset, count, idle_timeout, stop)
        finally:
            os.close(direct_fd)
        return
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    view = memoryview(bytearray(CHUNK))
    while count > 0:
        if stop.is_set():
            raise CopyStopped()
        n = os.preadv(file_fd, [view[:min(CHUNK, count)]], offset)
        if n == 0:
            raise EOFError(f"the file ended {count} bytes early")
        _send_all(sock_fd, view[:n], poller, idle_timeout)
        offset += n
        count -= n


def _copy_range_direct(sock_fd: int, file_fd: int, offset: int, count: int, idle_timeout: float,
                       stop: threading.Event) -> None:
    """_copy_range from a descriptor opened with O_DIRECT: aligned block reads, the range cut out of them."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    buffer = getattr(_direct_buffers, "mmap", None)
    if buffer is None:
        buffer = _direct_buffers.mmap = mmap.mmap(-1, CHUNK)
    view = memoryview(buffer)
    at = offset - offset % DIRECT_IO_ALIGN
    skip = offset - at
    while count > 0:
        if stop.is_set():
            raise CopyStopped()
        want = min(CHUNK, -(-(skip + count) // DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN)
        n = os.preadv(file_fd, [view[:want]], at)
        if n <= skip:
            raise EOFError(f"the file ended {count} bytes early")
        take = min(n - skip, count)
        _send_all(sock_fd, view[skip:skip + take], poller, idle_timeout)
        count -= take
        if count and n % DIRECT_IO_ALIGN:
            raise EOFError(f"the file ended {count} bytes early")  # a short read is the end of the file
        at += n
        skip = 0


def _send_all(sock_fd: int, piece: memoryview, poller: select.poll, idle_timeout: float) -> None:
    while piece:
        try:
            piece = piece[os.write(sock_fd, piece):]
        except BlockingIOError:
            # Socket buffer full: wait until the client takes more (or gives up).
            if not poller.poll(int(idle_timeout * 1000)):
                raise TimeoutError(f"the client took nothing for {idle_timeout:.0f} s") from None


async def copy_file_to_socket(sock_fd: int, file_fd: int, offset: int, count: int, *,
                              idle_timeout: float = 300.0, direct_io: bool = False) -> None:
    """Send ``count`` bytes of ``file_fd`` from ``offset`` on the socket; raises OSError (client gone),
    TimeoutError (client stalled) or EOFError (file shorter than promised)."""
    sock = os.dup(sock_fd)  # ours: valid even if the transport closes its own meanwhile
    stop = threading.Event()
    future = asyncio.wrap_future(_pool.submit(_copy_range, sock, file_fd, offset, count, idle_timeout, stop,
                                              direct_io))
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        # Unblock a copy waiting on a slow client: the connection is going away anyway.
        try:
            # A socket object over its own dup, closed here: the copy thread still owns ``sock``.
            with socket.socket(fileno=os.dup(sock)) as unblock:
                unblock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        await asyncio.wait([future])
        raise
    finally:
        if future.done():
            os.close(sock)
        else:
            future.add_done_callback(lambda _: os.close(sock))


# Receiving: a request body of known length read from (a duplicate of) the connection's socket in a
# worker thread, straight into the pipeline's batch-sized buffers, one batch read ahead. A thread
# waits for more itself only briefly (_THREAD_WAIT_MS, for at least _LOW_WATER bytes: SO_RCVLOWAT);
# past that the loop waits (a reader callback on the duplicate), so a stalled or slow client holds
# no thread, and a fast one costs the loop one hand-off per batch, not one per _LOW_WATER.
# Measured (bench/threadcpu.py, 512 MiB, 1 client, quiet machine): the loop's CPU per GiB
# 0.20-0.26 -> 0.14-0.18 with the thread's wait in one set of runs, 0.16-0.20 -> 0.12-0.20 in
# another (within the noise); throughput unchanged.
_LOW_WATER = 256 << 10
_THREAD_WAIT_MS = 50


class _LowWater:
    """The socket's SO_RCVLOWAT, set only when it changes (by the loop or the read thread, never
    both at once: the loop waits for the thread's read before it waits on the socket itself)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.value = 0

    def want(self, remaining: int) -> None:
        wanted = min(_LOW_WATER, remaining)
        if wanted != self.value:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, wanted)
            self.value = wanted


def _receive_into(sock: socket.socket, view: memoryview, stop: threading.Event, low_water: _LowWater) -> int:
    """Bytes read into ``view`` from the (non-blocking) socket, until it is full or nothing more has
    come for _THREAD_WAIT_MS; -1 at the end of the stream."""
    got = 0
    poller: select.poll | None = None
    while got < len(view):
        if stop.is_set():
            raise CopyStopped()
        try:
            n = sock.recv_into(view[got:])
        except BlockingIOError:
            if poller is None:
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLIN)
            low_water.want(len(view) - got)
            if not poller.poll(_THREAD_WAIT_MS):
                break
            continue
        if n == 0:
            return got if got else -1
        got += n
    return got


def _in_use(buffer: bytearray) -> bool:
    """True while a view of ``buffer`` handed on is still held (by a consumer, a batch in flight)."""
    try:
        buffer.append(0)  # a bytearray with views exported cannot change size
    except BufferError:
        return True
    buffer.pop()
    return False


def _new_buffer(size: int) -> bytearray:
    # One spare byte of capacity: ``_in_use``'s append then never reallocates (a realloc would copy
    # the whole buffer to fresh pages).
    buffer = bytearray(size + 1)
    buffer.pop()
    return buffer


class _BufferShelf:
    """Batch buffers kept between requests: a fresh 4 MiB buffer costs page faults and zeroing on
    every touch of its pages (measured: about a fifth of the loop's CPU per upload when each
    request made its own)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            for i, buffer in enumerate(self._idle):
                if len(buffer) == size and not _in_use(buffer):
                    return self._idle.pop(i)
        return _new_buffer(size)

    def give_back(self, buffers: list[bytearray]) -> None:
        with self._lock:
            room = self.keep - len(self._idle)
            self._idle.extend(buffers[:max(0, room)])


# A few: an upload's first batches; the rest of its batches reuse its own buffers.
_shelf = _BufferShelf(keep=4)

# Bodies being received now (on the loop's thread only). Past a few at once, each reads smaller
# batches: every stream holds about two (one with its consumers, one being read), so memory grows
# with the streams, while the loop's cost per batch matters less once the cores are all busy.
_receiving = 0
_FULL_BATCH_STREAMS = 4
_SMALL_BATCH = 1 << 20


def _batch_capacity(chunk: int) -> int:
    return chunk if _receiving <= _FULL_BATCH_STREAMS else min(chunk, _SMALL_BATCH)


async def receive_from_socket(sock_fd: int, count: int, *, chunk: int, idle_timeout: float = 300.0,
                              ) -> AsyncIterator[memoryview]:
    """The next ``count`` bytes of the socket, in views of ``chunk`` bytes (the last one shorter)
    over buffers reused once nothing holds their views; raises OSError (client gone), EOFError (it
    closed early) or TimeoutError (it sent nothing for ``idle_timeout`` s). The caller's transport
    must not read the socket meanwhile (paused), nor afterwards: bytes past ``count`` stay in it."""
    loop = asyncio.get_running_loop()
    # Over a duplicate of its own: valid even if the transport closes the connection meanwhile.
    sock = socket.socket(fileno=os.dup(sock_fd))
    stop = threading.Event()
    # Fresh 4 MiB buffers would cost page faults and zeroing on every batch (measured: more than the
    # reading itself); a view still held elsewhere keeps its buffer out of reuse.
    buffers: list[bytearray] = []
    running: Future[int] | None = None  # the thread's read under way (one at a time)
    low_water = _LowWater(sock)

    async def readable(wanted: int) -> None:
        low_water.want(wanted)
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, idle_timeout)
        except TimeoutError:
            # Less than the low water mark may have come meanwhile (a slow client): progress all the same.
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                raise TimeoutError(f"the client sent nothing for {idle_timeout:.0f} s") from None
        finally:
            loop.remove_reader(sock.fileno())

    async def fill(size: int, capacity: int) -> memoryview:
        nonlocal running
        # This stream keeps only the buffers its batches in flight hold, and one free one of the
        # current capacity: the rest go back to the shelf (many streams at once would otherwise each
        # keep their peak count).
        free = [b for b in buffers if not _in_use(b)]
        buffer = next((b for b in free if len(b) == capacity), None)
        if buffer is not None:
            free.remove(buffer)
        if free:
            buffers[:] = [b for b in buffers if not any(b is f for f in free)]
            _shelf.give_back(free)
        if buffer is None:
            buffer = _shelf.take(capacity)
            buffers.append(buffer)
        view = memoryview(buffer)[:size]
        got = 0
        while True:
            running = _pool.submit(_receive_into, sock, view[got:], stop, low_water)
            n = await asyncio.wrap_future(running)
            running = None
            if n < 0:
                raise EOFError(f"the client closed the connection before the end of the {count} bytes")
            got += n
            if got == size:
                return view
            await readable(size - got)

    def next_batch() -> asyncio.Task[memoryview]:
        nonlocal left
        capacity = _batch_capacity(chunk)
        size = min(capacity, left)
        left -= size
        return asyncio.ensure_future(fill(size, capacity))

    global _receiving
    _receiving += 1
    pending: asyncio.Task[memoryview] | None = None
    left = count
    try:
        while left > 0 or pending is not None:
            if pending is None:
                pending = next_batch()
            data = await pending
            pending = None
            # The next batch is read while this one is hashed and stored, unless all streams together
            # already have more queued than the pools' bound (then this stream waits its turn first).
            if left > 0 and not workpool.current().over_budget():
                pending = next_batch()
            yield data
            del data
    finally:
        _receiving -= 1
        stop.set()
        _shelf.give_back(buffers)  # the ones still in use are skipped by take() until released
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait([pending])  # its reader callback removed, its read thread noted
        if pending is not None and pending.done() and not pending.cancelled():
            pending.exception()  # retrieved: the error that matters is the one being raised
        if running is None or running.done():
            sock.close()
        else:
            # The read running sees ``stop`` within _THREAD_WAIT_MS; the socket is closed after it.
            running.add_done_callback(lambda job: (job.cancelled() or job.exception(), sock.close()))
