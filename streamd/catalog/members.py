"""Image members: the projects a ``shared`` image is offered to, and their answers.

``membership`` is also how the listing query learns whether the caller's project was
offered the marker's image (Glance shows a shared image to its members only); showing an
image reads the caller's membership in the image's own SELECT (``base.image_read``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import DoesNotExist, Duplicate, QuotaExceeded
from . import models as m
from .base import CatalogBase
from .records import MemberRecord, utcnow
from .values import check_row


class MembersMixin(CatalogBase):
    async def list_members(self, image_id: str, *, only: str | None = None) -> list[MemberRecord]:
        stmt = sa.select(m.image_members).where(m.image_members.c.image_id == image_id)
        if only is not None:
            stmt = stmt.where(m.image_members.c.member == only)
        async with self._read() as conn:
            rows = await conn.execute(stmt.order_by(m.image_members.c.created_at, m.image_members.c.member))
            return [_member_record(r) for r in rows]

    async def get_member(self, image_id: str, member: str) -> MemberRecord:
        members = await self.list_members(image_id, only=member)
        if not members:
            raise _not_a_member(image_id, member)
        return members[0]

    async def add_member(self, image_id: str, member: str, *, quota: int = -1) -> MemberRecord:
        check_row(m.image_members, {"member": member}, "Member id")
        async with self._write() as conn:
            await self._load(conn, image_id, for_update=True)
            count = await conn.scalar(sa.select(sa.func.count()).select_from(m.image_members).where(
                m.image_members.c.image_id == image_id)) or 0
            exists = await conn.scalar(sa.select(m.image_members.c.member).where(*_the_member(image_id, member)))
            if quota >= 0 and count + 1 > quota:
                raise QuotaExceeded("The limit has been exceeded on the number of allowed image members for this "
                                    f"image. Attempted: {count + 1}, Maximum: {quota}")
            if exists is not None:
                raise Duplicate(f"Member {member} is duplicated for image {image_id}")
            now = utcnow()
            await conn.execute(m.image_members.insert().values(
                image_id=image_id, member=member, status="pending", created_at=now, updated_at=now))
            return MemberRecord(image_id, member, "pending", now, now)

    async def update_member(self, image_id: str, member: str, status: str) -> MemberRecord:
        async with self._write() as conn:
            result = await conn.execute(m.image_members.update().where(*_the_member(image_id, member))
                                        .values(status=status, updated_at=utcnow()))
            if result.rowcount == 0:
                raise _not_a_member(image_id, member)
            row = (await conn.execute(sa.select(m.image_members).where(*_the_member(image_id, member)))).first()
            assert row is not None
            return _member_record(row)

    async def delete_member(self, image_id: str, member: str) -> None:
        async with self._write() as conn:
            result = await conn.execute(m.image_members.delete().where(*_the_member(image_id, member)))
            if result.rowcount == 0:
                raise _not_a_member(image_id, member)

    async def member_status(self, image_id: str, member: str | None) -> str | None:
        if member is None:
            return None
        async with self._read() as conn:
            return await membership(conn, image_id, member)


async def membership(conn: AsyncConnection, image_id: str, member: str) -> str | None:
    """The status of ``member``'s membership of the image (pending/accepted/rejected), None if none."""
    status: str | None = await conn.scalar(sa.select(m.image_members.c.status).where(*_the_member(image_id, member)))
    return status


def _the_member(image_id: str, member: str) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    return m.image_members.c.image_id == image_id, m.image_members.c.member == member


def _member_record(row: Any) -> MemberRecord:
    return MemberRecord(row.image_id, row.member, row.status, row.created_at, row.updated_at)


def _not_a_member(image_id: str, member: str) -> DoesNotExist:
    return DoesNotExist(f"{member} is not a member of image {image_id}")
