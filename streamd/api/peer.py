"""``GET /peer/v1/images/{id}``: what this node's cache holds, for the other nodes of the catalogue.

Served from the cache only, never from a store (a peer that misses goes to
its own stores, so requests cannot loop between nodes), and only to callers
that present the shared ``peer_token``.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..catalog.query import is_uuid_like
from ..context import RequestContext
from ..errors import NotPermitted, DoesNotExist
from ..pipeline.peers import PEER_TOKEN_HEADER
from .keys import SERVICES


async def serve_cached(request: web.Request) -> web.StreamResponse:
    token = request.app[SERVICES].config.default.peer_token
    offered = request.headers.get(PEER_TOKEN_HEADER, "")
    # surrogateescape: aiohttp keeps undecodable header bytes as lone surrogates.
    if not token or not hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), token.encode()):
        raise NotPermitted("peer requests need the shared peer token")
    image_id = request.match_info["image_id"]
    if not is_uuid_like(image_id):
        raise DoesNotExist(f"Image {image_id} is not cached here")
    image = await request.app[SERVICES].catalog.get_image(image_id, RequestContext.admin())
    source = await request.app[SERVICES].delivery.open_cached(image)
    if source is None:
        raise DoesNotExist(f"Image {image_id} is not cached here")
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = source.size
        await response.prepare(request)
        async for data in source.chunks(0, source.size):
            await response.write(data)
        await response.write_eof()
        return response
    finally:
        source.close()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/peer/v1/images/{image_id}", serve_cached, allow_head=False)
