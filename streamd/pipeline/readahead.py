"""Reading a blocking source one chunk ahead: the next read runs in a worker thread while
the caller sends, hashes or stores the chunk it has. Every read of a store, a cache file
or a staged file into the data path goes through ``read_ahead``."""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Callable

from ..errors import StoreFailure, StreamdError
from ..sizes import CHUNK
from ..stores import Reader


async def read_ahead(read: Callable[[int, int], bytes], start: int, end: int, *,
                     what: str, error: type[StreamdError], chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` of a source, by ``read(offset, length)`` (blocking, run in a
    worker thread), at most ``chunk`` at a time. A source that ends before ``end`` raises
    ``error`` naming ``what`` ended early."""
    loop = asyncio.get_running_loop()
    offset = start
    pending = loop.run_in_executor(None, read, offset, min(chunk, end - offset)) if offset < end else None
    try:
        while pending is not None:
            data = await pending
            pending = None
            if not data:
                raise error(f"{what} ended early at byte {offset} of {end}")
            offset += len(data)
            if offset < end:
                pending = loop.run_in_executor(None, read, offset, min(chunk, end - offset))
            yield data
    finally:
        if pending is not None:
            # The source is closed after us: let the read in flight finish first.
            await asyncio.shield(asyncio.wait([pending]))


def file_chunks(fd: int, *, start: int = 0, length: int | None = None,
                chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """An open file (a staged image), from ``start`` for ``length`` bytes or to its end."""
    end = os.fstat(fd).st_size if length is None else start + length
    return read_ahead(lambda offset, size: os.pread(fd, size, offset), start, end,
                      what="source file", error=StoreFailure, chunk=chunk)


def reader_chunks(reader: Reader, *, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """A store reader's whole image."""
    return read_ahead(reader.read, 0, reader.size, what="store data", error=StoreFailure, chunk=chunk)


__all__ = ["file_chunks", "read_ahead", "reader_chunks"]
