"""Pure-Python twin of the native zero-scan kernel (``_native/zeroscan.pyx``).

Same API, docstrings and exceptions as ``streamd.kernels._zeroscan_c``; this is the
copy type checkers read and the one used when the extension is unavailable. Every
scan is a ``bytes.startswith`` against a cached zero buffer, i.e. a memcmp in C, so
Python-level work is per chunk or per block, never per byte.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

# Big enough that per-slice overhead is noise next to the memcmp, small enough to
# stay cache-resident while it is compared against the data.
_ZEROS = bytes(64 * 1024)
_ZEROS_LEN = len(_ZEROS)


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError("a C-contiguous buffer is required")
    # cast() rejects shapes containing 0, and such a buffer has no bytes anyway.
    return view.cast("B") if view.nbytes else memoryview(b"")


def _span_is_zero(view: memoryview, start: int, stop: int) -> bool:
    for offset in range(start, stop, _ZEROS_LEN):
        # startswith takes any buffer and compares with memcmp; ``view == bytes``
        # would not (memoryview equality unpacks item by item).
        if not _ZEROS.startswith(view[offset : min(offset + _ZEROS_LEN, stop)]):
            return False
    return True


def is_zero(buf: Buffer) -> bool:
    """True if every byte of buf (any C-contiguous buffer) is zero. Empty buffer -> True."""
    with _byte_view(buf) as view:
        return _span_is_zero(view, 0, len(view))


def zero_runs(buf: Buffer, block_size: int) -> list[tuple[int, int, bool]]:
    """Split buf into blocks of block_size bytes (the last may be shorter) and return
    maximal runs of consecutive blocks that are all-zero or not, as
    (offset, length, is_zero) tuples covering buf exactly, in order. Empty buf -> []."""
    block_size = operator.index(block_size)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    runs: list[tuple[int, int, bool]] = []
    with _byte_view(buf) as view:
        size = len(view)
        run_start = 0
        run_is_zero = False
        for offset in range(0, size, block_size):
            block_is_zero = _span_is_zero(view, offset, min(offset + block_size, size))
            if offset == 0:
                run_is_zero = block_is_zero
            elif block_is_zero != run_is_zero:
                runs.append((run_start, offset - run_start, run_is_zero))
                run_start, run_is_zero = offset, block_is_zero
        if size:
            runs.append((run_start, size - run_start, run_is_zero))
    return runs
