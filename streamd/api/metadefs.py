"""``/v2/metadefs``: metadata definition namespaces, their objects, properties, tags and resource types.

Bodies, statuses and messages are Glance 33's, and so is the order in which a request is
checked, since that order decides which error a client sees: the body first (Glance's
deserializer), then the namespace (missing, or not visible to the caller), then the policy
rule, then the change itself. Every authorization decision goes through :func:`authorize`.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

import jsonschema
from aiohttp import web

from ..catalog.metadefs import (AssociationRecord, NamespaceRecord, NewAssociation, NewObject, ObjectRecord,
                                TagRecord, namespace_visible)
from ..catalog.records import isotime
from ..errors import DoesNotExist, InvalidRequest, NotPermitted
from .inputs import json_body, text_header
from .keys import SERVICES, context_of, notify, notifying
from ..notifications import (deleted, namespace_payload, object_payload, property_payload, resource_type_payload,
                             tag_payload)

# Glance 33's schemas, as it serves them (see the file's _comment for where they come from).
_SCHEMAS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).with_name("metadef_schemas.json")).read_text())["schemas"]
# What Glance validates a bulk tag creation against (not one of the served schemas).
_TAGS_BODY_SCHEMA = {"name": "tags", "properties": {"tags": {"type": "array", "items": {
    "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
    "additionalProperties": False}}}, "additionalProperties": False}
# Glance refuses these in any body it is sent (403), before it validates the body.
_READ_ONLY = ("self", "schema", "created_at", "updated_at")
# The attributes of Glance's PropertyType model: what a property definition keeps.
_PROPERTY_FIELDS = ("name", "type", "title", "description", "operators", "default", "readonly", "minimum",
                    "maximum", "enum", "pattern", "minLength", "maxLength", "confidential", "items",
                    "uniqueItems", "minItems", "maxItems", "additionalItems")
_TRUE = ("1", "t", "true", "on", "y", "yes")  # oslo.utils' bool_from_string

NS_SCHEMA = "/v2/schemas/metadefs/namespace"
OBJ_SCHEMA = "/v2/schemas/metadefs/object"


def metadef_schemas() -> dict[str, dict[str, Any]]:
    """Served at /v2/schemas/metadefs/<name>."""
    return copy.deepcopy(_SCHEMAS)


# -- authorization ---------------------------------------------------------------------------------
#
# Glance 33's metadef rules (streamd/policy/glance_rules.py): reads are admin, or reader on the
# namespace's project or a public namespace; writes are rule:metadef_admin (context_is_admin).


def _allowed(request: web.Request, rule: str, target: Mapping[str, Any]) -> bool:
    """Glance 33's rule ``rule`` (its default, or the operator's policy file) through the enforcer."""
    return request.app[SERVICES].policy.allows(context_of(request), rule, target)


def authorize(request: web.Request, rule: str, target: dict[str, Any]) -> None:
    """Raise unless the caller may ``rule`` on ``target``; the one place metadefs decide who may do what.

    ``target`` is what Glance passes: ``{"project_id": <namespace owner>, "visibility": ...}`` for
    a namespace, ``{"project_id": <caller's project>}`` before there is one (see :func:`target_of`).
    The rules are the policy enforcer's (``services.policy``); what is added here is Glance's
    MetadefAPIPolicy wrapper: a refusal on a namespace
    the caller may not even read is a 404, so that its existence is not revealed.
    """
    if _allowed(request, rule, target):
        return
    if rule == "get_metadef_namespace" or not _allowed(request, "get_metadef_namespace", target):
        raise DoesNotExist("The resource could not be found.")
    raise NotPermitted(f"You are not authorized to complete {rule} action.")


def target_of(request: web.Request, namespace: NamespaceRecord | None = None) -> dict[str, Any]:
    if namespace is None:
        return {"project_id": context_of(request).project_id}
    return {"project_id": namespace.owner, "visibility": namespace.visibility or "private"}


# -- inputs ----------------------------------------------------------------------------------------

async def _body(request: web.Request, schema_name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body, checked as Glance's deserializers check it: present, an object (or list),
    no read-only attribute, valid against the schema (jsonschema's own message, as Glance's)."""
    body = await json_body(request)
    if body is None:
        raise InvalidRequest("Body expected in request.")
    if not isinstance(body, (dict, list)):
        raise InvalidRequest("Unexpected body type. Expected list/dict.")
    if not isinstance(body, dict):
        raise InvalidRequest(f"Provided object does not match schema '{schema_name}': the body must be an object")
    for key in _READ_ONLY:
        if key in body:
            raise NotPermitted(f"Attribute '{key}' is read-only.")
    try:
        jsonschema.validate(body, schema if schema is not None else _SCHEMAS[schema_name])
    except jsonschema.ValidationError as exc:
        raise InvalidRequest(f"Provided object does not match schema '{schema_name}': {exc}") from None
    return body


def _query_choices(request: web.Request) -> tuple[str, str, int | None, str | None]:
    """sort_key, sort_dir, limit, marker, checked in Glance's order."""
    query = request.query
    sort_dir = query.get("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid sort direction: {sort_dir}")
    visibility = query.get("visibility")
    if visibility and visibility not in ("public", "private"):
        raise InvalidRequest(f"Invalid visibility value: {visibility}")
    limit: int | None = None
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            # Glance's int() on the raw value escapes as a 500; the caller sent a wrong value.
            raise InvalidRequest("limit param must be an integer") from None
        if limit < 0:
            raise InvalidRequest("limit param must be positive")
    return query.get("sort_key", "created_at"), sort_dir, limit, query.get("marker")


_INTEGER_FIELDS = ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems")


def _property_schema(value: Mapping[str, Any]) -> dict[str, Any]:
    """A property definition as Glance keeps and shows it: passed through its PropertyType model
    (WSME), which keeps only the model's attributes, drops nulls, turns ``default`` into a string
    (a list or object default is dropped), truncates the integer bounds, and keeps of ``items``
    only ``type`` and ``enum``. Applied on the way in and on the way out (definitions loaded
    from files are stored as written), as Glance converts both."""
    schema: dict[str, Any] = {}
    for key in _PROPERTY_FIELDS:
        item = value.get(key)
        if item is None:
            continue
        if key == "default":
            if isinstance(item, (list, dict)):
                continue
            item = str(item) if not isinstance(item, bool) else ("True" if item else "False")
        elif key in _INTEGER_FIELDS and isinstance(item, (int, float)) and not isinstance(item, bool):
            item = int(item)
        elif key == "items" and isinstance(item, dict):
            item = {k: item[k] for k in ("type", "enum") if item.get(k) is not None}
        schema[key] = item
    return schema


def _property_input(value: Mapping[str, Any]) -> dict[str, Any]:
    """A property definition from a request. Glance's model takes only strings in ``enum``,
    ``operators`` and ``items.enum`` (WSME refuses the rest, which Glance answers with a 500)."""
    lists = [("enum", value.get("enum")), ("operators", value.get("operators"))]
    if isinstance(value.get("items"), dict):
        lists.append(("enum", value["items"].get("enum")))
    for field_name, items in lists:
        if isinstance(items, list):
            for item in items:
                if not isinstance(item, str):
                    raise InvalidRequest(f"Invalid input for field/attribute {field_name}. Value: '{items}'. "
                                         f"Wrong type. Expected '<class 'str'>', got '{type(item)}'")
    return _property_schema(value)


def _properties_view(properties: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if properties is None:
        return None
    return {name: _property_schema(value) if isinstance(value, dict) else value for name, value in properties.items()}


# -- lookups ---------------------------------------------------------------------------------------

async def _namespace(request: web.Request, *, missing_as_glance: bool = False) -> NamespaceRecord:
    """The namespace of the path, if the caller may see it.

    Most handlers answer both a missing and an invisible namespace with "Namespace X not found";
    the objects handlers (``missing_as_glance``) let the catalogue's own message through for a
    missing one, as Glance does."""
    name = request.match_info["namespace"]
    catalog = request.app[SERVICES].catalog
    try:
        namespace = await catalog.get_namespace(name)
    except DoesNotExist:
        if missing_as_glance:
            raise
        raise DoesNotExist(f"Namespace {name} not found") from None
    if not namespace_visible(context_of(request), namespace):
        raise DoesNotExist(f"Namespace {name} not found")
    return namespace


# -- views -----------------------------------------------------------------------------------------

def _without_none(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if v is not None}


def namespace_view(ns: NamespaceRecord) -> dict[str, Any]:
    return _without_none({
        "namespace": ns.namespace, "display_name": ns.display_name, "description": ns.description,
        # Glance's domain model shows a namespace loaded without them as private and unprotected.
        "visibility": ns.visibility or "private", "protected": bool(ns.protected), "owner": ns.owner,
        "created_at": isotime(ns.created_at), "updated_at": isotime(ns.updated_at),
        "self": f"/v2/metadefs/namespaces/{ns.namespace}", "schema": NS_SCHEMA})


def association_view(a: AssociationRecord) -> dict[str, Any]:
    return _without_none({"name": a.name, "prefix": a.prefix, "properties_target": a.properties_target,
                          "created_at": isotime(a.created_at), "updated_at": isotime(a.updated_at)})


def object_view(ns_name: str, obj: ObjectRecord, *, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A stored object; ``given`` (a create or update body) limits the optional fields to those the
    request had, as Glance answers a write with the object it built from the request."""
    view = {"name": obj.name, "description": obj.description, "required": obj.required,
            "properties": _properties_view(obj.properties), "created_at": isotime(obj.created_at),
            "updated_at": isotime(obj.updated_at), "self": f"/v2/metadefs/namespaces/{ns_name}/objects/{obj.name}",
            "schema": OBJ_SCHEMA}
    if given is not None:
        for key in ("description", "required", "properties"):
            if given.get(key) is None:
                del view[key]
    return _without_none(view)


def tag_view(tag: TagRecord) -> dict[str, Any]:
    return _without_none({"name": tag.name, "created_at": isotime(tag.created_at),
                          "updated_at": isotime(tag.updated_at)})


def _prefixed(prefix: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in properties.items()}


# -- namespaces ------------------------------------------------------------------------------------

async def list_namespaces(request: web.Request) -> web.Response:
    ctx = context_of(request)
    services = request.app[SERVICES]
    sort_key, sort_dir, limit, marker_name = _query_choices(request)
    config = services.config.default
    limit = min(config.api_limit_max, config.limit_param_default if limit is None else limit)
    authorize(request, "get_metadef_namespaces", target_of(request))
    authorize(request, "list_metadef_resource_types", target_of(request))
    catalog = services.catalog
    marker = None
    if marker_name is not None:
        marker = await catalog.get_namespace(marker_name)
        if not namespace_visible(ctx, marker):
            raise DoesNotExist(f"Metadata definition namespace={marker_name} was not found.")
    resource_types = request.query.get("resource_types")
    found = await catalog.list_namespaces(
        ctx, visibility=request.query.get("visibility") or None,
        resource_types=resource_types.split(",") if resource_types is not None else None,
        sort_key=sort_key, sort_dir=sort_dir, limit=limit, marker=marker)
    # Each namespace is also checked against get_metadef_namespace (an operator's policy may hide some).
    shown = [ns for ns in found if _allowed(request, "get_metadef_namespace", target_of(request, ns))]
    associations = await catalog.associations_of(ns.id for ns in shown)
    namespaces = []
    for ns in shown:
        view = namespace_view(ns)
        if associations[ns.id]:
            view["resource_type_associations"] = [association_view(a) for a in associations[ns.id]]
        namespaces.append(view)
    params = {k: v for k, v in request.query.items() if k != "marker"}
    first = "/v2/metadefs/namespaces"
    if params:
        first += "?" + urllib.parse.urlencode(params)
    document: dict[str, Any] = {"namespaces": namespaces, "first": first, "schema": "/v2/schemas/metadefs/namespaces"}
    if namespaces and len(namespaces) == limit:
        document["next"] = "/v2/metadefs/namespaces?" + urllib.parse.urlencode({**params, "marker": shown[-1].namespace})
    return web.json_response(document)


async def create_namespace(request: web.Request) -> web.Response:
    ctx = context_of(request)
    body = await _body(request, "namespace")
    authorize(request, "add_metadef_namespace", target_of(request))
    if body.get("resource_type_associations"):
        authorize(request, "add_metadef_resource_type_association", target_of(request))
    if body.get("objects"):
        authorize(request, "add_metadef_object", target_of(request))
    if body.get("properties"):
        authorize(request, "add_metadef_property", target_of(request))
    if body.get("tags"):
        authorize(request, "add_metadef_tag", target_of(request))
    values = dict(body)
    if "owner" not in values:
        values["owner"] = ctx.project_id
    objects = [NewObject(name=o["name"], description=o.get("description"), required=list(o.get("required") or []),
                         properties={k: _property_input(v) for k, v in (o.get("properties") or {}).items()})
               for o in body.get("objects") or []]
    properties = {k: _property_input(v) for k, v in (body.get("properties") or {}).items()}
    associations = [NewAssociation(a["name"], a.get("prefix"), a.get("properties_target"))
                    for a in body.get("resource_type_associations") or []]
    ns = await request.app[SERVICES].catalog.create_namespace(
        values, objects=objects, properties=properties, tags=[t["name"] for t in body.get("tags") or []],
        associations=associations)
    notify(request, "metadef_namespace.create", namespace_payload(ns))
    # Glance answers with the namespace it built from the request: its contents as they were sent.
    view = namespace_view(ns)
    if "resource_type_associations" in body:
        view["resource_type_associations"] = [_without_none({k: a.get(k) for k in ("name", "prefix",
                                                                                   "properties_target")})
                                              for a in body["resource_type_associations"]]
    if "properties" in body:
        view["properties"] = properties
    if "objects" in body:
        view["objects"] = [_without_none({"name": o.name, "description": o.description,
                                          "required": o.required if "required" in raw else None,
                                          "properties": o.properties if "properties" in raw else None})
                           for o, raw in zip(objects, body["objects"])]
    if "tags" in body:
        view["tags"] = [{"name": t["name"]} for t in body["tags"]]
    return web.json_response(view, status=201, headers={"Location": view["self"]})


async def show_namespace(request: web.Request) -> web.Response:
    name = request.match_info["namespace"]
    catalog = request.app[SERVICES].catalog
    ns = await catalog.get_namespace(name)
    if not namespace_visible(context_of(request), ns):
        raise DoesNotExist("The resource could not be found.")
    target = target_of(request, ns)
    authorize(request, "get_metadef_namespace", target)
    for rule in ("list_metadef_resource_types", "get_metadef_objects", "get_metadef_properties", "get_metadef_tags"):
        authorize(request, rule, target)
    contents = await catalog.namespace_contents(ns)
    view = namespace_view(ns)
    objects = [object_view(ns.namespace, o) for o in contents.objects]
    properties = {p.name: _property_schema(p.schema) for p in contents.properties}
    prefix = None
    resource_type = request.query.get("resource_type")
    if resource_type:
        prefix = next((a.prefix for a in contents.associations if a.name == resource_type), None)
    if prefix:
        properties = _prefixed(prefix, properties)
        for obj in objects:
            if obj.get("properties"):
                obj["properties"] = _prefixed(prefix, obj["properties"])
            if obj.get("required"):
                obj["required"] = [prefix + r for r in obj["required"]]
    if objects:
        view["objects"] = objects
    if contents.associations:
        view["resource_type_associations"] = [association_view(a) for a in contents.associations]
    if properties:
        view["properties"] = properties
    if contents.tags:
        view["tags"] = [{"name": t.name} for t in contents.tags]
    return web.json_response(view)


async def update_namespace(request: web.Request) -> web.Response:
    body = await _body(request, "namespace")
    ns = await _namespace(request)
    authorize(request, "modify_metadef_namespace", target_of(request, ns))
    values = dict(body)
    values["owner"] = body.get("owner") or context_of(request).project_id
    updated = await request.app[SERVICES].catalog.update_namespace(ns, values)
    notify(request, "metadef_namespace.update", namespace_payload(updated, old_name=ns.namespace))
    return web.json_response(namespace_view(updated))


async def delete_namespace(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "delete_metadef_namespace", target_of(request, ns))
    await request.app[SERVICES].catalog.delete_namespace(ns)
    notify(request, "metadef_namespace.delete", deleted(namespace_payload(ns)))
    return web.Response(status=204)


def _delete_contents(kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        ns = await _namespace(request)
        # Glance checks delete_metadef_namespace for all three (and delete_metadef_tags for tags).
        authorize(request, "delete_metadef_namespace", target_of(request, ns))
        if kind == "tags":
            authorize(request, "delete_metadef_tags", target_of(request, ns))
        await request.app[SERVICES].catalog.delete_namespace_contents(ns, kind)
        notify(request, f"metadef_namespace.delete_{kind}", namespace_payload(ns))
        return web.Response(status=204)
    handler.__name__ = f"delete_namespace_{kind}"
    return handler


# -- objects ---------------------------------------------------------------------------------------

def _new_object(body: Mapping[str, Any]) -> NewObject:
    return NewObject(name=body["name"], description=body.get("description"),
                     required=list(body.get("required") or []),
                     properties={k: _property_input(v) for k, v in (body.get("properties") or {}).items()})


async def list_objects(request: web.Request) -> web.Response:
    ns = await _namespace(request, missing_as_glance=True)
    authorize(request, "get_metadef_objects", target_of(request, ns))
    objects = await request.app[SERVICES].catalog.list_metadef_objects(ns)
    # Glance's link has no leading slash here (and only here).
    return web.json_response({"objects": [object_view(ns.namespace, o) for o in objects],
                              "schema": "v2/schemas/metadefs/objects"})


async def create_object(request: web.Request) -> web.Response:
    body = await _body(request, "object")
    ns = await _namespace(request, missing_as_glance=True)
    authorize(request, "add_metadef_object", target_of(request, ns))
    obj = await request.app[SERVICES].catalog.create_metadef_object(ns, _new_object(body))
    notify(request, "metadef_object.create", object_payload(ns.namespace, obj))
    return web.json_response(object_view(ns.namespace, obj, given=body), status=201)


async def show_object(request: web.Request) -> web.Response:
    ns = await _namespace(request, missing_as_glance=True)
    authorize(request, "get_metadef_object", target_of(request, ns))
    obj = await request.app[SERVICES].catalog.get_metadef_object(ns, request.match_info["name"])
    return web.json_response(object_view(ns.namespace, obj))


async def update_object(request: web.Request) -> web.Response:
    body = await _body(request, "object")
    ns = await _namespace(request, missing_as_glance=True)
    authorize(request, "modify_metadef_object", target_of(request, ns))
    obj = await request.app[SERVICES].catalog.update_metadef_object(ns, request.match_info["name"], _new_object(body))
    notify(request, "metadef_object.update", object_payload(ns.namespace, obj, old_name=request.match_info["name"]))
    return web.json_response(object_view(ns.namespace, obj, given=body))


async def delete_object(request: web.Request) -> web.Response:
    ns = await _namespace(request, missing_as_glance=True)
    authorize(request, "delete_metadef_object", target_of(request, ns))
    catalog = request.app[SERVICES].catalog
    obj = await catalog.get_metadef_object(ns, request.match_info["name"]) if notifying(request) else None
    await catalog.delete_metadef_object(ns, request.match_info["name"])
    if obj is not None:
        notify(request, "metadef_object.delete", deleted(object_payload(ns.namespace, obj)))
    return web.Response(status=204)


# -- properties ------------------------------------------------------------------------------------

async def list_properties(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "get_metadef_properties", target_of(request, ns))
    properties = await request.app[SERVICES].catalog.list_metadef_properties(ns)
    return web.json_response({"properties": {p.name: _property_schema(p.schema) for p in properties}})


async def create_property(request: web.Request) -> web.Response:
    body = await _body(request, "property")
    ns = await _namespace(request)
    authorize(request, "add_metadef_property", target_of(request, ns))
    schema = _property_input(body)
    prop = await request.app[SERVICES].catalog.create_metadef_property(ns, body["name"], schema)
    notify(request, "metadef_property.create", property_payload(ns.namespace, prop))
    return web.json_response({**_property_schema(prop.schema), "name": prop.name}, status=201)


async def show_property(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    target = target_of(request, ns)
    authorize(request, "get_metadef_property", target)
    name = request.match_info["name"]
    resource_type = request.query.get("resource_type")
    catalog = request.app[SERVICES].catalog
    if resource_type:
        # The name is given with the resource type's prefix; the property is stored without it.
        authorize(request, "get_metadef_resource_type", target)
        association = next((a for a in await catalog.list_associations(ns) if a.name == resource_type), None)
        if association is None:
            raise DoesNotExist(f"The metadata definition resource-type association of resource-type="
                               f"{resource_type} to namespace={ns.namespace}, was not found.")
        prefix = association.prefix
        if not (prefix and name.startswith(prefix)):
            raise DoesNotExist(f"Property {name} does not start with the expected resource type association "
                               f"prefix of '{prefix}'.")
        name = name[len(prefix):]
    prop = await catalog.get_metadef_property(ns, name)
    return web.json_response({**_property_schema(prop.schema), "name": prop.name})


async def update_property(request: web.Request) -> web.Response:
    body = await _body(request, "property")
    ns = await _namespace(request)
    authorize(request, "modify_metadef_property", target_of(request, ns))
    prop = await request.app[SERVICES].catalog.update_metadef_property(ns, request.match_info["name"], body["name"],
                                                               _property_input(body))
    notify(request, "metadef_property.update",
           property_payload(ns.namespace, prop, old_name=request.match_info["name"]))
    return web.json_response({**_property_schema(prop.schema), "name": prop.name})


async def delete_property(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "remove_metadef_property", target_of(request, ns))
    catalog = request.app[SERVICES].catalog
    prop = await catalog.get_metadef_property(ns, request.match_info["name"]) if notifying(request) else None
    await catalog.delete_metadef_property(ns, request.match_info["name"])
    if prop is not None:
        notify(request, "metadef_property.delete", deleted(property_payload(ns.namespace, prop)))
    return web.Response(status=204)


# -- tags ------------------------------------------------------------------------------------------

def _check_tag_name(name: str) -> None:
    # The tag schema's name is a string of at most 80 characters (the column's size).
    if len(name) > 80:
        raise InvalidRequest(f"Provided object does not match schema 'tag': '{name}' is too long")


async def list_tags(request: web.Request) -> web.Response:
    sort_key, sort_dir, limit, marker = _query_choices(request)
    ns = await _namespace(request)
    authorize(request, "get_metadef_tags", target_of(request, ns))
    tags = await request.app[SERVICES].catalog.list_metadef_tags(ns, sort_key=sort_key, sort_dir=sort_dir,
                                                         limit=limit or None, marker=marker or None)
    return web.json_response({"tags": [{"name": t.name} for t in tags]})


async def create_tags(request: web.Request) -> web.Response:
    body = await _body(request, "tags", _TAGS_BODY_SCHEMA)
    ns = await _namespace(request)
    authorize(request, "add_metadef_tags", target_of(request, ns))
    append = (text_header(request, "X-Openstack-Append") or "").strip().lower() in _TRUE
    names = [t["name"] for t in body.get("tags") or []]
    for name in names:
        _check_tag_name(name)
    tags = await request.app[SERVICES].catalog.create_metadef_tags(ns, names, append=append)
    for tag in tags:
        if tag.name in names:
            notify(request, "metadef_tag.create", tag_payload(ns.namespace, tag))
    return web.json_response({"tags": [{"name": t.name} for t in tags]}, status=201)


async def create_tag(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "add_metadef_tag", target_of(request, ns))
    name = request.match_info["name"]
    _check_tag_name(name)
    tag = await request.app[SERVICES].catalog.create_metadef_tag(ns, name)
    notify(request, "metadef_tag.create", tag_payload(ns.namespace, tag))
    return web.json_response(tag_view(tag), status=201)


async def show_tag(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "get_metadef_tag", target_of(request, ns))
    tag = await request.app[SERVICES].catalog.get_metadef_tag(ns, request.match_info["name"])
    return web.json_response(tag_view(tag))


async def update_tag(request: web.Request) -> web.Response:
    body = await _body(request, "tag")
    ns = await _namespace(request)
    authorize(request, "modify_metadef_tag", target_of(request, ns))
    tag = await request.app[SERVICES].catalog.update_metadef_tag(ns, request.match_info["name"], body["name"])
    notify(request, "metadef_tag.update", tag_payload(ns.namespace, tag, old_name=request.match_info["name"]))
    return web.json_response(tag_view(tag))


async def delete_tag(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "delete_metadef_tag", target_of(request, ns))
    catalog = request.app[SERVICES].catalog
    tag = await catalog.get_metadef_tag(ns, request.match_info["name"]) if notifying(request) else None
    await catalog.delete_metadef_tag(ns, request.match_info["name"])
    if tag is not None:
        notify(request, "metadef_tag.delete", deleted(tag_payload(ns.namespace, tag)))
    return web.Response(status=204)


# -- resource types --------------------------------------------------------------------------------

async def list_resource_types(request: web.Request) -> web.Response:
    authorize(request, "list_metadef_resource_types", target_of(request))
    types = await request.app[SERVICES].catalog.list_resource_types()
    return web.json_response({"resource_types": [
        _without_none({"name": t.name, "created_at": isotime(t.created_at), "updated_at": isotime(t.updated_at)})
        for t in types]})


async def list_associations(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "list_metadef_resource_types", target_of(request, ns))
    associations = await request.app[SERVICES].catalog.list_associations(ns)
    return web.json_response({"resource_type_associations": [association_view(a) for a in associations]})


async def create_association(request: web.Request) -> web.Response:
    body = await _body(request, "resource_type_association", _SCHEMAS["resource_type"])
    ns = await _namespace(request)
    authorize(request, "add_metadef_resource_type_association", target_of(request, ns))
    association = await request.app[SERVICES].catalog.create_association(
        ns, NewAssociation(body["name"], body.get("prefix"), body.get("properties_target")))
    notify(request, "metadef_resource_type.create", _association_payload(ns, association))
    return web.json_response(association_view(association), status=201)


def _association_payload(ns: NamespaceRecord, association: AssociationRecord) -> dict[str, Any]:
    return resource_type_payload(ns.namespace, association.name, association.prefix,
                                 association.properties_target, association.created_at, association.updated_at)


async def delete_association(request: web.Request) -> web.Response:
    ns = await _namespace(request)
    authorize(request, "remove_metadef_resource_type_association", target_of(request, ns))
    catalog = request.app[SERVICES].catalog
    name = request.match_info["resource_type"]
    association = (next((a for a in await catalog.list_associations(ns) if a.name == name), None)
                   if notifying(request) else None)
    await catalog.delete_association(ns, name)
    if association is not None:
        notify(request, "metadef_resource_type.delete", deleted(_association_payload(ns, association)))
    return web.Response(status=204)


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    base = prefix + "/metadefs"
    ns = base + "/namespaces/{namespace}"
    r.add_get(base + "/namespaces", list_namespaces)
    r.add_post(base + "/namespaces", create_namespace)
    r.add_get(ns, show_namespace)
    r.add_put(ns, update_namespace)
    r.add_delete(ns, delete_namespace)
    r.add_get(ns + "/objects", list_objects)
    r.add_post(ns + "/objects", create_object)
    r.add_delete(ns + "/objects", _delete_contents("objects"))
    r.add_get(ns + "/objects/{name}", show_object)
    r.add_put(ns + "/objects/{name}", update_object)
    r.add_delete(ns + "/objects/{name}", delete_object)
    r.add_get(ns + "/properties", list_properties)
    r.add_post(ns + "/properties", create_property)
    r.add_delete(ns + "/properties", _delete_contents("properties"))
    r.add_get(ns + "/properties/{name}", show_property)
    r.add_put(ns + "/properties/{name}", update_property)
    r.add_delete(ns + "/properties/{name}", delete_property)
    r.add_get(ns + "/tags", list_tags)
    r.add_post(ns + "/tags", create_tags)
    r.add_delete(ns + "/tags", _delete_contents("tags"))
    r.add_post(ns + "/tags/{name}", create_tag)
    r.add_get(ns + "/tags/{name}", show_tag)
    r.add_put(ns + "/tags/{name}", update_tag)
    r.add_delete(ns + "/tags/{name}", delete_tag)
    r.add_get(base + "/resource_types", list_resource_types)
    r.add_get(ns + "/resource_types", list_associations)
    r.add_post(ns + "/resource_types", create_association)
    r.add_delete(ns + "/resource_types/{resource_type}", delete_association)
