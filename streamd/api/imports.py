"""Interoperable import: ``/stage``, ``/import``, the tasks API, discovery and per-store delete.

Glance's answers where clients can see them (``glance/api/v2/images.py``
``import_image`` and ``delete_from_store``, ``image_data.stage``,
``discovery.py``); the import itself runs in ``imports.Importer``.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from ..catalog import TaskRecord
from ..catalog.catalog import STAGE_HOST
from ..catalog.records import isotime, utcnow
from ..config import Config
from ..errors import PeerFailed, InvalidRequest, StateConflict, NotPermitted, PeerUnreachable, DoesNotExist
from ..imports import ImportPlan
from ..imports.glance_download import RemoteImage
from ..imports.web import SUPPORTED_SCHEMES as WEB_DOWNLOAD_SCHEMES
from .image_data import _body_chunks, _declared_size
from ..policy import NOT_FOUND
from .images import _get_visible, image_policy
from .inputs import json_body, require_content_type, text_header
from .keys import SERVICES, context_of, request_id_of

# -- PUT /stage ---------------------------------------------------------------------------------


async def stage(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config
    if "glance-direct" not in config.default.enabled_import_methods:
        raise DoesNotExist("The glance-direct import method is not enabled")
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    # Staging has no rule of its own: Glance checks modify_image.
    image_policy(request, image).enforce("modify_image")
    require_content_type(request, "application/octet-stream", "image data")
    services = request.app[SERVICES]
    async with services.uploads.track():
        await services.importer.stage(image, _body_chunks(request), declared_size=_declared_size(request),
                                      quota=services.quotas.for_project(ctx.project_id))
    return web.Response(status=204)


# -- POST /import -----------------------------------------------------------------------------------


async def import_image(request: web.Request) -> web.Response:
    config = request.app[SERVICES].config
    ctx = context_of(request)
    quota = request.app[SERVICES].quotas.for_project(ctx.project_id)
    if quota is not None:
        await quota.before_import()  # Glance checks image_size_total before it looks at the image
    image = await _get_visible(request, request.match_info["image_id"])
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("method"), dict):
        raise InvalidRequest("Import request requires a 'method' object")
    method = body["method"].get("name")
    if method not in config.default.enabled_import_methods:
        raise InvalidRequest(f"Import method {method} is not valid or not enabled at this site "
                         f"(enabled: {', '.join(config.default.enabled_import_methods)})")
    must_succeed = body.get("all_stores_must_succeed", True)
    if not isinstance(must_succeed, bool):
        raise InvalidRequest("all_stores_must_succeed must be a boolean")
    if image.status == "active" and method != "copy-image":
        raise StateConflict("Image with status active cannot be target for import")  # Glance's words
    if method == "copy-image" and image.status != "active":
        raise StateConflict(f"Image {image.id} is {image.status}: copy-image needs an active image")
    if method == "web-download" and image.status != "queued":
        raise StateConflict(f"Image {image.id} is {image.status}: web-download needs a queued image")
    if method == "glance-download" and image.status != "queued":
        raise StateConflict("Image needs to be in 'queued' state to use 'glance-download' method")
    if method == "glance-direct" and image.status != "uploading":
        raise StateConflict(f"Image {image.id} is {image.status}: glance-direct needs staged data (PUT /stage)")
    if not (image.disk_format and image.container_format):
        raise StateConflict("'disk_format' and 'container_format' must be set prior to import")
    remote = RemoteImage.from_request(body["method"]) if method == "glance-download" else None
    # Glance's order: the image's state (409) first, then the rule: copy-image has its own, any
    # other method changes the image (modify_image); then the stores.
    image_policy(request, image).enforce("copy_image" if method == "copy-image" else "modify_image")
    stores = _target_stores(request, body, image.stores if method == "copy-image" else ())
    if method == "copy-image" and not stores:
        return web.Response(status=202)  # every store already holds the image (all_stores): nothing to do
    importer = request.app[SERVICES].importer
    uri = None
    if method == "web-download":
        uri = body["method"].get("uri")
        if not isinstance(uri, str) or not uri:
            raise InvalidRequest("web-download needs a 'uri'")
        importer.uri_filter.check(uri)
        # The filter decides which schemes are allowed (Glance's allowed_schemes); these are what
        # web-download can fetch at all.
        if uri.split(":", 1)[0].lower() not in WEB_DOWNLOAD_SCHEMES:
            raise InvalidRequest(f"web-download fetches {', '.join(sorted(WEB_DOWNLOAD_SCHEMES))} URIs only")
    if method == "glance-direct" and importer.staging.load(image.id) is None:
        stage_host = image.properties.get(STAGE_HOST, "")
        if stage_host.startswith(("http://", "https://")) and stage_host.rstrip("/") != _own_url(config):
            # Staged on another node sharing the catalogue: that node imports it (Glance proxies too).
            return await _proxy_to_stage_host(request, stage_host, body)
        raise StateConflict(f"Image {image.id} has no staged data on this node")
    await importer.start(ImportPlan(image.id, method, tuple(stores), must_succeed, uri, tuple(ctx.roles),
                                    remote=remote, auth_token=request.headers.get("X-Auth-Token")),
                         owner=ctx.project_id, user_id=ctx.user_id,
                         request_id=request_id_of(request))
    return web.Response(status=202)


def _own_url(config: Config) -> str:
    return (config.default.peer_url or config.default.public_endpoint or "").rstrip("/")


# Identity and store headers go along; the other node checks them again itself.
_PROXIED_HEADERS = ("X-Auth-Token", "X-Project-Id", "X-Tenant-Id", "X-User-Id", "X-Roles", "X-Image-Meta-Store",
                    "X-Openstack-Request-Id")


async def _proxy_to_stage_host(request: web.Request, stage_host: str, body: dict[str, Any]) -> web.Response:
    """Pass the import to the node holding the staged data: its answer, 504 if it cannot be reached,
    502 if the exchange fails (Glance's ``_proxy_request_to_host``)."""
    url = f"{stage_host.rstrip('/')}/v2/images/{request.match_info['image_id']}/import"
    headers = {k: v for k, v in request.headers.items() if k in _PROXIED_HEADERS}
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, json=body, headers=headers) as reply:
                return web.Response(status=reply.status, body=await reply.read(),
                                    content_type=reply.content_type if reply.content_length else None)
    except (aiohttp.ClientConnectorError, TimeoutError) as exc:
        raise PeerUnreachable(f"The node holding the staged data ({stage_host}) cannot be reached: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise PeerFailed(f"Passing the import to the node holding the staged data ({stage_host}) failed: "
                         f"{exc}") from exc


