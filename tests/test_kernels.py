"""Zero-scan kernel: the native extension and its pure-Python twin must agree exactly.

Both implementations are imported directly so one pytest run checks both. The native
one is never skipped: if the extension is not built, these tests fail.
"""

from __future__ import annotations

import array
import ctypes
import importlib
import importlib.util
import inspect
import json
import mmap
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

# Where this process finds streamd (checkout or site-packages); subprocesses start
# there so they import the very same package, built extension included.
_streamd_spec = importlib.util.find_spec("streamd")
assert _streamd_spec is not None and _streamd_spec.origin is not None
IMPORT_ROOT = Path(_streamd_spec.origin).resolve().parents[1]
NATIVE = "streamd.kernels._zeroscan_c"
TWIN = "streamd.kernels._zeroscan_py"

# Around the native kernel's 8-byte word and 256-byte stripe, the twin's 64 KiB
# compare chunk, and well past the buffer sizes used below.
BLOCK_SIZES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 255, 256, 257, 511, 4095, 4096, 4097,
               65535, 65536, 65537, 1 << 20]


@pytest.fixture(params=[NATIVE, TWIN], ids=["native", "python"])
def zs(request: pytest.FixtureRequest) -> ModuleType:
    # A plain import rather than importorskip: a missing build must fail, not skip.
    return importlib.import_module(request.param)


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return importlib.import_module(NATIVE)


@pytest.fixture(scope="module")
def twin() -> ModuleType:
    return importlib.import_module(TWIN)


def reference_runs(data: bytes, block_size: int) -> list[tuple[int, int, bool]]:
    """Deliberately naive oracle: one block at a time with any()."""
    runs: list[tuple[int, int, bool]] = []
    for offset in range(0, len(data), block_size):
        block = data[offset:offset + block_size]
        zero = not any(block)
        if runs and runs[-1][2] == zero:
            start, length, _ = runs[-1]
            runs[-1] = (start, length + len(block), zero)
        else:
            runs.append((offset, len(block), zero))
    return runs


def random_buffer(rng: random.Random, size: int) -> bytes:
    """Alternating zero and data stretches of random length, some with a lone byte set."""
    out = bytearray(size)
    pos = 0
    while pos < size:
        length = min(size - pos, int(rng.expovariate(1 / rng.choice((4, 300, 5000)))) + 1)
        kind = rng.random()
        if kind < 0.4:
            out[pos:pos + length] = rng.randbytes(length)
        elif kind < 0.6:
            # A single non-zero byte hiding in zeros is what a sloppy scan misses.
            out[pos + rng.randrange(length)] = rng.randrange(1, 256)
        pos += length
    return bytes(out)


# --- API parity --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["is_zero", "zero_runs"])
def test_same_signature_and_docstring(native: ModuleType, twin: ModuleType, name: str) -> None:
    native_fn, twin_fn = getattr(native, name), getattr(twin, name)
    assert list(inspect.signature(native_fn).parameters) == list(
        inspect.signature(twin_fn).parameters)
    assert native_fn.__doc__ and inspect.cleandoc(native_fn.__doc__) == inspect.cleandoc(
        twin_fn.__doc__ or "")


# --- is_zero -------------------------------------------------------------------------

@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")],
                         ids=["bytes", "bytearray", "memoryview"])
def test_empty_buffer(zs: ModuleType, empty: object) -> None:
    assert zs.is_zero(empty) is True
    assert zs.zero_runs(empty, 4) == []


def test_is_zero_returns_bool(zs: ModuleType) -> None:
    assert zs.is_zero(bytes(100)) is True
    assert zs.is_zero(b"\x00\x01") is False


@pytest.mark.parametrize("length", [*range(1, 41), 255, 256, 257, 511, 512, 513, 1000])
def test_lone_byte_at_every_position_and_alignment(zs: ModuleType, length: int) -> None:
    # Non-zero sentinels just outside the window catch scans that overrun it.
    backing = bytearray(b"\xff" * (length + 16))
    for alignment in range(8):
        backing[alignment:alignment + length] = bytes(length)
        window = memoryview(backing)[alignment:alignment + length]
        assert zs.is_zero(window), (alignment, length)
        for position in range(length):
            backing[alignment + position] = 0x80
            assert not zs.is_zero(window), (alignment, length, position)
            backing[alignment + position] = 0
        backing[alignment:alignment + length] = b"\xff" * length


