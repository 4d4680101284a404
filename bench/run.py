"""streamd against real Glance 33.0.0, side by side, on the same files, in one run.

    .venv/bin/python bench/run.py [--quick] [--out bench/out] [--reps N] [--size-mib N]

Starts streamd (.venv, default options) and Glance (uWSGI, file store, SQLite, cache on;
its venv is created under OUT on first use) and, for each file (half zeros in
alternating 4 MiB runs; random) and each repetition, measures with curl clients:

- upload (PUT /file) and download (GET /file) MiB/s, 1 client and 4 concurrent clients
  on 4 different images. The first download after the upload is "cold" (a cache miss,
  which fills the cache), the second, once GET /v2/cache lists the image, "warm" (a hit);
- server CPU-seconds per GiB (utime+stime of the server's process tree, before/after)
  and peak server RSS (sum over the tree, sampled every 50 ms);
- failed requests (Glance on SQLite loses some concurrent uploads: "database is locked");
- the machine's references, once per repetition on the random file (neither depends on
  the bytes): single-core md5 and sha512 (hashlib, 8 MiB chunks, hashing time only) and
  the plainest loopback copies of the file to curl, 1 and 4 clients (bench/refsource.py:
  os.sendfile, and 1 MiB read/write).

Prints a table (medians over the repetitions; failures are totals), writes OUT/results.json
and OUT/results.png. streamd's /metrics (its own port) is scraped every 0.5 s all along:
OUT/metrics.json and OUT/throughput.png (MiB/s into the stores, read from them and sent to
clients, over time; bench/scrape.py). Both servers are stopped at the end, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from scrape import Scraper  # noqa: E402
from procs import CLK_TCK, Meter, cpu_seconds  # noqa: E402
from servers import REPO, Glance, RefSource, Server, Streamd  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
RUN = 4 * MiB  # alternating data/zero runs of the half-zero file
HASH_CHUNK = 8 * MiB
CLIENTS = (1, 4)


# ---------------------------------------------------------------- files and kernels

def make_files(data_dir: Path, size: int) -> dict[str, Path]:
    """halfzero and random files of `size` bytes, created once and reused."""
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind in ("halfzero", "random"):
        path = data_dir / f"{kind}-{size // MiB}M.bin"
        if not path.exists() or path.stat().st_size != size:
            print(f"creating {path} ...", flush=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                for n in range(size // RUN):
                    f.write(bytes(RUN) if kind == "halfzero" and n % 2 else os.urandom(RUN))
            tmp.rename(path)
            os.sync()  # no writeback of the new file during the first measurements
        files[kind] = path
    return files


def read_through(path: Path) -> None:
    """Bring the file back into the page cache (the images of the last phase may have pushed it out)."""
    buf = bytearray(HASH_CHUNK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def hash_mib_s(path: Path, algorithm: str) -> tuple[float, float]:
    """Single-core hashlib speed over the file in 8 MiB chunks (reads not timed), by the
    wall clock (what a server sees on this machine now) and by this thread's CPU time
    (the core's speed, whatever else runs)."""
    h, buf = hashlib.new(algorithm), bytearray(HASH_CHUNK)
    view, wall, cpu = memoryview(buf), 0.0, 0.0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            t, c = time.perf_counter(), time.thread_time()
            h.update(view[:n])
            wall += time.perf_counter() - t
            cpu += time.thread_time() - c
    mib = path.stat().st_size / MiB
    return mib / wall, mib / cpu


# ---------------------------------------------------------------- transfers

def curl(url: str, upload: Path | None, body: str) -> list[str]:
    cmd = ["curl", "-sS", "-o", body, "-w", "%{http_code} %{size_download}"]
    if upload is not None:
        cmd += ["-T", str(upload), "-X", "PUT", "-H", "Content-Type: application/octet-stream", "-H", "Expect:"]
    return cmd + [url]


def _error_text(code: str, body: Path, stderr: str) -> str:
    text = body.read_text(errors="replace") if body.exists() else ""
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()
    return f"HTTP {code}: {text or stderr.strip()}"[:200]


def transfer(server: Server, urls: list[str], upload: Path | None, size: int) -> dict:
    """Run one curl per URL, all at once; measure the server meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        bodies = [Path(tmp, str(n)) if upload else Path(os.devnull) for n in range(len(urls))]
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with Meter(server.pid) as usage:
            procs = [subprocess.Popen(curl(url, upload, str(body)), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for url, body in zip(urls, bodies)]
            outputs = [p.communicate() for p in procs]
        # Only the curls are reaped meanwhile (the servers run on), so this is the clients' CPU.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu_s = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
        ok, errors = [], []
        for (out, err), body in zip(outputs, bodies):
            code, _, got = out.partition(" ")
            good = code == "204" if upload else (code == "200" and int(got or 0) == size)
            ok.append(good)
            if not good:
                errors.append(_error_text(code, body, err))
    errors += server.new_log_errors()
    return {
        "mib_s": sum(ok) * size / MiB / usage.wall_s if any(ok) else 0.0,
        # Per GiB moved: Glance's failed uploads fail at their first status update, before the data.
        "cpu_s_per_gib": usage.cpu_s / (max(1, sum(ok)) * size / GiB),
        "client_cpu_s_per_gib": client_cpu_s / (max(1, sum(ok)) * size / GiB),
        "peak_rss_mib": usage.peak_rss_mib,
        "wall_s": usage.wall_s,
        "attempted": len(urls),
        "failed": len(urls) - sum(ok),
        "errors": errors,
        "_ok": ok,
    }


def bench_server(server: Server, path: Path, clients: int) -> dict:
    """Upload `clients` images at once, then download them twice (cold, warm); delete them."""
    size = path.stat().st_size
    ids = [server.create_image(f"bench-{path.stem}-{n}") for n in range(clients)]
    read_through(path)
    try:
        result = {"upload": transfer(server, [server.file_url(i) for i in ids], path, size)}
        done = [i for i, ok in zip(ids, result["upload"].pop("_ok")) if ok]
        os.sync()  # start each phase with no dirty pages from the last one
        if done:
            urls = [server.file_url(i) for i in done]
            result["download_cold"] = transfer(server, urls, None, size)
            server.settle(done)  # Glance: wait until the cold reads are committed to its cache
            result["download_warm"] = transfer(server, urls, None, size)
            for phase in ("download_cold", "download_warm"):
                result[phase].pop("_ok")
    finally:
        for i in ids:
            server.delete_image(i)
        os.sync()
    return result


def bench_reference(path: Path, sources: dict[str, RefSource]) -> dict:
    size = path.stat().st_size
    result = {}
    for algo in ("md5", "sha512"):
        result[f"{algo}_mib_s"], result[f"{algo}_cpu_mib_s"] = hash_mib_s(path, algo)
    for mode, source in sources.items():
        for clients in CLIENTS:
            r = transfer(source, [f"{source.url}/{path.name}"] * clients, None, size)
            result[f"{mode}_c{clients}"] = {k: r[k] for k in ("mib_s", "cpu_s_per_gib", "failed")}
    return result


# ---------------------------------------------------------------- medians

def aggregate(samples: list):
    """Medians of numbers, totals of failure counts, union of error texts, key by key."""
    first = samples[0]
    if isinstance(first, dict):
        out = {}
        for key in first:
            values = [s[key] for s in samples if key in s]
            out[key] = sum(values) if key in ("attempted", "failed") else aggregate(values)
        return out
    if isinstance(first, list):
        return sorted({item for s in samples for item in s})
    return statistics.median(samples)


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU-seconds the whole machine has been busy, CPU-seconds of this bench's own process tree)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    return busy / CLK_TCK, cpu_seconds(os.getpid())


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    streamd_version = subprocess.run([str(REPO / ".venv/bin/streamd"), "--version"],
                                     capture_output=True, text=True).stdout.strip()
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run([*git, "status", "--porcelain", "--", "streamd"], capture_output=True, text=True).stdout:
        commit += " with uncommitted changes in streamd/"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "streamd": f"{streamd_version}, {commit}",
            "glance": "33.0.0 (uWSGI, 2 processes x 2 threads, file store, SQLite, cache)",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()}


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 MiB files, 1 repetition")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--size-mib", type=int, help="file size (default 2048, or 512 with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="[SECTION.]OPTION=VALUE",
                        help="an option for streamd (repeatable; the default is streamd's defaults): [DEFAULT] by "
                             "name, another section as SECTION.OPTION, e.g. fs.filesystem_store_direct_io=true")
    args = parser.parse_args()
    options = dict(item.split("=", 1) for item in args.set)
    reps = args.reps or (1 if args.quick else 3)
    size = (args.size_mib or (512 if args.quick else 2048)) * MiB
    out = args.out.resolve()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanups

    free = shutil.disk_usage(out.parent if not out.exists() else out).free
    if free < 10 * size:
        print(f"warning: {free / GiB:.0f} GiB free; this run needs about {10 * size / GiB:.0f} GiB", flush=True)
    started, busy = time.monotonic(), busy_cpu_seconds()
    files = make_files(out / "data", size)
    meta = environment() | {"file_mib": size // MiB, "repetitions": reps, "clients": list(CLIENTS),
                             "streamd_options": options}
    runs, references = [], []
    with ExitStack() as stack:
        print("starting streamd, Glance and the reference sources ...", flush=True)
        streamd = stack.enter_context(Streamd(out / "streamd", options=options))
        servers = [streamd, stack.enter_context(Glance(out / "glance", REPO / ".venv-glance"))]
        scraper = stack.enter_context(Scraper(streamd.metrics_url))
        sources = {mode: stack.enter_context(RefSource(out / f"ref-{mode}", mode, out / "data"))
                   for mode in ("sendfile", "readwrite")}
        for rep in range(reps):
            print(f"rep {rep + 1}/{reps} machine references ...", flush=True)
            references.append(bench_reference(files["random"], sources))
            for kind, path in files.items():
                run: dict = {}
                for clients in CLIENTS:
                    for server in servers:  # interleaved, so both see the same machine
                        print(f"rep {rep + 1}/{reps} {kind:8} {clients} client(s) {server.name} ...", flush=True)
                        run.setdefault(server.name, {})[f"c{clients}"] = bench_server(server, path, clients)
                runs.append({"rep": rep, "file": kind, "results": run})
    meta["loadavg_end"] = os.getloadavg()
    meta["run_seconds"] = round(time.monotonic() - started)
    # The machine is shared: how many cores did processes other than ours keep busy meanwhile?
    (machine, ours), (machine0, ours0) = busy_cpu_seconds(), busy
    meta["other_load_cores"] = round(((machine - machine0) - (ours - ours0)) / meta["run_seconds"], 2)
    summary = {"reference": aggregate(references),
               "files": {kind: aggregate([r["results"] for r in runs if r["file"] == kind]) for kind in files}}

    meta["metrics"] = scraper.summary()
    throughput = scraper.write(out)
    results = {"meta": meta, "summary": summary, "runs": runs, "references": references}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(report.table(results))
    chart = report.chart(results, out / "results.png")
    print(f"\nstreamd's /metrics: {meta['metrics']}")
    print(f"\nwrote {out / 'results.json'}" + (f" and {chart}" if chart else "")
          + (f", {throughput}" if throughput else "") + f" in {meta['run_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
