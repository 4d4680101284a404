"""The cache over HTTP: ``/v2/cache`` (API 2.14-2.18) and the legacy ``/v2/cached_images``,
``/v2/queued_images`` routes, with Glance's quirks. Each route checks its Glance rule (admin
only by default: cache_list, cache_image, cache_delete, cache_clean, cache_prune,
list_cached_nodes; the legacy routes manage_image_cache), then answers 404 when the cache is off."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from ..cache import ImageCache
from ..catalog.query import is_uuid_like
from ..context import RequestContext
from ..errors import InvalidRequest, NotPermitted, DoesNotExist
from ..policy import image_target
from .keys import SERVICES, context_of

# The legacy routes' rule (Glance's cache management middleware).
LEGACY = "manage_image_cache"


def _cache(request: web.Request, rule: str = LEGACY, target: dict[str, Any] | None = None) -> ImageCache:
    ctx = context_of(request)
    if not request.app[SERVICES].policy.allows(ctx, rule, target or {}):
        raise NotPermitted("You are not authorized to manage the image cache.")
    cache = request.app[SERVICES].cache
    if cache is None:
        raise DoesNotExist("The image cache is not enabled on this node")
    return cache


async def cached_images_view(cache: ImageCache) -> list[dict[str, Any]]:
    return [{"image_id": e.image_id, "hits": e.hits, "last_accessed": e.last_accessed,
             "last_modified": e.last_modified, "size": e.size} for e in await cache.entries()]


async def get_cache_state(request: web.Request) -> web.Response:
    cache = _cache(request, "cache_list")
    return web.json_response({"cached_images": await cached_images_view(cache),
                              "queued_images": [i for i, _ in await cache.queued()]})


async def clear_cache(request: web.Request) -> web.Response:
    cache = _cache(request, "cache_delete")
    target = request.headers.get("x-image-cache-clear-target", "").lower()
    if target not in ("", "cache", "queue"):
        # Glance refuses 'both' here too: the header is absent for both.
        raise InvalidRequest("If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string.")
    if target in ("", "cache"):
        await cache.delete_all()
    if target in ("", "queue"):
        await cache.clear_queue()
    return web.Response(status=204)


async def queue_image(request: web.Request) -> web.Response:
    image_id = request.match_info["image_id"]
    image = await request.app[SERVICES].catalog.get_image(image_id, RequestContext.admin()) if is_uuid_like(image_id) \
        else None
    if image is None:
        raise DoesNotExist(f"Image {image_id} not found.")
    cache = _cache(request, "cache_image", image_target(context_of(request), image))
    if image.status != "active":
        raise InvalidRequest("Only images with status active can be targeted for queueing")
    await cache.queue(image_id)
    request.app[SERVICES].prefetcher.fetch_soon(image_id)  # Glance 2.16+: cached right away, not at the next run
    return web.Response(status=202)


async def cached_nodes(request: web.Request) -> web.Response:
    """``GET /v2/cache/nodes/{id}`` (2.18): the URLs of the nodes sharing this catalogue that cache the
    image, this node first when it does (Glance's centralized_db cache driver answers the same list)."""
    cache = _cache(request, "list_cached_nodes")
    services = request.app[SERVICES]
    image_id = request.match_info["image_id"]
    try:
        await services.catalog.get_image(image_id, RequestContext.admin())
    except DoesNotExist:
        raise DoesNotExist(f"Image {image_id} not found.") from None
    config = services.config
    nodes = await services.catalog.cache_peers(image_id, exclude=config.host_id)
    if await cache.entry(image_id) is not None:
        own = config.default.peer_url or config.default.public_endpoint or f"{request.scheme}://{request.host}"
        nodes.insert(0, own)
    return web.json_response(nodes)


async def delete_cache_entry(request: web.Request) -> web.Response:
    image_id = request.match_info["image_id"]
    target: dict[str, Any] = {}
    if is_uuid_like(image_id):
        with contextlib.suppress(DoesNotExist):
            found = await request.app[SERVICES].catalog.get_image(image_id, RequestContext.admin())
            target = image_target(context_of(request), found)
    cache = _cache(request, "cache_delete", target)
    removed = await cache.dequeue(image_id)
    with contextlib.suppress(DoesNotExist):
        removed = await cache.delete(image_id) or removed
    if not removed:
        raise DoesNotExist(f"Image {image_id} not found.")
    return web.Response(status=204)


async def clean_cache(request: web.Request) -> web.Response:
    cache = _cache(request, "cache_clean")
    cleaned = await cache.clean()
    return web.json_response({"total_files_cleaned": cleaned})


async def prune_cache(request: web.Request) -> web.Response:
    cache = _cache(request, "cache_prune")
    result = await cache.prune()
    return web.json_response({"total_files_pruned": result.removed, "total_bytes_pruned": result.freed})


# -- legacy routes (Glance's cachemanagement middleware) -----------------------------------------

async def legacy_list_cached(request: web.Request) -> web.Response:
    return web.json_response({"cached_images": await cached_images_view(_cache(request))})


async def legacy_delete_cached(request: web.Request) -> web.Response:
    cache = _cache(request)
    await cache.delete(request.match_info["image_id"])
    return web.Response(status=204)


async def legacy_delete_all_cached(request: web.Request) -> web.Response:
    return web.json_response({"num_deleted": await _cache(request).delete_all()})


async def legacy_list_queued(request: web.Request) -> web.Response:
    return web.json_response({"queued_images": [i for i, _ in await _cache(request).queued()]})


async def legacy_queue(request: web.Request) -> web.Response:
    cache = _cache(request)
    image_id = request.match_info["image_id"]
    if not is_uuid_like(image_id):
        raise DoesNotExist(f"Image {image_id} not found.")
    await request.app[SERVICES].catalog.get_image(image_id, RequestContext.admin())
    await cache.queue(image_id)
    return web.Response(status=200)


async def legacy_dequeue(request: web.Request) -> web.Response:
    cache = _cache(request)
    if not await cache.dequeue(request.match_info["image_id"]):
        raise DoesNotExist(f"Image {request.match_info['image_id']} is not queued")
    return web.Response(status=200)


async def legacy_clear_queue(request: web.Request) -> web.Response:
    return web.json_response({"num_deleted": await _cache(request).clear_queue()})


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/cache", get_cache_state)
    r.add_delete(prefix + "/cache", clear_cache)
    r.add_post(prefix + "/cache/clean", clean_cache)
    r.add_post(prefix + "/cache/prune", prune_cache)
    r.add_get(prefix + "/cache/nodes/{image_id}", cached_nodes)
    r.add_put(prefix + "/cache/{image_id}", queue_image)
    r.add_delete(prefix + "/cache/{image_id}", delete_cache_entry)
    r.add_get(prefix + "/cached_images", legacy_list_cached)
    r.add_delete(prefix + "/cached_images", legacy_delete_all_cached)
    r.add_delete(prefix + "/cached_images/{image_id}", legacy_delete_cached)
    r.add_get(prefix + "/queued_images", legacy_list_queued)
    r.add_delete(prefix + "/queued_images", legacy_clear_queue)
    r.add_put(prefix + "/queued_images/{image_id}", legacy_queue)
    r.add_delete(prefix + "/queued_images/{image_id}", legacy_dequeue)
