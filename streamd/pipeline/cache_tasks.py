"""The cache's background work inside the daemon: prefetcher, pruner, cleaner.

Glance needs cron jobs on every node for these; streamd runs them itself.
"""

from __future__ import annotations

import asyncio
import logging

from ..cache import ImageCache
from ..catalog import Catalog
from ..context import RequestContext
from ..errors import DoesNotExist, StreamdError
from .download import ImageDelivery

log = logging.getLogger(__name__)
PREFETCH_CONCURRENCY = 3


class Prefetcher:
    def __init__(self, catalog: Catalog, cache: ImageCache, delivery: ImageDelivery) -> None:
        self.catalog = catalog
        self.cache = cache
        self.delivery = delivery
        self._running: dict[str, asyncio.Task[bool]] = {}

    async def fetch(self, image_id: str) -> bool:
        """Cache one queued image now; it leaves the queue once cached or gone."""
        try:
            image = await self.catalog.get_image(image_id, RequestContext.admin())
        except DoesNotExist:
            await self.cache.dequeue(image_id)
            log.info("prefetch: image %s no longer exists; removed from the queue", image_id)
            return False
        if image.status != "active":
            return False  # stays queued until it is active
        try:
            cached = await self.delivery.prefetch(image)
        except StreamdError as exc:
            log.warning("prefetch of %s failed: %s", image_id, exc.message)
            return False
        if cached:
            await self.cache.dequeue(image_id)
        return cached

    def fetch_soon(self, image_id: str) -> asyncio.Task[bool]:
        """Start fetching in the background (PUT /v2/cache/{id}, queue-image --now)."""
        task = self._running.get(image_id)
        if task is None or task.done():
            task = asyncio.create_task(self.fetch(image_id), name=f"prefetch-{image_id}")
            self._running[image_id] = task
            task.add_done_callback(lambda _t: self._running.pop(image_id, None))
        return task

    async def run_once(self) -> int:
        queued = [image_id for image_id, _ in await self.cache.queued()]
        gate = asyncio.Semaphore(PREFETCH_CONCURRENCY)

        async def one(image_id: str) -> bool:
            async with gate:
                return await self.fetch_soon(image_id)

        results = await asyncio.gather(*(one(i) for i in queued))
        return sum(results)

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()


async def verify_stale_entry(catalog: Catalog, cache: ImageCache, delivery: ImageDelivery, max_age: float) -> str | None:
    """Re-hash the cached image verified longest ago, if that was more than ``max_age`` seconds ago."""
    import time

    entries = [e for e in await cache.entries() if e.image_id not in cache.fills]
    if not entries or max_age <= 0:
        return None
    oldest = min(entries, key=lambda e: e.verified_at or 0.0)
    if oldest.verified_at is not None and time.time() - oldest.verified_at < max_age:
        return None
    try:
        image = await catalog.get_image(oldest.image_id, RequestContext.admin())
    except DoesNotExist:
        await cache.delete(oldest.image_id)
        return oldest.image_id
    if not await delivery.verify_cached(image):
        log.warning("cache: %s failed its scheduled verification and was evicted", image.id)
    return image.id
