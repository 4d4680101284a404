"""Quotas: ``user_storage_quota`` and Keystone's unified limits, checked where Glance 33 checks them.

Exactly one of the two applies (Glance ignores ``user_storage_quota`` with ``use_keystone_limits``):

``user_storage_quota`` (bytes)
    The project's data (every stored copy, and staged data) plus what the operation adds must fit.
    A declared size is checked before anything is read; data of unknown size gets a ``ByteBudget``
    and stops at the quota; after an upload the total is checked again (two uploads racing).
    ``StorageQuotaFull``, Glance's message.

unified limits (``image_size_total`` and ``image_stage_total`` in MiB, ``image_count_total``,
``image_count_uploading``)
    oslo.limit's flat model with Glance's counts and deltas: usage in whole MiB (floored) plus the
    delta (the size in whole MiB) must not pass the limit; a negative limit is none. The checks and
    where they run are Glance's (glance/quota/keystone.py and its callers): create
    (image_count_total, delta 1), upload (image_size_total before, image_count_uploading once the
    image is ``saving``), stage (image_stage_total, image_count_uploading), import (image_size_total
    at the API; then in the import glance-direct image_size_total, the others image_stage_total and
    image_count_uploading). streamd adds: data of unknown size stops where its size in whole MiB
    would pass the limit (where the same data with a declared size is refused); image_size_total
    is checked again after an upload and before a web-download or copy-image writes its stores;
    and a copy in each target store counts, as usage counts it. ``ProjectOverLimit``, with
    oslo.limit's text inside Glance's.

The project charged is the caller's (Glance's ``context.owner``), as in Glance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..catalog import Catalog, ImageRecord, ProjectUsage
from ..errors import LimitExceeded, ProjectOverLimit, StorageQuotaFull
from .keystone import KeystoneLimits

MiB = 1 << 20

IMAGE_SIZE_TOTAL = "image_size_total"
IMAGE_STAGE_TOTAL = "image_stage_total"
IMAGE_COUNT_TOTAL = "image_count_total"
IMAGE_COUNT_UPLOADING = "image_count_uploading"
# In the order Glance's usage document lists them.
LIMIT_NAMES = (IMAGE_SIZE_TOTAL, IMAGE_STAGE_TOTAL, IMAGE_COUNT_TOTAL, IMAGE_COUNT_UPLOADING)


@dataclass(frozen=True)
class ByteBudget:
    """The most bytes one stream may bring; ``refuse(received)`` is raised past it (by the pipeline,
    beside ``image_size_cap``)."""

    max_bytes: int
    refuse: Callable[[int], LimitExceeded]


def _current(name: str, usage: ProjectUsage) -> int:
    """Glance's usage values: the byte totals in whole MiB, floored."""
    return {IMAGE_SIZE_TOTAL: usage.stored_bytes // MiB, IMAGE_STAGE_TOTAL: usage.staged_bytes // MiB,
            IMAGE_COUNT_TOTAL: usage.images, IMAGE_COUNT_UPLOADING: usage.uploading}[name]


def over_limit(project_id: str, over: list[tuple[str, int, int, int]]) -> ProjectOverLimit:
    """Glance's 413 text: its LimitExceeded around oslo.limit's ProjectOverLimit."""
    items = ", ".join(f"Resource {name} is over limit of {limit} due to current usage {current} and delta {delta}"
                      for name, limit, current, delta in over)
    return ProjectOverLimit(
        "The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a "
        "quota threshold was breached.\n\nThe response body:\n"
        f"Project {project_id} is over a limit for [{items}]", tuple(over))


def storage_quota_full(size: int | None, remaining: int) -> StorageQuotaFull:
    """Glance's 413 text for user_storage_quota (image_data.py around StorageQuotaFull)."""
    return StorageQuotaFull(f"Image exceeds the storage quota: The size of the data {size} will exceed the limit. "
                            f"{remaining} bytes remaining.")


