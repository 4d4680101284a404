"""The store contract: what every store offers the data path, and what it can say of itself.

Callers outside ``stores/`` see only this contract (and the registry): they ask a
store what it can do (``local``, ``can_adopt``, ``properties``) instead of testing
which driver it is. Stores know nothing of HTTP or the catalogue.
"""

from __future__ import annotations

import abc
import os
import secrets
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


@dataclass(frozen=True)
class StoreHealth:
    """What a store's ``check`` found: a line for the admins' detailed health output, and the free
    space where the store can tell (None: it cannot)."""

    details: str
    free_bytes: int | None = None


PROBE_DATA = b"streamd health probe\n"


def probe_directory(directory: Path) -> int:
    """Write a small file in ``directory``, fsync it, read it back and remove it; the free bytes
    of its filesystem. Blocking (run it in a thread). Raises OSError, or ValueError if the bytes
    read back are not the bytes written."""
    path = directory / f".healthcheck.{secrets.token_hex(6)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, PROBE_DATA, 0)
        os.fsync(fd)
        if os.pread(fd, len(PROBE_DATA) + 1, 0) != PROBE_DATA:
            raise ValueError(f"{path} did not read back what was written")
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class Writer(abc.ABC):
    """One image being written. ``write`` runs in a worker thread, in order; the rest on the loop."""

    @abc.abstractmethod
    def write(self, chunk: bytes) -> None:
        """Append ``chunk``. Blocking; called from the node's store-writer pool, one call at a
        time and chunks in order (not always from the same thread)."""

    @abc.abstractmethod
    async def commit(self) -> StoredData:
        """Make the data durable and visible under its final name."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Remove everything written so far. Safe to call more than once."""


class Reader(abc.ABC):
    size: int
    # True when the file behind ``fileno`` is best read with O_DIRECT (its store writes that way, so
    # it is seldom in the page cache, and filling the page cache costs more than the disk read).
    direct_io: bool = False

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

    async def check(self) -> StoreHealth:
        """Prove the store can be written and read now (the health check; time-bounded by the
        caller). Raises StoreUnavailable, with what is wrong, when it cannot."""
        return StoreHealth(f"store {self.name}: nothing to check")

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
