"""The catalogue's shared database plumbing, under every concern's methods.

``CatalogBase`` owns the engine and the two ways to reach it: ``_read`` (a plain
connection) and ``_write`` (one transaction, serialised as SQLite needs); on a
SQLite file a third, ``SQLiteReader``, for the one-statement image read. It also
holds what several concerns share: loading image rows as ``ImageRecord``s,
writing a property diff, adding a location, and the status compare-and-swap that
says why when it loses.

SQLite has one writer at a time. Real Glance on SQLite fails uploads with
"database is locked" when clients write together; streamd never does: the
database is in WAL mode (readers never wait for the writer), every write
transaction in this process goes through one asyncio lock, and starts with
``BEGIN IMMEDIATE`` so that a writer in *another* process makes us wait
(``busy_timeout``) rather than fail on a lock upgrade. On PostgreSQL a write is
an ordinary transaction; rows it must not lose are taken ``FOR UPDATE``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, Self, Sequence

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import BackendFailure, DoesNotExist, InvalidStatusTransition
from . import models as m
from .records import CORE_ATTRIBUTES, ImageRecord, Location

log = logging.getLogger(__name__)

# A WAL this long when the daemon's checkpoint has copied it (256 MiB of 4 KiB pages) is started
# over with a RESTART checkpoint, which waits for the writers of other processes.
WAL_RESTART_FRAMES = 65536

_MIGRATIONS = Path(__file__).with_name("migrations")


class CatalogBase:
    def __init__(self, engine: AsyncEngine, reader: SQLiteReader | None = None) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # One writer at a time in this process on SQLite; PostgreSQL takes row locks.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # The one-statement image reads (``image_read``), built once per (FOR UPDATE, member asked).
        self._image_reads: dict[tuple[bool, bool], sa.Select[Any]] = {}
        # SQLite file: where the single-statement image reads outside transactions run.
        self._reader = reader

    @property
    def sync_engines(self) -> list[sa.Engine]:
        """Every engine statements go through (for event listeners: tests counting statements)."""
        return [self.engine.sync_engine] + (self._reader.engines if self._reader is not None else [])

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, busy_timeout: float = 30.0, pool_size: int = 10, migrate: bool = True,
                   background_checkpoints: bool = False) -> Self:
        """The catalogue at ``url``, its schema brought to the newest revision unless ``migrate`` is
        false (``streamd-manage db``, which reads and moves the revision itself).
        ``background_checkpoints`` (SQLite; the daemon): no commit copies the WAL into the database
        file itself; ``checkpoint``, which the daemon runs every second, does."""
        parsed = make_url(url)
        reader = None
        if parsed.get_backend_name() == "sqlite":
            engine = create_async_engine(url, connect_args={"timeout": busy_timeout})
            _configure_sqlite(engine.sync_engine, busy_timeout, autocheckpoint=not background_checkpoints)
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                reader = SQLiteReader(parsed.set(drivername="sqlite+pysqlite"), busy_timeout,
                                      autocheckpoint=not background_checkpoints)
        else:
            connect_args: dict[str, Any] = {}
            if parsed.get_driver_name() == "asyncpg":
                # Plan each statement for its values. asyncpg prepares every statement, and after
                # five runs PostgreSQL may switch a prepared statement to a generic plan, blind to
                # the values: a property filter's page then takes 150 ms instead of 1 (it gathers
                # every image with that property name and sorts them) from the sixth request on.
                connect_args["server_settings"] = {"plan_cache_mode": "force_custom_plan"}
            asyncpg = parsed.get_driver_name() == "asyncpg"
            # Another driver gives no local view of its connection: the pool asks the server.
            engine = create_async_engine(url, pool_size=pool_size, pool_pre_ping=not asyncpg,
                                         connect_args=connect_args)
            if asyncpg:
                event.listen(engine.sync_engine, "checkout", _refuse_closed_connection)
        catalog = cls(engine, reader)
        if migrate:
            await catalog.migrate()
        return catalog

    async def migrate(self, revision: str = "head") -> None:
        """Bring the schema to an Alembic revision (the newest by default)."""
        from alembic import command

        def upgrade(sync_conn: sa.Connection) -> None:
            command.upgrade(_alembic_config(sync_conn), revision)

        async with self._write() as conn:
            await conn.run_sync(upgrade)

    async def stamp(self, revision: str) -> None:
        """Record ``revision`` as the schema's without running any migration (glance-manage
        db version_control)."""
        from alembic import command

        def stamp(sync_conn: sa.Connection) -> None:
            command.stamp(_alembic_config(sync_conn), revision)

        async with self._write() as conn:
            await conn.run_sync(stamp)

    async def schema_revisions(self) -> tuple[str, ...]:
        """The revisions the database records (none: not under migration control, e.g. empty)."""
        from alembic.runtime.migration import MigrationContext

        def current(sync_conn: sa.Connection) -> tuple[str, ...]:
            return tuple(MigrationContext.configure(sync_conn).get_current_heads())

        async with self._read() as conn:
            return await conn.run_sync(current)

    @staticmethod
    def head_revisions() -> tuple[str, ...]:
        """The newest revisions streamd's migrations know (one: they are a single line)."""
        from alembic.script import ScriptDirectory

        return tuple(ScriptDirectory.from_config(_alembic_config(None)).get_heads())

    async def close(self) -> None:
        if self._reader is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._reader.close)
        await self.engine.dispose()

    async def checkpoint(self) -> int:
        """SQLite: copy the WAL into the database file, off the requests; returns the frames the WAL
        held. First without holding anyone up (PASSIVE: the bulk of the copy and its fsync run
        beside the writers); then again under this process's write lock, where only what came
        meanwhile is left: the WAL is then wholly copied with no writer of ours inside, so the
        next write starts it over from the beginning instead of making it longer (a WAL is only
        restarted by a writer that begins right after a complete checkpoint)."""
        assert self.is_sqlite and self._write_lock is not None
        await self._wal_checkpoint("PASSIVE")
        async with self._write_lock:
            frames, copied = await self._wal_checkpoint("PASSIVE")
            if frames > WAL_RESTART_FRAMES:
                # Still this long: writers of other processes sharing the file never left room for
                # the restart. This one waits for them (up to busy_timeout) and starts it over.
                log.warning("catalogue WAL at %d frames: checkpointing it with RESTART", frames)
                frames, copied = await self._wal_checkpoint("RESTART")
        return frames

    async def _wal_checkpoint(self, mode: str) -> tuple[int, int]:
        try:
            async with self._read(one_statement=True) as conn:
                _busy, frames, copied = (await conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")).one()
        except sa.exc.SQLAlchemyError as exc:
            raise BackendFailure(f"catalogue checkpoint: {exc}") from exc
        return int(frames), int(copied)

    async def ping(self) -> None:
        """A trivial query (the health check); BackendFailure if the database does not answer."""
        try:
            async with self._read() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise BackendFailure(f"catalogue {self.engine.url.render_as_string(hide_password=True)}: {exc}") from exc

    # -- connections ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self, *, one_statement: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction; ``one_statement`` (PostgreSQL): for a write that is
        one statement, which then commits by itself, without the BEGIN and COMMIT round trips."""
        if self._write_lock is None:
            if one_statement:
                async with self.engine.connect() as conn:
                    yield await conn.execution_options(isolation_level="AUTOCOMMIT")
                return
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_immediate=True)
                async with conn.begin():
                    yield conn

    @contextlib.asynccontextmanager
    async def _read(self, *, one_statement: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection to read with; ``one_statement``: for a single SELECT, which then runs
        without a BEGIN (the statement reads one snapshot by itself). On PostgreSQL that saves two
        round trips, the BEGIN and the ROLLBACK that ends the read."""
        async with self.engine.connect() as conn:
            if one_statement:
                conn = await conn.execution_options(
                    **({"sqlite_no_begin": True} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}))
            yield conn

    # -- image rows ----------------------------------------------------------------

    async def _load(self, conn: AsyncConnection, image_id: str, *, for_update: bool = False) -> ImageRecord:
        image, _ = await self._load_as(conn, image_id, None, for_update=for_update)
        return image

    async def _load_as(self, conn: AsyncConnection, image_id: str, member: str | None, *,
                       for_update: bool = False) -> tuple[ImageRecord, str | None]:
        """The image with its properties, tags and locations in ONE statement (the child rows
        gathered by JSON aggregation in the row), and ``member``'s membership status of it (None if
        no member is asked for or it is none). DoesNotExist if there is no such live image."""
        stmt, params = self._image_read(image_id, member, for_update=for_update)
        return _image_of(image_id, member, (await conn.execute(stmt, params)).first())

    async def _read_image(self, image_id: str, member: str | None) -> tuple[ImageRecord, str | None]:
        """``_load_as`` outside any transaction: on a SQLite file by the ``SQLiteReader`` (on the
        loop when it need not wait, else one hop to a thread), else on a connection of its own."""
        if self._reader is None:
            async with self._read(one_statement=True) as conn:
                return await self._load_as(conn, image_id, member)
        stmt, params = self._image_read(image_id, member)
        return _image_of(image_id, member, await self._reader.first(stmt, params))

    def _image_read(self, image_id: str, member: str | None, *,
                    for_update: bool = False) -> tuple[sa.Select[Any], dict[str, str]]:
        key = (for_update and not self.is_sqlite, member is not None)
        stmt = self._image_reads.get(key)
        if stmt is None:
            stmt = self._image_reads[key] = image_read(self.is_sqlite, for_update=key[0], member=key[1])
        return stmt, ({"image_id": image_id} if member is None else {"image_id": image_id, "member": member})

    async def _hydrate(self, conn: AsyncConnection, rows: Sequence[Mapping[Any, Any]]) -> list[ImageRecord]:
        """Image rows with their properties, tags and locations, in three queries for any number of rows."""
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

    async def _swap_status(self, conn: AsyncConnection, image_id: str, expected_status: str,
                           values: Mapping[str, Any], *, gone: str, moved_on: Callable[[str], str]) -> None:
        """UPDATE the image only while it is (not deleted and) ``expected_status``.

        Of two racing writers exactly one matches the row. The other re-reads it to say why it lost:
        DoesNotExist(``gone``) if the image was deleted, else InvalidStatusTransition with
        ``moved_on(status it has now)``.
        """
        i = m.images.c
        result = await conn.execute(m.images.update().where(
            i.id == image_id, i.status == expected_status, i.deleted.is_(False)).values(**values))
        if result.rowcount == 1:
            return
        current = await conn.scalar(sa.select(i.status).where(i.id == image_id, i.deleted.is_(False)))
        if current is None:
            raise DoesNotExist(gone)
        raise InvalidStatusTransition(moved_on(current))


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled asyncpg connection that the server or the network closed is dropped at checkout
    and another one taken (the pool's pessimistic handling). asyncpg knows it locally, from the
    end of the stream (a restart, ``pg_terminate_backend``, an idle timeout), so this costs no
    round trip, where the pool's own pre-ping costs one on every checkout."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the server closed this connection")


def image_read(is_sqlite: bool, *, for_update: bool = False, member: bool = False) -> sa.Select[Any]:
    """One SELECT of an image row (``:image_id``, not deleted) with three more columns, each a JSON
    text of its child rows, read by correlated subqueries on their primary keys or index:
    ``props_json`` (an object name -> value), ``tags_json`` (the tags by created_at then value, as
    ``_hydrate`` orders them) and ``locs_json`` (``[store, url, metadata_json, status]`` by id);
    with ``member``, ``member_status``: the status of ``:member``'s membership (NULL if none)."""
    i, p, t, loc = m.images, m.image_properties, m.image_tags, m.image_locations
    if is_sqlite:
        # SQLite 3.40 has no ORDER BY inside an aggregate: the rows are ordered in a subquery
        # (SQLite never flattens an ordered subquery into an aggregate, so they reach it in order).
        props = sa.select(sa.func.json_group_object(p.c.name, p.c.value)).where(p.c.image_id == i.c.id)
        tag_rows = (sa.select(t.c.value).where(t.c.image_id == i.c.id)
                    .order_by(t.c.created_at, t.c.value).correlate(i).subquery())
        tags = sa.select(sa.func.json_group_array(tag_rows.c.value))
        loc_rows = (sa.select(loc.c.id, loc.c.store, loc.c.url, loc.c.metadata_json, loc.c.status)
                    .where(loc.c.image_id == i.c.id).order_by(loc.c.id).correlate(i).subquery())
        locs = sa.select(sa.func.json_group_array(sa.func.json_array(
            loc_rows.c.store, loc_rows.c.url, loc_rows.c.metadata_json, loc_rows.c.status)))
    else:
        props = sa.select(sa.func.json_object_agg(p.c.name, p.c.value)).where(p.c.image_id == i.c.id)
        tags = sa.select(sa.func.json_agg(t.c.value).aggregate_order_by(t.c.created_at, t.c.value)
                         ).where(t.c.image_id == i.c.id)
        locs = sa.select(sa.func.json_agg(
            sa.func.json_build_array(loc.c.store, loc.c.url, loc.c.metadata_json, loc.c.status)
        ).aggregate_order_by(loc.c.id)).where(loc.c.image_id == i.c.id)
    columns: list[Any] = [i.c[k] for k in CORE_ATTRIBUTES]
    columns += [sa.cast(props.scalar_subquery(), sa.Text).label("props_json"),
                sa.cast(tags.scalar_subquery(), sa.Text).label("tags_json"),
                sa.cast(locs.scalar_subquery(), sa.Text).label("locs_json")]
    if member:
        mem = m.image_members
        columns.append(sa.select(mem.c.status).where(mem.c.image_id == i.c.id, mem.c.member == sa.bindparam("member"))
                       .scalar_subquery().label("member_status"))
    stmt = sa.select(*columns).where(i.c.id == sa.bindparam("image_id"), i.c.deleted.is_(False))
    if for_update:
        stmt = stmt.with_for_update(of=i)
    return stmt


def _image_of(image_id: str, member: str | None, row: Any) -> tuple[ImageRecord, str | None]:
    if row is None:
        raise DoesNotExist(f"No image found with ID {image_id}")
    return record_of(row), (row.member_status if member is not None else None)


def record_of(row: Any) -> ImageRecord:
    """The ImageRecord of a row of ``image_read``."""
    props = json.loads(row.props_json) if row.props_json else {}
    tags = tuple(json.loads(row.tags_json)) if row.tags_json else ()
    locs = tuple(Location(store, url, json.loads(meta), status)
                 for store, url, meta, status in json.loads(row.locs_json)) if row.locs_json else ()
    return ImageRecord(*row[:len(CORE_ATTRIBUTES)], properties=props, tags=tags, locations=locs)


async def write_properties(conn: AsyncConnection, image_id: str, before: Mapping[str, str],
                           after: Mapping[str, str]) -> None:
    """Turn the image's properties from ``before`` into ``after``, touching only the rows that differ.

    At most two statements whatever the number of properties: one DELETE of the names gone, one
    INSERT ... ON CONFLICT DO UPDATE (executemany) of the values changed and the names added."""
    p = m.image_properties.c
    gone = sorted(set(before) - set(after))
    if gone:
        await conn.execute(m.image_properties.delete().where(p.image_id == image_id, p.name.in_(gone)))
    written = [{"image_id": image_id, "name": k, "value": v} for k, v in after.items() if before.get(k) != v]
    if written:
        await conn.execute(_property_upsert(conn.dialect.name), written)


_PROPERTY_UPSERTS: dict[str, Any] = {}


def _property_upsert(dialect: str) -> Any:
    """INSERT of image_properties rows that sets the value of a name the image already has."""
    stmt = _PROPERTY_UPSERTS.get(dialect)
    if stmt is None:
        insert = sqlite_insert if dialect == "sqlite" else pg_insert
        ins = insert(m.image_properties)
        stmt = _PROPERTY_UPSERTS[dialect] = ins.on_conflict_do_update(
            index_elements=[m.image_properties.c.image_id, m.image_properties.c.name],
            set_={"value": ins.excluded.value})
    return stmt


async def write_tags(conn: AsyncConnection, image_id: str, before: Sequence[str], after: Sequence[str],
                     now: dt.datetime) -> None:
    """Turn the image's tags from ``before`` into ``after`` in at most two statements (one DELETE,
    one INSERT of all the new tags)."""
    t = m.image_tags.c
    gone = sorted(set(before) - set(after))
    if gone:
        await conn.execute(m.image_tags.delete().where(t.image_id == image_id, t.value.in_(gone)))
    had = set(before)
    added = [{"image_id": image_id, "value": tag, "created_at": now} for tag in after if tag not in had]
    if added:
        await conn.execute(m.image_tags.insert(), added)


async def insert_location(conn: AsyncConnection, image_id: str, store: str, url: str,
                          metadata: Mapping[str, Any], created_at: dt.datetime) -> None:
    """An active location row; ``_hydrate`` reads ``metadata_json`` back."""
    await conn.execute(m.image_locations.insert().values(
        image_id=image_id, store=store, url=url, metadata_json=json.dumps(dict(metadata)),
        status="active", created_at=created_at))


def _alembic_config(sync_conn: sa.Connection | None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    return cfg


class _SQLiteCompiler(SQLiteCompiler):
    """SQLite's compiler, rendering table hints (``INDEXED BY``, which SQLAlchemy leaves out)."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


class SQLiteReader:
    """Single SELECTs of a SQLite catalogue file, through synchronous engines: on the event loop's
    thread itself when the file can be read at once, else on threads of their own. Through the
    async engine (aiosqlite) the same read takes five hops to its thread and back (cursor,
    execute, fetch, close, rollback): an image show's read cost ~1.0 ms of CPU that way, 0.3 ms
    by one hop to a reader thread, and one hop is still two thread wake-ups (measured on a
    daemon, back to back: show p50 0.96 ms by a thread, 0.76 ms inline). Each SELECT runs without
    a BEGIN, so it reads one snapshot by itself."""

    THREADS = 4

    def __init__(self, url: sa.URL, busy_timeout: float, *, autocheckpoint: bool = True) -> None:
        self.engine = sa.create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False},
                                       pool_size=self.THREADS, max_overflow=0)
        _configure_sqlite(self.engine, busy_timeout, autocheckpoint=autocheckpoint)
        # The loop's own connection never waits for a lock (busy_timeout 0): a read that would have
        # to (rare in WAL mode: another process holding the file exclusively, a WAL being
        # recovered) is refused at once and goes to a reader thread, which waits busy_timeout.
        self.inline_engine = sa.create_engine(url, connect_args={"timeout": 0, "check_same_thread": False},
                                              pool_size=1, max_overflow=0)
        _configure_sqlite(self.inline_engine, 0, autocheckpoint=autocheckpoint)
        self._threads = concurrent.futures.ThreadPoolExecutor(self.THREADS, thread_name_prefix="catalogue-read")

    @property
    def engines(self) -> list[sa.Engine]:
        return [self.inline_engine, self.engine]

    async def first(self, stmt: sa.Select[Any], params: Mapping[str, Any]) -> sa.Row[Any] | None:
        try:
            return self._first(self.inline_engine, stmt, params)
        except sa.exc.OperationalError as exc:
            if not _is_busy(exc):
                raise
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._first, self.engine, stmt, params)

    @staticmethod
    def _first(engine: sa.Engine, stmt: sa.Select[Any], params: Mapping[str, Any]) -> sa.Row[Any] | None:
        with engine.connect() as conn:
            return conn.execution_options(sqlite_no_begin=True).execute(stmt, params).first()

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.engine.dispose()
        self.inline_engine.dispose()


def _is_busy(exc: sa.exc.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (with any extended code): the read would have had to wait."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (5, 6)


def _configure_sqlite(engine: sa.Engine, busy_timeout: float, *, autocheckpoint: bool = True) -> None:
    engine.dialect.statement_compiler = _SQLiteCompiler

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE can be issued.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:
            # Else the commit that takes the WAL past 1000 pages copies it into the database file
            # itself, fsync included: 600 creates one after another on a daemon, p99 7.3-7.7 ms
            # with it, 3.4-5.6 ms with Catalog.checkpoint in the background (p50 2.1-2.4 either way).
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("sqlite_no_begin", False):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate", False) else "BEGIN")
