"""``GET /peer/v1/images/{id}``: what this node's cache holds, for the other nodes of the catalogue.

With ``?fill=1&offset=N``: this node's fill of the image in progress (it holds the image's fill lease),
from byte N on, streamed as it lands; the stream ends when the fill does, and breaks if the fill fails.

Served from the cache only, never from a store (a peer that misses goes to
its own stores, so requests cannot loop between nodes), and only to callers
that present the shared ``peer_token``.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from ..catalog.query import is_uuid_like
from ..context import RequestContext
from ..errors import DoesNotExist, InvalidRequest, NotPermitted, StreamdError
from ..pipeline.peers import PEER_TOKEN_HEADER
from .keys import SERVICES

log = logging.getLogger(__name__)


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
    offset = 0
    if request.query.get("fill") == "1":
        raw = request.query.get("offset", "0")
        if not raw.isdigit() or image.size is None or int(raw) > image.size:
            raise InvalidRequest(f"Invalid offset {raw!r}")
        offset = int(raw)
        source = await request.app[SERVICES].delivery.open_fill_for_peer(image, offset)
    else:
        source = await request.app[SERVICES].delivery.open_cached(image)
    if source is None:
        raise DoesNotExist(f"Image {image_id} is not cached here")
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = source.size - offset
        await response.prepare(request)
        try:
            async for data in source.chunks(offset, source.size - offset):
                await response.write(data)
        except StreamdError as exc:
            # The fill being streamed failed: cut the body short, the peer carries on from its backend.
            log.warning("peer stream of image %s stopped: %s", image_id, exc.message)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        source.close()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/peer/v1/images/{image_id}", serve_cached, allow_head=False)
