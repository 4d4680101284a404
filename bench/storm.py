"""Boot storm: K nodes x C clients GET one cold image at once; how many bytes the backend gave.

    /work/main/.venv/bin/python bench/storm.py [--nodes 4] [--clients 4] [--size-mib 1024] [--no-glance]
                                               [--pg-url URL] [--out DIR]

Runs against the dev services (source /tmp/dev/ceph.env and /tmp/dev/pg.env first): the Ceph cluster
at CEPH_CONF (pool CEPH_POOL) and the PostgreSQL server of STREAMD_TEST_PG_URL (``--pg-url``), in
which a throwaway database is made and dropped.

streamd: K daemons on loopback sharing that catalogue, one RBD store and the peer network, each
with its own cache. Glance 33 (bench/servers.py's uWSGI recipe, glance_store's rbd driver): K nodes
sharing one SQLite catalogue, each with its own image cache (Glance's cache middleware). The same
random image (1 GiB by default) is uploaded to each, then K x C client threads, C per node, GET it
at the same moment; every body is checked against the file's BLAKE3.

Printed per server: bytes the backend read (the OSDs' own counters, ``ceph tell osd.N perf dump``
op_r_out_bytes, before and after the storm), that as a multiple of the image's size, bytes served
to clients, seconds to the last byte, and how many bodies were whole and right. Target: streamd
<= 1.05 x the image for the whole cluster. Other users of the same Ceph cluster during the run add
to its counters: the figure is an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import REPO, Glance, Server  # noqa: E402

MiB = 1 << 20
PYTHON = sys.executable
TOKEN = "storm-peer-token"
ADMIN = {"X-Project-Id": "f" * 32, "X-User-Id": "storm-admin", "X-Roles": "admin,member,reader"}


# ---------------------------------------------------------------- Ceph counters

def ceph(*args: str) -> str:
    return subprocess.run(["ceph", "-c", os.environ["CEPH_CONF"], "--id", os.environ.get("CEPH_ID", "admin"),
                           *args], check=True, capture_output=True, text=True, timeout=60).stdout


def osd_read_bytes() -> int:
    """Bytes all OSDs have sent out for client reads since they started."""
    total = 0
    for osd in json.loads(ceph("osd", "ls", "--format", "json")):
        total += int(json.loads(ceph("tell", f"osd.{osd}", "perf", "dump"))["osd"]["op_r_out_bytes"])
    return total


# ---------------------------------------------------------------- servers

class StreamdNode(Server):
    name = "streamd"

    def __init__(self, workdir: Path, db_url: str) -> None:
        super().__init__(workdir)
        self.db_url = db_url

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO))

    def prepare(self) -> list[str]:
        config = self.workdir / "streamd.conf"
        config.write_text(
            f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {self.port}\ndata_dir = {self.workdir / 'data'}\n"
            f"peer_url = {self.url}\npeer_token = {TOKEN}\nenabled_backends = ceph:rbd\n"
            "image_cache_maintenance_interval = 0\n"
            "[glance_store]\ndefault_backend = ceph\n"
            f"[ceph]\nrbd_store_ceph_conf = {os.environ['CEPH_CONF']}\n"
            f"rbd_store_pool = {os.environ.get('CEPH_POOL', 'images')}\nrbd_store_user = admin\n"
            f"[database]\nconnection = {self.db_url}\n")
        return [PYTHON, "-m", "streamd", "serve", "--config", str(config)]

    def ready(self) -> bool:
        return "listening on" in self.log.read_text(errors="replace")


class GlanceNode(Glance):
    """Glance 33 with its rbd store and cache, its catalogue a SQLite file shared by the K nodes."""

    def __init__(self, workdir: Path, venv: Path, db_path: Path) -> None:
        super().__init__(workdir, venv)
        self.db_path = db_path

    def prepare(self) -> list[str]:
        conf = self.workdir / "etc/glance-api.conf"
        cmd = super().prepare()  # writes the file-store config and runs db_sync on its own SQLite
        conf.write_text(re.sub(r"^connection = .*$", f"connection = sqlite:///{self.db_path}", conf.read_text(),
                               flags=re.M))
        self.add_rbd_backend(os.environ["CEPH_CONF"], os.environ.get("CEPH_POOL", "images"))
        if not self.db_path.exists():
            subprocess.run([str(self.venv / "bin/glance-manage"), "--config-file", str(conf), "db_sync"],
                           check=True, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return cmd


def request(url: str, method: str, path: str, body: object = None, headers: dict[str, str] | None = None,
            timeout: float = 600) -> tuple[int, bytes]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={**ADMIN, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def upload(server: Server, image: Path) -> str:
    status, body = request(server.url, "POST", "/v2/images", json.dumps(
        {"name": "storm", "disk_format": "raw", "container_format": "bare", "visibility": "public"}),
        {"Content-Type": "application/json"})
    assert status == 201, (status, body[:300])
    image_id = json.loads(body)["id"]
    with open(image, "rb") as f:
        status, body = request(server.url, "PUT", f"/v2/images/{image_id}/file", f,
                               {"Content-Type": "application/octet-stream",
                                "Content-Length": str(image.stat().st_size)})
    assert status == 204, (status, body[:300])
    return str(image_id)


# ---------------------------------------------------------------- the storm

def storm(nodes: list[Server], clients: int, image_id: str, size: int, digest: str) -> dict:
    """K x C clients GET the image at once; backend bytes from the OSD counters around it."""
    results: list[tuple[int, bool, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(nodes) * clients + 1)

    def client(node: Server) -> None:
        got, error = 0, ""
        hasher = blake3.blake3()
        parsed = urllib.parse.urlsplit(node.url)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
        barrier.wait()
        try:
            conn.request("GET", f"/v2/images/{image_id}/file", headers=ADMIN)
            response = conn.getresponse()
            if response.status != 200:
                error = f"HTTP {response.status}"
            view = memoryview(bytearray(4 * MiB))
            while not error:
                n = response.readinto(view)
                if not n:
                    break
                hasher.update(view[:n])
                got += n
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        ok = not error and got == size and hasher.hexdigest() == digest
        with lock:
            results.append((got, ok, error or ("" if ok else "wrong bytes")))

    threads = [threading.Thread(target=client, args=(node,), daemon=True) for node in nodes for _ in range(clients)]
    for t in threads:
        t.start()
    before = osd_read_bytes()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    last_byte = time.perf_counter() - start
    time.sleep(1)  # fills commit just after their last byte went out; nothing is read after it
    backend = osd_read_bytes() - before
    return {"backend_bytes": backend, "ratio": backend / size, "served_bytes": sum(r[0] for r in results),
            "last_byte_s": last_byte, "bodies_ok": sum(r[1] for r in results), "bodies": len(results),
            "errors": sorted({r[2] for r in results if r[2]})}


def node_stats(node: StreamdNode) -> dict:
    """What a node read: store_reads and peer_reads from its admin socket (streamd-cache-manage stats)."""
    out = subprocess.run([PYTHON, "-m", "streamd.cache_manage", "--socket", str(node.workdir / "data/run/admin.sock"),
                          "--json", "stats"], capture_output=True, text=True, timeout=60, env=node.env())
    if out.returncode:
        return {"error": out.stderr.strip()[-200:]}
    result = json.loads(out.stdout)["result"]
    return {"store_reads": sum(result["store_reads"].values()), "peer_reads": sum(result["peer_reads"].values())}


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_streamd(work: Path, pg_url: str, args: argparse.Namespace, image: Path, size: int, digest: str) -> dict:
    db = "storm_" + uuid.uuid4().hex[:12]
    asyncio.run(_pg(pg_url, f"CREATE DATABASE {db}"))
    nodes: list[StreamdNode] = []
    try:
        db_url = pg_url.rsplit("/", 1)[0] + "/" + db
        for k in range(args.nodes):
            node = StreamdNode(work / f"streamd-{k}", db_url)
            node.__enter__()
            nodes.append(node)
        print(f"streamd: uploading {size // MiB} MiB to RBD ...", flush=True)
        image_id = upload(nodes[0], image)
        print(f"streamd: storm of {args.nodes} x {args.clients} clients ...", flush=True)
        result = storm(nodes, args.clients, image_id, size, digest)  # type: ignore[arg-type]
        result["nodes"] = [node_stats(node) for node in nodes]
        request(nodes[0].url, "DELETE", f"/v2/images/{image_id}")
        return result
    finally:
        for node in nodes:
            node.stop()
        asyncio.run(_pg(pg_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))


def run_glance(work: Path, args: argparse.Namespace, image: Path, size: int, digest: str) -> dict:
    venv = REPO / ".venv-glance"
    why = Glance.link_ceph_bindings(venv)
    if why:
        return {"skipped": why}
    db_path = work / "glance-shared.sqlite"
    db_path.unlink(missing_ok=True)
    nodes: list[GlanceNode] = []
    try:
        for k in range(args.nodes):
            node = GlanceNode(work / f"glance-{k}", venv, db_path)
            node.__enter__()
            nodes.append(node)
        print(f"glance: uploading {size // MiB} MiB to RBD ...", flush=True)
        image_id = upload(nodes[0], image)
        print(f"glance: storm of {args.nodes} x {args.clients} clients ...", flush=True)
        result = storm(nodes, args.clients, image_id, size, digest)  # type: ignore[arg-type]
        request(nodes[0].url, "DELETE", f"/v2/images/{image_id}")
        return result
    finally:
        for node in nodes:
            node.stop()


def table(args: argparse.Namespace, size: int, results: dict[str, dict]) -> str:
    lines = [f"boot storm: one {size // MiB} MiB image, {args.nodes} nodes x {args.clients} clients, RBD store, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
             "backend = bytes the OSDs sent for reads during the storm (op_r_out_bytes), x = / image size", "",
             f"{'server':8}| {'backend MiB':>11} {'x image':>7} | {'served MiB':>10} | {'last byte s':>11} | bodies ok"]
    lines.append("-" * len(lines[-1]))
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"{name:8}| skipped: {r['skipped']}")
            continue
        lines.append(f"{name:8}| {r['backend_bytes'] / MiB:>11.0f} {r['ratio']:>7.2f} | {r['served_bytes'] / MiB:>10.0f}"
                     f" | {r['last_byte_s']:>11.1f} | {r['bodies_ok']}/{r['bodies']}"
                     + (f"  errors: {'; '.join(r['errors'])[:300]}" if r["errors"] else ""))
    s = results.get("streamd", {})
    if s.get("nodes"):
        lines.append("streamd nodes (backend reads opened / fills streamed from a peer): " + ", ".join(
            f"{n.get('store_reads', '?')}/{n.get('peer_reads', '?')}" for n in s["nodes"]))
    if "ratio" in s:
        ok = s["ratio"] <= 1.05 and s["bodies_ok"] == s["bodies"]
        lines += ["", f"target: streamd backend <= 1.05 x image, every body verified: "
                      f"{s['ratio']:.2f} x, {s['bodies_ok']}/{s['bodies']} {'OK' if ok else 'MISSED'}"]
        g = results.get("glance", {})
        if "ratio" in g:
            lines.append(f"glance reads {g['ratio']:.2f} x the image ({args.nodes} nodes: {args.nodes} x or more "
                         f"expected); streamd / glance backend bytes = {s['backend_bytes'] / max(g['backend_bytes'], 1):.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4, help="clients per node")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--no-glance", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("STREAMD_TEST_PG_URL"))
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/storm")
    args = parser.parse_args()
    if not args.pg_url or "CEPH_CONF" not in os.environ:
        parser.error("needs --pg-url (or STREAMD_TEST_PG_URL) and CEPH_CONF: source /tmp/dev/pg.env and ceph.env")
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    image = work / "image.bin"
    hasher = blake3.blake3()
    with open(image, "wb") as f:
        for _ in range(args.size_mib):
            block = os.urandom(MiB)
            hasher.update(block)
            f.write(block)
    digest = hasher.hexdigest()
    try:
        results = {"streamd": run_streamd(work, args.pg_url, args, image, size, digest)}
        if not args.no_glance:
            results["glance"] = run_glance(work, args, image, size, digest)
    finally:
        image.unlink(missing_ok=True)
    (work / "storm.json").write_text(json.dumps(results, indent=1))
    print(table(args, size, results), flush=True)
    s = results["streamd"]
    return 0 if s["bodies_ok"] == s["bodies"] else 1


if __name__ == "__main__":
    sys.exit(main())
