"""The local file store: one file per image under ``filesystem_store_datadir``.

A write goes to ``.incoming/<image>.<random>`` in the same directory, is
fsynced, then renamed into place, so a file under its final name is always
whole. Whatever is left in ``.incoming/`` was interrupted and is removed at
start-up. With ``filesystem_thin_provisioning`` runs of zero blocks are
skipped with a seek, so they become holes, found by the native zero scan.

``filesystem_store_mount_check`` guards against the directory not being the
filesystem it should be (an NFS share that did not mount leaves an empty local
directory): ``mountpoint`` requires the directory to be a mount point,
``marker`` requires a ``.marker`` file in it (created once by the operator on
the mounted filesystem). While the check fails the store is read-only: every
write, adoption and delete raises StoreUnavailable and nothing is created
underneath; one line is logged when it turns read-only and one when it is back.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlparse

from .. import metrics
from ..config import FileStoreOptions
from ..errors import DoesNotExist, OutOfSpace, StoreFailure, StoreUnavailable
from ..kernels.sparse import DirectAppender, pwrite_all, pwrite_sparse
from .base import FdReader, Reader, StoredData, Store, StoreHealth, Writer, probe_directory

log = logging.getLogger(__name__)

INCOMING = ".incoming"
# With filesystem_store_mount_check = marker: the file that proves the right filesystem is mounted.
MARKER = ".marker"


class FileStore(Store):
    type = "file"
    local = True

    def __init__(self, name: str, options: FileStoreOptions, default_dir: Path) -> None:
        self.name = name
        self.directory = Path(options.filesystem_store_datadir or default_dir).absolute()
        self.thin = options.filesystem_thin_provisioning
        self.block_size = options.filesystem_thin_provisioning_block_size
        self.chunk_size = options.filesystem_store_chunk_size
        self.direct_io = options.filesystem_store_direct_io
        self.mount_check = options.filesystem_store_mount_check
        # Why the store is read-only now (its mount check failed), or None.
        self.unavailable: str | None = None

    def _mount_problem(self) -> str | None:
        """What is wrong with the directory as the store's filesystem, or None."""
        if self.mount_check == "mountpoint" and not os.path.ismount(self.directory):
            return f"{self.directory} is not a mount point (filesystem_store_mount_check = mountpoint)"
        if self.mount_check == "marker" and not (self.directory / MARKER).is_file():
            return f"{self.directory} has no {MARKER} file (filesystem_store_mount_check = marker)"
        return None

    def _verify(self) -> None:
        """Raise StoreUnavailable (and turn read-only, logged once) if the mount check fails."""
        problem = self._mount_problem()
        if problem is None:
            if self.unavailable is not None:
                self.unavailable = None
                log.warning("file store %s is writable again: %s passes its mount check", self.name, self.directory)
            return
        if self.unavailable is None:
            log.error("file store %s is read-only: %s; nothing is written until it is mounted", self.name, problem)
        self.unavailable = problem
        raise StoreUnavailable(f"file store {self.name} is read-only: {problem}")

    async def check(self) -> StoreHealth:
        def probe() -> StoreHealth:
            self._verify()
            incoming = self.directory / INCOMING
            try:
                incoming.mkdir(exist_ok=True)
                free = probe_directory(incoming)
            except (OSError, ValueError) as exc:
                raise StoreUnavailable(f"file store {self.name}: {self.directory} is not writable: {exc}") from exc
            return StoreHealth(f"file store {self.name}: {self.directory} writable and readable", free)

        return await asyncio.to_thread(probe)

    def properties(self) -> dict[str, object]:
        return {"data_dir": str(self.directory), "chunk_size": self.chunk_size, "thin_provisioning": self.thin}

    async def start(self) -> None:
        try:
            self._verify()
        except StoreUnavailable:
            return  # read-only until the check passes; logged, and /healthcheck says so
        incoming = self.directory / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        for leftover in incoming.iterdir():
            leftover.unlink(missing_ok=True)

    def path_of(self, image_id: str) -> Path:
        return self.directory / image_id

    def url_of(self, image_id: str) -> str:
        return self.path_of(image_id).as_uri()

    def owns(self, url: str) -> bool:
        return url.startswith("file://") and self._path(url).parent == self.directory

    def _path(self, url: str) -> Path:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise StoreFailure(f"{url} is not a file location")
        return Path(unquote(parsed.path))

    async def writer(self, image_id: str, expected_size: int | None) -> Writer:
        self._verify()
        temp = self.directory / INCOMING / f"{image_id}.{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        direct = self.direct_io
        try:
            try:
                fd = os.open(temp, flags | (os.O_DIRECT if direct else 0), 0o640)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                log.warning("store %s: %s refuses O_DIRECT; writing through the page cache", self.name,
                            self.directory)
                self.direct_io = direct = False
                fd = os.open(temp, flags, 0o640)
        except OSError as exc:
            raise _store_error(exc, f"cannot create {temp}") from exc
        if direct:
            return DirectFileWriter(self, image_id, fd, temp, expected_size)
        return FileWriter(self, image_id, fd, temp, expected_size)

    async def reader(self, url: str) -> Reader:
        path = self._path(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DoesNotExist(f"image data not found at {url}") from None
        except OSError as exc:
            raise _store_error(exc, f"cannot open {path}") from exc
        return FileReader(fd, os.fstat(fd).st_size, path, direct_io=self.direct_io)

    async def check_deletable(self, url: str) -> None:
        """Asked before the catalogue lets the image go: a read-only store refuses (503) first."""
        self._verify()

    async def delete(self, url: str) -> None:
        path = self._path(url)
        self._verify()  # with the share gone the file would only seem missing: keep it for later
        path.unlink(missing_ok=True)

    def can_adopt(self, path: Path) -> bool:
        """True if ``path`` is on this store's filesystem, so that ``adopt`` is a rename."""
        try:
            return os.stat(path).st_dev == os.stat(self.directory).st_dev
        except OSError:
            return False

    async def adopt(self, image_id: str, path: Path, *, link: bool = False) -> StoredData:
        """Take a whole, fsynced file (staged data) as the image's data: a rename, not a copy.

        ``link`` leaves ``path`` in place (a hard link): several file stores on one filesystem
        then share the blocks of data that is never written again, and each store still
        deletes only its own name."""
        self._verify()
        final = self.path_of(image_id)

        def move() -> int:
            size = os.stat(path).st_size
            if link:
                final.unlink(missing_ok=True)
                os.link(path, final)
            else:
                os.rename(path, final)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return size

        try:
            size = await asyncio.to_thread(move)
        except OSError as exc:
            raise _store_error(exc, f"cannot move {path} into store {self.name}") from exc
        return StoredData(self.url_of(image_id), size)


class FileWriter(Writer):
    def __init__(self, store: FileStore, image_id: str, fd: int, temp: Path, expected_size: int | None) -> None:
        self.store = store
        self.image_id = image_id
        self.fd = fd
        self.temp = temp
        self.offset = 0
        self.closed = False

    def write(self, chunk: bytes) -> None:
        try:
            if self.store.thin:
                pwrite_sparse(self.fd, chunk, self.offset, self.store.block_size)
            else:
                pwrite_all(self.fd, chunk, self.offset)
            self.offset += len(chunk)
        except OSError as exc:
            raise _store_error(exc, f"cannot write {self.temp}") from exc

    def _finish(self) -> None:
        # Trailing zero blocks were skipped: extend the file to its full length.
        os.ftruncate(self.fd, self.offset)
        os.fsync(self.fd)
        if self.store.thin:
            # The holes the zero scan left: what the file holds less than its length (one fstat).
            metrics.sparse_skipped(self.store.name, self.offset - os.fstat(self.fd).st_blocks * 512)
        os.close(self.fd)
        self.closed = True
        final = self.store.path_of(self.image_id)
        os.rename(self.temp, final)
        dir_fd = os.open(self.store.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def commit(self) -> StoredData:
        try:
            await asyncio.to_thread(self._finish)
        except OSError as exc:
            await self.abort()
            raise _store_error(exc, f"cannot commit {self.temp}") from exc
        return StoredData(self.store.url_of(self.image_id), self.offset)

    async def abort(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
        self.temp.unlink(missing_ok=True)


# The zero scan's blocks (4096 to 65536) are multiples of DIRECT_IO_ALIGN: its runs stay aligned.
_DIRECT_STAGE = 1 << 20


class DirectFileWriter(FileWriter):
    """A FileWriter whose file was opened with O_DIRECT: pieces of any shape are gathered in one
    reused, page-aligned 1 MiB buffer (a memcpy between warm pages) and written from it whole; the
    last, partial one is padded to the alignment and the file cut back to its length on commit
    (``kernels.sparse.DirectAppender``)."""

    def __init__(self, store: FileStore, image_id: str, fd: int, temp: Path, expected_size: int | None) -> None:
        super().__init__(store, image_id, fd, temp, expected_size)
        self.appender = DirectAppender(fd, _DIRECT_STAGE, sparse_block=store.block_size if store.thin else None)

    def write(self, chunk: bytes) -> None:
        try:
            self.appender.append(chunk)
        except OSError as exc:
            raise _store_error(exc, f"cannot write {self.temp}") from exc
        finally:
            self.offset = self.appender.end

    def _finish(self) -> None:
        self.appender.flush()  # _finish's ftruncate cuts the last block's padding off
        self.appender.close()
        super()._finish()

    async def abort(self) -> None:
        self.appender.close()
        await super().abort()


class FileReader(FdReader):
    """An image file of this store. A class of its own so that the store's reads can be told
    apart from (and instrumented separately from) the cache's, which use ``FdReader`` too."""

    def __init__(self, fd: int, size: int, path: Path, direct_io: bool = False) -> None:
        super().__init__(fd, size)
        self.path = path
        self.direct_io = direct_io


def _store_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"{what}: no space left in the store")
    return StoreFailure(f"{what}: {exc.strerror}")
