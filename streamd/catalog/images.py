"""The image rows themselves: create, read, change, move between statuses, delete.

Also the changes to an image's locations that are not part of writing data (dropping the
copy in one store; a client's location edits, saved with the rest of its patch); uploads
and imports add locations.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from ..context import RequestContext
from ..errors import DoesNotExist, Duplicate, InvalidRequest, InvalidStatusTransition, NotPermitted, QuotaExceeded
from . import models as m
from .base import CatalogBase, insert_location, write_properties, write_tags
from .records import CORE_ATTRIBUTES, ImageRecord, Location, utcnow
from .status import NEEDS_FORMATS, check_transition
from .values import check_properties, check_row, check_tags


def _create_in_one_statement() -> sa.Insert:
    """PostgreSQL: the image row, its properties and its tags in ONE statement, the child rows
    from arrays (``unnest``), so its shape (and its cached compilation) is the same whatever the
    image carries. The foreign keys are checked at the statement's end, when the row is there."""
    new_image = m.images.insert().values({c.name: sa.bindparam(c.name, type_=c.type) for c in m.images.c}) \
        .returning(m.images.c.id).cte("new_image")
    given = sa.func.unnest(sa.bindparam("property_names", type_=pg.ARRAY(sa.Text)),
                           sa.bindparam("property_values", type_=pg.ARRAY(sa.Text))) \
        .table_valued("name", "value").render_derived(name="given")
    new_properties = m.image_properties.insert().from_select(
        ["image_id", "name", "value"],
        sa.select(new_image.c.id, given.c.name, given.c.value).select_from(new_image).join(given, sa.true())) \
        .cte("new_properties")
    tags = sa.func.unnest(sa.bindparam("tags", type_=pg.ARRAY(sa.Text))).table_valued("value") \
        .render_derived(name="given_tags")
    return m.image_tags.insert().from_select(
        ["image_id", "value", "created_at"],
        sa.select(new_image.c.id, tags.c.value, sa.bindparam("tagged_at", type_=sa.DateTime))
        .select_from(new_image).join(tags, sa.true())).add_cte(new_properties)


_CREATE_IN_ONE_STATEMENT = _create_in_one_statement()


