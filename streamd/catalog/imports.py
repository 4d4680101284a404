"""Interoperable imports: the per-image import lock and the tasks that hold it.

Glance keeps an import's state in reserved image properties: the lock
(``os_glance_import_task``, the id of the task holding it), the stores still being
written (``os_glance_importing_to_stores``) and those that failed
(``os_glance_failed_import``). The task row carries the heartbeat: a task whose
node stopped beating for ``lock_timeout`` seconds is dead, and its lock is broken
by the next import, or by any node's expiry sweep, or by its own node at restart.
Also the two questions the staging cleaner asks (which images exist, which run an import).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Callable, Collection, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import DoesNotExist, InvalidRequest, InvalidStatusTransition, NotPermitted, StateConflict
from . import models as m
from .base import CatalogBase, insert_location, write_properties
from .records import ImageRecord, TaskRecord, utcnow
from .status import check_transition
from .values import check_row

log = logging.getLogger(__name__)

# Glance's reserved properties that track an import while it runs.
IMPORT_LOCK = "os_glance_import_task"
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
STAGE_HOST = "os_glance_stage_host"
# Glance keeps finished tasks visible for 48 hours (task_time_to_live).
TASK_TIME_TO_LIVE = dt.timedelta(hours=48)
# A task in one of these still holds its image's import lock (until it is found dead).
RUNNING_TASK_STATUSES = ("pending", "processing")


def store_list(value: str | None) -> list[str]:
    return [s for s in (value or "").split(",") if s]


class ImportsMixin(CatalogBase):
    async def begin_import(self, image_id: str, *, task_id: str, owner: str | None, user_id: str | None,
                           request_id: str | None, host: str, task_input: Mapping[str, Any], stores: list[str],
                           from_status: str, to_status: str | None, lock_timeout: float,
                           task_type: str = "api_image_import") -> tuple[ImageRecord, TaskRecord]:
        """Take the import lock and record the task, in one transaction.

        The lock is Glance's ``os_glance_import_task`` property. A lock whose task stopped
        beating for ``lock_timeout`` seconds (its node died) is broken; a live one is a 409.
        """
        check_row(m.tasks, {"owner": owner, "user_id": user_id, "request_id": request_id})
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if image.status != from_status:
                raise InvalidStatusTransition(
                    f"Image {image_id} is {image.status}; this import needs it to be {from_status}")
            if to_status is not None:
                check_transition(image_id, image.status, to_status)
            props = dict(image.properties)
            held = props.get(IMPORT_LOCK)
            if held:
                props = await self._break_stale_lock(conn, image_id, held, props, lock_timeout)
            now = utcnow()
            await conn.execute(m.tasks.insert().values(
                id=task_id, type=task_type, status="processing", owner=owner, user_id=user_id,
                request_id=request_id, image_id=image_id, host=host, input_json=json.dumps(dict(task_input)),
                result_json=None, message="", created_at=now, updated_at=now, expires_at=None))
            importing = store_list(props.get(IMPORTING_TO)) + stores
            failed = [s for s in store_list(props.get(FAILED_IMPORT)) if s not in stores]
            props = _with_store_lists(props, importing=importing, failed=failed, starting=True)
            props[IMPORT_LOCK] = task_id
            props.pop(STAGE_HOST, None)
            await write_properties(conn, image_id, image.properties, props)
            values: dict[str, Any] = {"updated_at": now}
            if to_status is not None:
                values["status"] = to_status
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.status == from_status).values(**values))
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed status during the request")
            return await self._load(conn, image_id), await _load_task(conn, task_id)

    async def _break_stale_lock(self, conn: AsyncConnection, image_id: str, task_id: str, props: dict[str, str],
                                lock_timeout: float) -> dict[str, str]:
        row = (await conn.execute(sa.select(m.tasks).where(m.tasks.c.id == task_id))).mappings().first()
        if row is not None and row["status"] in RUNNING_TASK_STATUSES:
            idle = (utcnow() - row["updated_at"]).total_seconds()
            if idle < lock_timeout:
                raise StateConflict(f"Image {image_id} has an active import task {task_id}: "
                                    "the prior operation is still in progress")
            log.warning("breaking the import lock of image %s: task %s sent no heartbeat for %.0f s",
                        image_id, task_id, idle)
            await conn.execute(m.tasks.update().where(m.tasks.c.id == task_id).values(
                status="failure", message="Expired lock preempted", updated_at=utcnow(),
                expires_at=utcnow() + TASK_TIME_TO_LIVE))
        # What the dead task was importing to is neither importing nor known to have failed.
        dead_stores = set(json.loads(row["input_json"]).get("stores") or []) if row is not None else set()
        props = _forget_stores(props, dead_stores)
        props.pop(IMPORT_LOCK, None)
        return props

    async def task_heartbeat(self, task_id: str, message: str) -> bool:
        """Keep the task's lock alive; False once the task no longer runs (its lock was broken)."""
        async with self._write() as conn:
            result = await conn.execute(m.tasks.update().where(
                m.tasks.c.id == task_id, m.tasks.c.status == "processing").values(
                updated_at=utcnow(), message=message))
            return bool(result.rowcount == 1)

    async def record_import(self, image_id: str, locations: Mapping[str, tuple[str, Mapping[str, Any]]], *,
                            activate: Mapping[str, Any] | None = None) -> ImageRecord:
        """Record the stores an import wrote (store -> (url, metadata)), in one transaction;
        ``activate`` (size, digests, formats) also makes the image active."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            now = utcnow()
            for store, (url, metadata) in locations.items():
                await conn.execute(m.image_locations.delete().where(
                    m.image_locations.c.image_id == image_id, m.image_locations.c.store == store))
                await insert_location(conn, image_id, store, url, metadata, now)
            props = _forget_stores(image.properties, locations.keys())
            await write_properties(conn, image_id, image.properties, props)
            values: dict[str, Any] = {"updated_at": now}
            stmt = m.images.update().where(m.images.c.id == image_id)
            if activate is not None and image.status != "active":
                check_transition(image_id, image.status, "active")
                values.update(activate, status="active")
                stmt = stmt.where(m.images.c.status == image.status)
            result = await conn.execute(stmt.values(**values))
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed while its import finished")
            return await self._load(conn, image_id)

    async def import_store_failed(self, image_id: str, store: str) -> None:
        """Move ``store`` from os_glance_importing_to_stores to os_glance_failed_import."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            props = _with_store_lists(
                image.properties, importing=[s for s in store_list(image.properties.get(IMPORTING_TO)) if s != store],
                failed=store_list(image.properties.get(FAILED_IMPORT)) + [store])
            await write_properties(conn, image_id, image.properties, props)

    async def finish_import(self, image_id: str, task_id: str, *, success: bool, message: str,
                            result: Mapping[str, Any] | None = None, revert_to_queued: bool = False) -> None:
        """End the task, release the lock if it is still this task's, and (on failure) queue the image again."""
        async with self._write() as conn:
            now = utcnow()
            await conn.execute(m.tasks.update().where(m.tasks.c.id == task_id).values(
                status="success" if success else "failure", message=message, updated_at=now,
                result_json=json.dumps(dict(result)) if result is not None else None,
                expires_at=now + TASK_TIME_TO_LIVE))
            try:
                image = await self._load(conn, image_id, for_update=True)
            except DoesNotExist:
                return  # deleted meanwhile: nothing left to unlock
            task = await _load_task(conn, task_id)
            props = dict(image.properties)
            if props.get(IMPORT_LOCK) == task_id:
                props.pop(IMPORT_LOCK)
                # Stores still listed as importing were never reached: they failed with the task.
                ours = set(task.input.get("stores") or [])  # type: ignore[call-overload]
                left = [s for s in store_list(props.get(IMPORTING_TO)) if s in ours]
                props = _with_store_lists(
                    props, importing=[s for s in store_list(props.get(IMPORTING_TO)) if s not in ours],
                    failed=store_list(props.get(FAILED_IMPORT)) + ([] if success else left))
            await write_properties(conn, image_id, image.properties, props)
            values: dict[str, Any] = {"updated_at": now}
            if revert_to_queued and image.status in ("importing", "uploading") and not image.locations:
                values.update(status="queued", size=None, virtual_size=None, checksum=None, os_hash_algo=None,
                              os_hash_value=None)
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(**values))

    async def get_task(self, task_id: str) -> TaskRecord:
        async with self._read() as conn:
            return await _load_task(conn, task_id)

    async def list_tasks(self, *, image_id: str | None = None, owner: str | None = None,
                         limit: int = 1000) -> list[TaskRecord]:
        """Newest first; ``owner`` restricts to one project (non-admin callers)."""
        t = m.tasks.c
        stmt = sa.select(m.tasks).order_by(t.created_at.desc(), t.id).limit(limit)
        if image_id is not None:
            stmt = stmt.where(t.image_id == image_id)
        if owner is not None:
            stmt = stmt.where(t.owner == owner)
        async with self._read() as conn:
            return [task_record(r) for r in (await conn.execute(stmt)).mappings()]

    async def page_tasks(self, *, owner: str | None, limit: int, marker: str | None = None,
                         sort_key: str = "created_at", sort_dir: str = "desc",
                         filters: Mapping[str, str] | None = None) -> list[TaskRecord]:
        """``GET /v2/tasks`` as Glance 33's task_get_all: the tasks ``owner`` holds (None: every
        project's, for admins) that have not expired (Glance soft-deletes a task at its
        ``expires_at``), ``filters`` by equality on task columns, ordered by ``sort_key`` then
        ``created_at`` and ``id`` (all ``sort_dir``), the page after the ``marker`` task.

        InvalidRequest for a ``sort_key`` Glance's task model lacks and for a marker there is no
        (unexpired) task for; NotPermitted for a marker task of another project."""
        t = m.tasks.c
        if sort_key not in TASK_SORT_KEYS:
            raise InvalidRequest("Sort key supplied was not valid.")
        # deleted and deleted_at are alike on every task shown: they order nothing.
        keys = [k for k in (sort_key, "created_at", "id") if k not in ("deleted", "deleted_at")]
        keys = list(dict.fromkeys(keys))
        now = utcnow()
        live = sa.or_(t.expires_at.is_(None), t.expires_at > now)
        stmt = sa.select(m.tasks).where(live)
        if owner is not None:
            stmt = stmt.where(t.owner == owner)
        for name, value in (filters or {}).items():
            if name in TASK_FILTER_KEYS:
                stmt = stmt.where(t[name] == value)
        columns = [_sort_column(k) for k in keys]
        async with self._read() as conn:
            if marker is not None:
                row = (await conn.execute(sa.select(m.tasks).where(t.id == marker, live))).mappings().first()
                if row is None:
                    raise InvalidRequest(f"Task with the given id {marker} was not found")
                if owner is not None and row["owner"] != owner:
                    raise NotPermitted(f"Forbidding request, task {marker} is not visible")
                values = [_sort_value(k, row) for k in keys]
                after = []
                for i, column in enumerate(columns):
                    beyond = column < values[i] if sort_dir == "desc" else column > values[i]
                    after.append(sa.and_(*[columns[j] == values[j] for j in range(i)], beyond))
                stmt = stmt.where(sa.or_(*after))
            order = [c.desc() if sort_dir == "desc" else c.asc() for c in columns]
            stmt = stmt.order_by(*order).limit(limit)
            return [task_record(r) for r in (await conn.execute(stmt)).mappings()]

    async def recover_imports(self, host: str) -> list[TaskRecord]:
        """At start-up: imports this node ran died with it. Fail their tasks, release their locks, and
        put their images back where the import found them (queued, or active for a copy)."""
        return await self._abandon_imports(
            m.tasks.c.host == host,
            why=lambda task: "The node running this import stopped; it was abandoned")

    async def expire_dead_imports(self, lock_timeout: float) -> list[TaskRecord]:
        """Any node: fail the imports whose node stopped beating (it died), release their locks and
        queue their images again, so that an image is free within a minute or two of a crash."""
        cutoff = utcnow() - dt.timedelta(seconds=lock_timeout)
        return await self._abandon_imports(
            m.tasks.c.updated_at < cutoff,
            why=lambda task: f"Expired lock preempted: no heartbeat from {task.host} for {lock_timeout:.0f} s")

    async def _abandon_imports(self, which: sa.ColumnElement[bool],
                               why: Callable[[TaskRecord], str]) -> list[TaskRecord]:
        """Fail every running task that matches ``which`` (each with the message ``why(task)``), releasing
        its lock and queuing its image again; each in its own transaction, as ``finish_import`` does."""
        async with self._read() as conn:
            rows = list((await conn.execute(sa.select(m.tasks).where(
                which, m.tasks.c.status.in_(RUNNING_TASK_STATUSES)))).mappings())
        dead = [task_record(r) for r in rows]
        for task in dead:
            if task.image_id is not None:
                await self.finish_import(task.image_id, task.id, success=False, message=why(task),
                                         revert_to_queued=True)
        return dead

    async def staged_image_ids(self, ids: Iterable[str] | None = None) -> dict[str, str]:
        """Status of every image that exists (of ``ids`` only, when given), for the staging cleaner."""
        stmt = sa.select(m.images.c.id, m.images.c.status).where(m.images.c.deleted.is_(False))
        if ids is not None:
            stmt = stmt.where(m.images.c.id.in_(list(ids)))
        async with self._read() as conn:
            return {r.id: r.status for r in await conn.execute(stmt)}

    async def running_import_images(self) -> set[str]:
        async with self._read() as conn:
            rows = await conn.execute(sa.select(m.tasks.c.image_id).where(
                m.tasks.c.status.in_(RUNNING_TASK_STATUSES)))
            return {r.image_id for r in rows if r.image_id}


