"""The catalogue itself: migrations, WAL, compare-and-swap races, concurrent writers."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import MEMBER_A, both_databases, start_daemon, stop_daemon
from streamd.status import status_of
from streamd.catalog import Catalog
from streamd.catalog import models as m
from streamd.errors import InvalidRequest, InvalidStatusTransition, DoesNotExist


@both_databases
async def test_status_race_has_exactly_one_winner(database_url: str) -> None:
    catalog = await Catalog.open(database_url)
    try:
        image = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, [])
        for _ in range(5):
            results = await asyncio.gather(
                *(catalog.transition(image.id, "queued", "saving") for _ in range(8)), return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, InvalidStatusTransition)]
            assert len(winners) == 1 and len(losers) == 7, results
            assert status_of(losers[0]) == 409
            await catalog.transition(image.id, "saving", "queued")
        # Conflicting targets from the same state: still one winner.
        results = await asyncio.gather(catalog.transition(image.id, "queued", "saving"),
                                       catalog.transition(image.id, "queued", "uploading"), return_exceptions=True)
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert (await catalog.get_image(image.id)).status in ("saving", "uploading")
    finally:
        await catalog.close()


async def test_a_show_neither_waits_for_a_write_in_progress_nor_misses_its_commit(database_url: str) -> None:
    # On a SQLite file an image is read by SQLiteReader's connections (on the loop, or on its
    # threads), outside the writers': a read must take its own snapshot (no BEGIN IMMEDIATE of
    # its own, no open transaction kept from an earlier read).
    threads_before = set(threading.enumerate())
    catalog = await Catalog.open(database_url)
    try:
        image = await catalog.create_image({"name": "before", "disk_format": "raw", "container_format": "bare"},
                                           {}, [])
        assert (await catalog.get_image(image.id)).name == "before"
        written, release = asyncio.Event(), asyncio.Event()

        async def write() -> None:
            async with catalog._write() as conn:
                await conn.execute(sa.update(m.images).where(m.images.c.id == image.id).values(name="after"))
                written.set()
                await release.wait()

        writer = asyncio.create_task(write())
        await written.wait()
        # Well inside the 30 s busy timeout a read that waited for the writer would take.
        assert (await asyncio.wait_for(catalog.get_image(image.id), 5)).name == "before"
        release.set()
        await writer
        assert (await catalog.get_image(image.id)).name == "after"
    finally:
        await catalog.close()
    assert not any(t.is_alive() for t in set(threading.enumerate()) - threads_before
                   if t.name.startswith("catalogue-read"))  # close ends them


async def test_a_show_that_has_to_wait_for_a_lock_waits_off_the_event_loop(tmp_path: Path) -> None:
    """A show's read is done on the loop's thread only when the file can be read at once: while
    another process holds the file exclusively, it waits (busy_timeout) on a reader thread, the
    loop serving on, and returns what that process wrote once it lets go."""
    path = tmp_path / "catalog.sqlite"
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{path}")
    image = await catalog.create_image({"name": "before", "disk_format": "raw", "container_format": "bare"}, {}, [])
    await catalog.close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # WAL without shared memory: nobody else may read
    holder.execute("UPDATE images SET name = 'held' WHERE id = ?", (image.id,))
    threads_before = set(threading.enumerate())
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{path}", migrate=False)
    try:
        show = asyncio.create_task(catalog.get_image(image.id))
        started = time.monotonic()
        for _ in range(30):  # 0.3 s in which the loop must keep running
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2 and not show.done()
        readers = [t for t in set(threading.enumerate()) - threads_before if t.name.startswith("catalogue-read")]
        assert readers
        holder.close()
        assert (await asyncio.wait_for(show, 10)).name == "held"
    finally:
        holder.close()
        await catalog.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_pooled_connections_the_server_ended_are_not_used(database_url: str) -> None:
    """PostgreSQL ends every connection (as a restart or an idle timeout would): the next reads and
    writes get new ones, not an error (the pool drops closed ones at checkout, by asyncpg's own view)."""
    import asyncpg

    catalog = await Catalog.open(database_url)
    try:
        images = await asyncio.gather(*(catalog.create_image({"disk_format": "raw", "container_format": "bare"},
                                                             {"k": "v"}, ["t"]) for _ in range(4)))
        admin = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            ended = await admin.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        assert ended >= 1
        await asyncio.sleep(0.2)  # the ends of the streams reach the pooled connections
        shown = await asyncio.gather(*(catalog.get_image(image.id) for image in images))
        assert [image.properties for image in shown] == [{"k": "v"}] * 4
        again = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, ["u"])
        assert (await catalog.get_image(again.id)).tags == ("u",)
    finally:
        await catalog.close()


@both_databases
async def test_values_no_column_can_hold_are_refused_before_anything_is_written(database_url: str) -> None:
    """The floor under the HTTP edge: INTEGER is 32-bit on PostgreSQL, text must be UTF-8 without NUL."""
    catalog = await Catalog.open(database_url)
    try:
        image = await catalog.create_image({"name": "kept", "min_ram": 2**31 - 1}, {"p": "v"}, ["t"])
        refusals = [
            catalog.create_image({"min_ram": 2**31}, {}, []),
            catalog.create_image({"min_disk": -(2**31) - 1}, {}, []),
            catalog.create_image({"name": "a\x00b"}, {}, []),
            catalog.create_image({"name": "ok"}, {"p": "\ud800"}, []),
            catalog.create_image({"name": "ok"}, {"\udcff": "v"}, []),
            catalog.create_image({"name": "ok"}, {}, ["fine", "\x00"]),
            catalog.update_image(image.id, changes={"min_ram": 2**63}),
            catalog.update_image(image.id, changes={"name": "new"}, set_properties={"p": "\udfff"}),
            catalog.update_image(image.id, changes={"name": "new"}, tags=["a", "\ud800"]),
            catalog.add_tag(image.id, "\ud800"),
            catalog.add_member(image.id, "m\x00"),
        ]
        for refusal in refusals:
            with pytest.raises(InvalidRequest):
                await refusal
        after = await catalog.get_image(image.id)
        assert after == image
        assert await catalog.list_members(image.id) == []
        async with catalog.engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT count(*) FROM images")) == 1
    finally:
        await catalog.close()

