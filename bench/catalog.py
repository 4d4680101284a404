"""The catalogue at scale (issue 18 item 5): streamd against real Glance 33 on the same images.

    .venv/bin/python bench/catalog.py [--images 100000] [--projects 50] [--db sqlite|postgresql]
                                      [--reps 100] [--page-size 100] [--pg-url URL] [--out DIR]

Starts streamd and Glance (bench/servers.py; Glance under uWSGI from .venv-glance, its schema by
``glance-manage db_sync``), each on a database of its own (SQLite files, or two fresh databases on
the PostgreSQL server of ``--pg-url``/``STREAMD_TEST_PG_URL``, dropped at the end), then writes the
SAME images into both schemas with bulk SQL (not API calls): ``--images`` over ``--projects``
projects, a mix of visibilities (public, private, shared with two other projects as accepted or
pending members, community), four properties, two tags, nine in ten active. On PostgreSQL both
databases are ANALYZEd after the load (what autovacuum would do); SQLite is left as loaded.

Then, as a member of the first project (no admin: the visibility rules apply), one request of each
kind to each server in turn (the order alternating), ``--reps`` times: the default list, the lists
Horizon, Nova and the CLI send (visibility=all, member_status=all, tag=, a property filter,
sort=name:asc,created_at:desc), image show, create and PATCH; then ``--reps`` shows to each server
alone, back to back ("show (back to back)"); and once, every page of the list
(``--page-size``) from the first to the last by marker. Prints p50/p99 in ms per request kind and
server, the ratio Glance/streamd at p99, and whether both listed the same images; writes
OUT/catalog-DB-N.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import REPO, Glance, Server, Streamd  # noqa: E402

PROPERTIES = ("os_distro", "os_version", "hw_disk_bus", "build")
DISTROS = ("ubuntu", "debian", "centos", "fedora", "cirros")
EPOCH = dt.datetime(2025, 1, 1)
NS = uuid.UUID("6f1c2a3e-2f0b-4c59-9b1a-0d0c0f5e7a11")


def project(n: int) -> str:
    return uuid.uuid5(NS, f"project-{n}").hex


def image_id(k: int) -> str:
    return str(uuid.uuid5(NS, f"image-{k}"))


def dataset(n_images: int, n_projects: int) -> Iterator[dict[str, Any]]:
    """The images, each with its properties, tags and members: the same for both servers."""
    for k in range(n_images):
        owner = k % n_projects
        visibility = ("public", "private", "private", "shared", "shared", "shared", "public", "private",
                      "community", "private")[k % 10]
        active = k % 10 != 7
        when = EPOCH + dt.timedelta(seconds=k * 7)
        members = []
        if visibility == "shared":
            members = [(project((owner + 1 + k % 7) % n_projects), "accepted"),
                       (project((owner + 11 + k % 5) % n_projects), "pending" if k % 2 else "rejected")]
        yield {
            "id": image_id(k), "name": f"image-{(k * 7919) % n_images:07d}", "owner": project(owner),
            "visibility": visibility, "status": "active" if active else "queued",
            "size": 1 << (20 + k % 12) if active else None, "disk_format": ("qcow2", "raw")[k % 2],
            "container_format": "bare", "created_at": when, "updated_at": when,
            "properties": {"os_distro": DISTROS[k % 5], "os_version": str(k % 23), "hw_disk_bus": "virtio",
                           "build": f"b{k % 1000}"},
            "tags": [f"tag-{k % 20}", f"batch-{k % 97}"],
            "members": members,
        }


def streamd_rows(images: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {"images": [], "image_properties": [], "image_tags": [],
                                             "image_members": []}
    for im in images:
        rows["images"].append({
            "id": im["id"], "name": im["name"], "status": im["status"], "visibility": im["visibility"],
            "protected": False, "os_hidden": False, "disk_format": im["disk_format"],
            "container_format": im["container_format"], "size": im["size"], "virtual_size": None,
            "checksum": None, "os_hash_algo": None, "os_hash_value": None, "min_disk": 0, "min_ram": 0,
            "owner": im["owner"], "created_at": im["created_at"], "updated_at": im["updated_at"],
            "deleted": False, "deleted_at": None})
        rows["image_properties"] += [{"image_id": im["id"], "name": k, "value": v}
                                     for k, v in im["properties"].items()]
        rows["image_tags"] += [{"image_id": im["id"], "value": t, "created_at": im["created_at"]}
                               for t in im["tags"]]
        rows["image_members"] += [{"image_id": im["id"], "member": m, "status": s, "created_at": im["created_at"],
                                   "updated_at": im["created_at"]} for m, s in im["members"]]
    return rows


def glance_rows(images: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {"images": [], "image_properties": [], "image_tags": [],
                                             "image_members": []}
    for im in images:
        at = im["created_at"]
        rows["images"].append({
            "id": im["id"], "name": im["name"], "size": im["size"], "status": im["status"], "created_at": at,
            "updated_at": im["updated_at"], "deleted_at": None, "deleted": False,
            "disk_format": im["disk_format"], "container_format": im["container_format"], "checksum": None,
            "owner": im["owner"], "min_disk": 0, "min_ram": 0, "protected": False, "virtual_size": None,
            "visibility": im["visibility"], "os_hidden": False, "os_hash_algo": None, "os_hash_value": None})
        rows["image_properties"] += [{"image_id": im["id"], "name": k, "value": v, "created_at": at,
                                      "updated_at": None, "deleted_at": None, "deleted": False}
                                     for k, v in im["properties"].items()]
        rows["image_tags"] += [{"image_id": im["id"], "value": t, "created_at": at, "updated_at": None,
                                "deleted_at": None, "deleted": False} for t in im["tags"]]
        rows["image_members"] += [{"image_id": im["id"], "member": m, "can_share": False, "status": s,
                                   "created_at": at, "updated_at": at, "deleted_at": None, "deleted": False}
                                  for m, s in im["members"]]
    return rows


async def load(url: str, to_rows: Callable[[list[dict[str, Any]]], dict[str, list[dict[str, Any]]]],
               n_images: int, n_projects: int, *, analyze: bool) -> None:
    """Bulk-insert the data set into the (migrated) schema at ``url``: COPY on PostgreSQL,
    executemany on SQLite, in chunks."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        meta = sa.MetaData()
        async with engine.begin() as conn:
            if to_rows is streamd_rows:
                from streamd.catalog import models
                meta = models.metadata
            else:  # Glance's schema as glance-manage db_sync made it
                await conn.run_sync(lambda c: meta.reflect(c, only=["images", "image_properties", "image_tags",
                                                                     "image_members"]))
            source = dataset(n_images, n_projects)
            while True:
                chunk = [im for _, im in zip(range(5000), source)]
                if not chunk:
                    break
                for name, rows in to_rows(chunk).items():
                    if not rows:
                        continue
                    if engine.dialect.name == "postgresql":
                        raw = (await conn.get_raw_connection()).driver_connection
                        columns = list(rows[0])
                        await raw.copy_records_to_table(name, records=[tuple(r[c] for c in columns) for r in rows],
                                                        columns=columns)
                    else:
                        await conn.execute(meta.tables[name].insert(), rows)
        if analyze:
            async with engine.begin() as conn:  # committed: statistics are rolled back with the transaction
                await conn.execute(sa.text("ANALYZE"))
    finally:
        await engine.dispose()


