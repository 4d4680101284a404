"""The daemon's log as operators read it: plain lines with Glance's access line, or one JSON
object a line (``use_json``) whose records carry the request's identity and what it did."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import MEMBER_A, PROJECT_A, start_daemon, stop_daemon

DATA = os.urandom(100_000)


def call(base: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(base + path, data=body, method=method, headers={**MEMBER_A, **(headers or {})})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def exercise(base: str) -> dict[str, str]:
    """Create, upload, download and a 404; returns the request ids the daemon answered with."""
    ids = {}
    status, headers, body = call(base, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare"}).encode(), {"Content-Type": "application/json"})
    assert status == 201
    image_id = json.loads(body)["id"]
    ids["create"] = headers["X-Openstack-Request-Id"]
    status, headers, _ = call(base, "PUT", f"/v2/images/{image_id}/file", DATA,
                              {"Content-Type": "application/octet-stream"})
    assert status == 204
    ids["upload"] = headers["X-Openstack-Request-Id"]
    status, headers, body = call(base, "GET", f"/v2/images/{image_id}/file")
    assert status == 200 and body == DATA
    ids["download"] = headers["X-Openstack-Request-Id"]
    status, headers, _ = call(base, "GET", "/v2/images/00000000-0000-0000-0000-000000000000")
    assert status == 404
    ids["missing"] = headers["X-Openstack-Request-Id"]
    ids["image_id"] = image_id
    return ids


def test_json_log_records_name_the_request_and_what_it_did(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "use_json = true\n")
    try:
        ids = exercise(daemon.url)
    finally:
        stop_daemon(daemon)
    records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    # Every line the daemon wrote is JSON (oslo.messaging, aiohttp and ours alike).
    assert len(records) == len([line for line in daemon.log().splitlines() if line.strip()])
    assert any("listening on" in r["message"] for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "streamd.access"}
    create = access[ids["create"]]
    assert (create["method"], create["path"], create["route"], create["status"], create["project_id"],
            create["user_id"]) == ("POST", "/v2/images", "/{version}/images", 201, PROJECT_A, "user-a")
    assert create["duration_ms"] >= 0 and create["level"] == "INFO" and create["time"].endswith("+00:00")
    upload = access[ids["upload"]]
    assert (upload["route"], upload["status"], upload["image_id"]) == (
        "/{version}/images/{image_id}/file", 204, ids["image_id"])
    download = access[ids["download"]]
    assert (download["status"], download["bytes"]) == (200, len(DATA))
    assert access[ids["missing"]]["status"] == 404
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^]]+\] "POST /v2/images HTTP/1\.1" 201 \d+ \d+\.\d{6}', create["message"])


def test_plain_lines_carry_glances_access_line_and_the_request_id(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        ids = exercise(daemon.url)
    finally:
        stop_daemon(daemon)
    log = daemon.log()
    assert not any(line.startswith("{") for line in log.splitlines())
    line = next(line for line in log.splitlines() if f"[{ids['download']}]" in line and "streamd.access" in line)
    assert re.search(r'INFO streamd\.access \[req-[0-9a-f-]+\]: 127\.0\.0\.1 - - \[[^]]+\] '
                     rf'"GET /v2/images/{ids["image_id"]}/file HTTP/1\.1" 200 {len(DATA)} \d+\.\d{{6}}$', line), line
