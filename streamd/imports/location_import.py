"""The ``location_import`` task of ``POST /v2/images/{id}/locations`` (API 2.17), as Glance 33 runs it.

The API has checked the caller, the body and the URL (it names data in one of this node's
stores, whose size is known) and taken the image's import lock; this task then:

- records the location and the size;
- with ``do_secure_hash`` (Glance's default) reads the data once for ``checksum`` and
  ``os_hash_value`` (the algorithm ``validation_data`` names, else ``hashing_algorithm``):
  with ``validation_data`` the image is ``importing`` until the hash matches and only then
  ``active``; without, it is ``active`` at once and the hashes follow. A read that fails is
  tried again ``http_retries`` times;
- without ``do_secure_hash`` takes ``validation_data`` as given.

A mismatch or a read that keeps failing fails the task and puts the image back to ``queued``
with no hashes; the location goes with it, except an http one, which Glance keeps (its store
cannot delete). An image deleted while its data is being hashed ends the task: nothing is
read past the next second. Knows no HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Mapping

from ..catalog import Catalog, Location
from ..config import Config
from ..errors import DoesNotExist, InvalidRequest, StateConflict, StoreFailure
from ..pipeline import measure, reader_chunks
from ..pipeline.hashing import Digests
from ..stores import Store

log = logging.getLogger(__name__)

# How often a running hash looks whether its image still exists.
WATCH_INTERVAL = 1.0


class HashMismatch(InvalidRequest):
    """The data at the location is not what validation_data says."""


class LocationImport:
    def __init__(self, catalog: Catalog, config: Config, store: Store, image_id: str, url: str, size: int,
                 validation: Mapping[str, str]) -> None:
        self.catalog = catalog
        self.config = config
        self.store = store
        self.image_id = image_id
        self.url = url
        self.size = size
        self.validation = dict(validation)
        self.algorithm = self.validation.get("os_hash_algo") or config.default.hashing_algorithm

    async def run(self) -> None:
        """The whole task; raises what fails it (the image is put back first)."""
        location = Location(self.store.name, self.url, {})
        secure = self.config.default.do_secure_hash
        if secure and self.validation:
            await self.catalog.update_image(
                self.image_id, changes={"status": "importing", "size": self.size, "os_hash_algo": self.algorithm},
                expected_status="queued", locations=[location], expected_locations=[])
            try:
                digests = await self._hash()
                if digests.os_hash_value != self.validation["os_hash_value"]:
                    raise HashMismatch(f"os_hash_value: ({self.validation['os_hash_value']}) not matched with "
                                       f"actual os_hash_value: ({digests.os_hash_value})")
                await self.catalog.update_image(
                    self.image_id, expected_status="importing",
                    changes={"status": "active", "checksum": digests.checksum,
                             "os_hash_value": digests.os_hash_value})
            except (InvalidRequest, StoreFailure, StateConflict):
                await asyncio.shield(self._back_to_queued(location))
                raise
            return
        values: dict[str, object] = {"status": "active", "size": self.size}
        if secure:
            values["os_hash_algo"] = self.algorithm
        elif self.validation:
            values.update(self.validation)
        await self.catalog.update_image(self.image_id, changes=values, expected_status="queued",
                                        locations=[location], expected_locations=[])
        if not secure:
            return
        try:
            digests = await self._hash()
        except StoreFailure as exc:
            # The image is active with its location: only the hashes are missing (Glance logs it too).
            log.warning("hash calculation failed for image %s data at %s: %s", self.image_id, self.url, exc)
            await self.catalog.update_image(self.image_id, changes={"os_hash_algo": None})
            return
        await self.catalog.update_image(self.image_id, changes={"checksum": digests.checksum,
                                                                "os_hash_value": digests.os_hash_value})

    async def _hash(self) -> Digests:
        """md5 and ``self.algorithm`` of the data, trying again after failed reads."""
        attempts = self.config.default.http_retries + 1
        for attempt in range(1, attempts + 1):
            reader = await self.store.reader(self.url)
            try:
                measured = await measure(self._watched(reader_chunks(reader)), declared_size=None,
                                         size_cap=self.config.default.image_size_cap,
                                         hashing_algorithm=self.algorithm)
            except StoreFailure as exc:
                if attempt == attempts:
                    raise StoreFailure(f"Hash calculation failed for image {self.image_id} data: {exc}") from None
                log.debug("[%d/%d] hash calculation of image %s failed: %s", attempt, attempts, self.image_id, exc)
                continue
            finally:
                reader.close()
            assert measured.digests is not None
            return measured.digests
        raise AssertionError("unreachable")

    async def _watched(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, stopping with DoesNotExist once the image is deleted (on any node)."""
        loop = asyncio.get_running_loop()
        looked = loop.time()
        async for chunk in chunks:
            if loop.time() - looked >= WATCH_INTERVAL:
                await self.catalog.get_image(self.image_id)
                looked = loop.time()
            yield chunk

    async def _back_to_queued(self, location: Location) -> None:
        keep = self.store.read_only  # an http location stays, as in Glance (its store cannot delete)
        try:
            await self.catalog.update_image(
                self.image_id, changes={"status": "queued", "checksum": None, "os_hash_algo": None,
                                        "os_hash_value": None, **({} if keep else {"size": None})},
                locations=[location] if keep else [])
        except DoesNotExist:
            return