class Quotas:
    """The checks of every path, for any project; ``for_project`` binds one."""

    def __init__(self, catalog: Catalog, *, storage_quota: int, keystone: KeystoneLimits | None) -> None:
        self.catalog = catalog
        self.storage_quota = 0 if keystone is not None else storage_quota
        self.keystone = keystone

    def for_project(self, project_id: str | None) -> "ProjectQuota | None":
        """The checks charged to ``project_id``; None when nothing is limited (or no project)."""
        if project_id is None or (self.keystone is None and self.storage_quota <= 0):
            return None
        return ProjectQuota(self, project_id)

    async def usage(self, project_id: str | None) -> dict[str, dict[str, int]]:
        """``GET /v2/info/usage``: each unified limit with the project's usage; {} without them (Glance)."""
        if self.keystone is None or project_id is None:
            return {}
        limits = await self.keystone.limits(project_id, LIMIT_NAMES)
        usage = await self.catalog.project_usage(project_id)
        return {name: {"limit": limits[name], "usage": _current(name, usage)} for name in LIMIT_NAMES}


class ProjectQuota:
    """The checks of one project, named by where they run."""

    def __init__(self, quotas: Quotas, project_id: str) -> None:
        self.quotas = quotas
        self.project_id = project_id

    @property
    def _keystone(self) -> KeystoneLimits | None:
        return self.quotas.keystone

    async def _enforce(self, deltas: dict[str, int], usage: ProjectUsage | None = None) -> None:
        """oslo.limit's ``Enforcer.enforce`` (flat): each usage + delta against its limit."""
        keystone = self._keystone
        if keystone is None:
            return
        names = sorted(deltas)
        limits = await keystone.limits(self.project_id, names)
        if usage is None:
            usage = await self.quotas.catalog.project_usage(self.project_id)
        over = [(name, limits[name], _current(name, usage), deltas[name]) for name in names
                if limits[name] >= 0 and _current(name, usage) + deltas[name] > limits[name]]
        if over:
            raise over_limit(self.project_id, over)

    async def _limit_budget(self, name: str, copies: int = 1) -> ByteBudget | None:
        """The bytes a stream of unknown size may bring before its size in whole MiB (times
        ``copies``) would pass ``name``'s limit: where the same data with a declared size is refused."""
        keystone = self._keystone
        if keystone is None:
            return None
        limit = (await keystone.limits(self.project_id, [name]))[name]
        if limit < 0:
            return None
        current = _current(name, await self.quotas.catalog.project_usage(self.project_id))
        whole_mib = max(0, limit - current) // copies  # the largest delta (per copy) that still fits

        def refuse(received: int) -> LimitExceeded:
            return over_limit(self.project_id, [(name, limit, current, received // MiB * copies)])

        return ByteBudget((whole_mib + 1) * MiB - 1, refuse)

    async def _storage_remaining(self, image_id: str) -> int | None:
        """Bytes of user_storage_quota left to ``image_id`` (the image's own data not counted)."""
        quota = self.quotas.storage_quota
        if quota <= 0:
            return None
        usage = await self.quotas.catalog.project_usage(self.project_id, exclude_image=image_id)
        return quota - usage.stored_bytes - usage.staged_bytes

    async def _storage_budget(self, image_id: str, size: int | None, copies: int = 1) -> ByteBudget | None:
        """Glance's ``check_quota`` (refuse a size that does not fit, or any data when nothing is left),
        and for data of unknown size the budget that stops it at the quota."""
        remaining = await self._storage_remaining(image_id)
        if remaining is None:
            return None
        if size is not None and size * copies > remaining:
            raise storage_quota_full(size * copies, remaining)
        if size is None and remaining <= 0:
            raise storage_quota_full(size, remaining)
        return ByteBudget(max(0, remaining) // copies, lambda received: storage_quota_full(received * copies,
                                                                                          remaining))

    # -- create -------------------------------------------------------------------------------

    async def check_create(self) -> None:
        await self._enforce({IMAGE_COUNT_TOTAL: 1})

    # -- PUT /file ---------------------------------------------------------------------------------

    async def before_upload(self, image_id: str, declared_size: int | None) -> ByteBudget | None:
        """Before the image is claimed: image_size_total with the declared size, or the storage quota."""
        if self._keystone is not None:
            await self._enforce({IMAGE_SIZE_TOTAL: (declared_size or 0) // MiB})
            return await self._limit_budget(IMAGE_SIZE_TOTAL)
        return await self._storage_budget(image_id, declared_size)

    async def after_claim(self) -> None:
        """Once the image counts as uploading (``saving``, ``uploading``): image_count_uploading."""
        await self._enforce({IMAGE_COUNT_UPLOADING: 0})

    async def check_stored(self, image_id: str, size: int, copies: int = 1) -> None:
        """The data is written, not yet recorded: does it still fit, now that other uploads of the
        project may have finished meanwhile?"""
        if self._keystone is not None:
            await self._enforce({IMAGE_SIZE_TOTAL: size * copies // MiB})
            return
        remaining = await self._storage_remaining(image_id)
        if remaining is not None and size * copies > remaining:
            raise storage_quota_full(size * copies, remaining)

    # -- locations a client adds (PATCH /locations, POST /v2/images/{id}/locations) ---------------

    async def before_locations(self, image_id: str, size: int, existing: int, added: int) -> None:
        """Glance's ``_check_user_storage_quota``: ``added`` more locations of ``size`` bytes must fit
        in user_storage_quota beside everything the project holds (this image's ``existing``
        locations included). Keystone's limits are not checked here, as in Glance."""
        if added <= 0 or size <= 0:
            return
        remaining = await self._storage_remaining(image_id)
        if remaining is None:
            return
        remaining -= size * existing
        if size * added > remaining:
            raise storage_quota_full(size * added, remaining)

    # -- PUT /stage ------------------------------------------------------------------------------------

    async def before_stage(self, image_id: str, declared_size: int | None) -> ByteBudget | None:
        if self._keystone is not None:
            await self._enforce({IMAGE_STAGE_TOTAL: (declared_size or 0) // MiB})
            return await self._limit_budget(IMAGE_STAGE_TOTAL)
        return await self._storage_budget(image_id, declared_size)

    # -- POST /import ------------------------------------------------------------------------------------

    async def before_import(self) -> None:
        """At the API, before the import is accepted (Glance: image_size_total, delta 0)."""
        await self._enforce({IMAGE_SIZE_TOTAL: 0})

    async def import_started(self, method: str, image: ImageRecord, size: int | None, stores: int) -> None:
        """In the import, once the image is marked importing (Glance's ``assert_quota``): glance-direct
        brings its staged size into ``stores`` stores; the others use staging, and count as uploading."""
        if self._keystone is not None:
            if method == "glance-direct":
                await self._enforce({IMAGE_SIZE_TOTAL: (size or 0) * stores // MiB})
            else:
                usage = await self.quotas.catalog.project_usage(self.project_id)
                await self._enforce({IMAGE_STAGE_TOTAL: (size or 0) // MiB, IMAGE_COUNT_UPLOADING: 0}, usage)
            return
        if size is not None:
            await self.check_stored(image.id, size, len(image.locations) + stores)

    async def download_budget(self, image_id: str, stores: int) -> ByteBudget | None:
        """web-download into staging: stops where the data would pass image_stage_total, or (once in
        ``stores`` stores) the storage quota."""
        if self._keystone is not None:
            return await self._limit_budget(IMAGE_STAGE_TOTAL)
        return await self._storage_budget(image_id, None, copies=stores)

    async def before_store(self, image: ImageRecord, size: int, stores: int) -> None:
        """Data of known size is about to enter ``stores`` more stores (web-download once staged,
        copy-image): the project's stored total after it must fit."""
        await self.check_stored(image.id, size, len(image.locations) + stores if self._keystone is None
                                else stores)
