# cython: language_level=3, boundscheck=False, wraparound=False
"""Native zero-scan kernel (module ``streamd.kernels._zeroscan_c``).

``streamd/kernels/_zeroscan_py.py`` is its pure-Python twin: same API, same
docstrings, same exceptions. Keep the two in step; tests/test_kernels.py checks it.
"""

from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from bytebuffer cimport byte_view

cdef enum:
    # Bytes OR-ed together between early-exit tests. Measured on x86-64 with -O3:
    # 256 lets GCC unroll and vectorise the inner loop; 128 and 512+ ran ~40% slower
    # on cache-resident data. Once data comes from RAM every size is memory-bound.
    STRIPE = 256
    # Runs collected per GIL release in zero_runs; bounds the stack array only.
    RUN_BATCH = 512

# Below this size the scan is cheaper than handing the GIL to another thread and
# waiting to get it back.
cdef Py_ssize_t NOGIL_MIN_BYTES = 16 * 1024


cdef inline bint _all_zero(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    cdef uint64_t acc
    cdef uint64_t word
    while i + STRIPE <= n:
        acc = 0
        for j in range(0, STRIPE, 8):
            # memcpy is the portable unaligned load; it compiles to a plain mov.
            memcpy(&word, p + i + j, 8)
            acc |= word
        if acc:
            return False
        i += STRIPE
    acc = 0
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        acc |= word
        i += 8
    while i < n:
        acc |= p[i]
        i += 1
    return acc == 0


cdef Py_ssize_t _fill_runs(
    const unsigned char* base,
    Py_ssize_t n,
    Py_ssize_t block_size,
    Py_ssize_t pos,
    Py_ssize_t* run_ends,
    bint* run_is_zero,
) noexcept nogil:
    """Record up to RUN_BATCH runs starting at pos; return how many."""
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t length
    cdef bint zero
    while pos < n and count < RUN_BATCH:
        length = min(block_size, n - pos)
        zero = _all_zero(base + pos, length)
        pos += length
        while pos < n:
            length = min(block_size, n - pos)
            if _all_zero(base + pos, length) != zero:
                break
            pos += length
        run_ends[count] = pos
        run_is_zero[count] = zero
        count += 1
    return count


def is_zero(buf):
    """True if every byte of buf (any C-contiguous buffer) is zero. Empty buffer -> True."""
    cdef const unsigned char[::1] data = byte_view(buf)
    cdef Py_ssize_t n = data.shape[0]
    cdef bint zero
    if n == 0:
        return True
    if n < NOGIL_MIN_BYTES:
        return _all_zero(&data[0], n)
    with nogil:
        zero = _all_zero(&data[0], n)
    return zero


def zero_runs(buf, Py_ssize_t block_size):
    """Split buf into blocks of block_size bytes (the last may be shorter) and return
    maximal runs of consecutive blocks that are all-zero or not, as
    (offset, length, is_zero) tuples covering buf exactly, in order. Empty buf -> []."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    cdef const unsigned char[::1] data = byte_view(buf)
    cdef Py_ssize_t n = data.shape[0]
    cdef Py_ssize_t run_ends[RUN_BATCH]
    cdef bint run_is_zero[RUN_BATCH]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t count
    cdef Py_ssize_t i
    runs = []
    if n == 0:
        return runs
    cdef const unsigned char* base = &data[0]
    while pos < n:
        if n < NOGIL_MIN_BYTES:
            count = _fill_runs(base, n, block_size, pos, run_ends, run_is_zero)
        else:
            with nogil:
                count = _fill_runs(base, n, block_size, pos, run_ends, run_is_zero)
        for i in range(count):
            runs.append((pos, run_ends[i] - pos, run_is_zero[i]))
            pos = run_ends[i]
    return runs