def test_large_buffer(zs: ModuleType) -> None:
    data = bytearray(8 * 1024 * 1024 + 3)
    assert zs.is_zero(data)
    for position in (0, 1, 4095, len(data) // 2, len(data) - 2, len(data) - 1):
        data[position] = 1
        assert not zs.is_zero(data), position
        data[position] = 0


# --- zero_runs -----------------------------------------------------------------------

def test_last_block_is_short(zs: ModuleType) -> None:
    assert zs.zero_runs(bytes(10), 4) == [(0, 10, True)]
    assert zs.zero_runs(bytes(8) + b"\x00\x01", 4) == [(0, 8, True), (8, 2, False)]
    assert zs.zero_runs(b"\x01" + bytes(9), 4) == [(0, 4, False), (4, 6, True)]


def test_block_size_one(zs: ModuleType) -> None:
    assert zs.zero_runs(b"\x00\x01\x02\x00\x00\x03", 1) == [
        (0, 1, True), (1, 2, False), (3, 2, True), (5, 1, False)]


def test_block_larger_than_buffer(zs: ModuleType) -> None:
    assert zs.zero_runs(bytes(100), 1 << 20) == [(0, 100, True)]
    assert zs.zero_runs(b"\x01" + bytes(99), 1 << 20) == [(0, 100, False)]


def test_run_tuples_are_int_int_bool(zs: ModuleType) -> None:
    for run in zs.zero_runs(bytes(5) + b"\x01", 2):
        assert [type(field) for field in run] == [int, int, bool]


def test_many_runs_exceeding_one_native_batch(zs: ModuleType) -> None:
    # Alternating blocks: thousands of runs, more than the native kernel gathers
    # per GIL release, and above its GIL-release size threshold.
    data = (bytes(16) + b"\x01" * 16) * 4000
    runs = zs.zero_runs(data, 16)
    assert len(runs) == 8000
    assert runs == reference_runs(data, 16)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_zero_runs_match_reference_on_random_buffers(zs: ModuleType, block_size: int) -> None:
    rng = random.Random(block_size)
    max_size = 20_000 if block_size < 16 else 300_000
    for _ in range(6):
        data = random_buffer(rng, rng.randrange(max_size) | 1)  # odd lengths
        assert zs.zero_runs(data, block_size) == reference_runs(data, block_size)


@pytest.mark.parametrize("seed", range(20))
def test_native_matches_twin(native: ModuleType, twin: ModuleType, seed: int) -> None:
    rng = random.Random(1000 + seed)
    data = random_buffer(rng, rng.randrange(1, 200_000))
    view = memoryview(data)
    for _ in range(40):
        start = rng.randrange(len(data))
        window = view[start:start + rng.randrange(1, 70_000)]
        assert native.is_zero(window) == twin.is_zero(window) == (not any(window))
    for block_size in rng.sample(BLOCK_SIZES[1:], 6) + [rng.randrange(1, 10_000)]:
        assert native.zero_runs(data, block_size) == twin.zero_runs(data, block_size)


# --- input types -----------------------------------------------------------------------

SAMPLE = bytes(300) + b"\x07" + bytes(211)  # 512 bytes: 128 x uint32, 4 x 4 x 32 bytes
SAMPLE_RUNS = [(0, 256, True), (256, 64, False), (320, 192, True)]


def _sample_as(kind: str) -> object:
    if kind == "bytes":
        return SAMPLE
    if kind == "bytearray":
        return bytearray(SAMPLE)
    if kind == "memoryview":
        return memoryview(bytearray(SAMPLE))
    if kind == "readonly-memoryview":
        return memoryview(bytearray(SAMPLE)).toreadonly()
    if kind == "array-uint32":
        return array.array("I", SAMPLE)
    if kind == "2d-ctypes":
        return (ctypes.c_ubyte * 32 * 16).from_buffer_copy(SAMPLE)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "readonly-memoryview",
                                  "array-uint32", "2d-ctypes"])
def test_buffer_kinds(zs: ModuleType, kind: str) -> None:
    buf = _sample_as(kind)
    assert zs.is_zero(buf) is False
    assert zs.zero_runs(buf, 64) == SAMPLE_RUNS


@pytest.mark.parametrize("access", [mmap.ACCESS_READ, mmap.ACCESS_WRITE], ids=["ro", "rw"])
def test_mmap(zs: ModuleType, tmp_path: Path, access: int) -> None:
    path = tmp_path / "image"
    path.write_bytes(SAMPLE)
    with path.open("r+b") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=access)
        assert zs.is_zero(mapped) is False
        assert zs.zero_runs(mapped, 64) == SAMPLE_RUNS
        # Raises BufferError if a scan left a buffer export behind.
        mapped.close()


