"""The image catalogue: images, properties, tags, members and locations.

One class, ``Catalog``, owns the database engine. It speaks records and
``RequestContext``s, never HTTP. The same queries run on SQLite (the embedded
default) and PostgreSQL (several nodes sharing one catalogue).

SQLite has one writer at a time. Real Glance on SQLite fails uploads with
"database is locked" when clients write together; streamd never does: the
database is in WAL mode (readers never wait for the writer), every write
transaction in this process goes through one asyncio lock, and starts with
``BEGIN IMMEDIATE`` so that a writer in *another* process makes us wait
(``busy_timeout``) rather than fail on a lock upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..context import RequestContext
from ..errors import (InvalidRequest, StateConflict, Duplicate, NotPermitted, InvalidStatusTransition, DoesNotExist,
                      QuotaExceeded)
from . import models as m
from .policy import can_see
from .query import ImageQuery
from .records import CORE_ATTRIBUTES, ImageRecord, Location, MemberRecord, TaskRecord, utcnow
from .status import NEEDS_FORMATS, check_transition
from .values import check_row

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).with_name("migrations")

# Sort keys that may be NULL are ordered through a non-NULL stand-in, so that
# SQLite and PostgreSQL (which order NULLs differently) page identically.
_SORT_EXPR = {
    "name": sa.func.coalesce(m.images.c.name, ""),
    "status": m.images.c.status,
    "container_format": sa.func.coalesce(m.images.c.container_format, ""),
    "disk_format": sa.func.coalesce(m.images.c.disk_format, ""),
    "size": sa.func.coalesce(m.images.c.size, -1),
    "id": m.images.c.id,
    "created_at": m.images.c.created_at,
    "updated_at": m.images.c.updated_at,
}
_NULL_STANDIN = {"name": "", "container_format": "", "disk_format": "", "size": -1}

# Glance's reserved properties that track an import while it runs.
IMPORT_LOCK = "os_glance_import_task"
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
STAGE_HOST = "os_glance_stage_host"
# Glance keeps finished tasks visible for 48 hours (task_time_to_live).
TASK_TIME_TO_LIVE = dt.timedelta(hours=48)


def store_list(value: str | None) -> list[str]:
    return [s for s in (value or "").split(",") if s]


def _with_store_lists(props: dict[str, str], *, importing: list[str], failed: list[str]) -> dict[str, str]:
    """Set (or drop, when empty) the two comma-separated store lists, as Glance shows them."""
    props = dict(props)
    for key, stores in ((IMPORTING_TO, importing), (FAILED_IMPORT, failed)):
        if stores:
            props[key] = ",".join(dict.fromkeys(stores))
        else:
            props.pop(key, None)
    return props


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # One writer at a time in this process on SQLite; PostgreSQL takes row locks.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, busy_timeout: float = 30.0, pool_size: int = 10) -> "Catalog":
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, connect_args={"timeout": busy_timeout})
            _configure_sqlite(engine, busy_timeout)
        else:
            engine = create_async_engine(url, pool_size=pool_size, pool_pre_ping=True)
        catalog = cls(engine)
        await catalog.migrate()
        return catalog

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        def upgrade(sync_conn: sa.Connection) -> None:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(_MIGRATIONS))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self._write() as conn:
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_immediate=True)
                async with conn.begin():
                    yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    # -- images ----------------------------------------------------------------------

    async def create_image(self, values: Mapping[str, Any], properties: Mapping[str, str],
                           tags: Iterable[str]) -> ImageRecord:
        now = utcnow()
        row = {
            "id": values.get("id") or str(uuid.uuid4()),
            "name": values.get("name"),
            "status": "queued",
            "visibility": values.get("visibility") or "shared",
            "protected": bool(values.get("protected", False)),
            "os_hidden": bool(values.get("os_hidden", False)),
            "disk_format": values.get("disk_format"),
            "container_format": values.get("container_format"),
            "size": None, "virtual_size": None, "checksum": None,
            "os_hash_algo": None, "os_hash_value": None,
            "min_disk": int(values.get("min_disk") or 0),
            "min_ram": int(values.get("min_ram") or 0),
            "owner": values.get("owner"),
            "created_at": now, "updated_at": now, "deleted": False, "deleted_at": None,
        }
        tag_list = list(dict.fromkeys(tags))
        check_row(m.images, row)
        _check_properties(properties)
        _check_tags(tag_list)
        async with self._write() as conn:
            exists = await conn.scalar(sa.select(m.images.c.id).where(m.images.c.id == row["id"]))
            if exists is not None:
                raise Duplicate(f"An image with identifier {row['id']} already exists")
            await conn.execute(m.images.insert().values(**row))
            if properties:
                await conn.execute(m.image_properties.insert(), [
                    {"image_id": row["id"], "name": k, "value": v} for k, v in properties.items()])
            if tag_list:
                await conn.execute(m.image_tags.insert(), [
                    {"image_id": row["id"], "value": t, "created_at": now} for t in tag_list])
            return await self._load(conn, str(row["id"]))

    async def get_image(self, image_id: str, ctx: RequestContext | None = None) -> ImageRecord:
        """The image, if it exists and ``ctx`` (when given) may see it; else DoesNotExist."""
        async with self._read() as conn:
            image = await self._load(conn, image_id)
            if ctx is not None and not await self._visible(conn, ctx, image):
                raise DoesNotExist(f"No image found with ID {image_id}")
            return image

    async def _visible(self, conn: AsyncConnection, ctx: RequestContext, image: ImageRecord) -> bool:
        member_status = None
        if image.visibility == "shared" and ctx.project_id and not ctx.is_admin and not ctx.owns(image.owner):
            member_status = await conn.scalar(sa.select(m.image_members.c.status).where(
                m.image_members.c.image_id == image.id, m.image_members.c.member == ctx.project_id))
        return can_see(ctx, image, member_status)

    async def _load(self, conn: AsyncConnection, image_id: str, *, for_update: bool = False) -> ImageRecord:
        stmt = sa.select(m.images).where(m.images.c.id == image_id, m.images.c.deleted.is_(False))
        if for_update and not self.is_sqlite:
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise DoesNotExist(f"No image found with ID {image_id}")
        records = await self._hydrate(conn, [row])
        return records[0]

    async def _hydrate(self, conn: AsyncConnection, rows: Sequence[Mapping[Any, Any]]) -> list[ImageRecord]:
        ids = [r["id"] for r in rows]
        props: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, list[str]] = {i: [] for i in ids}
        locs: dict[str, list[Location]] = {i: [] for i in ids}
        if ids:
            for p in await conn.execute(sa.select(m.image_properties).where(m.image_properties.c.image_id.in_(ids))):
                props[p.image_id][p.name] = p.value
            for t in await conn.execute(sa.select(m.image_tags).where(m.image_tags.c.image_id.in_(ids))
                                        .order_by(m.image_tags.c.created_at, m.image_tags.c.value)):
                tags[t.image_id].append(t.value)
            for loc in await conn.execute(sa.select(m.image_locations).where(m.image_locations.c.image_id.in_(ids))
                                          .order_by(m.image_locations.c.id)):
                locs[loc.image_id].append(Location(loc.store, loc.url, json.loads(loc.metadata_json), loc.status))
        return [ImageRecord(**{k: r[k] for k in CORE_ATTRIBUTES}, properties=props[r["id"]],
                            tags=tuple(tags[r["id"]]), locations=tuple(locs[r["id"]])) for r in rows]

    async def update_image(self, image_id: str, *, changes: Mapping[str, Any] | None = None,
                           set_properties: Mapping[str, str] | None = None,
                           remove_properties: Iterable[str] = (),
                           tags: Iterable[str] | None = None, tag_quota: int = -1,
                           expected_status: str | None = None) -> ImageRecord:
        """Apply a whole set of changes in one transaction (Glance's single ``save``)."""
        changes = dict(changes or {})
        check_row(m.images, changes)
        _check_properties(set_properties or {})
        if tags is not None:
            tags = list(tags)
            _check_tags(tags)
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if expected_status is not None and image.status != expected_status:
                raise InvalidStatusTransition(f"Image {image_id} is {image.status}, not {expected_status}")
            if "status" in changes and changes["status"] != image.status:
                check_transition(image_id, image.status, changes["status"])
            new_props = dict(image.properties)
            for key in remove_properties:
                new_props.pop(key, None)
            new_props.update(set_properties or {})
            now = utcnow()
            changes["updated_at"] = now
            stmt = m.images.update().where(m.images.c.id == image_id).values(**changes)
            if "status" in changes:
                stmt = stmt.where(m.images.c.status == image.status)
            result = await conn.execute(stmt)
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed while it was being updated")
            await _write_properties(conn, image_id, image.properties, new_props)
            if tags is not None:
                wanted = list(dict.fromkeys(tags))
                if tag_quota >= 0 and len(wanted) > tag_quota and len(wanted) > len(image.tags):
                    raise QuotaExceeded(f"Maximum number of tags exceeded: {len(wanted)} > {tag_quota}")
                for tag in set(image.tags) - set(wanted):
                    await conn.execute(m.image_tags.delete().where(
                        m.image_tags.c.image_id == image_id, m.image_tags.c.value == tag))
                for tag in wanted:
                    if tag not in image.tags:
                        await conn.execute(m.image_tags.insert().values(image_id=image_id, value=tag, created_at=now))
            return await self._load(conn, image_id)

    async def transition(self, image_id: str, from_status: str, to_status: str,
                         values: Mapping[str, Any] | None = None) -> ImageRecord:
        """Compare-and-swap the status: of two racing callers exactly one wins, the other gets 409."""
        check_transition(image_id, from_status, to_status)
        async with self._write() as conn:
            if to_status in NEEDS_FORMATS:
                image = await self._load(conn, image_id)
                if not (image.disk_format and image.container_format):
                    raise InvalidRequest("Properties disk_format, container_format must be set prior to saving data.")
            stmt = (m.images.update()
                    .where(m.images.c.id == image_id, m.images.c.status == from_status, m.images.c.deleted.is_(False))
                    .values(status=to_status, updated_at=utcnow(), **dict(values or {})))
            result = await conn.execute(stmt)
            if result.rowcount != 1:
                current = await conn.scalar(sa.select(m.images.c.status).where(
                    m.images.c.id == image_id, m.images.c.deleted.is_(False)))
                if current is None:
                    raise DoesNotExist(f"No image found with ID {image_id}")
                raise InvalidStatusTransition(
                    f"Image {image_id} is {current}; it cannot move from {from_status} to {to_status}")
            return await self._load(conn, image_id)

    async def delete_image(self, image_id: str) -> ImageRecord:
        """Soft-delete: the row stays (status deleted) so ids are never reused."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if image.protected:
                raise NotPermitted(f"Image {image_id} is protected and cannot be deleted.")
            now = utcnow()
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.deleted.is_(False), m.images.c.status == image.status
            ).values(status="deleted", deleted=True, deleted_at=now, updated_at=now))
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed while it was being deleted")
            await conn.execute(m.image_properties.delete().where(m.image_properties.c.image_id == image_id))
            await conn.execute(m.image_tags.delete().where(m.image_tags.c.image_id == image_id))
            await conn.execute(m.image_members.delete().where(m.image_members.c.image_id == image_id))
            await conn.execute(m.image_locations.delete().where(m.image_locations.c.image_id == image_id))
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            return image

    # -- image data ---------------------------------------------------------------------

    async def begin_upload(self, image_id: str, host: str, from_status: str = "queued",
                           to_status: str = "saving") -> ImageRecord:
        """CAS ``queued -> saving`` and record which node uploads, in one transaction."""
        check_transition(image_id, from_status, to_status)
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if image.status != from_status:
                raise InvalidStatusTransition(
                    f"Image {image_id} is {image.status}; data can only be uploaded to a {from_status} image")
            if to_status in NEEDS_FORMATS and not (image.disk_format and image.container_format):
                raise InvalidRequest("Properties disk_format, container_format must be set prior to saving data.")
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.status == from_status
            ).values(status=to_status, updated_at=utcnow()))
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed status during the request")
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            await conn.execute(m.image_uploads.insert().values(image_id=image_id, host=host, started_at=utcnow()))
            return await self._load(conn, image_id)

    async def finish_upload(self, image_id: str, *, size: int, checksum: str, os_hash_algo: str,
                            os_hash_value: str, store: str, url: str, metadata: Mapping[str, Any] | None = None,
                            virtual_size: int | None = None, from_status: str = "saving") -> ImageRecord:
        """CAS ``saving -> active`` with the data's size, digests and location.

        Raises DoesNotExist if the image was deleted meanwhile: the caller then removes the data.
        """
        async with self._write() as conn:
            now = utcnow()
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.status == from_status, m.images.c.deleted.is_(False)
            ).values(status="active", size=size, virtual_size=virtual_size, checksum=checksum,
                     os_hash_algo=os_hash_algo, os_hash_value=os_hash_value, updated_at=now))
            if result.rowcount != 1:
                current = await conn.scalar(sa.select(m.images.c.status).where(
                    m.images.c.id == image_id, m.images.c.deleted.is_(False)))
                if current is None:
                    raise DoesNotExist(f"Image {image_id} was deleted during the upload")
                raise InvalidStatusTransition(f"Image {image_id} is {current}, not {from_status}")
            await conn.execute(m.image_locations.insert().values(
                image_id=image_id, store=store, url=url, metadata_json=json.dumps(dict(metadata or {})),
                status="active", created_at=now))
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            return await self._load(conn, image_id)

    async def finish_stage(self, image_id: str, *, size: int, host: str) -> ImageRecord:
        """The staged data is whole: the image stays ``uploading`` (awaiting import) with its size."""
        async with self._write() as conn:
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.status == "uploading", m.images.c.deleted.is_(False)
            ).values(size=size, updated_at=utcnow()))
            if result.rowcount != 1:
                current = await conn.scalar(sa.select(m.images.c.status).where(
                    m.images.c.id == image_id, m.images.c.deleted.is_(False)))
                if current is None:
                    raise DoesNotExist(f"Image {image_id} was deleted during staging")
                raise InvalidStatusTransition(f"Image {image_id} is {current}, not uploading")
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            image = await self._load(conn, image_id)
            props = dict(image.properties, **{STAGE_HOST: host})
            await _write_properties(conn, image_id, image.properties, props)
            return await self._load(conn, image_id)

    async def abort_upload(self, image_id: str, from_status: str = "saving") -> bool:
        """Put an image whose upload failed back to ``queued``; False if it is gone or moved on."""
        async with self._write() as conn:
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.status == from_status, m.images.c.deleted.is_(False)
            ).values(status="queued", updated_at=utcnow()))
            return bool(result.rowcount == 1)

    async def recover_uploads(self, host: str) -> list[str]:
        """At start-up: every upload this node had in flight died with it; queue those images again."""
        async with self._write() as conn:
            ids = list((await conn.execute(sa.select(m.image_uploads.c.image_id).where(
                m.image_uploads.c.host == host))).scalars())
            for image_id in ids:
                await conn.execute(m.images.update().where(
                    m.images.c.id == image_id, m.images.c.status.in_(("saving", "uploading", "importing")),
                    m.images.c.deleted.is_(False)).values(status="queued", updated_at=utcnow()))
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.host == host))
            return ids

    # -- imports and tasks ----------------------------------------------------------------

    async def begin_import(self, image_id: str, *, task_id: str, owner: str | None, user_id: str | None,
                           request_id: str | None, host: str, task_input: Mapping[str, Any], stores: list[str],
                           from_status: str, to_status: str | None, lock_timeout: float) -> tuple[ImageRecord, TaskRecord]:
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
                id=task_id, type="api_image_import", status="processing", owner=owner, user_id=user_id,
                request_id=request_id, image_id=image_id, host=host, input_json=json.dumps(dict(task_input)),
                result_json=None, message="", created_at=now, updated_at=now, expires_at=None))
            importing = store_list(props.get(IMPORTING_TO)) + stores
            failed = [s for s in store_list(props.get(FAILED_IMPORT)) if s not in stores]
            props = _with_store_lists(props, importing=importing, failed=failed)
            props[IMPORT_LOCK] = task_id
            props.pop(STAGE_HOST, None)
            await _write_properties(conn, image_id, image.properties, props)
            values: dict[str, Any] = {"updated_at": now}
            if to_status is not None:
                values["status"] = to_status
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.status == from_status).values(**values))
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed status during the request")
            return await self._load(conn, image_id), await self._load_task(conn, task_id)

    async def _break_stale_lock(self, conn: AsyncConnection, image_id: str, task_id: str, props: dict[str, str],
                                lock_timeout: float) -> dict[str, str]:
        row = (await conn.execute(sa.select(m.tasks).where(m.tasks.c.id == task_id))).mappings().first()
        if row is not None and row["status"] in ("pending", "processing"):
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
        props = _with_store_lists(
            props, importing=[s for s in store_list(props.get(IMPORTING_TO)) if s not in dead_stores],
            failed=[s for s in store_list(props.get(FAILED_IMPORT)) if s not in dead_stores])
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
                await conn.execute(m.image_locations.insert().values(
                    image_id=image_id, store=store, url=url, metadata_json=json.dumps(dict(metadata)),
                    status="active", created_at=now))
            props = _with_store_lists(
                image.properties,
                importing=[s for s in store_list(image.properties.get(IMPORTING_TO)) if s not in locations],
                failed=[s for s in store_list(image.properties.get(FAILED_IMPORT)) if s not in locations])
            await _write_properties(conn, image_id, image.properties, props)
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
            await _write_properties(conn, image_id, image.properties, props)

    async def remove_location(self, image_id: str, store: str) -> Location:
        """Drop the image's location in ``store``; with the last one go its size and digests (Glance)."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            found = [loc for loc in image.locations if loc.store == store]
            if not found:
                raise DoesNotExist(f"Image {image_id} has no data in store {store}")
            await conn.execute(m.image_locations.delete().where(
                m.image_locations.c.image_id == image_id, m.image_locations.c.store == store))
            values: dict[str, Any] = {"updated_at": utcnow()}
            if len(image.locations) == len(found):
                values.update(size=None, virtual_size=None, checksum=None, os_hash_algo=None, os_hash_value=None)
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(**values))
            return found[0]

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
            task = await self._load_task(conn, task_id)
            props = dict(image.properties)
            if props.get(IMPORT_LOCK) == task_id:
                props.pop(IMPORT_LOCK)
                # Stores still listed as importing were never reached: they failed with the task.
                ours = set(task.input.get("stores") or [])  # type: ignore[call-overload]
                left = [s for s in store_list(props.get(IMPORTING_TO)) if s in ours]
                props = _with_store_lists(
                    props, importing=[s for s in store_list(props.get(IMPORTING_TO)) if s not in ours],
                    failed=store_list(props.get(FAILED_IMPORT)) + ([] if success else left))
            await _write_properties(conn, image_id, image.properties, props)
            values: dict[str, Any] = {"updated_at": now}
            if revert_to_queued and image.status in ("importing", "uploading") and not image.locations:
                values.update(status="queued", size=None, virtual_size=None, checksum=None, os_hash_algo=None,
                              os_hash_value=None)
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(**values))

    async def get_task(self, task_id: str) -> TaskRecord:
        async with self._read() as conn:
            return await self._load_task(conn, task_id)

    async def _load_task(self, conn: AsyncConnection, task_id: str) -> TaskRecord:
        row = (await conn.execute(sa.select(m.tasks).where(m.tasks.c.id == task_id))).mappings().first()
        if row is None:
            raise DoesNotExist(f"Task with the given id {task_id} not found")
        return _task_record(row)

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
            return [_task_record(r) for r in (await conn.execute(stmt)).mappings()]

    async def recover_imports(self, host: str) -> list[TaskRecord]:
        """At start-up: imports this node ran died with it. Fail their tasks, release their locks, and
        put their images back where the import found them (queued, or active for a copy)."""
        async with self._read() as conn:
            rows = list((await conn.execute(sa.select(m.tasks).where(
                m.tasks.c.host == host, m.tasks.c.status.in_(("pending", "processing"))))).mappings())
        dead = [_task_record(r) for r in rows]
        for task in dead:
            if task.image_id is not None:
                await self.finish_import(task.image_id, task.id, success=False,
                                         message="The node running this import stopped; it was abandoned",
                                         revert_to_queued=True)
        return dead

    async def expire_dead_imports(self, lock_timeout: float) -> list[TaskRecord]:
        """Any node: fail the imports whose node stopped beating (it died), release their locks and
        queue their images again, so that an image is free within a minute or two of a crash."""
        cutoff = utcnow() - dt.timedelta(seconds=lock_timeout)
        async with self._read() as conn:
            rows = list((await conn.execute(sa.select(m.tasks).where(
                m.tasks.c.status.in_(("pending", "processing")), m.tasks.c.updated_at < cutoff))).mappings())
        dead = [_task_record(r) for r in rows]
        for task in dead:
            if task.image_id is not None:
                await self.finish_import(task.image_id, task.id, success=False,
                                         message=f"Expired lock preempted: no heartbeat from {task.host} "
                                                 f"for {lock_timeout:.0f} s",
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
            rows = await conn.execute(sa.select(m.tasks.c.image_id).where(m.tasks.c.status.in_(("pending", "processing"))))
            return {r.image_id for r in rows if r.image_id}

    # -- fast data digests -------------------------------------------------------------------

    async def data_digest(self, image_id: str, os_hash_value: str) -> str | None:
        """The BLAKE3 of the image's data, if recorded for this very data (same os_hash_value)."""
        d = m.image_data_digests.c
        async with self._read() as conn:
            return await conn.scalar(sa.select(d.blake3).where(d.image_id == image_id,
                                                                d.os_hash_value == os_hash_value))

    async def set_data_digest(self, image_id: str, os_hash_value: str, blake3: str) -> None:
        d = m.image_data_digests.c
        async with self._write() as conn:
            exists = await conn.scalar(sa.select(m.images.c.id).where(m.images.c.id == image_id))
            if exists is None:
                return
            await conn.execute(m.image_data_digests.delete().where(d.image_id == image_id))
            await conn.execute(m.image_data_digests.insert().values(
                image_id=image_id, os_hash_value=os_hash_value, blake3=blake3))

    # -- cache peers ------------------------------------------------------------------------

    async def register_cache_node(self, node_id: str, url: str, image_ids: Iterable[str]) -> None:
        """(Re)announce this node and the full list of what it caches."""
        async with self._write() as conn:
            now = utcnow()
            await conn.execute(m.node_cached_images.delete().where(m.node_cached_images.c.node_id == node_id))
            await conn.execute(m.cache_nodes.delete().where(m.cache_nodes.c.node_id == node_id))
            await conn.execute(m.cache_nodes.insert().values(node_id=node_id, url=url, updated_at=now))
            rows = [{"node_id": node_id, "image_id": i} for i in dict.fromkeys(image_ids)]
            if rows:
                await conn.execute(m.node_cached_images.insert(), rows)

    async def set_node_caches(self, node_id: str, image_id: str, cached: bool) -> None:
        async with self._write() as conn:
            await conn.execute(m.node_cached_images.delete().where(
                m.node_cached_images.c.node_id == node_id, m.node_cached_images.c.image_id == image_id))
            if cached:
                await conn.execute(m.node_cached_images.insert().values(node_id=node_id, image_id=image_id))

    async def cache_peers(self, image_id: str, exclude: str) -> list[str]:
        """URLs of the other nodes that cache ``image_id``, most recently announced first."""
        n, c = m.cache_nodes.c, m.node_cached_images.c
        async with self._read() as conn:
            rows = await conn.execute(sa.select(n.url).join_from(m.cache_nodes, m.node_cached_images,
                                                                 n.node_id == c.node_id)
                                      .where(c.image_id == image_id, n.node_id != exclude)
                                      .order_by(n.updated_at.desc()))
            return [r.url for r in rows]

    # -- listing -----------------------------------------------------------------------

    async def list_images(self, ctx: RequestContext, query: ImageQuery) -> tuple[list[ImageRecord], bool]:
        """One page of images ``ctx`` may see, and whether the page was full (Glance's ``next``)."""
        i = m.images.c
        conds: list[sa.ColumnElement[bool]] = [i.deleted.is_(False), i.status != "killed"]
        conds.append(i.os_hidden.is_(query.os_hidden))
        if query.protected is not None:
            conds.append(i.protected.is_(query.protected))
        for column, op, value in query.conditions:
            col = i[column]
            conds.append(_compare(col, op, value))
        for name, value in query.properties:
            p = m.image_properties.alias()
            conds.append(sa.exists().where(p.c.image_id == i.id, p.c.name == name, p.c.value == value))
        for tag in query.tags:
            t = m.image_tags.alias()
            conds.append(sa.exists().where(t.c.image_id == i.id, t.c.value == tag))
        conds.append(_visibility_condition(ctx, query))

        sort = list(query.sort)
        keys = [k for k, _ in sort]
        for extra in ("created_at", "id"):
            if extra not in keys:
                sort.append((extra, query.tiebreak_dir))
                keys.append(extra)

        async with self._read() as conn:
            if query.marker is not None:
                # Glance's marker lookup (``_image_get``): admins may page from a deleted image;
                # an unknown marker is a 400, an image the caller may not see a 403.
                stmt = sa.select(m.images).where(i.id == query.marker)
                if not ctx.is_admin:
                    stmt = stmt.where(i.deleted.is_(False))
                marker_row = (await conn.execute(stmt)).mappings().first()
                if marker_row is None:
                    raise InvalidRequest(f"No image found with ID {query.marker}")
                if not (ctx.is_admin or marker_row["owner"] is None or ctx.owns(marker_row["owner"])
                        or marker_row["visibility"] in ("public", "community")
                        or (marker_row["visibility"] == "shared" and ctx.project_id is not None
                            and await conn.scalar(sa.select(m.image_members.c.status).where(
                                m.image_members.c.image_id == marker_row["id"],
                                m.image_members.c.member == ctx.project_id)) is not None)):
                    raise NotPermitted(f"Forbidding request, image {query.marker} not visible")
                conds.append(_after_marker(sort, marker_row))
            order = [(_SORT_EXPR[k].asc() if d == "asc" else _SORT_EXPR[k].desc()) for k, d in sort]
            stmt = sa.select(m.images).where(*conds).order_by(*order)
            if query.limit is not None:
                stmt = stmt.limit(query.limit)
            rows = list((await conn.execute(stmt)).mappings())
            images = await self._hydrate(conn, rows)
        return images, query.limit is not None and len(rows) == query.limit and query.limit > 0

    # -- tags ------------------------------------------------------------------------------

    async def add_tag(self, image_id: str, tag: str, *, quota: int = -1) -> None:
        _check_tags([tag])
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            now = utcnow()
            if tag not in image.tags:
                if quota >= 0 and len(image.tags) + 1 > quota:
                    raise QuotaExceeded(f"Maximum number of tags exceeded: {len(image.tags) + 1} > {quota}")
                await conn.execute(m.image_tags.insert().values(image_id=image_id, value=tag, created_at=now))
            # Glance saves the image even when the tag was already there: updated_at moves.
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(updated_at=now))

    async def delete_tag(self, image_id: str, tag: str) -> None:
        async with self._write() as conn:
            await self._load(conn, image_id, for_update=True)
            result = await conn.execute(m.image_tags.delete().where(
                m.image_tags.c.image_id == image_id, m.image_tags.c.value == tag))
            if result.rowcount == 0:
                raise DoesNotExist(f"Tag {tag} not found")
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(updated_at=utcnow()))

    # -- members ---------------------------------------------------------------------------

    async def list_members(self, image_id: str, *, only: str | None = None) -> list[MemberRecord]:
        stmt = sa.select(m.image_members).where(m.image_members.c.image_id == image_id)
        if only is not None:
            stmt = stmt.where(m.image_members.c.member == only)
        async with self._read() as conn:
            rows = await conn.execute(stmt.order_by(m.image_members.c.created_at, m.image_members.c.member))
            return [MemberRecord(r.image_id, r.member, r.status, r.created_at, r.updated_at) for r in rows]

    async def get_member(self, image_id: str, member: str) -> MemberRecord:
        members = await self.list_members(image_id, only=member)
        if not members:
            raise DoesNotExist(f"{member} is not a member of image {image_id}")
        return members[0]

    async def add_member(self, image_id: str, member: str, *, quota: int = -1) -> MemberRecord:
        check_row(m.image_members, {"member": member}, "Member id")
        async with self._write() as conn:
            await self._load(conn, image_id, for_update=True)
            count = await conn.scalar(sa.select(sa.func.count()).select_from(m.image_members).where(
                m.image_members.c.image_id == image_id)) or 0
            exists = await conn.scalar(sa.select(m.image_members.c.member).where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member))
            if quota >= 0 and count + 1 > quota:
                raise QuotaExceeded(f"Maximum number of image members exceeded: {count + 1} > {quota}")
            if exists is not None:
                raise Duplicate(f"Member {member} is duplicated for image {image_id}")
            now = utcnow()
            await conn.execute(m.image_members.insert().values(
                image_id=image_id, member=member, status="pending", created_at=now, updated_at=now))
            return MemberRecord(image_id, member, "pending", now, now)

    async def update_member(self, image_id: str, member: str, status: str) -> MemberRecord:
        async with self._write() as conn:
            now = utcnow()
            result = await conn.execute(m.image_members.update().where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member
            ).values(status=status, updated_at=now))
            if result.rowcount == 0:
                raise DoesNotExist(f"{member} is not a member of image {image_id}")
            row = (await conn.execute(sa.select(m.image_members).where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member))).first()
            assert row is not None
            return MemberRecord(row.image_id, row.member, row.status, row.created_at, row.updated_at)

    async def delete_member(self, image_id: str, member: str) -> None:
        async with self._write() as conn:
            result = await conn.execute(m.image_members.delete().where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member))
            if result.rowcount == 0:
                raise DoesNotExist(f"{member} is not a member of image {image_id}")

    async def member_status(self, image_id: str, member: str | None) -> str | None:
        if member is None:
            return None
        async with self._read() as conn:
            return await conn.scalar(sa.select(m.image_members.c.status).where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member))