# Glance 33's Task model attributes a list may sort by (``deleted`` and ``deleted_at`` included).
TASK_SORT_KEYS = ("id", "type", "status", "owner", "expires_at", "created_at", "updated_at", "deleted",
                  "deleted_at", "image_id", "request_id", "user_id")
# The text columns a list filters on by equality (Glance filters on any model attribute it is given).
TASK_FILTER_KEYS = ("id", "type", "status", "owner", "image_id", "request_id", "user_id")
# NULL sorts as Glance's paging compares it: as '' (text) and as the earliest time.
_EPOCH = dt.datetime(1970, 1, 1)


def _sort_column(key: str) -> sa.ColumnElement[Any]:
    column = m.tasks.c[key]
    if column.nullable:
        return sa.func.coalesce(column, _EPOCH if isinstance(column.type, sa.DateTime) else "")
    return column


def _sort_value(key: str, row: Mapping[Any, Any]) -> Any:
    value = row[key]
    if value is None:
        return _EPOCH if isinstance(m.tasks.c[key].type, sa.DateTime) else ""
    return value


async def _load_task(conn: AsyncConnection, task_id: str) -> TaskRecord:
    row = (await conn.execute(sa.select(m.tasks).where(m.tasks.c.id == task_id))).mappings().first()
    if row is None:
        raise DoesNotExist(f"Task with the given id {task_id} not found")
    return task_record(row)


