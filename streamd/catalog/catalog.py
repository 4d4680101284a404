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
import json
import logging
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..context import RequestContext
from ..errors import BadRequest, Duplicate, Forbidden, InvalidStatusTransition, NotFound, QuotaExceeded
from . import models as m
from .policy import can_see
from .query import ImageQuery
from .records import CORE_ATTRIBUTES, ImageRecord, Location, MemberRecord, utcnow
from .status import NEEDS_FORMATS, check_transition

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
        async with self._write() as conn:
            exists = await conn.scalar(sa.select(m.images.c.id).where(m.images.c.id == row["id"]))
            if exists is not None:
                raise Duplicate(f"An image with identifier {row['id']} already exists")
            await conn.execute(m.images.insert().values(**row))
            if properties:
                await conn.execute(m.image_properties.insert(), [
                    {"image_id": row["id"], "name": k, "value": v} for k, v in properties.items()])
            tag_list = list(dict.fromkeys(tags))
            if tag_list:
                await conn.execute(m.image_tags.insert(), [
                    {"image_id": row["id"], "value": t, "created_at": now} for t in tag_list])
            return await self._load(conn, row["id"])

    async def get_image(self, image_id: str, ctx: RequestContext | None = None) -> ImageRecord:
        """The image, if it exists and ``ctx`` (when given) may see it; else NotFound."""
        async with self._read() as conn:
            image = await self._load(conn, image_id)
            if ctx is not None and not await self._visible(conn, ctx, image):
                raise NotFound(f"No image found with ID {image_id}")
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
            raise NotFound(f"No image found with ID {image_id}")
        records = await self._hydrate(conn, [row])
        return records[0]

    async def _hydrate(self, conn: AsyncConnection, rows: list[Mapping[str, Any]]) -> list[ImageRecord]:
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
            for key in set(image.properties) - set(new_props):
                await conn.execute(m.image_properties.delete().where(
                    m.image_properties.c.image_id == image_id, m.image_properties.c.name == key))
            for key, value in new_props.items():
                if key not in image.properties:
                    await conn.execute(m.image_properties.insert().values(image_id=image_id, name=key, value=value))
                elif image.properties[key] != value:
                    await conn.execute(m.image_properties.update().where(
                        m.image_properties.c.image_id == image_id, m.image_properties.c.name == key).values(value=value))
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
                    raise BadRequest("Properties disk_format, container_format must be set prior to saving data.")
            stmt = (m.images.update()
                    .where(m.images.c.id == image_id, m.images.c.status == from_status, m.images.c.deleted.is_(False))
                    .values(status=to_status, updated_at=utcnow(), **dict(values or {})))
            result = await conn.execute(stmt)
            if result.rowcount != 1:
                current = await conn.scalar(sa.select(m.images.c.status).where(
                    m.images.c.id == image_id, m.images.c.deleted.is_(False)))
                if current is None:
                    raise NotFound(f"No image found with ID {image_id}")
                raise InvalidStatusTransition(
                    f"Image {image_id} is {current}; it cannot move from {from_status} to {to_status}")
            return await self._load(conn, image_id)

    async def delete_image(self, image_id: str) -> ImageRecord:
        """Soft-delete: the row stays (status deleted) so ids are never reused."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if image.protected:
                raise Forbidden(f"Image {image_id} is protected and cannot be deleted.")
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
            if not (image.disk_format and image.container_format):
                raise BadRequest("Properties disk_format, container_format must be set prior to saving data.")
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

        Raises NotFound if the image was deleted meanwhile: the caller then removes the data.
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
                    raise NotFound(f"Image {image_id} was deleted during the upload")
                raise InvalidStatusTransition(f"Image {image_id} is {current}, not {from_status}")
            await conn.execute(m.image_locations.insert().values(
                image_id=image_id, store=store, url=url, metadata_json=json.dumps(dict(metadata or {})),
                status="active", created_at=now))
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
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
                    raise BadRequest(f"No image found with ID {query.marker}")
                if not (ctx.is_admin or marker_row["owner"] is None or ctx.owns(marker_row["owner"])
                        or marker_row["visibility"] in ("public", "community")
                        or (marker_row["visibility"] == "shared" and ctx.project_id is not None
                            and await conn.scalar(sa.select(m.image_members.c.status).where(
                                m.image_members.c.image_id == marker_row["id"],
                                m.image_members.c.member == ctx.project_id)) is not None)):
                    raise Forbidden(f"Forbidding request, image {query.marker} not visible")
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
                raise NotFound(f"Tag {tag} not found")
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
            raise NotFound(f"{member} is not a member of image {image_id}")
        return members[0]

    async def add_member(self, image_id: str, member: str, *, quota: int = -1) -> MemberRecord:
        async with self._write() as conn:
            await self._load(conn, image_id, for_update=True)
            count = await conn.scalar(sa.select(sa.func.count()).select_from(m.image_members).where(
                m.image_members.c.image_id == image_id))
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
                raise NotFound(f"{member} is not a member of image {image_id}")
            row = (await conn.execute(sa.select(m.image_members).where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member))).first()
            assert row is not None
            return MemberRecord(row.image_id, row.member, row.status, row.created_at, row.updated_at)

    async def delete_member(self, image_id: str, member: str) -> None:
        async with self._write() as conn:
            result = await conn.execute(m.image_members.delete().where(
                m.image_members.c.image_id == image_id, m.image_members.c.member == member))
            if result.rowcount == 0:
                raise NotFound(f"{member} is not a member of image {image_id}")

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
    raise BadRequest(f"Unable to filter by unknown operator '{op}'.")


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


def _after_marker(sort: list[tuple[str, str]], marker: Mapping[str, Any]) -> sa.ColumnElement[bool]:
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
