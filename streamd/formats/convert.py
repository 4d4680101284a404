"""Streaming qcow2 -> raw: what ``qemu-img convert -O raw`` writes, without qemu-img.

``convert_qcow2_to_raw(src, dst)`` reads a staged qcow2 (version 2 or 3, plain,
zlib- or zstd-compressed clusters, no backing file, no external data file, no
encryption) and writes a raw image of its virtual size. Unallocated and zero
clusters, and data clusters that are all zeros, are skipped (the output is sparse:
the file is sized once and only data is written), so the output bytes are those
QEMU would read from the image.

The image is checked first with the qcow2 inspector's safety checks, then every
table is checked before it is followed: L2 tables must be cluster-aligned, inside
the file, apart from the header and the L1 table, and not shared; data clusters
must start inside the file. Any failure is a ``FormatRejected`` (415) naming the
check, and the partial output is removed.

Work is split in jobs of a few MiB of guest data, run on a thread pool:
``os.pread``/``os.pwrite``, zlib, zstandard and the zero scan all release the GIL,
so reads, decompression and writes overlap across cores as in qemu-img.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..kernels import qcow2 as kernel
from ..kernels.sparse import pwrite_sparse
from ..sizes import CHUNK
from .base import FormatRejected
from .detect import detect_file
from .inspectors import QCOW2_COMPRESSION_ZSTD, Qcow2Header, Qcow2Inspector

JOB_BYTES = CHUNK            # guest bytes per job (and the largest single read)
# Jobs in flight, as qemu-img convert's default of 8 parallel requests (-m 8): enough
# to keep every core decompressing, and a fair share of a busy machine. Memory stays
# about THREADS x JOB_BYTES.
THREADS = 8
ZERO_BLOCK = 64 << 10        # granularity of skipping zero data inside data clusters


@dataclass(frozen=True)
class ConversionResult:
    virtual_size: int
    version: int
    cluster_size: int
    compression_type: str          # "zlib" or "zstd"
    data_bytes: int                # guest bytes stored as plain data clusters
    compressed_bytes: int          # guest bytes stored as compressed clusters
    written_bytes: int             # bytes actually written to the output (zeros skipped)
    seconds: float

    @property
    def allocated_bytes(self) -> int:
        return self.data_bytes + self.compressed_bytes


# (guest offset, kind, host offset, length or compressed size)
Piece = tuple[int, int, int, int]


def _reject(check: str, detail: str) -> FormatRejected:
    return FormatRejected(check, detail, format="qcow2")


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


_local = threading.local()


def _buffer(length: int) -> memoryview:
    """This thread's reusable read buffer: fresh 4 MiB allocations per read would cost a
    page fault per page, more than the copy itself."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < length:
        buf = _local.buf = bytearray(max(length, JOB_BYTES))
    return memoryview(buf)[:length]


