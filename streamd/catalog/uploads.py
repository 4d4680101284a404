"""Image data coming in: the status moves of an upload (or a stage) and who is doing it.

An upload claims the image (``queued -> saving``) and records its node in
``image_uploads``; finishing records the data's size, digests and location and
makes the image ``active``; a failure puts it back to ``queued``. A node that
restarts queues again every image it was uploading when it died.
A stage (``uploading``) only records the size and which node holds the data,
for the import that follows (``imports.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa

from ..errors import InvalidRequest, InvalidStatusTransition
from . import models as m
from .base import CatalogBase, insert_location, write_properties
from .imports import STAGE_HOST
from .records import ImageRecord, utcnow
from .status import NEEDS_FORMATS, check_transition


class UploadsMixin(CatalogBase):
    async def begin_upload(self, image_id: str, host: str, from_status: str = "queued",
                           to_status: str = "saving") -> ImageRecord:
        """CAS ``queued -> saving`` and record which node uploads, in one transaction."""
        check_transition(image_id, from_status, to_status)
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if image.status != from_status:
                # Glance's words (its domain's status check).
                raise InvalidStatusTransition(
                    f"Image status transition from {image.status} to {to_status} is not allowed")
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
            await self._swap_status(
                conn, image_id, from_status,
                dict(status="active", size=size, virtual_size=virtual_size, checksum=checksum,
                     os_hash_algo=os_hash_algo, os_hash_value=os_hash_value, updated_at=now),
                gone=f"Image {image_id} was deleted during the upload",
                moved_on=lambda current: f"Image {image_id} is {current}, not {from_status}")
            await insert_location(conn, image_id, store, url, metadata or {}, now)
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            return await self._load(conn, image_id)

    async def finish_stage(self, image_id: str, *, size: int, host: str) -> ImageRecord:
        """The staged data is whole: the image stays ``uploading`` (awaiting import) with its size."""
        async with self._write() as conn:
            await self._swap_status(
                conn, image_id, "uploading", dict(size=size, updated_at=utcnow()),
                gone=f"Image {image_id} was deleted during staging",
                moved_on=lambda current: f"Image {image_id} is {current}, not uploading")
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            image = await self._load(conn, image_id)
            props = dict(image.properties, **{STAGE_HOST: host})
            await write_properties(conn, image_id, image.properties, props)
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
