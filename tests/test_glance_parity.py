"""The real clients against streamd and against real Glance 33, on the same error paths.

The same sequence of ``glance`` CLI commands, ``openstack`` CLI commands and openstacksdk calls
(same image ids) runs against both servers; what each client prints for an error must be the same, and raw error responses must
be the same bytes. Glance 33 runs from ``.venv-glance`` (made by ``scripts/install.sh --test``)
under uWSGI, as in the benches (``bench/servers.py``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ROOT, start_daemon, stop_daemon


def _bench_servers() -> Any:
    """bench/servers.py, loaded by its path: bench/ on sys.path would shadow Ceph's ``rbd`` module
    with bench/rbd.py for every later test in the process."""
    spec = importlib.util.spec_from_file_location("streamd_bench_servers", ROOT / "bench" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Glance = _bench_servers().Glance

GLANCE_CLI = ROOT / ".venv" / "bin" / "glance"
OPENSTACK_CLI = ROOT / ".venv" / "bin" / "openstack"
SHARED = "11111111-2222-3333-4444-555555555555"
PRIVATE = "22222222-2222-3333-4444-555555555555"
QCOW = "33333333-2222-3333-4444-555555555555"
MISSING = "00000000-0000-0000-0000-000000000009"
PROPERTY_QUOTA = 3
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What requests reports when uWSGI drops a connection.
_DROPPED = re.compile(r"Connection aborted|Connection reset by peer|Remote end closed connection")


class QuotaGlance(Glance):  # type: ignore[misc, valid-type]
    """Glance 33 with the same property quota as the streamd it is compared with."""

    def prepare(self) -> list[str]:
        command = super().prepare()
        conf = self.workdir / "etc/glance-api.conf"
        conf.write_text(conf.read_text().replace("[DEFAULT]\n", f"[DEFAULT]\nimage_property_quota = {PROPERTY_QUOTA}\n", 1))
        return command


@contextlib.contextmanager
def glance_and_streamd(base: Path, *, glance_class: Any = Glance, extra_config: str = "") -> Iterator[dict[str, str]]:
    """Real Glance 33 (uWSGI, ``.venv-glance``, warmed up) and a streamd daemon, both under ``base``:
    ``{"glance": URL, "streamd": URL}``. The reference for every parity test."""
    venv = ROOT / ".venv-glance"
    if not (venv / "bin" / "uwsgi").exists():
        pytest.fail(f"{venv} is missing: run scripts/install.sh --test (it makes the Glance 33 venv)")
    (base / "streamd").mkdir()
    daemon = start_daemon(base / "streamd", extra_config=extra_config)
    try:
        with glance_class(base / "glance", venv) as glance:
            _warm_up(glance.url)
            yield {"glance": glance.url, "streamd": daemon.url}
    finally:
        stop_daemon(daemon)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with glance_and_streamd(tmp_path_factory.mktemp("parity"), glance_class=QuotaGlance,
                            extra_config=f"image_property_quota = {PROPERTY_QUOTA}\n") as both:
        yield both


def _warm_up(url: str) -> None:
    """uWSGI's workers may drop the very first requests while they finish loading: wait until
    several in a row are answered."""
    answered = 0
    deadline = time.monotonic() + 60
    while answered < 6:
        assert time.monotonic() < deadline, "Glance does not answer"
        try:
            answered = answered + 1 if _raw(url, "/v2/schemas/image", {})[0] == 200 else 0
        except OSError:
            answered = 0
            time.sleep(0.2)


def _glance(url: str, workdir: Path, *args: str, retry_resets: bool = False,
            setup: bool = False) -> tuple[int, str]:
    for attempt in range(12):
        # stdin closed, not empty: glanceclient uploads a non-tty stdin as image data.
        done = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(GLANCE_CLI), "--os-image-url", url,
                               "--os-auth-token", "x", *args], capture_output=True, text=True, timeout=60, cwd=workdir)
        # uWSGI's Glance workers sometimes reset a connection while they warm up (before the request is
        # handled): only for Glance, the command is run again.
        if not (retry_resets and _DROPPED.search(done.stderr)):
            break
        # Resets come in bursts while a uWSGI worker restarts: back off a little more each time.
        time.sleep(0.5 + 0.25 * attempt)
    if setup and attempt and "HTTP 409 Conflict" in done.stderr:
        return 0, ""  # the reset came after Glance had done it: the retry finds it done
    return done.returncode, done.stderr.strip()


def _openstack(url: str, workdir: Path, *args: str, retry_resets: bool = False) -> tuple[int, str]:
    """The ``openstack`` CLI (python-openstackclient) without Keystone: its ``none`` auth plugin
    with the image endpoint given. What it printed on both streams, the URL replaced."""
    for _ in range(5):
        done = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(OPENSTACK_CLI), "--os-auth-type", "none",
                               "--os-endpoint", url, "--os-image-api-version", "2", *args],
                              capture_output=True, text=True, timeout=60, cwd=workdir)
        if not (retry_resets and _DROPPED.search(done.stderr)):
            break
        time.sleep(0.5)
    printed = (done.stdout + done.stderr).replace(url, "URL").strip()
    return done.returncode, printed


def _raw(url: str, path: str, headers: dict[str, str]) -> tuple[int, str, str, bytes]:
    request = urllib.request.Request(url + path, headers={"Accept": "*/*", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.reason, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.reason, exc.headers.get("Content-Type", ""), exc.read()


def _scenario(url: str, workdir: Path, *, reference: bool) -> list[tuple[str, object]]:
    """Every step's outcome: (what, (exit code, what the CLI printed on stderr)) or raw replies."""
    small = workdir / "small.img"
    small.write_bytes(b"streamd and glance" * 10)
    raw_file = workdir / "raw.img"
    raw_file.write_bytes(b"\0" * 65536)
    g = lambda *args: _glance(url, workdir, *args, retry_resets=reference)  # noqa: E731
    prepare = lambda *args: _glance(url, workdir, *args, retry_resets=reference, setup=True)  # noqa: E731
    steps: list[tuple[str, object]] = []
    setup = [prepare("image-create", "--id", SHARED, "--name", "s", "--disk-format", "raw", "--container-format", "bare",
               "--visibility", "shared"),
             prepare("member-create", SHARED, "bbbb"),
             prepare("image-create", "--id", PRIVATE, "--name", "p", "--disk-format", "raw", "--container-format", "bare",
               "--visibility", "private"),
             prepare("image-upload", "--file", str(small), PRIVATE),
             prepare("image-create", "--id", QCOW, "--name", "q", "--disk-format", "qcow2", "--container-format", "bare")]
    assert [rc for rc, _ in setup] == [0] * len(setup), setup
    steps.append(("409 duplicate member", g("member-create", SHARED, "bbbb")))
    steps.append(("404 no such image", g("image-show", MISSING)))
    steps.append(("403 members of a private image", g("member-create", PRIVATE, "cccc")))
    steps.append(("409 upload to an active image", g("image-upload", "--file", str(small), PRIVATE)))
    steps.append(("409 duplicate image id", g("image-create", "--id", SHARED, "--disk-format", "raw",
                                              "--container-format", "bare")))
    steps.append(("413 property quota", g("image-update", SHARED, *[f"--property=p{n}=v" for n in range(5)])))
    steps.append(("404 no such tag", g("image-tag-delete", SHARED, "nosuchtag")))
    steps.append(("403 deactivate a queued image", g("image-deactivate", QCOW)))
    rc, printed = g("image-upload", "--file", str(raw_file), QCOW)
    # Glance says what mismatched in its words, streamd names the failed check: compare up to there.
    steps.append(("415 data that is not the declared format", (rc, printed.split(".:", 1)[0])))
    steps.append(("400 bad limit", _raw(url, "/v2/images?limit=abc", {})))
    steps.append(("416 range past the end", _raw(url, f"/v2/images/{PRIVATE}/file", {"Range": "bytes=1000-2000"})))
    steps.append(("404 json", _raw(url, f"/v2/images/{MISSING}", {"Accept": "application/json"})))
    steps.append(("404 plain", _raw(url, f"/v2/images/{MISSING}", {"Accept": "text/plain"})))
    steps.append(("sdk", _sdk(url, retry_resets=reference)))
    o = lambda *args: _openstack(url, workdir, *args, retry_resets=reference)  # noqa: E731
    steps.append(("openstack: 404 no such image", o("image", "show", MISSING)))
    steps.append(("openstack: 404 delete no such image", o("image", "delete", MISSING)))
    steps.append(("openstack: 409 duplicate member", o("image", "add", "project", SHARED, "bbbb")))
    steps.append(("openstack: 403 members of a private image", o("image", "add", "project", PRIVATE, "cccc")))
    steps.append(("openstack: 403 member list of a private image", o("image", "member", "list", PRIVATE)))
    steps.append(("openstack: 404 no such member", o("image", "remove", "project", SHARED, "zzzz")))
    steps.append(("openstack: 409 stage to an active image", o("image", "stage", "--file", str(small), PRIVATE)))
    steps.append(("openstack: 413 property quota",
                  o("image", "set", *[a for n in range(5) for a in ("--property", f"q{n}=v")], SHARED)))
    steps.append(("openstack: 404 no such tag", o("image", "unset", "--tag", "nosuchtag", SHARED)))
    steps.append(("openstack: 403 deactivate a queued image", o("image", "set", "--deactivate", QCOW)))
    steps.append(("openstack: 400 min_ram beyond 64 bits", o("image", "set", "--min-ram", "9" * 23, SHARED)))
    rc, printed = o("image", "create", "--disk-format", "qcow2", "--container-format", "bare", "--file", str(raw_file),
                    "not-qcow2")
    # A new image with a new id on each server.
    steps.append(("openstack: 415 data that is not the declared format", (rc, _UUID.sub("ID", printed))))
    steps.append(("openstack: 404 save no such image", o("image", "save", "--file", str(workdir / "out"), MISSING)))
    return steps


