"""/healthcheck as oslo.middleware's healthcheck answers it, with streamd's real checks behind it.

Against the real daemon: draining by file, a file store whose filesystem went away (marker and
mount-point checks: 503, uploads refused, nothing written underneath), the RBD store on the real
Ceph cluster reachable and misconfigured. The bodies are compared with oslo.middleware's own
renderers (installed with Glance 33 in .venv-glance) for the same results.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ADMIN, MEMBER_A, ROOT, Daemon, start_daemon, stop_daemon
from streamd.api.health import render_html, render_json, render_text
from streamd.config import load_config
from streamd.errors import ConfigError
from streamd.health import HealthResult

GLANCE_PYTHON = ROOT / ".venv-glance" / "bin" / "python"


def call(daemon: Daemon, path: str = "/healthcheck", method: str = "GET", data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def health(daemon: Daemon, accept: str | None = None, **kw: str) -> tuple[int, str]:
    headers = {"Accept": accept} if accept else {}
    headers.update(kw)
    status, _, body = call(daemon, headers=headers)
    return status, body.decode()


def upload(daemon: Daemon, store: str, data: bytes = b"x" * 100_000) -> tuple[str, int, bytes]:
    status, _, body = call(daemon, "/v2/images", "POST", json.dumps(
        {"name": "i", "disk_format": "raw", "container_format": "bare"}).encode(),
        {**MEMBER_A, "Content-Type": "application/json"})
    assert status == 201, body
    image_id = json.loads(body)["id"]
    status, _, body = call(daemon, f"/v2/images/{image_id}/file", "PUT", data,
                           {**MEMBER_A, "Content-Type": "application/octet-stream", "X-Image-Meta-Store": store})
    return image_id, status, body


@pytest.fixture
def drained_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    drain = tmp_path / "healthcheck_disable"
    d = start_daemon(tmp_path, f"[healthcheck]\ndisable_by_file_path = {drain}\ndetailed = true\n")
    try:
        yield d, drain
    finally:
        stop_daemon(d)


def test_draining_by_file_turns_the_check_to_503_and_back(drained_daemon: tuple[Daemon, Path]) -> None:
    daemon, drain = drained_daemon
    status, headers, body = call(daemon)
    assert (status, headers["Content-Type"]) == (200, "text/plain; charset=UTF-8")
    # disable_by_file, the catalogue, the store fs, staging, cache: one line each.
    assert body.decode().split("\n") == ["OK"] * 5
    assert call(daemon, method="HEAD")[0] == 204

    drain.touch()
    status, body_text = health(daemon)
    assert status == 503
    assert body_text.split("\n") == ["DISABLED BY FILE"] + ["OK"] * 4
    assert call(daemon, method="HEAD")[:1] == (503,)
    # (noauth callers without X-Roles are admins: they would get the details)
    assert json.loads(health(daemon, "application/json", **MEMBER_A)[1]) == {
        "detailed": False, "reasons": ["DISABLED BY FILE", "OK", "OK", "OK", "OK"]}

    drain.unlink()
    assert health(daemon)[0] == 200
    # Only the transitions are logged, however often the balancer asks.
    assert daemon.log().count("health check fails: DISABLED BY FILE") == 1
    assert daemon.log().count("health check passes again: DISABLED BY FILE") == 1


def test_detailed_output_is_for_admins_only(drained_daemon: tuple[Daemon, Path]) -> None:
    daemon, drain = drained_daemon
    plain = json.loads(health(daemon, "application/json", **{"X-Roles": "reader", "X-Project-Id": "p"})[1])
    assert plain == {"detailed": False, "reasons": ["OK"] * 5}
    detailed = json.loads(health(daemon, "application/json", **ADMIN)[1])
    assert detailed["detailed"] is True
    assert {"python_version", "now", "platform", "gc", "threads", "greenthreads"} <= set(detailed)
    details = [r["details"] for r in detailed["reasons"]]
    assert details[0] == f"Path '{drain}' was not found"
    assert details[1] == "catalogue answers"
    assert details[2].startswith("file store fs: ") and "writable and readable" in details[2] and "free" in details[2]
    status, html = health(daemon, "text/html", **ADMIN)
    assert status == 200 and "<H1>Server status</H1>" in html and "catalogue answers" in html
    status, html = health(daemon, "text/html", **{"X-Roles": "member", "X-Project-Id": "p"})
    assert "<H1>Server status</H1>" not in html and "catalogue answers" not in html


def test_a_file_store_whose_filesystem_went_away_is_read_only(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / ".marker").touch()
    d = start_daemon(tmp_path, "enabled_backends = fs:file,nfs:file\n"
                               f"[nfs]\nfilesystem_store_datadir = {share}\nfilesystem_store_mount_check = marker\n")
    try:
        assert health(d)[0] == 200
        kept, status, _ = upload(d, "nfs")
        assert status == 204

        # The share is unmounted: the directory is there, empty, on the local disk.
        share.rename(tmp_path / "share.mounted")
        share.mkdir()
        status, text = health(d)
        assert status == 503 and "STORE nfs UNAVAILABLE" in text.split("\n")
        for _ in range(2):
            image_id, status, body = upload(d, "nfs")
            assert status == 503, body
            assert b"read-only" in body
        assert list(share.iterdir()) == []  # nothing written underneath
        # The other store and the rest of the node go on.
        _, status, _ = upload(d, "fs")
        assert status == 204
        # The store says it once (each refused request is logged by the edge as any 5xx).
        assert d.log().count("nothing is written until it is mounted") == 1
        # Nor is the image deleted: its data is on the share, out of reach now.
        assert call(d, f"/v2/images/{kept}", "DELETE", headers=MEMBER_A)[0] == 503
        assert call(d, f"/v2/images/{kept}", headers=MEMBER_A)[0] == 200

        share.rmdir()
        (tmp_path / "share.mounted").rename(share)
        assert health(d)[0] == 200
        _, status, _ = upload(d, "nfs")
        assert status == 204
        assert "file store nfs is writable again" in d.log()
        assert call(d, f"/v2/images/{kept}", "DELETE", headers=MEMBER_A)[0] == 204
        assert not (share / kept).exists()
    finally:
        stop_daemon(d)


def test_a_store_directory_that_is_not_a_mount_point_is_never_written(tmp_path: Path) -> None:
    local = tmp_path / "not-mounted"
    local.mkdir()
    d = start_daemon(tmp_path, "enabled_backends = fs:file,nfs:file\n"
                               f"[nfs]\nfilesystem_store_datadir = {local}\nfilesystem_store_mount_check = mountpoint\n"
                               "[healthcheck]\ndetailed = true\n")
    try:
        status, text = health(d, "application/json", **ADMIN)
        assert status == 503
        reasons = {r["reason"]: r["details"] for r in json.loads(text)["reasons"]}
        assert "is not a mount point" in reasons["STORE nfs UNAVAILABLE"]
        assert upload(d, "nfs")[1] == 503
        assert list(local.iterdir()) == []  # not even the .incoming directory
    finally:
        stop_daemon(d)


def test_free_space_below_the_threshold_is_unhealthy(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "[healthcheck]\nmin_free_space = 1000000TB\n")
    try:
        status, text = health(d)
        assert status == 503
        assert {"STORE fs LOW ON SPACE", "STAGING LOW ON SPACE", "CACHE LOW ON SPACE"} <= set(text.split("\n"))
    finally:
        stop_daemon(d)


def test_the_check_answers_on_its_path_only_to_whom_it_should(tmp_path: Path) -> None:
    enabled = tmp_path / "enabled"
    d = start_daemon(tmp_path, "[healthcheck]\npath = /lb-health\nbackends = enable_by_files\n"
                               f"enable_by_file_paths = {enabled}\nignore_proxied_requests = true\n")
    try:
        status, _, body = call(d, "/lb-health")
        assert (status, body.decode().split("\n")[0]) == (503, "FILE PATH MISSING")
        enabled.touch()
        assert call(d, "/lb-health")[0] == 200
        assert call(d, "/healthcheck")[0] == 404
        assert call(d, "/lb-health", headers={"X-Forwarded-For": "10.1.1.1"})[0] == 404
    finally:
        stop_daemon(d)
    (tmp_path / "ranges").mkdir()
    d = start_daemon(tmp_path / "ranges", "[healthcheck]\nallowed_source_ranges = 10.0.0.0/8\n")
    try:
        assert call(d)[0] == 404
    finally:
        stop_daemon(d)


def test_healthcheck_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        load_config(None, overrides={"healthcheck": {"backends": "nope"}})
    with pytest.raises(ConfigError, match="should not be enabled at the same time"):
        load_config(None, overrides={"healthcheck": {"backends": "disable_by_file,enable_by_files"}})
    with pytest.raises(ConfigError, match="not port:path"):
        load_config(None, overrides={"healthcheck": {"disable_by_file_paths": "/x"}})


# -- the same bodies as oslo.middleware's --------------------------------------------------------

OSLO_RENDER = """
import json, sys
from oslo_middleware.healthcheck import Healthcheck
from oslo_middleware.healthcheck.pluginbase import HealthcheckResult
results = [HealthcheckResult(r["available"], r["reason"], r["details"]) for r in json.load(sys.stdin)]
app = Healthcheck.app_factory({}, backends="")
healthy = all(r.available for r in results)
print(json.dumps({"text": app._make_text_response(results, healthy)[0],
                  "json": app._make_json_response(results, healthy)[0],
                  "html": app._make_html_response(results, healthy)[0]}))
