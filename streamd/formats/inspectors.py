"""One inspector per disk format: raw, qcow2, qed, vhd, vhdx, vmdk, vdi, iso, gpt, luks.

Behaviour and check names follow oslo.utils' ``imageutils.format_inspector`` (what
Glance uses), written anew for a chunk-fed stream. Where streamd is stricter it says
so in a comment. Layout references: QEMU's docs/interop/qcow2.txt and block/*.c,
Microsoft's VHD/VHDX specifications, VMware's VMDK technical note, ECMA-119, UEFI 2.10
section 5, and the LUKS on-disk format.
"""

from __future__ import annotations

import struct
from typing import Iterator

from ..kernels import qcow2 as qcow2_kernel
from .base import Inspector, Malformed, Violation

KiB = 1024
MiB = 1024 * KiB


class RawInspector(Inspector):
    """Anything: the verdict when no other format matches."""

    NAME = "raw"

    def _setup(self) -> None:
        self.matched = True

    @property
    def virtual_size(self) -> int | None:
        return self.total if self.finished else None


# -- qcow2 ----------------------------------------------------------------------------

QCOW2_MIN_CLUSTER_BITS = 9
QCOW2_MAX_CLUSTER_BITS = 21           # 2 MiB, QEMU's limit
QCOW2_MAX_L1_BYTES = 32 * MiB         # QEMU's QCOW_MAX_L1_SIZE
QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_COMPRESSION = 1 << 3
# Bits oslo knows (0-3). Bit 4 (extended L2 entries, subclusters) counts as unknown
# there, and streamd's converter does not read subclusters either.
QCOW2_INCOMPAT_KNOWN = 0b1111
QCOW2_COMPRESSION_ZLIB = 0
QCOW2_COMPRESSION_ZSTD = 1


