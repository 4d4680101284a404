"""The import plugins on real staged files, checked against real qemu-img.

Every converted image is compared byte for byte with what ``qemu-img convert``
makes of the same input; every refusal is checked to leave the staging directory
as the caller expects (source in place, no partial output).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from test_formats_convert import mixed_source, same_bytes

from streamd.status import status_of
from streamd.config import Config, load_config
from streamd.errors import InvalidRequest, ConfigError, ImageSizeLimitExceeded, InvalidImageData
from streamd.formats import FormatRejected
from streamd.imports import PluginOutcome, StagedImage, run_import_plugins

MiB = 1 << 20
VIRTUAL = 20 * MiB + 5 * 512     # not a whole number of clusters
MEMBER = ("member", "reader")


def run(*args: str) -> bytes:
    done = subprocess.run(list(args), capture_output=True, timeout=120)
    assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
    return done.stdout


def qemu_info(path: Path) -> dict[str, object]:
    info = json.loads(run("qemu-img", "info", "--output=json", str(path)))
    assert isinstance(info, dict)
    return info


def mixed_disk(path: Path, size: int = VIRTUAL, seed: int = 11) -> Path:
    """Random data, text, zeros written inside data, and holes (the converter tests' mix)."""
    return mixed_source(path, size, seed)


def config(tmp_path: Path, **sections: dict[str, str]) -> Config:
    overrides = {"DEFAULT": {"data_dir": str(tmp_path / "data")}}
    overrides.update(sections)
    return load_config(overrides=overrides)


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One source disk in several formats, and qemu-img's raw reading of each."""
    root = tmp_path_factory.mktemp("plugin-disks")
    raw = mixed_disk(root / "source.raw")
    out = {"raw": raw}
    for name, options in {"qcow2": ["-O", "qcow2"], "qcow2-zlib": ["-O", "qcow2", "-c"],
                          "vmdk": ["-O", "vmdk"], "vhd": ["-O", "vpc"], "vhdx": ["-O", "vhdx"],
                          "vdi": ["-O", "vdi"]}.items():
        image = root / f"source.{name}"
        run("qemu-img", "convert", "-f", "raw", *options, str(raw), str(image))
        out[name] = image
        reference = root / f"{name}.reference.raw"
        run("qemu-img", "convert", "-O", "raw", str(image), str(reference))
        out[f"{name}.reference"] = reference
    return out


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


def stage(staging: Path, source: Path, name: str = "4b0d4a1e-image") -> Path:
    staged = staging / name
    shutil.copyfile(source, staged)
    return staged


async def convert(staged: Path, disk_format: str, cfg: Config, container_format: str = "bare") -> PluginOutcome:
    return await run_import_plugins(["image_conversion"], StagedImage(staged, disk_format, container_format),
                                     roles=MEMBER, config=cfg)


# -- image_conversion -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qcow2", "qcow2-zlib"])
async def test_qcow2_to_raw_identical_to_qemu_img(disks: dict[str, Path], staging: Path, tmp_path: Path,
                                                  name: str) -> None:
    staged = stage(staging, disks[name])
    outcome = await convert(staged, "qcow2", config(tmp_path))
    assert outcome.staged.path == staging / f"{staged.name}.raw"
    assert same_bytes(outcome.staged.path, disks[f"{name}.reference"])
    assert same_bytes(outcome.staged.path, disks["raw"])
    assert outcome.attributes == {"disk_format": "raw", "container_format": "bare", "virtual_size": VIRTUAL}
    assert (outcome.staged.disk_format, outcome.staged.container_format) == ("raw", "bare")
    assert outcome.properties == {}
    assert not staged.exists()
    assert sorted(p.name for p in staging.iterdir()) == [f"{staged.name}.raw"]


@pytest.mark.parametrize("name,disk_format", [("vmdk", "vmdk"), ("vhd", "vhd"), ("vhdx", "vhdx"), ("vdi", "vdi")])
async def test_qemu_img_formats_to_raw_identical(disks: dict[str, Path], staging: Path, tmp_path: Path,
                                                 name: str, disk_format: str) -> None:
    staged = stage(staging, disks[name])
    outcome = await convert(staged, disk_format, config(tmp_path))
    reference = disks[f"{name}.reference"]
    assert same_bytes(outcome.staged.path, reference)
    assert outcome.attributes == {"disk_format": "raw", "container_format": "bare",
                                  "virtual_size": reference.stat().st_size}
    assert not staged.exists()


async def test_raw_to_qcow2(disks: dict[str, Path], staging: Path, tmp_path: Path) -> None:
    staged = stage(staging, disks["raw"])
    outcome = await convert(staged, "raw", config(tmp_path, image_conversion={"output_format": "qcow2"}))
    output = outcome.staged.path
    assert output == staging / f"{staged.name}.qcow2"
    info = qemu_info(output)
    assert info["format"] == "qcow2" and info["virtual-size"] == VIRTUAL
    # Exit status 0: same content (qemu-img compare exits 1 on a difference).
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(disks["raw"]), str(output))
    assert outcome.attributes == {"disk_format": "qcow2", "container_format": "bare", "virtual_size": VIRTUAL}
    assert not staged.exists()


