"""qcow2 header and L1/L2 table decoding: the native kernel when available, else its twin.

``STREAMD_NO_EXTENSIONS`` set to anything but "" or "0" forces the pure-Python twin.
Otherwise a failed native import is not fatal: the twin is used and
``FALLBACK_REASON`` says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _qcow2_py
from ._select import Implementation, select

_impl, IMPLEMENTATION, FALLBACK_REASON = select("_qcow2_c", _qcow2_py)

HEADER_FIELDS = _qcow2_py.HEADER_FIELDS
MAGIC = _qcow2_py.MAGIC
RUN_ZERO = _qcow2_py.RUN_ZERO
RUN_DATA = _qcow2_py.RUN_DATA
RUN_COMPRESSED = _qcow2_py.RUN_COMPRESSED

if TYPE_CHECKING:
    from ._qcow2_py import l1_offsets, l2_runs, parse_header
else:
    parse_header = _impl.parse_header
    l1_offsets = _impl.l1_offsets
    l2_runs = _impl.l2_runs

__all__ = ["FALLBACK_REASON", "HEADER_FIELDS", "IMPLEMENTATION", "MAGIC", "RUN_COMPRESSED", "RUN_DATA",
           "RUN_ZERO", "l1_offsets", "l2_runs", "parse_header"]
