"""Pure-Python twin of the native qcow2 parsing kernel (``_native/qcow2.pyx``).

Same API, docstrings and exceptions as ``streamd.kernels._qcow2_c``; this is the copy
type checkers read and the one used when the extension is unavailable. The kernel only
decodes: it turns header bytes and L1/L2 table bytes into numbers and runs. Deciding
whether those numbers are safe is the caller's job (``streamd.formats``).

Layout reference: QEMU's docs/interop/qcow2.txt (all fields big-endian).
"""

from __future__ import annotations

import operator
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

MAGIC = b"QFI\xfb"
# Names of the integers parse_header returns, in order.
HEADER_FIELDS = (
    "version", "backing_file_offset", "backing_file_size", "cluster_bits", "size", "crypt_method",
    "l1_size", "l1_table_offset", "refcount_table_offset", "refcount_table_clusters", "nb_snapshots",
    "snapshots_offset", "incompatible_features", "compatible_features", "autoclear_features",
    "refcount_order", "header_length", "compression_type",
)
# Kinds of run l2_runs returns.
RUN_ZERO = 0        # reads as zeros: unallocated, or the zero flag is set
RUN_DATA = 1        # host clusters, contiguous in the file
RUN_COMPRESSED = 2  # one compressed cluster

_L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED_FLAG = 1 << 62
_ZERO_FLAG = 1

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")   # 72 bytes
_V3 = struct.Struct(">QQQII")            # bytes 72..104


def _view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError("a C-contiguous buffer is required")
    return view.cast("B") if view.nbytes else memoryview(b"")


def parse_header(buf: Buffer) -> tuple[int, ...]:
    """Decode a qcow2 header from the first bytes of an image.

    Returns a tuple of ints named by HEADER_FIELDS. Version 1 and 2 headers report
    the version-3 fields as their implied values (no feature bits, refcount_order 4,
    header_length 72, compression_type 0). Raises ValueError if the magic is wrong
    or buf is shorter than the header its version needs (72 bytes; 104 for version
    3, 112 when header_length says a compression type byte follows)."""
    view = _view(buf)
    if len(view) < 72:
        raise ValueError(f"qcow2 header needs 72 bytes, got {len(view)}")
    (magic, version, backing_offset, backing_size, cluster_bits, size, crypt_method, l1_size,
     l1_offset, rc_offset, rc_clusters, nb_snapshots, snapshots_offset) = _V2.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("not a qcow2 header (bad magic)")
    incompatible = compatible = autoclear = 0
    refcount_order, header_length, compression_type = 4, 72, 0
    if version >= 3:
        if len(view) < 104:
            raise ValueError(f"qcow2 version 3 header needs 104 bytes, got {len(view)}")
        incompatible, compatible, autoclear, refcount_order, header_length = _V3.unpack_from(view, 72)
        if header_length > 104:
            if len(view) < 112:
                raise ValueError(f"qcow2 header of length {header_length} needs 112 bytes, got {len(view)}")
            compression_type = view[104]
    return (version, backing_offset, backing_size, cluster_bits, size, crypt_method, l1_size, l1_offset,
            rc_offset, rc_clusters, nb_snapshots, snapshots_offset, incompatible, compatible, autoclear,
            refcount_order, header_length, compression_type)


def l1_offsets(buf: Buffer, count: int) -> list[int]:
    """Decode count L1 entries from buf into L2 table offsets (0: no L2 table).

    Keeps bits 9-55 of each big-endian entry, as QEMU does. Raises ValueError if
    count is negative or buf holds fewer than count entries."""
    count = operator.index(count)
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    view = _view(buf)
    if len(view) < count * 8:
        raise ValueError(f"L1 table of {count} entries needs {count * 8} bytes, got {len(view)}")
    return [entry & _L1_OFFSET_MASK for entry in struct.unpack_from(f">{count}Q", view, 0)]


def l2_runs(buf: Buffer, count: int, cluster_bits: int,
            allow_zero_flag: bool) -> list[tuple[int, int, int, int, int]]:
    """Walk count L2 entries of buf and return what each cluster reads as.

    Returns a list of (kind, first, n, offset, csize) tuples in order, covering the
    count clusters exactly: RUN_ZERO runs (unallocated or zero-flagged, offset and
    csize 0), RUN_DATA runs of n clusters stored back to back from host offset, and
    one RUN_COMPRESSED tuple per compressed cluster (n 1, the compressed data's host
    offset and its size in bytes, which may run past the data's real end as QEMU
    rounds it to sectors). Raises ValueError for a data cluster whose offset is not
    cluster-aligned, a zero flag when allow_zero_flag is false (before version 3),
    cluster_bits outside 9..30, a negative count or a buf shorter than count entries."""
    count = operator.index(count)
    cluster_bits = operator.index(cluster_bits)
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if not 9 <= cluster_bits <= 30:
        raise ValueError(f"cluster_bits must be 9..30, got {cluster_bits}")
    view = _view(buf)
    if len(view) < count * 8:
        raise ValueError(f"L2 table of {count} entries needs {count * 8} bytes, got {len(view)}")
    cluster_size = 1 << cluster_bits
    csize_shift = 62 - (cluster_bits - 8)
    csize_mask = (1 << (cluster_bits - 8)) - 1
    coffset_mask = (1 << csize_shift) - 1
    runs: list[tuple[int, int, int, int, int]] = []
    kind = -1
    first = n = offset = 0
    for index, entry in enumerate(struct.unpack_from(f">{count}Q", view, 0)):
        if entry & _COMPRESSED_FLAG:
            if kind >= 0:
                runs.append((kind, first, n, offset, 0))
                kind = -1
            coffset = entry & coffset_mask
            nb_sectors = ((entry >> csize_shift) & csize_mask) + 1
            runs.append((RUN_COMPRESSED, index, 1, coffset, nb_sectors * 512 - (coffset & 511)))
            continue
        host = entry & _L2_OFFSET_MASK
        if entry & _ZERO_FLAG:
            if not allow_zero_flag:
                raise ValueError(f"zero flag in L2 entry {index} of an image before version 3")
            host = 0
        elif host & (cluster_size - 1):
            raise ValueError(f"L2 entry {index}: data offset {host:#x} is not cluster-aligned")
        if host == 0:
            if kind == RUN_ZERO:
                n += 1
                continue
            if kind >= 0:
                runs.append((kind, first, n, offset, 0))
            kind, first, n, offset = RUN_ZERO, index, 1, 0
        else:
            if kind == RUN_DATA and host == offset + n * cluster_size:
                n += 1
                continue
            if kind >= 0:
                runs.append((kind, first, n, offset, 0))
            kind, first, n, offset = RUN_DATA, index, 1, host
    if kind >= 0:
        runs.append((kind, first, n, offset, 0))
    return runs
