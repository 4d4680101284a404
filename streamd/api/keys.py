"""Typed keys for what the application and each request hold (aiohttp's ``AppKey``/``RequestKey``)."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ..context import RequestContext
from ..services import Services

# Everything the node runs, opened by streamd.services.open_services; handlers read it, never build it.
SERVICES = web.AppKey("services", Services)

# The identity of the request, set by the identity middleware.
CONTEXT = web.RequestKey("context", RequestContext)
# Glance's (oslo.middleware's) request id, req-<uuid>: in X-Openstack-Request-Id and in tasks.
REQUEST_ID = web.RequestKey("request_id", str)
# Bytes of image data a download sent (the access log's count where the body bypassed aiohttp).
BODY_BYTES = web.RequestKey("body_bytes", int)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def context_of(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def notify(request: web.Request, event_type: str, payload: Any, *, error: bool = False) -> None:
    """Glance's notification of what this request did (queued, never waits for the bus)."""
    notifier = request.app[SERVICES].notifier
    if notifier is not None and notifier.enabled:
        (notifier.error if error else notifier.info)(event_type, payload)


def notifying(request: web.Request) -> bool:
    """Whether notifications are sent (worth a catalogue read for a payload)."""
    notifier = request.app[SERVICES].notifier
    return notifier is not None and notifier.enabled


def request_id_of(request: web.Request) -> str:
    """This request's id, made on first use."""
    if REQUEST_ID not in request:
        request[REQUEST_ID] = f"req-{uuid.uuid4()}"
    return request[REQUEST_ID]
