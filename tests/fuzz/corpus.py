"""Hand-built image headers, benign and hostile, for the format tests and fuzz seeds.

Everything here is built from the format specifications in a few lines of struct
packing, so the tests do not depend on any tool for the hostile corpus. The benign
corpus made with qemu-img lives in the tests (``qemu_corpus``).
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

# -- qcow2 ------------------------------------------------------------------------------


def qcow2_header(*, version: int = 3, backing_offset: int = 0, backing_size: int = 0, cluster_bits: int = 16,
                 size: int = 1 << 30, crypt: int = 0, l1_size: int | None = None, l1_offset: int | None = None,
                 incompatible: int = 0, header_length: int = 112, compression_type: int = 0,
                 refcount_order: int = 4) -> bytes:
    """A qcow2 header padded to a cluster, with an empty L1 table after a refcount table."""
    cluster = 1 << cluster_bits
    if l1_size is None:
        l1_size = max(1, -(-size // (cluster * (cluster // 8))))
    if l1_offset is None:
        l1_offset = 3 * cluster
    head = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing_offset, backing_size, cluster_bits, size,
                       crypt, l1_size, l1_offset, cluster, 1, 0, 0)
    if version >= 3:
        head += struct.pack(">QQQII", incompatible, 0, 0, refcount_order, header_length)
        if header_length > 104:
            head += bytes([compression_type]) + bytes(7)
    return head.ljust(512, b"\x00")


def qcow2_image(**kwargs: int) -> bytes:
    """A header plus zero-filled clusters up to and including its L1 table (all unallocated)."""
    header = qcow2_header(**kwargs)
    version, = struct.unpack_from(">I", header, 4)
    cluster_bits, = struct.unpack_from(">I", header, 20)
    l1_size, = struct.unpack_from(">I", header, 36)
    l1_offset, = struct.unpack_from(">Q", header, 40)
    cluster = 1 << min(cluster_bits, 21)
    end = min(l1_offset + max(l1_size * 8, cluster), 4 * MiB)
    return header.ljust(max(end, cluster * 4), b"\x00")


# -- vmdk -------------------------------------------------------------------------------

def vmdk_descriptor(create_type: str = "monolithicSparse", extent: str = 'RW 2097152 SPARSE "disk.vmdk"',
                    extra: str = "") -> str:
    return ("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
            f'createType="{create_type}"\n\n# Extent description\n{extent}\n{extra}\n'
            '# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.geometry.cylinders = "2080"\n')


def vmdk_sparse(descriptor: str, *, capacity: int = 2097152, version: int = 1, desc_sector: int = 1,
                gd_offset: int = 21, footer: bytes | None = None) -> bytes:
    """A hosted sparse extent header, its descriptor at sector 1, and an optional tail."""
    desc = descriptor.encode()
    desc_sectors = max(1, -(-len(desc) // 512))
    header = struct.pack("<4sIIQQQQIQQQ?cccc", b"KDMV", version, 3, capacity, 128, desc_sector, desc_sectors,
                         512, 0, gd_offset, 128, False, b"\n", b" ", b"\r", b"\n").ljust(512, b"\x00")
    body = header + desc.ljust(desc_sectors * 512, b"\x00") + bytes(64 * KiB)
    if footer is not None:
        body += footer
    return body


def vmdk_stream_footer(*, good: bool = True) -> bytes:
    """Footer marker + footer header + end-of-stream marker (streamOptimized)."""
    marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\x00")
    footer_header = struct.pack("<4sIIQQQQIQQ", b"KDMV", 3, 0x30001, 2097152, 128, 1, 1, 512, 0, 64)
    eos = bytes(512) if good else struct.pack("<QII", 0, 0, 7).ljust(512, b"\x00")
    return marker + footer_header.ljust(512, b"\x00") + eos


# -- vhd, vhdx, vdi, qed, luks, iso -----------------------------------------------------

def vhd_footer(size: int = 64 * MiB) -> bytes:
    return struct.pack(">8sIIQI4sI4sQQ", b"conectix", 2, 0x10000, 512, 0, b"qem2", 0x50003, b"Wi2k",
                       size, size).ljust(512, b"\x00")


def _guid_bytes(text: str) -> bytes:
    a, b, c, d, e = text.split("-")
    return struct.pack("<IHH", int(a, 16), int(b, 16), int(c, 16)) + bytes.fromhex(d + e)


VHDX_METADATA = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
VHDX_VDS = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"


def vhdx_image(size: int = 64 * MiB, *, meta_offset: int = 2 * MiB, region_sig: bytes = b"regi",
               item_offset: int = 64 * KiB) -> bytes:
    data = bytearray(max(meta_offset + 128 * KiB, 320 * KiB))
    data[0:8] = b"vhdxfile"
    table = 192 * KiB
    data[table:table + 16] = struct.pack("<4sIII", region_sig, 0, 1, 0)
    data[table + 16:table + 48] = _guid_bytes(VHDX_METADATA) + struct.pack("<QII", meta_offset, MiB, 1)
    data[meta_offset:meta_offset + 32] = struct.pack("<8sHH", b"metadata", 0, 1).ljust(32, b"\x00")
    data[meta_offset + 32:meta_offset + 64] = _guid_bytes(VHDX_VDS) + struct.pack("<III", item_offset, 8, 0) + bytes(4)
    if 0 <= meta_offset + item_offset <= len(data) - 8:
        data[meta_offset + item_offset:meta_offset + item_offset + 8] = struct.pack("<Q", size)
    return bytes(data)


def vdi_header(size: int = 64 * MiB) -> bytes:
    data = bytearray(512)
    data[0:40] = b"<<< Oracle VM VirtualBox Disk Image >>>\n"[:40]
    struct.pack_into("<I", data, 0x40, 0xBEDA107F)
    struct.pack_into("<Q", data, 0x170, size)
    return bytes(data)


def qed_header(size: int = 64 * MiB) -> bytes:
    return struct.pack("<4sIIIQQQQQ", b"QED\x00", 65536, 4, 1, 0, 0, 0, 65536, size).ljust(512, b"\x00")


def luks_header(version: int = 1, payload_sectors: int = 4096) -> bytes:
    head = struct.pack(">6sH32s32s32sII", b"LUKS\xba\xbe", version, b"aes", b"xts-plain64", b"sha256",
                       payload_sectors, 64)
    return head.ljust(592, b"\x00")


def iso_image(blocks: int = 200, *, with_mbr: bool = False) -> bytes:
    data = bytearray(blocks * 2048)
    pvd = 32 * KiB
    data[pvd:pvd + 7] = b"\x01CD001\x01"
    struct.pack_into("<I", data, pvd + 80, blocks)
    struct.pack_into(">I", data, pvd + 84, blocks)
    struct.pack_into("<H", data, pvd + 128, 2048)
    struct.pack_into(">H", data, pvd + 130, 2048)
    if with_mbr:
        data[0:512] = mbr(partitions=[(0x80, (0, 2, 0), 0x17, 0, blocks * 4)])
    return bytes(data)


# -- mbr / gpt --------------------------------------------------------------------------

def mbr(partitions: list[tuple[int, tuple[int, int, int], int, int, int]]) -> bytes:
    """(boot flag, start CHS, type, start LBA, sectors) per partition."""
    data = bytearray(512)
    for i, (boot, chs, ostype, lba, count) in enumerate(partitions):
        struct.pack_into("<BBBBBBBBII", data, 446 + 16 * i, boot, *chs, ostype, 0xFE, 0xFF, 0xFF, lba, count)
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def gpt_disk(partitions: list[tuple[int, tuple[int, int, int], int, int, int]] | None = None) -> bytes:
    if partitions is None:
        partitions = [(0, (0, 2, 0), 0xEE, 1, 0xFFFFFFFF)]
    return mbr(partitions) + b"EFI PART".ljust(512, b"\x00") + bytes(63 * KiB)


# -- the hostile corpus: (name, declared disk_format, data, expected check) --------------------

def hostile_samples() -> list[tuple[str, str, bytes, str]]:
    good_desc = vmdk_descriptor()
    return [
        ("qcow2-backing-file", "qcow2", qcow2_image(backing_offset=512, backing_size=11), "backing_file"),
        ("qcow2-backing-file-v2", "qcow2", qcow2_image(version=2, backing_offset=512, backing_size=11),
         "backing_file"),
        ("qcow2-backing-claimed-raw", "raw", qcow2_image(backing_offset=512, backing_size=11), "backing_file"),
        ("qcow2-data-file", "qcow2", qcow2_image(incompatible=1 << 2), "data_file"),
        ("qcow2-extended-l2", "qcow2", qcow2_image(incompatible=1 << 4), "unknown_features"),
        ("qcow2-unknown-bit-40", "qcow2", qcow2_image(incompatible=1 << 40), "unknown_features"),
        ("qcow2-v1", "qcow2", qcow2_image(version=1), "unknown_features"),
        ("qcow2-v4", "qcow2", qcow2_image(version=4), "unknown_features"),
        ("qcow2-huge-l1", "qcow2", qcow2_image(l1_size=1 << 23), "l1_table"),
        ("qcow2-small-l1", "qcow2", qcow2_image(size=1 << 40, l1_size=1), "l1_table"),
        ("qcow2-l1-on-header", "qcow2", qcow2_image(l1_offset=0), "l1_table"),
        ("qcow2-l1-unaligned", "qcow2", qcow2_image(l1_offset=3 * 65536 + 8), "l1_table"),
        ("qcow2-cluster-bits", "qcow2", qcow2_image(cluster_bits=31, l1_size=1, l1_offset=1 << 31), "header"),
        ("vmdk-extent-path", "vmdk",
         vmdk_sparse(vmdk_descriptor(extent='RW 2097152 SPARSE "/etc/shadow"')), "descriptor"),
        ("vmdk-extent-relative-path", "vmdk",
         vmdk_sparse(vmdk_descriptor(extent='RW 2097152 FLAT "../../secret" 0')), "descriptor"),
        ("vmdk-monolithic-flat", "vmdk", vmdk_sparse(vmdk_descriptor("monolithicFlat")), "descriptor"),
        ("vmdk-vmfs", "vmdk", vmdk_sparse(vmdk_descriptor("vmfs")), "descriptor"),
        ("vmdk-no-extent", "vmdk", vmdk_sparse(vmdk_descriptor(extent="")), "descriptor"),
        ("vmdk-odd-line", "vmdk", vmdk_sparse(vmdk_descriptor(extra="include /etc/passwd")), "descriptor"),
        ("vmdk-text-descriptor-path", "vmdk",
         vmdk_descriptor(extent='RW 2097152 FLAT "/dev/sda" 0').encode(), "descriptor"),
        ("vmdk-bad-footer", "vmdk",
         vmdk_sparse(vmdk_descriptor("streamOptimized"), version=3, gd_offset=0xFFFFFFFFFFFFFFFF,
                     footer=vmdk_stream_footer(good=False)), "footer"),
        ("vmdk-claimed-raw", "raw", vmdk_sparse(vmdk_descriptor(extent='RW 8 SPARSE "/etc/x"')), "descriptor"),
        ("qed", "qed", qed_header() + bytes(64 * KiB), "banned"),
        ("qed-claimed-raw", "raw", qed_header() + bytes(64 * KiB), "banned"),
        ("qed-claimed-qcow2", "qcow2", qed_header() + bytes(64 * KiB), "format_match"),
        ("gpt-bad-boot-flag", "raw", gpt_disk([(0x42, (0, 2, 0), 0xEE, 1, 100)]), "mbr"),
        ("gpt-extra-partitions", "raw",
         gpt_disk([(0, (0, 2, 0), 0xEE, 1, 100), (0, (0, 1, 0), 0x83, 200, 100)]), "mbr"),
        ("gpt-bad-start-lba", "raw", gpt_disk([(0, (0, 2, 0), 0xEE, 2, 100)]), "mbr"),
        ("gpt-bad-start-chs", "raw", gpt_disk([(0, (0, 1, 0), 0xEE, 1, 100)]), "mbr"),
        ("mbr-no-partitions", "raw", gpt_disk([]), "mbr"),
        ("luks-v2", "raw", luks_header(version=2) + bytes(64 * KiB), "version"),
        ("qcow2-claimed-vmdk", "vmdk", qcow2_image(), "format_match"),
        ("raw-claimed-qcow2", "qcow2", bytes(range(256)) * 256, "format_match"),
        ("iso-claimed-vhd", "vhd", iso_image(), "format_match"),
        ("qcow2-and-iso", "qcow2", qcow2_image()[:32 * KiB] + iso_image()[32 * KiB:], "format_match"),
        ("vhdx-no-region-table", "vhdx", vhdx_image(region_sig=b"nope"), "format_match"),
        ("vhdx-metadata-backwards", "vhdx", vhdx_image(meta_offset=4096), "format_match"),
    ]


def truncated_samples() -> list[tuple[str, str, bytes]]:
    """Each format's header cut short: (name, declared format, data)."""
    samples = {
        "qcow2": qcow2_header(), "vmdk": vmdk_sparse(vmdk_descriptor())[:2048], "vhd": vhd_footer(),
        "vhdx": vhdx_image(), "vdi": vdi_header(), "qed": qed_header(), "luks": luks_header(),
        "iso": iso_image(), "gpt": gpt_disk(),
    }
    cuts = {"qcow2": [8, 100, 511], "vmdk": [4, 63, 511, 700], "vhd": [8, 100, 511], "vhdx": [8, 4096, 200 * KiB],
            "vdi": [0x44, 0x100], "qed": [4, 100], "luks": [6, 300], "iso": [100, 32 * KiB + 3], "gpt": [400]}
    out = []
    for fmt, data in samples.items():
        for cut in cuts[fmt]:
            out.append((f"{fmt}-cut-{cut}", fmt, data[:cut]))
    return out


