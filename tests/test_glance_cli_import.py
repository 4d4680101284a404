"""The real ``glance`` CLI (python-glanceclient) driving interoperable import against a real daemon.

The daemon has three file stores (``fs``, the default, ``fs2`` and ``fs3``) and lets
web-download reach a local aiohttp source (test_import_crash's ``Source``, on loopback; its
``/disk.raw`` serves a whole image, other paths are 404).

The CLI runs as the daemon's default noauth identity (admin, member and reader of project
``0...01``) with fd 0 closed (glanceclient reads a non-tty stdin as image data). Imports run
in the background after the 202, so what the CLI prints right after ``image-import`` is the
image while it imports; the tests then wait on the server (plain HTTP) for the outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import MEMBER_B, Daemon, start_daemon, stop_daemon
from test_glance_cli import show_table, table_rows
from test_import_crash import DATA as SOURCE_DATA
from test_import_crash import Source

GLANCE = Path(sys.executable).with_name("glance")  # the venv running the tests has python-glanceclient
MIB = 1 << 20


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    with Source() as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, source: Source) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("cli-import"), (
        "enabled_backends = fs:file,fs2:file,fs3:file\n"
        f"[import_filtering_opts]\nallow_private_networks = true\nallowed_ports = {source.port}\n"))
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


class Cli:
    def __init__(self, daemon: Daemon, home: Path) -> None:
        self.daemon = daemon
        home.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        self.env["HOME"] = str(home)
        self.env["PYTHONWARNINGS"] = "ignore"

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        # `exec ... <&-`: the CLI starts with fd 0 closed, so it never takes stdin for image data.
        result = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(GLANCE), "--os-image-api-version", "2",
                                 "--os-image-url", self.daemon.url, "--os-auth-token", "x", *args],
                                env=self.env, capture_output=True, text=True, timeout=120)
        if ok:
            assert result.returncode == 0, f"glance {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        else:
            assert result.returncode != 0, f"glance {' '.join(args)} should fail:\n{result.stdout}"
        return result

    def http(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.daemon.url + path, method=method,
                                         headers={"Accept": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, json.loads(raw) if raw else None

    def image(self, image_id: str) -> dict[str, Any]:
        status, body = self.http("GET", f"/v2/images/{image_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def tasks(self, image_id: str) -> list[dict[str, Any]]:
        status, body = self.http("GET", f"/v2/images/{image_id}/tasks")
        assert status == 200, body
        return body["tasks"]  # type: ignore[no-any-return]

    def wait_import(self, image_id: str, count: int = 1) -> dict[str, Any]:
        """The newest task once ``count`` tasks of the image exist and none still runs."""
        deadline = time.monotonic() + 60
        while True:
            found = self.tasks(image_id)
            if len(found) >= count and all(t["status"] in ("success", "failure") for t in found):
                return found[0]
            assert time.monotonic() < deadline, f"import of {image_id} did not finish: {found}"
            time.sleep(0.05)

    def staging(self) -> list[str]:
        root = self.daemon.data_dir / "staging"
        return sorted(p.name for p in root.iterdir() if p.name != ".incoming") + \
            sorted(p.name for p in (root / ".incoming").iterdir())

    def store_file(self, store: str, image_id: str) -> Path:
        return self.daemon.data_dir / "images" / store / image_id


@pytest.fixture
def cli(server: Daemon, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path / "home")


def make_file(path: Path, size: int) -> bytes:
    data = hashlib.shake_256(path.name.encode() + uuid.uuid4().bytes).digest(size)
    path.write_bytes(data)
    return data


def stores_of(image: dict[str, Any]) -> list[str]:
    return sorted(filter(None, (image.get("stores") or "").split(",")))


def create_via_import(cli: Cli, path: Path, *extra: str) -> str:
    out = cli.run("image-create-via-import", "--disk-format", "raw", "--container-format", "bare",
                  "--import-method", "glance-direct", "--file", str(path), *extra).stdout
    image_id = show_table(out)["id"]
    assert cli.wait_import(image_id)["status"] == "success"
    return image_id


# -- discovery -----------------------------------------------------------------------------------

def cell_json(out: str, key: str) -> Any:
    """The JSON value of ``key`` in a Property | Value table, rejoined from its wrapped lines."""
    parts: list[str] = []
    current = None
    for line in out.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0]:
            current = cells[0]
        if current == key:
            parts.append(cells[-1])
    assert parts, f"no {key} row in:\n{out}"
    return json.loads("".join(parts))


def test_import_info(cli: Cli) -> None:
    methods = cell_json(cli.run("import-info").stdout, "import-methods")
    assert methods["value"] == ["glance-direct", "web-download", "copy-image"]


def test_stores_info_and_detail(cli: Cli) -> None:
    stores = cell_json(cli.run("stores-info").stdout, "stores")
    assert stores == [{"id": "fs", "default": "true"}, {"id": "fs2"}, {"id": "fs3"}]
    detail = cell_json(cli.run("stores-info", "--detail").stdout, "stores")
    assert [s["id"] for s in detail] == ["fs", "fs2", "fs3"]
    for store in detail:
        assert store["type"] == "file"
        assert store["properties"]["data_dir"] == str(cli.daemon.data_dir / "images" / store["id"])
    # --detail is admin-only (the CLI's identity is an admin); a member gets Glance's 403.
    assert cli.http("GET", "/v2/info/stores/detail", MEMBER_B)[0] == 403


# -- creating images by import -----------------------------------------------------------------------

def test_create_via_import_glance_direct(cli: Cli, tmp_path: Path) -> None:
    data = make_file(tmp_path / "disk.raw", 2 * MIB + 33)
    out = cli.run("image-create-via-import", "--name", "via-import", "--disk-format", "raw",
                  "--container-format", "bare", "--import-method", "glance-direct",
                  "--file", str(tmp_path / "disk.raw")).stdout
    printed = show_table(out)
    # Printed after the 202: the image is importing, or already done.
    assert printed["status"] in ("importing", "active"), printed
    image_id = printed["id"]
    task = cli.wait_import(image_id)
    assert task["status"] == "success", task
    image = cli.image(image_id)
    assert image["status"] == "active" and image["name"] == "via-import" and stores_of(image) == ["fs"]
    assert image["size"] == len(data) and image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert not image.get("os_glance_import_task") and not image.get("os_glance_stage_host")
    assert cli.store_file("fs", image_id).read_bytes() == data
    assert image_id not in " ".join(cli.staging())
    # image-download checks the bytes against os_hash_value itself.
    cli.run("image-download", "--file", str(tmp_path / "back"), image_id)
    assert (tmp_path / "back").read_bytes() == data


def test_create_via_import_web_download(cli: Cli, source: Source) -> None:
    out = cli.run("image-create-via-import", "--name", "from-web", "--disk-format", "raw",
                  "--container-format", "bare", "--import-method", "web-download",
                  "--uri", source.url("/disk.raw")).stdout
    image_id = show_table(out)["id"]
    task = cli.wait_import(image_id)
    assert task["status"] == "success", task
    assert task["input"]["import_req"]["method"]["uri"] == source.url("/disk.raw")
    image = cli.image(image_id)
    assert image["status"] == "active" and stores_of(image) == ["fs"]
    assert image["checksum"] == hashlib.md5(SOURCE_DATA).hexdigest() and image["size"] == len(SOURCE_DATA)
    assert cli.store_file("fs", image_id).read_bytes() == SOURCE_DATA


def test_create_via_import_web_download_failures(cli: Cli, source: Source) -> None:
    # A port the filter does not allow: the CLI creates the image, the import is refused (400).
    refused = cli.run("image-create-via-import", "--name", "refused", "--disk-format", "raw",
                      "--container-format", "bare", "--import-method", "web-download",
                      "--uri", "http://127.0.0.1:1/disk.raw", ok=False)
    assert "port 1 is not allowed" in refused.stdout + refused.stderr
    status, listed = cli.http("GET", "/v2/images?name=refused")
    assert status == 200 and [i["status"] for i in listed["images"]] == ["queued"]
    assert not listed["images"][0].get("os_glance_import_task")
    assert cli.tasks(listed["images"][0]["id"]) == []  # refused before any task was made
    # A source that answers 404: accepted (202), then the task fails and the image is queued again.
    out = cli.run("image-create-via-import", "--name", "missing", "--disk-format", "raw",
                  "--container-format", "bare", "--import-method", "web-download",
                  "--uri", source.url("/missing")).stdout
    image_id = show_table(out)["id"]
    task = cli.wait_import(image_id)
    assert task["status"] == "failure" and "404" in task["message"], task
    image = cli.image(image_id)
    assert image["status"] == "queued" and not image.get("os_glance_import_task")
    # The tasks API shows it with the CLI too (admin): task-list filters, task-show details.
    failures = [row[0] for row in table_rows(cli.run("task-list", "--status", "failure").stdout)]
    assert task["id"] in failures
    assert task["id"] not in [row[0] for row in table_rows(cli.run("task-list", "--status", "success").stdout)]
    shown = show_table(cli.run("task-show", task["id"]).stdout)
    assert shown["status"] == "failure" and shown["image_id"] == image_id and shown["type"] == "api_image_import"
    listed = cli.run("image-tasks", image_id).stdout
    assert "failure" in listed and "404" in listed


def test_stage_then_import(cli: Cli, tmp_path: Path) -> None:
    data = make_file(tmp_path / "staged.raw", MIB + 5)
    image_id = show_table(cli.run("image-create", "--name", "staged", "--disk-format", "raw",
                                  "--container-format", "bare").stdout)["id"]
    assert cli.image(image_id)["status"] == "queued"
    # Before anything is staged, the CLI itself refuses a glance-direct import.
    early = cli.run("image-import", "--import-method", "glance-direct", image_id, ok=False)
    assert "uploading" in early.stdout + early.stderr
    cli.run("image-stage", "--file", str(tmp_path / "staged.raw"), image_id)
    staged = cli.image(image_id)
    assert staged["status"] == "uploading" and staged["size"] == len(data)
    assert image_id in cli.staging()
    # Staging twice is Glance's 409.
    again = cli.run("image-stage", "--file", str(tmp_path / "staged.raw"), image_id, ok=False)
    assert "already has data on staging" in again.stdout + again.stderr
    assert cli.image(image_id)["status"] == "uploading" and image_id in cli.staging()
    printed = show_table(cli.run("image-import", "--import-method", "glance-direct", image_id).stdout)
    assert printed["id"] == image_id and printed["status"] in ("importing", "active")
    task = cli.wait_import(image_id)
    assert task["status"] == "success", task
    image = cli.image(image_id)
    assert image["status"] == "active" and stores_of(image) == ["fs"]
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image_id not in " ".join(cli.staging())
    # Active now: the CLI refuses another glance-direct import.
    cli.run("image-import", "--import-method", "glance-direct", image_id, ok=False)


def test_create_via_import_into_chosen_stores(cli: Cli, tmp_path: Path) -> None:
    make_file(tmp_path / "a.raw", MIB)
    one = create_via_import(cli, tmp_path / "a.raw", "--store", "fs3")
    assert stores_of(cli.image(one)) == ["fs3"]
    two = create_via_import(cli, tmp_path / "a.raw", "--stores", "fs2,fs3", "--allow-failure", "False")
    assert stores_of(cli.image(two)) == ["fs2", "fs3"]
    # --allow-failure False: every store must succeed (glanceclient then sends nothing: the default).
    assert cli.tasks(two)[0]["input"]["all_stores_must_succeed"] is True
    three = create_via_import(cli, tmp_path / "a.raw", "--stores", "fs,fs2")
    assert cli.tasks(three)[0]["input"]["all_stores_must_succeed"] is False  # the CLI's default
    # An unknown store is caught by the CLI from stores-info, before anything is created.
    bad = cli.run("image-create-via-import", "--disk-format", "raw", "--container-format", "bare",
                  "--import-method", "glance-direct", "--file", str(tmp_path / "a.raw"), "--stores", "nosuch",
                  ok=False)
    assert "nosuch" in bad.stdout + bad.stderr
    listed = cli.run("image-list", "--include-stores").stdout
    rows = {row[0]: row for row in table_rows(listed)}
    first_row = next(line for line in listed.splitlines() if line.startswith("|"))
    header = [c.strip() for c in first_row.strip("|").split("|")]
    assert header[-1] == "Stores"
    assert rows[one][-1] == "fs3" and sorted(rows[two][-1].split(",")) == ["fs2", "fs3"]
    assert sorted(rows[three][-1].split(",")) == ["fs", "fs2"]


# -- copy-image and stores-delete ---------------------------------------------------------------------

def test_copy_image_and_stores_delete(cli: Cli, tmp_path: Path) -> None:
    data = make_file(tmp_path / "copied.raw", 2 * MIB)
    image_id = create_via_import(cli, tmp_path / "copied.raw")
    assert stores_of(cli.image(image_id)) == ["fs"]

    out = cli.run("image-import", "--import-method", "copy-image", "--stores", "fs2", image_id).stdout
    assert show_table(out)["status"] == "active"  # copy-image never changes the status
    assert cli.wait_import(image_id, count=2)["status"] == "success"
    assert stores_of(cli.image(image_id)) == ["fs", "fs2"]
    assert cli.store_file("fs2", image_id).read_bytes() == data

    cli.run("image-import", "--import-method", "copy-image", "--all-stores", "true", image_id)
    task = cli.wait_import(image_id, count=3)
    assert task["status"] == "success" and task["input"]["stores"] == ["fs3"], task
    image = cli.image(image_id)
    assert stores_of(image) == ["fs", "fs2", "fs3"] and image["checksum"] == hashlib.md5(data).hexdigest()
    assert cli.store_file("fs3", image_id).read_bytes() == data
    # Every store holds it now: copying to one again is Glance's 400, with its message.
    again = cli.run("image-import", "--import-method", "copy-image", "--stores", "fs3", image_id, ok=False)
    assert "already present at store &#x27;fs3&#x27;" in again.stdout + again.stderr  # as against Glance
    # copy-image needs --stores or --all-stores (the CLI's own check).
    cli.run("image-import", "--import-method", "copy-image", image_id, ok=False)

    deleted = cli.run("stores-delete", "--store", "fs2", image_id)
    assert deleted.stdout.strip() == ""
    assert stores_of(cli.image(image_id)) == ["fs", "fs3"]
    assert not cli.store_file("fs2", image_id).exists()
    gone = cli.run("stores-delete", "--store", "fs2", image_id, ok=False)
    assert "not found" in gone.stdout + gone.stderr
    cli.run("stores-delete", "--store", "fs", image_id)
    assert stores_of(cli.image(image_id)) == ["fs3"] and not cli.store_file("fs", image_id).exists()
    # The last copy cannot be removed this way (403): delete the image instead.
    last = cli.run("stores-delete", "--store", "fs3", image_id, ok=False)
    assert "Unable to delete image" in last.stdout + last.stderr
    assert stores_of(cli.image(image_id)) == ["fs3"]
    # Still downloadable, from the store that is left.
    cli.run("image-download", "--file", str(tmp_path / "back"), image_id)
    assert (tmp_path / "back").read_bytes() == data
