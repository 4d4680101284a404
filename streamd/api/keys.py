"""Typed keys for what the application holds (aiohttp's ``AppKey``)."""

from __future__ import annotations

from aiohttp import web

from ..catalog import Catalog
from ..config import Config
from ..context import RequestContext
from ..imports import Importer
from ..cache import ImageCache
from ..pipeline import ImageDelivery, Prefetcher
from ..stores import StoreRegistry
from .inflight import InflightUploads

CONFIG = web.AppKey("config", Config)
CATALOG = web.AppKey("catalog", Catalog)
STORES = web.AppKey("stores", StoreRegistry)
INFLIGHT_UPLOADS = web.AppKey("inflight_uploads", InflightUploads)
DELIVERY = web.AppKey("delivery", ImageDelivery)
# Absent when the cache is off.
CACHE = web.AppKey("cache", ImageCache)
PREFETCHER = web.AppKey("prefetcher", Prefetcher)
IMPORTER = web.AppKey("importer", Importer)

# The identity of the request, set by the identity middleware.
CONTEXT = web.RequestKey("context", RequestContext)
# Glance's (oslo.middleware's) request id, req-<uuid>: in X-Openstack-Request-Id and in tasks.
REQUEST_ID = web.RequestKey("request_id", str)


def context_of(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def request_id_of(request: web.Request) -> str:
    """This request's id, made on first use."""
    import uuid

    if REQUEST_ID not in request:
        request[REQUEST_ID] = f"req-{uuid.uuid4()}"
    return request[REQUEST_ID]
