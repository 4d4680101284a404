"""``/v2/images/{id}/tags/{tag}``."""

from __future__ import annotations

from aiohttp import web

from ..errors import InvalidRequest
from .images import _get_visible, image_policy
from .keys import SERVICES


async def add_tag(request: web.Request) -> web.Response:
    tag = request.match_info["tag"]
    # Glance validates the tag against the schema before it looks the image up.
    if len(tag) > 255:
        raise InvalidRequest("Image tag exceeds the maximum length of 255 characters")
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce("modify_image")
    await request.app[SERVICES].catalog.add_tag(image.id, tag, quota=request.app[SERVICES].config.default.image_tag_quota)
    return web.Response(status=204)


async def delete_tag(request: web.Request) -> web.Response:
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce("modify_image")
    await request.app[SERVICES].catalog.delete_tag(image.id, request.match_info["tag"])
    return web.Response(status=204)


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_put(prefix + "/images/{image_id}/tags/{tag}", add_tag)
    app.router.add_delete(prefix + "/images/{image_id}/tags/{tag}", delete_tag)
