"""Swift store (OpenStack Swift, Ceph's RADOS Gateway) on python-swiftclient.

Layout, as glance_store's single-tenant swift driver: one object per image in
``swift_store_container`` (or ``<container>_<first N characters of the id>`` with
``swift_store_multiple_containers_seed`` = N), named by the image id. The location is
``swift+http(s)://<auth address>/<container>/<image>``, *without* the credentials
glance_store puts in front of the auth address (``swift+http://user:key@...``):
locations are shown to API callers, so a key there would leak. Such old locations, and
``swift+config://<reference>/...`` ones, are still read, with the store's own
credentials.

The protocol library is python-swiftclient, Swift's own client: it does tempauth (v1)
and Keystone v3 (through keystoneauth1), re-authenticates on 401 and knows Swift's
request forms; its ``Connection`` is blocking, which fits the store contract
(``Writer.write`` and ``Reader.read`` run in worker threads). A ``Connection`` holds
one HTTP connection and is not thread-safe, so the store keeps a small pool of them
(sharing one token); a reader holds one while its body is open.

Writes stream with bounded memory and never leave a half-written object under an
image's name:
- an image of known size below ``swift_store_large_object_size`` is one PUT with its
  Content-Length, fed from a queue of at most ``QUEUE_CHUNKS`` chunks while the data
  arrives: Swift makes the object visible only once the whole body is in, and a PUT
  cut short leaves nothing;
- a larger one, or one of unknown size (as glance_store), is a Static Large Object:
  segments of ``swift_store_large_object_chunk_size`` (grown for a known size that would
  need more than ``MAX_SEGMENTS``) are streamed the same way, one after the other, as
  ``<image>/streamd-segments/<upload token>/<NNNNN>`` in the image's container, and the
  SLO manifest (which carries the token as ``X-Object-Meta-Streamd-Upload``) is put on
  commit. Until then the image has no object. glance_store writes Dynamic Large Objects
  (``X-Object-Manifest``) instead; a DLO is whatever its prefix lists, so segments a failed
  upload left under it would join the object: an SLO names its segments exactly.
An aborted write stops its PUT and deletes the segments written. Every segmented upload
is recorded in a journal file under the node's data directory until its manifest is in
or its segments are gone; at start-up the node deletes the segments its journal names
(a crash left them) unless the image's manifest carries their token. The reaper
(a background job) retries that, and deletes, in the whole container, the segments of
uploads whose manifest never landed (no manifest of the image carries their token)
once their newest segment is ``STALE_UPLOAD_AGE`` seconds old: a live upload adds a
segment every chunk, so by then no writer is left (another node's live uploads are safe).
Reads are ranged GETs whose windows grow while the reads go on in order. Delete removes
the manifest and its segments (``multipart-manifest=delete``), and the segments of a
Dynamic Large Object Glance wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import queue
import re
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import quote, unquote, urlparse

from ..background import PeriodicJob
from ..config import SwiftStoreOptions
from ..errors import DoesNotExist, OutOfSpace, StoreFailure, StoreUnavailable
from .base import PROBE_DATA, Reader, StoredData, Store, StoreHealth, Writer
from .journal import UploadJournal
from .ranged import RangedReader

log = logging.getLogger(__name__)

T = TypeVar("T")
MIB = 1 << 20
SCHEMES = ("swift", "swift+http", "swift+https", "swift+config")
# Swift's (and radosgw's rgw_max_slo_entries) default limit of segments in one SLO manifest.
MAX_SEGMENTS = 1000
# Swift's default largest object (and segment).
MAX_OBJECT = 5 << 30
# Chunks waiting for a PUT at most (each is one chunk of the stream, 4 MiB in the pipeline).
QUEUE_CHUNKS = 2
# An upload whose newest segment is this old has no writer left.
STALE_UPLOAD_AGE = 3600.0
# How often the container is swept for orphaned segments and failed cleanups are retried.
REAPER_INTERVAL = 600.0
UPLOAD_HEADER = "X-Object-Meta-Streamd-Upload"
SEGMENTS = "streamd-segments"
SEGMENT_RE = re.compile(rf"^(?P<obj>[^/]+)/{SEGMENTS}/(?P<token>[0-9a-f]{{16}})/(?P<n>\d{{5,}})$")


def _swiftclient() -> Any:
    try:
        import swiftclient.client
        import swiftclient.exceptions
    except ImportError as exc:  # pragma: no cover - a dependency of streamd
        raise StoreUnavailable(f"python-swiftclient is not installed: {exc}") from exc
    return swiftclient


def _strip_scheme(address: str) -> str:
    return address.split("://", 1)[1] if "://" in address else address


def _timestamp(listed: str) -> float:
    """A container listing's last_modified (UTC; radosgw ends it in Z, Swift gives no zone)."""
    stamp = datetime.fromisoformat(listed.removesuffix("Z"))
    return stamp.replace(tzinfo=timezone.utc).timestamp()


