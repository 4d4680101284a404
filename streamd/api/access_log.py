"""The access log: one record per request, Glance's line for people (eventlet.wsgi's
``client - - [date] "request line" status bytes seconds``) with the fields a log pipeline wants
(request id, project, user, image id, route, status, bytes, duration) on the record, which the
JSON format (``use_json``) writes out."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..logs import REQUEST, RequestIdentity
from .keys import BODY_BYTES, CONTEXT, request_id_of


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        ctx = request.get(CONTEXT)
        route = None
        image_id = None
        if ctx is not None:  # the request was routed (a malformed one never is: no match_info then)
            match_info = request.match_info
            resource = match_info.route.resource
            route = resource.canonical if resource is not None else None
            image_id = match_info.get("image_id")
        remote = request.remote or "-"
        # The body alone (aiohttp's body_length counts the headers too, and not what a download
        # copied to the socket from a thread).
        sent = request.get(BODY_BYTES) if isinstance(request, web.Request) else None
        if sent is None:
            sent = response.content_length if response.content_length is not None else response.body_length
        line = (f'{remote} - - [{time.strftime("%d/%b/%Y %H:%M:%S")}] '
                f'"{request.method} {request.path_qs} HTTP/{request.version.major}.{request.version.minor}" '
                f"{response.status} {sent} {time_taken:.6f}")
        self.logger.info(line, extra={
            "request_id": request_id_of(request) if isinstance(request, web.Request) else None,
            "project_id": getattr(ctx, "project_id", None), "user_id": getattr(ctx, "user_id", None),
            "image_id": image_id, "method": request.method, "path": request.path, "route": route,
            "status": response.status, "bytes": sent,
            "duration_ms": round(time_taken * 1000, 3), "remote": remote,
            "user_agent": request.headers.get("User-Agent")})


def set_request_identity(request: web.Request) -> None:
    """What every record logged while ``request`` is served carries (``logs.RequestFilter``)."""
    ctx = request.get(CONTEXT)
    REQUEST.set(RequestIdentity(request_id_of(request), getattr(ctx, "project_id", None),
                                getattr(ctx, "user_id", None), request.match_info.get("image_id")))


__all__ = ["AccessLogger", "set_request_identity"]