def _compare(col: sa.ColumnElement[Any], op: str, value: Any) -> sa.ColumnElement[bool]:
    if op == "eq":
        return col == value
    if op == "neq":
        return col != value
    if op == "in":
        return col.in_(list(value))
    if op == "outside":
        low, high = value
        return sa.or_(col < low, col >= high)
    if op == "gt":
        return col > value
    if op == "gte":
        return col >= value
    if op == "lt":
        return col < value
    if op == "lte":
        return col <= value
    raise InvalidRequest(f"Unable to filter by unknown operator '{op}'.")


def _visibility_condition(ctx: RequestContext, query: ImageQuery) -> sa.ColumnElement[bool]:
    """Glance's ``_select_images_query`` plus its visibility post-filter, as one condition."""
    i = m.images.c
    if ctx.is_admin:
        base: sa.ColumnElement[bool] = sa.true()
    else:
        mem = m.image_members.c
        member_conds = [mem.image_id == i.id, mem.member == (ctx.project_id or "")]
        if query.member_status != "all":
            member_conds.append(mem.status == query.member_status)
        shared_with_me = sa.and_(i.visibility == "shared", sa.exists().where(*member_conds))
        parts = [i.visibility.in_(("public", "community")), shared_with_me]
        if ctx.project_id is not None:
            parts.append(i.owner == ctx.project_id)
        base = sa.or_(*parts)
    if query.visibility is not None:
        if query.visibility != "all":
            return sa.and_(base, i.visibility == query.visibility)
        return base
    if ctx.project_id is None:
        return sa.and_(base, i.visibility != "community")
    return sa.and_(base, sa.or_(i.owner == ctx.project_id, i.visibility != "community"))


