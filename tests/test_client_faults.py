"""Clients that go away, or do not speak HTTP, are not errors: one INFO line each, no traceback.

A real daemon gets 20 uploads cut mid-body (half reset, half closed), 10 downloads cut
mid-stream and 20 requests its HTTP parser refuses. Its log must hold no traceback and no
ERROR line for them, one INFO line per aborted request naming that request's id, one INFO
line per refused request; the images are ``queued`` again with no data left behind.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from pathlib import Path
from typing import Callable

from conftest import MEMBER_A, Daemon, start_daemon, stop_daemon
from test_daemon import create_image, http, image_status, stray

UPLOADS = 20
DOWNLOADS = 10
IMAGE_SIZE = 32 << 20  # far more than the socket buffers hold: the server is mid-stream when cut
TOTAL = 8 << 20
SENT = 256 << 10

# Requests aiohttp's parser answers with 400 itself (before any handler runs).
MALFORMED = [
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-Roles: a\x00b\r\n\r\n",
    b"GET /v2/images?name=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/im ages HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/images HTTP/9.9.9\r\nHost: x\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"POST /v2/images HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /v2/images HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v2/images HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
    b"POST /v2/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /v2/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST /v2/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\n Folded: header\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nX\x7fY: 1\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n",
    b"GET /v2/images HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /v2/images HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n",
]


def _address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").split(":")
    return host, int(port)


def _start_upload(daemon: Daemon, image_id: str) -> socket.socket:
    sock = socket.create_connection(_address(daemon))
    sock.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                  f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {TOTAL}\r\n\r\n").encode())
    sock.sendall(b"\1" * SENT)
    return sock


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _answer(daemon: Daemon, request: bytes) -> bytes:
    with socket.create_connection(_address(daemon), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            received += piece
        return received


def _cut(sock: socket.socket, reset: bool) -> None:
    if reset:  # an RST: the client's socket is gone at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _start_download(daemon: Daemon, image_id: str) -> socket.socket:
    sock = socket.create_connection(_address(daemon))
    sock.sendall((f"GET /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                  f"X-Project-Id: {MEMBER_A['X-Project-Id']}\r\nX-Roles: member\r\n\r\n").encode())
    received = b""
    while len(received) < 256 << 10:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 ")
    return sock


def test_aborted_requests_and_malformed_ones_log_one_info_line_each(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        served = create_image(daemon)
        status, _ = http(daemon, "PUT", f"/v2/images/{served}/file", bytes(range(256)) * (IMAGE_SIZE // 256),
                         {"Content-Type": "application/octet-stream"})
        assert status == 204
        for n in range(DOWNLOADS):
            _cut(_start_download(daemon, served), reset=bool(n % 2))

        images = [create_image(daemon) for _ in range(UPLOADS)]
        sockets = [_start_upload(daemon, image_id) for image_id in images]
        _wait(lambda: all(image_status(daemon, i) == "saving" for i in images), "every upload is under way")
        for n, sock in enumerate(sockets):
            _cut(sock, reset=bool(n % 2))
        _wait(lambda: all(image_status(daemon, i) == "queued" for i in images), "every upload is undone")

        for request in MALFORMED:
            answer = _answer(daemon, request)
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), (request[:60], answer[:200])

        for image_id in images:
            status, body = http(daemon, "GET", f"/v2/images/{image_id}")
            shown = json.loads(body)
            assert status == 200 and shown["status"] == "queued" and shown["size"] is None
            assert shown["checksum"] is None and shown["os_hash_value"] is None
            assert http(daemon, "GET", f"/v2/images/{image_id}/file")[0] == 204
            assert not (daemon.data_dir / "images" / "fs" / image_id).exists()
        assert stray(daemon.data_dir) == []
    finally:
        stop_daemon(daemon)

    log = daemon.log()
    assert "Traceback" not in log, log
    assert not [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line], log
    gone: dict[str, str] = {}
    for line in log.splitlines():
        match = re.search(r" INFO streamd\.api \[req-[0-9a-f-]{36}\]: PUT /v2/images/([0-9a-f-]{36})/file \((req-[0-9a-f-]{36})\): "
                          r"the client went away", line)
        if match:
            assert match.group(1) not in gone, line
            gone[match.group(1)] = match.group(2)
    assert sorted(gone) == sorted(images), log
    assert len(set(gone.values())) == UPLOADS
    downloads = re.findall(rf" INFO streamd\.api \[req-[0-9a-f-]{{36}}\]: GET /v2/images/{served}/file \((req-[0-9a-f-]{{36}})\): "
                           r"the client went away", log)
    assert len(set(downloads)) == DOWNLOADS, log
    # The access log records them as closed by the client (nginx's 499), not as our 500.
    assert len(re.findall(r'"PUT /v2/images/[0-9a-f-]{36}/file HTTP/1\.1" 499 ', log)) == UPLOADS
    assert not re.search(r'HTTP/1\.[01]" 5\d\d ', log), log
    refused = re.findall(r" INFO aiohttp\.server: malformed HTTP request from 127\.0\.0\.1 answered 4\d\d: \S", log)
    assert len(refused) == len(MALFORMED), log