def segment_name(obj: str, token: str, number: int) -> str:
    return f"{obj}/{SEGMENTS}/{token}/{number:05d}"


class _KeystoneSession:
    """What swiftclient asks of a keystoneauth1 session, with ``swift_store_endpoint`` (when set) as the
    storage URL: the catalogue is then not looked at (it may have no object-store endpoint)."""

    def __init__(self, session: Any, endpoint: str | None) -> None:
        self.session = session
        self.endpoint = endpoint

    def get_endpoint(self, **kwargs: Any) -> str:
        return self.endpoint or self.session.get_endpoint(**kwargs)  # type: ignore[no-any-return]

    def get_token(self) -> str:
        return self.session.get_token()  # type: ignore[no-any-return]

    def invalidate(self) -> bool:
        return self.session.invalidate()  # type: ignore[no-any-return]


class _Cancelled(Exception):
    """Raised into a PUT's body to cut the request short."""


class _QueueBody:
    """The body of a streamed PUT: what ``feed`` queues, read by the HTTP client in its thread."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None | _Cancelled] = queue.Queue(QUEUE_CHUNKS)
        self.rest = memoryview(b"")
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        while not self.rest:
            if self.ended:
                return b""
            item = self.chunks.get()
            if isinstance(item, _Cancelled):
                self.ended = True
                raise item
            if item is None:
                self.ended = True
                return b""
            self.rest = memoryview(item)
        n = len(self.rest) if size is None or size < 0 else min(size, len(self.rest))
        out, self.rest = bytes(self.rest[:n]), self.rest[n:]
        return out


class StreamedPut:
    """One PUT in its own thread, its body fed chunk by chunk (a bounded queue)."""

    def __init__(self, store: "SwiftStore", container: str, name: str, length: int | None) -> None:
        self.store = store
        self.container = container
        self.name = name
        self.length = length
        self.size = 0
        self.body = _QueueBody()
        self.future: Future[str] = Future()
        self.thread = threading.Thread(target=self._run, name=f"swift-put-{name[:24]}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.store.connection() as conn:
                etag = conn.put_object(self.container, self.name, self.body, content_length=self.length,
                                       chunk_size=256 * 1024)
            self.future.set_result(str(etag))
        except BaseException as exc:  # noqa: BLE001 - handed to the writer
            self.future.set_exception(exc)

    def _put(self, item: bytes | None | _Cancelled) -> None:
        # Never block forever on a PUT that stopped reading (it failed, or has its whole length):
        # wait in slices.
        while True:
            if self.future.done():
                if not isinstance(item, bytes):
                    return
                self.future.result()  # raises its failure
                raise StoreFailure(f"Swift store {self.store.name}: the PUT of {self.name} ended early")
            try:
                self.body.chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self._put(data)

    def finish(self) -> str:
        self._put(None)
        return self.future.result()

    def cancel(self) -> bool:
        """Cut the PUT short and wait for its thread; True if it had completed (the object exists)."""
        if not self.future.done():
            # Make room, then tell the body to raise.
            with contextlib.suppress(queue.Empty):
                while True:
                    self.body.chunks.get_nowait()
            self._put(_Cancelled())
        try:
            self.future.result()
        except BaseException:  # noqa: BLE001 - cut short, as wanted
            return False
        return True


class SwiftStore(Store):
    type = "swift"

    def __init__(self, name: str, options: SwiftStoreOptions, state_dir: Path) -> None:
        self.name = name
        self.options = options
        if not (options.swift_store_auth_address and options.swift_store_user and options.swift_store_key):
            raise StoreFailure(f"Swift store {name}: swift_store_auth_address, swift_store_user and "
                               "swift_store_key are required")
        if options.swift_store_multi_tenant:
            raise StoreFailure(f"Swift store {name}: swift_store_multi_tenant is not supported")
        self.auth_address = options.swift_store_auth_address.strip()
        self.auth_host = _strip_scheme(self.auth_address).strip("/")
        self.scheme = "swift+http" if self.auth_address.startswith("http://") else "swift+https"
        self.container = options.swift_store_container
        self.large_object_size = options.swift_store_large_object_size * MIB
        self.segment_size = min(options.swift_store_large_object_chunk_size * MIB, MAX_OBJECT)
        self.journal = UploadJournal(state_dir, f"swift store {name}")
        self._executor = ThreadPoolExecutor(8, thread_name_prefix=f"swift-{name}")
        self._pool: list[Any] = []
        self._pool_lock = threading.Lock()
        self._auth: tuple[str, str] | None = None  # (storage URL, token), shared by the connections
        self._session: Any = None  # keystoneauth1's, with swift_store_auth_version = 3
        self._containers_checked: set[str] = set()
        # Upload tokens this process's writers have open: the reaper leaves their segments alone.
        self.live_uploads: set[str] = set()

    # -- client -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _keystone_session(self) -> Any:
        """One keystoneauth1 session (Keystone v3 password auth, its token shared) for the store."""
        with self._pool_lock:
            if self._session is None:
                from keystoneauth1 import session as ksa_session
                from keystoneauth1.identity import v3

                o = self.options
                project, _, user = str(o.swift_store_user).rpartition(":")
                auth = v3.Password(auth_url=self.auth_address, username=user, password=o.swift_store_key,
                                   project_name=project, user_domain_name=o.swift_store_user_domain_name,
                                   project_domain_name=o.swift_store_project_domain_name)
                verify: bool | str = False if o.swift_store_auth_insecure else (o.swift_store_cacert or True)
                self._session = _KeystoneSession(ksa_session.Session(auth=auth, verify=verify, timeout=60),
                                                 o.swift_store_endpoint or None)
            return self._session

    def _new_connection(self) -> Any:
        swiftclient = _swiftclient()
        o = self.options
        os_options: dict[str, str] = {"service_type": o.swift_store_service_type,
                                      "endpoint_type": o.swift_store_endpoint_type}
        if o.swift_store_region:
            os_options["region_name"] = o.swift_store_region
        if o.swift_store_endpoint:  # the storage URL, instead of the one auth (or the catalogue) gives
            os_options["object_storage_url"] = o.swift_store_endpoint
        common: dict[str, Any] = dict(os_options=os_options, insecure=o.swift_store_auth_insecure,
                                      cacert=o.swift_store_cacert or None, retries=2, starting_backoff=0.5,
                                      timeout=60)
        if o.swift_store_auth_version == "3":
            # Keystone through keystoneauth1 (swiftclient's own v3 path goes through python-keystoneclient).
            return swiftclient.client.Connection(session=self._keystone_session(), **common)
        url, token = self._auth or (None, None)
        return swiftclient.client.Connection(
            authurl=self.auth_address, user=o.swift_store_user, key=o.swift_store_key, auth_version="1",
            preauthurl=url, preauthtoken=token, **common)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A connection of the pool for one call (or one open body); a connection whose call
        failed is closed, not put back."""
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self._new_connection()
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        if conn.url and conn.token:
            self._auth = (conn.url, conn.token)
        with self._pool_lock:
            if len(self._pool) < 16:
                self._pool.append(conn)
                return
        conn.close()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.connection() as conn:
            return getattr(conn, method)(*args, **kwargs)

    def _errors(self) -> tuple[type[BaseException], ...]:
        swiftclient = _swiftclient()
        import requests

        errors: tuple[type[BaseException], ...] = (swiftclient.exceptions.ClientException,
                                                   requests.exceptions.RequestException)
        try:
            import keystoneauth1.exceptions

            errors += (keystoneauth1.exceptions.ClientException,)
        except ImportError:  # pragma: no cover
            pass
        return errors

    def _error(self, exc: BaseException, what: str) -> Exception:
        """The streamd error for a swiftclient (requests, keystoneauth1) failure."""
        import requests

        swiftclient = _swiftclient()
        if isinstance(exc, StoreFailure):
            return exc
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return StoreUnavailable(f"Swift store {self.name}: {what}: {self.auth_address} did not answer ({exc})")
        if isinstance(exc, swiftclient.exceptions.ClientException):
            status = exc.http_status or 0
            if status == 404:
                return DoesNotExist(f"Swift store {self.name}: {what}: no such object")
            if status in (413, 507):
                return OutOfSpace(f"Swift store {self.name}: {what}: no space left ({status})")
            if status in (502, 503, 504) or (status == 0 and "connect" in str(exc).lower()):
                return StoreUnavailable(f"Swift store {self.name}: {what}: {self.auth_address} is unavailable "
                                        f"({exc})")
            return StoreFailure(f"Swift store {self.name}: {what}: {exc}")
        try:
            import keystoneauth1.exceptions

            if isinstance(exc, (keystoneauth1.exceptions.ConnectFailure, keystoneauth1.exceptions.ConnectTimeout)):
                return StoreUnavailable(f"Swift store {self.name}: {what}: {self.auth_address} did not answer "
                                        f"({exc})")
        except ImportError:  # pragma: no cover
            pass
        return StoreFailure(f"Swift store {self.name}: {what}: {exc}")

    @staticmethod
    def _status(exc: BaseException) -> int:
        return int(getattr(exc, "http_status", 0) or 0)

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Authenticate and delete the segments this node's journal names (a crash left them). An
        unreachable Swift is not fatal: requests to this store get 503 until it answers."""
        self.journal.create()
        try:
            removed = await self._run(self._clean_journaled)
        except self._errors() as exc:
            log.error("%s", self._error(exc, "cannot remove the segments a crash left"))
            return
        if removed:
            log.warning("swift store %s: removed the segments of %d interrupted upload(s): %s", self.name,
                        len(removed), ", ".join(removed))

    async def stop(self) -> None:
        self._executor.shutdown(wait=False)
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            with contextlib.suppress(Exception):
                conn.close()

    def background_jobs(self) -> list[PeriodicJob]:
        return [PeriodicJob(f"swift reaper ({self.name})", REAPER_INTERVAL, self.reap)]

    async def reap(self) -> None:
        """Retry the cleanups that failed, and delete the container's orphaned segments."""
        try:
            await self._run(self._clean_journaled)
            removed = await self._run(self.remove_orphaned_segments, STALE_UPLOAD_AGE)
        except self._errors() as exc:
            log.warning("%s", self._error(exc, "reaping interrupted uploads"))
            return
        if removed:
            log.warning("swift store %s: removed the orphaned segments of %d upload(s): %s", self.name,
                        len(removed), ", ".join(removed))

    # -- journal of open segmented uploads -------------------------------------------------------

    def journal_open(self, container: str, obj: str, token: str) -> None:
        self.journal.record(token, {"container": container, "obj": obj, "token": token})

    def journal_close(self, token: str) -> None:
        self.journal.drop(token)

    def _clean_journaled(self) -> list[str]:
        removed = []
        for path, (container, obj, token) in self.journal.entries("container", "obj", "token"):
            if token in self.live_uploads:
                continue
            if self._manifest_token(container, obj) != token:
                self.delete_segments(container, obj, token)
            path.unlink(missing_ok=True)
            removed.append(obj)
        return removed

    def _manifest_token(self, container: str, obj: str) -> str | None:
        """The upload token the image's manifest carries (None: no object, or not one of ours)."""
        try:
            headers = self._call("head_object", container, obj)
        except _swiftclient().exceptions.ClientException as exc:
            if self._status(exc) == 404:
                return None
            raise
        return headers.get(UPLOAD_HEADER.lower())  # type: ignore[no-any-return]

    def _listing(self, container: str, prefix: str | None = None) -> list[dict[str, Any]]:
        try:
            return self._call("get_container", container, prefix=prefix, full_listing=True)[1]  # type: ignore[no-any-return]
        except _swiftclient().exceptions.ClientException as exc:
            if self._status(exc) == 404:
                return []
            raise

    def _delete_quietly(self, container: str, name: str, query_string: str | None = None) -> None:
        """Delete one object; one already gone is no error."""
        try:
            self._call("delete_object", container, name, query_string=query_string)
        except _swiftclient().exceptions.ClientException as exc:
            if self._status(exc) != 404:
                raise

    def delete_segments(self, container: str, obj: str, token: str, names: list[str] | None = None) -> None:
        for name in names if names is not None else [
                o["name"] for o in self._listing(container, f"{obj}/{SEGMENTS}/{token}/")]:
            self._delete_quietly(container, name)

    def _containers(self) -> list[str]:
        if not self.options.swift_store_multiple_containers_seed:
            return [self.container]
        account = self._call("get_account", prefix=self.container + "_", full_listing=True)[1]
        return [c["name"] for c in account]

    def remove_orphaned_segments(self, age: float) -> list[str]:
        """Delete the segments of uploads no manifest carries the token of, once the newest of them
        is ``age`` seconds old."""
        now = time.time()
        removed = []
        for container in self._containers():
            uploads: dict[tuple[str, str], list[tuple[str, float]]] = {}
            for entry in self._listing(container):
                match = SEGMENT_RE.match(entry["name"])
                if match:
                    stamp = _timestamp(entry["last_modified"])
                    uploads.setdefault((match["obj"], match["token"]), []).append((entry["name"], stamp))
            for (obj, token), segments in uploads.items():
                if token in self.live_uploads or now - max(s for _n, s in segments) < age:
                    continue
                if self._manifest_token(container, obj) == token:
                    continue
                self.delete_segments(container, obj, token, [n for n, _s in segments])
                removed.append(obj)
        return removed

    # -- health, properties -----------------------------------------------------------------------

    async def check(self) -> StoreHealth:
        """Write, read back and remove a small object in the container."""
        name = f"streamd-healthcheck.{secrets.token_hex(6)}"

        def probe() -> None:
            self._ensure_container(self.container)
            self._call("put_object", self.container, name, PROBE_DATA)
            try:
                _headers, body = self._call("get_object", self.container, name)
                if body != PROBE_DATA:
                    raise StoreFailure(f"Swift store {self.name}: {name} did not read back what was written")
            finally:
                self._delete_quietly(self.container, name)

        try:
            await self._run(probe)
        except (*self._errors(), StoreFailure) as exc:
            error = self._error(exc, f"container {self.container} is not writable")
            if isinstance(error, StoreUnavailable):
                raise error from exc
            raise StoreUnavailable(error.message) from exc
        return StoreHealth(f"Swift store {self.name}: container {self.container} at {self.auth_address} "
                           "writable and readable")

    def properties(self) -> dict[str, object]:
        # Glance 33's keys (discovery's _get_swift_properties), the sizes in bytes as Glance shows them.
        return {"container": self.container, "large_object_size": self.large_object_size,
                "large_object_chunk_size": self.segment_size}

    # -- locations ----------------------------------------------------------------------------------

    def container_of(self, image_id: str) -> str:
        """glance_store's rule: the container, or with a seed of N, ``<container>_<first N characters
        of the id, its dashes not counted>``."""
        seed = self.options.swift_store_multiple_containers_seed
        if not seed:
            return self.container
        image_id = image_id.lower()
        return f"{self.container}_{image_id[:seed + image_id[:seed].count('-')]}"

    def url_of(self, image_id: str) -> str:
        return f"{self.scheme}://{self.auth_host}/{quote(self.container_of(image_id))}/{quote(image_id)}"

    def parse(self, url: str) -> tuple[str, str, str]:
        """(auth address without scheme, container, object) of a ``swift+http(s)://[user:key@]auth/c/o``
        location; a ``swift+config://reference/c/o`` one has the reference as its address."""
        if url.count("://") != 1:
            raise StoreFailure(f"{url} is not a swift location (one scheme, e.g. swift+https://auth/container/obj)")
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES:
            raise StoreFailure(f"{url} is not a swift location")
        netloc = parsed.netloc.rpartition("@")[2]  # glance_store's locations carry user:key@
        parts = (netloc + "/" + parsed.path.strip("/")).strip("/").split("/")
        if len(parts) < 3 or not all(parts[-2:]):
            raise StoreFailure(f"{url} is not of the form swift+https://auth/container/obj")
        return "/".join(parts[:-2]), unquote(parts[-2]), unquote(parts[-1])

    def owns(self, url: str) -> bool:
        try:
            address, _container, _obj = self.parse(url)
        except StoreFailure:
            return False
        if url.startswith("swift+config://"):
            return address == self.options.default_swift_reference
        return address == self.auth_host

    # -- write ---------------------------------------------------------------------------------------

    def _ensure_container(self, container: str) -> None:
        if container in self._containers_checked:
            return
        try:
            self._call("head_container", container)
        except _swiftclient().exceptions.ClientException as exc:
            if self._status(exc) != 404:
                raise
            if not self.options.swift_store_create_container_on_put:
                raise StoreFailure(f"Swift store {self.name}: the container {container} does not exist; set "
                                   "swift_store_create_container_on_put to have it created") from None
            self._call("put_container", container)
            log.info("swift store %s: created container %s", self.name, container)
        self._containers_checked.add(container)

    async def writer(self, image_id: str, expected_size: int | None) -> Writer:
        container = self.container_of(image_id)
        try:
            await self._run(self._ensure_container, container)
        except self._errors() as exc:
            raise self._error(exc, f"container {container}") from exc
        return SwiftWriter(self, container, image_id, expected_size)

    # -- read ----------------------------------------------------------------------------------------

    async def reader(self, url: str) -> Reader:
        _address, container, obj = self.parse(url)
        try:
            headers = await self._run(self._call, "head_object", container, obj)
        except self._errors() as exc:
            error = self._error(exc, f"cannot open {container}/{obj}")
            if isinstance(error, DoesNotExist):
                raise DoesNotExist(f"image data not found at {url}") from None
            raise error from exc
        return SwiftReader(self, container, obj, int(headers.get("content-length", 0)))

    # -- delete --------------------------------------------------------------------------------------

    def _remove(self, container: str, obj: str) -> None:
        try:
            headers = self._call("head_object", container, obj)
        except _swiftclient().exceptions.ClientException as exc:
            if self._status(exc) == 404:
                return
            raise
        if str(headers.get("x-static-large-object", "")).lower() == "true":
            self._delete_quietly(container, obj, "multipart-manifest=delete")
            token = headers.get(UPLOAD_HEADER.lower())
            if token:  # where the server deletes only the manifest, the segments go too
                self.delete_segments(container, obj, token)
            return
        dlo = headers.get("x-object-manifest")
        if dlo:  # a Dynamic Large Object glance_store wrote: its segments, then the manifest
            seg_container, _, prefix = dlo.partition("/")
            for entry in self._listing(seg_container, prefix):
                self._delete_quietly(seg_container, entry["name"])
        self._delete_quietly(container, obj)

    async def delete(self, url: str) -> None:
        _address, container, obj = self.parse(url)
        try:
            await self._run(self._remove, container, obj)
        except self._errors() as exc:
            raise self._error(exc, f"cannot delete {container}/{obj}") from exc


