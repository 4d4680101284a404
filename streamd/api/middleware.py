"""The HTTP edge: errors to JSON, the caller's identity, version prefixes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..context import RequestContext
from ..errors import StreamdError
from ..status import reason_of, status_of
from .client_faults import client_is_gone, client_went_away, describe
from .errors import ProtocolError, render_error
from .inputs import text_header
from .keys import CONTEXT, SERVICES, request_id_of
from .versions import VERSION_MEDIA_TYPE, allowed_url_versions, multiple_choices

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Served without a version: discovery, health and the peer protocol.
_UNVERSIONED = ("/versions", "/healthcheck", "/peer/")
_VERSION_SEGMENT = re.compile(r"^/(v\d+(?:\.\d+)?)(?:/|$)")


def error_response(request: web.Request, status: int, message: str,
                   headers: dict[str, str] | None = None, detail: str = "") -> web.Response:
    """An error in Glance's shape (HTML, flat JSON or plain text by the request's Accept)."""
    # A message may quote what the client sent: whatever that held, the answer must encode.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    content_type, body = render_error(status, message, request.headers.get("Accept"), detail,
                                      request.headers.get("Content-Type"))
    response = web.Response(status=status, reason=reason_of(status), text=body, headers=headers)
    response.headers["Content-Type"] = content_type
    return response


# webob's explanations, which Glance sends when it has no message of its own (e.g. no such route).
_DEFAULT_EXPLANATIONS = {404: "The resource could not be found."}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StreamdError as exc:
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc.message)
        protocol = exc if isinstance(exc, ProtocolError) else None
        return error_response(request, status, exc.message, protocol.headers if protocol else None,
                              protocol.detail if protocol else "")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            match = _VERSION_SEGMENT.match(request.path)
            if match and match.group(1) not in allowed_url_versions(request.app[SERVICES].config):
                # Glance answers an unknown API version with the versions document.
                return multiple_choices(request)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "accept-patch", "retry-after")}
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        return error_response(request, exc.status, message or _DEFAULT_EXPLANATIONS.get(exc.status, exc.reason),
                              headers)
    except (ConnectionError, HttpProcessingError) as exc:
        if client_is_gone(request):
            return client_went_away(request, exc)
        if isinstance(exc, HttpProcessingError):  # the body broke HTTP's framing (chunk sizes, length)
            log.info("%s %s (%s): malformed request body: %s", request.method, request.path,
                     request_id_of(request), describe(exc))
            return error_response(request, 400, f"Malformed request body: {describe(exc)}")
        raise  # a connection of ours failed: our fault, logged with its traceback
    except asyncio.CancelledError:
        log.info("%s %s (%s): cancelled", request.method, request.path, request_id_of(request))
        raise


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = identify(request)
    # Glance decides is_admin once, when it builds the context, by the context_is_admin rule.
    policy = request.app[SERVICES].policy
    request[CONTEXT] = dataclasses.replace(ctx, policy_admin=policy.is_admin(ctx))
    return await handler(request)


def identify(request: web.Request) -> RequestContext:
    """noauth: trust X-Project-Id/X-User-Id/X-Roles, or use the configured default identity.

    This is the one place a token validator (Keystone) will slot in: it will set
    the same three values from the validated token instead of from the headers.
    """
    # Each becomes a name the catalogue stores or compares: checked text (inputs.py).
    project = text_header(request, "X-Project-Id") or text_header(request, "X-Tenant-Id")
    user = text_header(request, "X-User-Id")
    roles_header = text_header(request, "X-Roles")
    if project is None and user is None and roles_header is None:
        default = request.app[SERVICES].config.noauth
        return RequestContext(default.default_project_id, default.default_user_id, frozenset(default.default_roles))
    roles = frozenset(r.strip().lower() for r in (roles_header or "").split(",") if r.strip())
    return RequestContext(project, user, roles)


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API version of the request: its URL prefix, or (Glance's VersionNegotiationFilter) an
    ``Accept: application/vnd.openstack.images-vN`` on an unprefixed path. An unknown version, or an
    unprefixed API path without that Accept, gets the versions document (300)."""
    if request.match_info.route.resource is None or request.path.startswith(_UNVERSIONED):
        return await handler(request)
    allowed = allowed_url_versions(request.app[SERVICES].config)
    accept = request.headers.get("Accept", "")
    version = request.match_info.get("version")
    if accept.startswith(VERSION_MEDIA_TYPE):
        if version is not None:
            raise web.HTTPNotFound()  # Glance prepends /v2 to the path as it is: /v2/v2/...
        version = accept[len(VERSION_MEDIA_TYPE):]
    if version not in allowed:
        return multiple_choices(request)
    return await handler(request)
