"""The daemon as a process: versions, signals, graceful shutdown, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import MEMBER_A, PYTHON, Daemon, start_daemon, stop_daemon


def http(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body,
                                     headers={**MEMBER_A, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def create_image(daemon: Daemon) -> str:
    status, body = http(daemon, "POST", "/v2/images", json.dumps(
        {"name": "x", "disk_format": "raw", "container_format": "bare"}).encode(), {"Content-Type": "application/json"})
    assert status == 201
    return str(json.loads(body)["id"])


def image_status(daemon: Daemon, image_id: str) -> str:
    status, body = http(daemon, "GET", f"/v2/images/{image_id}")
    assert status == 200
    return str(json.loads(body)["status"])


def start_slow_upload(daemon: Daemon, image_id: str, total: int, first: int) -> socket.socket:
    """An upload that sends ``first`` bytes of ``total`` and then waits."""
    host, port = daemon.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Project-Id: {MEMBER_A['X-Project-Id']}\r\n"
                  f"X-Roles: member\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n").encode())
    sock.sendall(b"\1" * first)
    deadline = time.monotonic() + 10
    while image_status(daemon, image_id) != "saving":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return sock


def stray(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "images" / "fs" / ".incoming").iterdir())


def test_version_names_the_kernel_implementation() -> None:
    native = subprocess.run([PYTHON, "-m", "streamd", "--version"], capture_output=True, text=True, timeout=30)
    assert native.returncode == 0 and "native (Cython)" in native.stdout
    assert "kernels: native (Cython) for zeroscan, qcow2" in native.stdout
    forced = subprocess.run([PYTHON, "-m", "streamd", "--version"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "STREAMD_NO_EXTENSIONS": "1"})
    assert "python (forced by STREAMD_NO_EXTENSIONS)" in forced.stdout


def test_console_script_and_startup_log(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("streamd")
    assert script.exists(), "the streamd console script is installed by pip install -e ."
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("streamd ")
    daemon = start_daemon(tmp_path, env={"STREAMD_NO_EXTENSIONS": "1"})
    try:
        assert "kernels: python (forced by STREAMD_NO_EXTENSIONS) for zeroscan, qcow2" in daemon.log()
        # The twin does the same work: a thin-provisioned upload still round-trips.
        image_id = create_image(daemon)
        assert http(daemon, "PUT", f"/v2/images/{image_id}/file", bytes(100_000) + b"x",
                    {"Content-Type": "application/octet-stream"})[0] == 204
    finally:
        assert stop_daemon(daemon) == 0


def test_sigterm_lets_a_short_upload_finish(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "graceful_shutdown_timeout = 20\n")
    image_id = create_image(daemon)
    sock = start_slow_upload(daemon, image_id, 2_000_000, 1_000_000)
    daemon.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    sock.sendall(b"\1" * 1_000_000)
    reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 204"), reply
    sock.close()
    assert daemon.process.wait(30) == 0
    restarted = start_daemon(tmp_path)
    try:
        assert image_status(restarted, image_id) == "active"
    finally:
        stop_daemon(restarted)


def test_sigterm_aborts_a_stalled_upload_cleanly(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "graceful_shutdown_timeout = 1\n")
    image_id = create_image(daemon)
    sock = start_slow_upload(daemon, image_id, 50_000_000, 3_000_000)
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    assert time.monotonic() - started < 15
    sock.close()
    assert stray(daemon.data_dir) == []
    restarted = start_daemon(tmp_path)
    try:
        assert image_status(restarted, image_id) == "queued"
        assert "recovered" not in restarted.log()  # the abort was clean: nothing left to recover
    finally:
        stop_daemon(restarted)


def test_kill_9_mid_upload_is_recovered_at_next_start(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    image_id = create_image(daemon)
    sock = start_slow_upload(daemon, image_id, 50_000_000, 8_000_000)
    time.sleep(0.3)
    assert stray(daemon.data_dir) != []  # a partial file exists while the upload runs
    daemon.process.kill()
    daemon.process.wait()
    sock.close()
    restarted = start_daemon(tmp_path)
    try:
        assert image_status(restarted, image_id) == "queued"
        assert "recovered 1 interrupted upload" in restarted.log()
        assert stray(restarted.data_dir) == []
        assert not (restarted.data_dir / "images" / "fs" / image_id).exists()
        assert http(restarted, "PUT", f"/v2/images/{image_id}/file", b"whole",
                    {"Content-Type": "application/octet-stream"})[0] == 204
        assert image_status(restarted, image_id) == "active"
    finally:
        stop_daemon(restarted)


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "graceful_shutdown_timeout = 60\n")
    image_id = create_image(daemon)
    sock = start_slow_upload(daemon, image_id, 50_000_000, 1_000_000)
    daemon.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert daemon.process.poll() is None  # still waiting for the upload
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.process.wait(10) != 0
    sock.close()
