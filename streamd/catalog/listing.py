"""Listing images: one page of ``GET /v2/images`` as SQL.

``query.py`` turns the query string into an ``ImageQuery`` by Glance's rules;
this module turns that into one SELECT (filters, visibility, keyset paging after
the marker, sort) and hydrates the page's rows.
"""

from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from ..context import RequestContext
from ..errors import InvalidRequest, NotPermitted
from . import models as m
from .base import CatalogBase
from .members import membership
from .query import ImageQuery
from .records import ImageRecord

# Sort keys that may be NULL are ordered through a non-NULL stand-in, so that
# SQLite and PostgreSQL (which order NULLs differently) page identically.
_SORT_EXPR = {
    # '' as a literal, not a parameter: the expression must be the name indexes' own (0008).
    "name": sa.func.coalesce(m.images.c.name, sa.literal_column("''")),
    "status": m.images.c.status,
    "container_format": sa.func.coalesce(m.images.c.container_format, ""),
    "disk_format": sa.func.coalesce(m.images.c.disk_format, ""),
    "size": sa.func.coalesce(m.images.c.size, -1),
    "id": m.images.c.id,
    "created_at": m.images.c.created_at,
    "updated_at": m.images.c.updated_at,
}
_NULL_STANDIN = {"name": "", "container_format": "", "disk_format": "", "size": -1}

# The indexes that hold the images in a list order: their keys, each ascending or descending.
# A sort that is one of these orders (or its exact reverse), tiebreakers included, reads a page
# in index order from the marker on and stops at the limit.
_ORDER_INDEXES = {
    "ix_images_created_at_id": (("created_at", "asc"), ("id", "asc")),
    "ix_images_name_created_at_id": (("name", "asc"), ("created_at", "asc"), ("id", "asc")),
    "ix_images_name_created_at_id_desc": (("name", "asc"), ("created_at", "desc"), ("id", "desc")),
}
_FLIP = {"asc": "desc", "desc": "asc"}


def order_index(sort: list[tuple[str, str]]) -> str | None:
    """The index whose order is ``sort`` (forwards or backwards), if one is."""
    for name, keys in _ORDER_INDEXES.items():
        if tuple(sort) == keys or tuple(sort) == tuple((k, _FLIP[d]) for k, d in keys):
            return name
    return None


class ListingMixin(CatalogBase):
    async def list_images(self, ctx: RequestContext, query: ImageQuery) -> tuple[list[ImageRecord], bool]:
        """One page of images ``ctx`` may see, and whether the page was full (Glance's ``next``)."""
        i = m.images.c
        conds: list[sa.ColumnElement[bool]] = [i.deleted.is_(False), i.status != "killed"]
        conds.append(i.os_hidden.is_(query.os_hidden))
        if query.protected is not None:
            conds.append(i.protected.is_(query.protected))
        for column, op, value in query.conditions:
            col = i[column]
            conds.append(_compare(col, op, value))
        for name, value in query.properties:
            p = m.image_properties.alias()
            conds.append(sa.exists().where(p.c.image_id == i.id, p.c.name == name, p.c.value == value))
        # Kept apart: a rare first tag (SQLite, below) is joined instead of tested per row.
        tag_conds: list[sa.ColumnElement[bool]] = []
        for tag in query.tags:
            t = m.image_tags.alias()
            tag_conds.append(sa.exists().where(t.c.image_id == i.id, t.c.value == tag))
        conds.append(_visibility_condition(ctx, query))

        sort = list(query.sort)
        keys = [k for k, _ in sort]
        for extra in ("created_at", "id"):
            if extra not in keys:
                sort.append((extra, query.tiebreak_dir))
                keys.append(extra)

        async with self._read() as conn:
            if query.marker is not None:
                # Glance's marker lookup (``_image_get``): admins may page from a deleted image;
                # an unknown marker is a 400, an image the caller may not see a 403.
                stmt = sa.select(m.images).where(i.id == query.marker)
                if not ctx.is_admin:
                    stmt = stmt.where(i.deleted.is_(False))
                marker_row = (await conn.execute(stmt)).mappings().first()
                if marker_row is None:
                    raise InvalidRequest(f"No image found with ID {query.marker}")
                if not (ctx.is_admin or marker_row["owner"] is None or ctx.owns(marker_row["owner"])
                        or marker_row["visibility"] in ("public", "community")
                        or (marker_row["visibility"] == "shared" and ctx.project_id is not None
                            and await membership(conn, marker_row["id"], ctx.project_id) is not None)):
                    raise NotPermitted(f"Forbidding request, image {query.marker} not visible")
                conds.append(_after_marker(sort, marker_row))
            order = [(_SORT_EXPR[k].asc() if d == "asc" else _SORT_EXPR[k].desc()) for k, d in sort]
            stmt = sa.select(m.images).where(*conds).order_by(*order)
            index = order_index(sort)
            if index is not None and self.is_sqlite:
                if query.tags and await _few_tagged(conn, query.tags[0]):
                    tag_conds = tag_conds[1:]
                    # A rare tag: walking the sort order would visit (catalogue / tagged) images per
                    # one listed; its few images, gathered through the tag index and sorted, cost less.
                    # (CROSS JOIN: SQLite then keeps the tag's rows as the outer loop.)
                    tagged = m.image_tags.alias("rare_tag")
                    stmt = stmt.select_from(_CrossJoin(tagged, m.images, tagged.c.image_id == i.id)).where(
                        tagged.c.value == query.tags[0])
                else:
                    # SQLite's planner, without statistics, prefers gathering every visible image
                    # through the visibility indexes (OR of owner, visibility, memberships) and
                    # sorting them all: a page then costs as much as the catalogue is large. Walking
                    # the index of the sort order stops at the limit. (PostgreSQL's planner weighs
                    # the two with its statistics.)
                    stmt = stmt.with_hint(m.images, f"INDEXED BY {index}", dialect_name="sqlite")
            stmt = stmt.where(*tag_conds)
            if query.limit is not None:
                stmt = stmt.limit(query.limit)
            rows = list((await conn.execute(stmt)).mappings())
            images = await self._hydrate(conn, rows)
        return images, query.limit is not None and len(rows) == query.limit and query.limit > 0


