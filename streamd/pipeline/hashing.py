"""The two digests Glance records for every image: md5 ``checksum`` and ``os_hash_value``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Digests:
    checksum: str
    os_hash_algo: str
    os_hash_value: str


class ImageHasher:
    """Two independent hash objects, each a lane of the shared hash pool (``FanOut``): each is
    updated by one thread at a time, in order, and the two may run side by side."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._os_hash = hashlib.new(algorithm)

    def update_md5(self, chunk: bytes) -> None:
        self._md5.update(chunk)

    def update_os_hash(self, chunk: bytes) -> None:
        self._os_hash.update(chunk)

    def digests(self) -> Digests:
        return Digests(self._md5.hexdigest(), self.algorithm, self._os_hash.hexdigest())
