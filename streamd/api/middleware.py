"""The HTTP edge: errors to JSON, the caller's identity (noauth headers or Keystone tokens), version prefixes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..context import RequestContext
from ..errors import IdentityUnavailable, InvalidToken, StreamdError
from ..policy import rules_read_once_per_request
from ..status import reason_of, status_of
from .client_faults import client_is_gone, client_went_away, describe
from .errors import ProtocolError, render_error
from .inputs import text_header
from .access_log import set_request_identity
from .keys import CONTEXT, SERVICES, request_id_of
from .versions import VERSION_MEDIA_TYPE, allowed_url_versions, multiple_choices

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Served without a version: discovery, health ([healthcheck] path, see _is_health) and the peer protocol.
_UNVERSIONED = ("/versions", "/peer/", "/metrics")
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


# Served without a token in keystone mode, as Glance's paste pipeline leaves them: the versions
# document (versionnegotiation and /healthcheck come before authtoken there) and the peer
# protocol, which has its own secret (peer_token).
_UNAUTHENTICATED_PATHS = frozenset({"/", "/versions"})
_UNAUTHENTICATED_PREFIXES = ("/peer/",)
# keystonemiddleware's 401 (auth_token.AuthProtocol.process_request, delay_auth_decision false):
# this JSON body, whatever the request's Accept, and WWW-Authenticate naming where to log in.
KEYSTONE_401_BODY = json.dumps({"error": {"code": 401, "title": "Unauthorized",
                                          "message": "The request you have made requires authentication."}})
# keystonemiddleware's 503 when Keystone cannot be asked: webob.exc.HTTPServiceUnavailable(detail).
_503_EXPLANATION = "The server is currently unavailable. Please try again at a later time."
KEYSTONE_503_DETAIL = "The Keystone service is temporarily unavailable."
_ANONYMOUS = RequestContext(project_id=None, user_id=None)


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    validator = request.app[SERVICES].identity
    if validator is None:
        ctx = identify(request)
    elif _unauthenticated(request):
        ctx = _ANONYMOUS
    else:
        try:
            # Client-sent identity headers (X-Roles, X-Project-Id, X-Identity-Status, X-Service-*...)
            # are never read here: the context is what Keystone says of the tokens.
            ctx = await validator.authenticate(_token(request, "X-Auth-Token", "X-Storage-Token"),
                                               _token(request, "X-Service-Token"))
        except InvalidToken as exc:
            log.info("%s %s (%s): rejected: %s", request.method, request.path, request_id_of(request), exc.message)
            return keystone_unauthorized(validator.www_authenticate_uri)
        except IdentityUnavailable as exc:
            log.error("%s %s (%s): unable to validate token: %s", request.method, request.path,
                      request_id_of(request), exc.message)
            return error_response(request, 503, _503_EXPLANATION, detail=KEYSTONE_503_DETAIL)
    # Glance decides is_admin once, when it builds the context, by the context_is_admin rule.
    policy = request.app[SERVICES].policy
    # The policy files are looked at once for the request (by this first check), not per rule.
    with rules_read_once_per_request():
        request[CONTEXT] = dataclasses.replace(ctx, policy_admin=policy.is_admin(ctx))
        set_request_identity(request)  # every line logged from here on names the request
        return await handler(request)


def _is_health(request: web.Request) -> bool:
    return request.path == request.app[SERVICES].config.healthcheck.path


def _unauthenticated(request: web.Request) -> bool:
    if (request.path in _UNAUTHENTICATED_PATHS or request.path.startswith(_UNAUTHENTICATED_PREFIXES)
            or _is_health(request)):
        return True
    if request.match_info.route.resource is None:
        # No route: a path without an API version we serve gets the versions document or a 404
        # (errors_middleware), which Glance's version negotiation answers before authtoken.
        match = _VERSION_SEGMENT.match(request.path)
        return match is None or match.group(1) not in allowed_url_versions(request.app[SERVICES].config)
    return False


def _token(request: web.Request, *names: str) -> str | None:
    for name in names:
        value = request.headers.get(name, "").strip()
        if value:
            return value
    return None


def keystone_unauthorized(www_authenticate_uri: str) -> web.Response:
    response = web.Response(status=401, text=KEYSTONE_401_BODY, content_type="application/json", charset="UTF-8")
    response.headers["WWW-Authenticate"] = www_authenticate_header(www_authenticate_uri)
    return response


def www_authenticate_header(www_authenticate_uri: str) -> str:
    return f'Keystone uri="{www_authenticate_uri}"'


async def add_www_authenticate(request: web.Request, response: web.StreamResponse) -> None:
    """keystonemiddleware's process_response: every 401 says where to authenticate."""
    validator = request.app[SERVICES].identity
    if validator is not None and response.status == 401 and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = www_authenticate_header(validator.www_authenticate_uri)


def identify(request: web.Request) -> RequestContext:
    """noauth: trust X-Project-Id/X-User-Id/X-Roles, or use the configured default identity.

    In keystone mode ``identity_middleware`` asks the token validator instead and this is
    never called.
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
    if request.match_info.route.resource is None or request.path.startswith(_UNVERSIONED) or _is_health(request):
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