class SwiftWriter(Writer):
    """One streamed PUT for a small image of known size; streamed segments and an SLO manifest otherwise."""

    def __init__(self, store: SwiftStore, container: str, obj: str, expected_size: int | None) -> None:
        self.store = store
        self.container = container
        self.obj = obj
        self.expected_size = expected_size
        self.segment_size = store.segment_size
        if expected_size is not None and math.ceil(expected_size / self.segment_size) > MAX_SEGMENTS:
            self.segment_size = math.ceil(expected_size / MAX_SEGMENTS)
        self.segmented = expected_size is None or (expected_size > 0 and expected_size >= store.large_object_size)
        self.token = secrets.token_hex(8)
        self.size = 0
        self.put: StreamedPut | None = None
        self.held = b""
        self.segments: list[dict[str, object]] = []  # the manifest: path, etag, size_bytes
        self.journaled = False
        self.committed = False
        self.aborted = False

    # Runs in the FanOut's worker thread.
    def write(self, chunk: bytes) -> None:
        try:
            self._write(chunk)
        except self.store._errors() as exc:
            raise self.store._error(exc, f"cannot write {self.container}/{self.obj}") from exc

    def _write(self, chunk: bytes) -> None:
        if self.aborted:
            raise StoreFailure(f"Swift store {self.store.name}: the upload of {self.obj} was aborted")
        if self.expected_size is not None and self.size + len(chunk) > self.expected_size:
            raise StoreFailure(f"Swift store {self.store.name}: more data than the {self.expected_size} bytes "
                               f"announced for {self.obj}")
        if not self.segmented:
            # The last chunk is held back until commit: the PUT cannot complete (and the object
            # appear) before.
            if self.put is None:
                self.put = StreamedPut(self.store, self.container, self.obj, self.expected_size)
            if self.held:
                self.put.feed(self.held)
            self.held = chunk
            self.size += len(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self.put is None:
                self._begin_segment()
            assert self.put is not None
            room = self.segment_size - self.put.size
            piece, view = view[:room], view[room:]
            self.put.feed(bytes(piece) if len(piece) != len(chunk) else chunk)
            self.size += len(piece)
            if self.put.size >= self.segment_size:
                self._end_segment()

    def _begin_segment(self) -> None:
        if not self.journaled:
            self.store.live_uploads.add(self.token)
            self.store.journal_open(self.container, self.obj, self.token)
            self.journaled = True
        length = None
        if self.expected_size is not None:
            length = min(self.segment_size, self.expected_size - self.size)
        name = segment_name(self.obj, self.token, len(self.segments) + 1)
        self.put = StreamedPut(self.store, self.container, name, length)

    def _end_segment(self) -> None:
        put, self.put = self.put, None
        assert put is not None
        etag = put.finish()
        self.segments.append({"path": f"/{self.container}/{put.name}", "etag": etag, "size_bytes": put.size})

    def _commit_blocking(self) -> None:
        if self.expected_size is not None and self.size != self.expected_size:
            raise StoreFailure(f"Swift store {self.store.name}: {self.size} bytes written of the "
                               f"{self.expected_size} announced for {self.obj}")
        if not self.segmented or (not self.segments and self.put is None):
            # One object (an empty image of unknown size too: an SLO needs a segment).
            if self.put is None:
                self.store._call("put_object", self.container, self.obj, b"", content_length=0)
            else:
                if self.held:
                    self.put.feed(self.held)
                    self.held = b""
                self.put.finish()
                self.put = None
            return
        if self.put is not None:
            self._end_segment()
        manifest = json.dumps(self.segments)
        self.store._call("put_object", self.container, self.obj, manifest, query_string="multipart-manifest=put",
                         headers={UPLOAD_HEADER: self.token, "Content-Type": "application/octet-stream"})
        self.store.journal_close(self.token)

    async def commit(self) -> StoredData:
        try:
            await self.store._run(self._commit_blocking)
        except (*self.store._errors(), StoreFailure) as exc:
            error = self.store._error(exc, f"cannot commit {self.container}/{self.obj}")
            await self.abort()
            raise error from exc
        finally:
            self.store.live_uploads.discard(self.token)
        self.committed = True
        return StoredData(self.store.url_of(self.obj), self.size)

    def _abort_blocking(self) -> None:
        self.held = b""
        if self.put is not None:
            put, self.put = self.put, None
            if put.cancel() and not self.segmented:
                self.store._delete_quietly(self.container, self.obj)
        if self.committed:
            self.store._remove(self.container, self.obj)
            return
        if self.journaled:
            # Segments this upload wrote (listed, as a PUT cut short may still have landed).
            self.store.delete_segments(self.container, self.obj, self.token)
            self.store.journal_close(self.token)

    async def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        try:
            await self.store._run(self._abort_blocking)
        except self.store._errors() as exc:
            # The journal entry stays: the reaper retries the cleanup.
            log.error("swift store %s: could not remove the segments of %s (will retry): %s",
                      self.store.name, self.obj, exc)
        finally:
            self.store.live_uploads.discard(self.token)


class SwiftReader(RangedReader):
    """Ranged GETs of one object (``RangedReader``: windows growing while the reads go on in order)."""

    def __init__(self, store: SwiftStore, container: str, obj: str, size: int) -> None:
        super().__init__(size, f"Swift store {store.name}: {container}/{obj}")
        self.store = store
        self.container = container
        self.obj = obj
        self._conn: Any = None

    def _get_range(self, offset: int, end: int) -> Any:
        # The body holds its own connection while it is open.
        conn = self.store._new_connection()
        try:
            _headers, body = conn.get_object(self.container, self.obj, resp_chunk_size=256 * 1024,
                                             headers={"Range": f"bytes={offset}-{end - 1}"})
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return body

    def _release(self, body: Any) -> None:
        conn, self._conn = self._conn, None
        # Closing a body or connection the server already dropped fails the same way it died.
        with contextlib.suppress(*self._broken_stream_errors()):
            body.close()
        if conn is not None:
            with contextlib.suppress(*self._broken_stream_errors()):
                conn.close()

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        return self.store._errors()

    def _failure(self, exc: BaseException) -> Exception:
        if isinstance(exc, self.store._errors()):
            return self.store._error(exc, f"cannot read {self.container}/{self.obj}")
        return StoreFailure(f"{self.label}: reading failed: {exc}")
