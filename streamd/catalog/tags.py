"""Adding and removing one tag of an image (``PUT``/``DELETE /v2/images/{id}/tags/{tag}``).

Replacing the whole tag list is part of an image update (``ImagesMixin.update_image``).
"""

from __future__ import annotations

from ..errors import DoesNotExist, QuotaExceeded
from . import models as m
from .base import CatalogBase
from .records import utcnow
from .values import check_tags


class TagsMixin(CatalogBase):
    async def add_tag(self, image_id: str, tag: str, *, quota: int = -1) -> None:
        check_tags([tag])
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            now = utcnow()
            if tag not in image.tags:
                if quota >= 0 and len(image.tags) + 1 > quota:
                    raise QuotaExceeded("The limit has been exceeded on the number of allowed image tags. "
                                    f"Attempted: {len(image.tags) + 1}, Maximum: {quota}")
                await conn.execute(m.image_tags.insert().values(image_id=image_id, value=tag, created_at=now))
            # Glance saves the image even when the tag was already there: updated_at moves.
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(updated_at=now))

    async def delete_tag(self, image_id: str, tag: str) -> None:
        async with self._write() as conn:
            await self._load(conn, image_id, for_update=True)
            result = await conn.execute(m.image_tags.delete().where(
                m.image_tags.c.image_id == image_id, m.image_tags.c.value == tag))
            if result.rowcount == 0:
                raise DoesNotExist("The resource could not be found.")  # Glance answers webob's default
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(updated_at=utcnow()))
