"""The metadata definitions catalogue (``/v2/metadefs``): namespaces and what they contain.

A namespace holds objects, properties and tags and is associated with resource types
(``OS::Glance::Image`` ...). The rules are Glance's: a namespace name is unique in the whole
catalogue, an object, property or tag name within its namespace, a resource type name globally;
deleting a namespace deletes its contents; a ``protected`` namespace cannot be deleted, nor can
its objects, properties or tags be deleted all at once. Who may see a namespace is
:func:`namespace_visible` (Glance's database-level rule, under the API's policy checks).

Every method takes and returns plain records; the API edge decides who may call it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..context import RequestContext
from ..errors import DoesNotExist, Duplicate, InvalidRequest, NotPermitted
from . import models as m
from .base import CatalogBase
from .records import utcnow

NAMESPACE_SORT_KEYS = ("namespace", "display_name", "description", "visibility", "protected", "owner",
                       "created_at", "updated_at", "id")
TAG_SORT_KEYS = ("name", "created_at", "updated_at", "id")


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    id: int
    namespace: str
    display_name: str | None
    description: str | None
    visibility: str | None
    protected: bool | None
    owner: str | None
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    name: str
    description: str | None
    required: list[str]
    properties: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class PropertyRecord:
    name: str
    schema: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class TagRecord:
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ResourceTypeRecord:
    name: str
    protected: bool
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class AssociationRecord:
    """A namespace's association with a resource type, shown under the resource type's name."""
    name: str
    prefix: str | None
    properties_target: str | None
    created_at: dt.datetime
    updated_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class NewObject:
    name: str
    description: str | None = None
    required: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewAssociation:
    name: str
    prefix: str | None = None
    properties_target: str | None = None


@dataclass(frozen=True, slots=True)
class NamespaceContents:
    objects: list[ObjectRecord]
    properties: list[PropertyRecord]
    tags: list[TagRecord]
    associations: list[AssociationRecord]


def namespace_visible(ctx: RequestContext, namespace: NamespaceRecord) -> bool:
    """Glance's database rule: admins see everything, others public namespaces, ownerless ones
    and their own project's."""
    return (ctx.is_admin or namespace.owner is None or namespace.visibility == "public"
            or (ctx.project_id is not None and ctx.project_id == namespace.owner))


def _not_found(name: str) -> DoesNotExist:
    return DoesNotExist(f"Metadata definition namespace={name} was not found.")


def _namespace(row: Any) -> NamespaceRecord:
    return NamespaceRecord(id=row.id, namespace=row.namespace, display_name=row.display_name,
                           description=row.description, visibility=row.visibility,
                           protected=None if row.protected is None else bool(row.protected), owner=row.owner, created_at=row.created_at,
                           updated_at=row.updated_at)


def _object(row: Any) -> ObjectRecord:
    return ObjectRecord(name=row.name, description=row.description, required=json.loads(row.required_json),
                        properties=json.loads(row.properties_json), created_at=row.created_at,
                        updated_at=row.updated_at)


def _property(row: Any) -> PropertyRecord:
    return PropertyRecord(name=row.name, schema=json.loads(row.schema_json), created_at=row.created_at,
                          updated_at=row.updated_at)


def _tag(row: Any) -> TagRecord:
    return TagRecord(name=row.name, created_at=row.created_at, updated_at=row.updated_at)


def _after_marker(columns: Sequence[sa.ColumnElement[Any]], values: Sequence[Any], descending: bool) -> Any:
    """Rows strictly after the marker in the order ``columns`` (all in one direction), as
    oslo.db's paginate_query builds it: (k1 > v1) or (k1 = v1 and k2 > v2) or ..."""
    clauses = []
    for i, (column, value) in enumerate(zip(columns, values)):
        if value is None:
            continue  # NULL compares with nothing: the marker's NULL key cannot order the page
        equal = [columns[j] == values[j] for j in range(i) if values[j] is not None]
        clauses.append(sa.and_(*equal, column < value if descending else column > value))
    return sa.or_(*clauses) if clauses else sa.true()


