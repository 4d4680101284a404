"""The image status machine (Glance's ``Image.valid_state_targets``)."""

from __future__ import annotations

from ..errors import InvalidStatusTransition

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"saving", "uploading", "importing", "active", "deleted"}),
    "saving": frozenset({"active", "killed", "deleted", "queued"}),
    "uploading": frozenset({"importing", "queued", "deleted"}),
    "importing": frozenset({"active", "queued", "deleted"}),
    "active": frozenset({"pending_delete", "deleted", "deactivated"}),
    "deactivated": frozenset({"active", "deleted"}),
    "killed": frozenset({"deleted"}),
    "pending_delete": frozenset({"deleted", "active"}),
    "deleted": frozenset(),
}

# Moving into these needs disk_format and container_format to be set.
NEEDS_FORMATS = frozenset({"saving", "active", "importing"})


def check_transition(image_id: str, current: str, target: str) -> None:
    if target not in TRANSITIONS.get(current, frozenset()):
        raise InvalidStatusTransition(
            f"Image {image_id} status transition from {current} to {target} is not allowed")
