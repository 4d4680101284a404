"""Ceph RBD store on the real ``rados``/``rbd`` bindings, with sparse writes.

Layout, as Glance's RBD driver: one RBD image per image, named by the image id,
with a protected snapshot ``snap``; the location is
``rbd://<fsid>/<pool>/<image>/snap`` so that Nova and Cinder can clone it.

What streamd does better than glance_store:
- zero detection by the native kernel at ``rbd_thin_provisioning_block_size``
  (64 KiB by default) inside each object, not only whole 8 MiB chunks with
  Python's ``any()``; zeros that reach the OSD are stored, so never sending
  them is the only way to keep the image thin;
- the RBD image is created once at its final size when the size is known, and
  grown without writes (then trimmed) when it is not;
- several ``aio_write``s in flight;
- ranged reads.

A write goes to ``streamd-incoming.<node>.<image>`` and is renamed on commit;
at start-up a node removes the incoming images it left behind in a crash.
Every blocking librados/librbd call runs in the store's bounded executor.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from .. import metrics
from ..background import PeriodicJob
from ..config import RbdStoreOptions
from ..errors import StateConflict, DoesNotExist, StoreUnavailable, OutOfSpace, StoreFailure
from ..kernels import zeroscan
from .base import PROBE_DATA, Reader, StoredData, Store, StoreHealth, Writer

log = logging.getLogger(__name__)

T = TypeVar("T")
SNAPSHOT = "snap"
INCOMING_PREFIX = "streamd-incoming."
MAX_AIO_IN_FLIGHT = 8
# A piece at least this large that is a buffer of its own goes to librbd without being gathered first.
DIRECT_MIN = 1 << 20
# Unknown size: grow the image by at least this much at a time (a resize writes nothing).
GROWTH_STEP = 1 << 30
# How often half-written images that could not be removed at once are tried again.
ORPHAN_RETRY_INTERVAL = 5.0


def _ceph_errors() -> tuple[type[BaseException], ...]:
    """Everything librados/librbd raise (their own hierarchies) plus OSError from failed aio."""
    rados, rbd = _bindings()
    return (rados.Error, rbd.Error, OSError)


def _bindings() -> tuple[Any, Any]:
    # Imported lazily: only nodes with an rbd store need Debian's python3-rados/python3-rbd.
    try:
        import rados
        import rbd
    except ImportError as exc:
        raise StoreUnavailable(f"the Ceph Python bindings (rados, rbd) are not installed: {exc}") from exc
    return rados, rbd


class RbdStore(Store):
    type = "rbd"

    def __init__(self, name: str, options: RbdStoreOptions, host_id: str) -> None:
        self.name = name
        self.options = options
        self.pool = options.rbd_store_pool
        self.order = (options.rbd_store_chunk_size << 20).bit_length() - 1
        self.object_size = 1 << self.order
        self.thin = options.rbd_thin_provisioning
        self.block_size = options.rbd_thin_provisioning_block_size
        self.node_tag = hashlib.sha256(host_id.encode()).hexdigest()[:12]
        self._executor = ThreadPoolExecutor(16, thread_name_prefix=f"rbd-{name}")
        self._cluster: Any = None
        self._ioctx: Any = None
        self.fsid: str | None = None
        self._connect_lock = asyncio.Lock()
        # Half-written images whose removal failed (the cluster was unreachable): retried until gone.
        self.orphans: set[str] = set()

    # -- connection ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect_blocking(self) -> tuple[Any, Any, str]:
        rados, _ = _bindings()
        # Ceph 16 takes whole seconds only ("30", not "30.0").
        timeout = str(math.ceil(self.options.rados_op_timeout))
        conf: dict[str, str] = {
            "rados_osd_op_timeout": timeout,
            "rados_mon_op_timeout": timeout,
            # connect(timeout=) alone does not bound the mount when no monitor answers.
            "client_mount_timeout": str(max(1, math.ceil(self.options.rados_connect_timeout))),
            # librbd copies the data of each aio_write before the call returns: the writer reuses its
            # buffers at once (a ceph.conf that turned zero-copy writes on must not change that).
            "rbd_disable_zero_copy_writes": "true",
        }
        cluster = rados.Rados(conffile=self.options.rbd_store_ceph_conf, rados_id=self.options.rbd_store_user,
                              conf=conf)
        try:
            cluster.connect(timeout=self.options.rados_connect_timeout)
            ioctx = cluster.open_ioctx(self.pool)
        except rados.Error:
            cluster.shutdown()
            raise
        return cluster, ioctx, cluster.get_fsid()

    async def _ensure_connected(self) -> Any:
        if self._ioctx is not None:
            return self._ioctx
        async with self._connect_lock:
            if self._ioctx is None:
                rados, _ = _bindings()
                try:
                    self._cluster, self._ioctx, self.fsid = await self._run(self._connect_blocking)
                except rados.Error as exc:
                    raise StoreUnavailable(
                        f"RBD store {self.name}: cannot reach the Ceph cluster or pool {self.pool}: {exc}") from exc
                log.info("rbd store %s connected: cluster %s, pool %s", self.name, self.fsid, self.pool)
        return self._ioctx

    async def start(self) -> None:
        """Connect and reap this node's half-written images. An unreachable cluster is not
        fatal: the daemon starts, requests to this store get 503 until it is back."""
        try:
            ioctx = await self._ensure_connected()
        except StoreUnavailable as exc:
            log.error("%s", exc.message)
            return
        reaped = await self._run(self._reap_blocking, ioctx)
        if reaped:
            log.warning("rbd store %s: removed %d interrupted upload(s): %s", self.name, len(reaped), ", ".join(reaped))
        if self.orphans:
            log.warning("rbd store %s: %d interrupted upload(s) still watched by their dead client; "
                        "removing them once the watch expires", self.name, len(self.orphans))

    def _reap_blocking(self, ioctx: Any) -> list[str]:
        _, rbd = _bindings()
        mine = f"{INCOMING_PREFIX}{self.node_tag}."
        reaped = []
        for name in rbd.RBD().list(ioctx):
            if not name.startswith(mine):
                continue
            try:
                _remove_image_if_exists(ioctx, name)
            except rbd.ImageBusy:
                # Our crashed incarnation still holds a watch on it until the OSD times it out.
                self.orphans.add(name)
                continue
            reaped.append(name)
        return reaped

    async def check(self) -> StoreHealth:
        """Connect if need be, then write, read back and remove a small object in the pool over
        the store's rados connection; the free space is the cluster's. The caller bounds the time."""
        ioctx = await self._ensure_connected()
        name = f"streamd-healthcheck.{self.node_tag}"

        def probe() -> int:
            ioctx.write_full(name, PROBE_DATA)
            try:
                if ioctx.read(name, len(PROBE_DATA) + 1) != PROBE_DATA:
                    raise StoreFailure(f"RBD store {self.name}: {name} did not read back what was written")
            finally:
                ioctx.remove_object(name)
            return int(self._cluster.get_cluster_stats()["kb_avail"]) * 1024

        try:
            free = await self._run(probe)
        except _ceph_errors() as exc:
            raise StoreUnavailable(f"RBD store {self.name}: pool {self.pool} is not writable: {exc}") from exc
        return StoreHealth(f"RBD store {self.name}: cluster {self.fsid}, pool {self.pool} writable and readable", free)

    def properties(self) -> dict[str, object]:
        return {"chunk_size": self.options.rbd_store_chunk_size, "pool": self.pool,
                "thin_provisioning": self.options.rbd_thin_provisioning, "fsid": self.fsid or ""}

    def background_jobs(self) -> list[PeriodicJob]:
        return [PeriodicJob(f"rbd reaper ({self.name})", ORPHAN_RETRY_INTERVAL, self.remove_orphans)]

    async def remove_orphans(self) -> None:
        """Remove half-written images that could not be removed when their upload failed
        (a stalled cluster, or a dead client's watch that has not expired yet)."""
        if not self.orphans or self._ioctx is None:
            return
        for name in list(self.orphans):
            try:
                await self._run(_remove_image_if_exists, self._ioctx, name)
            except _ceph_errors() as exc:
                log.warning("rbd store %s: %s still cannot be removed: %s", self.name, name, exc)
                break
            self.orphans.discard(name)
            log.info("rbd store %s: removed %s left by a failed upload", self.name, name)

    async def stop(self) -> None:
        if self._ioctx is not None:
            ioctx, cluster = self._ioctx, self._cluster
            self._ioctx = self._cluster = None
            await self._run(ioctx.close)
            await self._run(cluster.shutdown)
        self._executor.shutdown(wait=False)

    def _error(self, exc: BaseException, what: str) -> Exception:
        rados, rbd = _bindings()
        unreachable = tuple(getattr(rados, n) for n in ("TimedOut", "ConnectionShutdown") if hasattr(rados, n))
        if isinstance(exc, unreachable) or (isinstance(exc, OSError) and exc.errno == 110):
            return StoreUnavailable(f"RBD store {self.name}: {what}: the Ceph cluster did not answer ({exc})")
        if isinstance(exc, getattr(rbd, "NoSpace", ())) or (isinstance(exc, OSError) and exc.errno == 28):
            return OutOfSpace(f"RBD store {self.name}: {what}: no space left in pool {self.pool}")
        return StoreFailure(f"RBD store {self.name}: {what}: {exc}")

    # -- locations ----------------------------------------------------------------------------------

    def url_of(self, image: str) -> str:
        return f"rbd://{self.fsid}/{self.pool}/{image}/{SNAPSHOT}"

    def parse(self, url: str) -> tuple[str, str, str]:
        """(pool, image, snapshot) of an ``rbd://fsid/pool/image/snap`` location."""
        if not url.startswith("rbd://"):
            raise StoreFailure(f"{url} is not an rbd location")
        parts = url[len("rbd://"):].split("/")
        if len(parts) != 4 or not all(parts):
            raise StoreFailure(f"{url} is not of the form rbd://fsid/pool/image/snap")
        _fsid, pool, image, snap = parts
        return pool, image, snap

    def owns(self, url: str) -> bool:
        if not url.startswith("rbd://"):
            return False
        parts = url[len("rbd://"):].split("/")
        return len(parts) == 4 and parts[0] == self.fsid and parts[1] == self.pool

    # -- write ---------------------------------------------------------------------------------------

    async def writer(self, image_id: str, expected_size: int | None) -> Writer:
        ioctx = await self._ensure_connected()
        temp = f"{INCOMING_PREFIX}{self.node_tag}.{image_id}"
        try:
            image = await self._run(self._create_blocking, ioctx, temp, expected_size or 0)
        except _ceph_errors() as exc:
            raise self._error(exc, f"cannot create {temp}") from exc
        return RbdWriter(self, ioctx, image_id, temp, image, expected_size)

    def _create_blocking(self, ioctx: Any, name: str, size: int) -> Any:
        _, rbd = _bindings()
        try:
            _remove_image(ioctx, name)  # a leftover of an earlier attempt by this node
        except rbd.ImageNotFound:
            pass
        # Layering only while the data goes in: exclusive-lock and object-map add lock and map updates to
        # every write, and they stretch a stalled cluster's failure well past rados_op_timeout.
        # The object map is built once the data is whole (see _commit_blocking).
        rbd.RBD().create(ioctx, name, size, order=self.order, old_format=False,
                         features=rbd.RBD_FEATURE_LAYERING)
        return rbd.Image(ioctx, name)

    # -- read ----------------------------------------------------------------------------------------

    async def reader(self, url: str) -> Reader:
        ioctx = await self._ensure_connected()
        pool, name, snap = self.parse(url)
        _, rbd = _bindings()
        try:
            image = await self._run(lambda: rbd.Image(ioctx, name, snapshot=snap, read_only=True))
        except rbd.ImageNotFound:
            raise DoesNotExist(f"image data not found at {url}") from None
        except _ceph_errors() as exc:
            raise self._error(exc, f"cannot open {name}") from exc
        size = await self._run(image.size)
        return RbdReader(image, size)

    # -- delete --------------------------------------------------------------------------------------

    async def delete(self, url: str) -> None:
        ioctx = await self._ensure_connected()
        _pool, name, snap = self.parse(url)
        _, rbd = _bindings()
        try:
            await self._run(self._delete_blocking, ioctx, name, snap)
        except rbd.ImageNotFound:
            return
        except rbd.ImageBusy as exc:
            raise StateConflict(f"Image {name} is in use by clones in RBD store {self.name} "
                                "and cannot be deleted") from exc

    def _delete_blocking(self, ioctx: Any, name: str, snap: str) -> None:
        _, rbd = _bindings()
        with rbd.Image(ioctx, name) as image:
            for existing in image.list_snaps():
                if existing["name"] != snap:
                    continue
                if image.is_protected_snap(snap):
                    if any(True for _ in image.list_children()):
                        raise rbd.ImageBusy("the snapshot has clones")
                    image.unprotect_snap(snap)
                image.remove_snap(snap)
        rbd.RBD().remove(ioctx, name)

    async def check_deletable(self, url: str) -> None:
        """409 if the image's snapshot has clones (Nova/Cinder volumes): called before a delete."""
        ioctx = await self._ensure_connected()
        _pool, name, snap = self.parse(url)
        _, rbd = _bindings()

        def has_children() -> bool:
            try:
                with rbd.Image(ioctx, name, snapshot=snap, read_only=True) as image:
                    return any(True for _ in image.list_children())
            except rbd.ImageNotFound:
                return False

        if await self._run(has_children):
            raise StateConflict(f"Image {name} is in use by clones in RBD store {self.name} and cannot be deleted")


def _whole_buffer(view: memoryview) -> bytes | bytearray | None:
    """The bytes or bytearray ``view`` spans from its first byte to its last, if it does (what
    librbd's binding takes without a copy); None for a part of a buffer or another type."""
    whole = view.obj
    if isinstance(whole, (bytes, bytearray)) and view.c_contiguous and view.nbytes == len(whole):
        return whole
    return None


def _remove_image_if_exists(ioctx: Any, name: str) -> None:
    _, rbd = _bindings()
    try:
        _remove_image(ioctx, name)
    except rbd.ImageNotFound:
        pass


def _remove_image(ioctx: Any, name: str) -> None:
    _, rbd = _bindings()
    with rbd.Image(ioctx, name) as image:
        for snap in list(image.list_snaps()):
            if image.is_protected_snap(snap["name"]):
                image.unprotect_snap(snap["name"])
            image.remove_snap(snap["name"])
    rbd.RBD().remove(ioctx, name)


class RbdWriter(Writer):
    """Re-blocks the stream into object-aligned writes, skips zero blocks, keeps aio_writes in flight.

    librbd copies what ``aio_write`` is given before the call returns (``rbd_disable_zero_copy_writes``,
    which the store forces on), so the writer hands it its own buffers and reuses them at once: one
    staging buffer of an object's size for the small pieces a socket gives, and a large piece that
    is a whole buffer of its own (the thread-read upload's 4 MiB batches, an import's reads) passed
    as it is when it lies inside one object. Data is copied in Python only to gather small pieces,
    and for the non-zero runs of an object that is partly zeros."""

    def __init__(self, store: RbdStore, ioctx: Any, image_id: str, temp: str, image: Any,
                 expected_size: int | None) -> None:
        self.store = store
        self.ioctx = ioctx
        self.image_id = image_id
        self.temp = temp
        self.image = image
        self.expected_size = expected_size
        self.capacity = expected_size or 0
        self.offset = 0  # bytes received
        self.stage: bytearray | None = None  # gathers small pieces up to the end of their object; made on first use
        self.staged = 0  # bytes of the stage in use: the data just before ``offset``
        self.slots = threading.Semaphore(MAX_AIO_IN_FLIGHT)
        self.failure: BaseException | None = None
        self.closed = False
        self.renamed = False
        self.bytes_sent = 0
        self.aborted = False
        # Set when the cluster stopped answering: cleanup then goes to the background reaper, so
        # that the client gets its 503 now rather than after more timed-out operations.
        self.stalled = False

    def _failed(self, exc: BaseException, what: str) -> Exception:
        error = self.store._error(exc, what)
        if isinstance(error, StoreUnavailable):
            self.stalled = True
        return error

    # Runs in the FanOut's worker thread.
    def write(self, chunk: bytes) -> None:
        try:
            self._write(chunk)
        except _ceph_errors() as exc:
            raise self._failed(exc, f"cannot write {self.temp}") from exc

    def _write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._raise_failure()
        view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
        object_size = self.store.object_size
        while view:
            room = object_size - self.offset % object_size  # to the end of the current object
            if not self.staged and len(view) >= DIRECT_MIN and len(view) <= room:
                whole = _whole_buffer(view)
                if whole is not None:
                    # A large piece inside one object, a buffer of its own: no copy on our side.
                    start, self.offset = self.offset, self.offset + len(view)
                    self._flush(view, start, whole)
                    return
            if self.stage is None:
                self.stage = bytearray(object_size)
            take = min(room, len(view))
            self.stage[self.staged:self.staged + take] = view[:take]
            self.staged += take
            self.offset += take
            view = view[take:]
            if take == room:  # the end of an object
                self._flush_stage()

    def _flush_stage(self) -> None:
        if not self.staged:
            return
        assert self.stage is not None
        staged, self.staged = self.staged, 0
        whole = self.stage if staged == len(self.stage) else None
        self._flush(memoryview(self.stage)[:staged], self.offset - staged, whole)

    def _flush(self, data: memoryview, start: int, whole: bytes | bytearray | None) -> None:
        """Write ``data`` (inside one object) at ``start``; ``whole``: the buffer ``data`` spans exactly,
        handed to librbd as it is."""
        end = start + len(data)
        if end > self.capacity:
            self._grow(end)
        if self.store.thin:
            runs = zeroscan.zero_runs(data, self.store.block_size)
            if len(runs) == 1 and not runs[0][2] and whole is not None:
                self._aio_write(whole, start)
                return
            for run_start, run_length, zero in runs:
                if not zero:
                    self._aio_write(bytes(data[run_start:run_start + run_length]), start + run_start)
        else:
            self._aio_write(whole if whole is not None else bytes(data), start)

    def _grow(self, needed: int) -> None:
        # Unknown size: grow ahead in big steps; a resize allocates nothing in Ceph.
        self._wait_all()
        self.capacity = max(needed, self.capacity + GROWTH_STEP)
        self.image.resize(self.capacity)

    def _aio_write(self, data: bytes | bytearray, offset: int) -> None:
        self.slots.acquire()
        self._raise_failure_release()

        def done(completion: Any) -> None:
            result = completion.get_return_value()
            if result < 0 and self.failure is None:
                self.failure = OSError(-result, f"aio_write at {offset} failed")
            self.slots.release()

        try:
            self.image.aio_write(data, offset, done)
        except BaseException:
            self.slots.release()
            raise
        self.bytes_sent += len(data)

    def _raise_failure_release(self) -> None:
        if self.failure is not None:
            self.slots.release()
            raise self.failure

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _wait_all(self) -> None:
        for _ in range(MAX_AIO_IN_FLIGHT):
            self.slots.acquire()
        for _ in range(MAX_AIO_IN_FLIGHT):
            self.slots.release()
        self._raise_failure()

    def _commit_blocking(self) -> int:
        _, rbd = _bindings()
        self._flush_stage()
        self.stage = None
        self._wait_all()
        self.image.flush()
        if self.capacity != self.offset:
            self.image.resize(self.offset)
        self.image.close()
        self.closed = True
        rbd.RBD().rename(self.ioctx, self.temp, self.image_id)
        self.renamed = True
        with rbd.Image(self.ioctx, self.image_id) as image:
            self._enable_object_map(image)
            image.create_snap(SNAPSHOT)
            image.protect_snap(SNAPSHOT)
        return self.offset

    def _enable_object_map(self, image: Any) -> None:
        """The features `rbd import` and Glance's images get (object map, fast-diff), so that `rbd du`
        reports the objects written and clones diff fast. Built from the data: a few stats per GiB."""
        _, rbd = _bindings()
        wanted = rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
        try:
            image.update_features(wanted, True)
            image.rebuild_object_map()
        except _ceph_errors() as exc:  # an old or restricted cluster: the image works without
            log.warning("rbd store %s: no object map for %s: %s", self.store.name, self.image_id, exc)

    async def commit(self) -> StoredData:
        try:
            size = await self.store._run(self._commit_blocking)
        except _ceph_errors() as exc:
            error = self._failed(exc, f"cannot commit {self.image_id}")
            await self.abort()
            raise error from exc
        metrics.sparse_skipped(self.store.name, size - self.bytes_sent)
        return StoredData(self.store.url_of(self.image_id), size, {"bytes_written": self.bytes_sent})

    def _close_quietly(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._wait_all()
        except _ceph_errors():
            pass  # the writes failed: the image is being removed anyway
        try:
            self.image.close()
        except _ceph_errors() as exc:
            log.warning("rbd store %s: closing %s failed: %s", self.store.name, self.temp, exc)

    def _abort_blocking(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._wait_all()
            except OSError:
                pass  # the writes failed; we are removing the image anyway
            self.image.close()
        _remove_image_if_exists(self.ioctx, self.image_id if self.renamed else self.temp)

    async def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        name = self.image_id if self.renamed else self.temp
        if self.stalled:
            log.error("rbd store %s: the cluster stopped answering during the upload of %s; it will be "
                      "removed in the background once the cluster answers", self.store.name, name)
            self.store.orphans.add(name)
            # Our handle would keep the image busy: close it off the request path.
            self.store._executor.submit(self._close_quietly)
            return
        try:
            await self.store._run(self._abort_blocking)
        except _ceph_errors() as exc:
            # The cluster may be down right now: keep retrying in the background.
            log.error("rbd store %s: could not remove %s after a failed upload (will retry): %s",
                      self.store.name, self.temp, exc)
            self.store.orphans.add(self.image_id if self.renamed else self.temp)


class RbdReader(Reader):
    def __init__(self, image: Any, size: int) -> None:
        self.image = image
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return self.image.read(offset, length)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.image.close()
