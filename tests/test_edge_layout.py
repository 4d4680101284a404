"""The edge (DCN) layout: a central node and two edge nodes, three real daemons on one PostgreSQL catalogue.

As Glance's distributed compute node layout has it: the central node reaches every store (``central`` on
the real Ceph cluster, ``dcn1``, ``dcn2``); each edge node reaches ``central`` and its own store only.
The edge stores are file stores on shares with ``filesystem_store_mount_check = marker`` (the NFS case):
a share that goes away is what "the edge's store is unreachable" means here, and it is a real condition
of the directory, not a fake. Every step is observed from all three nodes, since they share nothing but
the catalogue and the peer network.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ADMIN, Daemon, _pg_admin, free_port, pg_url, start_daemon, stop_daemon
from test_cache_peers import stats, wait_cached
from test_import_rbd import rbd_names_of
from test_rbd_store import ceph_env

TOKEN = "edge-peer-token"


def call(daemon: Daemon, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = {**ADMIN, **(headers or {})}
    if isinstance(body, (dict, list)):
        hdrs.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(daemon.url + path, method=method, data=data, headers=hdrs)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def image(daemon: Daemon, image_id: str) -> dict[str, Any]:
    status, body = call(daemon, "GET", f"/v2/images/{image_id}")
    assert status == 200, body
    return dict(json.loads(body))


def stores_of(record: dict[str, Any]) -> set[str]:
    return set(filter(None, record.get("stores", "").split(",")))


class Site:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.shares = {name: tmp_path / f"share-{name}" for name in ("dcn1", "dcn2")}
        for share in self.shares.values():
            share.mkdir()
            (share / ".marker").touch()
        self.db_name = "t_edge_" + uuid.uuid4().hex[:12]
        asyncio.run(_pg_admin(f"CREATE DATABASE {self.db_name}"))
        self.db_url = pg_url().rsplit("/", 1)[0] + "/" + self.db_name
        self.nodes: dict[str, Daemon] = {}

    def start(self, name: str, stores: list[str]) -> Daemon:
        env = ceph_env()
        port = free_port()
        sections = [f"[{s}]\nfilesystem_store_datadir = {self.shares[s]}\nfilesystem_store_mount_check = marker\n"
                    for s in stores if s != "central"]
        sections.append(f"[central]\nrbd_store_pool = {env['CEPH_POOL']}\nrbd_store_ceph_conf = {env['CEPH_CONF']}\n"
                        "rbd_store_user = admin\nrados_connect_timeout = 10\n")
        enabled = ",".join(f"{s}:{'rbd' if s == 'central' else 'file'}" for s in stores)
        directory = self.tmp_path / name
        directory.mkdir()
        daemon = start_daemon(directory, port=port, extra_config=(
            f"enabled_backends = {enabled}\npeer_url = http://127.0.0.1:{port}\npeer_token = {TOKEN}\n"
            f"[glance_store]\ndefault_backend = {stores[0]}\n"
            f"[healthcheck]\ndetailed = true\n"
            f"[database]\nconnection = {self.db_url}\n" + "".join(sections)), timeout=60)
        self.nodes[name] = daemon
        return daemon

    def unmount(self, store: str) -> None:
        share = self.shares[store]
        share.rename(share.with_name(share.name + ".away"))
        share.mkdir()

    def remount(self, store: str) -> None:
        share = self.shares[store]
        share.rmdir()
        share.with_name(share.name + ".away").rename(share)

    def close(self) -> None:
        for daemon in self.nodes.values():
            stop_daemon(daemon)
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        s.start("central", ["central", "dcn1", "dcn2"])
        s.start("edge1", ["dcn1", "central"])
        s.start("edge2", ["dcn2", "central"])
        yield s
    finally:
        s.close()


def staged(daemon: Daemon, data: bytes) -> str:
    status, body = call(daemon, "POST", "/v2/images", {"name": "edge", "disk_format": "raw",
                                                        "container_format": "bare", "visibility": "public"})
    assert status == 201, body
    image_id = str(json.loads(body)["id"])
    status, body = call(daemon, "PUT", f"/v2/images/{image_id}/stage", data,
                        {"Content-Type": "application/octet-stream"})
    assert status == 204, body
    return image_id


def import_(daemon: Daemon, image_id: str, body: dict[str, Any]) -> None:
    status, reply = call(daemon, "POST", f"/v2/images/{image_id}/import", body)
    assert status == 202, reply


def settled(site: Site, image_id: str, want_stores: set[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """The image as each node answers it, once every node sees ``want_stores`` and no import running."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {name: image(d, image_id) for name, d in site.nodes.items()}
        if all(stores_of(r) == want_stores and not r.get("os_glance_importing_to_stores")
               and r["status"] == "active" for r in seen.values()):
            return seen
        assert time.monotonic() < deadline, {n: (r["status"], r.get("stores"), r.get("os_glance_importing_to_stores"),
                                                 r.get("os_glance_failed_import")) for n, r in seen.items()}
        time.sleep(0.2)


