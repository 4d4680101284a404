"""The import plugins: Glance's ``[image_import_opts] image_import_plugins``.

An import (glance-direct, web-download) first lands the image data in a staged file
on local disk. Before that file is written to the stores, the plugins named in the
configuration run on it, in the order given:

- ``image_decompression``: a gzip or single-member zip archive becomes its content;
- ``image_conversion``: the disk image is checked and converted to
  ``[image_conversion] output_format``;
- ``inject_image_metadata``: the configured properties are set on the image;
- ``no_op``: only logs.

They never run for copy-image (the caller sees to that). Each plugin may replace the
staged file and asks for image attributes and properties to be set; the caller
applies them and re-hashes and re-measures the data it writes, so nothing here
computes checksums or sizes for the catalogue.

Glance's contract (glance/async_/flows/plugins/*.py) with these differences:
- decompression refuses zip members that are not stored or deflated (bzip2 and lzma
  members cannot be decompressed with a bounded output per read) and bounds its output
  by ``image_size_cap``; Glance decompresses without a limit;
- conversion checks the data with streamd's own inspector and converts qcow2 -> raw
  with streamd's native converter; everything else runs ``qemu-img convert`` as
  Glance does. ``vhd`` is handed to qemu-img under its driver name ``vpc`` (Glance
  passes ``vhd``, which qemu-img does not know, so vhd imports fail there);
- the converted output is inspected and must be the target format (Glance only logs
  what it found); a raw output image must pass the safety checks of whatever its
  content looks like, as a raw upload would;
- a raw output whose virtual size exceeds ``image_size_cap`` is refused (413) before
  any byte is written, instead of by the store after the conversion.

Blocking work runs off the event loop (threads or subprocesses), in chunks of a few
MiB, so memory stays bounded whatever the image size.

Files: decompression writes ``<staged>.uc`` and renames it over the staged file (as
Glance); conversion writes ``<staged>.<output_format>`` and deletes the staged file.
Whoever cleans the staging directory should treat ``<name>.*`` as part of ``<name>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Awaitable, Callable, Collection, Iterator, Sequence, TypeVar

from ..config import IMPORT_PLUGINS, Config, unknown_import_plugins
from ..errors import InvalidRequest, ConfigError, ImageSizeLimitExceeded, InvalidImageData, BackendFailure
from ..formats import FileDetection, FormatRejected, detect_file
from ..formats.convert import convert_qcow2_to_raw
from ..formats.inspectors import VMDK_SUBFORMATS
from ..kernels.sparse import pwrite_sparse
from ..sizes import CHUNK

log = logging.getLogger(__name__)

T = TypeVar("T")

ZERO_BLOCK = 64 << 10        # granularity at which zero runs become holes in outputs
GLANCE_RESERVED_NS = "os_glance"

# Archive signatures Glance sniffs: (offset, magic).
GZIP_MAGIC = (0, b"\x1f\x8b\x08")
ZIP_MAGIC = (0, b"PK\x03\x04")
LHA_MAGIC = (2, b"-lh")

# qemu-img's driver name where it differs from Glance's disk_format.
QEMU_DRIVER = {"vhd": "vpc"}
# Glance's QEMU_IMG_PROC_LIMITS for ``qemu-img info`` on untrusted data.
QEMU_INFO_CPU_SECONDS = 2
QEMU_INFO_ADDRESS_SPACE = 1 << 30
QEMU_INFO_TIMEOUT = 60.0     # wall clock: the CPU limit does not catch a process stuck in I/O
STDERR_EXCERPT = 2000

# Run argv[3:] with the CPU and address-space limits in argv[1:3]. A separate interpreter
# sets them, as oslo.concurrency's prlimit does: preexec_fn is unsafe in a threaded process.
_LIMITED_EXEC = (
    "import os, resource, sys\n"
    "cpu, address_space = int(sys.argv[1]), int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))\n"
    "resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


@dataclass(frozen=True)
class StagedImage:
    """A staged image file and the formats the image declares."""

    path: Path
    disk_format: str | None
    container_format: str | None


@dataclass
class PluginOutcome:
    """What the plugins did: the file to store and what to change on the image.

    ``staged`` may name a new file; the plugin that made it deleted the one before.
    ``attributes`` holds image attributes to set (``disk_format``,
    ``container_format``, ``virtual_size``); ``properties`` extra properties to set.
    """

    staged: StagedImage
    attributes: dict[str, object] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Run:
    """What every plugin may consult."""

    config: Config
    roles: frozenset[str]
    size_cap: int


class _Stopped(Exception):
    """A worker thread saw the stop event: its coroutine was cancelled."""


async def run_import_plugins(names: Sequence[str], staged: StagedImage, *, roles: Collection[str],
                             config: Config, size_cap: int | None = None) -> PluginOutcome:
    """Run the named plugins in order on the staged image and return the combined outcome.

    ``roles`` are the importing caller's (inject_image_metadata skips callers with an
    ignored role). ``size_cap`` bounds decompressed and raw-converted output
    (default ``[DEFAULT] image_size_cap``). Later plugins see the file and formats
    earlier ones produced; attributes and properties accumulate, later ones winning.

    Raises ``InvalidImageData``/``FormatRejected`` (415) for refused data,
    ``InvalidRequest`` for a broken archive, ``ImageSizeLimitExceeded`` (413) past the
    cap, ``BackendFailure`` when qemu-img cannot run. On failure, files the plugins
    made are removed; the original staged file is left (or was already replaced and
    deleted) for the caller to clean up.
    """
    unknown = unknown_import_plugins(names)
    if unknown:
        raise ConfigError(unknown)
    run = _Run(config=config, roles=frozenset(roles),
               size_cap=config.default.image_size_cap if size_cap is None else size_cap)
    outcome = PluginOutcome(staged=staged)
    done = False
    try:
        for name in names:
            step = await _PLUGINS[name](outcome.staged, run)
            outcome.staged = step.staged
            outcome.attributes.update(step.attributes)
            outcome.properties.update(step.properties)
        done = True
    finally:
        # A file an earlier plugin made is unknown to the caller: remove it if a later
        # plugin failed (or the import was cancelled).
        if not done and outcome.staged.path != staged.path:
            _remove(outcome.staged.path)
    return outcome


# -- image_decompression ----------------------------------------------------------------

async def _image_decompression(staged: StagedImage, run: _Run) -> PluginOutcome:
    """Replace a gzip or single-member zip archive with its content, in place.

    As in Glance, the archive type comes from the data's signature, and images whose
    container_format is ``compressed`` are kept as they are: their owner declared the
    archive itself to be the image. Formats are not changed (Glance changes none).
    """
    if staged.container_format == "compressed":
        log.info("image_decompression: %s has container_format compressed, kept as is", staged.path)
        return PluginOutcome(staged=staged)
    kind = await asyncio.to_thread(_sniff_archive, staged.path)
    if kind is None:
        log.debug("image_decompression: %s is not an archive", staged.path)
        return PluginOutcome(staged=staged)
    if kind == "lha":
        raise InvalidImageData("the image is an LHA archive, which this server cannot decompress")
    extract = _gunzip if kind == "gzip" else _unzip
    output = staged.path.with_name(staged.path.name + ".uc")
    size = await _off_loop(lambda stop: extract(staged.path, output, run.size_cap, stop), leftover=output)
    os.replace(output, staged.path)
    log.info("image_decompression: %s was a %s archive, now %d bytes", staged.path, kind, size)
    return PluginOutcome(staged=staged)


def _sniff_archive(path: Path) -> str | None:
    with path.open("rb") as handle:
        head = handle.read(8)
    for kind, (offset, magic) in (("gzip", GZIP_MAGIC), ("zip", ZIP_MAGIC), ("lha", LHA_MAGIC)):
        if head.startswith(magic, offset):
            return kind
    return None


class _SparseOutput:
    """A new file written front to back, zero blocks left as holes, bounded by a cap.

    Removed again if the ``with`` block fails."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.size = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def write(self, data: bytes) -> None:
        end = self.size + len(data)
        if end > self.cap:
            raise ImageSizeLimitExceeded(f"the decompressed image exceeds the size limit of {self.cap} bytes")
        pwrite_sparse(self.fd, data, self.size, ZERO_BLOCK)
        self.size = end

    def __enter__(self) -> _SparseOutput:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                os.ftruncate(self.fd, self.size)   # trailing zeros were skipped: give them back
        finally:
            os.close(self.fd)
            if exc_type is not None:
                _remove(self.path)


