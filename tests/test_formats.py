"""Disk format inspection: benign images made by qemu-img, a hostile corpus, Glance's verdict rules.

The hostile corpus (tests/fuzz/corpus.py) is refused with the named check both by the
inspectors directly and through the real API, where nothing may stay in the store.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from conftest import MEMBER_A, ApiClient, make_config, start_api
from fuzz.corpus import (KiB, MiB, gpt_disk, hostile_samples, iso_image, qcow2_image, truncated_samples, vdi_header,
                         vmdk_descriptor, vmdk_sparse, vmdk_stream_footer)
from streamd.status import status_of
from streamd.formats import (ALL_FORMATS, FormatRejected, ImageInspection, InspectionPolicy, detect_file,
                             detect_stream)

OCTET = {"Content-Type": "application/octet-stream"}
HOSTILE = hostile_samples()
TRUNCATED = truncated_samples()
VIRTUAL = 64 * MiB


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def verdict(data: bytes, declared: str, chunk: int = 64 * KiB, **policy: object):
    inspection = ImageInspection(InspectionPolicy(declared, **policy))  # type: ignore[arg-type]
    for piece in chunks_of(data, chunk):
        inspection.feed(piece)
    return inspection.finish()


# -- the benign corpus, made by qemu-img --------------------------------------------------------

QEMU_FORMATS = [
    # (name, qemu-img -O format, options, our format name)
    ("raw", "raw", [], "raw"),
    ("qcow2-v2", "qcow2", ["-o", "compat=0.10"], "qcow2"),
    ("qcow2-v3", "qcow2", ["-o", "compat=1.1"], "qcow2"),
    ("qcow2-zstd", "qcow2", ["-c", "-o", "compression_type=zstd"], "qcow2"),
    ("vmdk-sparse", "vmdk", ["-o", "subformat=monolithicSparse"], "vmdk"),
    ("vmdk-stream", "vmdk", ["-o", "subformat=streamOptimized"], "vmdk"),
    ("vhd", "vpc", [], "vhd"),
    ("vhdx", "vhdx", [], "vhdx"),
    ("vdi", "vdi", [], "vdi"),
    ("qed", "qed", [], "qed"),
]


@pytest.fixture(scope="module")
def qemu_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, int]]:
    """name -> (path, expected format, expected virtual size from qemu-img info)."""
    root = tmp_path_factory.mktemp("qemu-corpus")
    source = root / "source.raw"
    with source.open("wb") as handle:
        handle.truncate(VIRTUAL)
        for i in range(8):
            handle.seek(i * 7 * MiB + 4096)
            handle.write((b"streamd %d " % i) * 20000)
    corpus: dict[str, tuple[Path, str, int]] = {}
    for name, qemu_format, options, ours in QEMU_FORMATS:
        path = root / f"{name}.img"
        subprocess.run(["qemu-img", "convert", "-O", qemu_format, *options, str(source), str(path)],
                       check=True, capture_output=True, timeout=60)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                                         capture_output=True, timeout=60).stdout)
        corpus[name] = (path, ours, info["virtual-size"])
    iso_tool = shutil.which("genisoimage") or shutil.which("xorriso")
    if iso_tool:
        content = root / "iso-content"
        content.mkdir()
        (content / "hello.txt").write_text("hello\n" * 1000)
        iso = root / "cd.iso"
        command = [iso_tool] if iso_tool.endswith("genisoimage") else [iso_tool, "-as", "mkisofs"]
        subprocess.run([*command, "-quiet", "-V", "STREAMD", "-o", str(iso), str(content)], check=True,
                       capture_output=True, timeout=60)
        corpus["iso"] = (iso, "iso", iso.stat().st_size)
    return corpus


def test_iso_tool_is_installed() -> None:
    """scripts/install.sh --test installs genisoimage, so the ISO case never silently drops out."""
    assert shutil.which("genisoimage") or shutil.which("xorriso")


@pytest.mark.parametrize("name", [q[0] for q in QEMU_FORMATS] + ["iso"])
def test_benign_detected_with_virtual_size(qemu_corpus: dict[str, tuple[Path, str, int]], name: str) -> None:
    path, expected, virtual_size = qemu_corpus[name]
    found = detect_file(str(path))
    assert found.format == expected
    assert found.virtual_size == virtual_size
    if name == "qed":
        assert list(found.failures) == ["banned"]
    else:
        assert found.failures == {}


@pytest.mark.parametrize("chunk", [4096, 65536 + 17, 4 * MiB])
@pytest.mark.parametrize("name", [q[0] for q in QEMU_FORMATS if q[0] != "qed"] + ["iso"])
def test_benign_stream_verdict(qemu_corpus: dict[str, tuple[Path, str, int]], name: str, chunk: int) -> None:
    path, expected, virtual_size = qemu_corpus[name]
    result = verdict(path.read_bytes(), expected, chunk)
    assert result.detected == expected
    assert result.virtual_size == virtual_size


def test_benign_qed_refused(qemu_corpus: dict[str, tuple[Path, str, int]]) -> None:
    with pytest.raises(FormatRejected) as caught:
        verdict(qemu_corpus["qed"][0].read_bytes(), "qed")
    assert caught.value.check == "banned"


@pytest.mark.parametrize("name", ["qcow2-v3", "vmdk-sparse", "vhd", "vdi"])
def test_benign_claimed_raw_is_allowed_with_byte_size(qemu_corpus: dict[str, tuple[Path, str, int]],
                                                     name: str) -> None:
    path = qemu_corpus[name][0]
    result = verdict(path.read_bytes(), "raw")
    assert result.detected == qemu_corpus[name][1]
    assert result.virtual_size == path.stat().st_size
    assert result.warnings


# -- the hostile corpus ----------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 511, 4 * MiB])
@pytest.mark.parametrize("name,declared,data,check", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_refused_with_named_check(name: str, declared: str, data: bytes, check: str, chunk: int) -> None:
    if chunk == 1:
        if name.startswith(("vhdx", "vmdk-bad-footer")):
            chunk = 7   # their decisive bytes are far in (tables, the footer): byte at a time is only slow
        else:
            data = data[:40 * KiB]  # enough for every other decision, keeps byte-at-a-time fast
    with pytest.raises(FormatRejected) as caught:
        verdict(data, declared, chunk)
    assert caught.value.check == check, caught.value
    assert check in str(caught.value)
    assert status_of(caught.value) == 415


@pytest.mark.parametrize("name,declared,data", TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_header_refused(name: str, declared: str, data: bytes) -> None:
    with pytest.raises(FormatRejected) as caught:
        verdict(data, declared)
    # Formats whose signature comes first say "truncated"; iso and gpt are decided later.
    expected = "format_match" if declared in ("iso", "gpt") else "truncated"
    assert caught.value.check == expected, caught.value


@pytest.mark.parametrize("name,declared,data", TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_header_claimed_raw_is_raw(name: str, declared: str, data: bytes) -> None:
    """A cut header is no image of that format: as raw it is only bytes (as in Glance)."""
    assert verdict(data, "raw").virtual_size == (len(data) or None)


def test_hostile_refused_within_first_chunk() -> None:
    """The verdict comes from the first bytes: a 4 MiB chunk is enough, nothing more is read."""
    data = qcow2_image(backing_offset=512, backing_size=4)
    inspection = ImageInspection(InspectionPolicy("qcow2"))
    with pytest.raises(FormatRejected, match="backing_file"):
        inspection.feed(data.ljust(4 * MiB, b"\x00"))
    inspection = ImageInspection(InspectionPolicy("vmdk"))
    with pytest.raises(FormatRejected, match="format_match"):
        inspection.feed(bytes(40 * KiB))   # ISO's descriptor at 32 KiB is the furthest signature


def test_inspection_goes_idle_after_the_header() -> None:
    inspection = ImageInspection(InspectionPolicy("qcow2"))
    inspection.feed(qcow2_image(size=1 << 30))
    assert inspection._idle
    for _ in range(100):
        inspection.feed(bytes(1 << 16))
    assert inspection.finish().virtual_size == 1 << 30


# -- Glance's verdict rules ----------------------------------------------------------------------------

def test_gpt_accepted_as_raw_with_byte_size() -> None:
    data = gpt_disk()
    result = verdict(data, "raw")
    assert result.detected == "gpt" and result.virtual_size == len(data)


def test_iso_with_gpt_is_iso() -> None:
    data = iso_image(300, with_mbr=True)
    result = verdict(data, "iso")
    assert result.detected == "iso" and set(result.matched) == {"iso", "gpt"}
    assert result.virtual_size == 300 * 2048


def test_raw_detected_for_uninspectable_formats() -> None:
    data = bytes(range(256)) * 1024
    for declared in ("ami", "aki", "ari", "ploop"):
        result = verdict(data, declared)
        assert result.detected == "raw" and result.virtual_size is None
    with pytest.raises(FormatRejected, match="format_match"):
        verdict(qcow2_image(), "ami")


def test_mismatch_allowed_when_not_required_but_safety_still_runs() -> None:
    result = verdict(qcow2_image(), "vmdk", require_match=False)
    assert result.detected == "qcow2" and result.virtual_size is None and result.warnings
    with pytest.raises(FormatRejected, match="backing_file"):
        verdict(qcow2_image(backing_offset=512, backing_size=3), "vmdk", require_match=False)


def test_gpt_nonfatal_and_kernel_images() -> None:
    bad = gpt_disk([(0x42, (0, 2, 0), 0xEE, 1, 100)])
    with pytest.raises(FormatRejected, match="mbr"):
        verdict(bad, "raw")
    assert verdict(bad, "raw", gpt_nonfatal=frozenset({"mbr"})).warnings
    with pytest.raises(FormatRejected, match="format_match"):
        verdict(bad, "aki")  # partition-table content is not an aki kernel
    # Past the format match (option off), a kernel's odd MBR is never fatal, as in Glance.
    assert verdict(bad, "aki", require_match=False).warnings
    with pytest.raises(FormatRejected, match="mbr"):
        verdict(bad, "qcow2", require_match=False)


def test_vmdk_stream_optimized_footer_checked_at_the_end() -> None:
    good = vmdk_sparse(vmdk_descriptor("streamOptimized"), version=3, gd_offset=0xFFFFFFFFFFFFFFFF,
                       footer=vmdk_stream_footer())
    assert verdict(good, "vmdk", 4096).virtual_size == 2097152 * 512
    bad = vmdk_sparse(vmdk_descriptor("streamOptimized"), version=3, gd_offset=0xFFFFFFFFFFFFFFFF,
                      footer=vmdk_stream_footer(good=False))
    inspection = ImageInspection(InspectionPolicy("vmdk"))
    for piece in chunks_of(bad, 4096):
        inspection.feed(piece)   # nothing is wrong until the end
    with pytest.raises(FormatRejected, match="footer"):
        inspection.finish()


def test_vdi_and_every_format_name_known() -> None:
    assert verdict(vdi_header() + bytes(4096), "vdi").virtual_size == 64 * MiB
    assert set(ALL_FORMATS) == {"raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "qed", "iso", "gpt", "luks"}


def test_detect_stream_helper() -> None:
    assert detect_stream([qcow2_image()[:100], qcow2_image()[100:]], "qcow2").detected == "qcow2"


# -- through the real API -------------------------------------------------------------------------------

def store_dir(api: ApiClient) -> Path:
    return api.config.data_dir / "images" / "fs"


def assert_nothing_stored(api: ApiClient, image_id: str) -> None:
    root = store_dir(api)
    assert not (root / image_id).exists()
    incoming = root / ".incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []


async def put(api: ApiClient, image_id: str, data: object) -> object:
    return await api.call("PUT", f"/v2/images/{image_id}/file", as_=MEMBER_A, data=data, headers=OCTET)


API_CASES = [h for h in HOSTILE if h[1] in ("raw", "qcow2", "vmdk", "vhdx", "vhd")]


@pytest.mark.parametrize("name,declared,data,check", API_CASES, ids=[h[0] for h in API_CASES])
async def test_api_refuses_hostile_upload(api: ApiClient, name: str, declared: str, data: bytes,
                                          check: str) -> None:
    image = await api.create(disk_format=declared, container_format="bare")
    reply = await put(api, image["id"], data)
    assert reply.status == 415, reply.body
    message = reply.error["message"]
    assert check in message
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["status"] == "queued" and shown["size"] is None
    assert_nothing_stored(api, image["id"])


async def test_api_qed_refused(api: ApiClient) -> None:
    data = [h for h in HOSTILE if h[0] == "qed-claimed-raw"][0][2]
    image = await api.create(disk_format="raw", container_format="bare")
    reply = await put(api, image["id"], data)
    assert reply.status == 415 and "banned" in reply.error["message"]
    assert_nothing_stored(api, image["id"])


async def test_api_truncated_qcow2(api: ApiClient) -> None:
    image = await api.create(disk_format="qcow2", container_format="bare")
    reply = await put(api, image["id"], qcow2_image()[:300])
    assert reply.status == 415 and "truncated" in reply.error["message"]
    assert_nothing_stored(api, image["id"])


async def test_api_records_virtual_size(api: ApiClient, qemu_corpus: dict[str, tuple[Path, str, int]]) -> None:
    for name in ("qcow2-v3", "vmdk-stream", "vhdx", "raw"):
        path, fmt, virtual_size = qemu_corpus[name]
        image = await api.create(disk_format=fmt, container_format="bare")
        reply = await put(api, image["id"], path.read_bytes())
        assert reply.status == 204, reply.body
        shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
        assert shown["status"] == "active" and shown["virtual_size"] == virtual_size, name


async def test_api_raw_claim_over_qcow2_records_byte_size(api: ApiClient) -> None:
    data = qcow2_image(size=1 << 30)
    image = await api.create(disk_format="raw", container_format="bare")
    assert (await put(api, image["id"], data)).status == 204
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["virtual_size"] == len(data)


async def test_api_non_bare_container_is_not_inspected(api: ApiClient) -> None:
    data = qcow2_image(backing_offset=512, backing_size=4)
    image = await api.create(disk_format="qcow2", container_format="ovf")
    assert (await put(api, image["id"], data)).status == 204
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["status"] == "active" and shown["virtual_size"] is None


async def test_api_mismatch_allowed_when_not_required(tmp_path: Path) -> None:
    config = make_config(tmp_path, image_format={"require_image_format_match": "false"})
    server, client, session = await start_api(config)
    try:
        image = await client.create(disk_format="vmdk", container_format="bare")
        assert (await put(client, image["id"], qcow2_image())).status == 204
        image = await client.create(disk_format="vmdk", container_format="bare")
        reply = await put(client, image["id"], qcow2_image(backing_offset=512, backing_size=4))
        assert reply.status == 415 and "backing_file" in reply.error["message"]
    finally:
        await session.close()
        await server.close()


async def test_api_refuses_early_without_reading_the_whole_body(api: ApiClient) -> None:
    """The 415 comes from the header bytes: the server stops reading a 1 GiB body at once."""
    sent = 0
    total = 1 << 30

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = qcow2_image(backing_offset=512, backing_size=4).ljust(MiB, b"\x00")
        yield head
        sent += len(head)
        block = bytes(MiB)
        while sent < total:
            await asyncio.sleep(0)
            yield block
            sent += len(block)

    image = await api.create(disk_format="qcow2", container_format="bare")
    try:
        reply = await put(api, image["id"], body())
        assert reply.status == 415 and "backing_file" in reply.error["message"]
    except aiohttp.ClientError:
        pass  # the server may close the connection while the client still sends
    assert sent < total // 4
    for _ in range(50):
        shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
        if shown["status"] == "queued":
            break
        await asyncio.sleep(0.05)
    assert shown["status"] == "queued"
    assert_nothing_stored(api, image["id"])


# -- disk and container format allow-lists ------------------------------------------------------------

async def test_allow_lists_on_create_and_patch(tmp_path: Path) -> None:
    config = make_config(tmp_path, image_format={"disk_formats": "raw,qcow2", "container_formats": "bare,ovf"})
    server, client, session = await start_api(config)
    try:
        for body in ({"disk_format": "vmdk"}, {"container_format": "docker"}, {"disk_format": "floppy"}):
            reply = await client.call("POST", "/v2/images", as_=MEMBER_A,
                                      json_body={"disk_format": "raw", "container_format": "bare", **body})
            assert reply.status == 400, (body, reply.body)
        image = await client.create(disk_format="qcow2", container_format="ovf")
        for path, value in (("/disk_format", "vmdk"), ("/container_format", "docker"),
                            ("/disk_format", "iso"), ("/container_format", "compressed")):
            reply = await client.patch(image["id"], [{"op": "replace", "path": path, "value": value}])
            assert reply.status == 400, (path, value, reply.body)
        reply = await client.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": "raw"}])
        assert reply.status == 200 and reply.json["disk_format"] == "raw"
        schema = (await client.call("GET", "/v2/schemas/image", as_=MEMBER_A)).json
        assert schema["properties"]["disk_format"]["enum"] == [None, "raw", "qcow2"]
        assert schema["properties"]["container_format"]["enum"] == [None, "bare", "ovf"]
    finally:
        await session.close()
        await server.close()
