"""With ``upload_body_in_thread``, a plain ``PUT /file`` body of known length is read off the event
loop, from the socket itself (the default; off, it keeps aiohttp's path and the connection).

A real daemon with the option on takes raw-socket uploads (Content-Length, no TLS, not chunked): the bytes land
whole with the right digests whether they come at once or piece by piece; the connection is
closed after the answer (the parser never saw the body, so it is never reused); a client cut
off midway or one that stalls past ``client_socket_timeout`` leaves the image ``queued`` with
no data anywhere; a chunked body still takes aiohttp's own path.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from conftest import MEMBER_A, Daemon, start_daemon, stop_daemon
from test_daemon import create_image, http, image_status, stray

MiB = 1 << 20


def _connect(daemon: Daemon) -> socket.socket:
    host, port = daemon.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


ON = "upload_body_in_thread = true\n"
IDENTITY = "".join(f"{name}: {value}\r\n" for name, value in MEMBER_A.items())


def _head(image_id: str, length: int, extra: str = "") -> bytes:
    return (f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n{IDENTITY}"
            f"Content-Type: application/octet-stream\r\n{extra}"
            + (f"Content-Length: {length}\r\n" if length >= 0 else "") + "\r\n").encode()


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while piece := sock.recv(65536):
        received += piece
    return received


def _images_on_disk(daemon: Daemon) -> list[str]:
    store = daemon.data_dir / "images" / "fs"
    return sorted(p.name for p in store.iterdir() if p.is_file())


def _wait(predicate, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("paced", [False, True], ids=["at-once", "piece-by-piece"])
def test_content_length_body_lands_whole_and_the_connection_closes(tmp_path: Path, paced: bool) -> None:
    daemon = start_daemon(tmp_path, ON)
    try:
        image_id = create_image(daemon)
        data = os.urandom(9 * MiB + 12345)
        with _connect(daemon) as sock:
            # Some of the body travels with the headers: aiohttp has buffered it before the thread takes over.
            sock.sendall(_head(image_id, len(data)) + data[:100_000])
            view = memoryview(data)[100_000:]
            step = 300_001 if paced else len(view)
            for start in range(0, len(view), step):
                sock.sendall(view[start:start + step])
                if paced:
                    time.sleep(0.01)
            answer = _read_all(sock)  # returns only because the server closes the connection
        assert answer.startswith(b"HTTP/1.1 204 "), answer[:200]
        assert b"\r\nConnection: close\r\n" in answer.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        status, body = http(daemon, "GET", f"/v2/images/{image_id}")
        shown = json.loads(body)
        assert status == 200 and shown["status"] == "active" and shown["size"] == len(data)
        assert shown["checksum"] == hashlib.md5(data).hexdigest()
        assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
        status, downloaded = http(daemon, "GET", f"/v2/images/{image_id}/file")
        assert status == 200 and downloaded == data
    finally:
        stop_daemon(daemon)


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_client_cut_off_midway_leaves_no_active_image_and_no_data(tmp_path: Path, reset: bool) -> None:
    daemon = start_daemon(tmp_path, ON)
    try:
        image_id = create_image(daemon)
        sock = _connect(daemon)
        sock.sendall(_head(image_id, 64 * MiB) + b"\1" * (6 * MiB + 7))
        _wait(lambda: image_status(daemon, image_id) == "saving", "the upload did not start")
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        _wait(lambda: image_status(daemon, image_id) == "queued", "the image did not go back to queued")
        _wait(lambda: stray(daemon.data_dir) == [], "the partial file stayed")
        assert _images_on_disk(daemon) == []
        assert " ERROR " not in daemon.log() and "Traceback" not in daemon.log()
        # The daemon goes on taking uploads.
        data = os.urandom(2 * MiB + 1)
        assert http(daemon, "PUT", f"/v2/images/{image_id}/file", data,
                    {"Content-Type": "application/octet-stream"})[0] == 204
        assert image_status(daemon, image_id) == "active"
    finally:
        stop_daemon(daemon)


def test_stalled_client_is_dropped_after_the_socket_timeout(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, ON + "client_socket_timeout = 1\n")
    try:
        image_id = create_image(daemon)
        with _connect(daemon) as sock:
            sock.sendall(_head(image_id, 16 * MiB) + b"\1" * (3 * MiB))
            _wait(lambda: image_status(daemon, image_id) == "saving", "the upload did not start")
            # Nothing more is sent: the server gives up on its own and closes the connection.
            _wait(lambda: image_status(daemon, image_id) == "queued", "the stalled upload was kept", timeout=15)
            sock.settimeout(15)
            try:
                _read_all(sock)
            except ConnectionResetError:
                pass
        _wait(lambda: stray(daemon.data_dir) == [], "the partial file stayed")
        assert _images_on_disk(daemon) == []
    finally:
        stop_daemon(daemon)


def test_slow_client_below_the_wake_up_mark_is_not_taken_for_a_stalled_one(tmp_path: Path) -> None:
    # The reader is woken once 256 KiB are queued; a client sending less than that per
    # client_socket_timeout is slow, not gone: its upload completes.
    daemon = start_daemon(tmp_path, ON + "client_socket_timeout = 1\n")
    try:
        image_id = create_image(daemon)
        data = os.urandom(3 * MiB)
        with _connect(daemon) as sock:
            sock.sendall(_head(image_id, len(data)) + data[:MiB])
            sent = MiB
            for _ in range(6):  # 3 s at 40 KiB per 0.5 s
                time.sleep(0.5)
                sock.sendall(data[sent:sent + (40 << 10)])
                sent += 40 << 10
            sock.sendall(data[sent:])
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 204 "), answer[:200]
        status, body = http(daemon, "GET", f"/v2/images/{image_id}")
        assert json.loads(body)["checksum"] == hashlib.md5(data).hexdigest()
    finally:
        stop_daemon(daemon)


@pytest.mark.parametrize("chunked, option", [(True, ""), (False, "upload_body_in_thread = false\n")],
                         ids=["chunked", "option-off"])
def test_body_on_the_loop_lands_and_keeps_the_connection(tmp_path: Path, chunked: bool, option: str) -> None:
    daemon = start_daemon(tmp_path, option)
    try:
        image_id = create_image(daemon)
        data = os.urandom(3 * MiB + 5)
        if chunked:
            body = b"".join(b"%x\r\n" % len(data[i:i + MiB]) + data[i:i + MiB] + b"\r\n"
                            for i in range(0, len(data), MiB)) + b"0\r\n\r\n"
            head = _head(image_id, -1, "Transfer-Encoding: chunked\r\n")
        else:
            body, head = data, _head(image_id, len(data))
        with _connect(daemon) as sock:
            sock.sendall(head + body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 204 "), answer[:200]
            # Same connection, next request: it was kept alive.
            sock.sendall(f"GET /v2/images/{image_id} HTTP/1.1\r\nHost: x\r\n{IDENTITY}\r\n".encode())
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 ")
        status, body = http(daemon, "GET", f"/v2/images/{image_id}")
        assert json.loads(body)["checksum"] == hashlib.md5(data).hexdigest()
    finally:
        stop_daemon(daemon)
