"""``/v2/images/{id}/members``: the owner shares, the consumer accepts or rejects."""

from __future__ import annotations

from aiohttp import web

from ..catalog import policy
from ..catalog.records import MEMBER_STATUSES, ImageRecord, MemberRecord
from ..context import RequestContext
from ..errors import InvalidRequest, NotPermitted, DoesNotExist
from .images import _get_visible
from .inputs import json_body
from .keys import SERVICES, context_of
from .views import member_view


def _check_shared(image: ImageRecord, action: str | None = None) -> None:
    """Glance refuses every member call on an image that is not ``shared`` (403, or 404 on show).
    Its create, update and delete answer with their own message (``action``), list with the reason."""
    if image.visibility != "shared":
        if action is not None:
            raise NotPermitted(f"Not allowed to {action} members for image {image.id}.")
        raise NotPermitted("Only shared images have members.")


async def _lookup_member(request: web.Request, ctx: RequestContext, image: ImageRecord, member_id: str) -> MemberRecord:
    """The membership, if the caller may see it: the owner's project and admins see every member,
    a consumer only its own (Glance filters members by ``owner == me or member == me``)."""
    if not (ctx.is_admin or ctx.owns(image.owner) or member_id == ctx.project_id):
        raise DoesNotExist(f"{member_id} not found in the member list of the image {image.id}.")
    return await request.app[SERVICES].catalog.get_member(image.id, member_id)


async def list_members(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    _check_shared(image)
    catalog = request.app[SERVICES].catalog
    if ctx.is_admin or ctx.owns(image.owner):
        members = await catalog.list_members(image.id)
    else:
        # A consumer sees only its own membership.
        members = await catalog.list_members(image.id, only=ctx.project_id or "")
    return web.json_response({"members": [member_view(m) for m in members], "schema": "/v2/schemas/members"})


async def add_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    # Glance's order: the body (400), the image (404), shared (403), the policy (403), quota, duplicate.
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("member"), str) or not body["member"].strip():
        raise InvalidRequest("Member to be added not specified")
    if len(body["member"]) > 255:
        raise InvalidRequest("Member id is at most 255 characters")
    image = await _get_visible(request, request.match_info["image_id"])
    _check_shared(image, "create")
    policy.require_modify(ctx, image, "add_member")
    member = await request.app[SERVICES].catalog.add_member(image.id, body["member"],
                                                   quota=request.app[SERVICES].config.default.image_member_quota)
    return web.json_response(member_view(member))


async def show_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    if image.visibility != "shared":
        raise DoesNotExist("Only shared images have members.")  # Glance turns this 403 into 404 on show
    member = await _lookup_member(request, ctx, image, request.match_info["member_id"])
    return web.json_response(member_view(member))


async def update_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    # Glance's order: the body (400), the image (404), shared (403), the membership (404),
    # modify_member (403), and only then whether the status is a valid one (400).
    body = await json_body(request)
    if not isinstance(body, dict) or "status" not in body:
        raise InvalidRequest("Status not specified")
    status = body["status"]
    image = await _get_visible(request, request.match_info["image_id"])
    _check_shared(image, "update")
    member = await _lookup_member(request, ctx, image, request.match_info["member_id"])
    policy.require_modify_member(ctx, image, member.member)
    if not isinstance(status, str) or status not in MEMBER_STATUSES:
        raise InvalidRequest(f"Incorrect request: Status must be \"pending\", \"accepted\" or \"rejected\": {status}")
    member = await request.app[SERVICES].catalog.update_member(image.id, member.member, status)
    return web.json_response(member_view(member))


async def delete_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    _check_shared(image, "delete")
    member = await _lookup_member(request, ctx, image, request.match_info["member_id"])
    policy.require_modify(ctx, image, "delete_member")
    await request.app[SERVICES].catalog.delete_member(image.id, member.member)
    return web.Response(status=204)


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/images/{image_id}/members", list_members)
    r.add_post(prefix + "/images/{image_id}/members", add_member)
    r.add_get(prefix + "/images/{image_id}/members/{member_id}", show_member)
    r.add_put(prefix + "/images/{image_id}/members/{member_id}", update_member)
    r.add_delete(prefix + "/images/{image_id}/members/{member_id}", delete_member)
