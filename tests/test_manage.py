"""``streamd-manage`` (glance-manage's verbs) as a real process on real catalogues: SQLite files
and the test PostgreSQL (a database of its own per test).

The database state each verb leaves is read back through the catalogue itself; purge is run on
deleted, pending_delete and live images of several ages and on expired tasks, and must respect the
age, ``--max_rows`` per table and never touch what still has data in a store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from conftest import PYTHON, ROOT, _pg_admin, pg_url
from streamd.catalog import Catalog
from streamd.catalog import models as m
from streamd.catalog.records import utcnow

HEAD = "0008"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(the catalogue's async URL, a streamd config naming it) on a fresh, empty database."""
    if request.param == "sqlite":
        path = tmp_path / "catalog.sqlite"
        url, conf_url, drop = f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}", None
    else:
        name = "t_" + uuid.uuid4().hex[:16]
        asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
        url = conf_url = pg_url().rsplit("/", 1)[0] + "/" + name
        drop = name
    config = tmp_path / "streamd.conf"
    config.write_text(f"[DEFAULT]\ndata_dir = {tmp_path / 'data'}\n[database]\nconnection = {conf_url}\n")
    try:
        yield url, config
    finally:
        if drop:
            asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {drop} WITH (FORCE)"))


def manage(config: Path, *args: str) -> tuple[int, str, str]:
    done = subprocess.run([PYTHON, "-m", "streamd.manage", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def ok(config: Path, *args: str) -> str:
    rc, out, err = manage(config, *args)
    assert rc == 0, (args, out, err)
    return out


async def _on_catalog(url: str, work: Any) -> Any:
    catalog = await Catalog.open(url, migrate=False)
    try:
        return await work(catalog)
    finally:
        await catalog.close()


def revisions(url: str) -> tuple[str, ...]:
    return asyncio.run(_on_catalog(url, lambda c: c.schema_revisions()))  # type: ignore[no-any-return]


def test_version_upgrade_check_sync(db: tuple[str, Path]) -> None:
    url, config = db
    # A fresh database: not under migration control; check says an upgrade is pending (exit 3).
    assert "not under migration control" in ok(config, "db", "version")
    assert manage(config, "db", "check") == (
        3, "Your database is not up to date. Your next step is to run `streamd-manage db sync`.", "")
    assert manage(config, "db_check")[0] == 3  # glance-manage's legacy spelling
    # Upgrade to a named revision (positional, as glance-manage's action_args), then by --version.
    assert ok(config, "db", "upgrade", "0002") == "Upgraded database to: 0002, current revision(s): 0002"
    assert revisions(url) == ("0002",)
    assert ok(config, "db", "version") == "0002"
    assert manage(config, "db", "check")[0] == 3
    assert ok(config, "db", "upgrade", "--version", "0004") == "Upgraded database to: 0004, current revision(s): 0004"
    assert ok(config, "db_version") == "0004"
    # No version: the newest; then check is satisfied (exit 0) and sync has nothing to do.
    assert ok(config, "db", "upgrade") == f"Upgraded database, current revision(s): {HEAD}"
    assert manage(config, "db", "check") == (0, "Database is up to date. No upgrades needed.", "")
    assert ok(config, "db", "sync") == "Database is up to date. No migrations needed."
    assert revisions(url) == (HEAD,)
    # An unknown revision is an error (exit 1), the database stays where it is.
    rc, _, err = manage(config, "db", "upgrade", "9999")
    assert rc == 1 and "9999" in err, err
    assert revisions(url) == (HEAD,)


def test_sync_and_version_control_on_a_fresh_database(db: tuple[str, Path]) -> None:
    url, config = db
    assert ok(config, "db_sync") == "Database is synced successfully."
    assert revisions(url) == (HEAD,)
    # The tables are there: a catalogue opens on it without migrating and lists nothing.
    assert asyncio.run(_on_catalog(url, lambda c: c.export_metadefs())) == []
    assert ok(config, "db", "version_control", "--version", "0005") == \
        "Placed database under migration control at revision: 0005"
    assert revisions(url) == ("0005",)
    assert manage(config, "db", "check")[0] == 3
    assert ok(config, "db", "version_control", HEAD).endswith(HEAD)
    assert manage(config, "db", "check")[0] == 0


def test_usage_errors_are_glance_manages(db: tuple[str, Path]) -> None:
    _, config = db
    # glance-manage has no dashed spellings either: argparse's usage error, exit 2.
    for args in (["db-sync"], ["db-load-metadefs"], ["db", "nosuch"], ["db", "purge", "--age_in_days", "x"]):
        rc, _, err = manage(config, *args)
        assert rc == 2 and "usage:" in err, (args, err)
    ok(config, "db", "sync")
    assert manage(config, "db", "purge", "--age_in_days", "-1") == (1, "", "Must supply a non-negative value for age.")
    assert manage(config, "db", "purge", "--age_in_days", "100000") == (
        1, "", "Maximal age is count of days since epoch.")
    assert manage(config, "db", "purge_images_table", "--max_rows", "-2") == (1, "", "Minimal rows limit is -1.")
    assert manage(config, "db", "purge", "--max_rows", str(2 ** 31)) == (
        1, "", "'max_rows' value out of range, must not exceed 2147483647.")
    # In order, as words (glance-manage's action_args), checked as glance-manage checks them.
    assert manage(config, "db", "purge", "x") == (1, "", "Invalid int value for age_in_days: x")
    assert manage(config, "db", "purge", "3", "y") == (1, "", "Invalid int value for max_rows: y")
    assert manage(config, "db", "purge", "3", "-5") == (1, "", "Minimal rows limit is -1.")


def test_purge_refuses_a_database_not_up_to_date(db: tuple[str, Path]) -> None:
    _, config = db
    ok(config, "db", "upgrade", "0003")
    rc, _, err = manage(config, "db", "purge")
    assert rc == 1 and "not up to date" in err, err


# -- purge ----------------------------------------------------------------------------------------

def _days_ago(days: float) -> dt.datetime:
    return utcnow() - dt.timedelta(days=days)


async def _populate(catalog: Catalog) -> dict[str, str]:
    """Images by what they are: deleted 40, 41 and 42 days ago, deleted 5 days ago, pending_delete
    (data still in a store) since 60 days, and live; each with a data digest. Tasks expired 40 and 5
    days ago and one that never expires."""
    ids: dict[str, str] = {}
    for name in ("old40", "old41", "old42", "recent5", "pending60", "live"):
        image = await catalog.create_image({"name": name, "disk_format": "raw", "container_format": "bare",
                                            "owner": "p", "visibility": "private"}, {"k": "v"}, ["t"])
        ids[name] = image.id
        await catalog.set_data_digest(image.id, "h" * 128, "b" * 64)
    for name in ("old40", "old41", "old42", "recent5"):
        await catalog.delete_image(ids[name])
    i = m.images.c
    async with catalog.engine.begin() as conn:
        for name, days in (("old40", 40), ("old41", 41), ("old42", 42), ("recent5", 5)):
            await conn.execute(m.images.update().where(i.id == ids[name]).values(deleted_at=_days_ago(days)))
        # As delete_image(delayed=True) leaves an image with data: its location stays, pending_delete.
        await conn.execute(m.images.update().where(i.id == ids["pending60"]).values(
            status="pending_delete", deleted=True, deleted_at=_days_ago(60)))
        await conn.execute(m.image_locations.insert().values(
            image_id=ids["pending60"], store="fs", url="file:///nowhere", metadata_json="{}",
            status="pending_delete", created_at=_days_ago(61)))
        for name, expires in (("task40", _days_ago(40)), ("task5", _days_ago(5)), ("running", None)):
            ids[name] = str(uuid.uuid4())
            await conn.execute(m.tasks.insert().values(
                id=ids[name], type="api_image_import", status="success", owner="p", host="h", input_json="{}",
                message="", created_at=_days_ago(50), updated_at=_days_ago(45), expires_at=expires))
    return ids


async def _left(catalog: Catalog) -> dict[str, set[str]]:
    async with catalog.engine.connect() as conn:
        return {
            "images": set(await conn.scalars(sa.select(m.images.c.id))),
            "digests": set(await conn.scalars(sa.select(m.image_data_digests.c.image_id))),
            "locations": set(await conn.scalars(sa.select(m.image_locations.c.image_id))),
            "properties": set(await conn.scalars(sa.select(m.image_properties.c.image_id))),
            "tasks": set(await conn.scalars(sa.select(m.tasks.c.id))),
        }


def _purged_counts(out: str) -> dict[str, int]:
    counts = {}
    for line in out.splitlines():
        words = line.split()
        assert words[0] == "Deleted" and words[2:5] == ["row(s)", "from", "table"], line
        counts[words[5]] = int(words[1])
    return counts


def test_purge_respects_age_max_rows_and_data_in_stores(db: tuple[str, Path]) -> None:
    url, config = db
    ok(config, "db", "sync")
    ids = asyncio.run(_on_catalog(url, _populate))
    left = lambda: asyncio.run(_on_catalog(url, _left))  # noqa: E731
    named = lambda *names: {ids[n] for n in names}  # noqa: E731
    everything = left()
    assert everything["digests"] == named("old40", "old41", "old42", "recent5", "pending60", "live")

    # Older than 30 days, at most 2 rows per table: the two oldest deleted images' digests, the task
    # expired 40 days ago; never an images row, never the pending_delete image's rows.
    counts = _purged_counts(ok(config, "db", "purge", "--age_in_days", "30", "--max_rows", "2"))
    assert counts["image_data_digests"] == 2 and counts["tasks"] == 1, counts
    assert sum(counts.values()) == 3, counts
    now = left()
    assert now["digests"] == named("old40", "recent5", "pending60", "live")
    assert now["tasks"] == named("task5", "running")
    assert now["images"] == everything["images"]
    assert now["locations"] == named("pending60")

    # Glance's defaults (30 days, 100 rows), given as words: the third one; the 5-day-old ones stay.
    counts = _purged_counts(ok(config, "db", "purge", "30", "100"))
    assert counts["image_data_digests"] == 1 and counts["tasks"] == 0, counts
    assert left()["digests"] == named("recent5", "pending60", "live")
    # -1: every row; with age 1 the recent image's digest and task go too, pending and live stay.
    counts = _purged_counts(ok(config, "db", "purge", "--age_in_days", "1", "--max_rows", "-1"))
    assert counts["image_data_digests"] == 1 and counts["tasks"] == 1, counts
    now = left()
    assert now["digests"] == named("pending60", "live")
    assert now["tasks"] == named("running")
    assert now["properties"] == named("pending60", "live")

    # purge_images_table: the rows themselves, oldest first, at most max_rows.
    assert _purged_counts(ok(config, "db", "purge_images_table", "--age_in_days", "30", "--max_rows", "2")) == \
        {"images": 2}
    assert left()["images"] == named("old40", "recent5", "pending60", "live")
    # Its default age is 180 days: nothing that young goes.
    assert _purged_counts(ok(config, "db", "purge_images_table")) == {"images": 0}
    assert _purged_counts(ok(config, "db", "purge_images_table", "--age_in_days", "0", "--max_rows", "-1")) == \
        {"images": 2}
    now = left()
    # The pending_delete image (60 days deleted, data still in a store) keeps its row, location and digest.
    assert now["images"] == named("pending60", "live")
    assert now["locations"] == named("pending60")
    assert now["digests"] == named("pending60", "live")


# -- metadefs ---------------------------------------------------------------------------------------

NAMESPACE = {
    "namespace": "Test::Manage", "display_name": "Manage test", "description": "made by test_manage",
    "visibility": "public", "protected": False,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "mt_"}],
    "properties": {"cores": {"title": "Cores", "type": "integer", "minimum": 1}},
    "objects": [{"name": "Obj", "description": "an object", "properties": {
        "speed": {"title": "Speed", "type": "string", "enum": ["slow", "fast"]}}}],
    "tags": [{"name": "alpha"}, {"name": "beta"}],
}


