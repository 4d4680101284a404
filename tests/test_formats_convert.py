"""qcow2 -> raw: byte-identical to ``qemu-img convert -O raw``, sparse, and refusing hostile tables.

Every case runs once with the native qcow2 kernel and once with its pure-Python twin.
"""

from __future__ import annotations

import importlib
import os
import random
import struct
import subprocess
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import streamd.formats.convert as convert_module
import streamd.formats.inspectors as inspectors_module
from fuzz.corpus import MiB, qcow2_image
from streamd.formats import FormatRejected
from streamd.formats.convert import convert_qcow2_to_raw

VIRTUAL = 24 * MiB + 3 * 512   # not a whole number of clusters


def run(*args: str) -> None:
    done = subprocess.run(list(args), capture_output=True, timeout=120)
    assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))


@pytest.fixture(params=["native", "python"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = importlib.import_module(f"streamd.kernels._qcow2_{'c' if request.param == 'native' else 'py'}")
    monkeypatch.setattr(convert_module, "kernel", module)
    monkeypatch.setattr(inspectors_module, "qcow2_kernel", module)
    return module


def mixed_source(path: Path, size: int = VIRTUAL, seed: int = 7) -> Path:
    """Text (compresses), random bytes (does not), zeros inside data, and holes."""
    rng = random.Random(seed)
    with path.open("wb") as handle:
        handle.truncate(size)
        for _ in range(60):
            offset = rng.randrange(0, size - 300_000) // 512 * 512
            handle.seek(offset)
            kind = rng.random()
            if kind < 0.35:
                handle.write(rng.randbytes(rng.randrange(1, 200_000)))
            elif kind < 0.8:
                handle.write((b"streamd %d " % rng.randrange(1000)) * rng.randrange(1, 20_000))
            else:
                handle.write(b"\x01" + bytes(rng.randrange(1, 150_000)) + b"\x02")
        handle.seek(size - 700)
        handle.write(b"the very end")
    return path


CASES = {
    # name: (qemu-img convert options, post-processing qemu-io commands)
    "v2": (["-o", "compat=0.10"], []),
    "v3": (["-o", "compat=1.1"], []),
    "v2-zlib": (["-c", "-o", "compat=0.10"], []),
    "v3-zlib": (["-c"], []),
    "v3-zstd": (["-c", "-o", "compression_type=zstd"], []),
    "cluster-512": (["-o", "cluster_size=512"], []),
    "cluster-4k-zlib": (["-c", "-o", "cluster_size=4096"], []),
    "cluster-2m-zstd": (["-c", "-o", "cluster_size=2M,compression_type=zstd"], []),
    "zero-clusters": (["-o", "compat=1.1"], ["write -z 0 1M", "write -z -u 4M 2M", "write -z 20M 64k"]),
    "discarded": (["-o", "compat=1.1"], ["discard 1M 3M"]),
    "rewritten": (["-c"], ["write -P 0x5a 64k 200k", "write -P 0 2M 128k"]),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (qcow2 image, qemu-img's raw output)."""
    root = tmp_path_factory.mktemp("convert-corpus")
    source = mixed_source(root / "source.raw")
    out: dict[str, tuple[Path, Path]] = {}
    for name, (options, io_commands) in CASES.items():
        image = root / f"{name}.qcow2"
        run("qemu-img", "convert", "-O", "qcow2", *options, str(source), str(image))
        for command in io_commands:
            run("qemu-io", "-f", "qcow2", "-c", command, str(image))
        out[name] = (image, root / f"{name}.ref.raw")
    # A mostly empty disk: 768 MiB virtual, three small writes, two L2 tables far apart.
    sparse = root / "sparse.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(sparse), "768M")
    for command in ("write -P 0x11 0 4k", "write -P 0x22 600M 1M", "write -P 0x33 767M 512"):
        run("qemu-io", "-f", "qcow2", "-c", command, str(sparse))
    out["sparse"] = (sparse, root / "sparse.ref.raw")
    # Internal snapshot, then the active layer changes: only the active L1 counts.
    snap = root / "snapshot.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(source), str(snap))
    run("qemu-img", "snapshot", "-c", "before", str(snap))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 3M", str(snap))
    out["snapshot"] = (snap, root / "snapshot.ref.raw")
    # Grown after writing: a larger L1 table and an unallocated tail.
    grown = root / "grown.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(source), str(grown))
    run("qemu-img", "resize", "-q", str(grown), "600M")
    out["grown"] = (grown, root / "grown.ref.raw")
    prealloc = root / "prealloc.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(prealloc), "32M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x44 1M 1M", str(prealloc))
    out["prealloc"] = (prealloc, root / "prealloc.ref.raw")
    for image, reference in out.values():
        run("qemu-img", "convert", "-O", "raw", str(image), str(reference))
    return out


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(4 * MiB), fb.read(4 * MiB)
            if x != y:
                return False
            if not x:
                return True


ALL_CASES = [*CASES, "sparse", "snapshot", "grown", "prealloc"]


@pytest.mark.parametrize("name", ALL_CASES)
def test_output_identical_to_qemu_img(corpus: dict[str, tuple[Path, Path]], kernel: ModuleType, name: str,
                                      tmp_path: Path) -> None:
    image, reference = corpus[name]
    output = tmp_path / "out.raw"
    result = convert_qcow2_to_raw(image, output)
    assert same_bytes(output, reference), name
    assert result.virtual_size == reference.stat().st_size
    assert result.written_bytes <= result.allocated_bytes
    if "zlib" in name or "zstd" in name:
        assert result.compressed_bytes > 0
        assert result.compression_type == ("zstd" if "zstd" in name else "zlib")


def test_sparse_output_writes_only_data(corpus: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    output = tmp_path / "out.raw"
    result = convert_qcow2_to_raw(corpus["sparse"][0], output)
    assert result.virtual_size == 768 * MiB
    # Each small write allocated a whole 64 KiB cluster; the zeros in them are skipped in 64 KiB blocks.
    assert result.data_bytes == 64 * 1024 + MiB + 64 * 1024
    assert result.written_bytes == result.data_bytes
    assert output.stat().st_blocks * 512 < 4 * MiB   # holes, not written zeros


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_does_not_change_output(corpus: dict[str, tuple[Path, Path]], tmp_path: Path,
                                             threads: int) -> None:
    image, reference = corpus["v3-zstd"]
    convert_qcow2_to_raw(image, tmp_path / "out.raw", threads=threads)
    assert same_bytes(tmp_path / "out.raw", reference)


# -- hostile images ----------------------------------------------------------------------------

def small_qcow2(tmp_path: Path, name: str = "base.qcow2", *options: str, size: str = "1G",
                writes: tuple[str, ...] = ("write -P 0x61 0 256k", "write -P 0x62 600M 64k")) -> Path:
    path = tmp_path / name
    run("qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), size)
    for command in writes:
        run("qemu-io", "-f", "qcow2", "-c", command, str(path))
    return path


def header_of(path: Path) -> SimpleNamespace:
    data = path.read_bytes()[:112]
    (_m, version, _bo, _bs, cluster_bits, size, _c, l1_size, l1_offset) = struct.unpack_from(">4sIQIIQIIQ", data)
    return SimpleNamespace(version=version, cluster=1 << cluster_bits, size=size, l1_size=l1_size,
                           l1_offset=l1_offset)


def patch(path: Path, offset: int, value: int, fmt: str = ">Q") -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(struct.pack(fmt, value))


def l1_entry(path: Path, index: int) -> int:
    h = header_of(path)
    with path.open("rb") as handle:
        handle.seek(h.l1_offset + 8 * index)
        return int(struct.unpack(">Q", handle.read(8))[0])


def refused(path: Path, tmp_path: Path, check: str, **kwargs: int) -> FormatRejected:
    output = tmp_path / "out.raw"
    with pytest.raises(FormatRejected) as caught:
        convert_qcow2_to_raw(path, output, **kwargs)
    assert caught.value.check == check, caught.value
    assert not output.exists()
    return caught.value


def test_l2_table_overlapping_l1(tmp_path: Path, kernel: ModuleType) -> None:
    image = small_qcow2(tmp_path)
    h = header_of(image)
    patch(image, h.l1_offset, h.l1_offset | 1 << 63)
    refused(image, tmp_path, "l2_table")


def test_l2_table_shared_by_two_l1_entries(tmp_path: Path, kernel: ModuleType) -> None:
    image = small_qcow2(tmp_path)
    h = header_of(image)
    patch(image, h.l1_offset + 8, l1_entry(image, 0))
    refused(image, tmp_path, "l2_table")


def test_l2_table_unaligned_and_past_eof(tmp_path: Path, kernel: ModuleType) -> None:
    image = small_qcow2(tmp_path)
    h = header_of(image)
    first = l1_entry(image, 0)
    patch(image, h.l1_offset, first + 512)
    refused(image, tmp_path, "l2_table")
    patch(image, h.l1_offset, (image.stat().st_size + 16 * h.cluster) // h.cluster * h.cluster)
    refused(image, tmp_path, "l2_table")


def test_data_cluster_past_eof_or_unaligned(tmp_path: Path, kernel: ModuleType) -> None:
    image = small_qcow2(tmp_path)
    l2 = l1_entry(image, 0) & 0x00FFFFFFFFFFFE00
    patch(image, l2, (1 << 40) | 1 << 63)
    refused(image, tmp_path, "cluster")
    patch(image, l2, (header_of(image).cluster * 5 + 512) | 1 << 63)
    refused(image, tmp_path, "l2_table")


def test_zero_flag_in_version_2(tmp_path: Path, kernel: ModuleType) -> None:
    image = small_qcow2(tmp_path, "v2.qcow2", "-o", "compat=0.10")
    l2 = l1_entry(image, 0) & 0x00FFFFFFFFFFFE00
    with image.open("rb") as handle:
        handle.seek(l2)
        entry = struct.unpack(">Q", handle.read(8))[0]
    patch(image, l2, entry | 1)
    refused(image, tmp_path, "l2_table")


def test_corrupt_compressed_cluster(tmp_path: Path, kernel: ModuleType) -> None:
    source = tmp_path / "text.raw"
    source.write_bytes(b"compress me " * 100_000)
    image = tmp_path / "c.qcow2"
    run("qemu-img", "convert", "-c", "-O", "qcow2", str(source), str(image))
    l2 = l1_entry(image, 0) & 0x00FFFFFFFFFFFE00
    with image.open("rb") as handle:
        handle.seek(l2)
        entry = struct.unpack(">Q", handle.read(8))[0]
    assert entry & 1 << 62
    csize_shift = 62 - (16 - 8)
    coffset = entry & ((1 << csize_shift) - 1)
    with image.open("r+b") as handle:
        handle.seek(coffset)
        handle.write(b"\xff" * 64)
    refused(image, tmp_path, "compressed_cluster")


@pytest.mark.parametrize("case,check", [
    ("backing", "backing_file"), ("data-file", "data_file"), ("extended-l2", "unknown_features"),
    ("encrypted", "encryption"), ("raw", "format_match"), ("qed", "format_match"),
])
def test_refused_images_made_by_qemu_img(tmp_path: Path, case: str, check: str) -> None:
    image = tmp_path / "image"
    if case == "backing":
        base = small_qcow2(tmp_path, "base.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(image))
    elif case == "data-file":
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(image), "64M")
    elif case == "extended-l2":
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", str(image), "64M")
    elif case == "encrypted":
        run("qemu-img", "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2", "-o",
            "encrypt.format=aes,encrypt.key-secret=sec0", str(image), "64M")
    elif case == "raw":
        image.write_bytes(os.urandom(1 << 20))
    else:
        run("qemu-img", "create", "-q", "-f", "qed", str(image), "64M")
    refused(image, tmp_path, check)


def test_crafted_headers_refused(tmp_path: Path, kernel: ModuleType) -> None:
    for kwargs, check in (({"l1_size": 1 << 23}, "l1_table"), ({"l1_offset": 0}, "l1_table"),
                          ({"version": 1}, "unknown_features"), ({"backing_offset": 512}, "backing_file")):
        image = tmp_path / "crafted.qcow2"
        image.write_bytes(qcow2_image(**kwargs))
        refused(image, tmp_path, check)


def test_l1_table_past_eof(tmp_path: Path, kernel: ModuleType) -> None:
    image = tmp_path / "short.qcow2"
    image.write_bytes(qcow2_image(size=1 << 30, l1_offset=1 << 30))
    refused(image, tmp_path, "l1_table")


def test_virtual_size_limit(tmp_path: Path) -> None:
    image = small_qcow2(tmp_path)
    refused(image, tmp_path, "virtual_size", max_virtual_size=1 << 29)
    assert convert_qcow2_to_raw(image, tmp_path / "ok.raw", max_virtual_size=1 << 30).virtual_size == 1 << 30


def test_empty_and_unallocated_image(tmp_path: Path, kernel: ModuleType) -> None:
    image = tmp_path / "empty.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "0")
    result = convert_qcow2_to_raw(image, tmp_path / "out.raw")
    assert result.virtual_size == 0 and (tmp_path / "out.raw").stat().st_size == 0
    image.write_bytes(qcow2_image(size=10 * MiB))  # tables all zero
    result = convert_qcow2_to_raw(image, tmp_path / "out.raw")
    assert result.written_bytes == 0 and (tmp_path / "out.raw").stat().st_size == 10 * MiB
