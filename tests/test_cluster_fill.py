"""Cluster-wide single flight: real daemons sharing one PostgreSQL catalogue and one file store.

One node wins the image's fill lease and reads the backend; the others stream its fill while it
runs, checking every 4 MiB chunk against the digest it records, and carry on from the backend
when it dies or sends a bad chunk. Nothing unverified reaches a client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ADMIN, Daemon, _pg_admin, both_databases, free_port, pg_url, start_daemon, stop_daemon
from streamd.catalog import Catalog
from test_cache_admin import slow_env
from test_cache_peers import stats

TOKEN = "cluster-fill-token"
MiB = 1 << 20


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.store_dir = tmp_path / "shared-store"
        self.store_dir.mkdir()
        self.db_name = "t_fill_" + uuid.uuid4().hex[:12]
        asyncio.run(_pg_admin(f"CREATE DATABASE {self.db_name}"))
        self.db_url = pg_url().rsplit("/", 1)[0] + "/" + self.db_name
        self.nodes: dict[str, Daemon] = {}

    def start(self, name: str, read_delay: float = 0.0) -> Daemon:
        port = free_port()
        directory = self.tmp_path / name
        directory.mkdir()
        env = None
        if read_delay:
            env = slow_env(directory, read_delay)
            env["PYTHONPATH"] += os.pathsep + os.environ.get("PYTHONPATH", "")
        daemon = start_daemon(directory, port=port, env=env, timeout=60, extra_config=(
            f"peer_url = http://127.0.0.1:{port}\npeer_token = {TOKEN}\nfill_lease_ttl = 2\n"
            f"image_cache_maintenance_interval = 0\n"
            f"[glance_store]\nfilesystem_store_datadir = {self.store_dir}\n"
            f"[database]\nconnection = {self.db_url}\n"))
        self.nodes[name] = daemon
        return daemon

    def close(self) -> None:
        for daemon in self.nodes.values():
            stop_daemon(daemon)
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@both_databases
async def test_one_node_wins_the_fill_lease_until_it_releases_it_or_it_expires(database_url: str) -> None:
    catalog = await Catalog.open(database_url)
    try:
        image = await catalog.create_image({"disk_format": "raw", "container_format": "bare"}, {}, [])
        results = await asyncio.gather(*(catalog.take_fill_lease(image.id, f"node-{n}", f"http://n{n}", 30)
                                         for n in range(6)))
        assert sum(results) == 1, results
        winner = results.index(True)
        assert await catalog.fill_lease(image.id) == (f"node-{winner}", f"http://n{winner}")
        assert await catalog.renew_fill_lease(image.id, f"node-{winner}", 30)
        assert not await catalog.renew_fill_lease(image.id, "someone-else", 30)
        # Released: the next node takes it.
        await catalog.release_fill_lease(image.id, f"node-{winner}")
        assert await catalog.fill_lease(image.id) is None
        assert await catalog.take_fill_lease(image.id, "late", "http://late", 0.2)
        assert not await catalog.take_fill_lease(image.id, "other", "http://other", 30)
        # Expired (a dead filler that stopped renewing): no longer anyone's, and taken over.
        await asyncio.sleep(0.4)
        assert await catalog.fill_lease(image.id) is None
        assert await catalog.take_fill_lease(image.id, "other", "http://other", 30)
        assert not await catalog.renew_fill_lease(image.id, "late", 30)
        # Chunk digests: recorded once, a second filler's record of the same chunks kept as it was.
        await catalog.add_chunk_digests(image.id, {0: "a" * 64, 1: "b" * 64})
        await catalog.add_chunk_digests(image.id, {1: "c" * 64, 2: "d" * 64})
        assert await catalog.chunk_digests(image.id) == {0: "a" * 64, 1: "b" * 64, 2: "d" * 64}
        assert await catalog.chunk_digests(image.id, 2) == {2: "d" * 64}
        # An image that does not exist has no lease to take.
        assert not await catalog.take_fill_lease("00000000-0000-0000-0000-000000000000", "x", "http://x", 30)
    finally:
        await catalog.close()


def call(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(daemon.url + path, method=method, data=body, headers={**ADMIN, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def upload(daemon: Daemon, data: bytes) -> str:
    status, body = call(daemon, "POST", "/v2/images", json.dumps(
        {"disk_format": "raw", "container_format": "bare", "visibility": "public"}).encode(),
        {"Content-Type": "application/json"})
    assert status == 201
    image_id = str(json.loads(body)["id"])
    assert call(daemon, "PUT", f"/v2/images/{image_id}/file", data,
                {"Content-Type": "application/octet-stream"})[0] == 204
    return image_id


def download_all(daemons: list[Daemon], image_id: str) -> list[tuple[int, bytes] | BaseException]:
    """One GET per daemon in the list, all at once (a daemon listed k times gets k clients)."""
    results: list[tuple[int, bytes] | BaseException] = [ValueError("not run")] * len(daemons)
    start = threading.Barrier(len(daemons))

    def get(i: int, daemon: Daemon) -> None:
        start.wait()
        try:
            results[i] = call(daemon, "GET", f"/v2/images/{image_id}/file")
        except Exception as exc:  # the body was cut short: recorded, asserted on below
            results[i] = exc

    threads = [threading.Thread(target=get, args=(i, d)) for i, d in enumerate(daemons)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def cached(daemon: Daemon, image_id: str, timeout: float = 30) -> bytes:
    path = daemon.data_dir / "cache" / image_id
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{image_id} was never cached by {daemon.url}:\n{daemon.log()[-3000:]}"
        time.sleep(0.05)
    return path.read_bytes()


def incomplete(daemon: Daemon, image_id: str) -> Path:
    return daemon.data_dir / "cache" / "incomplete" / image_id


def wait_for(predicate, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_cold_gets_across_nodes_read_the_backend_once(cluster: Cluster) -> None:
    # A slow backend (0.25 s per 4 MiB read) so that every node asks while the fill runs.
    nodes = [cluster.start(name, read_delay=0.25) for name in ("a", "b", "c")]
    data = hashlib.shake_256(b"storm").digest(24 * MiB + 12345)  # the last chunk is a short one
    image_id = upload(nodes[0], data)

    results = download_all(nodes * 3, image_id)  # 3 nodes x 3 clients
    assert all(r == (200, data) for r in results), [r if isinstance(r, BaseException) else r[0] for r in results]

    # Every node ends with a verified cached copy...
    for daemon in nodes:
        assert cached(daemon, image_id) == data
    # ...and the backend was read once for the whole cluster: the other two streamed the filler's fill.
    reads = [stats(d) for d in nodes]
    assert sum(sum(s["store_reads"].values()) for s in reads) == 1, reads
    fillers = [s for s in reads if s["store_reads"]]
    followers = [s for s in reads if not s["store_reads"]]
    assert len(fillers) == 1 and len(followers) == 2
    filler_url = next(d.url for d, s in zip(nodes, reads) if s["store_reads"])
    for s in followers:
        assert s["peer_reads"] == {filler_url: 1}
    # The filler recorded one digest per 4 MiB chunk, and released its lease.
    rows = asyncio.run(_pg_rows(cluster.db_url, image_id))
    assert rows == ([_blake3(data[i:i + 4 * MiB]) for i in range(0, len(data), 4 * MiB)], 0)


def _blake3(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


async def _pg_rows(db_url: str, image_id: str) -> tuple[list[str], int]:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("+asyncpg", ""))
    try:
        digests = await conn.fetch("SELECT blake3 FROM image_chunk_digests WHERE image_id = $1 ORDER BY chunk_index",
                                   image_id)
        leases = await conn.fetchval("SELECT count(*) FROM image_fill_leases WHERE image_id = $1", image_id)
        return [r["blake3"] for r in digests], int(leases)
    finally:
        await conn.close()


def test_a_filler_killed_mid_fill_leaves_the_others_to_finish_from_the_backend(cluster: Cluster) -> None:
    a = cluster.start("a", read_delay=0.4)
    b = cluster.start("b", read_delay=0.4)
    c = cluster.start("c", read_delay=0.4)
    data = hashlib.shake_256(b"killed").digest(64 * MiB)
    image_id = upload(b, data)

    # a is asked first: it takes the lease and fills, slowly.
    first = threading.Thread(target=lambda: download_all([a], image_id), daemon=True)
    first.start()
    wait_for(lambda: incomplete(a, image_id).exists(), "a's fill")
    results: list[tuple[int, bytes] | BaseException] = []
    later = threading.Thread(target=lambda: results.extend(download_all([b, b, c], image_id)))
    later.start()
    # b and c stream a's fill; once they have some of it, a dies without a word.
    wait_for(lambda: all(incomplete(d, image_id).exists() and incomplete(d, image_id).stat().st_size >= 8 * MiB
                         for d in (b, c)), "b and c streaming a's fill")
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    later.join(180)

    assert results and all(r == (200, data) for r in results), \
        [r if isinstance(r, BaseException) else (r[0], len(r[1])) for r in results]
    for daemon in (b, c):
        assert cached(daemon, image_id) == data
        s = stats(daemon)
        assert s["peer_reads"] == {a.url: 1}  # they did stream a's fill...
        assert s["store_reads"] == {"fs": 1}  # ...and read only the rest from the backend
        assert "reading the rest from the backend" in daemon.log()


def test_a_corrupt_chunk_from_the_filler_is_never_served(cluster: Cluster) -> None:
    a = cluster.start("a", read_delay=0.4)
    b = cluster.start("b")
    data = hashlib.shake_256(b"corrupt").digest(64 * MiB)
    image_id = upload(b, data)

    first = threading.Thread(target=lambda: download_all([a], image_id), daemon=True)
    first.start()
    # a's fill file: once its second chunk is written, flip a byte in it (a disk fault on the filler).
    partial = incomplete(a, image_id)
    wait_for(lambda: partial.exists() and partial.stat().st_size >= 12 * MiB, "a's fill")
    with open(partial, "r+b") as f:
        f.seek(5 * MiB + 7)
        byte = f.read(1)
        f.seek(5 * MiB + 7)
        f.write(bytes([byte[0] ^ 0xFF]))

    # b streams a's fill: chunk 1 does not match its digest, so b never serves it and reads the
    # rest from the backend. Its client gets the right bytes, whole.
    [result] = download_all([b], image_id)
    assert result == (200, data), result if isinstance(result, BaseException) else (result[0], len(result[1]))
    assert cached(b, image_id) == data
    s = stats(b)
    assert s["peer_reads"] == {a.url: 1} and s["store_reads"] == {"fs": 1}
    assert "does not match its digest" in b.log()
    first.join(120)
