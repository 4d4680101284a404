"""/metrics in Prometheus's text format ([metrics]), scraped from the real daemon.

An upload, a download (a cache miss that fills the cache, then a hit), an import and a failed
upload each move their counters, with the right labels; off by default; on the API port for
admins only, or unauthenticated on its own port.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ADMIN, MEMBER_A, Daemon, free_port, start_daemon, start_node, stop_daemon
from test_health import call

OCTET = {"Content-Type": "application/octet-stream"}
MIB = 1 << 20


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def create(daemon: Daemon) -> str:
    status, _, body = call(daemon, "/v2/images", "POST", json.dumps(
        {"name": "m", "disk_format": "raw", "container_format": "bare"}).encode(),
        {**MEMBER_A, "Content-Type": "application/json"})
    assert status == 201, body
    return str(json.loads(body)["id"])


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    port = free_port()
    d = start_daemon(tmp_path, "enabled_import_methods = [glance-direct]\n"
                               "[fs]\nfilesystem_thin_provisioning = true\n"
                               f"[metrics]\nenabled = true\nbind_port = {port}\nevent_loop_lag_interval = 0.05\n")
    try:
        yield d, f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_daemon(d)


def test_the_counters_move_with_the_data(metered: tuple[Daemon, str]) -> None:
    daemon, url = metered
    assert f"metrics on http://127.0.0.1:{url.split(':')[2].split('/')[0]}/metrics" in daemon.log()
    before = scrape(url)
    assert value(before, "streamd_store_bytes_total", store="fs", direction="in", operation="upload") == 0

    # An upload: 2 MiB of data and 2 MiB of zeros, which thin provisioning leaves as a hole.
    data = b"\x01" * (2 * MIB) + bytes(2 * MIB)
    image_id = create(daemon)
    status, _, body = call(daemon, f"/v2/images/{image_id}/file", "PUT", data, {**MEMBER_A, **OCTET})
    assert status == 204, body
    after_upload = scrape(url)
    assert value(after_upload, "streamd_store_bytes_total", store="fs", direction="in", operation="upload") == len(data)
    assert value(after_upload, "streamd_sparse_skipped_bytes_total", store="fs") >= MIB
    route = "/{version}/images/{image_id}/file"
    assert value(after_upload, "streamd_http_request_duration_seconds_count",
                 method="PUT", route=route, status="204") == 1

    # A download: a miss that fills the cache from the store; then a hit.
    status, _, body = call(daemon, f"/v2/images/{image_id}/file", headers=MEMBER_A)
    assert (status, body) == (200, data)
    deadline = time.monotonic() + 10
    while value(scrape(url), "streamd_cache_events_total", event="fill") == 0:  # it commits behind the reader
        assert time.monotonic() < deadline, "the cache fill did not finish"
        time.sleep(0.05)
    status, _, body = call(daemon, f"/v2/images/{image_id}/file", headers=MEMBER_A)
    assert (status, body) == (200, data)
    # A body sent from a thread reaches the client before the handler (back on the loop) counts it.
    deadline = time.monotonic() + 10
    while value(scrape(url), "streamd_http_request_duration_seconds_count",
                method="GET", route=route, status="200") < 2:
        assert time.monotonic() < deadline, "the second download was not counted"
        time.sleep(0.05)
    downloaded = scrape(url)
    assert value(downloaded, "streamd_cache_events_total", event="miss") == 1
    assert value(downloaded, "streamd_cache_events_total", event="fill") == 1
    assert value(downloaded, "streamd_cache_events_total", event="hit") == 1
    assert value(downloaded, "streamd_cache_bytes_total", event="filled") == len(data)
    assert value(downloaded, "streamd_store_bytes_total", store="fs", direction="out", operation="cache_fill") == len(data)
    assert value(downloaded, "streamd_download_bytes_total", source="fill") == len(data)
    assert value(downloaded, "streamd_download_bytes_total", source="cache") == len(data)
    assert value(downloaded, "streamd_http_request_duration_seconds_count",
                 method="GET", route=route, status="200") == 2

    # An import (glance-direct): staged, then into the store.
    imported = create(daemon)
    status, _, body = call(daemon, f"/v2/images/{imported}/stage", "PUT", b"\x02" * MIB, {**MEMBER_A, **OCTET})
    assert status == 204, body
    status, _, body = call(daemon, f"/v2/images/{imported}/import", "POST",
                           json.dumps({"method": {"name": "glance-direct"}}).encode(),
                           {**MEMBER_A, "Content-Type": "application/json"})
    assert status == 202, body
    deadline = time.monotonic() + 20
    while json.loads(call(daemon, f"/v2/images/{imported}", headers=MEMBER_A)[2])["status"] != "active":
        assert time.monotonic() < deadline, "import did not finish"
        time.sleep(0.1)
    # The import's duration is observed when its task ends, just after the image went active.
    while value(scrape(url), "streamd_import_duration_seconds_count", method="glance-direct", result="success") == 0:
        assert time.monotonic() < deadline, "the import's task did not end"
        time.sleep(0.05)
    done = scrape(url)
    assert value(done, "streamd_import_duration_seconds_count", method="glance-direct", result="success") == 1
    assert value(done, "streamd_store_bytes_total", store="os_glance_staging_store", direction="in",
                 operation="stage") == MIB
    assert value(done, "streamd_store_bytes_total", store="fs", direction="in", operation="import") == MIB

    # A failed upload: more data than declared (chunked: found while streaming).
    failing = create(daemon)
    status, _, _ = call(daemon, f"/v2/images/{failing}/file", "PUT", iter([b"x" * 1000]),  # type: ignore[arg-type]
                        {**MEMBER_A, **OCTET, "x-openstack-image-size": "10"})
    failed = scrape(url)
    assert status >= 400
    assert value(failed, "streamd_upload_failures_total", operation="upload", cause="InvalidRequest") == 1
    staging = create(daemon)
    status, _, _ = call(daemon, f"/v2/images/{staging}/stage", "PUT", iter([b"x" * 1000]),  # type: ignore[arg-type]
                        {**MEMBER_A, **OCTET, "x-openstack-image-size": "10"})
    assert status >= 400
    failed = scrape(url)
    assert value(failed, "streamd_upload_failures_total", operation="stage", cause="InvalidRequest") == 1

    # Queue lengths (read at the scrape) and the event loop's lag (measured every 0.05 s).
    assert value(failed, "streamd_uploads_in_flight") == 0
    assert value(failed, "streamd_imports_running") == 0
    assert value(failed, "streamd_event_loop_lag_seconds_count") > 5
    assert value(failed, "process_resident_memory_bytes") > 0

    # The API port has no /metrics when it has its own port.
    assert call(daemon, "/metrics", headers=ADMIN)[0] == 404


def test_on_the_api_port_for_admins_only_and_off_by_default(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    d = start_daemon(tmp_path / "on", "[metrics]\nenabled = true\n")
    try:
        status, headers, body = call(d, "/metrics", headers=ADMIN)
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
        assert b"streamd_http_request_duration_seconds" in body
        assert call(d, "/metrics", headers=MEMBER_A)[0] == 403
    finally:
        stop_daemon(d)
    (tmp_path / "off").mkdir()
    d = start_daemon(tmp_path / "off")
    try:
        assert call(d, "/metrics", headers=ADMIN)[0] == 404
    finally:
        stop_daemon(d)


def test_a_fill_from_a_peer_is_counted(tmp_path: Path) -> None:
    from test_cache_peers import TOKEN, upload, wait_cached
    from test_cache_peers import call as peer_call

    catalogue = tmp_path / "shared.sqlite"
    extra = "[metrics]\nenabled = true\n"
    a = start_node(tmp_path, "a", catalogue, token=TOKEN, extra=extra)
    b = start_node(tmp_path, "b", catalogue, token=TOKEN, extra=extra)
    try:
        data = bytes(range(256)) * 8192  # 2 MiB
        image_id = upload(a, data)
        assert peer_call(a, "GET", f"/v2/images/{image_id}/file") == (200, data)
        wait_cached(a, image_id)
        assert peer_call(b, "GET", f"/v2/images/{image_id}/file") == (200, data)
        wait_cached(b, image_id)
        deadline = time.monotonic() + 10
        while value(on_b := scrape(b.url + "/metrics", ADMIN), "streamd_cache_events_total", event="fill") == 0:
            assert time.monotonic() < deadline, "b's fill was never counted"
            time.sleep(0.05)
        assert value(on_b, "streamd_peer_fetches_total", result="ok") == 1
        assert value(on_b, "streamd_peer_bytes_total") == len(data)
        assert value(on_b, "streamd_store_bytes_total", store="fs", direction="out", operation="cache_fill") == 0
        on_a = scrape(a.url + "/metrics", ADMIN)
        assert value(on_a, "streamd_peer_fetches_total", result="ok") == 0
        assert value(on_a, "streamd_store_bytes_total", store="fs", direction="out", operation="cache_fill") == len(data)
    finally:
        stop_daemon(a)
        stop_daemon(b)


def test_evictions_are_counted(tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(tmp_path, f"image_cache_max_size = {3 * MIB}\n[metrics]\nenabled = true\nbind_port = {port}\n")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for n in range(2):
            image_id = create(d)
            data = bytes([n + 1]) * (2 * MIB)
            assert call(d, f"/v2/images/{image_id}/file", "PUT", data, {**MEMBER_A, **OCTET})[0] == 204
            assert call(d, f"/v2/images/{image_id}/file", headers=MEMBER_A)[2] == data
            deadline = time.monotonic() + 10
            while value(scrape(url), "streamd_cache_events_total", event="fill") < n + 1:
                assert time.monotonic() < deadline, "the cache fill did not finish"
                time.sleep(0.05)
        samples = scrape(url)
        # The second fill made room: the first image, least recently used, went.
        assert value(samples, "streamd_cache_events_total", event="eviction") == 1
        assert value(samples, "streamd_cache_bytes_total", event="evicted") == 2 * MIB
    finally:
        stop_daemon(d)


def test_metrics_options_are_checked() -> None:
    from streamd.config import load_config
    from streamd.errors import ConfigError

    assert load_config(None).metrics.enabled is False  # off by default
    with pytest.raises(ConfigError, match=r"\[metrics\] bind_port = 9292: the API's own port"):
        load_config(None, overrides={"metrics": {"enabled": "true", "bind_port": "9292"}})
    with pytest.raises(ConfigError, match=r"\[metrics\] bind_port"):
        load_config(None, overrides={"metrics": {"bind_port": "70000"}})


def test_rbd_uploads_count_the_zeros_never_sent(tmp_path: Path) -> None:
    import os

    from test_health import rbd_daemon

    port = free_port()
    d = rbd_daemon(tmp_path, extra=f"[metrics]\nenabled = true\nbind_port = {port}\n")
    try:
        data = os.urandom(MIB) + bytes(16 * MIB) + os.urandom(MIB)
        image_id = create(d)
        status, _, body = call(d, f"/v2/images/{image_id}/file", "PUT", data,
                               {**MEMBER_A, **OCTET, "X-Image-Meta-Store": "ceph"})
        assert status == 204, body
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "streamd_store_bytes_total", store="ceph", direction="in", operation="upload") == len(data)
        assert value(samples, "streamd_sparse_skipped_bytes_total", store="ceph") >= 16 * MIB - 2 * 64 * 1024
    finally:
        stop_daemon(d)