def _target_stores(request: web.Request, body: dict[str, Any], holding: tuple[str, ...]) -> list[str]:
    """Glance's rules: the header, ``stores`` or ``all_stores`` (never two of them), else the default."""
    registry = request.app[SERVICES].stores
    header = text_header(request, "X-Image-Meta-Store")
    stores = body.get("stores")
    all_stores = body.get("all_stores", False)
    if not isinstance(all_stores, bool):
        raise InvalidRequest("all_stores must be a boolean")
    if header is not None and stores is not None:
        raise InvalidRequest("Both the X-Image-Meta-Store header and the stores parameter are given")
    if all_stores and (stores is not None or header is not None):
        raise InvalidRequest("all_stores cannot be combined with stores or the X-Image-Meta-Store header")
    if all_stores:
        # Read-only (http) stores are no import's target, as Glance's _get_available_stores.
        return [name for name, store in registry.by_name.items() if name not in holding and not store.read_only]
    if stores is None:
        names = [header] if header is not None else [registry.default]
    elif isinstance(stores, list) and stores and all(isinstance(s, str) for s in stores):
        names = list(dict.fromkeys(stores))
    else:
        raise InvalidRequest("stores must be a non-empty list of store names")
    for name in names:
        registry.writable(name)  # 400 for an unknown or a read-only store
        if name in holding:
            raise InvalidRequest(f"Image is already present at store '{name}'")
    return names


# -- DELETE /stores/{store}/{image} -------------------------------------------------------------------


