"""What a project holds, as the quotas count it (Glance's ``user_get_*`` queries in db/sqlalchemy/api.py).

- stored bytes: each image's size once per store holding it (a copy in two stores counts twice);
- staged bytes: the size of images whose data waits in staging (``uploading``, ``importing``) or
  that are being copied into more stores (a non-empty ``os_glance_importing_to_stores``);
- images: every image that is not deleted (nor killed / pending_delete);
- uploading: images in ``saving``, ``uploading`` or ``importing``, and images being copied.

Images that are killed, deleted or pending_delete count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import models as m
from .base import CatalogBase
from .imports import IMPORTING_TO

_GONE = ("killed", "deleted", "pending_delete")
_STAGED = ("uploading", "importing")
_UPLOADING = ("saving", "uploading", "importing")


@dataclass(frozen=True)
class ProjectUsage:
    stored_bytes: int
    staged_bytes: int
    images: int
    uploading: int


class UsageMixin(CatalogBase):
    async def project_usage(self, owner: str, *, exclude_image: str | None = None) -> ProjectUsage:
        """The four counts of ``owner``'s images; ``exclude_image`` leaves one image out of the byte
        counts (the one whose new size the caller is checking)."""
        i = m.images
        live = sa.and_(i.c.owner == owner, i.c.deleted.is_(False), i.c.status.not_in(_GONE))
        sized = sa.and_(live, i.c.size > 0)
        if exclude_image is not None:
            sized = sa.and_(sized, i.c.id != exclude_image)
        loc = m.image_locations
        copying = sa.exists().where(m.image_properties.c.image_id == i.c.id,
                                    m.image_properties.c.name == IMPORTING_TO, m.image_properties.c.value != "")
        async with self._read() as conn:
            stored = await _scalar(conn, sa.select(sa.func.coalesce(sa.func.sum(i.c.size), 0)).select_from(
                i.join(loc, loc.c.image_id == i.c.id)).where(sized, loc.c.status != "deleted"))
            staged = await _scalar(conn, sa.select(sa.func.coalesce(sa.func.sum(i.c.size), 0)).where(
                sized, sa.or_(i.c.status.in_(_STAGED), copying)))
            images = await _scalar(conn, sa.select(sa.func.count()).select_from(i).where(live))
            uploading = await _scalar(conn, sa.select(sa.func.count()).select_from(i).where(
                live, sa.or_(i.c.status.in_(_UPLOADING), copying)))
        return ProjectUsage(stored_bytes=stored, staged_bytes=staged, images=images, uploading=uploading)


async def _scalar(conn: AsyncConnection, stmt: sa.Select[tuple[int]]) -> int:
    return int(await conn.scalar(stmt) or 0)