async def test_qcow2_to_vmdk(disks: dict[str, Path], staging: Path, tmp_path: Path) -> None:
    staged = stage(staging, disks["qcow2"])
    outcome = await convert(staged, "qcow2", config(tmp_path, image_conversion={"output_format": "vmdk"}))
    assert qemu_info(outcome.staged.path)["format"] == "vmdk"
    run("qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(disks["raw"]), str(outcome.staged.path))
    assert outcome.attributes["disk_format"] == "vmdk"


@pytest.mark.parametrize("name,target", [("raw", "raw"), ("qcow2", "qcow2")])
async def test_already_in_target_format_is_kept(disks: dict[str, Path], staging: Path, tmp_path: Path,
                                                name: str, target: str) -> None:
    staged = stage(staging, disks[name])
    outcome = await convert(staged, name, config(tmp_path, image_conversion={"output_format": target}))
    assert outcome.staged == StagedImage(staged, name, "bare")
    assert outcome.attributes == {"virtual_size": VIRTUAL}
    assert same_bytes(staged, disks[name])
    assert [p.name for p in staging.iterdir()] == [staged.name]


@pytest.mark.parametrize("name,declared", [("qcow2", "raw"), ("raw", "qcow2"), ("vmdk", "qcow2"), ("qcow2", "vmdk")])
async def test_declared_format_mismatch_refused(disks: dict[str, Path], staging: Path, tmp_path: Path,
                                                name: str, declared: str) -> None:
    staged = stage(staging, disks[name])
    with pytest.raises(FormatRejected) as caught:
        await convert(staged, declared, config(tmp_path))
    assert caught.value.check == "format_match"
    assert status_of(caught.value) == 415
    assert same_bytes(staged, disks[name])          # the source is left for the caller
    assert [p.name for p in staging.iterdir()] == [staged.name]


async def test_uninspectable_disk_format_refused(disks: dict[str, Path], staging: Path, tmp_path: Path) -> None:
    staged = stage(staging, disks["raw"])
    with pytest.raises(FormatRejected, match="disk_format is ami but the data is raw"):
        await convert(staged, "ami", config(tmp_path))


async def test_qcow2_with_backing_file_refused(disks: dict[str, Path], staging: Path, tmp_path: Path) -> None:
    overlay = staging / "overlay"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disks["raw"]), "-F", "raw", str(overlay))
    for target in ("raw", "vmdk"):   # the native path and the qemu-img path
        with pytest.raises(FormatRejected) as caught:
            await convert(overlay, "qcow2", config(tmp_path, image_conversion={"output_format": target}))
        assert caught.value.check == "backing_file"
        assert overlay.exists()
        assert [p.name for p in staging.iterdir()] == ["overlay"]


