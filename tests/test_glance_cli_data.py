"""The real glance CLI moving image data: image-upload, image-create --file, image-download.

glanceclient verifies the downloaded bytes against os_hash_value (and Content-MD5),
so a successful image-download is itself the checksum check.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Daemon, start_daemon, stop_daemon



def glance_bin() -> str:
    import sys

    return str(Path(sys.executable).with_name("glance"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("cli-data"))
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


def glance(server: Daemon, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(home)
    # glanceclient uploads whatever a non-terminal stdin holds; give it none at all.
    # `exec ... <&-` rather than a preexec_fn: no fork() in this process, where eventlet (imported by
    # another test file on the same pytest-xdist worker) warns at every fork.
    result = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', glance_bin(), "--os-image-url", server.url,
                             "--os-auth-token", "x", *args],
                            capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def show(server: Daemon, image_id: str) -> dict:
    with urllib.request.urlopen(f"{server.url}/v2/images/{image_id}", timeout=30) as response:
        return json.load(response)


def make_file(path: Path, size: int) -> bytes:
    data = hashlib.shake_256(path.name.encode()).digest(size)
    path.write_bytes(data)
    return data


def test_create_with_file_and_download(server: Daemon, tmp_path: Path) -> None:
    data = make_file(tmp_path / "disk.raw", 3 * (1 << 20) + 17)
    out = glance(server, tmp_path, "image-create", "--name", "with-file", "--disk-format", "raw",
                 "--container-format", "bare", "--file", str(tmp_path / "disk.raw"), "--progress")
    image_id = next(line.split("|")[2].strip() for line in out.stdout.splitlines() if line.startswith("| id "))
    image = show(server, image_id)
    assert image["status"] == "active" and image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    target = tmp_path / "back.raw"
    glance(server, tmp_path, "image-download", "--file", str(target), image_id)
    assert target.read_bytes() == data


def test_image_upload_then_download_to_stdout(server: Daemon, tmp_path: Path) -> None:
    data = make_file(tmp_path / "second.qcow2", 1 << 20)
    created = glance(server, tmp_path, "image-create", "--name", "later", "--disk-format", "raw",
                     "--container-format", "bare")
    image_id = next(line.split("|")[2].strip() for line in created.stdout.splitlines() if line.startswith("| id "))
    assert show(server, image_id)["status"] == "queued"
    glance(server, tmp_path, "image-upload", "--file", str(tmp_path / "second.qcow2"), image_id)
    assert show(server, image_id)["status"] == "active"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', glance_bin(), "--os-image-url", server.url,
                             "--os-auth-token", "x", "image-download", image_id], capture_output=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    # A second upload to an active image is refused with Glance's 409.
    again = glance(server, tmp_path, "image-upload", "--file", str(tmp_path / "second.qcow2"), image_id, check=False)
    assert again.returncode != 0 and "HTTP 409 Conflict: Image status transition from active to saving is not allowed" in again.stdout + again.stderr


def test_download_of_image_without_data_fails_cleanly(server: Daemon, tmp_path: Path) -> None:
    created = glance(server, tmp_path, "image-create", "--name", "empty", "--disk-format", "raw",
                     "--container-format", "bare")
    image_id = next(line.split("|")[2].strip() for line in created.stdout.splitlines() if line.startswith("| id "))
    result = glance(server, tmp_path, "image-download", "--file", str(tmp_path / "nothing"), image_id, check=False)
    # glanceclient reports an image with no data (204) as an error, as it does against Glance.
    assert result.returncode != 0 and "no data" in (result.stdout + result.stderr).lower()
    assert show(server, image_id)["status"] == "queued"
