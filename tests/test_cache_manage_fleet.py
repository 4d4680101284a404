"""streamd-cache-manage for a fleet: one subcommand per verb with its own --help, another node's cache
managed over its HTTP cache API (--host/--port) in noauth and in keystone mode (the suite's Keystone),
human sizes and ages in the tables, and the progress bar of queue-image --now (its rendering, no bar
off a terminal, a bar under a real pty). Real daemons and the real command; the real
glance-cache-manage reads the same node for the shape of its listing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ADMIN, MEMBER_A, Daemon, free_port, start_daemon, stop_daemon
from keystone import Keystone, keystone
from streamd.cache_manage import human_age, human_size, progress_bar, render

MANAGE = str(Path(sys.executable).with_name("streamd-cache-manage"))
GLANCE_CACHE_MANAGE = Path(__file__).resolve().parent.parent / ".venv-glance" / "bin" / "glance-cache-manage"
MiB = 1 << 20
NO_PREFETCH = "cache_prefetcher_interval = 0\nimage_cache_maintenance_interval = 0\n"
# Every read of the file store 0.1 s slower, in the daemon's process (as tests/test_cache_admin.py).
SLOW_STORE = """
import os, time
_delay = float(os.environ.get("STREAMD_TEST_STORE_READ_DELAY") or 0)
if _delay:
    from streamd.stores import file as _file
    _read = _file.FileReader.read

    def _slow_read(self, offset, length):
        time.sleep(_delay)
        return _read(self, offset, length)

    _file.FileReader.read = _slow_read
