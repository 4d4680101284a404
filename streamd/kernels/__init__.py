"""Hot-path byte kernels, compiled with Cython, each with a pure-Python twin, and the
sparse file writes built on the zero scan (``sparse``).

Self-contained on purpose: nothing here imports the rest of streamd, so the
kernels can be built, tested and benchmarked on their own.
"""

from __future__ import annotations

from types import ModuleType

from . import qcow2, zeroscan

# Every kernel with a native build, by the name ``describe`` gives it.
KERNELS: dict[str, ModuleType] = {"zeroscan": zeroscan, "qcow2": qcow2}

# "native" only when every kernel is: one twin in use is worth noticing.
IMPLEMENTATION = "native" if all(k.IMPLEMENTATION == "native" for k in KERNELS.values()) else "python"


def _state(kernel: ModuleType) -> str:
    return f"{kernel.IMPLEMENTATION} ({kernel.FALLBACK_REASON or 'Cython'})"


def describe() -> str:
    """One line naming the implementation of every kernel, and why where it is the twin.

    "native (Cython) for zeroscan, qcow2" when all agree (likewise when STREAMD_NO_EXTENSIONS
    forces every twin), else each kernel on its own: "zeroscan: native (Cython); qcow2: python
    (native import failed: ...)"."""
    states = {name: _state(kernel) for name, kernel in KERNELS.items()}
    if len(set(states.values())) == 1:
        return f"{next(iter(states.values()))} for {', '.join(states)}"
    return "; ".join(f"{name}: {state}" for name, state in states.items())


__all__ = ["IMPLEMENTATION", "KERNELS", "describe"]
