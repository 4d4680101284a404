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
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20
# Threads that may be copying at once (each a client being served); more wait for a turn.
_pool = ThreadPoolExecutor(32, thread_name_prefix="socketcopy")


class CopyStopped(Exception):
    """The transfer was stopped (the request was cancelled)."""


def _copy_range(sock_fd: int, file_fd: int, offset: int, count: int, idle_timeout: float,
                stop: threading.Event) -> None:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    view = memoryview(bytearray(CHUNK))
    while count > 0:
        if stop.is_set():
            raise CopyStopped()
        n = os.preadv(file_fd, [view[:min(CHUNK, count)]], offset)
        if n == 0:
            raise EOFError(f"the file ended {count} bytes early")
        piece = view[:n]
        while piece:
            try:
                piece = piece[os.write(sock_fd, piece):]
            except BlockingIOError:
                # Socket buffer full: wait until the client takes more (or gives up).
                if not poller.poll(int(idle_timeout * 1000)):
                    raise TimeoutError(f"the client took nothing for {idle_timeout:.0f} s") from None
        offset += n
        count -= n


async def copy_file_to_socket(sock_fd: int, file_fd: int, offset: int, count: int, *,
                              idle_timeout: float = 300.0) -> None:
    """Send ``count`` bytes of ``file_fd`` from ``offset`` on the socket; raises OSError (client gone),
    TimeoutError (client stalled) or EOFError (file shorter than promised)."""
    sock = os.dup(sock_fd)  # ours: valid even if the transport closes its own meanwhile
    stop = threading.Event()
    future = asyncio.wrap_future(_pool.submit(_copy_range, sock, file_fd, offset, count, idle_timeout, stop))
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