class MetadefsMixin(CatalogBase):
    # -- namespaces ------------------------------------------------------------------------------

    async def get_namespace(self, name: str) -> NamespaceRecord:
        """The namespace whoever may see it (the caller checks :func:`namespace_visible`)."""
        async with self._read() as conn:
            return await self._namespace_row(conn, name)

    async def _namespace_row(self, conn: AsyncConnection, name: str, *, for_update: bool = False) -> NamespaceRecord:
        stmt = sa.select(m.metadef_namespaces).where(m.metadef_namespaces.c.namespace == name)
        if for_update and not self.is_sqlite:
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise _not_found(name)
        return _namespace(row)

    async def list_namespaces(self, ctx: RequestContext, *, visibility: str | None = None,
                              resource_types: Sequence[str] | None = None, sort_key: str = "created_at",
                              sort_dir: str = "desc", limit: int | None = None,
                              marker: NamespaceRecord | None = None) -> list[NamespaceRecord]:
        if sort_key not in NAMESPACE_SORT_KEYS:
            raise InvalidRequest(f"Invalid sort key: {sort_key}")
        n = m.metadef_namespaces.c
        stmt = sa.select(m.metadef_namespaces)
        if not ctx.is_admin:
            seen = [n.visibility == "public", n.owner.is_(None)]
            if ctx.project_id is not None:
                seen.append(n.owner == ctx.project_id)
            stmt = stmt.where(sa.or_(*seen))
        if visibility is not None:
            stmt = stmt.where(n.visibility == visibility)
        if resource_types is not None:
            a, r = m.metadef_namespace_resource_types.c, m.metadef_resource_types.c
            stmt = stmt.where(n.id.in_(sa.select(a.namespace_id).join(
                m.metadef_resource_types, r.id == a.resource_type_id).where(r.name.in_(list(resource_types)))))
        keys = [sort_key] + [k for k in ("created_at", "id") if k != sort_key]
        columns = [n[k] for k in keys]
        descending = sort_dir == "desc"
        if marker is not None:
            stmt = stmt.where(_after_marker(columns, [getattr(marker, k) for k in keys], descending))
        stmt = stmt.order_by(*(c.desc() if descending else c.asc() for c in columns))
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self._read() as conn:
            return [_namespace(row) for row in await conn.execute(stmt)]

    async def associations_of(self, namespace_ids: Iterable[int]) -> dict[int, list[AssociationRecord]]:
        ids = list(namespace_ids)
        found: dict[int, list[AssociationRecord]] = {i: [] for i in ids}
        if not ids:
            return found
        a, r = m.metadef_namespace_resource_types.c, m.metadef_resource_types.c
        stmt = (sa.select(a.namespace_id, r.name, a.prefix, a.properties_target, a.created_at, a.updated_at)
                .join(m.metadef_resource_types, r.id == a.resource_type_id)
                .where(a.namespace_id.in_(ids)).order_by(a.namespace_id, a.id))
        async with self._read() as conn:
            for row in await conn.execute(stmt):
                found[row.namespace_id].append(AssociationRecord(row.name, row.prefix, row.properties_target,
                                                                 row.created_at, row.updated_at))
        return found

    async def namespace_contents(self, namespace: NamespaceRecord) -> NamespaceContents:
        async with self._read() as conn:
            objects = await self._objects(conn, namespace.id)
            properties = await self._properties(conn, namespace.id)
            tags = await self._tags(conn, namespace.id)
        associations = (await self.associations_of([namespace.id]))[namespace.id]
        return NamespaceContents(objects, properties, tags, associations)

    async def create_namespace(self, values: Mapping[str, Any], *, objects: Sequence[NewObject] = (),
                               properties: Mapping[str, Mapping[str, Any]] | None = None,
                               tags: Sequence[str] = (),
                               associations: Sequence[NewAssociation] = ()) -> NamespaceRecord:
        """A namespace with its first contents, in one transaction: all of it or none of it."""
        name = values["namespace"]
        now = utcnow()
        async with self._write() as conn:
            if await conn.scalar(sa.select(m.metadef_namespaces.c.id).where(
                    m.metadef_namespaces.c.namespace == name)) is not None:
                raise Duplicate(f"The metadata definition namespace={name} already exists.")
            row = {"namespace": name, "display_name": values.get("display_name"),
                   "description": values.get("description"), "visibility": values.get("visibility") or "private",
                   "protected": bool(values.get("protected") or False), "owner": values.get("owner"),
                   "created_at": now, "updated_at": now}
            try:
                ns_id = (await conn.execute(m.metadef_namespaces.insert().values(**row))).inserted_primary_key[0]
            except sa.exc.IntegrityError:  # a racing create on PostgreSQL
                raise Duplicate(f"The metadata definition namespace={name} already exists.") from None
            for association in associations:
                await self._associate(conn, ns_id, name, association, now)
            for obj in objects:
                await self._insert_object(conn, ns_id, name, obj, now)
            for tag in tags:
                await self._insert_tag(conn, ns_id, name, tag, now)
            for prop_name, schema in (properties or {}).items():
                await self._insert_property(conn, ns_id, name, prop_name, schema, now)
            return NamespaceRecord(id=ns_id, **row)

    async def update_namespace(self, namespace: NamespaceRecord, values: Mapping[str, Any]) -> NamespaceRecord:
        """Replace every settable field (Glance's PUT: what is not given takes create's default)."""
        new_name = values["namespace"]
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            if new_name != current.namespace and await conn.scalar(sa.select(m.metadef_namespaces.c.id).where(
                    m.metadef_namespaces.c.namespace == new_name)) is not None:
                raise self._duplicate_rename(new_name)
            row = {"namespace": new_name, "display_name": values.get("display_name"),
                   "description": values.get("description"), "visibility": values.get("visibility") or "private",
                   "protected": bool(values.get("protected") or False), "owner": values.get("owner"),
                   "updated_at": utcnow()}
            try:
                await conn.execute(m.metadef_namespaces.update().where(
                    m.metadef_namespaces.c.id == current.id).values(**row))
            except sa.exc.IntegrityError:
                raise self._duplicate_rename(new_name) from None
            return NamespaceRecord(id=current.id, created_at=current.created_at, **row)

    @staticmethod
    def _duplicate_rename(name: str) -> Duplicate:
        return Duplicate("Invalid update. It would result in a duplicate metadata definition namespace "
                         f"with the same name of {name}")

    async def delete_namespace(self, namespace: NamespaceRecord) -> None:
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            _check_unprotected(current)
            for table in (m.metadef_objects, m.metadef_properties, m.metadef_tags,
                          m.metadef_namespace_resource_types):
                await conn.execute(table.delete().where(table.c.namespace_id == current.id))
            await conn.execute(m.metadef_namespaces.delete().where(m.metadef_namespaces.c.id == current.id))

    async def delete_namespace_contents(self, namespace: NamespaceRecord, kind: str) -> None:
        """Delete all of a namespace's ``objects``, ``properties`` or ``tags``."""
        table = {"objects": m.metadef_objects, "properties": m.metadef_properties, "tags": m.metadef_tags}[kind]
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            _check_unprotected(current)
            await conn.execute(table.delete().where(table.c.namespace_id == current.id))

    # -- objects ---------------------------------------------------------------------------------

    async def _objects(self, conn: AsyncConnection, ns_id: int) -> list[ObjectRecord]:
        o = m.metadef_objects.c
        # By name: the order Glance's unordered query gets from its (namespace_id, name) index.
        rows = await conn.execute(sa.select(m.metadef_objects).where(o.namespace_id == ns_id).order_by(o.name))
        return [_object(row) for row in rows]

    async def list_metadef_objects(self, namespace: NamespaceRecord) -> list[ObjectRecord]:
        async with self._read() as conn:
            return await self._objects(conn, namespace.id)

    async def get_metadef_object(self, namespace: NamespaceRecord, name: str) -> ObjectRecord:
        o = m.metadef_objects.c
        async with self._read() as conn:
            row = (await conn.execute(sa.select(m.metadef_objects).where(
                o.namespace_id == namespace.id, o.name == name))).first()
        if row is None:
            raise DoesNotExist(f"Could not find metadata object {name}")
        return _object(row)

    async def _insert_object(self, conn: AsyncConnection, ns_id: int, ns_name: str, obj: NewObject,
                             now: dt.datetime) -> ObjectRecord:
        o = m.metadef_objects.c
        duplicate = Duplicate(f"A metadata definition object with name={obj.name} already exists in "
                              f"namespace={ns_name}.")
        if await conn.scalar(sa.select(o.id).where(o.namespace_id == ns_id, o.name == obj.name)) is not None:
            raise duplicate
        try:
            await conn.execute(m.metadef_objects.insert().values(
                namespace_id=ns_id, name=obj.name, description=obj.description,
                required_json=json.dumps(obj.required), properties_json=json.dumps(obj.properties),
                created_at=now, updated_at=now))
        except sa.exc.IntegrityError:
            raise duplicate from None
        return ObjectRecord(obj.name, obj.description, list(obj.required), dict(obj.properties), now, now)

    async def create_metadef_object(self, namespace: NamespaceRecord, obj: NewObject) -> ObjectRecord:
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            return await self._insert_object(conn, current.id, current.namespace, obj, utcnow())

    async def update_metadef_object(self, namespace: NamespaceRecord, name: str, obj: NewObject) -> ObjectRecord:
        o = m.metadef_objects.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            row = (await conn.execute(sa.select(m.metadef_objects).where(
                o.namespace_id == current.id, o.name == name))).first()
            if row is None:
                raise DoesNotExist(f"Could not find metadata object {name}")
            # Glance answers a rename onto an existing object with a 500 (its database error
            # escapes); it is a conflict.
            duplicate = Duplicate(f"A metadata definition object with name={obj.name} already exists in "
                                  f"namespace={current.namespace}.")
            if obj.name != name and await conn.scalar(sa.select(o.id).where(
                    o.namespace_id == current.id, o.name == obj.name)) is not None:
                raise duplicate
            now = utcnow()
            try:
                await conn.execute(m.metadef_objects.update().where(o.id == row.id).values(
                    name=obj.name, description=obj.description, required_json=json.dumps(obj.required),
                    properties_json=json.dumps(obj.properties), updated_at=now))
            except sa.exc.IntegrityError:
                raise duplicate from None
            return ObjectRecord(obj.name, obj.description, list(obj.required), dict(obj.properties),
                                row.created_at, now)

    async def delete_metadef_object(self, namespace: NamespaceRecord, name: str) -> None:
        o = m.metadef_objects.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            result = await conn.execute(m.metadef_objects.delete().where(
                o.namespace_id == current.id, o.name == name))
            if result.rowcount == 0:
                raise DoesNotExist(f"Could not find metadata object {name}")

    # -- properties ------------------------------------------------------------------------------

    async def _properties(self, conn: AsyncConnection, ns_id: int) -> list[PropertyRecord]:
        p = m.metadef_properties.c
        rows = await conn.execute(sa.select(m.metadef_properties).where(p.namespace_id == ns_id).order_by(p.name))
        return [_property(row) for row in rows]

    async def list_metadef_properties(self, namespace: NamespaceRecord) -> list[PropertyRecord]:
        async with self._read() as conn:
            return await self._properties(conn, namespace.id)

    async def get_metadef_property(self, namespace: NamespaceRecord, name: str) -> PropertyRecord:
        p = m.metadef_properties.c
        async with self._read() as conn:
            row = (await conn.execute(sa.select(m.metadef_properties).where(
                p.namespace_id == namespace.id, p.name == name))).first()
        if row is None:
            raise DoesNotExist(f"Could not find property {name}")
        return _property(row)

    async def _insert_property(self, conn: AsyncConnection, ns_id: int, ns_name: str, name: str,
                               schema: Mapping[str, Any], now: dt.datetime) -> PropertyRecord:
        p = m.metadef_properties.c
        duplicate = Duplicate(f"A metadata definition property with name={name} already exists in "
                              f"namespace={ns_name}.")
        if await conn.scalar(sa.select(p.id).where(p.namespace_id == ns_id, p.name == name)) is not None:
            raise duplicate
        try:
            await conn.execute(m.metadef_properties.insert().values(
                namespace_id=ns_id, name=name, schema_json=json.dumps(dict(schema)), created_at=now, updated_at=now))
        except sa.exc.IntegrityError:
            raise duplicate from None
        return PropertyRecord(name, dict(schema), now, now)

    async def create_metadef_property(self, namespace: NamespaceRecord, name: str,
                              schema: Mapping[str, Any]) -> PropertyRecord:
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            return await self._insert_property(conn, current.id, current.namespace, name, schema, utcnow())

    async def update_metadef_property(self, namespace: NamespaceRecord, name: str, new_name: str,
                              schema: Mapping[str, Any]) -> PropertyRecord:
        p = m.metadef_properties.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            row = (await conn.execute(sa.select(m.metadef_properties).where(
                p.namespace_id == current.id, p.name == name))).first()
            if row is None:
                raise DoesNotExist(f"Could not find property {name}")
            # As for objects, Glance's answer to a rename onto an existing property is a 500.
            duplicate = Duplicate(f"A metadata definition property with name={new_name} already exists in "
                                  f"namespace={current.namespace}.")
            if new_name != name and await conn.scalar(sa.select(p.id).where(
                    p.namespace_id == current.id, p.name == new_name)) is not None:
                raise duplicate
            now = utcnow()
            try:
                await conn.execute(m.metadef_properties.update().where(p.id == row.id).values(
                    name=new_name, schema_json=json.dumps(dict(schema)), updated_at=now))
            except sa.exc.IntegrityError:
                raise duplicate from None
            return PropertyRecord(new_name, dict(schema), row.created_at, now)

    async def delete_metadef_property(self, namespace: NamespaceRecord, name: str) -> None:
        p = m.metadef_properties.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            result = await conn.execute(m.metadef_properties.delete().where(
                p.namespace_id == current.id, p.name == name))
            if result.rowcount == 0:
                raise DoesNotExist(f"Could not find property {name}")

    # -- tags ------------------------------------------------------------------------------------

    async def _tags(self, conn: AsyncConnection, ns_id: int) -> list[TagRecord]:
        t = m.metadef_tags.c
        rows = await conn.execute(sa.select(m.metadef_tags).where(t.namespace_id == ns_id)
                                  .order_by(t.created_at.desc(), t.id.desc()))
        return [_tag(row) for row in rows]

    async def list_metadef_tags(self, namespace: NamespaceRecord, *, sort_key: str = "created_at", sort_dir: str = "desc",
                        limit: int | None = None, marker: str | None = None) -> list[TagRecord]:
        if sort_key not in TAG_SORT_KEYS:
            raise InvalidRequest(f"Invalid sort key: {sort_key}")
        t = m.metadef_tags.c
        keys = [sort_key] + [k for k in ("created_at", "id") if k != sort_key]
        columns = [t[k] for k in keys]
        descending = sort_dir == "desc"
        stmt = sa.select(m.metadef_tags).where(t.namespace_id == namespace.id)
        async with self._read() as conn:
            if marker is not None:
                row = (await conn.execute(sa.select(m.metadef_tags).where(
                    t.namespace_id == namespace.id, t.name == marker))).first()
                if row is None:
                    raise DoesNotExist(f"Could not find metadata tag {marker}")
                stmt = stmt.where(_after_marker(columns, [getattr(row, k) for k in keys], descending))
            stmt = stmt.order_by(*(c.desc() if descending else c.asc() for c in columns))
            if limit is not None:
                stmt = stmt.limit(limit)
            return [_tag(row) for row in await conn.execute(stmt)]

    async def get_metadef_tag(self, namespace: NamespaceRecord, name: str) -> TagRecord:
        t = m.metadef_tags.c
        async with self._read() as conn:
            row = (await conn.execute(sa.select(m.metadef_tags).where(
                t.namespace_id == namespace.id, t.name == name))).first()
        if row is None:
            raise DoesNotExist(f"Could not find metadata tag {name}")
        return _tag(row)

    @staticmethod
    def _duplicate_tag(name: str, ns_name: str) -> Duplicate:
        return Duplicate(f"A metadata tag with name={name} already exists in namespace={ns_name}. "
                         "(Please note that metadata tag names are case insensitive).")

    async def _insert_tag(self, conn: AsyncConnection, ns_id: int, ns_name: str, name: str,
                          now: dt.datetime) -> TagRecord:
        t = m.metadef_tags.c
        if await conn.scalar(sa.select(t.id).where(t.namespace_id == ns_id, t.name == name)) is not None:
            raise self._duplicate_tag(name, ns_name)
        try:
            await conn.execute(m.metadef_tags.insert().values(namespace_id=ns_id, name=name, created_at=now,
                                                              updated_at=now))
        except sa.exc.IntegrityError:
            raise self._duplicate_tag(name, ns_name) from None
        return TagRecord(name, now, now)

    async def create_metadef_tag(self, namespace: NamespaceRecord, name: str) -> TagRecord:
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            return await self._insert_tag(conn, current.id, current.namespace, name, utcnow())

    async def create_metadef_tags(self, namespace: NamespaceRecord, names: Sequence[str], *, append: bool) -> list[TagRecord]:
        """Bulk create: without ``append`` the namespace's tags are replaced by ``names``."""
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise self._duplicate_tag(name, current.namespace)
                seen.add(name)
            if not append:
                await conn.execute(m.metadef_tags.delete().where(m.metadef_tags.c.namespace_id == current.id))
            now = utcnow()
            return [await self._insert_tag(conn, current.id, current.namespace, name, now) for name in names]

    async def update_metadef_tag(self, namespace: NamespaceRecord, name: str, new_name: str) -> TagRecord:
        t = m.metadef_tags.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            row = (await conn.execute(sa.select(m.metadef_tags).where(
                t.namespace_id == current.id, t.name == name))).first()
            if row is None:
                raise DoesNotExist(f"Could not find metadata tag {name}")
            if new_name != name and await conn.scalar(sa.select(t.id).where(
                    t.namespace_id == current.id, t.name == new_name)) is not None:
                raise self._duplicate_tag(new_name, current.namespace)
            now = utcnow()
            try:
                await conn.execute(m.metadef_tags.update().where(t.id == row.id).values(name=new_name, updated_at=now))
            except sa.exc.IntegrityError:
                raise self._duplicate_tag(new_name, current.namespace) from None
            return TagRecord(new_name, row.created_at, now)

    async def delete_metadef_tag(self, namespace: NamespaceRecord, name: str) -> None:
        t = m.metadef_tags.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            result = await conn.execute(m.metadef_tags.delete().where(t.namespace_id == current.id, t.name == name))
            if result.rowcount == 0:
                raise DoesNotExist(f"Could not find metadata tag {name}")

    # -- resource types --------------------------------------------------------------------------

    async def list_resource_types(self) -> list[ResourceTypeRecord]:
        r = m.metadef_resource_types.c
        async with self._read() as conn:
            rows = await conn.execute(sa.select(m.metadef_resource_types).order_by(r.id))
            return [ResourceTypeRecord(row.name, bool(row.protected), row.created_at, row.updated_at) for row in rows]

    async def list_associations(self, namespace: NamespaceRecord) -> list[AssociationRecord]:
        return (await self.associations_of([namespace.id]))[namespace.id]

    async def _associate(self, conn: AsyncConnection, ns_id: int, ns_name: str, association: NewAssociation,
                         now: dt.datetime) -> AssociationRecord:
        """Associate, creating the resource type first if it is new (as Glance does)."""
        r, a = m.metadef_resource_types.c, m.metadef_namespace_resource_types.c
        type_id = await conn.scalar(sa.select(r.id).where(r.name == association.name))
        if type_id is None:
            type_id = (await conn.execute(m.metadef_resource_types.insert().values(
                name=association.name, protected=False, created_at=now, updated_at=now))).inserted_primary_key[0]
        duplicate = Duplicate(f"The metadata definition resource-type association of resource-type="
                              f"{association.name} to namespace={ns_name} already exists.")
        if await conn.scalar(sa.select(a.namespace_id).where(a.namespace_id == ns_id,
                                                             a.resource_type_id == type_id)) is not None:
            raise duplicate
        try:
            await conn.execute(m.metadef_namespace_resource_types.insert().values(
                namespace_id=ns_id, resource_type_id=type_id, prefix=association.prefix,
                properties_target=association.properties_target, created_at=now, updated_at=now))
        except sa.exc.IntegrityError:
            raise duplicate from None
        return AssociationRecord(association.name, association.prefix, association.properties_target, now, now)

    async def create_association(self, namespace: NamespaceRecord, association: NewAssociation) -> AssociationRecord:
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            return await self._associate(conn, current.id, current.namespace, association, utcnow())

    async def delete_association(self, namespace: NamespaceRecord, resource_type: str) -> None:
        r, a = m.metadef_resource_types.c, m.metadef_namespace_resource_types.c
        async with self._write() as conn:
            current = await self._namespace_row(conn, namespace.namespace, for_update=True)
            type_id = await conn.scalar(sa.select(r.id).where(r.name == resource_type))
            result = None if type_id is None else await conn.execute(
                m.metadef_namespace_resource_types.delete().where(a.namespace_id == current.id,
                                                                  a.resource_type_id == type_id))
            if result is None or result.rowcount == 0:
                raise DoesNotExist(f"Failed to find resource type {resource_type} to delete")

    async def ensure_resource_types(self, names: Iterable[str], *, protected: bool = True) -> None:
        """Create the resource types that do not exist yet (the ones Glance's definitions name)."""
        r = m.metadef_resource_types.c
        async with self._write() as conn:
            existing = set((await conn.execute(sa.select(r.name))).scalars())
            now = utcnow()
            for name in names:
                if name not in existing:
                    await conn.execute(m.metadef_resource_types.insert().values(
                        name=name, protected=protected, created_at=now, updated_at=now))
                    existing.add(name)

    # -- definition files (streamd metadefs-load / -unload / -export, as glance-manage's) -------------

    async def metadefs_empty(self) -> bool:
        async with self._read() as conn:
            return (await conn.scalar(sa.select(sa.func.count()).select_from(m.metadef_namespaces)) == 0
                    and await conn.scalar(sa.select(sa.func.count()).select_from(m.metadef_resource_types)) == 0)

    async def load_metadefs(self, documents: Sequence[Mapping[str, Any]], *, merge: bool = False,
                            prefer_new: bool = False, overwrite: bool = False) -> list[str]:
        """Load namespace definition documents (Glance's file format) as ``glance-manage
        db_load_metadefs`` does, in one transaction; the names of the namespaces loaded.

        A namespace that exists is skipped, unless ``overwrite`` (its contents are replaced) or
        ``merge`` (what is new is added; with ``prefer_new`` what exists is updated too).
        Loaded rows have no ``updated_at`` and the owner the file names, else "admin", as in Glance.
        """
        loaded = []
        try:
            async with self._write() as conn:
                for document in documents:
                    if await self._load_document(conn, document, merge=merge, prefer_new=prefer_new,
                                                 overwrite=overwrite):
                        loaded.append(str(document["namespace"]))
        except sa.exc.IntegrityError:
            # Only a concurrent writer (another node loading the same files) gets here: every
            # row is looked up before it is inserted.
            raise Duplicate("The metadata definitions were changed while they were being loaded") from None
        return loaded

    async def _load_document(self, conn: AsyncConnection, doc: Mapping[str, Any], *, merge: bool,
                             prefer_new: bool, overwrite: bool) -> bool:
        n = m.metadef_namespaces.c
        now = utcnow()
        values = {"namespace": doc["namespace"], "display_name": doc.get("display_name"),
                  "description": doc.get("description"), "visibility": doc.get("visibility"),
                  "protected": doc.get("protected"), "owner": doc.get("owner", "admin")}
        ns_id = await conn.scalar(sa.select(n.id).where(n.namespace == values["namespace"]))
        if ns_id is not None and overwrite:
            for table in (m.metadef_properties, m.metadef_objects, m.metadef_tags, m.metadef_namespace_resource_types):
                await conn.execute(table.delete().where(table.c.namespace_id == ns_id))
            await conn.execute(m.metadef_namespaces.delete().where(n.id == ns_id))
            ns_id = None
        if ns_id is None:
            ns_id = (await conn.execute(m.metadef_namespaces.insert().values(
                **values, created_at=now, updated_at=None))).inserted_primary_key[0]
        elif not merge:
            return False  # already there: glance-manage skips it too
        elif prefer_new:
            await conn.execute(m.metadef_namespaces.update().where(n.id == ns_id).values(**values, updated_at=now))

        r, a = m.metadef_resource_types.c, m.metadef_namespace_resource_types.c
        for association in doc.get("resource_type_associations", []):
            type_id = await conn.scalar(sa.select(r.id).where(r.name == association["name"]))
            if type_id is None:
                type_id = (await conn.execute(m.metadef_resource_types.insert().values(
                    name=association["name"], protected=True, created_at=now,
                    updated_at=None))).inserted_primary_key[0]
            elif prefer_new:
                await conn.execute(m.metadef_resource_types.update().where(r.id == type_id).values(updated_at=now))
            link = {"properties_target": association.get("properties_target"), "prefix": association.get("prefix")}
            where = (a.namespace_id == ns_id, a.resource_type_id == type_id)
            if await conn.scalar(sa.select(a.namespace_id).where(*where)) is None:
                await conn.execute(m.metadef_namespace_resource_types.insert().values(
                    namespace_id=ns_id, resource_type_id=type_id, **link, created_at=now, updated_at=None))
            elif prefer_new:
                await conn.execute(m.metadef_namespace_resource_types.update().where(*where).values(
                    **link, updated_at=now))

        async def upsert(table: sa.Table, name: str, row: dict[str, Any]) -> None:
            where = (table.c.namespace_id == ns_id, table.c.name == name)
            if await conn.scalar(sa.select(table.c.id).where(*where)) is None:
                await conn.execute(table.insert().values(namespace_id=ns_id, name=name, **row, created_at=now,
                                                         updated_at=None))
            elif prefer_new:
                await conn.execute(table.update().where(*where).values(**row, updated_at=now))

        for name, schema in doc.get("properties", {}).items():
            await upsert(m.metadef_properties, name, {"schema_json": json.dumps(schema)})
        for obj in doc.get("objects", []):
            # Glance's loader keeps an object's properties and description, not its "required"
            # (which it then shows as []).
            await upsert(m.metadef_objects, obj["name"], {"description": obj.get("description"),
                                                          "required_json": "[]",
                                                          "properties_json": json.dumps(obj.get("properties"))})
        for tag in doc.get("tags", []):
            await upsert(m.metadef_tags, tag["name"], {})
        return True

    async def unload_metadefs(self) -> None:
        """Empty the whole metadefs catalogue, resource types included (glance-manage db_unload_metadefs)."""
        async with self._write() as conn:
            for table in (m.metadef_properties, m.metadef_objects, m.metadef_tags, m.metadef_namespace_resource_types,
                          m.metadef_namespaces, m.metadef_resource_types):
                await conn.execute(table.delete())

    async def export_metadefs(self) -> list[dict[str, Any]]:
        """Every namespace as a definition document (the shape the loader reads)."""
        n = m.metadef_namespaces.c
        async with self._read() as conn:
            namespaces = [_namespace(row) for row in await conn.execute(sa.select(m.metadef_namespaces).order_by(n.id))]
            documents = []
            associations = await self.associations_of(ns.id for ns in namespaces)
            for ns in namespaces:
                documents.append({
                    "namespace": ns.namespace, "display_name": ns.display_name, "description": ns.description,
                    "visibility": ns.visibility, "protected": ns.protected, "owner": ns.owner,
                    "resource_type_associations": [{"name": a.name, "prefix": a.prefix,
                                                    "properties_target": a.properties_target}
                                                   for a in associations[ns.id]],
                    "properties": {p.name: p.schema for p in await self._properties(conn, ns.id)},
                    "objects": [{"name": o.name, "description": o.description, "properties": o.properties}
                                for o in await self._objects(conn, ns.id)],
                    "tags": [{"name": t.name} for t in await self._tags(conn, ns.id)]})
            return documents


def _check_unprotected(namespace: NamespaceRecord) -> None:
    if namespace.protected:
        raise NotPermitted(f"Metadata definition namespace {namespace.namespace} is protected and cannot be deleted.")
