"""The daemon under systemd: sd_notify readiness to a $NOTIFY_SOCKET the test binds (READY=1 once the
port answers, RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 on SIGTERM), the SIGHUP re-read
of the configuration (another policy file changes an answer; a restart-only change is logged and
not applied; a broken file changes nothing), and the unit file itself.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ADMIN, MEMBER_A, PYTHON, free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "etc" / "systemd" / "streamd.service"


class Notifications:
    """The datagram socket systemd would listen on."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path

    def next(self, timeout: float = 30.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def pending(self) -> list[dict[str, str]]:
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(4096).decode()
                messages.append(dict(line.split("=", 1) for line in data.splitlines()))
        except BlockingIOError:
            return messages
        finally:
            self.sock.setblocking(True)


def get(url: str, who: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=who), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify.sock")
    try:
        yield n
    finally:
        n.sock.close()


def write_config(path: Path, port: int, data: Path, policy: str, extra: str = "") -> None:
    path.write_text(f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {port}\ndata_dir = {data}\n{extra}\n"
                    f"[oslo_policy]\npolicy_file = {policy}\n")


def test_ready_reload_and_stopping_reach_notify_socket(tmp_path: Path, notifications: Notifications) -> None:
    open_policy, closed_policy = tmp_path / "open.yaml", tmp_path / "closed.yaml"
    open_policy.write_text("{}\n")
    closed_policy.write_text(json.dumps({"get_images": "role:admin"}) + "\n")
    port = free_port()
    config = tmp_path / "streamd.conf"
    write_config(config, port, tmp_path / "data", "open.yaml")  # relative: beside the configuration
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([PYTHON, "-m", "streamd", "serve", "--config", str(config)], stdout=log_file,
                                   stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env={**os.environ, "NOTIFY_SOCKET": str(notifications.path)})
    url = f"http://127.0.0.1:{port}"
    try:
        ready = notifications.next()
        # The moment READY=1 arrives the port answers: no retry here.
        assert get(url + "/v2/images", MEMBER_A) == 200
        assert ready["READY"] == "1" and ready["MAINPID"] == str(process.pid)
        assert ready["STATUS"] == f"listening on 127.0.0.1:{port}"

        # SIGHUP with another policy file (and a cache limit, and an option that needs a restart).
        write_config(config, port + 1, tmp_path / "data", "closed.yaml", "image_cache_max_size = 1000000\n")
        process.send_signal(signal.SIGHUP)
        reloading = notifications.next()
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert notifications.next() == {"READY": "1"}
        assert get(url + "/v2/images", MEMBER_A) == 403
        assert get(url + "/v2/images", ADMIN) == 200
        log = log_path.read_text()
        assert "applied: DEFAULT.image_cache_max_size, oslo_policy.policy_file" in log
        assert "needs a restart to take effect: DEFAULT.bind_port" in log
        # A broken file: logged, nothing changes, READY again.
        (tmp_path / "closed.yaml").write_text("get_images: [unclosed\n")
        write_config(config, port, tmp_path / "data", "gone.yaml")
        process.send_signal(signal.SIGHUP)
        assert notifications.next()["RELOADING"] == "1"
        assert notifications.next() == {"READY": "1"}
        assert "not applied, the configuration in force stays" in log_path.read_text()
        assert process.poll() is None
        # Back to the open file: the restart-only change is no longer reported, the policy opens again.
        write_config(config, port, tmp_path / "data", "open.yaml", "image_cache_max_size = 1000000\n")
        process.send_signal(signal.SIGHUP)
        notifications.next(), notifications.next()
        assert get(url + "/v2/images", MEMBER_A) == 200
        last = log_path.read_text().rsplit("SIGHUP:", 1)[-1]
        assert "applied: oslo_policy.policy_file" in last and "needs a restart" not in last

        process.send_signal(signal.SIGTERM)
        assert notifications.next() == {"STOPPING": "1"}
        assert process.wait(30) == 0
        assert notifications.pending() == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_no_notify_socket_no_notification_and_an_unreachable_one_is_no_failure(tmp_path: Path) -> None:
    from streamd import systemd

    saved = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        assert systemd.notify("READY=1") is False
        os.environ["NOTIFY_SOCKET"] = str(tmp_path / "nobody.sock")
        assert systemd.notify("READY=1") is False
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"streamd-test-{os.getpid()}-{time.monotonic_ns()}"
        abstract.bind("\0" + name)
        try:
            os.environ["NOTIFY_SOCKET"] = "@" + name
            assert systemd.notify("STOPPING=1") is True
            assert abstract.recv(100) == b"STOPPING=1"
        finally:
            abstract.close()
    finally:
        os.environ.pop("NOTIFY_SOCKET", None)
        if saved is not None:
            os.environ["NOTIFY_SOCKET"] = saved


def test_the_unit_is_type_notify_and_reloads_with_sighup(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].split()[1:] == ["serve", "--config", "/etc/streamd/streamd.conf"]
    assert service["NotifyAccess"] == "main"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # where it is not installed, the checks above are what there is
        # The unit as installed, with the streamd of this venv where a package puts /usr/bin/streamd.
        copy = tmp_path / "streamd.service"
        copy.write_text(UNIT.read_text().replace("/usr/bin/streamd", str(Path(PYTHON).with_name("streamd"))))
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "streamd.service" not in result.stderr, result.stderr
        # And it can fail: a misspelt directive.
        copy.write_text(copy.read_text().replace("Type=notify", "Tpye=notify"))
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert "Tpye" in result.stderr, result.stderr


def _protections(path: Path, create_roles: str) -> None:
    path.write_text(f"[^x_.*]\ncreate = {create_roles}\nread = @\nupdate = {create_roles}\ndelete = {create_roles}\n"
                    "[.*]\ncreate = @\nread = @\nupdate = @\ndelete = @\n")


async def test_a_reload_rereads_protections_and_cache_limits_and_names_the_rest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from streamd import systemd
    from streamd.config import load_config
    from streamd.context import RequestContext
    from streamd.services import open_services

    member = RequestContext(project_id="a" * 32, user_id="u", roles=frozenset({"member"}))
    rules = tmp_path / "protections.conf"
    _protections(rules, "admin")
    conf = tmp_path / "streamd.conf"

    def write(extra: str, protected: bool = True) -> None:
        conf.write_text(f"[DEFAULT]\ndata_dir = {tmp_path / 'data'}\nmetadefs_initial_load = false\n"
                        + ("property_protection_file = protections.conf\n" if protected else "") + extra)

    write("image_cache_max_size = 1000000\n")
    config = load_config(conf)
    async with open_services(config) as services:
        assert services.protections is not None and services.cache is not None
        assert not services.protections.allows(member, "x_owner", "create")
        # The file's new rules, a new cache limit and stall time, and two restart-only changes.
        _protections(rules, "admin,member")
        write("image_cache_max_size = 2000000\nimage_cache_stall_time = 60\nbind_port = 9393\n"
              "api_limit_max = 500\n")
        with caplog.at_level("INFO", logger="streamd"):
            report, in_force = systemd.reload(services, config)
        assert services.protections.allows(member, "x_owner", "create")
        assert (services.cache.max_size, services.cache.stall_time) == (2_000_000, 60)
        assert report.applied == ["DEFAULT.image_cache_max_size", "DEFAULT.image_cache_stall_time",
                                  "property protection rules re-read"]
        assert report.need_restart == ["DEFAULT.bind_port", "DEFAULT.api_limit_max"]
        assert in_force.default.image_cache_max_size == 2_000_000 and in_force.default.bind_port == 9292
        assert "needs a restart to take effect: DEFAULT.bind_port, DEFAULT.api_limit_max" in caplog.text
        # A protection file that no longer parses: nothing changes.
        rules.write_text("[^x_.*\ncreate = member\n")
        report, still = systemd.reload(services, in_force)
        assert report.error is not None and still is in_force
        assert services.protections.allows(member, "x_owner", "create")
        assert services.cache.max_size == 2_000_000
        # Turning protections off needs a restart (the routes keep the object they were built with).
        _protections(rules, "admin")
        write("image_cache_max_size = 2000000\nimage_cache_stall_time = 60\n", protected=False)
        report, _ = systemd.reload(services, in_force)
        assert report.need_restart == ["DEFAULT.property_protection_file"]
        assert services.protections.allows(member, "x_owner", "create")
