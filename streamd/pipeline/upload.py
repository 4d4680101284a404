"""Uploading image data: stream -> (md5 | os_hash | signature | store) -> catalogue, losing nothing on failure.

The status moves ``queued -> saving -> active`` with compare-and-swap writes.
Any failure (the client goes away, the size cap or the declared size is
crossed, the store fails or fills up, the daemon shuts down) removes what was
written and puts the image back to ``queued``; an image deleted during its
upload gets its data removed and the caller a 410.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator

from .. import metrics
from ..catalog import Catalog, ImageRecord
from ..config import Config
from ..errors import ImageVanished, DoesNotExist
from ..formats import ImageInspection, InspectionPolicy
from ..quota import ProjectQuota
from ..signing import Signatures
from ..stores import Store
from .ingest import refuse_oversized, write_to_stores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadLimits:
    size_cap: int
    hashing_algorithm: str
    # A few chunks in flight keep every consumer busy; more would only cost memory per upload
    # ([DEFAULT] upload_buffer_size).
    max_inflight: int = 32 << 20
    # Format inspection of container_format=bare images ([image_format] options).
    require_image_format_match: bool = True
    gpt_safety_checks_nonfatal: frozenset[str] = frozenset()
    # Image signatures (the img_signature* properties): verified while the data streams. None: signed
    # images are stored unverified (only for callers that never activate data).
    signatures: Signatures | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, config: Config, signatures: Signatures | None = None) -> "UploadLimits":
        """The limits every way in (upload, stage, web-download, import) takes from the configuration."""
        return cls(size_cap=config.default.image_size_cap, hashing_algorithm=config.default.hashing_algorithm,
                   max_inflight=config.default.upload_buffer_size,
                   require_image_format_match=config.image_format.require_image_format_match,
                   gpt_safety_checks_nonfatal=frozenset(config.image_format.gpt_safety_checks_nonfatal),
                   signatures=signatures)


def inspection_for(image: ImageRecord, limits: UploadLimits) -> ImageInspection | None:
    """Glance inspects the data of ``bare`` images only (glance/location.py ``set_data``)."""
    if image.container_format != "bare" or not image.disk_format:
        return None
    return ImageInspection(InspectionPolicy(image.disk_format, limits.require_image_format_match,
                                            limits.gpt_safety_checks_nonfatal))


async def upload_image(catalog: Catalog, store: Store, image_id: str, chunks: AsyncIterator[bytes], *,
                       declared_size: int | None, limits: UploadLimits, host: str,
                       quota: ProjectQuota | None = None) -> ImageRecord:
    """``quota``: the caller's project's quotas, checked as Glance checks them (the size before the
    image is claimed, the uploads in flight once it is, the total again once the data is written),
    and data of unknown size stopped where it would pass them."""
    refuse_oversized(declared_size, limits.size_cap)  # before the image is marked saving
    budget = await quota.before_upload(image_id, declared_size) if quota is not None else None
    image = await catalog.begin_upload(image_id, host)
    try:
        if quota is not None:
            await quota.after_claim()
        # As Glance's set_data: the verifier (and so the certificate) before any byte is read; a
        # refusal puts the image back to queued like any failure.
        verifier = (await limits.signatures.verifier_for(image_id, image.properties)
                    if limits.signatures is not None else None)
        # The inspection sees each chunk on the loop before it is stored: cheap (only the first
        # bytes are parsed; after that it counts) and it refuses a bad image (415) before more is written.
        ingested = await write_to_stores(
            [store], image_id, chunks, declared_size=declared_size, size_cap=limits.size_cap,
            hashing_algorithm=limits.hashing_algorithm, inspection=inspection_for(image, limits),
            max_inflight=limits.max_inflight, budget=budget, signature=verifier)
        stored = ingested.stored[store.name]
        if quota is not None:
            try:
                await quota.check_stored(image_id, ingested.size)
            except BaseException:
                await asyncio.shield(store.delete(stored.url))
                raise
        digests = ingested.digests
        assert digests is not None
        try:
            return await catalog.finish_upload(
                image_id, size=ingested.size, checksum=digests.checksum, os_hash_algo=digests.os_hash_algo,
                os_hash_value=digests.os_hash_value, store=store.name, url=stored.url, metadata=stored.metadata,
                virtual_size=ingested.virtual_size)
        except DoesNotExist:
            await store.delete(stored.url)
            raise ImageVanished(f"Image {image_id} was deleted during its upload; its data has been removed") from None
    except BaseException as exc:
        metrics.upload_failed("upload", exc)
        # Cleanup must finish even if this task is being cancelled (client gone, shutdown).
        if await asyncio.shield(catalog.abort_upload(image_id)):
            log.info("upload of image %s failed; image is queued again", image_id)
        raise
