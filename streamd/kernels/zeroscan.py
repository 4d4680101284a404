"""Zero detection over buffers: the native kernel when available, else its twin.

``STREAMD_NO_EXTENSIONS`` set to anything but "" or "0" forces the pure-Python twin,
e.g. to debug or to compare behaviour. Otherwise a failed native import is not fatal:
the twin is used and ``FALLBACK_REASON`` says why, so ``streamd.kernels.describe()``
can report it at startup.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from . import _zeroscan_py

Implementation = Literal["native", "python"]


def _select() -> tuple[ModuleType, Implementation, str | None]:
    if os.environ.get("STREAMD_NO_EXTENSIONS", "") not in ("", "0"):
        return _zeroscan_py, "python", "forced by STREAMD_NO_EXTENSIONS"
    try:
        from . import _zeroscan_c
    except ImportError as exc:
        return _zeroscan_py, "python", f"native import failed: {exc}"
    return _zeroscan_c, "native", None


_impl, IMPLEMENTATION, FALLBACK_REASON = _select()

if TYPE_CHECKING:
    # Both implementations share one API; the twin carries the type hints.
    from ._zeroscan_py import is_zero, zero_runs
else:
    is_zero = _impl.is_zero
    zero_runs = _impl.zero_runs

__all__ = ["FALLBACK_REASON", "IMPLEMENTATION", "is_zero", "zero_runs"]
