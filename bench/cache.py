"""streamd's image cache: single flight under 50 cold GETs, hit speed, Range, peer misses; Glance alongside.

    .venv/bin/python bench/cache.py [--quick] [--out bench/out] [--reps N] [--size-mib N] [--clients N]

One random image (default 1 GiB; --quick 256 MiB and 1 repetition), uploaded to:

- streamd node A and node B, sharing one SQLite catalogue (`[database] connection`) and
  one file-store directory, each with its own cache, `peer_url` and `peer_token = x`, and
  `image_cache_local_stores = true` (off by default: file-store images then bypass the cache);
- Glance 33.0.0 (bench/servers.py: uWSGI, file store, SQLite, cache on).

Measured, medians of the repetitions:

1. cold: N (default 50) concurrent `curl | md5sum` GETs, all started together, on an empty
   cache (the image evicted first with `streamd-cache-manage delete-cached-image` or Glance's
   `DELETE /v2/cache/{id}`). Store reads = the admin socket's `stats` store_reads (before/after)
   for streamd; for both servers also every open of the image's file in the file store, by
   any process (a fanotify FAN_OPEN_PERM mark on the file, see OpenCounter): what Glance's
   store reads are counted by. Every body's md5 is checked. Glance's cold run is done once
   (`--glance-cold-reps`): it serves 4 requests at a time.
2. hit: one curl GET of the cached image, MiB/s and server CPU-s/GiB, against the plain
   loopback copy of the same file (bench/refsource.py: os.sendfile; 1 MiB read/write) and
   Glance's cache hit, interleaved.
3. Range from the cache: the middle half (not aligned), streamd and Glance; md5 checked once.
4. peer miss: the image evicted from B's cache; a GET on B, served from A's cache. MiB/s
   against a hit on A just before; B's store reads must not move. CPU-s/GiB of A (serving) and
   of B alone (receiving: its process tree from before the GET until its copy is committed,
   split by thread: the loop and each worker). `--peer-only` runs this step alone (A's cache
   filled by one GET first, no Glance).
   On this project's VMs the first repetition costs B ~1.5-2 CPU-s/GiB more than the next ones:
   the kernel reports free pages to the host at once (virtio free page reporting,
   /sys/module/page_reporting, min_free_ms 0), so the page cache of a new file is made of pages
   the host must fault in again, charged to the writing thread's pwrite; the next repetition
   reuses the pages B's evicted copy has just freed. meta.page_reporting records the setting.

Load average (/proc/loadavg) at start and end; writes OUT/cache.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Meter, cpu_seconds, md5_of  # noqa: E402
from run import busy_cpu_seconds, read_through, transfer  # noqa: E402
from servers import REPO, Glance, RefSource, Streamd  # noqa: E402
from threadcpu import ThreadSampler  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
CACHE_MANAGE = REPO / ".venv/bin/streamd-cache-manage"
FAN_CLASS_CONTENT, FAN_CLOEXEC, FAN_MARK_ADD, FAN_OPEN_PERM, FAN_ALLOW, AT_FDCWD = 0x4, 0x1, 0x1, 0x10000, 0x1, -100


# ---------------------------------------------------------------- helpers

class OpenCounter:
    """Counts every open of one file, by any process: a fanotify permission mark (FAN_OPEN_PERM)
    on its inode, answered FAN_ALLOW at once by a thread. Permission events are never merged
    (inotify's IN_OPEN events are: identical successive events coalesce), so the count is exact.
    Needs CAP_SYS_ADMIN. Closing the fanotify descriptor releases any open still waiting."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.fd = libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY | os.O_LARGEFILE)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init (needs CAP_SYS_ADMIN)")
        if libc.fanotify_mark(self.fd, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD, str(path).encode()) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"fanotify_mark {path}")
        self.opens: list[int] = []  # pid of each open
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True, name="fanotify")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping:
            if not select.select([self.fd], [], [], 0.2)[0]:
                continue
            data = os.read(self.fd, 4096)
            offset = 0
            while offset + 24 <= len(data):
                length, _vers, _res, _mlen, _mask, event_fd, pid = struct.unpack_from("IBBHQii", data, offset)
                if event_fd >= 0:
                    os.write(self.fd, struct.pack("iI", event_fd, FAN_ALLOW))
                    os.close(event_fd)
                with self.lock:
                    self.opens.append(pid)
                offset += length

    def drain(self) -> dict[int, int]:
        """{pid: opens} since the last call."""
        time.sleep(0.3)  # let the thread answer what is queued
        with self.lock:
            opens, self.opens = self.opens, []
        return {pid: opens.count(pid) for pid in sorted(set(opens))}

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        os.close(self.fd)


