"""Zero detection over buffers: the native kernel when available, else its twin.

``STREAMD_NO_EXTENSIONS`` set to anything but "" or "0" forces the pure-Python twin,
e.g. to debug or to compare behaviour. Otherwise a failed native import is not fatal:
the twin is used and ``FALLBACK_REASON`` says why, so ``streamd.kernels.describe()``
can report it at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _zeroscan_py
from ._select import Implementation, select

_impl, IMPLEMENTATION, FALLBACK_REASON = select("_zeroscan_c", _zeroscan_py)

if TYPE_CHECKING:
    # Both implementations share one API; the twin carries the type hints.
    from ._zeroscan_py import is_zero, zero_runs
else:
    is_zero = _impl.is_zero
    zero_runs = _impl.zero_runs

__all__ = ["FALLBACK_REASON", "IMPLEMENTATION", "is_zero", "zero_runs"]
