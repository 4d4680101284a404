"""The scrubber: deletes the data of ``pending_delete`` images once ``scrub_time`` has passed.

Glance's ``glance-scrubber`` in one class. :meth:`Scrubber.run_once` is one run: the daemon
calls it every ``wakeup_time`` seconds (a background job), ``streamd scrub`` once. Every
image is claimed in the catalogue first (``catalog/scrub.py``), so of several scrubbers on
nodes sharing a catalogue exactly one deletes each image's data; a location's row goes the
moment its data is gone, and a claim whose node died is taken over after ``claim_timeout``,
so a crash between deleting the data and marking the image deleted is finished by the next
run. Deleting data that is already gone is no error (the stores' contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator

from ..cache import ImageCache
from ..catalog import Catalog, Location
from ..catalog.scrub import ScrubClaim
from ..errors import DoesNotExist, InvalidStatusTransition, StoreUnavailable, StreamdError
from ..stores import StoreRegistry

log = logging.getLogger(__name__)

# A claim not renewed for this long is a dead node's; the holder renews it every third of it.
CLAIM_TIMEOUT = 300.0


@dataclass
class ScrubReport:
    """What one run did: images whose data this node deleted, and images it had to leave."""

    scrubbed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Scrubber:
    def __init__(self, catalog: Catalog, stores: StoreRegistry, cache: ImageCache | None, *,
                 scrub_time: float, pool_size: int = 1, claim_timeout: float = CLAIM_TIMEOUT) -> None:
        self.catalog = catalog
        self.stores = stores
        self.cache = cache
        self.scrub_time = scrub_time
        self.pool_size = max(1, pool_size)
        self.claim_timeout = claim_timeout

    async def run_once(self) -> ScrubReport:
        report = ScrubReport()
        candidates = await self.catalog.scrub_candidates(self.scrub_time, self.claim_timeout)
        if not candidates:
            return report
        queue: asyncio.Queue[str] = asyncio.Queue()
        for image_id in candidates:
            queue.put_nowait(image_id)

        async def worker() -> None:
            while not queue.empty():
                image_id = queue.get_nowait()
                done = await self.scrub_image(image_id)
                if done is True:
                    report.scrubbed.append(image_id)
                elif done is False:
                    report.failed.append(image_id)

        # A TaskGroup: should one worker fail outright, the others stop with it, none is left behind.
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.pool_size, len(candidates))):
                    group.create_task(worker())
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        if report.scrubbed or report.failed:
            log.info("scrubber: %d image(s) scrubbed, %d left in pending_delete",
                     len(report.scrubbed), len(report.failed))
        return report

    async def scrub_image(self, image_id: str) -> bool | None:
        """Delete the image's data and mark it deleted: True; False if a delete failed (the image
        stays pending_delete); None if another scrubber has it, or it was restored, meanwhile."""
        claim = await self.catalog.claim_scrub(image_id, self.scrub_time, self.claim_timeout)
        if claim is None:
            return None
        log.info("scrubbing image %s from %d location(s)", image_id, len(claim.locations))
        holder = _ClaimHolder(self.catalog, claim, self.claim_timeout / 3)
        try:
            async with holder.kept_alive():
                for location in claim.locations:
                    store = self.stores.for_location(location.store)
                    if store is None:
                        raise StoreUnavailable(f"store {location.store} is not enabled on this node")
                    await store.delete(location.url)
                    log.info("scrubber deleted the data of image %s from store %s", image_id, location.store)
                    await holder.location_gone(location)
                await holder.finish()
        except InvalidStatusTransition as exc:
            # Our claim was taken over (we were too slow, or thought dead): the new holder finishes.
            log.warning("scrubber: %s", exc.message)
            return None
        except (StreamdError, OSError) as exc:
            message = exc.message if isinstance(exc, StreamdError) else str(exc)
            log.warning("scrubber: image %s could not be scrubbed, leaving it in pending_delete: %s",
                        image_id, message)
            with contextlib.suppress(InvalidStatusTransition):
                await holder.release()
            return False
        if self.cache is not None:  # normally dropped at delete time already (the API does)
            with contextlib.suppress(DoesNotExist):
                await self.cache.delete(image_id)
        log.info("image %s has been scrubbed", image_id)
        return True


class _ClaimHolder:
    """One claim, renewed in the background while the stores delete (an RBD delete can be long)."""

    def __init__(self, catalog: Catalog, claim: ScrubClaim, renew_every: float) -> None:
        self.catalog = catalog
        self.claim = claim
        self.renew_every = renew_every
        self._lock = asyncio.Lock()
        self._lost: InvalidStatusTransition | None = None

    @contextlib.asynccontextmanager
    async def kept_alive(self) -> AsyncIterator[_ClaimHolder]:
        task = asyncio.create_task(self._renew_forever())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            async with self._lock:
                try:
                    self.claim = await self.catalog.renew_scrub(self.claim)
                except InvalidStatusTransition as exc:
                    self._lost = exc
                    return
                except StreamdError as exc:  # the catalogue hiccuped: the next renewal may succeed
                    log.warning("scrubber: cannot renew the claim on %s: %s", self.claim.image_id, exc.message)

    def _check(self) -> None:
        if self._lost is not None:
            raise self._lost

    async def location_gone(self, location: Location) -> None:
        async with self._lock:
            self._check()
            self.claim = await self.catalog.location_scrubbed(self.claim, location)

    async def finish(self) -> None:
        async with self._lock:
            self._check()
            await self.catalog.finish_scrub(self.claim)

    async def release(self) -> None:
        async with self._lock:
            self._check()
            await self.catalog.release_scrub(self.claim)
