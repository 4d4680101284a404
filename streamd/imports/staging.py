"""The staging area: image data that waits for an import, on this node's disk.

``PUT /stage`` and web-download write here through the same pipeline as an
upload (hashed and inspected while the bytes arrive), so that the import itself
need not read the data twice. Beside each staged file ``<image>`` lies
``<image>.json``: its size and digests, written (atomically) only once the data
is whole, so a file without one is an interrupted staging and is never
imported. Plugins write their outputs as ``<image>.<suffix>``.

Staging is always cleaned: after an import succeeds or fails, and at start-up
for anything whose image no longer waits for an import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AsyncIterator

from ..catalog import ImageRecord
from ..pipeline import Progress, UploadLimits, inspection_for, write_to_stores
from ..quota import ByteBudget
from ..signing import HASH_METHOD, HASH_METHODS, SignatureHash, signing_requested
from ..stores import local_directory_store

log = logging.getLogger(__name__)

STAGING_STORE = "os_glance_staging_store"


@dataclass(frozen=True)
class StagedMeta:
    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str
    virtual_size: int | None
    # The disk_format the data was inspected as while it was staged (None: not inspected, e.g.
    # staged before the image had its formats); the import inspects it before any store takes it.
    inspected_format: str | None = None
    # The digest an image signature covers, computed while the data arrived (the image had its
    # img_signature* properties then): the import checks the signature on it without reading again.
    signature_hash_method: str | None = None
    signature_digest: str | None = None


class StagingArea:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Staged data is written through the same store contract as image data (hashed and inspected on the way).
        self.store = local_directory_store(STAGING_STORE, directory)

    async def start(self) -> None:
        await self.store.start()

    def path_of(self, image_id: str) -> Path:
        return self.directory / image_id

    def _meta_path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}.json"

    async def ingest(self, image: ImageRecord, chunks: AsyncIterator[bytes], *, declared_size: int | None,
                     limits: UploadLimits, progress: Progress | None = None,
                     budget: ByteBudget | None = None) -> StagedMeta:
        """Stream ``chunks`` in as ``image``'s staged data: hashed and inspected as an upload would
        be (a refused image is a 415 before more is written), then recorded whole. On failure
        nothing of it stays behind."""
        inspection = inspection_for(image, limits)
        method = image.properties.get(HASH_METHOD) if signing_requested(image.properties) else None
        signature = SignatureHash(method) if method in HASH_METHODS else None
        ingested = await write_to_stores(
            [self.store], image.id, chunks, declared_size=declared_size, size_cap=limits.size_cap,
            hashing_algorithm=limits.hashing_algorithm, inspection=inspection, progress=progress, budget=budget,
            signature=signature, operation="stage", max_inflight=limits.max_inflight)
        digests = ingested.digests
        assert digests is not None
        meta = StagedMeta(ingested.size, digests.checksum, digests.os_hash_algo, digests.os_hash_value,
                          ingested.virtual_size, image.disk_format if inspection is not None else None,
                          signature_hash_method=method if signature is not None else None,
                          signature_digest=ingested.signature_digest.hex() if ingested.signature_digest else None)
        await asyncio.to_thread(self.record, image.id, meta)
        return meta

    def has_data(self, image_id: str) -> bool:
        return self.path_of(image_id).exists()

    def record(self, image_id: str, meta: StagedMeta) -> None:
        """Mark the staged data whole (after the data file was fsynced and renamed into place)."""
        final = self._meta_path(image_id)
        temp = final.with_suffix(".json.tmp")
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(asdict(meta), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp, final)

    def load(self, image_id: str) -> StagedMeta | None:
        try:
            with open(self._meta_path(image_id), encoding="utf-8") as handle:
                return StagedMeta(**json.load(handle))
        except FileNotFoundError:
            return None

    def remove(self, image_id: str) -> None:
        """The staged data, its record and every plugin output of the image."""
        for path in self.directory.glob(f"{image_id}*"):
            if path.is_file() and path.name.split(".", 1)[0] == image_id:
                path.unlink(missing_ok=True)

    def staged_ids(self) -> set[str]:
        return {p.name.split(".", 1)[0] for p in self.directory.iterdir() if p.is_file()}

    def clean(self, statuses: dict[str, str], busy: set[str], *, only_gone: bool = False) -> list[str]:
        """Remove what no import will ever use: files of images that are gone, or that do not
        wait for an import (status ``uploading`` with a complete record) and have none running.

        ``only_gone`` (while the daemon runs, when a stage may be between its data and its record):
        only the files of images deleted meanwhile, e.g. through another node."""
        removed = []
        for image_id in sorted(self.staged_ids()):
            if image_id in busy:
                continue
            if only_gone and image_id in statuses:
                continue
            if statuses.get(image_id) == "uploading" and self.load(image_id) is not None:
                continue
            self.remove(image_id)
            removed.append(image_id)
        if removed:
            log.info("staging: removed leftovers of %d image(s): %s", len(removed), ", ".join(removed))
        return removed
