"""What a rule is checked against: targets built as Glance 33 builds them.

- An existing image (Glance's ``ImageTarget``): every attribute of the image, its extra
  properties, ``project_id`` (an alias of ``owner``), ``id``, and ``member_id``: the caller's
  project when the image is ``shared`` and the caller is not its owner (Glance's database layer
  records the caller there, having found the image through that membership), else None.
- An image about to be created: ``project_id`` and ``owner`` (the requested owner, or the
  caller's project) and ``visibility`` (the requested one, or ``private``).
- Listing: the caller's own project.
- Member routes use the image's target: Glance checks member rules against the image, so
  ``modify_member``'s ``project_id:%(member_id)s`` compares the caller's project with itself
  as recorded on a shared image it does not own.
- Tasks, discovery and the cache without an image: an empty target.
"""

from __future__ import annotations

from typing import Any

from ..catalog.records import ImageRecord
from ..context import RequestContext


def image_target(ctx: RequestContext, image: ImageRecord) -> dict[str, Any]:
    member = ctx.project_id if image.visibility == "shared" and ctx.project_id != image.owner else None
    target: dict[str, Any] = dict(image.properties)
    target.update({
        "id": image.id, "image_id": image.id, "name": image.name, "status": image.status,
        "visibility": image.visibility, "protected": image.protected, "os_hidden": image.os_hidden,
        "disk_format": image.disk_format, "container_format": image.container_format,
        "size": image.size, "virtual_size": image.virtual_size, "checksum": image.checksum,
        "os_hash_algo": image.os_hash_algo, "os_hash_value": image.os_hash_value,
        "min_disk": image.min_disk, "min_ram": image.min_ram, "owner": image.owner,
        "project_id": image.owner, "created_at": image.created_at, "updated_at": image.updated_at,
        "tags": list(image.tags), "member": member, "member_id": member,
        "extra_properties": dict(image.properties),
    })
    return target


def new_image_target(ctx: RequestContext, owner: str | None, visibility: str | None) -> dict[str, Any]:
    owner = owner if owner is not None else ctx.project_id
    return {"project_id": owner, "owner": owner, "visibility": visibility or "private"}


def list_target(ctx: RequestContext) -> dict[str, Any]:
    return {"project_id": ctx.project_id}
