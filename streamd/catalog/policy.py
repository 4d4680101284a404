"""Who may see and change an image: Glance's default (secure RBAC) policies.

Readers read, members write what their project owns, admins do anything.
Visibility is never revealed: an image a caller may not see is a 404, not a 403.
"""

from __future__ import annotations

from ..context import RequestContext
from ..errors import NotPermitted
from .records import ImageRecord


def can_see(ctx: RequestContext, image: ImageRecord, member_status: str | None) -> bool:
    """``member_status`` is the caller's membership of the image, if any."""
    if ctx.is_admin:
        return True
    if not ctx.can_read:
        return False
    if image.visibility in ("public", "community") or ctx.owns(image.owner):
        return True
    return image.visibility == "shared" and member_status is not None


def require_reader(ctx: RequestContext) -> None:
    if not ctx.can_read:
        raise NotPermitted("You are not authorized to complete get_images action.")


def require_writer(ctx: RequestContext, action: str = "add_image") -> None:
    if not ctx.can_write:
        raise NotPermitted(f"You are not authorized to complete {action} action.")


def require_modify(ctx: RequestContext, image: ImageRecord, action: str = "modify_image") -> None:
    """Change an image: admin, or a member of the owning project."""
    if ctx.is_admin:
        return
    if not (ctx.can_write and ctx.owns(image.owner)):
        raise NotPermitted(f"You are not authorized to complete {action} action.")


def require_modify_member(ctx: RequestContext, image: ImageRecord, member: str) -> None:
    """Accept or reject a share (``modify_member``): admin, or a member-role user of the consumer
    project itself; never the owner, who shares but does not decide for the consumer."""
    if ctx.is_admin:
        return
    if not (ctx.can_write and member == ctx.project_id and not ctx.owns(image.owner)):
        raise NotPermitted("You are not authorized to complete modify_member action.")


def require_visibility_change(ctx: RequestContext, visibility: str) -> None:
    """Publicizing is admin-only in Glance's defaults; community is open to owners."""
    if visibility == "public" and not ctx.is_admin:
        raise NotPermitted("You are not authorized to complete publicize_image action.")
