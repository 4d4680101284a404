"""The process-wide worker threads of the data path: one hash pool, one store-writer pool.

Every stream (uploads, stages, imports, cache fills) hands its chunks to the same
two pools instead of starting threads of its own:

- the **hash pool** (``upload_worker_threads``; 0, the default, is one thread per
  core) runs md5, ``os_hash_value``, signature and cache-fill hashes: CPU work, so
  never more busy hash threads than cores, however many clients there are;
- a **writer pool** per store (``upload_writer_threads`` threads each) runs the store
  writers' blocking ``write`` calls (mostly waiting on a disk, Ceph or an object store): a
  stalled store holds only its own pool's threads, never the writes to the other stores.

A stream's consumer is a :class:`Lane`: its jobs run one at a time, in the order
they were submitted, on whichever thread of its pool is free; after each job the
lane goes to the back of the pool's queue, so the streams share the threads
batch by batch. Memory is bounded by each stream's own window (``upload_buffer_size``,
see ``FanOut``) and by the bytes all streams together may have queued
(:attr:`WorkPools.max_queued`): past it every stream waits for its own oldest
batch, so a slow consumer slows the socket it reads from.

The pools belong to the node's lifecycle (``services.open_services`` installs them
at start and shuts them down at the end); :func:`current` is what the data path
asks for. Code that runs without services (a tool, a test of the pipeline alone)
gets a default pair, made on first use.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from ..sizes import CHUNK

log = logging.getLogger(__name__)

HASH_THREAD_NAME = "hash-pool"
WRITER_THREAD_NAME = "write-pool"
DEFAULT_WRITER_THREADS = 8


def default_hash_threads() -> int:
    """One per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_libc: Any = None


def _name_os_thread(name: str) -> None:
    """Give the OS thread the Python thread's name (Linux ``comm``, 15 characters), so that
    ``top -H``, ``/proc/PID/task/*/comm`` and the benches can tell the pools' threads apart."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl
        _libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        return  # not Linux: the Python name is all there is


class Pool:
    """A fixed number of named threads, started when first needed."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name,
                                            initializer=self._name_thread)
        self._closed = False

    @staticmethod
    def _name_thread() -> None:
        _name_os_thread(threading.current_thread().name)

    def lane(self) -> "Lane":
        return Lane(self)

    def _schedule(self, fn: Callable[[], None]) -> None:
        self._executor.submit(fn)

    def shutdown(self) -> None:
        """No new jobs; the threads end once the jobs already queued are done."""
        self._closed = True
        self._executor.shutdown(wait=False)


class Lane:
    """Jobs that must run one after the other, in order (one consumer of one stream), on a
    shared :class:`Pool`. At most one of a lane's jobs is queued in the pool at any time."""

    __slots__ = ("_pool", "_jobs", "_lock", "_scheduled")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._jobs: collections.deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._jobs.append((future, fn, args))
            if self._scheduled:
                return future
            self._scheduled = True
        try:
            self._pool._schedule(self._run_one)
        except RuntimeError:  # the pool was shut down (the node is stopping)
            self._cancel_queued()
            raise
        return future

    def _cancel_queued(self) -> None:
        with self._lock:
            self._scheduled = False
            jobs = list(self._jobs)
            self._jobs.clear()
        for queued, _, _ in jobs:
            queued.cancel()

    def _run_one(self) -> None:
        with self._lock:
            future, fn, args = self._jobs.popleft()
        # False when the job was cancelled (its stream aborted) before it started.
        if future.set_running_or_notify_cancel():
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the stream that submitted the job
                future.set_exception(exc)
            else:
                future.set_result(result)
        with self._lock:
            if not self._jobs:
                self._scheduled = False
                return
        try:
            # To the back of the pool's queue: the other lanes get their turn first.
            self._pool._schedule(self._run_one)
        except RuntimeError:
            self._cancel_queued()


class WorkPools:
    """The hash pool, the writer pools (one per store, made when first used) and the bound on
    the bytes all streams have queued."""

    def __init__(self, hash_threads: int = 0, writer_threads: int = DEFAULT_WRITER_THREADS,
                 max_queued: int | None = None) -> None:
        self.hash = Pool(HASH_THREAD_NAME, hash_threads or default_hash_threads())
        self.writer_threads = max(1, writer_threads)
        self._writers: dict[str, Pool] = {}
        self._closed = False
        # Two batches per hash thread (and two for the writers) keep every core busy while the next
        # batches are read; the writers mostly wait on their stores and need no more. Each stream
        # keeps at least one batch in flight, whatever this bound.
        self.max_queued = max_queued if max_queued is not None else 2 * CHUNK * (self.hash.threads + 2)
        self._queued = 0
        self._lock = threading.Lock()

    def writer(self, store: str) -> Pool:
        """The writer pool of ``store`` (a store's name, or "cache" for the cache's fills)."""
        with self._lock:
            pool = self._writers.get(store)
            if pool is None:
                pool = self._writers[store] = Pool(WRITER_THREAD_NAME, self.writer_threads)
                if self._closed:
                    pool.shutdown()
            return pool

    @property
    def queued(self) -> int:
        """Bytes fed to the pools by every stream and not yet consumed by all their consumers."""
        return self._queued

    def add_queued(self, size: int) -> None:
        with self._lock:
            self._queued += size

    def over_budget(self) -> bool:
        return self._queued > self.max_queued

    def shutdown(self) -> None:
        self.hash.shutdown()
        with self._lock:
            self._closed = True
            writers = list(self._writers.values())
        for pool in writers:
            pool.shutdown()


_installed: WorkPools | None = None
_users = 0
_default: WorkPools | None = None
_install_lock = threading.Lock()


def install(hash_threads: int, writer_threads: int) -> WorkPools:
    """The node's pools, made by the first caller (``open_services``); later callers in the same
    process (tests run several nodes in one) share them. Each call needs its :func:`release`."""
    global _installed, _users
    with _install_lock:
        if _installed is None:
            _installed = WorkPools(hash_threads, writer_threads)
            log.info("data path workers: %d hash thread(s), %d writer thread(s) per store",
                     _installed.hash.threads, _installed.writer_threads)
        _users += 1
        return _installed


def release(pools: WorkPools) -> None:
    """The last user's release shuts the pools down (queued jobs still run)."""
    global _installed, _users
    with _install_lock:
        if pools is not _installed:
            return
        _users -= 1
        if _users == 0:
            _installed = None
            pools.shutdown()


def current() -> WorkPools:
    """The installed pools, or (no node running in this process) a default pair."""
    global _default
    pools = _installed
    if pools is not None:
        return pools
    with _install_lock:
        if _default is None:
            _default = WorkPools()
        return _default


__all__ = ["DEFAULT_WRITER_THREADS", "HASH_THREAD_NAME", "Lane", "Pool", "WRITER_THREAD_NAME", "WorkPools",
           "current", "default_hash_threads", "install", "release"]
