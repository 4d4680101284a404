"""What the nodes' image caches hold, and the fast digests that let them trust a peer's copy.

Each node announces its URL and the images its cache holds (``cache_nodes``,
``node_cached_images``), so that a node missing an image can fetch it from a peer
instead of the store. ``image_data_digests`` keeps the BLAKE3 of an image's data
next to the os_hash_value it was computed for, so a peer's bytes can be checked
at BLAKE3 speed. ``image_fill_leases`` and ``image_chunk_digests`` make single flight cluster-wide:
the node holding an image's lease fills it from the backend, recording each 4 MiB chunk's BLAKE3 as it
goes, and the other nodes stream its fill, checking every chunk against those digests.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

import sqlalchemy as sa

from . import models as m
from .base import CatalogBase
from .records import utcnow


class CacheNodesMixin(CatalogBase):
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

    # -- cluster-wide single flight ------------------------------------------------------------

    async def take_fill_lease(self, image_id: str, node_id: str, url: str, ttl: float) -> bool:
        """Become the one node that fills ``image_id`` from the backend, for ``ttl`` seconds (renewed by
        ``renew_fill_lease``). An INSERT that fails on conflict decides between racing nodes (on SQLite
        and PostgreSQL alike); a lease past its expiry is a dead filler's, removed first."""
        lease = m.image_fill_leases.c
        now = utcnow()
        try:
            async with self._write() as conn:
                await conn.execute(m.image_fill_leases.delete().where(lease.image_id == image_id,
                                                                      lease.expires_at < now))
                await conn.execute(m.image_fill_leases.insert().values(
                    image_id=image_id, node_id=node_id, url=url, created_at=now,
                    expires_at=now + dt.timedelta(seconds=ttl)))
        except sa.exc.IntegrityError:
            return False  # another node holds it (or the image is gone)
        return True

    async def renew_fill_lease(self, image_id: str, node_id: str, ttl: float) -> bool:
        """Extend this node's lease; False if it is no longer this node's."""
        lease = m.image_fill_leases.c
        async with self._write() as conn:
            result = await conn.execute(m.image_fill_leases.update().where(
                lease.image_id == image_id, lease.node_id == node_id).values(
                expires_at=utcnow() + dt.timedelta(seconds=ttl)))
            return bool(result.rowcount)

    async def release_fill_lease(self, image_id: str, node_id: str) -> None:
        lease = m.image_fill_leases.c
        async with self._write() as conn:
            await conn.execute(m.image_fill_leases.delete().where(lease.image_id == image_id,
                                                                  lease.node_id == node_id))

    async def fill_lease(self, image_id: str) -> tuple[str, str] | None:
        """(node_id, url) of the node filling ``image_id`` now, if its lease has not expired."""
        lease = m.image_fill_leases.c
        async with self._read() as conn:
            row = (await conn.execute(sa.select(lease.node_id, lease.url).where(
                lease.image_id == image_id, lease.expires_at >= utcnow()))).first()
        return (row.node_id, row.url) if row is not None else None

    async def add_chunk_digests(self, image_id: str, digests: dict[int, str]) -> None:
        """Record chunks' BLAKE3 (index -> hex); ones already recorded (the same data) are kept."""
        if not digests:
            return
        d = m.image_chunk_digests.c
        async with self._write() as conn:
            known = set((await conn.scalars(sa.select(d.chunk_index).where(
                d.image_id == image_id, d.chunk_index.in_(list(digests))))).all())
            rows = [{"image_id": image_id, "chunk_index": i, "blake3": h} for i, h in digests.items()
                    if i not in known]
            if rows:
                await conn.execute(m.image_chunk_digests.insert(), rows)

    async def chunk_digests(self, image_id: str, start: int = 0) -> dict[int, str]:
        """The chunk digests recorded for ``image_id`` from index ``start`` on."""
        d = m.image_chunk_digests.c
        async with self._read() as conn:
            rows = await conn.execute(sa.select(d.chunk_index, d.blake3).where(
                d.image_id == image_id, d.chunk_index >= start))
            return {r.chunk_index: r.blake3 for r in rows}