def _gunzip(src: Path, dst: Path, cap: int, stop: threading.Event) -> int:
    """Decompress every member of a gzip file (as gzip(1) does); returns the output size."""
    with src.open("rb") as source, _SparseOutput(dst, cap) as out:
        inflater = zlib.decompressobj(wbits=31)   # 31: gzip header and trailer (CRC, length) checked
        try:
            while chunk := source.read(CHUNK):
                data = chunk
                while data:
                    if stop.is_set():
                        raise _Stopped()
                    if inflater.eof:
                        # What follows a member: zero padding, or the next member.
                        data = data.lstrip(b"\0")
                        if not data:
                            break
                        inflater = zlib.decompressobj(wbits=31)
                    # Bounded output per call: a few KiB of input may inflate to GiB.
                    out.write(inflater.decompress(data, CHUNK))
                    data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            while not inflater.eof:
                # All input is in; flush what zlib still holds, still bounded per call.
                rest = inflater.decompress(b"", CHUNK)
                if not rest:
                    break
                out.write(rest)
        except zlib.error as exc:
            raise InvalidRequest(f"the gzip archive is corrupt: {exc}") from None
        if not inflater.eof:
            raise InvalidRequest("the gzip archive is truncated")
        return out.size


def _unzip(src: Path, dst: Path, cap: int, stop: threading.Event) -> int:
    """Extract the one member of a zip archive; returns the output size."""
    with _zip_errors():
        archive = zipfile.ZipFile(src)
    with archive:
        members = archive.infolist()
        if len(members) != 1:
            raise InvalidRequest(f"the zip archive holds {len(members)} entries; an image archive must hold exactly one")
        member = members[0]
        if member.is_dir():
            raise InvalidRequest("the zip archive holds only a directory")
        if member.flag_bits & 0x1:
            raise InvalidRequest("the zip archive is encrypted")
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile inflates bzip2 and lzma members without an output bound per read.
            raise InvalidRequest(f"the zip member uses compression method {member.compress_type}; "
                             "only stored and deflated members are supported")
        if member.file_size > cap:
            raise ImageSizeLimitExceeded(f"the zip member is {member.file_size} bytes, over the size limit "
                                         f"of {cap} bytes")
        with _zip_errors():
            reader = archive.open(member)
        with reader, _SparseOutput(dst, cap) as out:
            while True:
                if stop.is_set():
                    raise _Stopped()
                with _zip_errors():
                    data = reader.read(CHUNK)    # deflate output is bounded by the size asked for
                if not data:
                    break
                out.write(data)
            return out.size


