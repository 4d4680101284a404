"""Hot-path byte kernels, compiled with Cython, each with a pure-Python twin.

Self-contained on purpose: nothing here imports the rest of streamd, so the
kernels can be built, tested and benchmarked on their own.
"""

from __future__ import annotations

from .zeroscan import FALLBACK_REASON, IMPLEMENTATION


def describe() -> str:
    """One line naming the kernel implementation in use, and why if it is the twin."""
    if FALLBACK_REASON is None:
        return f"{IMPLEMENTATION} (Cython)"
    return f"{IMPLEMENTATION} ({FALLBACK_REASON})"


__all__ = ["IMPLEMENTATION", "describe"]
