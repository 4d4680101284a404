"""``/v2/images``: create, list, show, update (JSON patch), delete, deactivate, reactivate, and the
locations API (2.17: ``/v2/images/{id}/locations``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.parse
from typing import Any, Callable

import jsonschema
from aiohttp import web

from ..catalog.query import is_uuid_like, parse_list_params
from ..catalog.records import ImageRecord, Location
from ..catalog.values import INTEGER_MAX, short_number
from ..errors import InvalidRequest, StateConflict as Conflict, NotPermitted, DoesNotExist, QuotaExceeded
from ..pipeline import locations as image_locations
from ..pipeline.locations import locations_view
from ..policy import ImagePolicy, enforce_add_image, image_target, list_target
from .errors import ProtocolError
from .inputs import json_body
from .keys import SERVICES, context_of, notify, request_id_of
from ..notifications import deleted as deleted_payload, image_payload
from .schemas import image_base_properties, validate_image
from .views import image_view

READ_ONLY = ("created_at", "updated_at", "status", "checksum", "size", "virtual_size", "id",
             "os_hash_algo", "os_hash_value")
# Shown by the API but never settable, on create (Glance rejects these with 403 too).
GENERATED = ("direct_url", "self", "file", "schema", "stores")
RESERVED = ("location", "deleted", "deleted_at")
# Image attributes stored as columns; every other key is an extra property.
SETTABLE_BASE = ("name", "visibility", "protected", "os_hidden", "disk_format", "container_format",
                 "min_disk", "min_ram", "owner")
# Formats can change only while the image has no data (Glance's domain rule).
QUEUED_ONLY = ("disk_format", "container_format")

PATCH_MEDIA_TYPES = ("application/openstack-images-v2.1-json-patch", "application/openstack-images-v2.0-json-patch")
MAX_PROPERTY_VALUE = 65535


def _check_allowed(name: str, *, creating: bool) -> None:
    if creating and name == "id":
        return  # a client may choose the id of a new image
    if name in READ_ONLY or name in GENERATED:
        raise NotPermitted(f"Attribute '{name}' is read-only.")
    if name in RESERVED or name.startswith("os_glance"):
        raise NotPermitted(f"Attribute '{name}' is reserved.")
    if creating and name == "locations":
        raise NotPermitted("Attribute 'locations' is read-only.")


def _check_property(name: str, value: Any) -> None:
    if len(name) > 255:
        raise InvalidRequest(f"Property names are at most 255 characters: {name[:32]}...")
    if isinstance(value, str) and len(value) > MAX_PROPERTY_VALUE:
        raise InvalidRequest(f"Value of property {name} is longer than {MAX_PROPERTY_VALUE} characters")


def _check_base_value(name: str, value: Any) -> None:
    if name in ("min_disk", "min_ram") and isinstance(value, int):
        if value < 0:
            raise InvalidRequest(f"{name} must be >= 0")
        if value > INTEGER_MAX:  # the column is a 32-bit INTEGER
            raise InvalidRequest(f"{name} must be <= {INTEGER_MAX}, not {short_number(value)}")


def _image_url(request: web.Request, image_id: str) -> str:
    config = request.app[SERVICES].config
    base = (config.default.public_endpoint or f"{request.scheme}://{request.host}").rstrip("/")
    return f"{base}/v2/images/{image_id}"


async def _get_visible(request: web.Request, image_id: str) -> ImageRecord:
    """The image, if the caller can find it at all (the catalogue's visibility, Glance's
    ``image_repo.get``): 404 otherwise. The rules are checked by the caller, on what is found."""
    ctx = context_of(request)
    if not is_uuid_like(image_id):
        raise DoesNotExist(f"No image found with ID {image_id}")
    return await request.app[SERVICES].catalog.get_image(image_id, ctx)


def _readable(request: web.Request) -> Callable[[str], bool] | None:
    """Which extra properties this caller may read (None: all), each name decided once per request."""
    protections = request.app[SERVICES].protections
    if protections is None:
        return None
    ctx = context_of(request)
    decided: dict[str, bool] = {}

    def readable(name: str) -> bool:
        if name not in decided:
            decided[name] = protections.allows(ctx, name, "read")
        return decided[name]

    return readable


def view_for(request: web.Request, image: ImageRecord,
             readable: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The image as this caller may see it: only the extra properties the property protections
    let it read (``readable``, from :func:`_readable`, to share the decisions over a list)."""
    config = request.app[SERVICES].config
    # The stores in the locations' order: by weight, as Glance 33 sorts an image's locations.
    stores = tuple(dict.fromkeys(loc.store for loc in image_locations.ordered(image.locations, config)))
    show_all, show_direct = config.default.show_multiple_locations, config.default.show_image_direct_url
    if not (show_all or show_direct):
        return image_view(image, readable or _readable(request), stores=stores)
    # Whoever may see the image sees its locations: Glance 33's serializer reads them without
    # asking get_image_location (that rule guards the PATCH paths), so Nova booting another
    # project's public image gets its direct_url.
    visible = locations_view(image, config)
    return image_view(image, readable or _readable(request), locations=visible if show_all else None,
                      direct_url=visible[0]["url"] if show_direct and visible else None, stores=stores)