def make_random(data_dir: Path, size: int) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"random-{size // MiB}M.bin"
    if not path.exists() or path.stat().st_size != size:
        print(f"creating {path} ...", flush=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(size // (4 * MiB)):
                f.write(os.urandom(4 * MiB))
            f.write(os.urandom(size % (4 * MiB)))
        tmp.rename(path)
        os.sync()
    return path


def loadavg() -> str:
    return open("/proc/loadavg").read().strip()


def page_reporting() -> dict[str, str] | None:
    """The kernel's free page reporting to a hypervisor (see step 4), None when not built in."""
    base = Path("/sys/module/page_reporting/parameters")
    if not base.is_dir():
        return None
    return {p.name: p.read_text().strip() for p in sorted(base.iterdir())
            if p.name in ("page_reporting_order", "min_free_ms")}


class Node(Streamd):
    """streamd sharing a catalogue and a file store with other nodes, peers on."""

    def __init__(self, workdir: Path, name: str, shared: Path, options: dict[str, str] | None = None) -> None:
        super().__init__(workdir, options=options)
        self.name, self.shared = name, shared

    def prepare(self) -> list[str]:
        cmd = super().prepare()
        (self.workdir / "streamd.conf").write_text(
            f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {self.port}\ndata_dir = {self.workdir / 'data'}\n"
            f"peer_url = {self.url}\npeer_token = x\n"
            # Since 4b0b124 images of a local file store bypass the cache by default: cache them,
            # so that this bench's file store stands for a slow or remote store.
            "image_cache_local_stores = true\n"
            + "".join(f"{key} = {value}\n" for key, value in self.options.items())
            + f"[database]\nconnection = sqlite:///{self.shared / 'shared.sqlite'}\n"
            f"[fs]\nfilesystem_store_datadir = {self.shared / 'images'}\n")
        return cmd

    @property
    def socket(self) -> Path:
        return self.workdir / "data/run/admin.sock"

    def manage(self, *args: str) -> dict:
        r = subprocess.run([str(CACHE_MANAGE), "--socket", str(self.socket), "--json", *args],
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"streamd-cache-manage {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def store_reads(self) -> int:
        return sum(self.manage("stats").get("result", {}).get("store_reads", {}).values())

    def evict(self, image_id: str) -> None:
        self.manage("delete-cached-image", image_id)
        self.wait_cached(image_id, False)

    def wait_cached(self, image_id: str, cached: bool = True, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = {e["image_id"] for e in self.api("GET", "/v2/cache")["cached_images"]}
            if (image_id in ids) == cached:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: image {image_id} {'not ' if cached else 'still '}cached after {timeout} s")


def upload(server, path: Path) -> str:
    image_id = server.create_image(f"cache-bench-{path.stem}")
    read_through(path)
    r = transfer(server, [server.file_url(image_id)], path, path.stat().st_size)
    if r["failed"]:
        raise RuntimeError(f"{server.name}: upload failed: {r['errors']}")
    return image_id


def cold_many(server, url: str, clients: int, size: int, md5: str, counter: OpenCounter) -> dict:
    """`clients` concurrent GETs piped through md5sum, all started together."""
    counter.drain()
    cmd = f"curl -sS -w '%{{stderr}}%{{http_code}} %{{size_download}}' '{url}' | md5sum"
    with Meter(server.pid) as usage:
        procs = [subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(clients)]
        outputs = [p.communicate() for p in procs]
    opens = counter.drain()
    ok, errors = 0, []
    for out, err in outputs:
        digest = out.split()[0] if out.split() else ""
        status = err.strip().splitlines()[-1] if err.strip() else ""
        if status == f"200 {size}" and digest == md5:
            ok += 1
        else:
            errors.append(f"{status or err.strip()[:100]} md5 {'ok' if digest == md5 else digest}")
    return {"clients": clients, "ok_md5": ok, "failed": clients - ok, "errors": sorted(set(errors))[:5],
            "wall_s": usage.wall_s, "aggregate_mib_s": ok * size / MiB / usage.wall_s,
            "cpu_s_per_gib": usage.cpu_s / (max(ok, 1) * size / GiB), "peak_rss_mib": usage.peak_rss_mib,
            "store_file_opens": sum(opens.values()), "opens_by_pid": opens}


def one_get(server, url: str, size: int, byte_range: tuple[int, int] | None = None) -> dict:
    cmd = ["curl", "-sS", "-o", os.devnull, "-w", "%{http_code} %{size_download}"]
    want = size
    if byte_range:
        cmd += ["-r", f"{byte_range[0]}-{byte_range[1]}"]
        want = byte_range[1] - byte_range[0] + 1
    with Meter(server.pid) as usage:
        r = subprocess.run(cmd + [url], capture_output=True, text=True)
    code, _, got = r.stdout.partition(" ")
    ok = code == ("206" if byte_range else "200") and int(got or 0) == want
    return {"mib_s": want / MiB / usage.wall_s if ok else 0.0, "cpu_s_per_gib": usage.cpu_s / (want / GiB),
            "wall_s": usage.wall_s, "failed": int(not ok), "status": f"{code} {got}"}


def curl_md5(url: str, byte_range: tuple[int, int] | None = None) -> str:
    rng = f"-r {byte_range[0]}-{byte_range[1]} " if byte_range else ""
    return subprocess.run(f"curl -sS {rng}'{url}' | md5sum", shell=True, capture_output=True,
                          text=True).stdout.split()[0]


def med(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB image, 1 repetition")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--size-mib", type=int, help="image size (default 1024, or 256 with --quick)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent cold GETs (default 50)")
    parser.add_argument("--glance-cold-reps", type=int, default=1, help="Glance cold runs (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="a [DEFAULT] option for both streamd nodes (repeatable), e.g. image_cache_direct_io=true")
    parser.add_argument("--peer-only", action="store_true",
                        help="only step 4 (peer miss): no Glance, no cold burst, hits or ranges")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    size = (args.size_mib or (256 if args.quick else 1024)) * MiB
    out = args.out.resolve()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    started, busy = time.monotonic(), busy_cpu_seconds()
    meta: dict = {"file_mib": size // MiB, "repetitions": reps, "clients": args.clients, "cores": os.cpu_count(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": loadavg(),
                  "page_reporting": page_reporting()}
    print(f"load average at start: {meta['loadavg_start']}", flush=True)
    git = ["git", "-C", str(REPO)]
    meta["options"] = args.set
    meta["streamd_commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True).stdout.strip() + (
        " with uncommitted changes in streamd/" if subprocess.run(
            [*git, "status", "--porcelain", "--", "streamd"], capture_output=True, text=True).stdout else "")
    path = make_random(out / "data", size)
    file_md5 = md5_of(path)
    rng = (size // 4 + 4097, size // 4 * 3 + 4096)  # the middle half, unaligned
    rng_md5 = md5_of(path, rng[0], rng[1] - rng[0] + 1)
    shared = out / "cache-shared"
    shutil.rmtree(shared, ignore_errors=True)
    (shared / "images").mkdir(parents=True)
    res: dict = {"cold": {"streamd": [], "glance": []}, "hit": {"streamd": [], "glance": [], "sendfile": [],
                 "readwrite": []}, "range": {"streamd": [], "glance": []}, "peer": {"miss_b": [], "hit_a": []}}
    checks: dict = {}
    with ExitStack() as stack:
        print("starting streamd nodes A and B, Glance, the reference sources ...", flush=True)
        options = dict(item.split("=", 1) for item in args.set)
        a = stack.enter_context(Node(out / "cache-a", "streamd-A", shared, options))
        b = stack.enter_context(Node(out / "cache-b", "streamd-B", shared, options))
        if not args.peer_only:
            glance = stack.enter_context(Glance(out / "cache-glance", REPO / ".venv-glance"))
            sources = {m: stack.enter_context(RefSource(out / f"cache-ref-{m}", m, path.parent))
                       for m in ("sendfile", "readwrite")}
        print("uploading ...", flush=True)
        sid = upload(a, path)
        s_url, b_url = a.file_url(sid), b.file_url(sid)
        s_counter = OpenCounter(shared / "images" / sid)
        stack.callback(s_counter.close)
        if not args.peer_only:
            gid = upload(glance, path)
            g_url = glance.file_url(gid)
            g_counter = OpenCounter(glance.workdir / "images" / gid)
            stack.callback(g_counter.close)
        os.sync()
        if args.peer_only:
            # A's cache filled from the store once (recording the image's BLAKE3), as step 1 would.
            one_get(a, s_url, size)
            a.wait_cached(sid)
            glance_log_errors: list[str] = []

        if not args.peer_only:
            # 1. cold: N concurrent GETs on an empty cache
            for rep in range(reps):
                print(f"rep {rep + 1}/{reps}: streamd {args.clients} cold GETs ...", flush=True)
                if sid in {e["image_id"] for e in a.api("GET", "/v2/cache")["cached_images"]}:
                    a.evict(sid)
                before = a.store_reads()
                r = cold_many(a, s_url, args.clients, size, file_md5, s_counter)
                r["store_reads_admin"] = a.store_reads() - before
                res["cold"]["streamd"].append(r)
                a.wait_cached(sid)
            for rep in range(args.glance_cold_reps):
                print(f"Glance {args.clients} cold GETs ({rep + 1}/{args.glance_cold_reps}) ...", flush=True)
                if rep:
                    glance.api("DELETE", f"/v2/cache/{gid}")
                    time.sleep(1)
                res["cold"]["glance"].append(cold_many(glance, g_url, args.clients, size, file_md5, g_counter))
                glance.settle([gid])
            glance_log_errors = glance.new_log_errors()

            # 2-3. hits and ranges, interleaved with the plain copies
            read_through(path)
            for rep in range(reps):
                print(f"rep {rep + 1}/{reps}: cache hits, plain copies, ranges ...", flush=True)
                res["hit"]["streamd"].append(one_get(a, s_url, size))
                for mode, source in sources.items():
                    t = transfer(source, [f"{source.url}/{path.name}"], None, size)
                    res["hit"][mode].append({k: t[k] for k in ("mib_s", "cpu_s_per_gib", "failed")})
                res["hit"]["glance"].append(one_get(glance, g_url, size))
                res["range"]["streamd"].append(one_get(a, s_url, size, rng))
                res["range"]["glance"].append(one_get(glance, g_url, size, rng))
            checks["streamd_range_md5_ok"] = curl_md5(s_url, rng) == rng_md5
            checks["glance_range_md5_ok"] = curl_md5(g_url, rng) == rng_md5
            checks["streamd_hit_md5_ok"] = curl_md5(s_url) == file_md5

        # 4. peer miss on B, served from A's cache
        for rep in range(reps):
            print(f"rep {rep + 1}/{reps}: peer miss on B ...", flush=True)
            if sid in {e["image_id"] for e in b.api("GET", "/v2/cache")["cached_images"]}:
                b.evict(sid)
            res["peer"]["hit_a"].append(one_get(a, s_url, size))
            reads_b, reads_a, cpu_a = b.store_reads(), a.store_reads(), cpu_seconds(a.pid)
            s_counter.drain()
            cpu_b = cpu_seconds(b.pid)
            with ThreadSampler(b.pid) as threads_b:
                r = one_get(b, b_url, size)
                b.wait_cached(sid)  # the fill's last steps (digest check, fsync, commit) count too
            r["peer_cpu_s_per_gib"] = (cpu_seconds(a.pid) - cpu_a) / (size / GiB)
            # The receiving node alone, from before the GET until its copy is committed.
            r["receiver_cpu_s_per_gib"] = (cpu_seconds(b.pid) - cpu_b) / (size / GiB)
            used = threads_b.used()
            loop_b = used.pop(b.pid, 0.0)
            r["receiver_threads_cpu_s_per_gib"] = {
                "loop": round(loop_b / (size / GiB), 3),
                "workers": [round(c / (size / GiB), 3) for c in sorted(used.values(), reverse=True) if c > 0.005]}
            print(f"  B (receiver) {r['receiver_cpu_s_per_gib']:.2f} CPU-s/GiB (loop {r['receiver_threads_cpu_s_per_gib']['loop']:.2f}, "
                  f"workers {r['receiver_threads_cpu_s_per_gib']['workers']}); A (server) {r['peer_cpu_s_per_gib']:.2f}; "
                  f"{r['mib_s']:.0f} MiB/s; load {loadavg()}", flush=True)
            r["store_reads_b"] = b.store_reads() - reads_b
            r["store_reads_a"] = a.store_reads() - reads_a
            r["store_file_opens"] = sum(s_counter.drain().values())
            res["peer"]["miss_b"].append(r)
        b.wait_cached(sid)
        checks["peer_b_cached_md5_ok"] = curl_md5(b_url) == file_md5
        checks["b_logged_peer_fetch"] = "fetching from peer" in b.log.read_text(errors="replace")
        streamd_log_errors = a.new_log_errors() + b.new_log_errors()

    meta["loadavg_end"] = loadavg()
    meta["run_seconds"] = round(time.monotonic() - started)
    (machine, ours), (machine0, ours0) = busy_cpu_seconds(), busy
    meta["other_load_cores"] = round(((machine - machine0) - (ours - ours0)) / meta["run_seconds"], 2)
    meta["streamd_log_errors"], meta["glance_log_errors"] = streamd_log_errors, glance_log_errors

    summary = {"hit": {k: {"mib_s": med(v, "mib_s"), "cpu_s_per_gib": med(v, "cpu_s_per_gib")}
                       for k, v in res["hit"].items()},
               "range": {k: {"mib_s": med(v, "mib_s"), "cpu_s_per_gib": med(v, "cpu_s_per_gib")}
                         for k, v in res["range"].items()},
               "peer": {"miss_b_mib_s": med(res["peer"]["miss_b"], "mib_s"),
                        "miss_b_cpu_s_per_gib": med(res["peer"]["miss_b"], "cpu_s_per_gib"),
                        "peer_a_cpu_s_per_gib": med(res["peer"]["miss_b"], "peer_cpu_s_per_gib"),
                        "receiver_b_cpu_s_per_gib": med(res["peer"]["miss_b"], "receiver_cpu_s_per_gib"),
                        "hit_a_mib_s": med(res["peer"]["hit_a"], "mib_s"),
                        "store_reads_b": [r["store_reads_b"] for r in res["peer"]["miss_b"]],
                        "store_reads_a": [r["store_reads_a"] for r in res["peer"]["miss_b"]],
                        "store_file_opens": [r["store_file_opens"] for r in res["peer"]["miss_b"]]},
               "cold": {k: {"aggregate_mib_s": med(v, "aggregate_mib_s"), "cpu_s_per_gib": med(v, "cpu_s_per_gib"),
                            "wall_s": med(v, "wall_s"), "peak_rss_mib": med(v, "peak_rss_mib"),
                            "store_reads_admin": [r.get("store_reads_admin") for r in v],
                            "store_file_opens": [r["store_file_opens"] for r in v],
                            "ok_md5": [r["ok_md5"] for r in v], "errors": sorted({e for r in v for e in r["errors"]})}
                        for k, v in res["cold"].items() if v},
               "checks": checks}
    p = summary["peer"]
    p["ratio_miss_b_vs_hit_a"] = p["miss_b_mib_s"] / p["hit_a_mib_s"] if p["miss_b_mib_s"] and p["hit_a_mib_s"] else None
    results = {"meta": meta, "summary": summary, "runs": res}
    (out / "cache.json").write_text(json.dumps(results, indent=1, default=str))
    print()
    print(table(results))
    print(f"\nwrote {out / 'cache.json'} in {meta['run_seconds']} s")
    return 0


def _n(x, fmt=".0f") -> str:
    return "-" if x is None else format(x, fmt)


def table(results: dict) -> str:
    meta, s = results["meta"], results["summary"]
    lines = [f"streamd cache vs plain loopback copy and Glance 33 (cache on): {meta['file_mib']} MiB random image, "
             f"median of {meta['repetitions']}, {meta['cores']} cores",
             f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end; other processes "
             f"kept {meta['other_load_cores']} cores busy on average; run took {meta['run_seconds']} s; "
             f"streamd at {meta.get('streamd_commit')}", ""]
    lines.append(f"cold: {meta['clients']} concurrent GETs (curl | md5sum) on an empty cache")
    head = f"  {'server':8}| {'agg MiB/s':>9} {'wall s':>7} {'CPU s/GiB':>9} {'RSS':>5} | {'store reads (admin)':>19} {'file opens (fanotify)':>21} | bodies md5 ok"
    lines += [head, "  " + "-" * (len(head) - 2)]
    for k, c in s["cold"].items():
        lines.append(f"  {k:8}| {_n(c['aggregate_mib_s']):>9} {_n(c['wall_s'], '.1f'):>7} {_n(c['cpu_s_per_gib'], '.2f'):>9} "
                     f"{_n(c['peak_rss_mib']):>5} | {str(c['store_reads_admin'] if k == 'streamd' else '-'):>19} "
                     f"{str(c['store_file_opens']):>21} | {c['ok_md5']} of {meta['clients']}"
                     + (f"  errors: {c['errors']}" if c["errors"] else ""))
    h = s["hit"]
    best = max(filter(None, (h["sendfile"]["mib_s"], h["readwrite"]["mib_s"])), default=None)
    lines += ["", "cache hit, 1 client (curl -o /dev/null)",
              f"  {'source':28}| {'MiB/s':>6} {'CPU s/GiB':>9} | {'streamd / this':>14}"]
    for k, label in (("streamd", "streamd hit"), ("sendfile", "plain copy, os.sendfile"),
                     ("readwrite", "plain copy, 1 MiB read/write"), ("glance", "Glance hit")):
        lines.append(f"  {label:28}| {_n(h[k]['mib_s']):>6} {_n(h[k]['cpu_s_per_gib'], '.2f'):>9} | "
                     f"{_n(h['streamd']['mib_s'] / h[k]['mib_s'] if h[k]['mib_s'] and h['streamd']['mib_s'] else None, '.2f'):>14}")
    lines.append(f"  streamd hit / fastest plain copy = "
                 f"{_n(h['streamd']['mib_s'] / best if best and h['streamd']['mib_s'] else None, '.2f')}")
    r = s["range"]
    lines += ["", f"Range from the cache (middle half, unaligned): streamd {_n(r['streamd']['mib_s'])} MiB/s "
                  f"({_n(r['streamd']['cpu_s_per_gib'], '.2f')} CPU s/GiB), Glance {_n(r['glance']['mib_s'])} MiB/s; "
                  f"md5 streamd {'ok' if s['checks'].get('streamd_range_md5_ok') else 'WRONG'}, "
                  f"Glance {'ok' if s['checks'].get('glance_range_md5_ok') else 'WRONG'}"]
    p = s["peer"]
    ratio = p["ratio_miss_b_vs_hit_a"]
    lines += ["", "peer miss: GET on node B, image cached only on node A (shared SQLite catalogue)",
              f"  B miss served from A: {_n(p['miss_b_mib_s'])} MiB/s (B during the GET {_n(p['miss_b_cpu_s_per_gib'], '.2f')} + "
              f"A {_n(p['peer_a_cpu_s_per_gib'], '.2f')} CPU s/GiB); hit on A: {_n(p['hit_a_mib_s'])} MiB/s; "
              f"ratio {_n(ratio, '.2f')}",
              f"  receiving node B alone, GET until its copy is committed: {_n(p.get('receiver_b_cpu_s_per_gib'), '.2f')} "
              f"CPU s/GiB (target <= 1.5: {'OK' if (p.get('receiver_b_cpu_s_per_gib') or 9) <= 1.5 else 'MISSED'}); "
              f"ratio target >= 0.8: {'OK' if ratio and ratio >= 0.8 else 'MISSED'}",
              f"  store reads during the misses: B {p['store_reads_b']}, A {p['store_reads_a']}, "
              f"store file opens {p['store_file_opens']}; B logged a peer fetch: {s['checks'].get('b_logged_peer_fetch')}; "
              f"B's copy md5 {'ok' if s['checks'].get('peer_b_cached_md5_ok') else 'WRONG'}"]
    cold = s["cold"].get("streamd", {})
    ok = all(x == 1 for x in cold.get("store_reads_admin", [])) and all(x == meta["clients"] for x in cold.get("ok_md5", []))
    lines += ["", f"single flight: streamd store reads per cold burst {cold.get('store_reads_admin')} (must be 1), "
                  f"all bodies right: {'OK' if ok else 'FAILED'}"]
    if meta["streamd_log_errors"]:
        lines += ["streamd logged errors:"] + [f"  {e}" for e in meta["streamd_log_errors"][:10]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
