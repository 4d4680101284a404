"""``POST /v2/tasks``: Glance's legacy ``import`` task (deprecated in Glance, still served).

A task ``{"type": "import", "input": {"import_from": URI, "import_from_format": ...,
"image_properties": {...}}}`` makes a new image from ``image_properties`` and fetches ``URI``
into it. streamd runs it as a web-download import of that image, so the task the client polls
is the import's own task (its ``image_id`` names the new image). As Glance 33 does, a URI that
the import filtering rules refuse is a 400 at creation, before any image exists.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import InvalidRequest
from ..imports.flow import ImportPlan
from ..imports.web import SUPPORTED_SCHEMES
from .images import create_from_document
from .imports import task_view
from .inputs import json_body
from .keys import SERVICES, context_of, request_id_of

TASK_TYPES = ("import",)


async def create_task(request: web.Request) -> web.Response:
    ctx = context_of(request)
    # Glance checks access to the tasks API first (its deserializer), then add_task.
    request.app[SERVICES].policy.enforce(ctx, "tasks_api_access", {})
    request.app[SERVICES].policy.enforce(ctx, "add_task", {})
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("Body expected in request.")
    for required in ("type", "input"):
        if required not in body:
            raise InvalidRequest(f"Task '{required}' is required")
    if body["type"] not in TASK_TYPES:
        raise InvalidRequest(f"Failed validating 'enum' in schema['properties']['type']: "
                             f"{body['type']!r} is not one of {list(TASK_TYPES)}")
    task_input = body["input"]
    if not isinstance(task_input, dict):
        raise InvalidRequest("Task 'input' must be an object")
    uri = task_input.get("import_from")
    if not isinstance(uri, str) or not uri:
        raise InvalidRequest("Task input 'import_from' is required")
    services = request.app[SERVICES]
    try:
        services.importer.uri_filter.check(uri)
        if uri.split(":", 1)[0].lower() not in SUPPORTED_SCHEMES:
            raise InvalidRequest(f"scheme of {uri} is not supported")
    except InvalidRequest as exc:
        raise InvalidRequest(f"URI for legacy import task does not pass filtering: {uri} ({exc.message})") from exc
    properties: Any = task_input.get("image_properties") or {}
    if not isinstance(properties, dict):
        raise InvalidRequest("Task input 'image_properties' must be an object")
    image = await create_from_document(request, dict(properties))
    task = await services.importer.start(
        ImportPlan(image.id, "web-download", (services.config.default_store,), True, uri, tuple(ctx.roles)),
        owner=ctx.project_id, user_id=ctx.user_id, request_id=request_id_of(request))
    return web.json_response(task_view(task), status=201)


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(prefix + "/tasks", create_task)
