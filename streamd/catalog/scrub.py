"""Delayed delete: images in ``pending_delete``, the scrubber's claims on them, and restore.

An image deleted with ``delayed_delete`` on is, as in Glance, a deleted row (``deleted``
true, ``deleted_at`` set, so show, list and every other route answer as for a deleted image)
whose status is ``pending_delete`` and whose locations stay, marked ``pending_delete``,
until the scrubber has deleted their data.

Several nodes sharing the catalogue may scrub at once. A scrubber *claims* an image with
one conditional UPDATE, ``pending_delete -> scrubbing``, that exactly one node wins; the
claim's token is the ``updated_at`` it wrote. The holder removes each location row as soon
as its data is gone (so nothing is deleted twice), renews the claim while a delete takes
long, and finally moves ``scrubbing -> deleted``. A claim not renewed for ``claim_timeout``
seconds belongs to a node that died: any scrubber takes it over and deletes what is left
(data already gone is no error). A failed delete gives the claim back (``pending_delete``
again), to be retried at the next run, by whichever node gets there.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import DoesNotExist, InvalidStatusTransition
from . import models as m
from .base import CatalogBase
from .records import Location, utcnow

PENDING_DELETE = "pending_delete"
# A claimed image, its data being deleted; like pending_delete, only ever on a deleted row.
SCRUBBING = "scrubbing"


@dataclass(frozen=True, slots=True)
class ScrubClaim:
    image_id: str
    token: dt.datetime
    locations: tuple[Location, ...]


class ScrubMixin(CatalogBase):
    def _scrubbable(self, scrub_time: float, claim_timeout: float, now: dt.datetime) -> sa.ColumnElement[bool]:
        i = m.images.c
        return sa.and_(i.deleted.is_(True), sa.or_(
            sa.and_(i.status == PENDING_DELETE, i.deleted_at <= now - dt.timedelta(seconds=scrub_time)),
            sa.and_(i.status == SCRUBBING, i.updated_at <= now - dt.timedelta(seconds=claim_timeout))))

    async def scrub_candidates(self, scrub_time: float, claim_timeout: float) -> list[str]:
        """Images whose data is due for deletion (oldest delete first), and dead nodes' claims."""
        i = m.images.c
        async with self._read() as conn:
            rows = await conn.execute(sa.select(i.id).where(self._scrubbable(scrub_time, claim_timeout, utcnow()))
                                      .order_by(i.deleted_at, i.id))
            return [r.id for r in rows]

    async def claim_scrub(self, image_id: str, scrub_time: float, claim_timeout: float) -> ScrubClaim | None:
        """Take the image for scrubbing; None if it is not (or no longer) due or another node has it."""
        now = utcnow()
        async with self._write() as conn:
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, self._scrubbable(scrub_time, claim_timeout, now)
            ).values(status=SCRUBBING, updated_at=now))
            if result.rowcount != 1:
                return None
            rows = await conn.execute(sa.select(m.image_locations).where(m.image_locations.c.image_id == image_id)
                                      .order_by(m.image_locations.c.id))
            locations = tuple(Location(r.store, r.url, {}, r.status) for r in rows)
            return ScrubClaim(image_id, now, locations)

    async def _hold(self, conn: AsyncConnection, claim: ScrubClaim, **values: object) -> dt.datetime:
        now = utcnow()
        result = await conn.execute(m.images.update().where(
            m.images.c.id == claim.image_id, m.images.c.status == SCRUBBING, m.images.c.updated_at == claim.token
        ).values(updated_at=now, **values))
        if result.rowcount != 1:
            raise InvalidStatusTransition(f"Image {claim.image_id}: the scrub claim was taken over by another node")
        return now

    async def renew_scrub(self, claim: ScrubClaim) -> ScrubClaim:
        """Keep the claim alive; InvalidStatusTransition once it has been taken over."""
        async with self._write() as conn:
            token = await self._hold(conn, claim)
        return ScrubClaim(claim.image_id, token, claim.locations)

    async def location_scrubbed(self, claim: ScrubClaim, location: Location) -> ScrubClaim:
        """The data at ``location`` is gone: drop its row (and renew the claim) in one transaction."""
        async with self._write() as conn:
            token = await self._hold(conn, claim)
            await conn.execute(m.image_locations.delete().where(
                m.image_locations.c.image_id == claim.image_id, m.image_locations.c.store == location.store,
                m.image_locations.c.url == location.url))
        return ScrubClaim(claim.image_id, token, tuple(loc for loc in claim.locations if loc != location))

    async def finish_scrub(self, claim: ScrubClaim) -> None:
        """Every location's data is gone: the image is deleted for good."""
        async with self._write() as conn:
            await self._hold(conn, claim, status="deleted")
            await conn.execute(m.image_locations.delete().where(m.image_locations.c.image_id == claim.image_id))

    async def release_scrub(self, claim: ScrubClaim) -> None:
        """Give the claim back (a delete failed): pending_delete again, retried at the next run."""
        async with self._write() as conn:
            await self._hold(conn, claim, status=PENDING_DELETE)

    async def restore_image(self, image_id: str) -> None:
        """``pending_delete -> active`` with its data (glance-scrubber --restore); other statuses refused."""
        i = m.images.c
        async with self._write() as conn:
            result = await conn.execute(m.images.update().where(
                i.id == image_id, i.status == PENDING_DELETE, i.deleted.is_(True)
            ).values(status="active", deleted=False, deleted_at=None, updated_at=utcnow()))
            if result.rowcount != 1:
                status = await conn.scalar(sa.select(i.status).where(i.id == image_id))
                if status is None:
                    raise DoesNotExist(f"No image found with ID {image_id}")
                # Glance's words (image_restore).
                raise InvalidStatusTransition(f"cannot restore the image from {status} to active "
                                              "(wanted from_state=pending_delete)")
            await conn.execute(m.image_locations.update().where(
                m.image_locations.c.image_id == image_id).values(status="active"))