def _sdk(url: str, *, retry_resets: bool) -> list[str]:
    import keystoneauth1.exceptions
    import openstack
    import openstack.exceptions

    conn = openstack.connection.Connection(auth_type="none", auth={"endpoint": url}, image_endpoint_override=url,
                                           image_api_version="2")
    printed = []
    for call in (lambda: conn.image.get_image(MISSING),
                 lambda: conn.image.add_member(SHARED, member_id="bbbb"),
                 lambda: conn.image.add_member(PRIVATE, member_id="cccc")):
        for _ in range(5):
            try:
                call()
                printed.append("no error")
            except openstack.exceptions.SDKException as exc:
                printed.append(f"{type(exc).__name__}: {str(exc).replace(url, 'URL')}")
            except keystoneauth1.exceptions.ConnectFailure:
                if retry_resets:  # Glance's uWSGI warming up, as above
                    time.sleep(0.5)
                    continue
                raise
            break
    return printed


def test_clients_print_the_same_errors_for_both_servers(servers: dict[str, str], tmp_path: Path) -> None:
    for name in servers:
        (tmp_path / name).mkdir()
    # The two servers share nothing: both run the scenario at once, each in order.
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        futures = {name: pool.submit(_scenario, url, tmp_path / name, reference=name == "glance")
                   for name, url in servers.items()}
        outcomes = {name: future.result() for name, future in futures.items()}
    for (what, on_glance), (_, on_streamd) in zip(outcomes["glance"], outcomes["streamd"]):
        assert on_streamd == on_glance, what
    # Each error step failed, with the status and reason first, as scripts grep for them.
    assert len(outcomes["glance"]) == len(outcomes["streamd"])
    for what, outcome in outcomes["streamd"]:
        if what.startswith("openstack:"):
            # openstackclient prints its own words (or nothing) for most errors; the exit code still
            # tells scripts it failed — except `image set --deactivate`, which exits 0 on both servers.
            assert outcome[0] == (0 if "deactivate" in what else 1), (what, outcome)
        elif isinstance(outcome, tuple) and len(outcome) == 2:
            code = what.split()[0]
            assert outcome[0] == 1 and outcome[1].startswith(f"HTTP {code} "), (what, outcome)