@contextlib.contextmanager
def _zip_errors() -> Iterator[None]:
    """What zipfile raises on a damaged archive, as InvalidRequest (only around zipfile's own calls,
    so that a failing write to the output stays what it is)."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise InvalidRequest(f"the zip archive is corrupt: {str(exc) or type(exc).__name__}") from None
    except OSError as exc:
        if exc.errno != errno.EINVAL:   # a damaged directory makes zipfile seek before the start
            raise
        raise InvalidRequest(f"the zip archive is corrupt: {exc}") from None


# -- image_conversion --------------------------------------------------------------------

async def _image_conversion(staged: StagedImage, run: _Run) -> PluginOutcome:
    """Check the staged disk image and convert it to ``[image_conversion] output_format``.

    Glance's steps: the detected format must be the declared one (gpt counts as raw)
    and pass its safety checks; an ISO declared iso is kept as is, any other ISO is
    refused; qcow2 with a backing file or an external data file is refused; an image
    already in the target format is kept. Otherwise the converted file
    (``<staged>.<format>``) replaces the staged one, which is deleted, and the image
    becomes ``disk_format=<target>``, ``container_format=bare``.
    """
    target = run.config.image_conversion.output_format
    declared = staged.disk_format
    if declared is None:
        raise InvalidImageData("the image has no disk_format to convert from")
    detection = await asyncio.to_thread(detect_file, str(staged.path))
    _safety_check(detection, run)
    detected = "raw" if detection.format == "gpt" else detection.format
    if detected == "iso":
        if declared == "iso":
            log.info("image_conversion: %s is an ISO image, kept as is", staged.path)
            return PluginOutcome(staged=staged)
        raise FormatRejected("format_match", f"disk_format is {declared} but the data is an ISO image",
                             format=declared)
    if detected != declared:
        raise FormatRejected("format_match", f"disk_format is {declared} but the data is {detected}",
                             format=declared)

    output = staged.path.with_name(f"{staged.path.name}.{target}")
    if declared == "qcow2" and target == "raw":
        virtual_size = detection.virtual_size or 0
        _check_raw_size(virtual_size, run)
        result = await _off_loop(
            lambda stop: convert_qcow2_to_raw(staged.path, output, max_virtual_size=run.size_cap), leftover=output)
        virtual_size = result.virtual_size
    else:
        virtual_size = await _qemu_img_info(staged.path, declared)
        if declared == target:
            log.info("image_conversion: %s is already %s", staged.path, target)
            return PluginOutcome(staged=staged, attributes={"virtual_size": virtual_size})
        if target == "raw":
            _check_raw_size(virtual_size, run)
        await _qemu_img_convert(staged.path, declared, output, target)

    kept = False
    try:
        await _check_output(output, target, run)
        kept = True
    finally:
        if not kept:
            _remove(output)
    staged.path.unlink()
    log.info("image_conversion: %s converted from %s to %s (%s), virtual size %d",
             staged.path, declared, target, output.name, virtual_size)
    return PluginOutcome(
        staged=replace(staged, path=output, disk_format=target, container_format="bare"),
        attributes={"disk_format": target, "container_format": "bare", "virtual_size": virtual_size})


def _safety_check(detection: FileDetection, run: _Run) -> None:
    """Refuse failed safety checks, except the gpt ones the operator made non-fatal (as Glance)."""
    failures = dict(detection.failures)
    if detection.format == "gpt":
        nonfatal = set(run.config.image_format.gpt_safety_checks_nonfatal)
        for name in sorted(set(failures) & nonfatal):
            log.warning("image_conversion: non-fatal gpt check %s failed: %s", name, failures.pop(name))
    if failures:
        names = sorted(failures)
        raise FormatRejected(",".join(names), "; ".join(f"{n}: {failures[n]}" for n in names),
                             format=detection.format)


def _check_raw_size(virtual_size: int, run: _Run) -> None:
    # A raw image is as large as its disk: refuse before writing what the stores would refuse.
    if virtual_size > run.size_cap:
        raise ImageSizeLimitExceeded(f"the image's virtual size {virtual_size} exceeds the size limit "
                                     f"of {run.size_cap} bytes")


async def _check_output(output: Path, target: str, run: _Run) -> None:
    detection = await asyncio.to_thread(detect_file, str(output))
    detected = "raw" if detection.format == "gpt" else detection.format
    # A raw disk may hold anything (its guest wrote it), but what it looks like must
    # still be safe to hand on, as for an upload declared raw.
    if target != "raw" and detected != target:
        raise InvalidImageData(f"the converted image was expected to be {target} but is {detected}")
    _safety_check(detection, run)
    size = output.stat().st_size
    if size > run.size_cap:
        raise ImageSizeLimitExceeded(f"the converted image is {size} bytes, over the size limit of {run.size_cap}")


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise BackendFailure("image_conversion needs qemu-img, which is not installed (Debian package qemu-utils)")
    return path


async def _qemu_img_info(path: Path, disk_format: str) -> int:
    """Glance's second opinion: qemu-img's view of the file, under resource limits.

    Returns the virtual size; refuses what qemu-img sees differently from the inspector."""
    driver = QEMU_DRIVER.get(disk_format, disk_format)
    argv = [sys.executable, "-I", "-S", "-c", _LIMITED_EXEC, str(QEMU_INFO_CPU_SECONDS),
            str(QEMU_INFO_ADDRESS_SPACE), _qemu_img(), "info", "-f", driver, "--output=json", str(path)]
    process = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), QEMU_INFO_TIMEOUT)
    except TimeoutError:
        raise InvalidImageData(f"qemu-img info did not finish within {QEMU_INFO_TIMEOUT:.0f} s") from None
    finally:
        await _reap(process)
    if process.returncode != 0:
        raise InvalidImageData(f"qemu-img could not read the {disk_format} image: {_excerpt(stderr)}")
    try:
        info = json.loads(stdout)
    except ValueError:
        raise InvalidImageData("qemu-img info gave unreadable output") from None
    if not isinstance(info, dict):
        raise InvalidImageData("qemu-img info gave unreadable output")
    if info.get("format") != driver:
        raise FormatRejected("format_match", f"qemu-img reads the {disk_format} image as {info.get('format')}",
                             format=disk_format)
    if "backing-filename" in info:
        raise FormatRejected("backing_file", "the image has a backing file", format=disk_format)
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    data = data if isinstance(data, dict) else {}
    if data.get("data-file") is not None:
        raise FormatRejected("data_file", "the image has an external data file", format=disk_format)
    if driver == "vmdk":
        create_type = str(data.get("create-type") or "")
        if create_type.lower() not in VMDK_SUBFORMATS:
            raise FormatRejected("descriptor", f"VMDK create-type {create_type or 'unknown'!r} is not allowed",
                                 format=disk_format)
    virtual_size = info.get("virtual-size")
    if not isinstance(virtual_size, int) or virtual_size < 0:
        raise InvalidImageData("qemu-img info reported no virtual size")
    return virtual_size


async def _qemu_img_convert(src: Path, src_format: str, dst: Path, dst_format: str) -> None:
    """``qemu-img convert`` as Glance runs it (raw output is written sparse by qemu-img)."""
    argv = [_qemu_img(), "convert", "-f", QEMU_DRIVER.get(src_format, src_format),
            "-O", QEMU_DRIVER.get(dst_format, dst_format), str(src), str(dst)]
    finished = False
    process = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE)
    try:
        _, stderr = await process.communicate()
        finished = process.returncode == 0
    finally:
        await _reap(process)
        if not finished:
            _remove(dst)
    if process.returncode != 0:
        raise InvalidImageData(f"qemu-img could not convert the {src_format} image to {dst_format}: "
                               f"{_excerpt(stderr)}")


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Kill the process if it still runs (timeout, cancellation) and wait for it."""
    if process.returncode is None:
        process.kill()
        await process.wait()


