"""How records look on the wire (Glance's ``ResponseSerializer``)."""

from __future__ import annotations

from typing import Any, Callable

from ..catalog.records import ImageRecord, MemberRecord, isotime

# Properties streamd keeps for itself and never shows (Glance hides the same two).
HIDDEN_PROPERTIES = frozenset({"os_glance_stage_host", "os_glance_hash_op_host"})


def image_view(image: ImageRecord, readable: Callable[[str], bool] | None = None, *,
               locations: list[dict[str, Any]] | None = None, direct_url: str | None = None,
               stores: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``readable``: which extra properties the caller may see (property protections); all when None.
    ``locations`` (show_multiple_locations) and ``direct_url`` (show_image_direct_url) are shown
    when given; ``stores`` in the order they are to be listed (default: the locations' order)."""
    view: dict[str, Any] = {k: v for k, v in image.properties.items()
                            if k not in HIDDEN_PROPERTIES and (readable is None or readable(k))}
    view.update({
        "name": image.name,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "visibility": image.visibility,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "status": image.status,
        "checksum": image.checksum,
        "protected": image.protected,
        "min_ram": image.min_ram,
        "min_disk": image.min_disk,
        "owner": image.owner,
        "os_hidden": image.os_hidden,
        "os_hash_algo": image.os_hash_algo,
        "os_hash_value": image.os_hash_value,
        "id": image.id,
        "created_at": isotime(image.created_at),
        "updated_at": isotime(image.updated_at),
    })
    if locations is not None:
        view["locations"] = locations
    if direct_url is not None:
        view["direct_url"] = direct_url
    view.update({
        "tags": list(image.tags),
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    })
    if stores is None:
        stores = image.stores
    if stores:
        view["stores"] = ",".join(stores)
    return view


def member_view(member: MemberRecord) -> dict[str, Any]:
    return {
        "created_at": isotime(member.created_at),
        "image_id": member.image_id,
        "member_id": member.member,
        "schema": "/v2/schemas/member",
        "status": member.status,
        "updated_at": isotime(member.updated_at),
    }
