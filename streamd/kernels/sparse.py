"""Writing buffers into files with ``pwrite``: whole, or sparse (zero blocks left as holes).

Built on the zero scan, so both run with the GIL released for the scan and every write:
callers use them from worker threads. A sparse write never writes a zero block; whoever
writes a file this way sizes it at the end (``ftruncate``) so trailing holes count.
"""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING

from ..sizes import DIRECT_IO_ALIGN
from . import zeroscan

if TYPE_CHECKING:
    from typing_extensions import Buffer


# The most one ``pwrite`` is given. Measured on this project's machines (1 GiB into a fresh file
# in the page cache): 4 MiB writes cost 0.23 CPU-s/GiB most runs but 1.6-2.6 in some (the kernel
# finding room for large page-cache folios), 1 MiB and 256 KiB writes 0.21-0.23 in every run.
WRITE_STEP = 1 << 20


def pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked), at most
    WRITE_STEP bytes per call."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view[:WRITE_STEP], offset)
        view = view[written:]
        offset += written


def pwrite_sparse(fd: int, data: Buffer, offset: int, block_size: int) -> int:
    """Write the non-zero ``block_size`` blocks of ``data`` at ``offset``, skipping the zero ones.

    Returns the bytes actually written."""
    view = memoryview(data)
    written = 0
    for start, length, is_zero in zeroscan.zero_runs(view, block_size):
        if not is_zero:
            pwrite_all(fd, view[start:start + length], offset + start)
            written += length
    return written


class DirectAppender:
    """Appends to a file opened with O_DIRECT, from offset 0 on: pieces of any shape are gathered
    in one page-aligned buffer of ``stage_size`` bytes and written from it whole. ``flush`` puts
    every byte appended so far in the file, at once readable by others: the last, partial block
    goes padded with zeros and is written again, with what follows it, by the next write;
    ``finish`` cuts the file back to the bytes appended."""

    def __init__(self, fd: int, stage_size: int = 1 << 20, *, sparse_block: int | None = None) -> None:
        """``sparse_block``: write as ``pwrite_sparse`` does (zero blocks of that size skipped; a
        multiple of DIRECT_IO_ALIGN that divides ``stage_size``)."""
        assert stage_size % DIRECT_IO_ALIGN == 0
        assert sparse_block is None or (sparse_block % DIRECT_IO_ALIGN == 0 and stage_size % sparse_block == 0)
        self.fd = fd
        self.sparse_block = sparse_block
        self.stage = mmap.mmap(-1, stage_size)
        self.base = 0  # file offset of the stage's first byte (aligned)
        self.staged = 0  # bytes in the stage
        self.written_through = 0  # bytes in the file (padding not counted)

    @property
    def end(self) -> int:
        """Bytes appended so far (the offset of the next one)."""
        return self.base + self.staged

    def append(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        size = len(self.stage)
        while view:
            n = min(len(view), size - self.staged)
            self.stage[self.staged:self.staged + n] = view[:n]
            self.staged += n
            view = view[n:]
            if self.staged == size:
                self._write(size)
                self.base += size
                self.staged = 0

    def flush(self) -> None:
        if self.written_through == self.end:
            return
        tail = self.staged % DIRECT_IO_ALIGN
        padded = self.staged + (DIRECT_IO_ALIGN - tail if tail else 0)
        self.stage[self.staged:padded] = bytes(padded - self.staged)
        self._write(padded)
        self.written_through = self.end
        # Keep the partial last block at the front of the stage: the next write rewrites it.
        whole = self.staged - tail
        if whole:
            self.stage[:tail] = self.stage[whole:self.staged]
            self.base += whole
            self.staged = tail

    def finish(self) -> None:
        """Flush, and cut the file to the bytes appended (the padding of the last block goes)."""
        self.flush()
        os.ftruncate(self.fd, self.end)
        self.close()

    def close(self) -> None:
        if not self.stage.closed:
            try:
                self.stage.close()
            except BufferError:
                pass  # a failed write's traceback still holds a view of it: freed with the traceback

    def _write(self, length: int) -> None:
        with memoryview(self.stage) as stage:
            if self.sparse_block is not None:
                pwrite_sparse(self.fd, stage[:length], self.base, self.sparse_block)
            else:
                pwrite_all(self.fd, stage[:length], self.base)
        self.written_through = max(self.written_through, min(self.base + length, self.end))


__all__ = ["DirectAppender", "pwrite_all", "pwrite_sparse"]