def _excerpt(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    return text[:STDERR_EXCERPT] or "no error output"


# -- inject_image_metadata and no_op ----------------------------------------------------------

async def _inject_image_metadata(staged: StagedImage, run: _Run) -> PluginOutcome:
    """The configured properties, unless the caller has a role in ``ignore_user_roles``.

    Keys in Glance's reserved ``os_glance`` namespace are dropped with a warning."""
    options = run.config.inject_metadata_properties
    ignored = run.roles & set(options.ignore_user_roles)
    if ignored:
        log.info("inject_image_metadata: nothing injected for %s, the caller has role(s) %s",
                 staged.path, ",".join(sorted(ignored)))
        return PluginOutcome(staged=staged)
    properties: dict[str, str] = {}
    for key, value in options.inject:
        if key.startswith(GLANCE_RESERVED_NS):
            log.warning("inject_image_metadata: dropping %s=%s for %s, the %s namespace is reserved",
                        key, value, staged.path, GLANCE_RESERVED_NS)
            continue
        properties[key] = value
    return PluginOutcome(staged=staged, properties=properties)


async def _no_op(staged: StagedImage, run: _Run) -> PluginOutcome:
    """Does nothing but say it ran (Glance's example plugin)."""
    log.info("no_op import plugin ran on %s", staged.path)
    return PluginOutcome(staged=staged)


# The plugin named X in config.IMPORT_PLUGINS (the one list of names) is the function _X above;
# one missing fails here, at import.
_PLUGINS: dict[str, Callable[[StagedImage, _Run], Awaitable[PluginOutcome]]] = {
    name: globals()[f"_{name}"] for name in IMPORT_PLUGINS}


# -- helpers -------------------------------------------------------------------------------------

async def _off_loop(work: Callable[[threading.Event], T], *, leftover: Path) -> T:
    """Run work(stop) in a thread; if cancelled, stop it, wait for it and remove its output.

    ``leftover`` is the file the work creates. Waiting matters: a thread left running
    would go on writing a file nobody will clean up."""
    stop = threading.Event()
    future = asyncio.ensure_future(asyncio.to_thread(work, stop))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()   # retrieved: it is _Stopped, or a failure nobody waits for any more
        _remove(leftover)
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


__all__ = ["PluginOutcome", "StagedImage", "run_import_plugins"]
