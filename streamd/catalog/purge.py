"""Purging what the catalogue keeps of deleted things (``streamd-manage db purge`` and
``db purge_images_table``, glance-manage's verbs).

streamd deletes an image as Glance does, softly: the ``images`` row stays (``deleted`` true,
``deleted_at`` set) so that its id is never given out again, while its properties, tags, members
and upload rows go at once (``images.py``), and its locations go at once too unless the delete was
delayed (then they stay, ``pending_delete``, for the scrubber). What may remain of a deleted image
beside its row is its data digest (``image_data_digests``), kept for peers; of a finished import,
its task row after it expired (Glance soft-deletes a task when it expires).

Only images whose status is ``deleted`` count: a ``pending_delete`` or ``scrubbing`` image still
has data in a store, and its rows are what the scrubber needs to delete that data; they are never
purged, whatever their age.

- ``purge_deleted``: the rows that hang off deleted images (child tables first), and tasks that
  expired more than the given age ago, at most ``max_rows`` per table. Never ``images`` rows
  (Glance 33, for OSSN-0075: an id purged from ``images`` could be reused).
- ``purge_images_table``: the ``images`` rows themselves, with whatever still hangs off them.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import models as m
from .base import CatalogBase
from .records import utcnow

# Every table with an image_id that belongs to one image, children of ``images``.
_IMAGE_CHILDREN = (m.image_properties, m.image_tags, m.image_members, m.image_locations, m.image_uploads,
                   m.image_data_digests, m.image_fill_leases, m.image_chunk_digests)


_CHUNK = 500


class PurgeMixin(CatalogBase):
    async def purge_deleted(self, age_in_days: int, max_rows: int) -> dict[str, int]:
        """Rows deleted more than ``age_in_days`` ago, at most ``max_rows`` per table (-1: all):
        how many went from each table, in the order they were purged."""
        cutoff = utcnow() - dt.timedelta(days=age_in_days)
        purged: dict[str, int] = {}
        async with self._write() as conn:
            for table in _IMAGE_CHILDREN:
                purged[table.name] = await _purge_children(conn, table, cutoff, max_rows)
            t = m.tasks.c
            expired = sa.select(t.id).where(t.expires_at.is_not(None), t.expires_at < cutoff) \
                .order_by(t.expires_at, t.id)
            if max_rows != -1:
                expired = expired.limit(max_rows)
            ids = list(await conn.scalars(expired))
            for start in range(0, len(ids), _CHUNK):
                await conn.execute(m.tasks.delete().where(t.id.in_(ids[start:start + _CHUNK])))
            purged[m.tasks.name] = len(ids)
        return purged

    async def purge_images_table(self, age_in_days: int, max_rows: int) -> int:
        """The rows of images deleted more than ``age_in_days`` ago (at most ``max_rows``, -1: all),
        with any rows still hanging off them: how many images went."""
        cutoff = utcnow() - dt.timedelta(days=age_in_days)
        async with self._write() as conn:
            ids = list(await conn.scalars(_purgeable_images(cutoff, max_rows)))
            if not ids:
                return 0
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                for table in _IMAGE_CHILDREN:
                    await conn.execute(table.delete().where(table.c.image_id.in_(chunk)))
                await conn.execute(m.images.delete().where(m.images.c.id.in_(chunk)))
            return len(ids)


def _purgeable_images(cutoff: dt.datetime, limit: int) -> sa.Select[tuple[str]]:
    """Ids of images deleted (status deleted: no data left in any store) before ``cutoff``, oldest
    first; never a pending_delete or scrubbing one."""
    i = m.images.c
    stmt = sa.select(i.id).where(i.deleted.is_(True), i.status == "deleted", i.deleted_at < cutoff) \
        .order_by(i.deleted_at, i.id)
    return stmt if limit == -1 else stmt.limit(limit)


async def _purge_children(conn: AsyncConnection, table: sa.Table, cutoff: dt.datetime, max_rows: int) -> int:
    """At most ``max_rows`` rows of ``table`` that belong to images purgeable at ``cutoff``."""
    i = m.images.c
    owners = sa.select(i.id).where(i.deleted.is_(True), i.status == "deleted", i.deleted_at < cutoff)
    if max_rows == -1:
        result = await conn.execute(table.delete().where(table.c.image_id.in_(owners)))
        return int(result.rowcount)
    # One statement on both back-ends: the primary keys of the oldest such rows, then those rows.
    key = list(table.primary_key.columns)
    picked = sa.select(*key).join(m.images, m.images.c.id == table.c.image_id) \
        .where(table.c.image_id.in_(owners)).order_by(i.deleted_at, *key).limit(max_rows)
    rows = (await conn.execute(picked)).all()
    if not rows:
        return 0
    deleted = 0
    for start in range(0, len(rows), _CHUNK):  # bound the bound parameters of one statement
        chunk = [tuple(row) for row in rows[start:start + _CHUNK]]
        result = await conn.execute(table.delete().where(sa.tuple_(*key).in_(chunk)))
        deleted += int(result.rowcount)
    return deleted
