"""What the catalogue hands out: plain frozen records, no database objects."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Columns of the images table that the API shows as top-level attributes.
CORE_ATTRIBUTES = (
    "id", "name", "status", "visibility", "protected", "os_hidden", "disk_format",
    "container_format", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
    "min_disk", "min_ram", "owner", "created_at", "updated_at",
)

STATUSES = ("queued", "saving", "active", "killed", "deleted", "uploading", "importing",
            "pending_delete", "deactivated")
VISIBILITIES = ("public", "private", "shared", "community")
MEMBER_STATUSES = ("pending", "accepted", "rejected")


def utcnow() -> dt.datetime:
    """Naive UTC with microseconds: the catalogue's one time format."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def isotime(value: dt.datetime | None) -> str | None:
    """Glance shows times to the second, with a Z."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Location:
    store: str
    url: str
    metadata: dict[str, object]
    status: str = "active"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    name: str | None
    status: str
    visibility: str
    protected: bool
    os_hidden: bool
    disk_format: str | None
    container_format: str | None
    size: int | None
    virtual_size: int | None
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    min_disk: int
    min_ram: int
    owner: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    properties: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    locations: tuple[Location, ...] = ()

    @property
    def stores(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(loc.store for loc in self.locations if loc.status == "active"))


@dataclass(frozen=True, slots=True)
class MemberRecord:
    image_id: str
    member: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    type: str
    status: str
    owner: str | None
    user_id: str | None
    request_id: str | None
    image_id: str | None
    host: str
    input: dict[str, object]
    result: dict[str, object] | None
    message: str
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None