def test_empty_multidimensional_buffer(zs: ModuleType) -> None:
    empty_2d = (ctypes.c_ubyte * 4 * 0)()
    assert zs.is_zero(empty_2d) is True
    assert zs.zero_runs(empty_2d, 3) == []


# --- errors ------------------------------------------------------------------------

def test_non_contiguous_buffer_rejected(zs: ModuleType) -> None:
    strided = memoryview(bytearray(64))[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        zs.is_zero(strided)
    with pytest.raises(ValueError, match="C-contiguous"):
        zs.zero_runs(strided, 4)


@pytest.mark.parametrize("block_size", [0, -1, -4096])
@pytest.mark.parametrize("data", [b"", bytes(10)], ids=["empty", "ten"])
def test_non_positive_block_size_rejected(zs: ModuleType, block_size: int, data: bytes) -> None:
    with pytest.raises(ValueError, match="block_size"):
        zs.zero_runs(data, block_size)


def test_non_integer_block_size_rejected(zs: ModuleType) -> None:
    with pytest.raises(TypeError):
        zs.zero_runs(bytes(10), 4.0)


@pytest.mark.parametrize("not_a_buffer", ["text", 5, None, [0, 0]], ids=repr)
def test_non_buffer_rejected(zs: ModuleType, not_a_buffer: object) -> None:
    with pytest.raises(TypeError):
        zs.is_zero(not_a_buffer)
    with pytest.raises(TypeError):
        zs.zero_runs(not_a_buffer, 4)


# --- implementation selection ------------------------------------------------------

_PROBE = """
import json, sys
if sys.argv[1] == "block-native":
    sys.modules["streamd.kernels._zeroscan_c"] = None  # makes the import raise
if sys.argv[1] == "block-qcow2":
    sys.modules["streamd.kernels._qcow2_c"] = None
import streamd.kernels
from streamd.kernels import qcow2, zeroscan
print(json.dumps({
    "implementation": zeroscan.IMPLEMENTATION,
    "package_implementation": streamd.kernels.IMPLEMENTATION,
    "reason": zeroscan.FALLBACK_REASON,
    "describe": streamd.kernels.describe(),
    "is_zero_module": zeroscan.is_zero.__module__,
    "zero_runs_module": zeroscan.zero_runs.__module__,
    "qcow2_implementation": qcow2.IMPLEMENTATION,
    "qcow2_reason": qcow2.FALLBACK_REASON,
}))
"""


def _probe(env_value: str | None, mode: str = "normal") -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMD_NO_EXTENSIONS"}
    if env_value is not None:
        env["STREAMD_NO_EXTENSIONS"] = env_value
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=IMPORT_ROOT, env=env,
                            capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


@pytest.mark.parametrize("env_value", [None, "", "0"], ids=["unset", "empty", "zero"])
def test_native_is_the_default(env_value: str | None) -> None:
    probe = _probe(env_value)
    assert probe["implementation"] == probe["package_implementation"] == "native"
    assert probe["reason"] is None
    assert probe["describe"] == "native (Cython) for zeroscan, qcow2"
    assert probe["is_zero_module"] == probe["zero_runs_module"] == NATIVE


@pytest.mark.parametrize("env_value", ["1", "yes"])
def test_env_var_forces_twin(env_value: str) -> None:
    probe = _probe(env_value)
    assert probe["implementation"] == probe["package_implementation"] == "python"
    assert probe["describe"] == "python (forced by STREAMD_NO_EXTENSIONS) for zeroscan, qcow2"
    assert probe["is_zero_module"] == probe["zero_runs_module"] == TWIN


def test_failed_native_import_falls_back_and_says_why() -> None:
    probe = _probe(None, mode="block-native")
    assert probe["implementation"] == "python"
    assert str(probe["reason"]).startswith("native import failed: ")
    assert str(probe["describe"]).startswith("zeroscan: python (native import failed: ")
    assert str(probe["describe"]).endswith("; qcow2: native (Cython)")
    assert probe["is_zero_module"] == TWIN


def test_a_missing_qcow2_kernel_is_reported_too() -> None:
    """Every kernel is in describe() (the start-up log, --version), not only the zero scan."""
    probe = _probe(None, mode="block-qcow2")
    assert probe["implementation"] == "native" and probe["qcow2_implementation"] == "python"
    assert probe["package_implementation"] == "python"
    assert str(probe["qcow2_reason"]).startswith("native import failed: ")
    assert str(probe["describe"]).startswith("zeroscan: native (Cython); qcow2: python (native import failed: ")