def _namespaces(url: str) -> list[dict[str, Any]]:
    return asyncio.run(_on_catalog(url, lambda c: c.export_metadefs()))  # type: ignore[no-any-return]


def _tags_sorted(namespace: dict[str, Any]) -> dict[str, Any]:
    return dict(namespace, tags=sorted(namespace["tags"], key=lambda t: t["name"]))


def test_load_export_unload_roundtrip(db: tuple[str, Path], tmp_path: Path) -> None:
    url, config = db
    source = tmp_path / "defs"
    source.mkdir()
    (source / "manage.json").write_text(json.dumps(NAMESPACE))
    # On an empty database the metadefs verbs bring the schema up first, as streamd metadefs-load does.
    assert ok(config, "db", "load_metadefs", "--path", str(source)) == "loaded 1 of 1 namespaces"
    [loaded] = _namespaces(url)
    assert loaded["namespace"] == "Test::Manage"
    assert loaded["properties"] == NAMESPACE["properties"]
    assert sorted(t["name"] for t in loaded["tags"]) == ["alpha", "beta"]
    # Loading again without --merge leaves an existing namespace alone; --merge adds what is new.
    assert ok(config, "db", "load_metadefs", "--path", str(source)) == "loaded 0 of 1 namespaces"
    changed = dict(NAMESPACE, tags=[{"name": "alpha"}, {"name": "gamma"}])
    (source / "manage.json").write_text(json.dumps(changed))
    ok(config, "db", "load_metadefs", "--path", str(source), "--merge")
    assert sorted(t["name"] for t in _namespaces(url)[0]["tags"]) == ["alpha", "beta", "gamma"]
    ok(config, "db", "load_metadefs", "--path", str(source), "--merge", "--overwrite")
    assert sorted(t["name"] for t in _namespaces(url)[0]["tags"]) == ["alpha", "gamma"]

    exported = tmp_path / "out"
    assert ok(config, "db", "export_metadefs", "--path", str(exported)) == f"exported 1 namespaces to {exported}"
    [file] = list(exported.iterdir())
    assert file.name == "Managetest.json"  # glance-manage's name: the display name without punctuation
    written = json.loads(file.read_text())
    assert written == _namespaces(url)[0]

    assert ok(config, "db", "unload_metadefs") == "metadata definitions deleted"
    assert _namespaces(url) == []
    # glance-manage's legacy forms, positional: load what was exported, export it again: the same.
    assert ok(config, "db_load_metadefs", str(exported)) == "loaded 1 of 1 namespaces"
    again = tmp_path / "again"
    ok(config, "db_export_metadefs", str(again))
    # (Tags come back in the other order at each round: they are listed newest first.)
    assert _tags_sorted(json.loads((again / "Managetest.json").read_text())) == _tags_sorted(written)
    ok(config, "db_unload_metadefs")
    assert _namespaces(url) == []
    # Without a path: Glance's published definitions, shipped with streamd.
    assert ok(config, "db", "load_metadefs") == "loaded 32 of 32 namespaces"
    rc, _, err = manage(config, "db", "export_metadefs")
    assert rc == 1 and "--path" in err, err
