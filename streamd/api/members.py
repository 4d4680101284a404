"""``/v2/images/{id}/members``: the owner shares, the consumer accepts or rejects."""

from __future__ import annotations

from aiohttp import web

from ..catalog import policy
from ..catalog.records import MEMBER_STATUSES
from ..errors import BadRequest, Forbidden, NotFound
from .images import _get_visible, _json_body
from .keys import CATALOG, CONFIG, context_of
from .views import member_view


async def list_members(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    catalog = request.app[CATALOG]
    if ctx.is_admin or ctx.owns(image.owner):
        members = await catalog.list_members(image.id)
    else:
        # A consumer sees only its own membership.
        members = await catalog.list_members(image.id, only=ctx.project_id or "")
    return web.json_response({"members": [member_view(m) for m in members], "schema": "/v2/schemas/members"})


async def add_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    policy.require_modify(ctx, image, "add_member")
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("member"), str) or not body["member"].strip():
        raise BadRequest("Member to be added not specified")
    if len(body["member"]) > 255:
        raise BadRequest("Member id is at most 255 characters")
    if image.visibility != "shared":
        raise Forbidden("Only shared images have members.")
    member = await request.app[CATALOG].add_member(image.id, body["member"],
                                                   quota=request.app[CONFIG].default.image_member_quota)
    return web.json_response(member_view(member))


async def show_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    member_id = request.match_info["member_id"]
    if not (ctx.is_admin or ctx.owns(image.owner) or member_id == ctx.project_id):
        raise NotFound(f"{member_id} is not a member of image {image.id}")
    member = await request.app[CATALOG].get_member(image.id, member_id)
    return web.json_response(member_view(member))


async def update_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    member_id = request.match_info["member_id"]
    body = await _json_body(request)
    if not isinstance(body, dict) or "status" not in body:
        raise BadRequest("Status not specified")
    status = body["status"]
    if status not in MEMBER_STATUSES:
        raise BadRequest(f"Invalid status: {status}")
    catalog = request.app[CATALOG]
    # The consumer decides whether it accepts an image shared with it; admins may too.
    if member_id != ctx.project_id and not ctx.is_admin:
        if ctx.owns(image.owner):
            await catalog.get_member(image.id, member_id)
            raise Forbidden("You are not permitted to modify the status of this member.")
        raise NotFound(f"{member_id} is not a member of image {image.id}")
    policy.require_writer(ctx, "modify_member")
    member = await catalog.update_member(image.id, member_id, status)
    return web.json_response(member_view(member))


async def delete_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    member_id = request.match_info["member_id"]
    if not (ctx.is_admin or ctx.owns(image.owner)):
        if member_id == ctx.project_id:
            raise Forbidden("You are not permitted to delete this member.")
        raise NotFound(f"{member_id} is not a member of image {image.id}")
    policy.require_modify(ctx, image, "delete_member")
    await request.app[CATALOG].delete_member(image.id, member_id)
    return web.Response(status=204)


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/images/{image_id}/members", list_members)
    r.add_post(prefix + "/images/{image_id}/members", add_member)
    r.add_get(prefix + "/images/{image_id}/members/{member_id}", show_member)
    r.add_put(prefix + "/images/{image_id}/members/{member_id}", update_member)
    r.add_delete(prefix + "/images/{image_id}/members/{member_id}", delete_member)