def _after_marker(sort: list[tuple[str, str]], marker: Mapping[Any, Any]) -> sa.ColumnElement[bool]:
    """Keyset condition: rows strictly after the marker in the given order."""
    ors = []
    for n, (key, direction) in enumerate(sort):
        ands = []
        for prev_key, _ in sort[:n]:
            ands.append(_SORT_EXPR[prev_key] == _marker_value(marker, prev_key))
        expr, value = _SORT_EXPR[key], _marker_value(marker, key)
        ands.append(expr > value if direction == "asc" else expr < value)
        ors.append(sa.and_(*ands))
    return sa.or_(*ors)


def _marker_value(marker: Mapping[str, Any], key: str) -> Any:
    value = marker[key]
    return _NULL_STANDIN.get(key) if value is None else value


def _check_properties(properties: Mapping[str, str]) -> None:
    for name, value in properties.items():
        check_row(m.image_properties, {"name": name}, "A property name")
        check_row(m.image_properties, {"value": value}, f"Property '{name}'")


def _check_tags(tags: Iterable[str]) -> None:
    for tag in tags:
        check_row(m.image_tags, {"value": tag}, "A tag")


async def _write_properties(conn: AsyncConnection, image_id: str, before: Mapping[str, str],
                            after: Mapping[str, str]) -> None:
    for key in set(before) - set(after):
        await conn.execute(m.image_properties.delete().where(
            m.image_properties.c.image_id == image_id, m.image_properties.c.name == key))
    for key, value in after.items():
        if key not in before:
            await conn.execute(m.image_properties.insert().values(image_id=image_id, name=key, value=value))
        elif before[key] != value:
            await conn.execute(m.image_properties.update().where(
                m.image_properties.c.image_id == image_id, m.image_properties.c.name == key).values(value=value))


def _task_record(row: Mapping[Any, Any]) -> TaskRecord:
    return TaskRecord(
        id=row["id"], type=row["type"], status=row["status"], owner=row["owner"], user_id=row["user_id"],
        request_id=row["request_id"], image_id=row["image_id"], host=row["host"],
        input=json.loads(row["input_json"]), result=json.loads(row["result_json"]) if row["result_json"] else None,
        message=row["message"], created_at=row["created_at"], updated_at=row["updated_at"],
        expires_at=row["expires_at"])


def _configure_sqlite(engine: AsyncEngine, busy_timeout: float) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE can be issued.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