def download(daemon: Daemon, image_id: str) -> bytes:
    status, body = call(daemon, "GET", f"/v2/images/{image_id}/file")
    assert status == 200, body[:300]
    return body


def test_import_copy_and_delete_across_the_edge_are_seen_from_every_node(site: Site) -> None:
    central, edge2 = site.nodes["central"], site.nodes["edge2"]
    data = hashlib.shake_256(b"edge image").digest(3 << 20)
    md5 = hashlib.md5(data).hexdigest()

    # Import to every store the central node has, from one staged read.
    image_id = staged(central, data)
    import_(central, image_id, {"method": {"name": "glance-direct"}, "all_stores": True})
    for record in settled(site, image_id, {"central", "dcn1", "dcn2"}).values():
        assert record["checksum"] == md5 and record["os_glance_failed_import"] == ""
    assert (site.shares["dcn1"] / image_id).read_bytes() == data
    assert (site.shares["dcn2"] / image_id).read_bytes() == data
    assert rbd_names_of(ceph_env()["CEPH_POOL"], image_id) == [image_id]

    # Deleted from one edge's store: every node sees it gone from there, the data is gone.
    status, body = call(central, "DELETE", f"/v2/stores/dcn2/{image_id}")
    assert status == 204, body
    settled(site, image_id, {"central", "dcn1"})
    assert not (site.shares["dcn2"] / image_id).exists()

    # Copied back to that edge by the edge's own node (it reads central, writes its store).
    import_(edge2, image_id, {"method": {"name": "copy-image"}, "stores": ["dcn2"]})
    settled(site, image_id, {"central", "dcn1", "dcn2"})
    assert (site.shares["dcn2"] / image_id).read_bytes() == data
    for daemon in site.nodes.values():
        assert download(daemon, image_id) == data

    # A copy to an edge whose store is down: os_glance_failed_import names it on every node.
    other = staged(central, data[: 1 << 20])
    import_(central, other, {"method": {"name": "glance-direct"}, "stores": ["central"]})
    settled(site, other, {"central"})
    site.unmount("dcn2")
    try:
        import_(central, other, {"method": {"name": "copy-image"}, "stores": ["dcn2"],
                                 "all_stores_must_succeed": False})
        deadline = time.monotonic() + 60
        while not all(image(d, other).get("os_glance_failed_import") == "dcn2" for d in site.nodes.values()):
            assert time.monotonic() < deadline, {n: image(d, other) for n, d in site.nodes.items()}
            time.sleep(0.2)
        for record in settled(site, other, {"central"}).values():
            assert record["os_glance_failed_import"] == "dcn2"
        assert list(site.shares["dcn2"].iterdir()) == []  # nothing written to the local disk underneath
    finally:
        site.remount("dcn2")


def test_an_edge_whose_store_is_down_serves_its_clients_from_a_peers_cache(site: Site) -> None:
    central, edge1, edge2 = site.nodes["central"], site.nodes["edge1"], site.nodes["edge2"]
    data = hashlib.shake_256(b"only at the edge").digest(5 << 20)

    # An image held by one edge's store alone, imported there by the edge node.
    image_id = staged(edge1, data)
    import_(edge1, image_id, {"method": {"name": "glance-direct"}, "stores": ["dcn1"]})
    settled(site, image_id, {"dcn1"})
    # The central node reads it once (from the share) and caches it.
    assert download(central, image_id) == data
    wait_cached(central, image_id)

    uncached = staged(edge1, data[: 1 << 20])
    import_(edge1, uncached, {"method": {"name": "glance-direct"}, "stores": ["dcn1"]})
    settled(site, uncached, {"dcn1"})

    site.unmount("dcn1")
    try:
        # Where no peer caches it, a node that does not reach its store says so (not an empty 204).
        status, body = call(edge2, "GET", f"/v2/images/{uncached}/file", headers={"Accept": "application/json"})
        assert status == 503, body
        assert "stored in dcn1, which this node does not reach" in json.loads(body)["message"]

        # The edge says which store is down, in its detailed health answer.
        status, body = call(edge1, "GET", "/healthcheck", headers={"Accept": "application/json"})
        assert status == 503, body
        reasons = json.loads(body)["reasons"]
        assert [r["reason"] for r in reasons if r["class"] != "OK" and "UNAVAILABLE" in r["reason"]] == \
            ["STORE dcn1 UNAVAILABLE"], reasons
        status, body = call(edge2, "GET", "/healthcheck")
        assert status == 200, body  # the other edge's own stores are fine

        # Its clients are still served: from the central node's cache, verified, no store read.
        assert download(edge1, image_id) == data
        assert download(edge2, image_id) == data
        assert stats(edge1)["store_reads"] == {} and stats(edge2)["store_reads"] == {}
        assert wait_cached(edge1, image_id).read_bytes() == data
    finally:
        site.remount("dcn1")