class Qcow2Header:
    """The decoded header, fields named as in qcow2.txt (see HEADER_FIELDS)."""

    __slots__ = qcow2_kernel.HEADER_FIELDS

    def __init__(self, values: tuple[int, ...]) -> None:
        for name, value in zip(qcow2_kernel.HEADER_FIELDS, values):
            setattr(self, name, value)

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    refcount_order: int
    header_length: int
    compression_type: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def qcow2_header_problem(h: Qcow2Header) -> str | None:
    """Why QEMU would refuse this header's geometry, or None (the ``header`` check)."""
    if not QCOW2_MIN_CLUSTER_BITS <= h.cluster_bits <= QCOW2_MAX_CLUSTER_BITS:
        return f"cluster_bits {h.cluster_bits} outside {QCOW2_MIN_CLUSTER_BITS}..{QCOW2_MAX_CLUSTER_BITS}"
    if h.size >= 1 << 63:
        return f"virtual size {h.size} too large"
    if h.version >= 3:
        if h.header_length < 104 or h.header_length % 8:
            return f"header_length {h.header_length} invalid"
        if h.refcount_order > 6:
            return f"refcount_order {h.refcount_order} invalid"
    if h.header_length > h.cluster_size:
        return f"header_length {h.header_length} larger than a cluster"
    if h.compression_type not in (QCOW2_COMPRESSION_ZLIB, QCOW2_COMPRESSION_ZSTD):
        return f"unknown compression type {h.compression_type}"
    if bool(h.incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != (h.compression_type != 0):
        return "compression type and its feature bit disagree"
    return None


def qcow2_l1_problem(h: Qcow2Header) -> str | None:
    """Why the active L1 table is unsafe to follow, or None (the ``l1_table`` check).

    QEMU refuses the same images on open; refusing them here keeps a hostile table
    (huge, or on top of the header) from reaching any converter."""
    cluster_size = h.cluster_size
    l2_entries = cluster_size // 8
    needed = -(-h.size // (cluster_size * l2_entries))
    if h.l1_size * 8 > QCOW2_MAX_L1_BYTES:
        return f"L1 table of {h.l1_size} entries is larger than {QCOW2_MAX_L1_BYTES} bytes"
    if h.l1_size < needed:
        return f"L1 table of {h.l1_size} entries is too small for {h.size} bytes (needs {needed})"
    if h.l1_size and h.l1_table_offset % cluster_size:
        return f"L1 table offset {h.l1_table_offset:#x} is not cluster-aligned"
    if h.l1_size and h.l1_table_offset < cluster_size:
        return f"L1 table at {h.l1_table_offset:#x} overlaps the header"
    if h.l1_table_offset + h.l1_size * 8 > 1 << 56:
        return "L1 table lies beyond the largest possible file"
    return None


class Qcow2Inspector(Inspector):
    """QEMU copy-on-write v2/v3. Needs the first 512 bytes."""

    NAME = "qcow2"
    CHECKS = (("backing_file", "check_backing_file"), ("data_file", "check_data_file"),
              ("unknown_features", "check_unknown_features"), ("header", "check_header"),
              ("l1_table", "check_l1_table"))
    HEADER_BYTES = 512

    def _setup(self) -> None:
        self.header: Qcow2Header | None = None
        self.add_region("header", 0, self.HEADER_BYTES)

    def _progress(self) -> None:
        data = self.region("header").data
        if self.matched is None and len(data) >= 4:
            if bytes(data[:4]) != qcow2_kernel.MAGIC:
                self.matched = False
                return
            self.signature_seen = True
        if self.has("header") and self.header is None:
            try:
                self.header = Qcow2Header(qcow2_kernel.parse_header(data))
            except ValueError as exc:  # unreachable with 512 bytes, kept for safety
                raise Malformed(str(exc)) from None
            self.matched = True
            self._virtual_size = self.header.size

    def _h(self) -> Qcow2Header:
        assert self.header is not None
        return self.header

    def check_backing_file(self) -> None:
        if self._h().backing_file_offset != 0:
            raise Violation("the image has a backing file")

    def check_data_file(self) -> None:
        h = self._h()
        if h.version >= 3 and h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE:
            raise Violation("the image has an external data file")

    def check_unknown_features(self) -> None:
        h = self._h()
        if h.version not in (2, 3):
            raise Violation(f"unsupported qcow2 version {h.version}")
        unknown = h.incompatible_features & ~QCOW2_INCOMPAT_KNOWN
        if unknown:
            raise Violation(f"unknown incompatible feature bits {unknown:#x}")

    # streamd is stricter than oslo: the next two refuse headers QEMU itself would
    # refuse to open, so that no later stage has to trust them.
    def check_header(self) -> None:
        problem = qcow2_header_problem(self._h())
        if problem:
            raise Violation(problem)

    def check_l1_table(self) -> None:
        h = self._h()
        if qcow2_header_problem(h) is None:
            problem = qcow2_l1_problem(h)
            if problem:
                raise Violation(problem)


# -- qed --------------------------------------------------------------------------------

class QedInspector(Inspector):
    """QEMU enhanced disk: recognised so that it can be refused."""

    NAME = "qed"
    CHECKS = (("banned", "check_banned"),)

    def _setup(self) -> None:
        self.add_region("header", 0, 512)

    def _progress(self) -> None:
        data = self.region("header").data
        if self.matched is None and len(data) >= 4:
            if bytes(data[:4]) != b"QED\x00":
                self.matched = False
                return
            self.signature_seen = True
        if self.has("header"):
            self.matched = True
            self._virtual_size = struct.unpack_from("<Q", data, 48)[0]

    def check_banned(self) -> None:
        raise Violation("the qed format is not allowed")


# -- vhd ----------------------------------------------------------------------------------

class VhdInspector(Inspector):
    """Connectix/Microsoft VHD (QEMU's vpc) with its footer copy at the start.

    As in oslo, a fixed VHD (footer only at the end) is not recognised: it reads as raw."""

    NAME = "vhd"

    def _setup(self) -> None:
        self.add_region("footer", 0, 512)

    def _progress(self) -> None:
        data = self.region("footer").data
        if self.matched is None and len(data) >= 8:
            if bytes(data[:8]) != b"conectix":
                self.matched = False
                return
            self.signature_seen = True
        if self.has("footer"):
            self.matched = True
            # Current Size (offset 48) is the disk's size as QEMU and Hyper-V report it;
            # oslo reads Original Size (offset 40), which is the same for new disks.
            self._virtual_size = struct.unpack_from(">Q", data, 48)[0]


# -- vhdx ---------------------------------------------------------------------------------

def _guid(raw: bytes | bytearray) -> str:
    a, b, c, d = struct.unpack_from("<IHH8s", raw, 0)
    return f"{a:08X}-{b:04X}-{c:04X}-{d[:2].hex().upper()}-{d[2:].hex().upper()}"


class VhdxInspector(Inspector):
    """Microsoft VHDX: identifier, region table at 192 KiB, metadata table, Virtual Disk Size."""

    NAME = "vhdx"
    METADATA_REGION = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
    VIRTUAL_DISK_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
    REGION_TABLE = 192 * KiB
    TABLE_BYTES = 64 * KiB
    MAX_ENTRIES = 2047

    def _setup(self) -> None:
        self.add_region("ident", 0, 8)
        self.add_region("regions", self.REGION_TABLE, self.TABLE_BYTES)

    def _progress(self) -> None:
        if self.matched is None and self.has("ident"):
            if bytes(self.region("ident").data) != b"vhdxfile":
                self.matched = False
                return
            self.signature_seen = True
            self.matched = True
        if self.has("regions") and "metadata" not in self.regions:
            self._find_metadata()
        if self.has("metadata") and "vds" not in self.regions:
            self._find_vds()
        if self.has("vds") and self._virtual_size is None:
            self._virtual_size = struct.unpack_from("<Q", self.region("vds").data, 0)[0]

    def _find_metadata(self) -> None:
        table = self.region("regions").data
        signature, _checksum, count = struct.unpack_from("<4sII", table, 0)
        if signature != b"regi":
            raise Malformed("region table signature not found")
        if count > self.MAX_ENTRIES:
            raise Malformed(f"region table has {count} entries (limit {self.MAX_ENTRIES})")
        for i in range(count):
            entry = 16 + 32 * i
            if _guid(table[entry:entry + 16]) == self.METADATA_REGION:
                offset, length = struct.unpack_from("<QI", table, entry + 16)
                # The specification puts regions at 1 MiB multiples past the headers; a
                # region inside the first 256 KiB would point back at what we read.
                if offset < self.REGION_TABLE + self.TABLE_BYTES:
                    raise Malformed(f"metadata region at {offset:#x} overlaps the headers")
                self.add_region("metadata", offset, min(length, self.TABLE_BYTES) if length else self.TABLE_BYTES)
                return
        raise Malformed("no metadata region")

    def _find_vds(self) -> None:
        meta = self.region("metadata")
        data = meta.data
        if len(data) < 32:
            raise Malformed("metadata region too short")
        signature, _reserved, count = struct.unpack_from("<8sHH", data, 0)
        if signature != b"metadata":
            raise Malformed("metadata table signature not found")
        if count > self.MAX_ENTRIES or 32 + 32 * count > len(data):
            raise Malformed(f"metadata table has {count} entries")
        for i in range(count):
            entry = 32 + 32 * i
            if _guid(data[entry:entry + 16]) == self.VIRTUAL_DISK_SIZE:
                item_offset, item_length = struct.unpack_from("<II", data, entry + 16)
                # Items live after the 64 KiB table (the specification's minimum offset).
                if item_offset < len(data) or item_length < 8:
                    raise Malformed(f"virtual disk size item at {item_offset:#x} of {item_length} bytes")
                self.add_region("vds", meta.offset + item_offset, 8)
                return
        raise Malformed("no virtual disk size in the metadata")


# -- vmdk ----------------------------------------------------------------------------------

VMDK_SUBFORMATS = ("monolithicsparse", "streamoptimized")


def _lines(text: str) -> Iterator[str]:
    """The lines of text one at a time: a 1 MiB descriptor must not become a million-item list."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


class VmdkInspector(Inspector):
    """VMware VMDK: a sparse extent with an embedded descriptor, or a bare text descriptor.

    Only monolithicSparse and streamOptimized are allowed; every descriptor line must be
    understood and no extent may name a path (oslo's ``descriptor`` check). A header that
    says its grain directory is at the end needs the footer, checked at the end of the
    stream (oslo's ``footer`` check)."""

    NAME = "vmdk"
    CHECKS = (("descriptor", "check_descriptor"), ("footer", "check_footer"))
    DESC_OFFSET = 512
    DESC_MAX = MiB - 1
    GD_AT_END = 0xFFFFFFFFFFFFFFFF
    FOOTER_BYTES = 1536
    MARKER_EOS = 0
    MARKER_FOOTER = 3

    def _setup(self) -> None:
        self.add_region("header", 0, 512)
        self.text = False
        self.desc_text: str | None = None
        self.subformat: str | None = None
        self.sparse: tuple[int, ...] | None = None
        self.needs_footer = False
        self.tail = b""

    def _progress(self) -> None:
        header = self.region("header").data
        if self.matched is None and not self.text:
            if len(header) < 4:
                return
            if bytes(header[:4]) == b"KDMV":
                self.signature_seen = True
                self.matched = True
            elif not self._looks_like_text(header):
                self.matched = False
                return
            elif self.has("header"):
                # All printable: maybe a descriptor-only VMDK. Read it up to its first
                # NUL, or 1 MiB.
                self.text = True
                self.add_region("descriptor", 0, self.DESC_MAX)
            else:
                return
        if self.matched and self.sparse is None and len(header) >= 64:
            self._parse_sparse(header)
        if "descriptor" in self.regions:
            desc = self.region("descriptor")
            nul = desc.data.find(0)
            if nul >= 0:
                del desc.data[nul:]
                desc.length = nul
            if desc.complete and self.desc_text is None:
                self._parse_descriptor(desc.data)
                desc.data, desc.length = bytearray(), 0   # the text is kept; the bytes are not

    def _at_eof(self) -> None:
        if self.matched is None and not self.text:
            header = self.region("header").data
            if len(header) >= 4 and self._looks_like_text(header):
                self.text = True
                self.region("header").length = len(header)  # a short file: all of it was seen
                desc = self.add_region("descriptor", 0, 0)
                desc.data = bytearray(header.split(b"\x00", 1)[0])
                desc.length = len(desc.data)
        if self.text and self.desc_text is None:
            desc = self.region("descriptor")
            self._parse_descriptor(desc.data)
            desc.data, desc.length = bytearray(), 0

    @staticmethod
    def _looks_like_text(data: bytes | bytearray) -> bool:
        try:
            text = bytes(data).decode("ascii")
        except UnicodeDecodeError:
            return False
        return all(ch.isprintable() or ch.isspace() for ch in text.split("\x00", 1)[0])

    def _parse_sparse(self, header: bytearray) -> None:
        (_sig, version, _flags, capacity, _grain, desc_sec, desc_num, _gtes, _rgd,
         gd_offset) = struct.unpack_from("<4sIIQQQQIQQ", header, 0)
        self.sparse = (version, capacity, desc_sec, desc_num, gd_offset)
        if version not in (1, 2, 3):
            raise Malformed(f"unsupported VMDK version {version}")
        if desc_sec * 512 != self.DESC_OFFSET:
            raise Malformed(f"descriptor at sector {desc_sec}, not 1")
        if desc_num == 0:
            raise Malformed("no embedded descriptor")
        self.add_region("descriptor", self.DESC_OFFSET, min(desc_num * 512, self.DESC_MAX))
        if gd_offset == self.GD_AT_END:
            self.needs_footer = True

    def _parse_descriptor(self, raw: bytes | bytearray) -> None:
        try:
            text = raw.decode("ascii").lower()
        except UnicodeDecodeError:
            raise Malformed("descriptor is not ASCII text") from None
        self.desc_text = text
        start = text.find('createtype="')
        subformat = None
        if start >= 0:
            start += len('createtype="')
            end = text.find('"', start)
            if 0 <= end - start < 64:
                subformat = text[start:end]
        self.subformat = subformat
        if self.text:
            # A bare descriptor is only a VMDK if it says what kind it is.
            self.matched = subformat is not None
            if self.matched:
                self.signature_seen = True
        if self.matched and subformat in VMDK_SUBFORMATS:
            if self.sparse is not None:
                self._virtual_size = self.sparse[1] * 512
            else:
                # streamd reads a bare descriptor's size from its extents (oslo reads none).
                sectors = 0
                for line in _lines(text):
                    parts = line.split()
                    if len(parts) >= 2 and parts[0] in ("rw", "rdonly", "noaccess") and parts[1].isdigit():
                        sectors += int(parts[1])
                self._virtual_size = sectors * 512

    @property
    def _waiting_for_eof(self) -> bool:
        return self.needs_footer and not self.finished

    def feed(self, chunk: memoryview, start: int) -> None:
        super().feed(chunk, start)
        if self.needs_footer:
            self.tail = (self.tail + bytes(chunk[-self.FOOTER_BYTES:]))[-self.FOOTER_BYTES:]

    def check_descriptor(self) -> None:
        if not self.desc_text:
            raise Violation("no descriptor found")
        if self.subformat not in VMDK_SUBFORMATS:
            raise Violation(f"unsupported subformat {self.subformat or 'none'!r}")
        extents = 0
        unsafe = False
        for line in (raw.strip() for raw in _lines(self.desc_text)):
            if not line or line.startswith("#") or line.startswith("ddb"):
                continue
            if "=" in line and " " not in line.split("=", 1)[0]:
                continue
            if line.split(" ", 1)[0] in ("rw", "rdonly", "noaccess"):
                extents += 1
                unsafe = unsafe or "/" in line
                continue
            raise Violation(f"invalid descriptor line {line[:40]!r}")
        if not extents:
            raise Violation("no extents found")
        if unsafe:
            raise Violation("extent line names a path")

    def check_footer(self) -> None:
        if not self.needs_footer:
            return
        tail = self.tail
        if len(tail) < self.FOOTER_BYTES or self.sparse is None:
            raise Violation("footer missing")
        f_sig, f_ver, _flags, _cap, _grain, f_desc_sec, f_desc_num, _gtes, _rgd, f_gd = struct.unpack_from(
            "<4sIIQQQQIQQ", tail, 512)
        h_ver, _cap, h_desc_sec, h_desc_num, _gd = self.sparse
        if f_sig != b"KDMV":
            raise Violation("header and footer signature do not match")
        if f_ver != h_ver:
            raise Violation("header and footer versions do not match")
        if (f_desc_sec, f_desc_num) != (h_desc_sec, h_desc_num):
            raise Violation("footer specifies a different descriptor than header")
        if f_gd == self.GD_AT_END:
            raise Violation("footer indicates another footer")
        pad = bytes(496)
        _val, size, kind, rest = struct.unpack_from("<QII496s", tail, 0)
        if size != 0 or kind != self.MARKER_FOOTER or rest != pad:
            raise Violation("footer marker is invalid")
        val, size, kind, rest = struct.unpack_from("<QII496s", tail, 1024)
        if val != 0 or size != 0 or kind != self.MARKER_EOS or rest != pad:
            raise Violation("end-of-stream marker is invalid")


# -- vdi -----------------------------------------------------------------------------------

class VdiInspector(Inspector):
    """VirtualBox VDI: signature at 0x40, disk size at 0x170."""

    NAME = "vdi"

    def _setup(self) -> None:
        self.add_region("header", 0, 512)

    def _progress(self) -> None:
        data = self.region("header").data
        if self.matched is None and len(data) >= 0x44:
            if struct.unpack_from("<I", data, 0x40)[0] != 0xBEDA107F:
                self.matched = False
                return
            self.signature_seen = True
        if self.has("header"):
            self.matched = True
            self._virtual_size = struct.unpack_from("<Q", data, 0x170)[0]


# -- iso ------------------------------------------------------------------------------------

class IsoInspector(Inspector):
    """ISO 9660 / UDF: a volume descriptor at 32 KiB."""

    NAME = "iso"

    def _setup(self) -> None:
        self.add_region("descriptor", 32 * KiB, 2 * KiB)

    def _progress(self) -> None:
        if not self.has("descriptor") or self.matched is not None:
            return
        data = self.region("descriptor").data
        if bytes(data[1:6]) not in (b"CD001", b"NSR02", b"NSR03"):
            self.matched = False
            return
        self.signature_seen = True
        self.matched = True
        if data[0] == 1:  # the primary volume descriptor: blocks x block size
            blocks = struct.unpack_from("<I", data, 80)[0]
            block_size = struct.unpack_from("<H", data, 128)[0]
            self._virtual_size = blocks * block_size


# -- gpt / mbr ------------------------------------------------------------------------------

class GptInspector(Inspector):
    """A partition table: an MBR signature (protective for GPT), not a FAT boot sector."""

    NAME = "gpt"
    CHECKS = (("mbr", "check_mbr"),)

    def _setup(self) -> None:
        self.add_region("mbr", 0, 512)

    def _progress(self) -> None:
        if not self.has("mbr") or self.matched is not None:
            return
        data = self.region("mbr").data
        is_fat = data[0x10] == 2 and data[0x15] == 0xF8
        self.matched = struct.unpack_from("<H", data, 510)[0] == 0xAA55 and not is_fat
        self.signature_seen = bool(self.matched)

    @property
    def virtual_size(self) -> int | None:
        return self.total if self.finished else None

    def check_mbr(self) -> None:
        data = self.region("mbr").data
        used = []
        protective = False
        for i in range(4):
            (boot, head, sector, cylinder, ostype, _eh, _es, _ec, start_lba,
             _size) = struct.unpack_from("<BBBBBBBBII", data, 446 + 16 * i)
            if boot not in (0x00, 0x80):
                raise Violation(f"MBR partition {i} has an invalid boot flag")
            if ostype:
                used.append(i)
            if ostype == 0xEE:
                protective = True
                if (head, sector, cylinder) != (0, 2, 0):
                    raise Violation("protective MBR partition has an invalid start CHS")
                if start_lba != 1:
                    raise Violation("protective MBR partition does not start at LBA 1")
        if protective and used != [0]:
            raise Violation("protective MBR defines other partitions")
        if not used:
            raise Violation("MBR has no partitions defined")


# -- luks -------------------------------------------------------------------------------------

class LuksInspector(Inspector):
    """LUKS encrypted container: only version 1 is allowed (as in oslo and QEMU)."""

    NAME = "luks"
    CHECKS = (("version", "check_version"),)

    def _setup(self) -> None:
        self.add_region("header", 0, 592)

    def _progress(self) -> None:
        data = self.region("header").data
        if self.matched is None and len(data) >= 6:
            if bytes(data[:6]) != b"LUKS\xba\xbe":
                self.matched = False
                return
            self.signature_seen = True
        if self.has("header"):
            self.matched = True

    @property
    def virtual_size(self) -> int | None:
        if not self.finished or not self.has("header"):
            return None
        payload = struct.unpack_from(">I", self.region("header").data, 104)[0] * 512
        return max(0, self.total - payload)

    def check_version(self) -> None:
        version = struct.unpack_from(">H", self.region("header").data, 6)[0]
        if version != 1:
            raise Violation(f"LUKS version {version} is not supported")


ALL_INSPECTORS: dict[str, type[Inspector]] = {
    cls.NAME: cls for cls in (RawInspector, Qcow2Inspector, VhdInspector, VhdxInspector, VmdkInspector,
                              VdiInspector, QedInspector, IsoInspector, GptInspector, LuksInspector)
}
ALL_FORMATS = tuple(ALL_INSPECTORS)
