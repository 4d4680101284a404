"""``/v2/images/{id}/members``: the owner shares, the consumer accepts or rejects.

Every member rule is checked against the image (Glance's ``MemberAPIPolicy``), after
``get_image`` (404 when the caller may not see the image).
"""

from __future__ import annotations

from aiohttp import web

from ..catalog.records import MEMBER_STATUSES, ImageRecord, MemberRecord
from ..context import RequestContext
from ..errors import InvalidRequest, NotPermitted, DoesNotExist
from .images import _get_visible, image_policy
from .inputs import json_body
from .keys import SERVICES, context_of, notify
from ..notifications import deleted, member_payload
from .views import member_view


def _check_shared(image: ImageRecord, action: str | None = None) -> None:
    """Glance refuses every member call on an image that is not ``shared`` (403, or 404 on show).
    Its create, update and delete answer with their own message (``action``), list with the reason."""
    if image.visibility != "shared":
        if action is not None:
            raise NotPermitted(f"Not allowed to {action} members for image {image.id}.")
        raise NotPermitted("Only shared images have members.")


def _enforce_member_rule(request: web.Request, image: ImageRecord, rule: str) -> None:
    rules = image_policy(request, image)
    rules.enforce("get_image")
    request.app[SERVICES].policy.enforce(rules.ctx, rule, rules.target)


async def _lookup_member(request: web.Request, ctx: RequestContext, image: ImageRecord, member_id: str) -> MemberRecord:
    """The membership, if the caller may see it (``get_member``, then the catalogue: the owner's
    project and admins see every member, a consumer only its own, as Glance's database layer)."""
    _enforce_member_rule(request, image, "get_member")
    if not (ctx.is_admin or ctx.owns(image.owner) or member_id == ctx.project_id):
        raise DoesNotExist(f"{member_id} not found in the member list of the image {image.id}.")
    return await request.app[SERVICES].catalog.get_member(image.id, member_id)


def _legacy_owner_check(request: web.Request, ctx: RequestContext, image: ImageRecord, what: str) -> None:
    """Glance's owner checks of member calls, made only with the legacy defaults (enforce_new_defaults
    = false): the owner adds and removes members, a consumer (never the owner) changes a status."""
    if not request.app[SERVICES].policy.legacy_ownership or ctx.is_admin:
        return
    if what == "create" and (image.owner is None or image.owner != ctx.project_id):
        raise NotPermitted(f"Not allowed to create members for image {image.id}.")
    if what == "update" and ctx.project_id == image.owner:
        raise NotPermitted(f"Not allowed to update members for image {image.id}.")
    if what == "delete" and ctx.project_id != image.owner:
        raise NotPermitted(f"Not allowed to delete members for image {image.id}.")


async def list_members(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    try:
        _check_shared(image)
        _enforce_member_rule(request, image, "get_members")
    except NotPermitted as exc:
        # Glance's index says which image, then why.
        raise NotPermitted(f"Not allowed to list members for image {image.id}: {exc.message}") from exc
    if not image_policy(request, image).allows("get_member"):
        # Glance filters the list by get_member, whose target is the image: all or nothing.
        return web.json_response({"members": [], "schema": "/v2/schemas/members"})
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
    _legacy_owner_check(request, ctx, image, "create")
    _enforce_member_rule(request, image, "add_member")
    member = await request.app[SERVICES].catalog.add_member(image.id, body["member"],
                                                   quota=request.app[SERVICES].config.default.image_member_quota)
    notify(request, "image.member.create", member_payload(member))
    return web.json_response(member_view(member))


async def show_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    if image.visibility != "shared":
        raise DoesNotExist("Only shared images have members.")  # Glance turns this 403 into 404 on show
    try:
        member = await _lookup_member(request, ctx, image, request.match_info["member_id"])
    except NotPermitted as exc:
        raise DoesNotExist(exc.message) from exc  # Glance: a refusal on show is a 404 too
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
    _legacy_owner_check(request, ctx, image, "update")
    member = await _lookup_member(request, ctx, image, request.match_info["member_id"])
    _enforce_member_rule(request, image, "modify_member")
    if not isinstance(status, str) or status not in MEMBER_STATUSES:
        raise InvalidRequest(f"Incorrect request: Status must be \"pending\", \"accepted\" or \"rejected\": {status}")
    member = await request.app[SERVICES].catalog.update_member(image.id, member.member, status)
    notify(request, "image.member.update", member_payload(member))
    return web.json_response(member_view(member))


async def delete_member(request: web.Request) -> web.Response:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    _check_shared(image, "delete")
    _legacy_owner_check(request, ctx, image, "delete")
    member = await _lookup_member(request, ctx, image, request.match_info["member_id"])
    _enforce_member_rule(request, image, "delete_member")
    await request.app[SERVICES].catalog.delete_member(image.id, member.member)
    notify(request, "image.member.delete", deleted(member_payload(member)))
    return web.Response(status=204)


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(prefix + "/images/{image_id}/members", list_members)
    r.add_post(prefix + "/images/{image_id}/members", add_member)
    r.add_get(prefix + "/images/{image_id}/members/{member_id}", show_member)
    r.add_put(prefix + "/images/{image_id}/members/{member_id}", update_member)
    r.add_delete(prefix + "/images/{image_id}/members/{member_id}", delete_member)