@both_databases
async def test_transition_rules(database_url: str) -> None:
    catalog = await Catalog.open(database_url)
    try:
        bare = await catalog.create_image({}, {}, [])
        with pytest.raises(Exception, match="disk_format, container_format"):
            await catalog.transition(bare.id, "queued", "saving")
        image = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, [])
        with pytest.raises(InvalidStatusTransition):
            await catalog.transition(image.id, "queued", "deactivated")  # not an allowed move
        with pytest.raises(InvalidStatusTransition):
            await catalog.transition(image.id, "active", "deactivated")  # image is not active
        await catalog.delete_image(image.id)
        with pytest.raises(DoesNotExist):
            await catalog.transition(image.id, "queued", "saving")
    finally:
        await catalog.close()


async def test_sqlite_is_in_wal_mode_and_migrated(tmp_path: Path) -> None:
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    try:
        async with catalog.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar() == "0008"
    finally:
        await catalog.close()
    # Opening again runs no migration twice and keeps the data.
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    await catalog.close()


async def test_background_checkpoints_keep_the_wal_short_under_a_steady_write_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``background_checkpoints`` (the daemon) no commit checkpoints the WAL; ``checkpoint``
    does, and though writers keep writing through it, the write after it starts the WAL over
    (a WAL only restarts when a writer begins right after a complete checkpoint: a plain PASSIVE
    checkpoint beside busy writers leaves it to grow for as long as they write)."""
    import sqlite3

    from streamd.catalog import base as catalog_base

    path = tmp_path / "c.sqlite"
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{path}", background_checkpoints=True)
    try:
        async with catalog.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
        writing = True
        created = 0

        async def writer() -> None:
            nonlocal created
            while writing:
                await catalog.create_image({"name": f"i{created}", "disk_format": "raw", "container_format": "bare"},
                                           {f"p{k}": "v" * 200 for k in range(5)}, ["t", f"u{created}"])
                created += 1

        async def wal_frames() -> int:
            def frames() -> int:
                with sqlite3.connect(path) as db:  # a checkpoint too: it reports what the WAL holds
                    return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
            return await asyncio.to_thread(frames)

        writers = [asyncio.create_task(writer()) for _ in range(3)]
        try:
            for _ in range(3):
                start = created
                while created < start + 60:  # a WAL of some thousand frames, never copied by a commit
                    await asyncio.sleep(0.01)
                held = await catalog.checkpoint()
                after = created
                while created < after + 2:
                    await asyncio.sleep(0.001)
                # The WAL was started over: it holds what came after the checkpoint, not all before it.
                now = await wal_frames()
                assert held > 600 and now < held / 2, (held, now)
        finally:
            writing = False
            await asyncio.gather(*writers)
        # A WAL too long to wait for a writer's restart (other processes writing all the time) is
        # checkpointed with RESTART: here, with the bar at nothing, the next write starts it over.
        monkeypatch.setattr(catalog_base, "WAL_RESTART_FRAMES", 0)
        await catalog.create_image({"name": "one more", "disk_format": "raw", "container_format": "bare"}, {}, [])
        assert await catalog.checkpoint() > 0
        await catalog.create_image({"name": "and one", "disk_format": "raw", "container_format": "bare"}, {}, [])
        assert 0 < await wal_frames() < 100
    finally:
        await catalog.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == created + 2
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_many_concurrent_writers_in_one_process_never_fail(tmp_path: Path) -> None:
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    try:
        async def writer(n: int) -> None:
            image = await catalog.create_image({"name": f"i{n}", "disk_format": "raw", "container_format": "bare"},
                                               {"n": str(n)}, ["t"])
            await catalog.update_image(image.id, changes={"name": f"renamed{n}"}, set_properties={"m": "1"})
            await catalog.add_tag(image.id, "x")
            await catalog.transition(image.id, "queued", "saving")

        await asyncio.gather(*(writer(n) for n in range(120)))
        async with catalog.engine.connect() as conn:
            count = await conn.scalar(sa.text("SELECT count(*) FROM images WHERE status = 'saving'"))
        assert count == 120
    finally:
        await catalog.close()


def test_two_daemons_share_one_sqlite_file_without_lock_errors(tmp_path: Path) -> None:
    """Two processes writing one SQLite catalogue at once: BEGIN IMMEDIATE + busy_timeout, never 'locked'."""
    import concurrent.futures
    import json
    import urllib.request

    shared = tmp_path / "shared.sqlite"
    extra = f"[database]\nconnection = sqlite:///{shared}\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_daemon(tmp_path / "a", extra)
    second = start_daemon(tmp_path / "b", extra)
    try:
        def create(url: str, n: int) -> int:
            request = urllib.request.Request(
                url + "/v2/images", method="POST", headers={**MEMBER_A, "Content-Type": "application/json"},
                data=json.dumps({"name": f"n{n}", "tags": ["a", "b"], "p": str(n)}).encode())
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda n: create((first.url, second.url)[n % 2], n), range(80)))
        assert statuses == [201] * 80
        request = urllib.request.Request(first.url + "/v2/images?limit=1000", headers=MEMBER_A)
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.load(response)["images"]) == 80
        assert "locked" not in first.log() + second.log()
    finally:
        stop_daemon(first)
        stop_daemon(second)