def seed_inputs() -> dict[str, bytes]:
    """Small valid-looking headers of every format (fuzz seeds)."""
    seeds = {
        "qcow2-v3": qcow2_image(size=64 * MiB)[:64 * KiB], "qcow2-v2": qcow2_image(version=2)[:64 * KiB],
        "qcow2-zstd": qcow2_image(incompatible=1 << 3, compression_type=1)[:64 * KiB],
        "vmdk-sparse": vmdk_sparse(vmdk_descriptor())[:8 * KiB],
        "vmdk-stream": vmdk_sparse(vmdk_descriptor("streamOptimized"), version=3, gd_offset=0xFFFFFFFFFFFFFFFF,
                                   footer=vmdk_stream_footer()),
        "vmdk-text": vmdk_descriptor().encode(),
        "vhd": vhd_footer() + bytes(1024), "vhdx": vhdx_image(meta_offset=256 * KiB), "vdi": vdi_header(),
        "qed": qed_header(), "luks": luks_header(), "iso": iso_image(20), "iso-gpt": iso_image(20, with_mbr=True),
        "gpt": gpt_disk(),
    }
    for name, _fmt, data, _check in hostile_samples():
        seeds[f"hostile-{name}"] = data[:64 * KiB]
    return seeds


def write_seeds(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seed_inputs().items():
        (directory / name).write_bytes(data)
    return directory


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=120)
