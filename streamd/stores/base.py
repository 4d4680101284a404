"""The store contract: what every store offers the data path, and what it can say of itself.

Callers outside ``stores/`` see only this contract (and the registry): they ask a
store what it can do (``local``, ``can_adopt``, ``properties``) instead of testing
which driver it is. Stores know nothing of HTTP or the catalogue.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..background import PeriodicJob
from ..errors import StoreFailure


@dataclass(frozen=True)
class StoredData:
    """What a store reports after a write: checked against the stream in one place (pipeline)."""

    url: str
    size: int
    metadata: dict[str, object] = field(default_factory=dict)


class Writer(abc.ABC):
    """One image being written. ``write`` runs in a worker thread, in order; the rest on the loop."""

    @abc.abstractmethod
    def write(self, chunk: bytes) -> None:
        """Append ``chunk``. Blocking; called from one worker thread, chunks in order."""

    @abc.abstractmethod
    async def commit(self) -> StoredData:
        """Make the data durable and visible under its final name."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Remove everything written so far. Safe to call more than once."""


class Reader(abc.ABC):
    size: int

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``. Blocking; called from a worker thread."""

    def close(self) -> None:
        return None

    def fileno(self) -> int | None:
        """The descriptor of a plain file holding the image from offset 0, or None: lets the
        edge copy the bytes to the socket in a thread, off the event loop."""
        return None


class FdReader(Reader):
    """A plain file open for reading, the image from offset 0: the one reader of a file
    descriptor (file store and cache alike). ``close`` closes the descriptor."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def fileno(self) -> int | None:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


class Store(abc.ABC):
    name: str
    type: str
    # Local stores (files on this node) read as fast as the cache would: no need to copy them.
    local: bool = False
    # Read-only stores (http) serve data others keep: no upload, import or copy goes to them.
    read_only: bool = False

    async def start(self) -> None:
        """Connect, create directories, and clear what an earlier crash left half-written."""

    async def stop(self) -> None:
        return None

    def background_jobs(self) -> list[PeriodicJob]:
        """Periodic work the store needs (e.g. a reaper); the node's supervisor runs it."""
        return []

    @abc.abstractmethod
    async def writer(self, image_id: str, expected_size: int | None) -> Writer:
        ...

    @abc.abstractmethod
    async def reader(self, url: str) -> Reader:
        ...

    async def check_deletable(self, url: str) -> None:
        """Raise StateConflict if the data at ``url`` is in use (RBD clones) and must stay."""

    @abc.abstractmethod
    async def delete(self, url: str) -> None:
        """Remove the data at ``url``; a missing object is not an error."""

    def owns(self, url: str) -> bool:
        """True if ``url`` (a location, e.g. ``file:///...`` or ``rbd://fsid/pool/image/snap``) names
        data in this store."""
        return False

    def can_adopt(self, path: Path) -> bool:
        """True if the store can take the whole local file ``path`` (staged data) as an image's
        data without copying it: by a rename or a hard link."""
        return False

    async def adopt(self, image_id: str, path: Path, *, link: bool = False) -> StoredData:
        """Take ``path`` as ``image_id``'s data (only where ``can_adopt``); ``link`` leaves ``path``."""
        raise StoreFailure(f"store {self.name} cannot take files without copying them")

    def properties(self) -> dict[str, object]:
        """What the store shows of itself in ``/v2/info/stores/detail`` (Glance's per-driver keys)."""
        return {}