def _read_into(fd: int, view: memoryview, offset: int) -> memoryview:
    """Fill view from fd at offset; past the end of the file reads as zeros, as in QEMU."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            view[done:] = bytes(len(view) - done)
            break
        done += n
    return view


def _decompressor(header: Qcow2Header) -> Callable[[bytes], bytes]:
    cluster_size = header.cluster_size
    if header.compression_type == QCOW2_COMPRESSION_ZSTD:
        try:
            import zstandard
        except ImportError:  # pragma: no cover - a declared dependency
            raise _reject("compression", "zstd-compressed image but the zstandard module is missing") from None
        local = threading.local()

        def zstd(data: bytes) -> bytes:
            # A ZstdDecompressor must not be shared between threads: one per worker.
            dctx = getattr(local, "dctx", None)
            if dctx is None:
                dctx = local.dctx = zstandard.ZstdDecompressor()
            # One frame per cluster; read no more than a cluster whatever the frame says.
            with dctx.stream_reader(data, read_across_frames=False) as reader:
                return reader.read(cluster_size)  # type: ignore[no-any-return]

        return zstd

    def deflate(data: bytes) -> bytes:
        # Raw deflate with a 4 KiB window, as QEMU writes it; trailing bytes are padding.
        return zlib.decompressobj(-12).decompress(data, cluster_size)

    return deflate


class _Converter:
    def __init__(self, src: int, dst: int, header: Qcow2Header, file_size: int, threads: int) -> None:
        self.src = src
        self.dst = dst
        self.h = header
        self.file_size = file_size
        self.cluster_size = header.cluster_size
        self.l2_entries = self.cluster_size // 8
        self.decompress = _decompressor(header)
        self.threads = threads
        self.data_bytes = 0
        self.compressed_bytes = 0

    # -- tables -------------------------------------------------------------------------

    def l2_tables(self) -> list[tuple[int, int]]:
        """(index of the L1 entry, offset of its L2 table) for every L2 table in use."""
        h, cs = self.h, self.cluster_size
        clusters = -(-h.size // cs)
        used = -(-clusters // self.l2_entries)
        if used == 0:
            return []
        l1_bytes = used * 8
        if h.l1_table_offset + l1_bytes > self.file_size:
            raise _reject("l1_table", "the L1 table runs past the end of the file")
        l1 = kernel.l1_offsets(_read_exact(self.src, l1_bytes, h.l1_table_offset), used)
        l1_start, l1_end = h.l1_table_offset, h.l1_table_offset + h.l1_size * 8
        seen: set[int] = set()
        tables = []
        for index, offset in enumerate(l1):
            if offset == 0:
                continue
            if offset % cs:
                raise _reject("l2_table", f"L2 table {index} at {offset:#x} is not cluster-aligned")
            if offset < cs:
                raise _reject("l2_table", f"L2 table {index} overlaps the header")
            if offset < l1_end and offset + cs > l1_start:
                raise _reject("l2_table", f"L2 table {index} overlaps the L1 table")
            if offset + cs > self.file_size:
                raise _reject("l2_table", f"L2 table {index} lies past the end of the file")
            if offset in seen:
                raise _reject("l2_table", f"L2 table {index} at {offset:#x} is shared with another L1 entry")
            seen.add(offset)
            tables.append((index, offset))
        return tables

    def pieces(self, l1_index: int, l2_offset: int) -> list[Piece]:
        cs = self.cluster_size
        first_cluster = l1_index * self.l2_entries
        clusters = -(-self.h.size // cs)
        count = min(self.l2_entries, clusters - first_cluster)
        table = _read_exact(self.src, count * 8, l2_offset)
        try:
            runs = kernel.l2_runs(table, count, self.h.cluster_bits, self.h.version >= 3)
        except ValueError as exc:
            raise _reject("l2_table", f"L2 table {l1_index}: {exc}") from None
        out: list[Piece] = []
        for kind, first, n, host, csize in runs:
            if kind == kernel.RUN_ZERO:
                continue
            guest = (first_cluster + first) * cs
            if host >= self.file_size:
                raise _reject("cluster", f"cluster at guest offset {guest:#x} lies past the end of the file")
            length = min(n * cs, self.h.size - guest)
            if kind == kernel.RUN_DATA:
                self.data_bytes += length
                # Split long runs so jobs stay a bounded size.
                for start in range(0, length, JOB_BYTES):
                    out.append((guest + start, kind, host + start, min(JOB_BYTES, length - start)))
            else:
                self.compressed_bytes += min(cs, self.h.size - guest)
                out.append((guest, kind, host, csize))
        return out

    # -- data ------------------------------------------------------------------------------

    def run_job(self, job: list[Piece]) -> int:
        written = 0
        cs = self.cluster_size
        size = self.h.size
        for guest, kind, host, length in job:
            if kind == kernel.RUN_DATA:
                data = _read_into(self.src, _buffer(length), host)
                written += pwrite_sparse(self.dst, data, guest, ZERO_BLOCK)
            else:
                compressed = os.pread(self.src, length, host)
                try:
                    data = self.decompress(compressed)
                except Exception as exc:
                    raise _reject("compressed_cluster",
                                  f"cluster at guest offset {guest:#x} does not decompress: {exc}") from None
                if len(data) < cs:
                    raise _reject("compressed_cluster",
                                  f"cluster at guest offset {guest:#x} decompresses to {len(data)} bytes, not {cs}")
                written += pwrite_sparse(self.dst, memoryview(data)[:min(cs, size - guest)], guest, ZERO_BLOCK)
        return written

    def convert(self) -> int:
        tables = self.l2_tables()
        written = 0
        pending: list[Future[int]] = []
        limit = self.threads * 2
        job: list[Piece] = []
        job_bytes = 0
        with ThreadPoolExecutor(self.threads, thread_name_prefix="qcow2-convert") as pool:
            try:
                for l1_index, l2_offset in tables:
                    for piece in self.pieces(l1_index, l2_offset):
                        job.append(piece)
                        job_bytes += piece[3] if piece[1] == kernel.RUN_DATA else self.cluster_size
                        if job_bytes >= JOB_BYTES:
                            pending.append(pool.submit(self.run_job, job))
                            job, job_bytes = [], 0
                            while len(pending) >= limit:
                                written += pending.pop(0).result()
                if job:
                    pending.append(pool.submit(self.run_job, job))
                for future in pending:
                    written += future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return written


def _check_header(src_path: str, fd: int) -> Qcow2Header:
    detection = detect_file(src_path)
    if detection.format != "qcow2":
        raise FormatRejected("format_match", f"the data is {detection.format}, not qcow2", format="qcow2")
    detection.safety_check()
    inspector = detection.inspector
    assert isinstance(inspector, Qcow2Inspector) and inspector.header is not None
    header = inspector.header
    if header.crypt_method != 0:
        raise _reject("encryption", "encrypted images cannot be converted")
    return header


def convert_qcow2_to_raw(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], *,
                         max_virtual_size: int | None = None, threads: int | None = None) -> ConversionResult:
    """Convert the qcow2 image at src_path into a sparse raw image at dst_path.

    Raises ``FormatRejected`` (415) naming the failed check if the image is not a
    convertible qcow2; dst_path is then removed. ``max_virtual_size`` bounds the
    output (``virtual_size`` check). The output's bytes are those of
    ``qemu-img convert -O raw``. ``threads`` sets the jobs in flight (default THREADS)."""
    started = time.monotonic()
    src_path, dst_path = os.fspath(src_path), os.fspath(dst_path)
    src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = _check_header(src_path, src)
        if max_virtual_size is not None and header.size > max_virtual_size:
            raise _reject("virtual_size", f"virtual size {header.size} exceeds the limit of {max_virtual_size}")
        file_size = os.fstat(src).st_size
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(dst, header.size)
            worker = _Converter(src, dst, header, file_size, threads or THREADS)
            written = worker.convert()
        except BaseException:
            os.close(dst)
            dst = -1
            try:
                os.unlink(dst_path)
            except FileNotFoundError:
                pass
            raise
        finally:
            if dst >= 0:
                os.close(dst)
    finally:
        os.close(src)
    return ConversionResult(
        virtual_size=header.size, version=header.version, cluster_size=header.cluster_size,
        compression_type="zstd" if header.compression_type == QCOW2_COMPRESSION_ZSTD else "zlib",
        data_bytes=worker.data_bytes, compressed_bytes=worker.compressed_bytes, written_bytes=written,
        seconds=time.monotonic() - started)


__all__ = ["ConversionResult", "convert_qcow2_to_raw"]