# ------------------------------------------------------------------------------ the client

class Client:
    """One keep-alive HTTP connection to a server, as a member of the first project."""

    def __init__(self, server: Server, project_id: str) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        self.headers = {"X-Project-Id": project_id, "X-User-Id": "bench-user", "X-Roles": "member,reader",
                        "Accept": "application/json"}

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[float, int, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        start = time.perf_counter()
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the kept-alive connection between requests: once more, anew.
                self.conn.close()
                if attempt:
                    raise
                start = time.perf_counter()
        elapsed = time.perf_counter() - start
        return elapsed, response.status, json.loads(payload) if payload else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def list_path(params: list[tuple[str, str]]) -> str:
    return "/v2/images" + ("?" + urlencode(params) if params else "")


LISTS: list[tuple[str, list[tuple[str, str]]]] = [
    ("list default", []),
    ("list visibility=all", [("visibility", "all")]),
    ("list member_status=all", [("member_status", "all")]),
    ("list tag= (1 in 20)", [("tag", "tag-6")]),
    ("list tag= (1 in 97)", [("tag", "batch-13")]),
    ("list property os_distro=", [("os_distro", "debian")]),
    ("list sort=name:asc,created_at:desc", [("sort", "name:asc,created_at:desc")]),
    ("list limit=20 sort_key=created_at", [("limit", "20"), ("sort_key", "created_at"), ("sort_dir", "desc")]),
]


def measure(clients: dict[str, Client], args: argparse.Namespace, own_ids: list[str]) -> dict[str, Any]:
    names = list(clients)
    results: dict[str, dict[str, list[float]]] = {}
    same: dict[str, bool] = {}
    errors: dict[str, int] = {n: 0 for n in names}

    def record(case: str, name: str, seconds: float, status: int, ok: tuple[int, ...] = (200,)) -> None:
        results.setdefault(case, {n: [] for n in names})[name].append(seconds)
        if status not in ok:
            errors[name] += 1

    rng = random.Random(5)
    made: set[str] = set()  # the images the bench creates (different ids on each server)
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for case, params in LISTS:
            listed = {}
            for name in order:
                seconds, status, body = clients[name].call("GET", list_path(params))
                record(case, name, seconds, status)
                listed[name] = [i["id"] for i in (body or {}).get("images", [])]
            if rep == 0:
                same[case] = len({tuple(v) for v in listed.values()}) == 1
        target = own_ids[rng.randrange(len(own_ids))]
        for name in order:
            seconds, status, _ = clients[name].call("GET", f"/v2/images/{target}")
            record("show", name, seconds, status)
        created = {}
        for name in order:
            seconds, status, body = clients[name].call(
                "POST", "/v2/images", {"name": f"bench-{rep}", "disk_format": "raw", "container_format": "bare",
                                       "tags": ["bench"], "os_distro": "cirros", "build": f"c{rep}"})
            record("create", name, seconds, status, (201,))
            created[name] = body["id"] if status == 201 else None
            made.add(created[name] or "")
        for name in order:
            if created[name] is None:
                continue
            seconds, status, _ = clients[name].call(
                "PATCH", f"/v2/images/{created[name]}",
                [{"op": "replace", "path": "/os_distro", "value": "ubuntu"},
                 {"op": "add", "path": "/hw_disk_bus", "value": "scsi"},
                 {"op": "remove", "path": "/build"},
                 {"op": "replace", "path": "/tags", "value": ["bench", "patched"]},
                 {"op": "replace", "path": "/name", "value": f"patched-{rep}"}],
                "application/openstack-images-v2.1-json-patch")
            record("patch", name, seconds, status)
        if rep % 10 == 9:
            print(f"  {rep + 1}/{args.reps} rounds", flush=True)

    # Show again, each server alone: --reps shows of its own in a row, none of the other server's
    # requests between them. Above, every request follows one to the other server, so each starts
    # on a machine that has left this server idle for the other's (a list: ~200 ms for Glance);
    # on this VM that alone costs a trivial request 2-4 ms (a no-op /versions: 0.5 ms back to back).
    for name in names:
        for _ in range(args.reps):
            target = own_ids[rng.randrange(len(own_ids))]
            seconds, status, _ = clients[name].call("GET", f"/v2/images/{target}")
            record("show (back to back)", name, seconds, status)

    # Every page, first to last, by marker.
    walks: dict[str, list[float]] = {}
    walked: dict[str, list[str]] = {}
    for name in names:
        pages, ids = [], []
        path = list_path([("limit", str(args.page_size))])
        while path:
            seconds, status, body = clients[name].call("GET", path)
            if status != 200:
                errors[name] += 1
                break
            pages.append(seconds)
            ids += [i["id"] for i in body["images"] if i["id"] not in made]
            path = body.get("next")
        walks[name], walked[name] = pages, ids
        print(f"  {name}: walked {len(ids)} images in {len(pages)} pages, {sum(pages):.1f} s", flush=True)
    results["list every page (marker)"] = walks
    same["list every page (marker)"] = len({tuple(v) for v in walked.values()}) == 1
    return {"results": results, "same": same, "errors": errors,
            "walk": {n: {"pages": len(walks[n]), "images": len(walked[n]), "seconds": sum(walks[n]),
                         "first_tenth_p50_ms": 1000 * percentile(walks[n][:max(1, len(walks[n]) // 10)], 0.5),
                         "last_tenth_p50_ms": 1000 * percentile(walks[n][-max(1, len(walks[n]) // 10):], 0.5)}
                     for n in names}}


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"catalogue bench: {args.images} images, {args.projects} projects, {args.db}, "
             f"{args.reps} rounds, walk page {args.page_size}",
             f"{'request':38} {'streamd p50':>11} {'p99':>8} {'glance p50':>11} {'p99':>8} {'x p99':>7} same",
             "-" * 94]
    for case, by in summary["results"].items():
        s50, s99 = (1000 * percentile(by["streamd"], q) for q in (0.5, 0.99))
        g50, g99 = (1000 * percentile(by["glance"], q) for q in (0.5, 0.99))
        same = summary["same"].get(case)
        lines.append(f"{case:38} {s50:11.1f} {s99:8.1f} {g50:11.1f} {g99:8.1f} {g99 / s99:7.1f} "
                     f"{'' if same is None else ('yes' if same else 'NO')}")
    lines.append("(ms; x p99 = Glance p99 / streamd p99; same: both listed the same ids, in the same order)")
    for name, walk in summary["walk"].items():
        lines.append(f"walk {name}: {walk['images']} images, {walk['pages']} pages, {walk['seconds']:.1f} s; "
                     f"page p50 first tenth {walk['first_tenth_p50_ms']:.1f} ms, last tenth "
                     f"{walk['last_tenth_p50_ms']:.1f} ms")
    lines.append(f"failed requests: {summary['errors']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ databases

def pg_databases(pg_url: str | None) -> tuple[str, str, Callable[[], None]]:
    """Two fresh databases on the PostgreSQL server (asyncpg URLs), and how to drop them."""
    import asyncpg

    url = pg_url or os.environ.get("STREAMD_TEST_PG_URL")
    if not url:
        raise SystemExit("--db postgresql needs --pg-url or STREAMD_TEST_PG_URL")
    root = url.replace("+asyncpg", "").rsplit("/", 1)[0]
    tag = uuid.uuid4().hex[:10]
    names = [f"bench_streamd_{tag}", f"bench_glance_{tag}"]

    async def admin(*sql: str) -> None:
        conn = await asyncpg.connect(root + "/postgres")
        try:
            for statement in sql:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(*(f"CREATE DATABASE {n}" for n in names)))

    def drop() -> None:
        asyncio.run(admin(*(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names)))
    base = url.rsplit("/", 1)[0]
    return base + "/" + names[0], base + "/" + names[1], drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--pg-url")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--glance-venv", type=Path, default=None,
                        help="Glance 33's venv (default: .venv-glance of the main checkout, created if missing)")
    args = parser.parse_args()

    venv = args.glance_venv or next((p for p in (REPO / ".venv-glance", Path("/work/main/.venv-glance"))
                                     if p.exists()), REPO / ".venv-glance")
    args.out.mkdir(parents=True, exist_ok=True)
    # The servers' directories: short paths (streamd's admin socket lives there; AF_UNIX paths are short).
    work = Path(tempfile.mkdtemp(prefix="catbench-"))
    drop: Callable[[], None] = lambda: None  # noqa: E731
    if args.db == "postgresql":
        s_url, g_url, drop = pg_databases(args.pg_url)
        glance_url = g_url.replace("+asyncpg", "+psycopg2")
        if "+psycopg2" not in glance_url:
            glance_url = glance_url.replace("postgresql://", "postgresql+psycopg2://")
    else:
        s_url = f"sqlite+aiosqlite:///{work / 'streamd.sqlite'}"
        g_url = f"sqlite+aiosqlite:///{work / 'glance.sqlite'}"
        glance_url = f"sqlite:///{work / 'glance.sqlite'}"
    try:
        with Streamd(work / "streamd", s_url) as streamd, Glance(work / "glance", venv, glance_url) as glance:
            started = time.monotonic()
            analyze = args.db == "postgresql"
            asyncio.run(load(s_url, streamd_rows, args.images, args.projects, analyze=analyze))
            asyncio.run(load(g_url, glance_rows, args.images, args.projects,
                             analyze=analyze))
            print(f"loaded {args.images} images into both catalogues in {time.monotonic() - started:.1f} s",
                  flush=True)
            me = project(0)
            own = [image_id(k) for k in range(0, args.images, args.projects)]
            clients = {"streamd": Client(streamd, me), "glance": Client(glance, me)}
            summary = measure(clients, args, own)
    finally:
        drop()
        shutil.rmtree(work, ignore_errors=True)
    text = table(summary, args)
    print(text, flush=True)
    (args.out / f"catalog-{args.db}-{args.images}.json").write_text(json.dumps(
        {"meta": {"images": args.images, "projects": args.projects, "db": args.db, "reps": args.reps,
                  "page_size": args.page_size, "at": dt.datetime.now(dt.timezone.utc).isoformat()},
         **summary}, indent=1))


if __name__ == "__main__":
    main()