async def delete_from_store(request: web.Request) -> web.Response:
    ctx = context_of(request)
    store_id = request.match_info["store_id"]
    store = request.app[SERVICES].stores.for_location(store_id)
    if store is None:
        raise StateConflict(f"The selected store {store_id} is not available on this node.")
    image_id = request.match_info["image_id"]
    try:
        image = await _get_visible(request, image_id)
    except DoesNotExist as exc:
        raise DoesNotExist(f"Failed to find image {image_id}") from exc
    # Glance's order: get_image_location, delete_image_location, then the image's state.
    rules = image_policy(request, image)
    rules.enforce("get_image_location")
    rules.enforce("delete_image_location")
    if image.status != "active":
        raise StateConflict("It's not allowed to remove image data from store if image status is not 'active'")
    # (Glance 33 refuses the only location, 403, before it looks for the store, 404; streamd
    # answers 404 first for a store that does not hold the image.)
    if store_id not in image.stores:
        raise DoesNotExist(f"Image {image.id} is not stored in store {store_id}.")
    if len(image.locations) == 1:
        raise NotPermitted("Cannot delete image data from the only store containing it. "
                        "Consider deleting the image instead.")
    location = next(loc for loc in image.locations if loc.store == store_id)
    await store.check_deletable(location.url)  # 409 while RBD clones depend on it
    await request.app[SERVICES].catalog.remove_location(image.id, store_id)
    await store.delete(location.url)
    # The cache keeps its own verified copy: it is not tied to one store.
    return web.Response(status=204)


# -- tasks ------------------------------------------------------------------------------------------------


def task_view(task: TaskRecord, *, full: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": task.id, "type": task.type, "status": task.status, "owner": task.owner,
        "expires_at": isotime(task.expires_at), "created_at": isotime(task.created_at),
        "updated_at": isotime(task.updated_at), "self": f"/v2/tasks/{task.id}", "schema": "/v2/schemas/task",
    }
    if full:
        view.update(input=task.input, result=task.result, message=task.message, image_id=task.image_id,
                    request_id=task.request_id, user_id=task.user_id)
    return view


async def image_tasks(request: web.Request) -> web.Response:
    # Glance answers a bare 404 both for an image it cannot find and for one get_image refuses.
    try:
        image = await _get_visible(request, request.match_info["image_id"])
        image_policy(request, image).enforce("get_image")
    except (DoesNotExist, NotPermitted) as exc:
        raise DoesNotExist(NOT_FOUND) from exc
    tasks = await request.app[SERVICES].catalog.list_tasks(image_id=image.id)
    return web.json_response({"tasks": [task_view(t) for t in tasks]})


def _require_tasks_access(request: web.Request) -> None:
    # Glance 33 registers get_task(s)/add_task/modify_task but decides access by this rule alone.
    request.app[SERVICES].policy.enforce(context_of(request), "tasks_api_access", {})


TASK_STATUSES = ("pending", "processing", "success", "failure")
TASK_TYPES = ("import",)  # the only type Glance's filter takes (its imports' tasks are api_image_import)


def _task_list_params(request: web.Request) -> tuple[dict[str, str], dict[str, Any]]:
    """Glance 33's tasks RequestDeserializer.index, in its order and words: the query as Glance reads
    it (one value per name, the last; in the order the names first came) and the list's arguments."""
    params: dict[str, str] = {}
    for name in request.query:
        params[name] = request.query.getall(name)[-1]
    rest = dict(params)
    limit, marker = rest.pop("limit", None), rest.pop("marker", None)
    sort_key, sort_dir = rest.pop("sort_key", "created_at"), rest.pop("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid sort direction: {sort_dir}")
    if rest.get("status") and rest["status"] not in TASK_STATUSES:
        raise InvalidRequest(f"Invalid status value: {rest['status']}")
    if rest.get("type") and rest["type"] not in TASK_TYPES:
        raise InvalidRequest(f"Invalid type value: {rest['type']}")
    if marker and not _uuid_like(marker):
        raise InvalidRequest("Invalid marker format")
    default = request.app[SERVICES].config.default
    page = default.limit_param_default
    if limit is not None:
        try:
            page = int(limit)
        except ValueError:
            raise InvalidRequest("limit param must be an integer") from None
        if page < 0:
            raise InvalidRequest("limit param must be positive")
    return params, {"limit": min(default.api_limit_max, page), "marker": marker or None, "sort_key": sort_key,
                    "sort_dir": sort_dir, "filters": rest}


