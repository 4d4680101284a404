"""Two real daemons sharing one catalogue: an import sent to the node that does not hold the staged
data is passed to the node that does (Glance's stage-host proxy), or answered 504 if it is down."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import MEMBER_A, Daemon, start_node, stop_daemon


def node(tmp_path: Path, name: str, catalogue: Path, extra: str = "") -> Daemon:
    return start_node(tmp_path, name, catalogue, extra=extra)


def call(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body,
                                     headers={"Accept": "application/json", **MEMBER_A, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def staged_on(daemon: Daemon, data: bytes) -> str:
    status, body = call(daemon, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare"}).encode(), {"Content-Type": "application/json"})
    assert status == 201, body
    image_id = json.loads(body)["id"]
    assert call(daemon, "PUT", f"/v2/images/{image_id}/stage", data,
                {"Content-Type": "application/octet-stream"})[0] == 204
    return str(image_id)


def import_via(daemon: Daemon, image_id: str) -> tuple[int, bytes]:
    return call(daemon, "POST", f"/v2/images/{image_id}/import",
                json.dumps({"method": {"name": "glance-direct"}}).encode(), {"Content-Type": "application/json"})


def test_import_is_passed_to_the_node_holding_the_staged_data(tmp_path: Path) -> None:
    catalogue = tmp_path / "shared.sqlite"
    a = node(tmp_path, "a", catalogue)
    b = node(tmp_path, "b", catalogue)
    try:
        data = hashlib.shake_256(b"staged on a").digest(3 << 20)
        image_id = staged_on(a, data)
        status, body = import_via(b, image_id)
        assert status == 202, body
        deadline = time.monotonic() + 30
        while True:
            image = json.loads(call(b, "GET", f"/v2/images/{image_id}")[1])
            if image["status"] == "active":
                break
            assert time.monotonic() < deadline, image
            time.sleep(0.1)
        assert image["checksum"] == hashlib.md5(data).hexdigest()
        assert (a.data_dir / "images" / "fs" / image_id).read_bytes() == data  # a imported it
        assert not (b.data_dir / "images" / "fs" / image_id).exists()
        assert [p.name for p in (a.data_dir / "staging").iterdir() if p.is_file()] == []
        assert "os_glance_stage_host" not in image  # hidden, as in Glance

        # With the stage host down, the other node answers 504 and the image stays staged.
        other = staged_on(a, data)
        stop_daemon(a)
        status, body = import_via(b, other)
        assert status == 504, body
        assert json.loads(body)["code"] == "504 Gateway Timeout"
        assert json.loads(call(b, "GET", f"/v2/images/{other}")[1])["status"] == "uploading"
    finally:
        stop_daemon(a)
        stop_daemon(b)


def test_staged_data_of_an_image_deleted_through_another_node_is_removed(tmp_path: Path) -> None:
    catalogue = tmp_path / "shared.sqlite"
    # A short lock timeout: the sweeper runs every 3 s.
    a = node(tmp_path, "a", catalogue, "[image_import_opts]\nimport_lock_timeout = 6\n")
    b = node(tmp_path, "b", catalogue)
    try:
        image_id = staged_on(a, b"x" * (1 << 20))
        assert (a.data_dir / "staging" / image_id).exists()
        assert call(b, "DELETE", f"/v2/images/{image_id}")[0] == 204
        # a's sweeper (every import_lock_timeout / 2) notices the image is gone.
        deadline = time.monotonic() + 30
        while (a.data_dir / "staging" / image_id).exists():
            assert time.monotonic() < deadline, "a kept the staged data of a deleted image"
            time.sleep(0.2)
        assert not (a.data_dir / "staging" / f"{image_id}.json").exists()
    finally:
        stop_daemon(a)
        stop_daemon(b)