"""


@pytest.mark.parametrize("results", [
    [HealthResult(True, "OK", "Path '/x' was not found")],
    [HealthResult(False, "DISABLED BY FILE", "d"), HealthResult(True, "OK", "<b>&'\"</b>"),
     HealthResult(False, "STORE nfs UNAVAILABLE", "gone"), HealthResult(True, "", "")],
    [],
])
def test_bodies_are_oslo_middlewares(results: list[HealthResult]) -> None:
    stdin = json.dumps([{"available": r.available, "reason": r.reason, "details": r.details} for r in results])
    done = subprocess.run([str(GLANCE_PYTHON), "-c", OSLO_RENDER], input=stdin, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    oslo = json.loads(done.stdout)
    assert render_text(results) == oslo["text"]
    assert render_json(results, detailed=False) == oslo["json"]
    assert render_html(results, detailed=False) == oslo["html"]


# -- the RBD store, on the real Ceph cluster ---------------------------------------------------

def rbd_daemon(tmp_path: Path, pool: str | None = None, conf: str | None = None, extra: str = "") -> Daemon:
    for name in ("CEPH_CONF", "CEPH_POOL"):
        if not os.environ.get(name):
            pytest.fail(f"{name} not set: run the suite with scripts/test.sh, which starts a Ceph cluster")
    return start_daemon(tmp_path, (
        "enabled_backends = fs:file,ceph:rbd\n[ceph]\n"
        f"rbd_store_ceph_conf = {conf or os.environ['CEPH_CONF']}\nrbd_store_user = admin\n"
        f"rbd_store_pool = {pool or os.environ['CEPH_POOL']}\nrados_connect_timeout = 2\n"
        "[healthcheck]\ndetailed = true\n" + extra))


def reasons(daemon: Daemon) -> tuple[int, dict[str, str]]:
    """The status, and the details by reason (of the OK results: by details, to keep them all)."""
    status, text = health(daemon, "application/json", **ADMIN)
    return status, {r["reason"] if r["reason"] != "OK" else r["details"]: r["details"]
                    for r in json.loads(text)["reasons"]}


def test_a_reachable_rbd_store_is_healthy(tmp_path: Path) -> None:
    d = rbd_daemon(tmp_path)
    try:
        status, found = reasons(d)
        assert status == 200, found
        ceph = [v for v in found.values() if v.startswith("RBD store ceph")]
        assert ceph and f"pool {os.environ['CEPH_POOL']} writable and readable" in ceph[0] and "free" in ceph[0]
        assert upload(d, "ceph")[1] == 204
    finally:
        stop_daemon(d)


def test_an_rbd_store_with_a_missing_pool_or_cluster_is_unhealthy(tmp_path: Path) -> None:
    (tmp_path / "pool").mkdir()
    d = rbd_daemon(tmp_path / "pool", pool="streamd-no-such-pool")
    try:
        status, found = reasons(d)
        assert status == 503
        assert "streamd-no-such-pool" in found["STORE ceph UNAVAILABLE"]
    finally:
        stop_daemon(d)
    # A ceph.conf naming a monitor nobody runs: the check gives up within check_timeout.
    (tmp_path / "cluster").mkdir()
    conf = tmp_path / "cluster" / "ceph.conf"
    conf.write_text(f"[global]\nmon_host = 127.0.0.1:1\nkeyring = {tmp_path}/none.keyring\n")
    d = rbd_daemon(tmp_path / "cluster", conf=str(conf))
    try:
        status, found = reasons(d)
        assert status == 503
        assert any(reason in found for reason in ("STORE ceph UNAVAILABLE", "STORE CEPH NOT ANSWERING")), found
    finally:
        stop_daemon(d)
