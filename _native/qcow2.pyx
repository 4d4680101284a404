# cython: language_level=3, boundscheck=False, wraparound=False
"""Native qcow2 parsing kernel (module ``streamd.kernels._qcow2_c``).

``streamd/kernels/_qcow2_py.py`` is its pure-Python twin: same API, same
docstrings, same exceptions. Keep the two in step; tests/test_formats_kernel.py
checks it. The kernel only decodes header and table bytes; the safety rules live
in ``streamd.formats``.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from bytebuffer cimport byte_view

MAGIC = b"QFI\xfb"
HEADER_FIELDS = (
    "version", "backing_file_offset", "backing_file_size", "cluster_bits", "size", "crypt_method",
    "l1_size", "l1_table_offset", "refcount_table_offset", "refcount_table_clusters", "nb_snapshots",
    "snapshots_offset", "incompatible_features", "compatible_features", "autoclear_features",
    "refcount_order", "header_length", "compression_type",
)
RUN_ZERO = 0
RUN_DATA = 1
RUN_COMPRESSED = 2

cdef uint64_t L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00ULL
cdef uint64_t L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00ULL
cdef uint64_t COMPRESSED_FLAG = 1ULL << 62
cdef uint64_t ZERO_FLAG = 1


cdef inline uint64_t be64(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0] << 56) | (<uint64_t>p[1] << 48) | (<uint64_t>p[2] << 40) |
            (<uint64_t>p[3] << 32) | (<uint64_t>p[4] << 24) | (<uint64_t>p[5] << 16) |
            (<uint64_t>p[6] << 8) | <uint64_t>p[7])


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


def parse_header(buf):
    """Decode a qcow2 header from the first bytes of an image.

    Returns a tuple of ints named by HEADER_FIELDS. Version 1 and 2 headers report
    the version-3 fields as their implied values (no feature bits, refcount_order 4,
    header_length 72, compression_type 0). Raises ValueError if the magic is wrong
    or buf is shorter than the header its version needs (72 bytes; 104 for version
    3, 112 when header_length says a compression type byte follows)."""
    cdef const uint8_t[::1] data = byte_view(buf)
    cdef Py_ssize_t n = data.shape[0]
    if n < 72:
        raise ValueError(f"qcow2 header needs 72 bytes, got {n}")
    cdef const uint8_t* p = &data[0]
    if not (p[0] == 0x51 and p[1] == 0x46 and p[2] == 0x49 and p[3] == 0xFB):
        raise ValueError("not a qcow2 header (bad magic)")
    cdef uint32_t version = be32(p + 4)
    cdef uint64_t incompatible = 0, compatible = 0, autoclear = 0
    cdef uint32_t refcount_order = 4, header_length = 72
    cdef uint8_t compression_type = 0
    if version >= 3:
        if n < 104:
            raise ValueError(f"qcow2 version 3 header needs 104 bytes, got {n}")
        incompatible = be64(p + 72)
        compatible = be64(p + 80)
        autoclear = be64(p + 88)
        refcount_order = be32(p + 96)
        header_length = be32(p + 100)
        if header_length > 104:
            if n < 112:
                raise ValueError(f"qcow2 header of length {header_length} needs 112 bytes, got {n}")
            compression_type = p[104]
    return (version, be64(p + 8), be32(p + 16), be32(p + 20), be64(p + 24), be32(p + 32), be32(p + 36),
            be64(p + 40), be64(p + 48), be32(p + 56), be32(p + 60), be64(p + 64), incompatible, compatible,
            autoclear, refcount_order, header_length, compression_type)


def l1_offsets(buf, Py_ssize_t count):
    """Decode count L1 entries from buf into L2 table offsets (0: no L2 table).

    Keeps bits 9-55 of each big-endian entry, as QEMU does. Raises ValueError if
    count is negative or buf holds fewer than count entries."""
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    cdef const uint8_t[::1] data = byte_view(buf)
    if data.shape[0] < count * 8:
        raise ValueError(f"L1 table of {count} entries needs {count * 8} bytes, got {data.shape[0]}")
    cdef Py_ssize_t i
    out = [0] * count
    if count == 0:
        return out
    cdef const uint8_t* p = &data[0]
    for i in range(count):
        out[i] = be64(p + 8 * i) & L1_OFFSET_MASK
    return out


def l2_runs(buf, Py_ssize_t count, int cluster_bits, bint allow_zero_flag):
    """Walk count L2 entries of buf and return what each cluster reads as.

    Returns a list of (kind, first, n, offset, csize) tuples in order, covering the
    count clusters exactly: RUN_ZERO runs (unallocated or zero-flagged, offset and
    csize 0), RUN_DATA runs of n clusters stored back to back from host offset, and
    one RUN_COMPRESSED tuple per compressed cluster (n 1, the compressed data's host
    offset and its size in bytes, which may run past the data's real end as QEMU
    rounds it to sectors). Raises ValueError for a data cluster whose offset is not
    cluster-aligned, a zero flag when allow_zero_flag is false (before version 3),
    cluster_bits outside 9..30, a negative count or a buf shorter than count entries."""
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if not 9 <= cluster_bits <= 30:
        raise ValueError(f"cluster_bits must be 9..30, got {cluster_bits}")
    cdef const uint8_t[::1] data = byte_view(buf)
    if data.shape[0] < count * 8:
        raise ValueError(f"L2 table of {count} entries needs {count * 8} bytes, got {data.shape[0]}")
    runs = []
    if count == 0:
        return runs
    cdef const uint8_t* p = &data[0]
    cdef uint64_t cluster_size = 1ULL << cluster_bits
    cdef int csize_shift = 62 - (cluster_bits - 8)
    cdef uint64_t csize_mask = (1ULL << (cluster_bits - 8)) - 1
    cdef uint64_t coffset_mask = (1ULL << csize_shift) - 1
    cdef int kind = -1
    cdef Py_ssize_t first = 0, n = 0, index
    cdef uint64_t offset = 0, entry, host, coffset, nb_sectors
    for index in range(count):
        entry = be64(p + 8 * index)
        if entry & COMPRESSED_FLAG:
            if kind >= 0:
                runs.append((kind, first, n, offset, 0))
                kind = -1
            coffset = entry & coffset_mask
            nb_sectors = ((entry >> csize_shift) & csize_mask) + 1
            runs.append((RUN_COMPRESSED, index, 1, coffset, nb_sectors * 512 - (coffset & 511)))
            continue
        host = entry & L2_OFFSET_MASK
        if entry & ZERO_FLAG:
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
            kind = RUN_ZERO
            first = index
            n = 1
            offset = 0
        else:
            if kind == RUN_DATA and host == offset + <uint64_t>n * cluster_size:
                n += 1
                continue
            if kind >= 0:
                runs.append((kind, first, n, offset, 0))
            kind = RUN_DATA
            first = index
            n = 1
            offset = host
    if kind >= 0:
        runs.append((kind, first, n, offset, 0))
    return runs