async def test_qcow2_with_external_data_file_refused(staging: Path, tmp_path: Path) -> None:
    image = staging / "with-data-file"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={staging / 'data.bin'}", str(image), "4M")
    (staging / "data.bin").unlink()
    with pytest.raises(FormatRejected) as caught:
        await convert(image, "qcow2", config(tmp_path, image_conversion={"output_format": "qcow2"}))
    assert caught.value.check == "data_file"


async def test_raw_content_looking_like_qcow2_with_backing_file_refused(disks: dict[str, Path], staging: Path,
                                                                         tmp_path: Path) -> None:
    """A vmdk whose disk holds a qcow2 overlay: the raw output must not be handed on."""
    inner = tmp_path / "inner.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disks["raw"]), "-F", "raw", str(inner))
    wrapper = staging / "wrapper"
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(inner), str(wrapper))
    with pytest.raises(FormatRejected) as caught:
        await convert(wrapper, "vmdk", config(tmp_path))
    assert caught.value.check == "backing_file"
    assert [p.name for p in staging.iterdir()] == ["wrapper"]   # output removed, source left


@pytest.mark.parametrize("name", ["qcow2", "vmdk"])   # the native path and the qemu-img path
async def test_raw_output_over_size_cap_refused_before_writing(disks: dict[str, Path], staging: Path,
                                                               tmp_path: Path, name: str) -> None:
    staged = stage(staging, disks[name])
    with pytest.raises(ImageSizeLimitExceeded):
        await run_import_plugins(["image_conversion"], StagedImage(staged, name, "bare"), roles=MEMBER,
                                 config=config(tmp_path), size_cap=VIRTUAL - 1)
    assert [p.name for p in staging.iterdir()] == [staged.name]


@pytest.fixture(scope="module")
def iso_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin-iso")
    content = root / "content"
    content.mkdir()
    (content / "readme.txt").write_text("streamd\n" * 500)
    iso = root / "cd.iso"
    run("genisoimage", "-quiet", "-V", "STREAMD", "-o", str(iso), str(content))
    return iso


async def test_iso_declared_iso_is_kept(iso_image: Path, staging: Path, tmp_path: Path) -> None:
    staged = stage(staging, iso_image)
    outcome = await convert(staged, "iso", config(tmp_path))
    assert outcome.staged == StagedImage(staged, "iso", "bare")
    assert outcome.attributes == {}
    assert same_bytes(staged, iso_image)


@pytest.mark.parametrize("declared", ["raw", "qcow2"])
async def test_iso_declared_otherwise_refused(iso_image: Path, staging: Path, tmp_path: Path, declared: str) -> None:
    staged = stage(staging, iso_image)
    with pytest.raises(FormatRejected, match="ISO"):
        await convert(staged, declared, config(tmp_path))
    assert same_bytes(staged, iso_image)


async def test_gpt_counts_as_raw(staging: Path, tmp_path: Path) -> None:
    disk = tmp_path / "gpt.raw"
    with disk.open("wb") as handle:
        handle.truncate(4 * MiB)
        handle.seek(446)   # one protective GPT partition, as a GPT disk's MBR has
        handle.write(bytes([0, 0, 2, 0, 0xEE, 0, 0, 0]) + (1).to_bytes(4, "little") + (8191).to_bytes(4, "little"))
        handle.seek(510)
        handle.write(b"\x55\xaa")
    staged = stage(staging, disk)
    outcome = await convert(staged, "raw", config(tmp_path, image_conversion={"output_format": "qcow2"}))
    assert outcome.attributes == {"disk_format": "qcow2", "container_format": "bare", "virtual_size": 4 * MiB}
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(disk), str(outcome.staged.path))


# -- image_decompression -------------------------------------------------------------------------

def gzip_file(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, compresslevel=1))
    return path


@pytest.fixture(scope="module")
def payload() -> bytes:
    rng = random.Random(5)
    return rng.randbytes(3 * MiB) + bytes(5 * MiB) + b"tail" * 1000 + bytes(100_000)


