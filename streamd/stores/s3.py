"""S3 store (Amazon S3, Ceph's RADOS Gateway, any S3 server) on botocore's client.

Layout, as glance_store's s3 driver: one object per image in ``s3_store_bucket``,
named by the image id; the location is ``s3://host[:port]/bucket/image``
(``s3+https://`` for an https endpoint). Credentials are never put in the
location (glance_store's old boto 2 driver wrote ``s3://ACCESS:SECRET@host/...``:
locations are shown to API callers, so a secret there would leak); such old
locations are still read, with the store's own credentials.

The protocol library is botocore's synchronous client, not aiobotocore: the store
contract's ``Writer.write`` and ``Reader.read`` are blocking calls in a worker
thread already, so a blocking client fits them without bridging back to the event
loop per chunk, and aiobotocore pins botocore to narrow ranges. Calls made from the
event loop (connect, commit, abort, delete) go to the store's own bounded executor.

Writes never leave a half-written object under an image's name:
- an image below ``s3_store_large_object_size`` is buffered (at most that many
  bytes) and written in one PUT on commit, which S3 makes visible atomically;
- a larger one (or one of unknown size once its data passes the threshold) is a
  multipart upload: parts of ``s3_store_large_object_chunk_size`` go out as they
  fill, at most ``s3_store_thread_pools`` of them in flight (each held in memory
  until sent), and the object exists only when the upload is completed on commit.
An aborted write aborts its multipart upload. Every open upload is recorded in a
journal file under the node's data directory until it is completed or aborted (the
entry is written before the upload is created, and names only the key until the
gateway has given the upload its id); at start-up the node aborts the uploads its
journal names (a crash left them), and a
background job aborts, in the whole bucket, any multipart upload that has received
no part for ``STALE_UPLOAD_AGE`` seconds (a node that died with its journal, or
another node's): a live upload sends a part every chunk, so an hour without one
means no writer is left.
Reads are ranged GETs whose windows grow while the reads go on in order, so a small
Range request reads little and a whole download takes few requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from ..background import PeriodicJob
from ..config import S3StoreOptions
from ..errors import DoesNotExist, OutOfSpace, StoreFailure, StoreUnavailable
from .base import PROBE_DATA, Reader, StoredData, Store, StoreHealth, Writer
from .journal import UploadJournal
from .ranged import RangedReader

log = logging.getLogger(__name__)

T = TypeVar("T")
MIB = 1 << 20
MAX_PARTS = 10000  # S3's limit of parts in one multipart upload
SCHEMES = ("s3", "s3+http", "s3+https")
# A multipart upload that has received no part for this long has no writer left.
STALE_UPLOAD_AGE = 3600.0
# How often the bucket is swept for stale uploads and failed aborts are retried.
REAPER_INTERVAL = 600.0

# Amazon's regional endpoints imply their region (glance_store's table, by its rule).
_AMAZON_REGION = re.compile(r"^s3[-.](?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?$")


def _botocore() -> Any:
    try:
        import botocore.config
        import botocore.exceptions
        import botocore.session
    except ImportError as exc:  # pragma: no cover - a dependency of streamd
        raise StoreUnavailable(f"botocore is not installed: {exc}") from exc
    return botocore


def _split_host(host: str) -> tuple[str, str]:
    """(endpoint URL, host as locations show it) of ``s3_store_host``."""
    host = host.strip().rstrip("/")
    if host.startswith(("http://", "https://")):
        return host, host.split("://", 1)[1]
    return "http://" + host, host


class S3Store(Store):
    type = "s3"

    def __init__(self, name: str, options: S3StoreOptions, state_dir: Path) -> None:
        self.name = name
        self.options = options
        if not (options.s3_store_host and options.s3_store_access_key and options.s3_store_secret_key
                and options.s3_store_bucket):
            raise StoreFailure(f"S3 store {name}: s3_store_host, s3_store_access_key, s3_store_secret_key "
                               "and s3_store_bucket are required")
        self.endpoint, self.host = _split_host(options.s3_store_host)
        self.scheme = "s3+https" if self.endpoint.startswith("https://") else "s3"
        self.bucket = options.s3_store_bucket
        self.large_object_size = options.s3_store_large_object_size * MIB
        self.part_size = options.s3_store_large_object_chunk_size * MIB
        self.parallel = options.s3_store_thread_pools
        self.journal = UploadJournal(state_dir, f"s3 store {name}")
        self._executor = ThreadPoolExecutor(8, thread_name_prefix=f"s3-{name}")
        # Part uploads, shared by the store's writers (each has at most `parallel` in flight).
        self.part_executor = ThreadPoolExecutor(max(4 * self.parallel, 8), thread_name_prefix=f"s3p-{name}")
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._bucket_checked = False
        # Multipart uploads this process's writers have open: the reaper leaves their journal entries alone.
        self.live_uploads: set[str] = set()
        # (bucket, key) of the uploads being created right now: their journal entries have no upload id yet.
        self.beginning: set[tuple[str, str]] = set()

    # -- client -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def client(self) -> Any:
        """botocore's S3 client (thread-safe), made on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        botocore = _botocore()
        o = self.options
        if o.s3_store_enable_data_integrity_protection:
            request_checksum, response_checksum = (o.s3_store_request_checksum_calculation,
                                                   o.s3_store_response_checksum_validation)
        else:
            request_checksum = response_checksum = "when_required"
        config = botocore.config.Config(
            s3={"addressing_style": o.s3_store_bucket_url_format},
            signature_version="s3v4",
            connect_timeout=10, read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=4 * self.parallel + 8,
            request_checksum_calculation=request_checksum,
            response_checksum_validation=response_checksum,
        )
        region = o.s3_store_region_name
        if not region:
            match = _AMAZON_REGION.match(self.host.split(":")[0])
            region = match.group("region") if match else "us-east-1"
        session = botocore.session.get_session()
        return session.create_client(
            "s3", endpoint_url=self.endpoint, region_name=region,
            aws_access_key_id=o.s3_store_access_key, aws_secret_access_key=o.s3_store_secret_key,
            verify=o.s3_store_cacert or None, config=config)

    def _error(self, exc: BaseException, what: str) -> Exception:
        """The streamd error for a botocore failure."""
        botocore = _botocore()
        e = botocore.exceptions
        if isinstance(exc, (e.EndpointConnectionError, e.ConnectTimeoutError, e.ReadTimeoutError,
                            e.ConnectionClosedError)):
            return StoreUnavailable(f"S3 store {self.name}: {what}: {self.endpoint} did not answer ({exc})")
        if isinstance(exc, e.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
                return DoesNotExist(f"S3 store {self.name}: {what}: no such object")
            if code in ("QuotaExceeded", "InsufficientCapacity") or status == 507:
                return OutOfSpace(f"S3 store {self.name}: {what}: no space left ({code})")
            if code in ("SlowDown", "ServiceUnavailable") or status in (502, 503, 504):
                return StoreUnavailable(f"S3 store {self.name}: {what}: {self.endpoint} is unavailable ({code})")
            return StoreFailure(f"S3 store {self.name}: {what}: {code or status}: {exc}")
        if isinstance(exc, e.BotoCoreError):
            return StoreFailure(f"S3 store {self.name}: {what}: {exc}")
        return StoreFailure(f"S3 store {self.name}: {what}: {exc}")

    def _errors(self) -> tuple[type[BaseException], ...]:
        botocore = _botocore()
        return (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the client and abort the uploads this node's journal names (a crash left them). An
        unreachable endpoint is not fatal: requests to this store get 503 until it answers."""
        self.journal.create()
        await self._run(lambda: self.client)
        try:
            aborted = await self._run(self._abort_journaled)
        except self._errors() as exc:
            log.error("%s", self._error(exc, "cannot abort the uploads a crash left"))
            return
        if aborted:
            log.warning("s3 store %s: aborted %d interrupted upload(s): %s", self.name, len(aborted),
                        ", ".join(aborted))

    async def stop(self) -> None:
        self._executor.shutdown(wait=False)
        self.part_executor.shutdown(wait=False)

    def background_jobs(self) -> list[PeriodicJob]:
        return [PeriodicJob(f"s3 reaper ({self.name})", REAPER_INTERVAL, self.reap)]

    async def reap(self) -> None:
        """Retry the aborts that failed, and abort the bucket's stale multipart uploads."""
        try:
            await self._run(self._abort_journaled)
            aborted = await self._run(self.abort_stale_uploads, STALE_UPLOAD_AGE)
        except self._errors() as exc:
            log.warning("%s", self._error(exc, "reaping interrupted uploads"))
            return
        if aborted:
            log.warning("s3 store %s: aborted %d stale multipart upload(s) of bucket %s: %s", self.name,
                        len(aborted), self.bucket, ", ".join(aborted))

    # -- journal of open multipart uploads -------------------------------------------------------

    def journal_open(self, bucket: str, key: str, upload_id: str) -> None:
        self.journal.record(upload_id, {"bucket": bucket, "key": key, "upload_id": upload_id})

    def create_upload(self, bucket: str, key: str) -> str:
        """Create a multipart upload, journaled before the gateway is asked: a crash between its
        reply and the journal entry would otherwise leave an upload that no start-up aborts."""
        intent = f"creating {bucket}/{key}"
        self.beginning.add((bucket, key))
        try:
            self.journal.record(intent, {"bucket": bucket, "key": key, "upload_id": ""})
            try:
                upload_id = str(self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
                self.live_uploads.add(upload_id)
                self.journal_open(bucket, key, upload_id)
            finally:
                # On an error the upload may exist all the same (a lost reply): the stale-upload
                # reaper takes it, since the key may be another node's to upload next.
                self.journal.drop(intent)
        finally:
            self.beginning.discard((bucket, key))
        return upload_id

    def journal_close(self, upload_id: str) -> None:
        self.journal.drop(upload_id)

    def _abort_journaled(self) -> list[str]:
        aborted = []
        for path, (bucket, key, upload_id) in self.journal.entries("bucket", "key", "upload_id"):
            if upload_id in self.live_uploads or (not upload_id and (bucket, key) in self.beginning):
                continue
            if upload_id:
                self.abort_upload(bucket, key, upload_id)
            else:
                self._abort_uploads_of(bucket, key)  # the crash came while the upload was being created
            path.unlink(missing_ok=True)
            aborted.append(key)
        return aborted

    def _abort_uploads_of(self, bucket: str, key: str) -> None:
        """Abort the open multipart uploads of ``key`` that this process is not writing."""
        botocore = _botocore()
        try:
            listed = self.client.list_multipart_uploads(Bucket=bucket, Prefix=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return
            raise
        for upload in listed.get("Uploads", []):
            if upload["Key"] == key and upload["UploadId"] not in self.live_uploads:
                self.abort_upload(bucket, key, upload["UploadId"])

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort a multipart upload; one already gone is no error."""
        botocore = _botocore()
        try:
            self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "NoSuchBucket", "404"):
                raise

    def abort_stale_uploads(self, age: float) -> list[str]:
        """Abort the bucket's multipart uploads that have received no part for ``age`` seconds."""
        botocore = _botocore()
        now = time.time()
        aborted = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            pages = list(paginator.paginate(Bucket=self.bucket))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return []
            raise
        for page in pages:
            for upload in page.get("Uploads", []):
                if now - upload["Initiated"].timestamp() < age:
                    continue
                parts = self.client.list_parts(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                last = max([p["LastModified"].timestamp() for p in parts.get("Parts", [])], default=0.0)
                if now - last < age:
                    continue
                self.abort_upload(self.bucket, upload["Key"], upload["UploadId"])
                aborted.append(upload["Key"])
        return aborted

    # -- health, properties -----------------------------------------------------------------------

    async def check(self) -> StoreHealth:
        """Write, read back and remove a small object in the bucket."""
        key = f"streamd-healthcheck.{secrets.token_hex(6)}"

        def probe() -> None:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=PROBE_DATA)
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                with body:
                    if body.read() != PROBE_DATA:
                        raise StoreFailure(f"S3 store {self.name}: {key} did not read back what was written")
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=key)

        try:
            await self._run(probe)
        except self._errors() as exc:
            error = self._error(exc, f"bucket {self.bucket} is not writable")
            if isinstance(error, StoreUnavailable):
                raise error from exc
            raise StoreUnavailable(error.message) from exc
        return StoreHealth(f"S3 store {self.name}: bucket {self.bucket} at {self.endpoint} writable and readable")

    def properties(self) -> dict[str, object]:
        # Glance 33's keys, in bytes as Glance shows them.
        return {"s3_store_large_object_size": self.large_object_size,
                "s3_store_large_object_chunk_size": self.part_size,
                "s3_store_thread_pools": self.parallel}

    # -- locations ----------------------------------------------------------------------------------

    def url_of(self, key: str) -> str:
        return f"{self.scheme}://{self.host}/{self.bucket}/{key}"

    def parse(self, url: str) -> tuple[str, str, str]:
        """(host, bucket, key) of an ``s3://[ACCESS:SECRET@]host/bucket/key`` location."""
        if url.count("://") != 1:
            raise StoreFailure(f"{url} is not an s3 location (one scheme, e.g. s3+https://host/bucket/key)")
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES:
            raise StoreFailure(f"{url} is not an s3 location")
        netloc = parsed.netloc.rpartition("@")[2]  # old boto 2 locations carry ACCESS:SECRET@
        parts = (netloc + "/" + parsed.path.strip("/")).strip("/").split("/")
        if len(parts) < 3 or not all(parts):
            raise StoreFailure(f"{url} is not of the form s3://host/bucket/key")
        key, bucket, host = parts[-1], parts[-2], "/".join(parts[:-2])
        return host, bucket, key

    def owns(self, url: str) -> bool:
        try:
            host, _bucket, _key = self.parse(url)
        except StoreFailure:
            return False
        return host == self.host

    # -- write ---------------------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        botocore = _botocore()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status != 404:
                raise
            if not self.options.s3_store_create_bucket_on_put:
                raise StoreFailure(f"S3 store {self.name}: the bucket {self.bucket} does not exist; set "
                                   "s3_store_create_bucket_on_put to have it created") from None
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as create_exc:
                if create_exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                    raise
            log.info("s3 store %s: created bucket %s", self.name, self.bucket)
        self._bucket_checked = True

    async def writer(self, image_id: str, expected_size: int | None) -> Writer:
        try:
            await self._run(self._ensure_bucket)
        except self._errors() as exc:
            raise self._error(exc, f"bucket {self.bucket}") from exc
        return S3Writer(self, image_id, expected_size)

    # -- read ----------------------------------------------------------------------------------------

    async def reader(self, url: str) -> Reader:
        _host, bucket, key = self.parse(url)
        try:
            head = await self._run(lambda: self.client.head_object(Bucket=bucket, Key=key))
        except self._errors() as exc:
            error = self._error(exc, f"cannot open {bucket}/{key}")
            if isinstance(error, DoesNotExist):
                raise DoesNotExist(f"image data not found at {url}") from None
            raise error from exc
        return S3Reader(self, bucket, key, int(head["ContentLength"]))

    # -- delete --------------------------------------------------------------------------------------

    async def delete(self, url: str) -> None:
        _host, bucket, key = self.parse(url)
        botocore = _botocore()

        def remove() -> None:
            try:
                self.client.delete_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "NoSuchBucket", "404"):
                    raise

        try:
            await self._run(remove)
        except self._errors() as exc:
            raise self._error(exc, f"cannot delete {bucket}/{key}") from exc


class S3Writer(Writer):
    """Buffers a small image for one PUT; streams a large one as a multipart upload, parts in flight."""

    def __init__(self, store: S3Store, key: str, expected_size: int | None) -> None:
        self.store = store
        self.bucket = store.bucket
        self.key = key
        self.expected_size = expected_size
        self.part_size = store.part_size
        if expected_size is not None and math.ceil(expected_size / self.part_size) > MAX_PARTS:
            self.part_size = math.ceil(expected_size / MAX_PARTS)
        self.buffer = bytearray()
        self.size = 0
        self.upload_id: str | None = None
        self.parts: list[tuple[int, Future[str]]] = []
        self.slots = threading.Semaphore(store.parallel)
        self.failure: BaseException | None = None
        self.committed = False
        self.aborted = False

    def _multipart_wanted(self) -> bool:
        if self.expected_size is not None:
            return self.expected_size >= self.store.large_object_size
        return self.size >= max(self.store.large_object_size, 1)

    # Runs in the FanOut's worker thread.
    def write(self, chunk: bytes) -> None:
        try:
            self._write(chunk)
        except self.store._errors() as exc:
            raise self.store._error(exc, f"cannot write {self.bucket}/{self.key}") from exc

    def _write(self, chunk: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self.buffer += chunk
        self.size += len(chunk)
        if self.upload_id is None and self._multipart_wanted():
            self._begin()
        if self.upload_id is not None:
            while len(self.buffer) >= self.part_size:
                with memoryview(self.buffer) as view:
                    data = bytes(view[:self.part_size])  # one copy, out of the buffer
                del self.buffer[:self.part_size]
                self._send_part(data)

    def _begin(self) -> None:
        self.upload_id = self.store.create_upload(self.bucket, self.key)

    def _send_part(self, data: bytes) -> None:
        self.slots.acquire()
        if self.failure is not None:
            self.slots.release()
            raise self.failure
        number = len(self.parts) + 1
        upload_id = self.upload_id

        def upload() -> str:
            reply = self.store.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=upload_id,
                                                  PartNumber=number, Body=data)
            return str(reply["ETag"])

        def done(future: Future[str]) -> None:
            exc = future.exception() if not future.cancelled() else None
            if exc is not None and self.failure is None:
                self.failure = exc
            self.slots.release()

        try:
            future = self.store.part_executor.submit(upload)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(done)
        self.parts.append((number, future))

    def _wait_parts(self) -> list[dict[str, object]]:
        etags = [{"PartNumber": number, "ETag": future.result()} for number, future in self.parts]
        if self.failure is not None:
            raise self.failure
        return etags

    def _commit_blocking(self) -> None:
        client = self.store.client
        if self.upload_id is None:
            client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
            self.buffer = bytearray()
            return
        if not self.parts and not self.buffer:
            # An empty multipart upload cannot be completed: abort it, PUT the empty object.
            self.store.abort_upload(self.bucket, self.key, self.upload_id)
            self.store.journal_close(self.upload_id)
            self.store.live_uploads.discard(self.upload_id)
            self.upload_id = None
            client.put_object(Bucket=self.bucket, Key=self.key, Body=b"")
            return
        if self.buffer:  # the last part may be smaller than the others
            data = bytes(self.buffer)
            self.buffer = bytearray()
            self._send_part(data)
        parts = self._wait_parts()
        client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                         MultipartUpload={"Parts": parts})
        self.store.journal_close(self.upload_id)

    async def commit(self) -> StoredData:
        try:
            await self.store._run(self._commit_blocking)
            self._done()
        except (*self.store._errors(), StoreFailure) as exc:
            error = exc if isinstance(exc, StoreFailure) else self.store._error(
                exc, f"cannot commit {self.bucket}/{self.key}")
            await self.abort()
            raise error from exc
        self.committed = True
        return StoredData(self.store.url_of(self.key), self.size)

    def _abort_blocking(self) -> None:
        if self.failure is None:
            self.failure = StoreFailure(f"S3 store {self.store.name}: the upload of {self.key} was aborted")
        for _number, future in self.parts:
            future.cancel()
        for _number, future in self.parts:
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - the upload is being aborted anyway
                    pass
        self.buffer = bytearray()
        if self.upload_id is not None and not self.committed:
            self.store.abort_upload(self.bucket, self.key, self.upload_id)
            self.store.journal_close(self.upload_id)
        if self.committed:
            self.store.client.delete_object(Bucket=self.bucket, Key=self.key)

    async def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        try:
            await self.store._run(self._abort_blocking)
        except self.store._errors() as exc:
            # The journal entry stays: the reaper retries the abort.
            log.error("s3 store %s: could not abort the upload of %s (will retry): %s",
                      self.store.name, self.key, exc)
        finally:
            self._done()

    def _done(self) -> None:
        if self.upload_id is not None:
            self.store.live_uploads.discard(self.upload_id)


class S3Reader(RangedReader):
    """Ranged GETs of one object (``RangedReader``: windows growing while the reads go on in order)."""

    def __init__(self, store: S3Store, bucket: str, key: str, size: int) -> None:
        super().__init__(size, f"S3 store {store.name}: {bucket}/{key}")
        self.store = store
        self.bucket = bucket
        self.key = key

    def _get_range(self, offset: int, end: int) -> Any:
        reply = self.store.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-{end - 1}")
        return reply["Body"]

    def _release(self, body: Any) -> None:
        body.close()

    def _store_errors(self) -> tuple[type[BaseException], ...]:
        return self.store._errors()

    def _failure(self, exc: BaseException) -> Exception:
        if isinstance(exc, self.store._errors()):
            return self.store._error(exc, f"cannot read {self.bucket}/{self.key}")
        return StoreFailure(f"{self.label}: reading failed: {exc}")
