"""qcow2 kernel: the native extension and its pure-Python twin must agree exactly.

Both are imported directly so one run checks both; the native one is never skipped.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
import struct
import subprocess
import sys
from types import ModuleType

import pytest

from fuzz.corpus import qcow2_header

NATIVE = "streamd.kernels._qcow2_c"
TWIN = "streamd.kernels._qcow2_py"
FUNCTIONS = ["parse_header", "l1_offsets", "l2_runs"]


@pytest.fixture(scope="module")
def native() -> ModuleType:
    return importlib.import_module(NATIVE)


@pytest.fixture(scope="module")
def twin() -> ModuleType:
    return importlib.import_module(TWIN)


@pytest.fixture(params=[NATIVE, TWIN], ids=["native", "python"])
def k(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(request.param)


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except (ValueError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_same_signature_and_docstring(native: ModuleType, twin: ModuleType, name: str) -> None:
    n, t = getattr(native, name), getattr(twin, name)
    assert list(inspect.signature(n).parameters) == list(inspect.signature(t).parameters)
    assert n.__doc__ and inspect.cleandoc(n.__doc__) == inspect.cleandoc(t.__doc__ or "")


def test_same_constants(native: ModuleType, twin: ModuleType) -> None:
    for name in ("MAGIC", "HEADER_FIELDS", "RUN_ZERO", "RUN_DATA", "RUN_COMPRESSED"):
        assert getattr(native, name) == getattr(twin, name), name


def test_parse_header_fields(k: ModuleType) -> None:
    header = qcow2_header(version=3, backing_offset=0x1234, backing_size=9, cluster_bits=17, size=5 << 30,
                          l1_size=7, l1_offset=9 << 17, incompatible=0b1010, compression_type=1, header_length=112)
    fields = dict(zip(k.HEADER_FIELDS, k.parse_header(header)))
    assert fields["version"] == 3 and fields["backing_file_offset"] == 0x1234 and fields["backing_file_size"] == 9
    assert fields["cluster_bits"] == 17 and fields["size"] == 5 << 30 and fields["l1_size"] == 7
    assert fields["l1_table_offset"] == 9 << 17 and fields["incompatible_features"] == 0b1010
    assert fields["compression_type"] == 1 and fields["header_length"] == 112
    v2 = dict(zip(k.HEADER_FIELDS, k.parse_header(qcow2_header(version=2))))
    assert v2["refcount_order"] == 4 and v2["header_length"] == 72 and v2["incompatible_features"] == 0


@pytest.mark.parametrize("data,message", [
    (b"", "72 bytes"), (b"QFI\xfb" + bytes(60), "72 bytes"), (b"QFI\xfa" + bytes(100), "magic"),
    (qcow2_header(version=3)[:100], "104 bytes"), (qcow2_header(version=3, header_length=120)[:108], "112 bytes"),
])
def test_parse_header_errors(k: ModuleType, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        k.parse_header(data)


def test_l2_runs_kinds(k: ModuleType) -> None:
    cluster = 1 << 16
    entries = [0, 0, (5 * cluster) | 1 << 63, 6 * cluster, 7 * cluster, 1, (3 * cluster) | 1,
               (1 << 62) | (1 << 54) | 0x12345, 9 * cluster, 0]
    table = struct.pack(f">{len(entries)}Q", *entries)
    runs = k.l2_runs(table, len(entries), 16, True)
    assert runs == [
        (k.RUN_ZERO, 0, 2, 0, 0), (k.RUN_DATA, 2, 3, 5 * cluster, 0), (k.RUN_ZERO, 5, 2, 0, 0),
        (k.RUN_COMPRESSED, 7, 1, 0x12345, 2 * 512 - 0x145), (k.RUN_DATA, 8, 1, 9 * cluster, 0),
        (k.RUN_ZERO, 9, 1, 0, 0)]
    with pytest.raises(ValueError, match="zero flag"):
        k.l2_runs(table, len(entries), 16, False)
    with pytest.raises(ValueError, match="cluster-aligned"):
        k.l2_runs(struct.pack(">Q", cluster + 512), 1, 16, True)
    with pytest.raises(ValueError, match="needs 16 bytes"):
        k.l2_runs(table[:8], 2, 16, True)
    with pytest.raises(ValueError, match="cluster_bits"):
        k.l2_runs(table, 1, 8, True)
    assert k.l2_runs(b"", 0, 16, True) == []


def test_l1_offsets(k: ModuleType) -> None:
    table = struct.pack(">3Q", 0, (1 << 63) | 0x30000, 0xFF00_0000_0003_01FF)
    # Bits 9-55 only: the copied flag, reserved bits and the low 9 bits are dropped.
    assert k.l1_offsets(table, 3) == [0, 0x30000, 0x30000]
    assert k.l1_offsets(table, 0) == []
    with pytest.raises(ValueError):
        k.l1_offsets(table, 4)
    with pytest.raises(ValueError):
        k.l1_offsets(table, -1)


@pytest.mark.parametrize("seed", range(30))
def test_native_matches_twin_on_random_tables(native: ModuleType, twin: ModuleType, seed: int) -> None:
    rng = random.Random(seed)
    cluster_bits = rng.choice([9, 12, 16, 21])
    cluster = 1 << cluster_bits
    entries = []
    host = rng.randrange(1, 1000) * cluster
    for _ in range(rng.randrange(0, 3000)):
        kind = rng.random()
        if kind < 0.3:
            entries.append(0)
        elif kind < 0.6:
            host += cluster if rng.random() < 0.8 else cluster * rng.randrange(2, 9)
            entries.append(host | (1 << 63 if rng.random() < 0.5 else 0))
        elif kind < 0.75:
            entries.append((1 << 62) | rng.getrandbits(62))
        elif kind < 0.85:
            entries.append(rng.choice([1, host | 1]))
        else:
            entries.append(rng.getrandbits(64))
    table = struct.pack(f">{len(entries)}Q", *entries)
    for allow_zero in (True, False):
        assert outcome(native.l2_runs, table, len(entries), cluster_bits, allow_zero) == \
            outcome(twin.l2_runs, table, len(entries), cluster_bits, allow_zero)
    assert outcome(native.l1_offsets, table, len(entries)) == outcome(twin.l1_offsets, table, len(entries))
    header = bytearray(qcow2_header(version=rng.choice([1, 2, 3, 4]), header_length=rng.choice([72, 104, 112, 200])))
    for _ in range(rng.randrange(0, 20)):
        header[rng.randrange(4, 120)] = rng.randrange(256)
    cut = rng.choice([len(header), rng.randrange(0, 120)])
    assert outcome(native.parse_header, bytes(header[:cut])) == outcome(twin.parse_header, bytes(header[:cut]))


@pytest.mark.parametrize("bad", ["text", None, 5])
def test_non_buffers_rejected(k: ModuleType, bad: object) -> None:
    with pytest.raises(TypeError):
        k.parse_header(bad)
    with pytest.raises(TypeError):
        k.l2_runs(bad, 0, 16, True)


def test_buffer_kinds(k: ModuleType) -> None:
    header = qcow2_header()
    expected = k.parse_header(header)
    for buf in (bytearray(header), memoryview(header), memoryview(bytearray(header)).toreadonly()):
        assert k.parse_header(buf) == expected
    with pytest.raises(ValueError, match="C-contiguous"):
        k.parse_header(memoryview(header * 2)[::2])


_PROBE = """
import json
from streamd.kernels import qcow2
print(json.dumps([qcow2.IMPLEMENTATION, qcow2.parse_header.__module__]))
"""


@pytest.mark.parametrize("env,expected", [(None, ["native", NATIVE]), ("1", ["python", TWIN])])
def test_selection(env: str | None, expected: list[str]) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "STREAMD_NO_EXTENSIONS"}
    if env is not None:
        environ["STREAMD_NO_EXTENSIONS"] = env
    done = subprocess.run([sys.executable, "-c", _PROBE], env=environ, capture_output=True, text=True, check=True,
                          timeout=60)
    assert json.loads(done.stdout) == expected
