"""Uploading image data: stream -> (md5 | os_hash | store) -> catalogue, losing nothing on failure.

The status moves ``queued -> saving -> active`` with compare-and-swap writes.
Any failure (the client goes away, the size cap or the declared size is
crossed, the store fails or fills up, the daemon shuts down) removes what was
written and puts the image back to ``queued``; an image deleted during its
upload gets its data removed and the caller a 410.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator

from ..catalog import Catalog, ImageRecord
from ..errors import BadRequest, Gone, ImageSizeLimitExceeded, NotFound
from ..formats import ImageInspection, InspectionPolicy
from ..stores import Store, Writer
from .fanout import FanOut
from .hashing import ImageHasher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadLimits:
    size_cap: int
    hashing_algorithm: str
    # A few chunks in flight keep every consumer busy; more would only cost memory per upload.
    max_inflight: int = 16 << 20
    # Format inspection of container_format=bare images ([image_format] options).
    require_image_format_match: bool = True
    gpt_safety_checks_nonfatal: frozenset[str] = frozenset()


def inspection_for(image: ImageRecord, limits: UploadLimits) -> ImageInspection | None:
    """Glance inspects the data of ``bare`` images only (glance/location.py ``set_data``)."""
    if image.container_format != "bare" or not image.disk_format:
        return None
    return ImageInspection(InspectionPolicy(image.disk_format, limits.require_image_format_match,
                                            limits.gpt_safety_checks_nonfatal))


async def upload_image(catalog: Catalog, store: Store, image_id: str, chunks: AsyncIterator[bytes], *,
                       declared_size: int | None, limits: UploadLimits, host: str) -> ImageRecord:
    if declared_size is not None and declared_size > limits.size_cap:
        raise ImageSizeLimitExceeded(
            f"Image size {declared_size} exceeds the maximum of {limits.size_cap} bytes (image_size_cap)")
    image = await catalog.begin_upload(image_id, host)
    # Sees each chunk on the loop before it is stored: cheap (only the first bytes are
    # parsed; after that it counts) and it refuses a bad image (415) before more is written.
    inspection = inspection_for(image, limits)
    writer: Writer | None = None
    fanout: FanOut | None = None
    try:
        writer = await store.writer(image_id, declared_size)
        hasher = ImageHasher(limits.hashing_algorithm)
        fanout = FanOut([hasher.update_md5, hasher.update_os_hash, writer.write],
                        max_inflight=limits.max_inflight, name=f"upload-{image_id[:8]}")
        received = 0
        async for chunk in chunks:
            if not chunk:
                continue
            received += len(chunk)
            if received > limits.size_cap:
                raise ImageSizeLimitExceeded(
                    f"Image exceeds the maximum size of {limits.size_cap} bytes (image_size_cap)")
            if declared_size is not None and received > declared_size:
                raise BadRequest(f"Image data is longer than the declared size of {declared_size} bytes")
            if inspection is not None:
                inspection.feed(chunk)
            await fanout.feed(chunk)
        if declared_size is not None and received != declared_size:
            raise BadRequest(f"Image data ended after {received} of the declared {declared_size} bytes")
        virtual_size = inspection.finish().virtual_size if inspection is not None else None
        await fanout.close()
        stored = await writer.commit()
        if stored.size != received:
            # Every store's result is checked here, in one place.
            raise BadRequest(f"Store {store.name} wrote {stored.size} bytes of {received}")
        digests = hasher.digests()
        try:
            return await catalog.finish_upload(
                image_id, size=received, checksum=digests.checksum, os_hash_algo=digests.os_hash_algo,
                os_hash_value=digests.os_hash_value, store=store.name, url=stored.url, metadata=stored.metadata,
                virtual_size=virtual_size)
        except NotFound:
            await store.delete(stored.url)
            raise Gone(f"Image {image_id} was deleted during its upload; its data has been removed") from None
    except BaseException:
        # Cleanup must finish even if this task is being cancelled (client gone, shutdown).
        await asyncio.shield(_undo(catalog, image_id, fanout, writer))
        raise


async def _undo(catalog: Catalog, image_id: str, fanout: FanOut | None, writer: Writer | None) -> None:
    if fanout is not None:
        await fanout.abort()
    if writer is not None:
        await writer.abort()
    if await catalog.abort_upload(image_id):
        log.info("upload of image %s failed; image is queued again", image_id)