def _uuid_like(value: str) -> bool:
    """oslo.utils' is_uuid_like: a UUID however written (hyphens, braces, urn:uuid:, case)."""
    try:
        parsed = uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    plain = value.lower().replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    return parsed.hex == plain


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /v2/tasks`` as Glance 33: paged (``limit`` up to api_limit_max, ``marker``), sorted
    (``sort_key``, ``sort_dir``), filtered (``status``, ``type`` and the other task columns), the
    caller's project's tasks unless an admin asks; ``next`` when the page is full."""
    _require_tasks_access(request)
    params, arguments = _task_list_params(request)
    ctx = context_of(request)
    owner = None if ctx.is_admin or ctx.project_id is None else ctx.project_id
    tasks = await request.app[SERVICES].catalog.page_tasks(owner=owner, **arguments)
    without_marker = {k: v for k, v in params.items() if k != "marker"}
    body: dict[str, Any] = {
        "tasks": [task_view(t, full=False) for t in tasks],
        "first": "/v2/tasks" + (f"?{urllib.parse.urlencode(without_marker)}" if without_marker else ""),
        "schema": "/v2/schemas/tasks"}
    if tasks and len(tasks) == arguments["limit"]:
        body["next"] = "/v2/tasks?" + urllib.parse.urlencode({**without_marker, "marker": tasks[-1].id})
    return web.json_response(body)


async def show_task(request: web.Request) -> web.Response:
    """Glance 33's task_get: a task of another project is a 403 to non-admins (where a policy
    lets them reach the tasks API at all), and an expired one is gone (Glance soft-deletes
    expired tasks; only admins see deleted ones)."""
    _require_tasks_access(request)
    ctx = context_of(request)
    task = await request.app[SERVICES].catalog.get_task(request.match_info["task_id"])
    if not ctx.is_admin:
        if task.expires_at is not None and task.expires_at <= utcnow():
            raise DoesNotExist(f"Task with the given id {task.id} not found")
        if task.owner is not None and task.owner != ctx.project_id:
            raise NotPermitted(f"Forbidding request, task {task.id} is not visible")
    return web.json_response(task_view(task))


# -- discovery ---------------------------------------------------------------------------------------------


async def info_import(request: web.Request) -> web.Response:
    methods = request.app[SERVICES].config.default.enabled_import_methods
    return web.json_response({"import-methods": {
        "description": "Import methods available.", "type": "array", "value": list(methods)}})


async def info_usage(request: web.Request) -> web.Response:
    """``GET /v2/info/usage`` (2.13): each unified limit of the caller's project with its usage,
    ``{"usage": {"image_size_total": {"limit": L, "usage": U}, ...}}``; without Keystone unified
    limits (``use_keystone_limits``) an empty map, as Glance answers (user_storage_quota is not shown)."""
    usage = await request.app[SERVICES].quotas.usage(context_of(request).project_id)
    return web.json_response({"usage": usage})


def _stores_info(config: Config) -> list[dict[str, Any]]:
    found = []
    for entry in config.stores:
        info: dict[str, Any] = {"id": entry.name}
        if entry.options.store_description:
            info["description"] = entry.options.store_description
        if entry.name == config.default_store:
            info["default"] = "true"
        if entry.type == "http":
            info["read-only"] = "true"  # as Glance 33 marks its http stores
        found.append(info)
    return found


async def info_stores(request: web.Request) -> web.Response:
    return web.json_response({"stores": _stores_info(request.app[SERVICES].config)})


async def info_stores_detail(request: web.Request) -> web.Response:
    request.app[SERVICES].policy.enforce(context_of(request), "stores_info_detail", {})
    config = request.app[SERVICES].config
    registry = request.app[SERVICES].stores
    stores = _stores_info(config)
    for info in stores:
        store = registry.get(info["id"])
        info["type"] = store.type
        info["weight"] = getattr(config.store(info["id"]).options, "weight", 0)
        info["properties"] = store.properties()
    return web.json_response({"stores": stores})


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_put(prefix + "/images/{image_id}/stage", stage)
    r.add_post(prefix + "/images/{image_id}/import", import_image)
    r.add_get(prefix + "/images/{image_id}/tasks", image_tasks)
    r.add_delete(prefix + "/stores/{store_id}/{image_id}", delete_from_store)
    r.add_get(prefix + "/tasks", list_tasks)
    r.add_get(prefix + "/tasks/{task_id}", show_task)
    r.add_get(prefix + "/info/import", info_import)
    r.add_get(prefix + "/info/usage", info_usage)
    r.add_get(prefix + "/info/stores", info_stores)
    r.add_get(prefix + "/info/stores/detail", info_stores_detail)