# A tag on fewer images than this is listed from its own images rather than along the sort order:
# sorting this many rows costs about what walking the order past as many untagged ones does.
RARE_TAG_IMAGES = 2000


class _CrossJoin(sa.sql.expression.Join):
    """An inner join that SQLite may not reorder: its left side is the outer loop."""

    inherit_cache = True


@compiles(_CrossJoin, "sqlite")
def _compile_cross_join(join: _CrossJoin, compiler: Any, **kw: Any) -> str:
    kw["asfrom"] = True
    left, right = compiler.process(join.left, **kw), compiler.process(join.right, **kw)
    return f"{left} CROSS JOIN {right} ON {compiler.process(join.onclause, **kw)}"


async def _few_tagged(conn: Any, tag: str) -> bool:
    """Whether fewer than RARE_TAG_IMAGES images carry ``tag`` (counted no further than that)."""
    t = m.image_tags.c
    first = sa.select(sa.literal(1)).where(t.value == tag).limit(RARE_TAG_IMAGES).subquery()
    return int((await conn.execute(sa.select(sa.func.count()).select_from(first))).scalar_one()) < RARE_TAG_IMAGES


def _compare(col: sa.ColumnElement[Any], op: str, value: Any) -> sa.ColumnElement[bool]:
    if op == "eq":
        return col == value
    if op == "neq":
        return col != value
    if op == "in":
        return col.in_(list(value))
    if op == "outside":
        low, high = value
        return sa.or_(col < low, col >= high)
    if op == "gt":
        return col > value
    if op == "gte":
        return col >= value
    if op == "lt":
        return col < value
    if op == "lte":
        return col <= value
    raise InvalidRequest(f"Unable to filter by unknown operator '{op}'.")


def _visibility_condition(ctx: RequestContext, query: ImageQuery) -> sa.ColumnElement[bool]:
    """Glance's ``_select_images_query`` plus its visibility post-filter, as one condition."""
    i = m.images.c
    if ctx.is_admin:
        base: sa.ColumnElement[bool] = sa.true()
    else:
        mem = m.image_members.c
        member_conds = [mem.image_id == i.id, mem.member == (ctx.project_id or "")]
        if query.member_status != "all":
            member_conds.append(mem.status == query.member_status)
        shared_with_me = sa.and_(i.visibility == "shared", sa.exists().where(*member_conds))
        parts = [i.visibility.in_(("public", "community")), shared_with_me]
        if ctx.project_id is not None:
            parts.append(i.owner == ctx.project_id)
        base = sa.or_(*parts)
    if query.visibility is not None:
        if query.visibility != "all":
            return sa.and_(base, i.visibility == query.visibility)
        return base
    if ctx.project_id is None:
        return sa.and_(base, i.visibility != "community")
    return sa.and_(base, sa.or_(i.owner == ctx.project_id, i.visibility != "community"))


def _after_marker(sort: list[tuple[str, str]], marker: Mapping[Any, Any]) -> sa.ColumnElement[bool]:
    """Keyset condition: rows strictly after the marker in the given order.

    The first key's bound is also given alone (not after the marker's value on the first key):
    implied by the OR of the rest, it is what lets an index on the sort start at the marker."""
    first_key, first_dir = sort[0]
    first_expr, first_value = _SORT_EXPR[first_key], _marker_value(marker, first_key)
    bound = first_expr >= first_value if first_dir == "asc" else first_expr <= first_value
    ors = []
    for n, (key, direction) in enumerate(sort):
        ands = []
        for prev_key, _ in sort[:n]:
            ands.append(_SORT_EXPR[prev_key] == _marker_value(marker, prev_key))
        expr, value = _SORT_EXPR[key], _marker_value(marker, key)
        ands.append(expr > value if direction == "asc" else expr < value)
        ors.append(sa.and_(*ands))
    return sa.and_(bound, sa.or_(*ors))


def _marker_value(marker: Mapping[str, Any], key: str) -> Any:
    value = marker[key]
    return _NULL_STANDIN.get(key) if value is None else value
