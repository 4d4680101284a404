"""The one switch between a native kernel and its pure-Python twin.

``STREAMD_NO_EXTENSIONS`` set to anything but "" or "0" forces every twin.
Otherwise a failed native import is not fatal: the twin is used and the reason
is kept, so ``streamd.kernels.describe()`` can report it at start-up.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Literal

Implementation = Literal["native", "python"]


def select(native: str, twin: ModuleType) -> tuple[ModuleType, Implementation, str | None]:
    """(module, implementation, reason for the twin or None) for ``streamd.kernels.<native>``."""
    if os.environ.get("STREAMD_NO_EXTENSIONS", "") not in ("", "0"):
        return twin, "python", "forced by STREAMD_NO_EXTENSIONS"
    try:
        module = importlib.import_module(f"{__package__}.{native}")
    except ImportError as exc:
        return twin, "python", f"native import failed: {exc}"
    return module, "native", None