async def decompress(staged: Path, cfg: Config, container_format: str = "bare", **kwargs: int) -> PluginOutcome:
    return await run_import_plugins(["image_decompression"], StagedImage(staged, "raw", container_format),
                                    roles=MEMBER, config=cfg, **kwargs)


async def test_gzip_decompressed_in_place(payload: bytes, staging: Path, tmp_path: Path) -> None:
    staged = gzip_file(staging / "img", payload)
    outcome = await decompress(staged, config(tmp_path))
    assert outcome.staged == StagedImage(staged, "raw", "bare")   # same file, formats as declared (Glance)
    assert outcome.attributes == {} and outcome.properties == {}
    assert staged.read_bytes() == payload
    assert [p.name for p in staging.iterdir()] == ["img"]


async def test_multi_member_gzip_with_padding(payload: bytes, staging: Path, tmp_path: Path) -> None:
    staged = staging / "img"
    staged.write_bytes(gzip.compress(payload[:MiB]) + gzip.compress(payload[MiB:]) + bytes(1000))
    await decompress(staged, config(tmp_path))
    assert staged.read_bytes() == payload


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
async def test_zip_single_member_extracted(payload: bytes, staging: Path, tmp_path: Path, method: int) -> None:
    staged = staging / "img"
    with zipfile.ZipFile(staged, "w", compression=method) as archive:
        archive.writestr("disk.raw", payload)
    await decompress(staged, config(tmp_path))
    assert staged.read_bytes() == payload
    assert [p.name for p in staging.iterdir()] == ["img"]