class ImagesMixin(CatalogBase):
    async def create_image(self, values: Mapping[str, Any], properties: Mapping[str, str],
                           tags: Iterable[str]) -> ImageRecord:
        now = utcnow()
        row = {
            "id": values.get("id") or str(uuid.uuid4()),
            "name": values.get("name"),
            "status": "queued",
            "visibility": values.get("visibility") or "shared",
            "protected": bool(values.get("protected", False)),
            "os_hidden": bool(values.get("os_hidden", False)),
            "disk_format": values.get("disk_format"),
            "container_format": values.get("container_format"),
            "size": None, "virtual_size": None, "checksum": None,
            "os_hash_algo": None, "os_hash_value": None,
            "min_disk": int(values.get("min_disk") or 0),
            "min_ram": int(values.get("min_ram") or 0),
            "owner": values.get("owner"),
            "created_at": now, "updated_at": now, "deleted": False, "deleted_at": None,
        }
        tag_list = list(dict.fromkeys(tags))
        check_row(m.images, row)
        check_properties(properties)
        check_tags(tag_list)
        tag_list_sorted = sorted(tag_list)  # one created_at: read back by value (``image_read``)
        if not self.is_sqlite:
            # One statement, committed by itself: one round trip where BEGIN, three INSERTs and
            # COMMIT took five.
            params = {**row, "property_names": list(properties), "property_values": list(properties.values()),
                      "tags": tag_list, "tagged_at": now}
            try:
                async with self._write(one_statement=True) as conn:
                    await conn.execute(_CREATE_IN_ONE_STATEMENT, params)
            except sa.exc.IntegrityError:
                raise Duplicate(f"Image ID {row['id']} already exists!") from None
            return ImageRecord(**{k: row[k] for k in CORE_ATTRIBUTES}, properties=dict(properties),
                               tags=tuple(tag_list_sorted))
        async with self._write() as conn:
            # The id's uniqueness is the primary key's (a deleted image's row keeps its id too).
            try:
                await conn.execute(m.images.insert().values(**row))
            except sa.exc.IntegrityError:
                raise Duplicate(f"Image ID {row['id']} already exists!") from None  # Glance's words
            if properties:
                await conn.execute(m.image_properties.insert(), [
                    {"image_id": row["id"], "name": k, "value": v} for k, v in properties.items()])
            if tag_list:
                await conn.execute(m.image_tags.insert(), [
                    {"image_id": row["id"], "value": t, "created_at": now} for t in tag_list])
        # What was written is what a read would give back: no read.
        return ImageRecord(**{k: row[k] for k in CORE_ATTRIBUTES}, properties=dict(properties),
                           tags=tuple(tag_list_sorted))

    async def get_image(self, image_id: str, ctx: RequestContext | None = None) -> ImageRecord:
        """The image, if it exists and ``ctx`` (when given) may see it; else DoesNotExist.

        One statement: the caller's membership is read with the image when it may matter."""
        member = None
        if ctx is not None and not ctx.is_admin and ctx.project_id is not None:
            member = ctx.project_id
        image, membership_status = await self._read_image(image_id, member)
        if ctx is not None and not _visible(ctx, image, membership_status):
            raise DoesNotExist(f"No image found with ID {image_id}")
        return image

    async def update_image(self, image_id: str, *, changes: Mapping[str, Any] | None = None,
                           set_properties: Mapping[str, str] | None = None,
                           remove_properties: Iterable[str] = (),
                           tags: Iterable[str] | None = None, tag_quota: int = -1,
                           expected_status: str | None = None,
                           locations: Sequence[Location] | None = None,
                           expected_locations: Sequence[Location] | None = None) -> ImageRecord:
        """Apply a whole set of changes in one transaction (Glance's single ``save``).

        ``locations`` replaces the image's active locations, in that order, provided they are
        still ``expected_locations`` (as a set: InvalidStatusTransition if another request
        changed them meanwhile)."""
        changes = dict(changes or {})
        check_row(m.images, changes)
        check_properties(set_properties or {})
        if tags is not None:
            tags = list(tags)
            check_tags(tags)
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if expected_status is not None and image.status != expected_status:
                raise InvalidStatusTransition(f"Image {image_id} is {image.status}, not {expected_status}")
            if "status" in changes and changes["status"] != image.status:
                check_transition(image_id, image.status, changes["status"])
            new_props = dict(image.properties)
            for key in remove_properties:
                new_props.pop(key, None)
            new_props.update(set_properties or {})
            now = utcnow()
            changes["updated_at"] = now
            stmt = m.images.update().where(m.images.c.id == image_id).values(**changes)
            if "status" in changes:
                stmt = stmt.where(m.images.c.status == image.status)
            result = await conn.execute(stmt)
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed while it was being updated")
            await write_properties(conn, image_id, image.properties, new_props)
            if locations is not None:
                current = [loc for loc in image.locations if loc.status == "active"]
                if expected_locations is not None and _location_keys(current) != _location_keys(expected_locations):
                    raise InvalidStatusTransition(f"The locations of image {image_id} changed while it was being updated")
                await conn.execute(m.image_locations.delete().where(
                    m.image_locations.c.image_id == image_id, m.image_locations.c.status == "active"))
                for loc in locations:
                    await insert_location(conn, image_id, loc.store, loc.url, loc.metadata, now)
            new_tags = image.tags
            if tags is not None:
                wanted = list(dict.fromkeys(tags))
                if tag_quota >= 0 and len(wanted) > tag_quota and len(wanted) > len(image.tags):
                    raise QuotaExceeded("The limit has been exceeded on the number of allowed image tags. "
                                    f"Attempted: {len(wanted)}, Maximum: {tag_quota}")
                await write_tags(conn, image_id, image.tags, wanted, now)
                # As read back (by created_at, then value): the tags kept, then the new ones.
                kept, had = set(wanted), set(image.tags)
                new_tags = tuple([t for t in image.tags if t in kept] + sorted(t for t in wanted if t not in had))
            new_locations = image.locations
            if locations is not None:
                # The rows left (not active) keep their ids; the new ones come after them.
                new_locations = tuple([loc for loc in image.locations if loc.status != "active"] + [
                    Location(loc.store, loc.url, json.loads(json.dumps(dict(loc.metadata))), "active")
                    for loc in locations])
        # The row as written, without reading it back.
        return dataclasses.replace(image, **_as_stored(changes), properties=new_props, tags=new_tags,
                                   locations=new_locations)

    async def transition(self, image_id: str, from_status: str, to_status: str,
                         values: Mapping[str, Any] | None = None) -> ImageRecord:
        """Compare-and-swap the status: of two racing callers exactly one wins, the other gets 409."""
        check_transition(image_id, from_status, to_status)
        async with self._write() as conn:
            if to_status in NEEDS_FORMATS:
                image = await self._load(conn, image_id)
                if not (image.disk_format and image.container_format):
                    raise InvalidRequest("Properties disk_format, container_format must be set prior to saving data.")
            await self._swap_status(
                conn, image_id, from_status, dict(status=to_status, updated_at=utcnow(), **dict(values or {})),
                gone=f"No image found with ID {image_id}",
                moved_on=lambda current: (f"Image {image_id} is {current}; "
                                          f"it cannot move from {from_status} to {to_status}"))
            return await self._load(conn, image_id)

    async def delete_image(self, image_id: str, *, delayed: bool = False) -> ImageRecord:
        """Soft-delete: the row stays (status deleted) so ids are never reused.

        ``delayed`` (delayed_delete): an image with data becomes ``pending_delete`` instead, a
        deleted row whose locations stay (marked pending_delete) for the scrubber
        (``scrub.py``); as in Glance, its properties, tags and members go now. The record
        returned is the image as it was; the caller deletes its locations' data unless the
        delete was delayed (its status is then ``pending_delete``)."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            if image.protected:
                raise NotPermitted(f"Image {image_id} is protected and cannot be deleted.")
            target = "pending_delete" if delayed and image.locations else "deleted"
            if target == "pending_delete" and image.status != "active":
                # Glance's domain model allows only active -> pending_delete; its API answers 400.
                raise InvalidRequest(f"Image status transition from {image.status} to pending_delete "
                                     "is not allowed")
            now = utcnow()
            result = await conn.execute(m.images.update().where(
                m.images.c.id == image_id, m.images.c.deleted.is_(False), m.images.c.status == image.status
            ).values(status=target, deleted=True, deleted_at=now, updated_at=now))
            if result.rowcount != 1:
                raise InvalidStatusTransition(f"Image {image_id} changed while it was being deleted")
            await conn.execute(m.image_properties.delete().where(m.image_properties.c.image_id == image_id))
            await conn.execute(m.image_tags.delete().where(m.image_tags.c.image_id == image_id))
            await conn.execute(m.image_members.delete().where(m.image_members.c.image_id == image_id))
            if target == "pending_delete":
                await conn.execute(m.image_locations.update().where(
                    m.image_locations.c.image_id == image_id).values(status="pending_delete"))
            else:
                await conn.execute(m.image_locations.delete().where(m.image_locations.c.image_id == image_id))
            await conn.execute(m.image_uploads.delete().where(m.image_uploads.c.image_id == image_id))
            return dataclasses.replace(image, status=target) if target == "pending_delete" else image

    async def remove_location(self, image_id: str, store: str) -> Location:
        """Drop the image's location in ``store``; with the last one go its size and digests (Glance)."""
        async with self._write() as conn:
            image = await self._load(conn, image_id, for_update=True)
            found = [loc for loc in image.locations if loc.store == store]
            if not found:
                raise DoesNotExist(f"Image {image_id} has no data in store {store}")
            await conn.execute(m.image_locations.delete().where(
                m.image_locations.c.image_id == image_id, m.image_locations.c.store == store))
            values: dict[str, Any] = {"updated_at": utcnow()}
            if len(image.locations) == len(found):
                values.update(size=None, virtual_size=None, checksum=None, os_hash_algo=None, os_hash_value=None)
            await conn.execute(m.images.update().where(m.images.c.id == image_id).values(**values))
            return found[0]


def _as_stored(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The image attributes among ``changes`` as the catalogue reads them back (an integral float
    in an integer column is an int; booleans are bools)."""
    shown = {}
    for name, value in changes.items():
        if name not in CORE_ATTRIBUTES:
            continue
        kind = m.images.c[name].type
        if value is not None and isinstance(kind, sa.Boolean):
            value = bool(value)
        elif value is not None and isinstance(kind, sa.Integer) and not isinstance(value, bool):
            value = int(value)
        shown[name] = value
    return shown


def _visible(ctx: RequestContext, image: ImageRecord, membership_status: str | None) -> bool:
    """Glance's database-layer visibility (``is_image_visible``): what the caller can find at all,
    ``membership_status`` being the caller's membership of the image (None: none).
    The policy (get_image and the rest) is checked by the API on what is found."""
    if ctx.is_admin or image.owner is None or image.visibility in ("public", "community"):
        return True
    if ctx.project_id is None:
        return False
    if ctx.owns(image.owner):
        return True
    return image.visibility == "shared" and membership_status is not None


def _location_keys(locations: Iterable[Location]) -> list[tuple[str, str, str]]:
    return sorted((loc.store, loc.url, json.dumps(loc.metadata, sort_keys=True)) for loc in locations)