"""


def payload(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(size)


def http(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def upload(daemon: Daemon, data: bytes, who: dict[str, str]) -> str:
    status, body = http(daemon, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare"}).encode(), {"Content-Type": "application/json", **who})
    assert status == 201, body
    image_id = str(json.loads(body)["id"])
    status, body = http(daemon, "PUT", f"/v2/images/{image_id}/file", data,
                        {"Content-Type": "application/octet-stream", **who})
    assert status == 204, body
    return image_id


def cache_state(daemon: Daemon, who: dict[str, str] = ADMIN) -> dict[str, Any]:
    status, body = http(daemon, "GET", "/v2/cache", headers=who)
    assert status == 200, body
    state: dict[str, Any] = json.loads(body)
    return state


def port_of(daemon: Daemon) -> str:
    return daemon.url.rsplit(":", 1)[1]


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # No OS_* of the caller's environment: each test says what it authenticates with.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return subprocess.run([MANAGE, *args], capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


def ok(*args: str) -> str:
    result = manage(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path, NO_PREFETCH)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


# -- the command line ---------------------------------------------------------------------------------

def test_every_verb_has_its_own_help_and_options_go_before_or_after_it(tmp_path: Path) -> None:
    top = ok("--help")
    for verb in ("list-cached", "list-queued", "queue-image", "delete-cached-image", "delete-all-cached-images",
                 "delete-queued-image", "delete-all-queued-images", "prune", "clean", "verify", "stats"):
        assert verb in top
        own = ok(verb, "--help")
        assert own.startswith(f"usage: streamd-cache-manage {verb}"), own
        assert "--host" in own and "--os-auth-token" in own and "--json" in own
        assert ("IMAGE_ID" in own) == (verb in ("queue-image", "delete-cached-image", "delete-queued-image",
                                                "verify"))
        assert bool(re.search(r"^  --now ", own, re.M)) == (verb == "queue-image")
        # glance-cache-manage's `help VERB`, and options before the verb.
        assert ok("help", verb) == own
        assert ok("--json", verb, "--help") == own
    assert "--host" in top and "-p PORT, --port PORT" in top
    # Usage errors name the verb's own usage.
    wrong = manage("list-queued", "11111111-2222-3333-4444-555555555555")
    assert wrong.returncode == 2 and "usage: streamd-cache-manage list-queued" in wrong.stderr
    missing = manage("delete-cached-image")
    assert missing.returncode == 2 and "IMAGE_ID" in missing.stderr
    bogus = manage("--host", "127.0.0.1", "bogus")
    assert bogus.returncode == 2 and "invalid choice" in bogus.stderr
    # What only the admin socket serves, and two daemons named at once.
    for args in (["--host", "127.0.0.1", "stats"],
                 ["verify", "--port", "9292", "11111111-2222-3333-4444-555555555555"]):
        refused = manage(*args)
        assert refused.returncode == 2 and "admin socket only" in refused.stderr
    both = manage("--socket", str(tmp_path / "s"), "--host", "127.0.0.1", "list-cached")
    assert both.returncode == 2 and "two different daemons" in both.stderr


def test_sizes_ages_and_the_progress_bar_render_for_people() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 100_001, 5 * MiB + MiB // 2, 3 << 30, 1 << 50)] == \
        ["0 B", "1023 B", "1.0 KiB", "97.7 KiB", "5.5 MiB", "3.0 GiB", "1.0 PiB"]
    now = 1_800_000_000.0
    assert [human_age(now - s, now) for s in (1, 7, 60, 119, 3 * 60 + 5, 3600, 2 * 86400, 8 * 86400, 400 * 86400)] \
        == ["just now", "7 seconds ago", "1 minute ago", "1 minute ago", "3 minutes ago", "1 hour ago",
            "2 days ago", "1 week ago", "1 year ago"]
    assert human_age(0, now) == "never" and human_age(now + 10, now) == "in the future"
    assert progress_bar(0, 10 * MiB, width=10) == "[..........]   0%  0 B/10.0 MiB"
    assert progress_bar(5 * MiB, 10 * MiB, width=10) == "[#####.....]  50%  5.0 MiB/10.0 MiB"
    assert progress_bar(10 * MiB, 10 * MiB, width=10, elapsed=3.2) == "[##########] 100%  10.0 MiB/10.0 MiB  3s"
    assert progress_bar(0, None, width=4) == "[????] waiting"
    entry = {"image_id": "i" * 36, "size": 3 * MiB, "hits": 4, "last_accessed": now - 180, "last_modified": now - 7200}
    table = render("list-cached", [entry], now=now)
    lines = table.splitlines()
    assert lines[0] == "Found 1 cached image(s)."
    assert "3.0 MiB (3145728)" in table and "(3 minutes ago)" in table and "(2 hours ago)" in table
    assert lines[-1] == "3.0 MiB (3145728 bytes) in all."
    never = render("list-cached", [{**entry, "last_accessed": 0}], now=now)
    assert "| N/A " in never
    # Queued over HTTP: ids only, no time column.
    assert "Queued At" not in render("list-queued", [{"image_id": "x", "queued_at": None}])
    assert "(1 minute ago)" in render("list-queued", [{"image_id": "x", "queued_at": now - 60}], now=now)


# -- another node, over HTTP ---------------------------------------------------------------------------

def test_a_noauth_node_managed_with_host_and_port(node: Daemon) -> None:
    where = ["--host", "127.0.0.1", "--port", port_of(node)]
    a, b = upload(node, payload(300_000, 1), MEMBER_A), upload(node, payload(2 * MiB, 2), MEMBER_A)
    assert ok(*where, "list-cached").strip() == "No cached images."
    assert ok("list-queued", *where).strip() == "No queued images."
    # queue-image --now: cached when the command returns; the plain one leaves the node to it.
    assert ok(*where, "queue-image", "--now", a).strip() == "queued: True, cached: True"
    assert {e["image_id"] for e in cache_state(node)["cached_images"]} == {a}
    assert (node.data_dir / "cache" / a).read_bytes() == payload(300_000, 1)
    listing = ok(*where, "list-cached")
    assert listing.startswith("Found 1 cached image(s).") and a in listing
    assert "293.0 KiB (300000)" in listing and re.search(r"\((just now|\d+ seconds? ago)\)", listing)
    answer = json.loads(ok("--json", *where, "list-cached"))
    assert answer["ok"] is True
    [raw] = answer["result"]
    assert raw["image_id"] == a and raw["size"] == 300_000 and raw["hits"] == 0
    assert isinstance(raw["last_modified"], float) and raw["last_modified"] > time.time() - 120
    # --host as a URL, and glance-cache-manage's short options.
    assert a in ok("-H", node.url, "list-cached")
    assert a in ok("-H", "127.0.0.1", "-p", port_of(node), "list-cached")

    # Deletions: exact ones, counted, refused when there is nothing.
    refused = manage(*where, "delete-queued-image", b)
    assert refused.returncode == 1 and "not queued" in refused.stderr
    assert ok(*where, "delete-cached-image", a, "--force").strip() == "deleted: 1"
    assert cache_state(node)["cached_images"] == []
    again = manage(*where, "--json", "delete-cached-image", a)
    assert again.returncode == 1
    assert json.loads(again.stdout) == {"ok": False, "status": 404, "error": f"Image {a} is not cached"}
    assert ok(*where, "queue-image", "--now", a, b).splitlines() == ["queued: True, cached: True"] * 2
    assert ok(*where, "delete-all-cached-images", "-f").strip() == "deleted: 2"
    assert cache_state(node) == {"cached_images": [], "queued_images": []}
    assert json.loads(ok(*where, "--json", "prune")) == {"ok": True, "result": {"files_pruned": 0, "bytes_pruned": 0}}
    assert json.loads(ok(*where, "--json", "clean")) == {"ok": True, "result": {"files_cleaned": 0}}
    # A non-active image: the node's reason, exit 1.
    status, body = http(node, "POST", "/v2/images", json.dumps({"disk_format": "raw", "container_format": "bare"})
                        .encode(), {"Content-Type": "application/json", **MEMBER_A})
    queued_only = json.loads(body)["id"]
    refused = manage(*where, "queue-image", queued_only)
    assert refused.returncode == 1 and "Only images with status active" in refused.stderr

    # noauth identity headers: a member is refused the cache (Glance's admin-only rules).
    member = manage(*where, "--os-roles", "member,reader", "--os-project-id", MEMBER_A["X-Project-Id"],
                    "list-cached")
    assert member.returncode == 1 and "Not authorized" in member.stderr
    # Nobody answering: exit 3.
    gone = manage("--host", "127.0.0.1", "--port", str(free_port()), "list-cached")
    assert gone.returncode == 3 and "cannot reach the node" in gone.stderr


def test_a_node_without_a_cache_says_so(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "image_cache_dir = none\n")
    try:
        result = manage("--host", "127.0.0.1", "--port", port_of(daemon), "list-cached")
        assert result.returncode == 1 and "not enabled" in result.stderr
    finally:
        stop_daemon(daemon)


@pytest.fixture(scope="module")
def ks() -> Keystone:
    return keystone()


def test_a_keystone_node_managed_with_a_token_or_credentials(tmp_path: Path, ks: Keystone) -> None:
    authtoken = "".join(f"{k} = {v}\n" for k, v in ks.authtoken_options().items())
    daemon = start_daemon(tmp_path, f"auth_strategy = keystone\n{NO_PREFETCH}[keystone_authtoken]\n{authtoken}")
    try:
        where = ["--host", "127.0.0.1", "--port", port_of(daemon)]
        image_id = upload(daemon, payload(70_000, 3), {"X-Auth-Token": ks.token("a-member")})
        admin = ks.users["a-admin"]
        credentials = ["--os-username", admin.name, "--os-password", admin.password,
                       "--os-project-name", admin.project_name, "--os-auth-url", ks.url.removesuffix("/v3")]
        # A token Keystone issues for the credentials (/v3 added to the URL as glance-cache-manage does).
        assert ok(*where, *credentials, "queue-image", "--now", image_id).strip() == "queued: True, cached: True"
        assert image_id in ok(*where, *credentials, "list-cached")
        # The same from the environment, as glance-cache-manage's defaults.
        env = {"OS_USERNAME": admin.name, "OS_PASSWORD": admin.password, "OS_PROJECT_NAME": admin.project_name,
               "OS_AUTH_URL": ks.url}
        from_env = manage(*where, "--json", "list-cached", env=env)
        assert from_env.returncode == 0, from_env.stderr
        assert [e["image_id"] for e in json.loads(from_env.stdout)["result"]] == [image_id]
        # A token given as is; a member's is refused; none at all is a 401; a wrong password never gets one.
        assert image_id in ok(*where, "--os-auth-token", ks.token("a-admin"), "list-cached")
        member = manage(*where, "--os-auth-token", ks.token("a-member"), "list-cached")
        assert member.returncode == 1 and "Not authorized" in member.stderr
        anonymous = manage(*where, "list-cached")
        assert anonymous.returncode == 1 and "401" in anonymous.stderr
        wrong = manage(*where, *credentials[:2], "--os-password", "not-it", *credentials[4:], "list-cached")
        assert wrong.returncode == 1 and "refused the credentials" in wrong.stderr
        assert ok(*where, *credentials, "delete-cached-image", "-f", image_id).strip() == "deleted: 1"
        assert cache_state(daemon, {"X-Auth-Token": ks.token("a-admin")})["cached_images"] == []
    finally:
        stop_daemon(daemon)


def test_list_cached_has_the_shape_of_glance_cache_manage(node: Daemon) -> None:
    """The real glance-cache-manage (Glance 33) reads the node's legacy cache routes; both tables have
    the same columns in the same order, and the same images. (Glance 33 itself cannot be asked here:
    the reference server's pipeline has no cachemanage middleware, which glance-cache-manage needs.)
    glance-cache-manage always adds /v3 to --os-auth-url and so always wants Keystone credentials unless
    it is given a token: a noauth node ignores the token it sends."""
    assert GLANCE_CACHE_MANAGE.exists()
    image_id = upload(node, payload(5000, 4), MEMBER_A)
    assert ok("--host", "127.0.0.1", "--port", port_of(node), "queue-image", "--now", image_id)
    theirs = subprocess.run([str(GLANCE_CACHE_MANAGE), "--host", "127.0.0.1", "--port", port_of(node),
                             "--os-auth-token", "ignored-by-noauth", "list-cached"],
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    ours = ok("--host", "127.0.0.1", "--port", port_of(node), "list-cached")

    def columns(text: str) -> list[str]:
        lines = text.splitlines()
        header = lines[next(i for i, line in enumerate(lines) if line.startswith("+-")) + 1]
        return [c.strip() for c in header.strip("|").split("|")]

    assert columns(theirs.stdout) == columns(ours) == ["ID", "Last Accessed (UTC)", "Last Modified (UTC)", "Size",
                                                       "Hits"]
    assert image_id in theirs.stdout and "5000" in theirs.stdout and "(5000)" in ours


# -- the progress bar --------------------------------------------------------------------------------

def slow_node(tmp_path: Path) -> Daemon:
    hooks = tmp_path / "slowstore"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_STORE)
    return start_daemon(tmp_path, NO_PREFETCH, env={"PYTHONPATH": f"{hooks}:{os.environ.get('PYTHONPATH', '')}",
                                                    "STREAMD_TEST_STORE_READ_DELAY": "0.1"})


def test_queue_image_now_draws_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    daemon = slow_node(tmp_path)
    try:
        sock = str(daemon.data_dir / "run" / "admin.sock")
        first, second = (upload(daemon, payload(8 * MiB + n, 5 + n), MEMBER_A) for n in range(2))
        # Not a terminal: the one answer line, no bar.
        plain = manage("--socket", sock, "queue-image", "--now", first)
        assert plain.returncode == 0 and plain.stdout == "queued: True, cached: True\n"
        # A real terminal: the bar is redrawn in place as the fill goes, and ends at 100%.
        leader, follower = pty.openpty()
        process = subprocess.Popen([MANAGE, "--socket", sock, "queue-image", "--now", second],
                                   stdin=follower, stdout=follower, stderr=follower)
        os.close(follower)
        output = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the other end closed (EIO on Linux)
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        os.close(leader)
        assert process.wait(10) == 0, output
        text = output.decode()
        frames = [f for f in re.split(r"[\r\n]", text) if f.startswith(second)]
        assert len(frames) >= 3, text
        percents = [int(m) for m in re.findall(r"\]\s+(\d+)%", text)]
        assert percents == sorted(percents) and percents[-1] == 100 and percents[0] < 100, text
        assert "8.0 MiB/8.0 MiB" in text and "queued: True, cached: True" in text
        assert (daemon.data_dir / "cache" / second).read_bytes() == payload(8 * MiB + 1, 6)
    finally:
        stop_daemon(daemon)