def task_record(row: Mapping[Any, Any]) -> TaskRecord:
    return TaskRecord(
        id=row["id"], type=row["type"], status=row["status"], owner=row["owner"], user_id=row["user_id"],
        request_id=row["request_id"], image_id=row["image_id"], host=row["host"],
        input=json.loads(row["input_json"]), result=json.loads(row["result_json"]) if row["result_json"] else None,
        message=row["message"], created_at=row["created_at"], updated_at=row["updated_at"],
        expires_at=row["expires_at"])


def _with_store_lists(props: Mapping[str, str], *, importing: list[str], failed: list[str],
                      starting: bool = False) -> dict[str, str]:
    """Set the two comma-separated store lists as Glance shows them: once an import has started
    both stay on the image, empty ("") when no store is left. Clients wait for an empty
    ``os_glance_importing_to_stores`` (Tempest's waiter treats a missing one as "not started")."""
    props = dict(props)
    for key, stores in ((IMPORTING_TO, importing), (FAILED_IMPORT, failed)):
        if stores:
            props[key] = ",".join(dict.fromkeys(stores))
        elif starting or key in props:
            props[key] = ""
    return props


def _forget_stores(props: Mapping[str, str], stores: Collection[str]) -> dict[str, str]:
    """Drop ``stores`` from both lists: they are neither being imported to nor failed (any more)."""
    return _with_store_lists(
        props, importing=[s for s in store_list(props.get(IMPORTING_TO)) if s not in stores],
        failed=[s for s in store_list(props.get(FAILED_IMPORT)) if s not in stores])