def _check_protection(request: web.Request, name: str, operation: str) -> None:
    """403 unless the property protections let the caller ``operation`` the extra property ``name``."""
    protections = request.app[SERVICES].protections
    if protections is not None and not protections.allows(context_of(request), name, operation):
        raise NotPermitted(f"Attribute '{name}' is reserved.")


def image_policy(request: web.Request, image: ImageRecord) -> ImagePolicy:
    """The rules of ``image`` for this request's caller."""
    return ImagePolicy(request.app[SERVICES].policy, context_of(request), image)


# -- create -----------------------------------------------------------------------------

async def create_image(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("Image body must be a JSON object")
    image = await create_from_document(request, body)
    notify(request, "image.create", image_payload(image))
    headers = {
        "Location": _image_url(request, image.id),
        "OpenStack-image-import-methods": ",".join(config.default.enabled_import_methods),
        "OpenStack-image-store-ids": ",".join(s.name for s in config.stores),
    }
    return web.json_response(view_for(request, image), status=201, headers=headers)


async def create_from_document(request: web.Request, body: dict[str, Any]) -> ImageRecord:
    """A new image from a create document (POST /v2/images, and a legacy import task's
    ``image_properties``), checked as Glance checks it."""
    config = request.app[SERVICES].config
    ctx = context_of(request)
    for key in body:
        _check_allowed(key, creating=True)
    validate_image(config, body)
    base, properties, tags = _split_document(body)
    for name, value in properties.items():
        _check_property(name, value)
    for name, value in base.items():
        _check_base_value(name, value)
    if "id" in body:
        if not is_uuid_like(body["id"]):
            raise InvalidRequest(f"Invalid image id {body['id']}")
        base["id"] = body["id"]
    # add_image (the owner must be the caller's project unless admin), then publicize/communitize.
    enforce_add_image(request.app[SERVICES].policy, ctx, base.get("owner"), base.get("visibility"))
    base.setdefault("owner", ctx.project_id)
    quota = request.app[SERVICES].quotas.for_project(ctx.project_id)
    if quota is not None:
        await quota.check_create()  # image_count_total, before the tag and property quotas (Glance's order)
    # Property protections, before the property quota (Glance's outermost image factory).
    for name in properties:
        _check_protection(request, name, "create")
    _check_quota("image_property_quota", config.default.image_property_quota, len(properties))
    _check_quota("image_tag_quota", config.default.image_tag_quota, len(set(tags)))
    return await request.app[SERVICES].catalog.create_image(base, properties, tags)


def _check_quota(name: str, limit: int, count: int) -> None:
    if limit >= 0 and count > limit:
        what = {"image_property_quota": "properties", "image_tag_quota": "tags"}.get(name, name)
        raise QuotaExceeded(f"The limit has been exceeded on the number of allowed image {what}. "
                            f"Attempted: {count}, Maximum: {limit}")


def _split_document(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    base: dict[str, Any] = {}
    properties: dict[str, str] = {}
    tags: list[str] = []
    for key, value in body.items():
        if key == "tags":
            tags = list(dict.fromkeys(value))
        elif key == "id":
            continue
        elif key in SETTABLE_BASE:
            base[key] = value
        else:
            properties[key] = value
    return base, properties, tags


# -- read -------------------------------------------------------------------------------

async def show_image(request: web.Request) -> web.Response:
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce("get_image")
    return web.json_response(view_for(request, image))


async def list_images(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config
    ctx = context_of(request)
    enforcer = request.app[SERVICES].policy
    # "May this caller list images at all"; each image found must then pass get_image (Glance's index).
    enforcer.enforce(ctx, "get_images", list_target(ctx))
    params = list(request.query.items())
    query = parse_list_params(params, limit_default=config.default.limit_param_default,
                              limit_max=config.default.api_limit_max)
    images, full = await request.app[SERVICES].catalog.list_images(ctx, query)
    # Paging follows what the catalogue returned (``full``), as Glance's next marker follows its
    # database count, even when the rule leaves fewer on the page.
    # (get_image carries no legacy owner check: allowing is passing, as ImagePolicy.check says.)
    allowed = enforcer.allows_each(ctx, "get_image", [image_target(ctx, i) for i in images])
    images = [i for i, ok in zip(images, allowed) if ok]
    without_marker = [(k, v) for k, v in params if k != "marker"]
    readable = _readable(request)
    body: dict[str, Any] = {
        "images": [view_for(request, i, readable) for i in images],
        "first": "/v2/images" + (f"?{urllib.parse.urlencode(without_marker)}" if without_marker else ""),
        "schema": "/v2/schemas/images",
    }
    if full and images:
        body["next"] = "/v2/images?" + urllib.parse.urlencode(without_marker + [("marker", images[-1].id)])
    return web.json_response(body)


# -- update (JSON patch) -------------------------------------------------------------------

def _decode_pointer(pointer: Any) -> list[str]:
    """A JSON pointer as Glance accepts it: ``/``-separated, ``~0``/``~1`` escapes, blanks stripped."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise InvalidRequest(f"Pointer `{pointer}` does not start with \"/\".")
    if re.search(r"/\s*?/", pointer[1:]):
        raise InvalidRequest(f"Pointer `{pointer}` contains adjacent \"/\".")
    if len(pointer) > 1 and pointer.endswith("/"):
        raise InvalidRequest(f"Pointer `{pointer}` end with \"/\".")
    if pointer[1:].strip() == "/":
        raise InvalidRequest(f"Pointer `{pointer}` does not contains valid token.")
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise InvalidRequest(f"Pointer `{pointer}` contains \"~\" not part of a recognized escape sequence.")
    return [p.replace("~1", "/").replace("~0", "~").strip() for p in pointer[1:].split("/")]


# Glance's ``_path_depth_limits``: every path is one token deep, except location add/remove (/locations/N).
_PATH_DEPTH = {"locations": {"add": 2, "remove": 2, "replace": 1}}


def _check_change(config: Any, op: str, path: list[str], value: Any) -> None:
    """What Glance's deserializer checks per change: read-only/reserved (403), then the schema (400)."""
    name = path[0]
    _check_allowed(name, creating=False)
    if op == "remove":
        return
    if len(path) == 1:
        validate_image(config, {name: value})
    elif name == "locations":
        validate_image(config, {name: [value]})


def _parse_changes(body: Any, media_type: str, config: Any = None) -> list[dict[str, Any]]:
    """Parse and check the whole change list before the image is looked up (Glance's order)."""
    if not isinstance(body, list):
        raise InvalidRequest("Request body must be a JSON array of operation objects.")
    draft4 = media_type.endswith("v2.0-json-patch")
    changes = []
    for raw in body:
        if not isinstance(raw, dict):
            raise InvalidRequest("Operations must be JSON objects.")
        if draft4:
            ops = [op for op in ("add", "remove", "replace") if op in raw]
            if len(ops) != 1:
                raise InvalidRequest("Operation objects must contain exactly one member named \"add\", \"remove\", or \"replace\".")
            op, pointer = ops[0], raw[ops[0]]
        else:
            op, pointer = raw.get("op"), raw.get("path")
            if op not in ("add", "remove", "replace"):
                raise InvalidRequest(f"Invalid operation: `{op}`. It must be one of the following: add, remove, replace."
                                 if op is not None
                                 else "Unable to find `op` in JSON Schema change. It must be one of the following: add, remove, replace.")
            if "path" not in raw:
                raise InvalidRequest("Unable to find 'path' in JSON Schema change")
        path = _decode_pointer(pointer)
        if len(path) != _PATH_DEPTH.get(path[0], {}).get(op, 1):
            raise InvalidRequest(f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
        change: dict[str, Any] = {"op": op, "name": path[0], "path": path, "draft4": draft4}
        if op != "remove":
            if "value" not in raw:
                raise InvalidRequest(f"Operation \"{op}\" requires a member named \"value\".")
            change["value"] = raw["value"]
        if config is not None:
            _check_change(config, op, path, change.get("value"))
        changes.append(change)
    return changes


async def update_image(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config
    ctx = context_of(request)
    media_type = request.content_type
    if media_type not in PATCH_MEDIA_TYPES:
        raise ProtocolError(415, f"Image PATCH expects Content-Type one of: {', '.join(sorted(PATCH_MEDIA_TYPES))}",
                            headers={"Accept-Patch": ", ".join(sorted(PATCH_MEDIA_TYPES))})
    # Glance's deserializer parses and checks every change before the image is looked up.
    changes = _parse_changes(await json_body(request), media_type, config)
    image = await _get_visible(request, request.match_info["image_id"])
    if not changes:
        # Glance checks policies per change and saves only if there was one: nothing to refuse.
        return web.json_response(view_for(request, image))
    rules = image_policy(request, image)
    # Extra properties the caller may not read are absent for this request (Glance's protected
    # image): changing one is a 409 "does not exist", adding one needs the create permission.
    protections = request.app[SERVICES].protections
    hidden: dict[str, str] = {}
    if protections is not None:
        hidden = {k: v for k, v in image.properties.items() if not protections.allows(ctx, k, "read")}

    base_names = set(image_base_properties(config))
    new_base: dict[str, Any] = {}
    props = {k: v for k, v in image.properties.items() if k not in hidden}
    tags: list[str] | None = None
    edits = image_locations.LocationEdits(image, config, request.app[SERVICES].stores,
                                          check_url=location_url_check(request))
    for change in changes:
        name, op = change["name"], change["op"]
        value = change.get("value")
        if name == "locations":
            if op == "replace" and not value:
                raise NotPermitted("Cannot set locations to empty list.")
            rules.enforce("delete_image_location" if op == "remove" else "set_image_location")
            # Refused while show_multiple_locations is off (Glance's default), with Glance's checks otherwise.
            if op == "add":
                await edits.add(change["path"][1], value)
            elif op == "replace":
                await edits.replace(value)
            else:
                try:
                    await edits.remove(change["path"][1])
                except NotPermitted as exc:
                    if exc.message != image_locations.LAST_LOCATION:
                        raise
                    # Glance: HTTPForbidden(e.msg), the message as webob's detail.
                    raise ProtocolError(403, "Access was denied to this resource.", detail=exc.message) from None
            continue
        if op == "replace" and name == "owner" and not ctx.is_admin:
            raise NotPermitted("Owner can't be updated by non admin.")
        # Per change, as Glance: publicize_image/communitize_image for a new visibility (on every
        # change to public, even when it already is), then modify_image.
        rules.update_property(name, value if op != "remove" else None)
        if name in base_names:
            if op == "remove":
                raise NotPermitted(f"Property {name} may not be removed.")
            if op == "add" and change["draft4"]:
                raise Conflict(f"Property {name} already present.")
            if name == "owner" and not ctx.is_admin:
                # Glance lets "add /owner" through (only replace is guarded); streamd refuses both.
                raise NotPermitted("Owner can't be updated by non admin.")
            if name == "tags":
                tags = list(dict.fromkeys(value))
                _check_tags(tags)
                _check_quota("image_tag_quota", config.default.image_tag_quota, len(tags))
                continue
            _check_base_value(name, value)
            if name in QUEUED_ONLY and image.status not in ("queued", "importing"):
                raise NotPermitted(f"Attribute {name} can be only replaced for a queued image.")
            new_base[name] = value
        elif op == "remove":
            if name not in props:
                raise Conflict(f"Property {name} does not exist.")
            _check_protection(request, name, "delete")
            del props[name]
        elif op == "replace":
            if name not in props:
                raise Conflict(f"Property {name} does not exist.")
            _check_property(name, value)
            _check_protection(request, name, "update")
            props[name] = value
        else:
            if name in props and change["draft4"]:
                raise Conflict(f"Property {name} already present.")
            _check_property(name, value)
            _check_protection(request, name, "update" if name in props else "create")
            props[name] = value

    # What the caller could not read stays as it was (an add it may create replaces it).
    _check_property_quota(config.default.image_property_quota, image.properties, {**hidden, **props})
    removed = set(image.properties) - set(props) - set(hidden)
    updated = {k: v for k, v in props.items() if image.properties.get(k) != v or k in hidden}
    if edits.changed:
        await edits.check_removable()  # 409 while RBD clones use the data of a removed location
        quota = request.app[SERVICES].quotas.for_project(ctx.project_id)
        if quota is not None:
            await quota.before_locations(image.id, edits.size, len(edits.before), len(edits.added))
    image = await request.app[SERVICES].catalog.update_image(
        image.id, changes={**new_base, **edits.values}, set_properties=updated, remove_properties=removed, tags=tags,
        tag_quota=config.default.image_tag_quota,
        locations=edits.locations if edits.changed else None, expected_locations=edits.before)
    if edits.changed:
        await edits.delete_removed()
    notify(request, "image.update", image_payload(image))
    return web.json_response(view_for(request, image))


def _check_property_quota(limit: int, before: dict[str, str], after: dict[str, str]) -> None:
    """Glance checks on save, and only when a new key appears; its own os_glance_* keys do not count."""
    if limit < 0 or not set(after) - set(before):
        return
    count = sum(1 for key in after if not key.startswith("os_glance"))
    if count > limit:
        raise QuotaExceeded("The limit has been exceeded on the number of allowed image properties. "
                            f"Attempted: {count}, Maximum: {limit}")


def _check_tags(tags: list[str]) -> None:
    for tag in tags:
        if len(tag) > 255:
            raise InvalidRequest("Image tag exceeds the maximum length of 255 characters")


# -- delete, deactivate, reactivate --------------------------------------------------------

async def delete_image(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce("delete_image")
    if image.protected:
        raise NotPermitted(f"Image {image.id} is protected and cannot be deleted.")
    stores = request.app[SERVICES].stores
    delayed = request.app[SERVICES].config.default.delayed_delete
    if not delayed:  # delayed (Glance): the data stays, so clones are the scrubber's concern
        for location in image.locations:
            store = stores.for_location(location.store)
            if store is not None:
                await store.check_deletable(location.url)  # 409 while RBD clones depend on it
    deleted = await request.app[SERVICES].catalog.delete_image(image.id, delayed=delayed)
    notify(request, "image.delete", deleted_payload(image_payload(deleted)))
    await asyncio.to_thread(request.app[SERVICES].importer.staging.remove, image.id)
    cache = request.app[SERVICES].cache
    if cache is not None:  # also when delayed, as Glance's cache does: the image is gone from the API
        with contextlib.suppress(DoesNotExist):
            await cache.delete(image.id)
    if deleted.status == "pending_delete":
        return web.Response(status=204)  # the scrubber deletes the data after scrub_time
    for location in deleted.locations:
        store = stores.for_location(location.store)
        if store is not None:
            await store.delete(location.url)
    return web.Response(status=204)


async def _toggle_active(request: web.Request, action: str, source: str, target: str) -> web.Response:
    """deactivate (active -> deactivated) and reactivate (the reverse): a no-op when already there."""
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce(action)
    if image.status == target:
        return web.Response(status=204)
    if image.status != source:
        raise NotPermitted(f"Not allowed to {action} image in status '{image.status}'")
    image = await request.app[SERVICES].catalog.transition(image.id, source, target)
    notify(request, "image.update", image_payload(image))
    return web.Response(status=204)


async def deactivate_image(request: web.Request) -> web.Response:
    return await _toggle_active(request, "deactivate", "active", "deactivated")


async def reactivate_image(request: web.Request) -> web.Response:
    return await _toggle_active(request, "reactivate", "deactivated", "active")


# -- the locations API (2.17) ---------------------------------------------------------------

# Glance's add-location body schema (glance/api/v2/images.py get_location_schema), checked as
# {"add_location": body} with the newest draft, as jsonschema.validate does (dependentRequired).
_ADD_LOCATION_SCHEMA: dict[str, Any] = {
    "name": "location",
    "properties": {"add_location": {
        "type": "object",
        "properties": {
            "url": {"type": "string", "readOnly": True},
            "validation_data": {
                "type": "object", "writeOnly": True, "additionalProperties": False,
                "properties": {"os_hash_algo": {"type": "string", "maxLength": 64,
                                                "enum": ["sha1", "sha256", "sha512", "md5"]},
                               "os_hash_value": {"type": "string", "maxLength": 128}},
                "dependentRequired": {"os_hash_value": ["os_hash_algo"], "os_hash_algo": ["os_hash_value"]},
            },
        },
        "required": ["url"],
    }},
    "additionalProperties": {"type": "string"},
}


def _check_add_location_body(body: Any) -> None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(_ADD_LOCATION_SCHEMA).iter_errors({"add_location": body}))
    if error is not None:
        raise InvalidRequest(f"Provided object does not match schema 'location': {error}")


def location_url_check(request: web.Request) -> Callable[[str], None]:
    """Web-download's filtering rules on an http(s) location a client adds (Glance 33 runs them on
    the 2.17 call; streamd on PATCH /locations too), with Glance's message."""
    uri_filter = request.app[SERVICES].importer.uri_filter

    def check(url: str) -> None:
        try:
            uri_filter.check(url)
        except InvalidRequest:
            raise InvalidRequest(f"URI for add location does not pass filtering: {url}") from None
    return check


async def add_location(request: web.Request) -> web.Response:
    """``POST /v2/images/{id}/locations``: a queued image gets its data's location (a service's
    call: Nova or Cinder that wrote the data into a store themselves; anyone's, for an http
    location where an http store is enabled) and becomes active through a ``location_import``
    task (``imports.location_import``), as in Glance 33.

    Unlike Glance, a URL that names no data in this node's stores is a 400 here, before the
    202 (Glance fails the task instead): the size is known before the task starts."""
    services = request.app[SERVICES]
    config = services.config
    body = await json_body(request)
    _check_add_location_body(body)
    image = await _get_visible(request, request.match_info["image_id"])
    if image.status != "queued":
        raise Conflict(f"It's not allowed to add locations if image status is {image.status}.")
    image_policy(request, image).enforce("add_image_location")
    ctx = context_of(request)
    url = body["url"]
    http_url = url.startswith("http")
    if "service" not in ctx.roles | ctx.service_roles:
        if not (http_url and any(s.type == "http" for s in config.stores)):
            raise NotPermitted("http store must be enabled to use location API by normal user.")
    validation = body.get("validation_data") or {}
    image_locations.check_hashing_data(validation, config.default.hashing_algorithm)
    resolved = await image_locations.resolve(services.stores, config, url, check_url=location_url_check(request))
    if not (image.disk_format and image.container_format):
        raise InvalidRequest("Properties disk_format, container_format must be set prior to saving data.")
    quota = services.quotas.for_project(ctx.project_id)
    if quota is not None:
        await quota.before_locations(image.id, resolved.size, 0, 1)
    await services.importer.start_location_import(
        image.id, store=resolved.store, url=resolved.url, size=resolved.size, validation=validation,
        owner=ctx.project_id, user_id=ctx.user_id, request_id=request_id_of(request))
    return web.Response(status=202)


async def get_locations(request: web.Request) -> web.Response:
    """``GET /v2/images/{id}/locations``: every location of the image (fetch_image_location, a
    service's rule), whatever show_multiple_locations says."""
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce("fetch_image_location")
    return web.json_response(locations_view(image, request.app[SERVICES].config))


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/images", list_images)
    r.add_post(prefix + "/images", create_image)
    r.add_get(prefix + "/images/{image_id}", show_image)
    r.add_patch(prefix + "/images/{image_id}", update_image)
    r.add_delete(prefix + "/images/{image_id}", delete_image)
    r.add_post(prefix + "/images/{image_id}/actions/deactivate", deactivate_image)
    r.add_post(prefix + "/images/{image_id}/actions/reactivate", reactivate_image)
    r.add_post(prefix + "/images/{image_id}/locations", add_location)
    r.add_get(prefix + "/images/{image_id}/locations", get_locations)
