"""Running an import: glance-direct, web-download and copy-image into one or several stores.

Glance's contract, kept where clients see it (``os_glance_import_task``,
``os_glance_importing_to_stores``, ``os_glance_failed_import``, the task and its
"Copied N MiB" message, ``all_stores_must_succeed``), with what it gets wrong
fixed:

- the data is read once and fanned out to every target store at once (Glance
  re-reads, re-hashes and re-inspects the staged file per store);
- staged data was hashed and inspected while it arrived; unless a plugin
  changed it, the import does not hash again, and into a file store on the
  staging filesystem it is a rename, not a copy;
- the lock is kept alive by a heartbeat every few seconds, so the lock of a
  crashed import is broken after ``import_lock_timeout`` (a minute), not after
  the 60-120 minutes of Glance;
- staging is cleaned after failures as well as after success.

Nothing here speaks HTTP: the API validates the request and calls ``start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from ..catalog import Catalog, ImageRecord, TaskRecord
from ..config import Config
from ..notifications import Notifier, image_payload, import_properties, task_payload
from .. import metrics
from ..errors import ImportSourceError, InvalidRequest, StateConflict, StoreFailure, StoreUnavailable, StreamdError
from ..pipeline import (Ingested, Progress, UploadLimits, file_chunks, inspection_for, measure, reader_chunks,
                        refuse_oversized, write_to_stores)
from ..quota import ProjectQuota, Quotas
from ..signing import SignatureVerifier, Signatures
from ..stores import StoredData, Store, StoreRegistry
from .filtering import UriFilter
from .location_import import LocationImport
from .glance_download import (CATALOGUE_ENDPOINTS, EndpointLookup, RemoteImage, fetch_remote_record, file_url,
                              properties_to_copy)
from .staging import StagedMeta, StagingArea
from .web import open_web_source

log = logging.getLogger(__name__)

# Where each method finds the image, and where it leaves it while it runs.
FROM_STATUS = {"glance-direct": "uploading", "web-download": "queued", "copy-image": "active",
               "glance-download": "queued"}
# What a failed import runs to put back what it changed before it failed.
Undo = Callable[[], Awaitable[None]]
# How long glance-download waits for the remote image service's record of the image.
REMOTE_RECORD_TIMEOUT = 60.0


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What tells whether a file was replaced or rewritten."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class ImportPlan:
    image_id: str
    method: str
    stores: tuple[str, ...]
    all_stores_must_succeed: bool
    uri: str | None
    roles: tuple[str, ...]
    # glance-download: the remote image, and the caller's token that reads it (never recorded).
    remote: RemoteImage | None = None
    auth_token: str | None = field(default=None, repr=False, compare=False)


class ImportFailed(StoreFailure):
    """Some target stores failed (all of them, or one when all had to succeed)."""


class Importer:
    def __init__(self, catalog: Catalog, stores: StoreRegistry, staging: StagingArea, config: Config,
                 quotas: Quotas | None = None, endpoint_lookup: EndpointLookup | None = None,
                 notifier: Notifier | None = None, signatures: Signatures | None = None) -> None:
        self.catalog = catalog
        # Glance's task.* and image.prepare/upload/activate of imports (None: not sent).
        self.notifier = notifier
        # glance-download finds the remote image service with it (Keystone's catalogue); None in noauth mode.
        self.endpoint_lookup = endpoint_lookup
        self.quotas = quotas
        self.stores = stores
        self.staging = staging
        self.config = config
        self.host = config.host_id
        self.lock_timeout = config.image_import_opts.import_lock_timeout
        # A heartbeat several times per timeout: one late beat never loses the lock.
        self.heartbeat_interval = max(0.5, self.lock_timeout / 6)
        self._running: dict[str, asyncio.Task[None]] = {}
        self.uri_filter = UriFilter(config.import_filtering_opts)
        self.limits = UploadLimits.from_config(config, signatures=signatures)

    async def stage(self, image: ImageRecord, chunks: AsyncIterator[bytes], *,
                    declared_size: int | None, quota: ProjectQuota | None = None) -> StagedMeta:
        """``PUT /stage``: ``queued -> uploading`` and the data into the staging area. Any failure
        (client gone, cap, refused format, a quota, shutdown) leaves the image queued and nothing
        staged. ``quota``: the caller's project's, checked as for an upload (image_stage_total)."""
        if self.staging.has_data(image.id) or image.status == "uploading":
            raise StateConflict(f"Image {image.id} already has data on staging")
        refuse_oversized(declared_size, self.limits.size_cap)
        budget = await quota.before_stage(image.id, declared_size) if quota is not None else None
        image = await self.catalog.begin_upload(image.id, self.host, from_status="queued", to_status="uploading")
        try:
            if quota is not None:
                await quota.after_claim()
            meta = await self.staging.ingest(image, chunks, declared_size=declared_size, limits=self.limits,
                                             budget=budget)
            # Where a glance-direct import sent to another node is passed on to (os_glance_stage_host).
            default = self.config.default
            await self.catalog.finish_stage(image.id, size=meta.size,
                                            host=default.peer_url or default.public_endpoint or self.host)
        except BaseException as exc:
            metrics.upload_failed("stage", exc)
            await asyncio.shield(self._unstage(image.id))
            raise
        return meta

    async def _unstage(self, image_id: str) -> None:
        await asyncio.to_thread(self.staging.remove, image_id)
        await self.catalog.abort_upload(image_id, from_status="uploading")

    @property
    def running(self) -> int:
        return len(self._running)

    async def recover(self) -> None:
        """At start-up: fail the imports that died with this node, then clean the staging area."""
        dead = await self.catalog.recover_imports(self.host)
        if dead:
            log.warning("abandoned %d import(s) interrupted by the last stop: %s",
                        len(dead), ", ".join(t.image_id or t.id for t in dead))
        self.staging.clean(await self.catalog.staged_image_ids(), await self.catalog.running_import_images())

    async def start(self, plan: ImportPlan, *, owner: str | None, user_id: str | None,
                    request_id: str | None) -> TaskRecord:
        """Take the lock, record the task, and run the import in the background (the API answers 202)."""
        task_id = str(uuid.uuid4())
        method: dict[str, Any] = {"name": plan.method, "uri": plan.uri}
        if plan.remote is not None:
            method = {"name": plan.method, "glance_image_id": plan.remote.image_id,
                      "glance_region": plan.remote.region, "glance_service_interface": plan.remote.interface}
        task_input = {"image_id": plan.image_id, "import_req": {"method": method},
                      "stores": list(plan.stores), "all_stores_must_succeed": plan.all_stores_must_succeed,
                      "backend": list(plan.stores)}
        image, task = await self.catalog.begin_import(
            plan.image_id, task_id=task_id, owner=owner, user_id=user_id, request_id=request_id, host=self.host,
            task_input=task_input, stores=list(plan.stores), from_status=FROM_STATUS[plan.method],
            to_status=None if plan.method == "copy-image" else "importing", lock_timeout=self.lock_timeout)
        self._task_event("task.create", task)
        self._task_event("task.processing", task)
        quota = self.quotas.for_project(owner) if self.quotas is not None else None
        runner = asyncio.create_task(self._run(plan, image, task_id, quota), name=f"import-{plan.image_id}")
        self._running[task_id] = runner
        runner.add_done_callback(lambda _: self._running.pop(task_id, None))
        return task

    async def start_location_import(self, image_id: str, *, store: str, url: str, size: int,
                                    validation: Mapping[str, str], owner: str | None, user_id: str | None,
                                    request_id: str | None) -> TaskRecord:
        """``POST /v2/images/{id}/locations``: take the import lock, record a ``location_import``
        task, and run it in the background (see ``location_import``)."""
        task_id = str(uuid.uuid4())
        task_input = {"image_id": image_id, "loc_url": url, "validation_data": dict(validation)}
        _, task = await self.catalog.begin_import(
            image_id, task_id=task_id, owner=owner, user_id=user_id, request_id=request_id, host=self.host,
            task_input=task_input, stores=[], from_status="queued", to_status=None,
            lock_timeout=self.lock_timeout, task_type="location_import")
        self._task_event("task.create", task)
        self._task_event("task.processing", task)
        job = LocationImport(self.catalog, self.config, self.stores.get(store), image_id, url, size, validation)
        runner = asyncio.create_task(self._run_location_import(job, task_id), name=f"import-{image_id}")
        self._running[task_id] = runner
        runner.add_done_callback(lambda _: self._running.pop(task_id, None))
        return task

    async def _run_location_import(self, job: LocationImport, task_id: str) -> None:
        me = asyncio.current_task()
        assert me is not None
        lost_lock = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(task_id, Progress(), me, lost_lock))
        success, message = False, ""
        try:
            await job.run()
            success = True
        except asyncio.CancelledError:
            message = "Location import aborted: the daemon stopped" if not lost_lock.is_set() else \
                "Location import aborted: another operation broke its lock"
            if not lost_lock.is_set():
                raise
        except StreamdError as exc:
            log.warning("location import of image %s (%s) failed: %s", job.image_id, job.url, exc)
            message = str(exc)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await asyncio.shield(self.catalog.finish_import(
                job.image_id, task_id, success=success, message=message,
                result={"image_id": job.image_id} if success else None))
            await asyncio.shield(self._task_finished(task_id, success))

    async def expire_dead_imports(self) -> None:
        """Periodically, on every node: free the images of imports whose node died, and drop staged
        data of images deleted meanwhile (through any node)."""
        for task in await self.catalog.expire_dead_imports(self.lock_timeout):
            log.warning("import task %s of image %s (node %s) sent no heartbeat for %.0f s: failed it and "
                        "released its lock", task.id, task.image_id, task.host, self.lock_timeout)
        staged = self.staging.staged_ids()
        if staged:
            statuses = await self.catalog.staged_image_ids(staged)
            await asyncio.to_thread(self.staging.clean, statuses, set(self._running_images()), only_gone=True)

    def _running_images(self) -> list[str]:
        return [name.removeprefix("import-") for name in (t.get_name() for t in self._running.values())]

    async def stop(self, timeout: float) -> None:
        """Let running imports finish for up to ``timeout`` seconds, then abort them cleanly."""
        runners = list(self._running.values())
        if not runners:
            return
        _, pending = await asyncio.wait(runners, timeout=timeout)
        for runner in pending:
            runner.cancel()
        for runner in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    # -- one import ---------------------------------------------------------------------

    async def _run(self, plan: ImportPlan, image: ImageRecord, task_id: str, quota: ProjectQuota | None) -> None:
        progress = Progress()
        me = asyncio.current_task()
        assert me is not None
        lost_lock = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(task_id, progress, me, lost_lock))
        undo: list[Undo] = []
        started = metrics.now()
        result = "failure"
        await self._image_events(plan, "image.prepare")
        try:
            try:
                await self._import(plan, image, progress, quota, undo)
                result = "success"
            except BaseException:
                for step in reversed(undo):
                    await asyncio.shield(step())
                raise
        except asyncio.CancelledError:
            result = "aborted"
            reason = ("another import broke this import's lock" if lost_lock.is_set()
                      else "the daemon stopped during the import")
            await asyncio.shield(self._finish(plan, task_id, success=False, message=f"Import aborted: {reason}"))
            if not lost_lock.is_set():
                raise
        except StreamdError as exc:
            log.warning("import of image %s (%s) failed: %s", plan.image_id, plan.method, exc)
            if self.notifier is not None:
                self.notifier.error("image.upload", f"Failed to import image {plan.image_id}: {exc}")
            await self._finish(plan, task_id, success=False, message=str(exc))
        else:
            await self._image_events(plan, "image.upload", activated=plan.method != "copy-image")
            await self._finish(plan, task_id, success=True, message=f"Copied {progress.bytes >> 20} MiB",
                               result={"image_id": plan.image_id})
        finally:
            metrics.import_done(plan.method, result, metrics.now() - started)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _finish(self, plan: ImportPlan, task_id: str, *, success: bool, message: str,
                      result: Mapping[str, Any] | None = None) -> None:
        if plan.method != "copy-image":
            await asyncio.to_thread(self.staging.remove, plan.image_id)
        await self.catalog.finish_import(plan.image_id, task_id, success=success, message=message, result=result,
                                         revert_to_queued=plan.method != "copy-image")
        await self._task_finished(task_id, success)

    # -- notifications (Glance's TaskProxy and ImageProxy.set_data) ------------------------------

    def _task_event(self, event_type: str, task: TaskRecord) -> None:
        if self.notifier is not None:
            self.notifier.info(event_type, task_payload(task))

    async def _task_finished(self, task_id: str, success: bool) -> None:
        if self.notifier is None or not self.notifier.enabled:
            return
        task = await self.catalog.get_task(task_id)
        self._task_event("task.success" if success else "task.failure", task)
        self._task_event("task.run", task)

    async def _image_events(self, plan: ImportPlan, event_type: str, *, activated: bool = False) -> None:
        """image.prepare (before) or image.upload (after) once per target store, as Glance's set_data
        per backend; image.activate when the import made the image active."""
        if self.notifier is None or not self.notifier.enabled:
            return
        try:
            image = await self.catalog.get_image(plan.image_id)
        except StreamdError:
            return
        for store in plan.stores:
            self.notifier.info(event_type, {**image_payload(image), **import_properties(image), "backend": store})
        if activated and image.status == "active":
            self.notifier.info("image.activate", image_payload(image))

    async def _heartbeat(self, task_id: str, progress: Progress, runner: asyncio.Task[None],
                         lost_lock: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                alive = await self.catalog.task_heartbeat(task_id, f"Copied {progress.bytes >> 20} MiB")
            except StreamdError as exc:
                log.warning("heartbeat of import task %s failed: %s", task_id, exc)
                continue
            if not alive:
                lost_lock.set()
                runner.cancel()
                return

    async def _import(self, plan: ImportPlan, image: ImageRecord, progress: Progress,
                      quota: ProjectQuota | None, undo: list[Undo]) -> None:
        targets = [self.stores.get(name) for name in plan.stores]
        staged = self.staging.load(plan.image_id) if plan.method == "glance-direct" else None
        if quota is not None:
            # Glance's assert_quota: the image is importing now (and counts as uploading); a quota
            # passed fails the task and puts the image back as any failure does.
            size = staged.size if staged is not None else image.size if plan.method == "copy-image" else None
            await quota.import_started(plan.method, image, size, len(targets))
        if plan.method == "copy-image":
            if quota is not None and image.size is not None:
                await quota.before_store(image, image.size, len(targets))
            await self._copy(plan, image, targets, progress, await self._verifier(plan.image_id))
            return
        if plan.method == "glance-download":
            image, meta = await self._glance_download(plan, image, progress, quota, undo)
            if quota is not None:
                await quota.before_store(image, meta.size, len(targets))
        elif plan.method == "web-download":
            meta = await self._download(plan, image, progress, quota)
            if quota is not None:
                await quota.before_store(image, meta.size, len(targets))
        else:
            if staged is None:
                raise InvalidRequest(f"Image {plan.image_id} has no staged data to import")
            meta = staged
        path = self.staging.path_of(plan.image_id)
        # As Glance's set_data on import: the verifier from the image's properties now (after a
        # glance-download copied the remote's), refused before any store is written.
        verifier = await self._verifier(plan.image_id)
        if inspection_for(image, self.limits) is not None and meta.inspected_format != image.disk_format:
            # Staged before the image had (these) formats: inspect it now, before any plugin or store.
            meta = replace(meta, virtual_size=await self._inspect(image, path), inspected_format=image.disk_format)
        attributes: dict[str, Any] = {}
        properties: dict[str, str] = {}
        plugins = self.config.image_import_opts.image_import_plugins
        if plugins:
            from .plugins import StagedImage, run_import_plugins

            before = _identity(path)
            outcome = await run_import_plugins(
                plugins, StagedImage(path, image.disk_format, image.container_format), roles=plan.roles,
                config=self.config)
            attributes, properties = dict(outcome.attributes), dict(outcome.properties)
            # A plugin may write a new file, or replace the staged one in place (decompression).
            if outcome.staged.path != path or _identity(outcome.staged.path) != before:
                path = outcome.staged.path
                # The data changed: hash it again, and inspect it as an upload of the image's
                # (new) formats would be, before any store takes it.
                meta = await self._measure(plan, replace(image, disk_format=outcome.staged.disk_format,
                                                         container_format=outcome.staged.container_format), path,
                                           signature=verifier)
            if properties:
                await self.catalog.update_image(plan.image_id, set_properties=properties)
        await self._verify_signature(image, path, meta, verifier)
        await self._store_staged(plan, path, meta, attributes, targets, progress)

    async def _verifier(self, image_id: str) -> SignatureVerifier | None:
        """The image's signature verifier, from its properties as they are now (None: unsigned)."""
        if self.limits.signatures is None:
            return None
        image = await self.catalog.get_image(image_id)
        return await self.limits.signatures.verifier_for(image_id, image.properties)

    async def _verify_signature(self, image: ImageRecord, path: Path, meta: StagedMeta,
                                verifier: SignatureVerifier | None) -> None:
        """The staged data against the image's signature, before any store takes it: on the digest
        computed while it was staged (or measured after a plugin), or, when the image was signed
        only after its data was staged, with one more read of it."""
        if verifier is None or verifier.checked:
            return
        if meta.signature_digest is not None and meta.signature_hash_method == verifier.method:
            verifier.verify_digest(bytes.fromhex(meta.signature_digest))
            return
        await self._measure_file(image, path, hashing_algorithm=None, signature=verifier, inspect=False)

    async def _measure(self, plan: ImportPlan, image: ImageRecord, path: Path,
                       signature: SignatureVerifier | None = None) -> StagedMeta:
        """Size, digests and virtual size of a staged file, inspected for ``image``'s formats (and
        checked against ``signature`` on the way)."""
        measured = await self._measure_file(image, path, hashing_algorithm=self.limits.hashing_algorithm,
                                            signature=signature)
        d = measured.digests
        assert d is not None
        return StagedMeta(measured.size, d.checksum, d.os_hash_algo, d.os_hash_value, measured.virtual_size)

    async def _inspect(self, image: ImageRecord, path: Path) -> int | None:
        """Format inspection of a staged file as an upload of ``image`` would get (415 on refusal);
        its virtual size."""
        return (await self._measure_file(image, path, hashing_algorithm=None)).virtual_size

    async def _measure_file(self, image: ImageRecord, path: Path, *, hashing_algorithm: str | None,
                            signature: SignatureVerifier | None = None, inspect: bool = True) -> Ingested:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return await measure(file_chunks(fd), declared_size=os.fstat(fd).st_size, size_cap=self.limits.size_cap,
                                 hashing_algorithm=hashing_algorithm,
                                 inspection=inspection_for(image, self.limits) if inspect else None,
                                 signature=signature)
        finally:
            os.close(fd)

    async def _download(self, plan: ImportPlan, image: ImageRecord, progress: Progress,
                        quota: ProjectQuota | None) -> StagedMeta:
        """web-download: the source streamed into staging, hashed and inspected on the way."""
        assert plan.uri is not None
        opts = self.config.image_import_opts
        # Leftovers of an earlier failed attempt would otherwise block the rename into place.
        await asyncio.to_thread(self.staging.remove, plan.image_id)
        budget = await quota.download_budget(image.id, len(plan.stores)) if quota is not None else None
        source = await open_web_source(plan.uri, self.uri_filter,
                                       stall_timeout=opts.web_download_stall_timeout,
                                       max_redirects=opts.web_download_max_redirects)
        try:
            return await self.staging.ingest(image, source.chunks(), declared_size=source.size, limits=self.limits,
                                             progress=progress, budget=budget)
        finally:
            await source.close()

    async def _glance_download(self, plan: ImportPlan, image: ImageRecord, progress: Progress,
                               quota: ProjectQuota | None, undo: list[Undo]) -> tuple[ImageRecord, StagedMeta]:
        """glance-download: the remote record's formats and chosen properties onto the image, then
        its data into staging. What puts the image's own formats and properties back goes on
        ``undo``: the import runs it if anything fails, here or later."""
        remote = plan.remote
        assert remote is not None
        if self.endpoint_lookup is None or not plan.auth_token:
            raise ImportSourceError("glance-download needs Keystone (auth_strategy = keystone): the remote "
                                    "image service is found in the caller's service catalogue")
        endpoint = await self.endpoint_lookup(plan.auth_token, remote.region, remote.interface)
        record = await fetch_remote_record(endpoint, remote.image_id, plan.auth_token,
                                           timeout=REMOTE_RECORD_TIMEOUT)
        copied = properties_to_copy(record, self.config.glance_download_properties.extra_properties)
        before = {"disk_format": image.disk_format, "container_format": image.container_format}
        old_properties = {k: image.properties[k] for k in copied if k in image.properties}
        image = await self.catalog.update_image(
            plan.image_id, changes={"disk_format": record.get("disk_format"),
                                    "container_format": record.get("container_format")},
            set_properties=copied)
        undo.append(lambda: self._revert_remote_metadata(plan.image_id, before, old_properties,
                                                          [k for k in copied if k not in old_properties]))
        opts = self.config.image_import_opts
        await asyncio.to_thread(self.staging.remove, plan.image_id)
        budget = await quota.download_budget(image.id, len(plan.stores)) if quota is not None else None
        source = await open_web_source(file_url(endpoint, remote.image_id), CATALOGUE_ENDPOINTS,
                                       stall_timeout=opts.web_download_stall_timeout,
                                       max_redirects=opts.web_download_max_redirects,
                                       headers={"X-Auth-Token": plan.auth_token})
        try:
            meta = await self.staging.ingest(image, source.chunks(), declared_size=int(record["size"]),
                                             limits=self.limits, progress=progress, budget=budget)
        finally:
            await source.close()
        return image, meta

    async def _revert_remote_metadata(self, image_id: str, before: Mapping[str, Any], old_properties: dict[str, str],
                                      added: list[str]) -> None:
        try:
            await self.catalog.update_image(image_id, changes=dict(before), set_properties=old_properties,
                                            remove_properties=added)
        except StreamdError as exc:
            log.error("glance-download of image %s failed and its formats and properties could not be put "
                      "back: %s", image_id, exc)

    async def _store_staged(self, plan: ImportPlan, path: Path, meta: StagedMeta | None, attributes: dict[str, Any],
                            targets: list[Store], progress: Progress) -> None:
        """Staged data into every target store: one rename where possible, one read for all the rest."""
        must_all = plan.all_stores_must_succeed
        stored: dict[str, StoredData] = {}
        failed: dict[str, StreamdError] = {}
        recorded: set[str] = set()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            # Stores that can adopt the staged file take it itself (file stores on the staging
            # filesystem): hard links, and a
            # rename for the last. The open descriptor still reads the data for the other stores.
            adopters = [t for t in targets if t.can_adopt(path)]
            for n, adopter in enumerate(adopters):
                try:
                    stored[adopter.name] = await adopter.adopt(plan.image_id, path, link=n < len(adopters) - 1)
                    progress.bytes = size
                    metrics.store_bytes(adopter.name, "in", "import", size)
                except StreamdError as exc:
                    if must_all:
                        raise
                    failed[adopter.name] = exc
            if not must_all and stored and meta is not None:
                # Active after the first store: the copies to the others go on behind.
                await self._record(plan, dict(stored), meta, attributes, activate=True)
                recorded.update(stored)
            others = [t for t in targets if t.name not in stored and t.name not in failed]
            if others or meta is None:
                try:
                    ingested = await write_to_stores(
                        others, plan.image_id, file_chunks(fd), declared_size=size,
                        size_cap=self.config.default.image_size_cap,
                        hashing_algorithm=self.config.default.hashing_algorithm if meta is None else None,
                        isolate=not must_all, progress=progress, operation="import",
                        max_inflight=self.limits.max_inflight)
                except StreamdError as exc:
                    if must_all or not stored:
                        raise
                    failed.update({t.name: exc for t in others})
                else:
                    stored.update(ingested.stored)
                    failed.update(ingested.failed)
                    if meta is None:
                        assert ingested.digests is not None
                        d = ingested.digests
                        meta = StagedMeta(ingested.size, d.checksum, d.os_hash_algo, d.os_hash_value, None)
            await self._settle(plan, stored, failed, meta, attributes, recorded)
        except BaseException:
            await asyncio.shield(self._rollback(plan, {k: v for k, v in stored.items() if k not in recorded}))
            raise
        finally:
            os.close(fd)

    async def _settle(self, plan: ImportPlan, stored: dict[str, StoredData], failed: dict[str, StreamdError],
                      meta: StagedMeta | None, attributes: dict[str, Any], recorded: set[str]) -> None:
        """Record what the stores hold; fail (the caller rolls back) when all had to succeed and one did not."""
        for name, exc in failed.items():
            log.warning("import of image %s into store %s failed: %s", plan.image_id, name, exc)
            await self.catalog.import_store_failed(plan.image_id, name)
        if failed and (plan.all_stores_must_succeed or not stored):
            raise ImportFailed("Import into store(s) " + "; ".join(f"{n}: {e}" for n, e in sorted(failed.items()))
                               + " failed")
        new = {k: v for k, v in stored.items() if k not in recorded}
        activate = plan.method != "copy-image"
        if new or activate:
            await self._record(plan, new, meta, attributes, activate=activate)
            recorded.update(new)

    async def _record(self, plan: ImportPlan, stored: Mapping[str, StoredData], meta: StagedMeta | None,
                      attributes: Mapping[str, Any], *, activate: bool) -> None:
        values: dict[str, Any] | None = None
        if activate and meta is not None:
            values = {"size": meta.size, "checksum": meta.checksum, "os_hash_algo": meta.os_hash_algo,
                      "os_hash_value": meta.os_hash_value, "virtual_size": meta.virtual_size}
            values.update({k: v for k, v in attributes.items()
                           if k in ("disk_format", "container_format", "virtual_size", "size")})
            values["size"] = meta.size
        await self.catalog.record_import(
            plan.image_id, {name: (s.url, s.metadata) for name, s in stored.items()}, activate=values)

    async def _rollback(self, plan: ImportPlan, stored: Mapping[str, StoredData]) -> None:
        """Remove what this import wrote to ``stored`` and not recorded for good."""
        for name, data in stored.items():
            store = self.stores.for_location(name)
            if store is None:
                continue
            try:
                await store.delete(data.url)
            except StreamdError as exc:
                log.error("rollback of image %s: cannot remove its data from store %s: %s", plan.image_id, name, exc)
            if plan.all_stores_must_succeed:
                with contextlib.suppress(StreamdError):
                    await self.catalog.import_store_failed(plan.image_id, name)

    async def _copy(self, plan: ImportPlan, image: ImageRecord, targets: list[Store], progress: Progress,
                    verifier: SignatureVerifier | None = None) -> None:
        """copy-image: from the image's own data (the default store's copy first) straight into the
        targets, without staging; plugins never run."""
        order = sorted(image.locations, key=lambda loc: loc.store != self.stores.default)
        last_error: StreamdError | None = None
        for location in order:
            source = self.stores.for_location(location.store)
            if source is None:
                continue
            try:
                reader = await source.reader(location.url)
            except StreamdError as exc:
                last_error = exc
                continue
            try:
                ingested = await write_to_stores(
                    targets, plan.image_id, reader_chunks(reader), declared_size=reader.size,
                    size_cap=self.config.default.image_size_cap, hashing_algorithm=None,
                    isolate=not plan.all_stores_must_succeed, progress=progress, signature=verifier,
                    operation="import", max_inflight=self.limits.max_inflight)
                metrics.store_bytes(source.name, "out", "copy", ingested.size)
            finally:
                reader.close()
            try:
                await self._settle(plan, ingested.stored, ingested.failed, None, {}, set())
            except BaseException:
                await asyncio.shield(self._rollback(plan, ingested.stored))
                raise
            return
        raise last_error or StoreUnavailable(f"Image {plan.image_id} has no readable data to copy")
