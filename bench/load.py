"""Load: many clients mixing uploads, downloads and list calls against several streamd nodes at once.

    .venv/bin/python bench/load.py [--nodes 3] [--clients 64] [--duration 300] [--pg-url URL] [--out DIR]

K nodes on loopback share one PostgreSQL catalogue (``--pg-url``, else ``STREAMD_TEST_PG_URL``, else a
throwaway server started with scripts/pg-dev.sh), one file store directory (the NFS layout) and the peer
network; each has its own cache (local stores cached, so downloads exercise fills, single flight and peers).
C client threads, each with its own keep-alive connection to one node (round robin), loop until the
deadline: create + upload (1-4 MiB), download (a base image or one of its own, md5 checked), list (the
queries Horizon and the CLI send), delete (its own images, so the data stays bounded).

Prints per operation: count, errors, p50/p99 latency; per node: peak RSS and RSS after warm-up vs at the
end. Exit status 1 when any request failed or a node's peak RSS passed ``--max-rss-mib``. Nothing here
is a test of speed: the figures are reported, the exit status says only "no errors, memory bounded".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Meter, rss_bytes  # noqa: E402
from servers import REPO, Server, free_port  # noqa: E402

MiB = 1 << 20
TOKEN = "load-peer-token"
ADMIN = {"X-Project-Id": "f" * 32, "X-User-Id": "load-admin", "X-Roles": "admin,member,reader"}
LISTS = ["/v2/images", "/v2/images?limit=25", "/v2/images?visibility=all&limit=20",
         "/v2/images?member_status=all", "/v2/images?sort=name:asc,created_at:desc&limit=25",
         "/v2/images?tag=load", "/v2/images?os_distro=ubuntu", "/v2/images?status=active&limit=50"]


class Node(Server):
    name = "streamd"

    def __init__(self, workdir: Path, db_url: str, store_dir: Path) -> None:
        super().__init__(workdir)
        self.db_url, self.store_dir = db_url, store_dir

    def prepare(self) -> list[str]:
        config = self.workdir / "streamd.conf"
        config.write_text(
            f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {self.port}\ndata_dir = {self.workdir / 'data'}\n"
            f"peer_url = {self.url}\npeer_token = {TOKEN}\nimage_cache_local_stores = true\n"
            f"image_cache_max_size = {512 * MiB}\n"
            f"[fs]\nfilesystem_store_datadir = {self.store_dir}\n"
            f"[database]\nconnection = {self.db_url}\n")
        return [str(REPO / ".venv/bin/streamd"), "serve", "--config", str(config)]

    def ready(self) -> bool:
        return "listening on" in self.log.read_text(errors="replace")


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.samples: list[str] = []
        self.bytes_up = self.bytes_down = 0

    def record(self, op: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.latency.setdefault(op, []).append(seconds)
            if error is not None:
                self.errors[op] = self.errors.get(op, 0) + 1
                if len(self.samples) < 20:
                    self.samples.append(f"{op}: {error}")


class Client(threading.Thread):
    def __init__(self, n: int, node: Node, base: list[tuple[str, str]], deadline: float, results: Results) -> None:
        super().__init__(name=f"client-{n}", daemon=True)
        self.n, self.node, self.base, self.deadline, self.results = n, node, base, deadline, results
        self.rng = random.Random(n)
        self.mine: list[tuple[str, str]] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers={**ADMIN, **(headers or {})})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed between requests: one fresh try.
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def timed(self, op: str, call: "callable[[], str | None]") -> None:  # type: ignore[valid-type]
        start = time.perf_counter()
        try:
            error = call()
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.conn.close()
        self.results.record(op, time.perf_counter() - start, error)

    def upload(self) -> str | None:
        size = self.rng.randint(1 * MiB, 4 * MiB)
        data = self.rng.randbytes(size // 2) + bytes(size - size // 2)
        status, body = self.request("POST", "/v2/images", json.dumps(
            {"name": f"load-{self.n}", "disk_format": "raw", "container_format": "bare", "tags": ["load"],
             "os_distro": self.rng.choice(["ubuntu", "fedora"])}).encode(), {"Content-Type": "application/json"})
        if status != 201:
            return f"create {status} {body[:200]!r}"
        image_id = json.loads(body)["id"]
        status, body = self.request("PUT", f"/v2/images/{image_id}/file", data,
                                    {"Content-Type": "application/octet-stream"})
        if status != 204:
            return f"upload {status} {body[:200]!r}"
        self.mine.append((image_id, hashlib.md5(data).hexdigest()))
        with self.results.lock:
            self.results.bytes_up += size
        return None

    def download(self) -> str | None:
        pool = self.base + self.mine[-4:]
        image_id, md5 = self.rng.choice(pool)
        status, body = self.request("GET", f"/v2/images/{image_id}/file")
        if status != 200:
            return f"download {image_id} {status} {body[:200]!r}"
        if hashlib.md5(body).hexdigest() != md5:
            return f"download {image_id}: body md5 differs"
        with self.results.lock:
            self.results.bytes_down += len(body)
        return None

    def list_(self) -> str | None:
        path = self.rng.choice(LISTS)
        status, body = self.request("GET", path)
        if status != 200 or "images" not in json.loads(body):
            return f"list {path} {status} {body[:200]!r}"
        return None

    def delete(self) -> str | None:
        if not self.mine:
            return None
        image_id, _ = self.mine.pop(0)
        status, body = self.request("DELETE", f"/v2/images/{image_id}")
        return None if status == 204 else f"delete {status} {body[:200]!r}"

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            roll = self.rng.random()
            if roll < 0.15:
                self.timed("upload", self.upload)
            elif roll < 0.55:
                self.timed("download", self.download)
            elif roll < 0.95:
                self.timed("list", self.list_)
            else:
                self.timed("delete", self.delete)
            while len(self.mine) > 4:
                self.timed("delete", self.delete)
        while self.mine:  # leave the catalogue as found
            self.timed("delete", self.delete)
        self.conn.close()


def pg_database(args: argparse.Namespace, work: Path) -> tuple[str, "callable[[], None]"]:  # type: ignore[valid-type]
    """A fresh database on the given (or a throwaway) PostgreSQL server, and how to drop it."""
    import asyncpg

    url = args.pg_url or os.environ.get("STREAMD_TEST_PG_URL")
    stop_server = None
    if not url:
        out = subprocess.run([str(REPO / "scripts/pg-dev.sh"), "start", str(work / "pg")], check=True,
                             capture_output=True, text=True).stdout
        url = re.search(r"STREAMD_TEST_PG_URL=(\S+)", out).group(1)  # type: ignore[union-attr]

        def stop_server() -> None:
            subprocess.run([str(REPO / "scripts/pg-dev.sh"), "stop", str(work / "pg")], check=False)
    root = url.replace("+asyncpg", "").rsplit("/", 1)[0]
    name = "load_" + uuid.uuid4().hex[:12]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(root + "/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))

    def drop() -> None:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        if stop_server is not None:
            stop_server()
    return url.rsplit("/", 1)[0] + "/" + name, drop


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--base-images", type=int, default=12)
    parser.add_argument("--max-rss-mib", type=float, default=512.0)
    parser.add_argument("--pg-url")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="streamd-load-"))
    db_url, drop = pg_database(args, work)
    store_dir = work / "store"
    store_dir.mkdir()
    nodes = [Node(work / f"node{i}", db_url, store_dir) for i in range(args.nodes)]
    results = Results()
    meters: list[Meter] = []
    try:
        for node in nodes:
            node.__enter__()
        # Base images every client downloads (never deleted): shared, so fills meet and peers serve.
        rng = random.Random(0)
        base = []
        warm = Client(-1, nodes[0], [], 0, results)
        for _ in range(args.base_images):
            warm.mine = []
            assert warm.upload() is None, results.samples
            base.extend(warm.mine)
        warm.conn.close()
        results = Results()
        rss_start = [rss_bytes(n.pid) / MiB for n in nodes]
        meters = [Meter(n.pid, interval=0.25) for n in nodes]
        usages = [m.__enter__() for m in meters]
        deadline = time.monotonic() + args.duration
        clients = [Client(i, nodes[i % len(nodes)], base, deadline, results) for i in range(args.clients)]
        load0 = os.getloadavg()[0]
        started = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.perf_counter() - started
        for m in meters:
            m.__exit__(None, None, None)
        rss_end = [rss_bytes(n.pid) / MiB for n in nodes]
        load1 = os.getloadavg()[0]
        del rng
    finally:
        for node in nodes:
            node.stop()
        drop()

    errors = sum(results.errors.values())
    print(f"\n{args.clients} clients, {args.nodes} nodes (PostgreSQL, shared file store, peers), "
          f"{wall:.0f} s; load {load0:.1f} -> {load1:.1f}")
    print(f"{'operation':10} {'count':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8}")
    table = {}
    for op in ("upload", "download", "list", "delete"):
        lat = results.latency.get(op, [])
        row = {"count": len(lat), "errors": results.errors.get(op, 0),
               "p50_ms": percentile(lat, 0.5) * 1000, "p99_ms": percentile(lat, 0.99) * 1000}
        table[op] = row
        print(f"{op:10} {row['count']:7d} {row['errors']:6d} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f}")
    print(f"uploaded {results.bytes_up / MiB:.0f} MiB, downloaded {results.bytes_down / MiB:.0f} MiB")
    nodes_out = []
    for i, usage in enumerate(usages):
        nodes_out.append({"rss_start_mib": rss_start[i], "rss_peak_mib": usage.peak_rss_mib,
                          "rss_end_mib": rss_end[i], "cpu_s": usage.cpu_s})
        print(f"node{i}: RSS after warm-up {rss_start[i]:.0f} MiB, peak {usage.peak_rss_mib:.0f} MiB, "
              f"end {rss_end[i]:.0f} MiB; CPU {usage.cpu_s:.0f} s")
    for sample in results.samples:
        print("error:", sample)
    over = [i for i, n in enumerate(nodes_out) if n["rss_peak_mib"] > args.max_rss_mib]
    verdict = errors == 0 and not over
    print(f"{'PASS' if verdict else 'FAIL'}: {errors} errors; peak RSS {'within' if not over else 'over'} "
          f"{args.max_rss_mib:.0f} MiB per node")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(
            {"clients": args.clients, "nodes": nodes_out, "operations": table, "wall_s": wall,
             "load": [load0, load1], "errors": results.samples}, indent=2))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
