"""Rules about one image, with Glance 33's answers when they refuse (``glance/api/v2/policy.py``).

A refused rule is a 403 "You are not authorized to complete X action." only when the caller
may see the image (``get_image``); otherwise it is a 404, so that a refusal never reveals an
image the caller cannot see. Visibility changes (``publicize_image``, ``communitize_image``)
are always 403: Glance checks them without that translation. With ``enforce_new_defaults =
false`` Glance adds its legacy owner checks to some rules; they are here too.
"""

from __future__ import annotations

from typing import Any

from ..catalog.records import ImageRecord
from ..context import RequestContext
from ..errors import DoesNotExist, NotPermitted
from .enforcer import PolicyEnforcer
from .targets import image_target, new_image_target

# webob's explanation of a bare HTTPNotFound, which is what Glance raises here.
NOT_FOUND = "The resource could not be found."
# Rules after which Glance (legacy defaults only) also requires the caller to own the image.
_LEGACY_OWNER_RULES = frozenset({"modify_image", "delete_image", "upload_image", "deactivate", "reactivate",
                                 "delete_image_location"})


class ImagePolicy:
    """The rules of one image for one caller (Glance's ``ImageAPIPolicy``)."""

    def __init__(self, enforcer: PolicyEnforcer, ctx: RequestContext, image: ImageRecord) -> None:
        self.enforcer = enforcer
        self.ctx = ctx
        self.image = image
        self.target: dict[str, Any] = image_target(ctx, image)

    def allows(self, rule: str) -> bool:
        return self.enforcer.allows(self.ctx, rule, self.target)

    def enforce(self, rule: str) -> None:
        if self.allows(rule):
            if self.enforcer.legacy_ownership and rule in _LEGACY_OWNER_RULES:
                self._legacy_owner_check()
            return
        if rule == "get_image" or not self.allows("get_image"):
            raise DoesNotExist(NOT_FOUND)
        raise NotPermitted(f"You are not authorized to complete {rule} action.")

    def check(self, rule: str) -> bool:
        """``enforce`` as a yes/no (a 404 is a no too)."""
        try:
            self.enforce(rule)
        except (NotPermitted, DoesNotExist):
            return False
        return True

    def enforce_visibility(self, visibility: Any) -> None:
        """The rule of becoming ``public`` or ``community``; other values have none."""
        enforce_visibility(self.enforcer, self.ctx, self.target, visibility)

    def update_property(self, name: str, value: Any = None) -> None:
        """One change of a JSON patch: its visibility rule, then ``modify_image``."""
        if name == "visibility":
            self.enforce_visibility(value)
        self.enforce("modify_image")

    def _legacy_owner_check(self) -> None:
        if self.enforcer.is_admin(self.ctx):
            return
        if self.image.owner is None or self.ctx.project_id is None or self.image.owner != self.ctx.project_id:
            raise NotPermitted("You do not own this image")


def enforce_visibility(enforcer: PolicyEnforcer, ctx: RequestContext, target: dict[str, Any], visibility: Any) -> None:
    if visibility == "public":
        enforcer.enforce(ctx, "publicize_image", target)
    elif visibility == "community":
        enforcer.enforce(ctx, "communitize_image", target)


def enforce_add_image(enforcer: PolicyEnforcer, ctx: RequestContext, owner: str | None,
                      visibility: str | None) -> None:
    """``add_image`` for an image not created yet, then its visibility (Glance's ``add_image``)."""
    target = new_image_target(ctx, owner, visibility)
    if not enforcer.allows(ctx, "add_image", target):
        if target["owner"] != ctx.project_id:
            raise NotPermitted(f"You are not permitted to create images owned by '{target['owner']}'")
        raise NotPermitted("You are not authorized to complete add_image action.")
    enforce_visibility(enforcer, ctx, target, target["visibility"])
    if enforcer.legacy_ownership and not enforcer.is_admin(ctx) and owner is not None and owner != ctx.project_id:
        raise NotPermitted(f"You are not permitted to create images owned by '{owner}'.")