def zip_with(staging: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    staged = staging / "img"
    with zipfile.ZipFile(staged, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return staged


async def test_zip_with_several_members_refused(staging: Path, tmp_path: Path) -> None:
    staged = zip_with(staging, {"a.raw": b"a" * 1000, "b.raw": b"b" * 1000})
    before = staged.read_bytes()
    with pytest.raises(InvalidRequest, match="2 entries"):
        await decompress(staged, config(tmp_path))
    assert staged.read_bytes() == before
    assert [p.name for p in staging.iterdir()] == ["img"]


async def test_encrypted_zip_refused(staging: Path, tmp_path: Path) -> None:
    staged = zip_with(staging, {"a.raw": b"a" * 1000})
    data = bytearray(staged.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flag_offset] |= 0x1
    staged.write_bytes(bytes(data))
    with pytest.raises(InvalidRequest, match="encrypted"):
        await decompress(staged, config(tmp_path))


async def test_bzip2_zip_member_refused(staging: Path, tmp_path: Path) -> None:
    staged = zip_with(staging, {"a.raw": b"a" * 1000}, zipfile.ZIP_BZIP2)
    with pytest.raises(InvalidRequest, match="compression method"):
        await decompress(staged, config(tmp_path))


@pytest.mark.parametrize("kind", ["gzip", "zip"])
async def test_output_over_size_cap_refused(staging: Path, tmp_path: Path, kind: str) -> None:
    bomb = bytes(64 * MiB)
    staged = gzip_file(staging / "img", bomb) if kind == "gzip" else zip_with(staging, {"zeros": bomb})
    before = staged.read_bytes()
    with pytest.raises(ImageSizeLimitExceeded):
        await decompress(staged, config(tmp_path), size_cap=8 * MiB)
    assert staged.read_bytes() == before
    assert [p.name for p in staging.iterdir()] == ["img"]   # no partial output


async def test_zip_that_lies_about_its_size_refused(staging: Path, tmp_path: Path) -> None:
    """The central directory says 1000 bytes but the member inflates to 64 MiB: zipfile stops at
    the declared size, and the CRC of what it read then fails."""
    staged = zip_with(staging, {"zeros": bytes(64 * MiB)})
    data = bytearray(staged.read_bytes())
    at = data.find(b"PK\x01\x02")
    data[at + 24:at + 28] = (1000).to_bytes(4, "little")   # uncompressed size
    staged.write_bytes(bytes(data))
    with pytest.raises(InvalidRequest, match="corrupt"):
        await decompress(staged, config(tmp_path), size_cap=8 * MiB)
    assert [p.name for p in staging.iterdir()] == ["img"]


async def test_damaged_zip_archives_are_bad_requests(staging: Path, tmp_path: Path) -> None:
    """Whatever zipfile trips over in a damaged archive surfaces as InvalidRequest, never as
    a stray exception or a partial output."""
    rng = random.Random(3)
    original = zip_with(staging, {"disk.raw": rng.randbytes(20_000) + bytes(50_000)}).read_bytes()
    cfg = config(tmp_path)
    outcomes: set[str] = set()
    for _ in range(300):
        damaged = bytearray(original)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.2:
            del damaged[rng.randrange(4, len(damaged)):]
        staged = staging / "img"
        staged.write_bytes(bytes(damaged))
        try:
            await decompress(staged, cfg)
            outcomes.add("extracted")
        except InvalidRequest as exc:
            outcomes.add(exc.message.split(":")[0])
        assert [p.name for p in staging.iterdir()] == ["img"]
    assert "the zip archive is corrupt" in outcomes


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
async def test_broken_gzip_refused(payload: bytes, staging: Path, tmp_path: Path, damage: str) -> None:
    staged = gzip_file(staging / "img", payload)
    data = bytearray(staged.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[-8] ^= 0xFF   # the CRC in the trailer
    staged.write_bytes(bytes(data))
    with pytest.raises(InvalidRequest, match=damage if damage == "truncated" else "corrupt"):
        await decompress(staged, config(tmp_path))
    assert staged.read_bytes() == bytes(data)
    assert [p.name for p in staging.iterdir()] == ["img"]


async def test_lha_refused(staging: Path, tmp_path: Path) -> None:
    staged = staging / "img"
    staged.write_bytes(b"\x20\x00-lh5-" + bytes(200))
    with pytest.raises(InvalidImageData, match="LHA"):
        await decompress(staged, config(tmp_path))


async def test_compressed_container_kept(payload: bytes, staging: Path, tmp_path: Path) -> None:
    """Glance: container_format 'compressed' means the archive itself is the image."""
    staged = gzip_file(staging / "img", payload)
    before = staged.read_bytes()
    outcome = await decompress(staged, config(tmp_path), container_format="compressed")
    assert outcome.staged == StagedImage(staged, "raw", "compressed")
    assert staged.read_bytes() == before


async def test_data_that_is_not_an_archive_kept(disks: dict[str, Path], staging: Path, tmp_path: Path) -> None:
    staged = stage(staging, disks["qcow2"])
    outcome = await decompress(staged, config(tmp_path))
    assert outcome.staged.path == staged
    assert same_bytes(staged, disks["qcow2"])


async def test_cancelled_decompression_leaves_only_the_source(staging: Path, tmp_path: Path) -> None:
    """Cancelling stops the worker thread and removes its partial output."""
    member = gzip.compress(bytes(64 * MiB), compresslevel=1)
    staged = staging / "img"
    staged.write_bytes(member * 64)                    # 4 GiB of zeros once decompressed
    partial = staging / "img.uc"
    task = asyncio.ensure_future(decompress(staged, config(tmp_path), size_cap=1 << 40))
    while not partial.exists():
        assert not task.done()
        await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert staged.read_bytes() == member * 64
    assert [p.name for p in staging.iterdir()] == ["img"]


# -- inject_image_metadata, no_op ------------------------------------------------------------------

INJECT = {"inject_metadata_properties": {"inject": "hw_vif_model:virtio,os_glance_import_task:x,owner_team:ops"}}


async def test_inject_for_ordinary_callers(staging: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    staged = staging / "img"
    staged.write_bytes(b"data")
    with caplog.at_level(logging.WARNING, logger="streamd.imports.plugins"):
        outcome = await run_import_plugins(["inject_image_metadata"], StagedImage(staged, "raw", "bare"),
                                           roles=MEMBER, config=config(tmp_path, **INJECT))
    assert outcome.properties == {"hw_vif_model": "virtio", "owner_team": "ops"}
    assert outcome.attributes == {} and outcome.staged.path == staged
    assert "os_glance_import_task" in caplog.text


@pytest.mark.parametrize("roles,ignored", [(("admin", "member"), "admin"), (("member", "svc"), "svc,admin")])
async def test_nothing_injected_for_ignored_roles(staging: Path, tmp_path: Path, roles: tuple[str, ...],
                                                  ignored: str) -> None:
    cfg = config(tmp_path, inject_metadata_properties={
        **INJECT["inject_metadata_properties"], "ignore_user_roles": ignored})
    outcome = await run_import_plugins(["inject_image_metadata"], StagedImage(staging / "img", "raw", "bare"),
                                       roles=roles, config=cfg)
    assert outcome.properties == {}


async def test_no_op_changes_nothing(staging: Path, tmp_path: Path) -> None:
    staged = staging / "img"
    staged.write_bytes(b"\x1f\x8b\x08 not really gzip")
    outcome = await run_import_plugins(["no_op"], StagedImage(staged, "raw", "bare"), roles=MEMBER,
                                       config=config(tmp_path))
    assert outcome == PluginOutcome(StagedImage(staged, "raw", "bare"))
    assert staged.read_bytes() == b"\x1f\x8b\x08 not really gzip"


async def test_unknown_plugin_is_a_config_error(staging: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ovf_process"):
        await run_import_plugins(["no_op", "ovf_process"], StagedImage(staging / "img", "raw", "bare"),
                                 roles=MEMBER, config=config(tmp_path))


# -- chains ---------------------------------------------------------------------------------------------

async def test_gzipped_qcow2_decompressed_then_converted(disks: dict[str, Path], staging: Path,
                                                         tmp_path: Path) -> None:
    staged = gzip_file(staging / "img", disks["qcow2"].read_bytes())
    cfg = config(tmp_path, **INJECT, image_import_opts={
        "image_import_plugins": "['image_decompression', 'image_conversion', 'inject_image_metadata', 'no_op']"})
    outcome = await run_import_plugins(cfg.image_import_opts.image_import_plugins,
                                       StagedImage(staged, "qcow2", "bare"), roles=MEMBER, config=cfg)
    assert outcome.staged == StagedImage(staging / "img.raw", "raw", "bare")
    assert same_bytes(outcome.staged.path, disks["qcow2.reference"])
    assert outcome.attributes == {"disk_format": "raw", "container_format": "bare", "virtual_size": VIRTUAL}
    assert outcome.properties == {"hw_vif_model": "virtio", "owner_team": "ops"}
    assert [p.name for p in staging.iterdir()] == ["img.raw"]


async def test_conversion_in_configured_order_only(disks: dict[str, Path], staging: Path, tmp_path: Path) -> None:
    """Conversion before decompression sees the archive, not the disk, and refuses it."""
    staged = gzip_file(staging / "img", disks["qcow2"].read_bytes())
    with pytest.raises(FormatRejected, match="disk_format is qcow2 but the data is raw"):
        await run_import_plugins(["image_conversion", "image_decompression"], StagedImage(staged, "qcow2", "bare"),
                                 roles=MEMBER, config=config(tmp_path))
    assert [p.name for p in staging.iterdir()] == ["img"]


async def test_later_failure_removes_files_earlier_plugins_made(staging: Path, tmp_path: Path) -> None:
    """Converted first, then the raw disk starts with a gzip signature and fails to decompress:
    the converted file (unknown to the caller) goes, the original was already replaced."""
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as handle:
        handle.truncate(2 * MiB)
        handle.write(b"\x1f\x8b\x08\x00 this is no gzip stream")
    staged = staging / "img"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(staged))
    with pytest.raises(InvalidRequest, match="gzip"):
        await run_import_plugins(["image_conversion", "image_decompression"], StagedImage(staged, "qcow2", "bare"),
                                 roles=MEMBER, config=config(tmp_path))
    assert list(staging.iterdir()) == []
