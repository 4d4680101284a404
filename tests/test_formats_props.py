"""Property tests: random and mutated headers never crash, hang or hoard memory.

The only outcomes allowed are a verdict or ``FormatRejected`` (415). Hypothesis'
deadline bounds each example's time; region sizes and tracemalloc bound memory.
"""

from __future__ import annotations

import importlib
import subprocess
import tempfile
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import streamd.formats.convert as convert_module
import streamd.formats.inspectors as inspectors_module
from fuzz.corpus import KiB, MiB, seed_inputs
from streamd.formats import ALL_FORMATS, FormatRejected, ImageInspection, InspectionPolicy, detect_file
from streamd.formats.convert import convert_qcow2_to_raw

# Hypothesis' own files (its constants cache) go to the temp dir, not into the checkout.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "streamd-hypothesis"))

SEEDS = seed_inputs()
SEED_NAMES = sorted(SEEDS)
DECLARED = [*ALL_FORMATS, "ami", "ploop"]
# The most any inspection keeps: a VMDK descriptor (1 MiB), VHDX tables (3 x 64 KiB),
# the VMDK footer tail and a few headers.
REGION_CAP = MiB + 4 * 64 * KiB + 16 * KiB

# No example database: nothing is written into the checkout.
PROPS = settings(max_examples=150, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])


def inspect_all(data: bytes, declared: str, chunk: int, require_match: bool = True) -> ImageInspection:
    inspection = ImageInspection(InspectionPolicy(declared, require_match=require_match))
    try:
        for start in range(0, len(data), chunk):
            inspection.feed(data[start:start + chunk])
        inspection.finish()
    except FormatRejected:
        pass
    return inspection


def kept_bytes(inspection: ImageInspection) -> int:
    total = 0
    for inspector in inspection.detector.inspectors.values():
        total += sum(len(r.data) for r in inspector.regions.values())
        total += len(getattr(inspector, "tail", b""))
    return total


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(SEED_NAMES))])
    for _ in range(draw(st.integers(0, 12))):
        action = draw(st.sampled_from(["byte", "word", "cut", "splice"]))
        if not data:
            break
        if action == "byte":
            data[draw(st.integers(0, min(len(data), 2048) - 1))] = draw(st.integers(0, 255))
        elif action == "word":
            pos = draw(st.integers(0, max(0, min(len(data), 1024) - 8)))
            value = draw(st.sampled_from([0, 1, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 62, (1 << 64) - 1,
                                          draw(st.integers(0, (1 << 64) - 1))]))
            data[pos:pos + 8] = value.to_bytes(8, draw(st.sampled_from(["big", "little"])))
        elif action == "cut":
            del data[draw(st.integers(0, len(data))):]
        else:
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(max_size=64))
    return bytes(data)


@PROPS
@given(data=st.binary(max_size=70 * KiB), declared=st.sampled_from(DECLARED),
       chunk=st.sampled_from([1, 3, 512, 4096, 65536, 1 << 22]), require_match=st.booleans())
def test_random_bytes(data: bytes, declared: str, chunk: int, require_match: bool) -> None:
    if chunk == 1:
        data = data[:4 * KiB]
    inspection = inspect_all(data, declared, chunk, require_match)
    assert kept_bytes(inspection) <= REGION_CAP


@PROPS
@given(data=mutated(), declared=st.sampled_from(DECLARED), chunk=st.sampled_from([7, 512, 4096, 1 << 20]))
def test_mutated_headers(data: bytes, declared: str, chunk: int) -> None:
    inspection = inspect_all(data, declared, chunk)
    assert kept_bytes(inspection) <= REGION_CAP


@PROPS
@given(data=mutated())
def test_mutated_headers_from_a_file(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "mutated.img"
    path.write_bytes(data)
    try:
        found = detect_file(str(path))
    except FormatRejected:
        return
    assert found.format in ALL_FORMATS
    assert found.virtual_size is None or found.virtual_size >= 0


@pytest.mark.parametrize("fill", [b"A", b"\x00", b"\xff", b"KDMV", b"# Disk DescriptorFile\n", b"=\n",
                                  b"# x\ncreateType=\"monolithicSparse\"\n" + b"RW 10 SPARSE \"x\"\n" * 1000])
def test_long_stream_memory_is_bounded(fill: bytes) -> None:
    """64 MiB through every inspector keeps well under 4 MiB, whatever the content looks like."""
    chunk = (fill * (512 * KiB // len(fill) + 1))[:512 * KiB]
    tracemalloc.start()
    try:
        inspection = ImageInspection(InspectionPolicy("raw"))
        for _ in range(128):
            inspection.feed(chunk)
        inspection.finish()
        _, peak = tracemalloc.get_traced_memory()
    except FormatRejected:
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak


# -- the converter on mutated images ---------------------------------------------------------------

@pytest.fixture(scope="module")
def qcow2_sample(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("prop-qcow2")
    source = root / "s.raw"
    with source.open("wb") as handle:
        handle.truncate(4 * MiB)
        handle.write(b"compressible " * 30000)
        handle.seek(2 * MiB)
        handle.write(bytes(range(256)) * 1000)
    image = root / "s.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", str(source), str(image)],
                   check=True, capture_output=True, timeout=60)
    return image.read_bytes()


@pytest.mark.parametrize("impl", ["c", "py"])
def test_converter_on_mutated_images(qcow2_sample: bytes, tmp_path: Path, impl: str) -> None:
    kernel = importlib.import_module(f"streamd.kernels._qcow2_{impl}")

    @settings(max_examples=60, deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(edits=st.lists(st.tuples(st.integers(0, len(qcow2_sample) - 8), st.integers(0, (1 << 64) - 1),
                                    st.sampled_from([1, 2, 8])), max_size=6),
           table_bias=st.booleans())
    def prop(edits: list[tuple[int, int, int]], table_bias: bool) -> None:
        data = bytearray(qcow2_sample)
        for pos, value, width in edits:
            if table_bias:
                pos = pos % (8 * 4096)   # header, refcount, L1 and L2 tables live in the first clusters
            data[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
        src, dst = tmp_path / "in.qcow2", tmp_path / "out.raw"
        src.write_bytes(data)
        dst.unlink(missing_ok=True)
        try:
            result = convert_qcow2_to_raw(src, dst, max_virtual_size=64 * MiB)
        except FormatRejected:
            assert not dst.exists()
            return
        assert dst.stat().st_size == result.virtual_size <= 64 * MiB

    with mock.patch.object(convert_module, "kernel", kernel), mock.patch.object(inspectors_module,
                                                                                 "qcow2_kernel", kernel):
        prop()
