"""streamd's RBD store against `rbd import`, the upload hashes and Glance 33's rbd store, in one run.

    .venv/bin/python bench/rbd.py [--quick] [--out bench/out] [--reps N] [--size-mib N] [--no-glance]
                                  [--upload-body-on-loop]

Starts a throwaway Ceph cluster (scripts/ceph-dev.sh, in /tmp; stopped and removed at
the end, also on error or SIGTERM), streamd with an RBD store (`enabled_backends =
fs:file,ceph:rbd`, default_backend ceph, thin provisioning on as by default, cache off:
`image_cache_dir = none`) and, unless --no-glance, Glance 33.0.0 with glance_store's rbd
driver and `rbd_thin_provisioning = True` (Debian's rados/rbd modules are linked into
its venv with scripts/link-ceph-bindings.sh). For each repetition and each file (half
zeros in alternating 4 MiB runs; random; bench/run.py's files in OUT/data):

- streamd upload (curl PUT with Content-Length) MiB/s, server CPU-s/GiB, OSD CPU-s/GiB,
  and the image's `rbd du` / `rbd diff`;
- streamd full download (GET /file) and a Range download (the middle half) from RBD,
  cache off; bodies checked by md5 on the first repetition;
- `rbd import` and `rbd import --sparse-size 4M` of the same file, and their `rbd du`;
- Glance's upload to RBD;
- once per repetition: single-core md5 and sha512 (bench/run.py's hash_mib_s).

Prints medians and the ratios streamd / min(rbd import, slowest hash) (target >= 0.9) and
streamd / Glance (target >= 2.5), writes OUT/rbd.json.
"""

from __future__ import annotations

if __name__ == "rbd":
    # Imported as Ceph's `rbd` by a process that has bench/ on its path (bench/servers.py's uWSGI
    # for Glance): fail as an absent module would, instead of shadowing the real one.
    raise ImportError("bench/rbd.py is a benchmark, not Ceph's rbd module")

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import cpu_seconds, md5_of  # noqa: E402
from run import busy_cpu_seconds, hash_mib_s, make_files, read_through, transfer  # noqa: E402
from servers import REPO, Glance, Streamd  # noqa: E402
from threadcpu import ThreadSampler  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
CEPH_DEV = REPO / "scripts/ceph-dev.sh"


# ---------------------------------------------------------------- Ceph

class Ceph:
    """A scripts/ceph-dev.sh cluster for the length of a `with`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env: dict[str, str] = {}

    def __enter__(self) -> "Ceph":
        print(f"starting a Ceph cluster in {self.dir} ...", flush=True)
        try:
            out = subprocess.run([str(CEPH_DEV), "start", str(self.dir)], check=True, capture_output=True,
                                 text=True, timeout=300).stdout
        except subprocess.CalledProcessError as exc:
            subprocess.run([str(CEPH_DEV), "stop", str(self.dir)], capture_output=True)
            raise RuntimeError(f"ceph-dev.sh start failed:\n{exc.stderr[-3000:]}") from exc
        self.env = dict(re.findall(r"^export (\w+)=(.*)$", out, re.M))
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([str(CEPH_DEV), "stop", str(self.dir)], capture_output=True, timeout=120)

    @property
    def conf(self) -> str:
        return self.env["CEPH_CONF"]

    @property
    def pool(self) -> str:
        return self.env.get("CEPH_POOL", "images")

    def osd_pid(self) -> int:
        return int((self.dir / "run/osd.0.pid").read_text().strip())

    def rbd(self, *args: str, check: bool = True) -> str:
        return subprocess.run(["rbd", "-c", self.conf, "--id", "admin", *args], check=check,
                              capture_output=True, text=True).stdout

    def images(self) -> set[str]:
        return set(json.loads(self.rbd("ls", "-p", self.pool, "--format", "json") or "[]"))

    def usage(self, name: str) -> dict:
        """rbd du (all snapshots and head) and the sum of `rbd diff` extents of one image."""
        du = json.loads(self.rbd("du", "--format", "json", f"{self.pool}/{name}"))
        entries = du.get("images", [])
        info = json.loads(self.rbd("info", "--format", "json", f"{self.pool}/{name}"))
        diff = json.loads(self.rbd("diff", "--format", "json", f"{self.pool}/{name}") or "[]")
        return {"du_used_mib": sum(e.get("used_size", 0) for e in entries) / MiB,
                "du_provisioned_mib": max((e.get("provisioned_size", 0) for e in entries), default=0) / MiB,
                "diff_mib": sum(e["length"] for e in diff if e.get("exists", "true") in (True, "true")) / MiB,
                "object_mib": info.get("object_size", 0) / MiB,
                "snapshots": [e["snapshot"] for e in entries if e.get("snapshot")],
                "features": info.get("features", [])}


# ---------------------------------------------------------------- servers

class StreamdRbd(Streamd):
    name = "streamd"

    def __init__(self, workdir: Path, ceph: Ceph, body_in_thread: bool = True) -> None:
        super().__init__(workdir)
        self.ceph = ceph
        self.body_in_thread = body_in_thread

    def prepare(self) -> list[str]:
        cmd = super().prepare()
        config = self.workdir / "streamd.conf"
        config.write_text(
            f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {self.port}\ndata_dir = {self.workdir / 'data'}\n"
            "enabled_backends = fs:file,ceph:rbd\nimage_cache_dir = none\n"
            + ("" if self.body_in_thread else "upload_body_in_thread = false\n") +
            "[glance_store]\ndefault_backend = ceph\n"
            f"[ceph]\nrbd_store_ceph_conf = {self.ceph.conf}\nrbd_store_pool = {self.ceph.pool}\n"
            "rbd_store_user = admin\n")
        return cmd


class GlanceRbd(Glance):
    name = "glance"

    def __init__(self, workdir: Path, venv: Path, ceph: Ceph) -> None:
        super().__init__(workdir, venv)
        self.ceph = ceph

    def prepare(self) -> list[str]:
        cmd = super().prepare()  # writes the file-store config and runs db_sync
        self.add_rbd_backend(self.ceph.conf, self.ceph.pool)
        return cmd


# ---------------------------------------------------------------- measurements

def nonzero_mib(path: Path, block: int = 4 * MiB) -> float:
    """Bytes of the file in `block`-aligned blocks that are not all zero: what a perfectly
    sparse store at that granularity keeps."""
    zero, used = bytes(block), 0
    with open(path, "rb", buffering=0) as f:
        while data := f.read(block):
            if data != zero[:len(data)]:
                used += len(data)
    return used / MiB


def curl_md5(url: str, byte_range: str | None = None) -> tuple[str, str]:
    """(md5 of the body, 'HTTP code size') of one GET, piped through md5sum."""
    rng = f"-r {byte_range} " if byte_range else ""
    out = subprocess.run(f"curl -sS {rng}-w '%{{stderr}}%{{http_code}} %{{size_download}}' '{url}' | md5sum",
                         shell=True, capture_output=True, text=True)
    return out.stdout.split()[0], out.stderr.strip()


def range_get(url: str, start: int, end: int, server) -> dict:
    """One curl GET of bytes start-end (inclusive), timed, the server metered."""
    from procs import Meter
    with Meter(server.pid) as usage:
        r = subprocess.run(["curl", "-sS", "-o", os.devnull, "-r", f"{start}-{end}", "-w", "%{http_code} %{size_download}",
                            url], capture_output=True, text=True)
    code, _, got = r.stdout.partition(" ")
    n = end - start + 1
    ok = code == "206" and int(got or 0) == n
    return {"mib_s": n / MiB / usage.wall_s if ok else 0.0, "cpu_s_per_gib": usage.cpu_s / (n / GiB),
            "wall_s": usage.wall_s, "failed": 0 if ok else 1,
            "errors": [] if ok else [f"HTTP {code}, {got} bytes: {r.stderr.strip()[:200]}"]}


def rbd_import(ceph: Ceph, path: Path, name: str, sparse_4m: bool) -> dict:
    size = path.stat().st_size
    cmd = ["rbd", "-c", ceph.conf, "--id", "admin", "import", "--no-progress", "--image-format", "2"]
    if sparse_4m:
        cmd += ["--sparse-size", "4M"]
    cmd += [str(path), f"{ceph.pool}/{name}"]
    ru0, osd0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(ceph.osd_pid())
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1, osd1 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(ceph.osd_pid())
    result = {"mib_s": size / MiB / wall if r.returncode == 0 else 0.0, "wall_s": wall,
              "cpu_s_per_gib": ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / (size / GiB),
              "osd_cpu_s_per_gib": (osd1 - osd0) / (size / GiB),
              "failed": int(r.returncode != 0), "errors": [r.stderr.strip()[-300:]] if r.returncode else []}
    if r.returncode == 0:
        result["usage"] = ceph.usage(name)
    ceph.rbd("rm", "--no-progress", f"{ceph.pool}/{name}", check=False)
    return result


def thread_groups(sampler: ThreadSampler, gib: float, main_pid: int | None = None) -> dict[str, float]:
    """CPU-s per GiB by OS thread name without its trailing number (the main thread: "event loop")."""
    groups: dict[str, float] = {}
    for tid, cpu in sampler.used().items():
        name = "event loop" if tid == main_pid else sampler.names.get(tid, "?").rstrip("0123456789_-:") or "?"
        groups[name] = groups.get(name, 0.0) + cpu / gib
    return dict(sorted(((k, round(v, 3)) for k, v in groups.items() if v >= 0.005), key=lambda kv: -kv[1]))


def server_upload(server, ceph: Ceph, path: Path) -> tuple[dict, str | None, str | None]:
    """Upload to a new image; (result with the RBD usage, image id, RBD image name). For streamd
    (one process) and the OSD, the CPU per GiB of each group of threads too."""
    size = path.stat().st_size
    image_id = server.create_image(f"rbd-bench-{path.stem}")
    before = ceph.images()
    osd0 = cpu_seconds(ceph.osd_pid())
    with ExitStack() as samplers:
        osd_threads = samplers.enter_context(ThreadSampler(ceph.osd_pid()))
        server_threads = samplers.enter_context(ThreadSampler(server.pid)) if isinstance(server, StreamdRbd) else None
        result = transfer(server, [server.file_url(image_id)], path, size)
    result["osd_cpu_s_per_gib"] = (cpu_seconds(ceph.osd_pid()) - osd0) / (size / GiB)
    result["osd_threads"] = thread_groups(osd_threads, size / GiB)
    if server_threads is not None:
        result["server_threads"] = thread_groups(server_threads, size / GiB, server.pid)
    ok = result.pop("_ok")[0]
    names = sorted(ceph.images() - before)
    name = names[0] if names else None
    if ok and name:
        result["usage"] = ceph.usage(name)
        image = server.api("GET", f"/v2/images/{image_id}")
        result["checksum"] = image.get("checksum")
        result["status"] = image.get("status")
    return result, image_id, name


def bench_file(path: Path, kind: str, ceph: Ceph, streamd: StreamdRbd, glance: GlanceRbd | None,
               check_bodies: bool, file_md5: str) -> dict:
    size = path.stat().st_size
    out: dict = {}
    read_through(path)
    print(f"  {kind}: streamd upload ...", flush=True)
    up, image_id, name = server_upload(streamd, ceph, path)
    up["md5_ok"] = up.get("checksum") == file_md5
    out["streamd_upload"] = up
    try:
        if not up["failed"]:
            os.sync()
            print(f"  {kind}: streamd download from RBD (cache off) ...", flush=True)
            url = streamd.file_url(image_id)
            down = transfer(streamd, [url], None, size)
            down.pop("_ok")
            out["streamd_download"] = down
            start, end = size // 4 + 4096, size // 4 * 3 + 4095  # the middle half, not object-aligned
            out["streamd_range"] = range_get(url, start, end, streamd)
            out["streamd_range"]["bytes"] = f"{start}-{end}"
            if check_bodies:
                got, status = curl_md5(url)
                out["streamd_download"]["md5_ok"] = got == file_md5
                got, status = curl_md5(url, f"{start}-{end}")
                out["streamd_range"]["md5_ok"] = got == md5_of(path, start, end - start + 1)
    finally:
        if image_id:
            streamd.delete_image(image_id)
    for label, sparse in (("rbd_import", False), ("rbd_import_sparse4m", True)):
        read_through(path)
        print(f"  {kind}: {label} ...", flush=True)
        out[label] = rbd_import(ceph, path, f"bench-import-{kind}", sparse)
    if glance is not None:
        read_through(path)
        print(f"  {kind}: glance upload ...", flush=True)
        up, image_id, name = server_upload(glance, ceph, path)
        up["md5_ok"] = up.get("checksum") == file_md5
        out["glance_upload"] = up
        if image_id:
            try:
                glance.delete_image(image_id)
            except OSError as exc:
                print(f"warning: deleting Glance image {image_id}: {exc}", flush=True)
    os.sync()
    return out


# ---------------------------------------------------------------- summary and table

def median_of(runs: list[dict], *keys: str) -> float | None:
    values = []
    for r in runs:
        for k in keys:
            r = r.get(k, {}) if isinstance(r, dict) else {}
        if isinstance(r, (int, float)):
            values.append(r)
    return statistics.median(values) if values else None


def summarize(runs: list[dict], hashes: list[dict], files: dict[str, Path]) -> dict:
    summary: dict = {"hash": {k: statistics.median(h[k] for h in hashes) for k in hashes[0]}, "files": {}}
    slowest_hash = min(summary["hash"]["md5_mib_s"], summary["hash"]["sha512_mib_s"])
    summary["hash"]["slowest_mib_s"] = slowest_hash
    for kind in files:
        rs = [r["results"] for r in runs if r["file"] == kind]
        s: dict = {}
        for op in ("streamd_upload", "streamd_download", "streamd_range", "rbd_import", "rbd_import_sparse4m",
                   "glance_upload"):
            if not any(op in r for r in rs):
                continue
            s[op] = {k: median_of(rs, op, k) for k in ("mib_s", "cpu_s_per_gib", "osd_cpu_s_per_gib", "peak_rss_mib")}
            s[op]["failed"] = sum(r.get(op, {}).get("failed", 0) for r in rs)
            s[op]["errors"] = sorted({e for r in rs for e in r.get(op, {}).get("errors", [])})
            md5 = [r[op]["md5_ok"] for r in rs if op in r and "md5_ok" in r[op]]
            if md5:
                s[op]["md5_ok"] = all(md5)
            usage = [r[op]["usage"] for r in rs if op in r and "usage" in r[op]]
            if usage:
                s[op]["usage"] = usage[-1]
            for key in ("server_threads", "osd_threads"):
                groups = [r[op][key] for r in rs if op in r and key in r[op]]
                if groups:
                    s[op][key] = groups[-1]
        up = s.get("streamd_upload", {}).get("mib_s")
        imp = s.get("rbd_import", {}).get("mib_s")
        imp_best = max(filter(None, (imp, s.get("rbd_import_sparse4m", {}).get("mib_s"))), default=None)
        gl = s.get("glance_upload", {}).get("mib_s")
        s["ratio_vs_import_or_hash"] = up / min(imp, slowest_hash) if up and imp else None
        s["ratio_vs_best_import_or_hash"] = up / min(imp_best, slowest_hash) if up and imp_best else None
        s["ratio_vs_glance"] = up / gl if up and gl else None
        s["nonzero_4m_mib"] = nonzero_mib(files[kind])
        # streamd skips zeros in 64 KiB blocks (rbd_thin_provisioning_block_size): its `rbd diff` is exactly those.
        s["nonzero_64k_mib"] = nonzero_mib(files[kind], 64 << 10)
        diff = s.get("streamd_upload", {}).get("usage", {}).get("diff_mib")
        s["streamd_diff_is_data"] = None if diff is None else abs(diff - s["nonzero_64k_mib"]) < 1 / MiB
        summary["files"][kind] = s
    return summary


def _n(x, fmt=".0f") -> str:
    return "-" if x is None else format(x, fmt)


def table(results: dict) -> str:
    meta, summary = results["meta"], results["summary"]
    h = summary["hash"]
    lines = [f"streamd RBD store vs rbd import / hashes / Glance 33 rbd: {meta['file_mib']} MiB files, median of "
             f"{meta['repetitions']}, {meta['cores']} cores, one-OSD Ceph (ceph-dev.sh)",
             f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end; other processes "
             f"kept {meta['other_load_cores']} cores busy on average; run took {meta['run_seconds']} s; "
             f"streamd at {meta.get('streamd_commit')}",
             f"glance: {meta['glance']}" + ("" if meta.get("upload_body_in_thread", True)
                                           else "; streamd: upload_body_in_thread = false"),
             f"single core: md5 {h['md5_mib_s']:.0f} MiB/s, sha512 {h['sha512_mib_s']:.0f} MiB/s (wall clock; "
             f"CPU time: {h['md5_cpu_mib_s']:.0f} / {h['sha512_cpu_mib_s']:.0f})",
             "CPU = client/server CPU-s per GiB (rbd import: the rbd process; streamd/Glance: server tree); "
             "OSD = ceph-osd CPU-s per GiB", ""]
    head = f"{'file':9}{'operation':28}| {'MiB/s':>6} {'CPU':>5} {'OSD':>5} {'RSS':>5} | {'du MiB':>7} {'diff MiB':>8} {'obj':>4} | failed"
    lines += [head, "-" * len(head)]
    labels = [("streamd_upload", "streamd upload (PUT)"), ("rbd_import", "rbd import"),
              ("rbd_import_sparse4m", "rbd import --sparse-size 4M"), ("glance_upload", "Glance upload (thin)"),
              ("streamd_download", "streamd GET, cache off"), ("streamd_range", "streamd Range GET (1/2)")]
    for kind, s in summary["files"].items():
        for op, label in labels:
            if op not in s:
                continue
            r, u = s[op], s[op].get("usage", {})
            md5 = "" if "md5_ok" not in r else ("  md5 ok" if r["md5_ok"] else "  MD5 MISMATCH")
            lines.append(f"{kind:9}{label:28}| {_n(r['mib_s']):>6} {_n(r['cpu_s_per_gib'], '.2f'):>5} "
                         f"{_n(r['osd_cpu_s_per_gib'], '.2f'):>5} {_n(r['peak_rss_mib']):>5} | "
                         f"{_n(u.get('du_used_mib')):>7} {_n(u.get('diff_mib')):>8} {_n(u.get('object_mib')):>4} | "
                         f"{r['failed']}{md5}")
        lines.append(f"{kind:9}{'non-zero data, 4 MiB blocks':28}| {'':>6} {'':>5} {'':>5} {'':>5} | "
                     f"{_n(s['nonzero_4m_mib']):>7}")
        lines.append("")
    lines.append("ratios (targets: streamd / min(rbd import, slowest hash) >= 0.9; streamd / Glance >= 2.5)")
    for kind, s in summary["files"].items():
        imp, slow = s.get("rbd_import", {}).get("mib_s"), h["slowest_mib_s"]
        r1, r2, r3 = s["ratio_vs_import_or_hash"], s["ratio_vs_best_import_or_hash"], s["ratio_vs_glance"]
        lines.append(f"  {kind:9} streamd / min(rbd import {_n(imp)}, slowest hash {slow:.0f}) = {_n(r1, '.2f')}"
                     f" {'OK' if r1 and r1 >= 0.9 else 'MISSED'};"
                     f" with the faster import: {_n(r2, '.2f')};"
                     f" streamd / Glance = {_n(r3, '.2f')}" + ("" if r3 is None else f" {'OK' if r3 >= 2.5 else 'MISSED'}"))
    for kind, s in summary["files"].items():
        ok = s.get("streamd_diff_is_data")
        lines.append(f"  {kind:9} streamd's `rbd diff` = the file's non-zero 64 KiB blocks "
                     f"({_n(s.get('nonzero_64k_mib'))} MiB): "
                     + ("-" if ok is None else "yes" if ok else "NO"))
    lines.append("CPU-s per GiB by thread (last repetition; streamd process, ceph-osd)")
    for kind, s in summary["files"].items():
        for op in ("streamd_upload", "glance_upload"):
            for key in ("server_threads", "osd_threads"):
                groups = s.get(op, {}).get(key)
                if groups:
                    lines.append(f"  {kind:9} {op:15} {key[:-8]:6}: "
                                 + ", ".join(f"{k} {v:.2f}" for k, v in list(groups.items())[:8]))
    problems = [f"{kind} {op}: {e}" for kind, s in summary["files"].items() for op, r in s.items()
                if isinstance(r, dict) for e in r.get("errors", [])]
    if meta.get("glance_skipped"):
        problems.append(f"Glance not run: {meta['glance_skipped']}")
    if problems:
        lines += ["", "errors:"] + [f"  {p}" for p in problems]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 MiB files, 1 repetition")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--size-mib", type=int, help="file size (default 2048, or 512 with --quick)")
    parser.add_argument("--no-glance", action="store_true", help="leave Glance out")
    parser.add_argument("--upload-body-on-loop", action="store_true",
                        help="streamd with upload_body_in_thread = false (aiohttp reads bodies on the event loop)")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    size = (args.size_mib or (512 if args.quick else 2048)) * MiB
    out = args.out.resolve()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the cleanups

    started, busy = time.monotonic(), busy_cpu_seconds()
    meta: dict = {"file_mib": size // MiB, "repetitions": reps, "cores": os.cpu_count(),
                  "upload_body_in_thread": not args.upload_body_on_loop,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": open("/proc/loadavg").read().strip()}
    print(f"load average at start: {meta['loadavg_start']}", flush=True)
    git = ["git", "-C", str(REPO)]
    meta["streamd_commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True).stdout.strip() + (
        " with uncommitted changes in streamd/" if subprocess.run(
            [*git, "status", "--porcelain", "--", "streamd"], capture_output=True, text=True).stdout else "")
    files = make_files(out / "data", size)
    print("md5 of the files ...", flush=True)
    file_md5 = {kind: md5_of(path) for kind, path in files.items()}
    glance_venv = REPO / ".venv-glance"
    glance_skipped = "--no-glance" if args.no_glance else Glance.link_ceph_bindings(glance_venv)
    meta["glance"] = "not run" if glance_skipped else \
        "33.0.0, uWSGI 2x2, glance_store rbd driver, rbd_thin_provisioning = True, rbd_store_chunk_size 8 (default)"
    meta["glance_skipped"] = glance_skipped
    runs, hashes = [], []
    with ExitStack() as stack:
        ceph = stack.enter_context(Ceph(Path(f"/tmp/sdbench-ceph-{os.getpid()}")))
        print("starting streamd (RBD store, cache off) ...", flush=True)
        streamd = stack.enter_context(StreamdRbd(out / "rbd-streamd", ceph, not args.upload_body_on_loop))
        glance = None
        if not glance_skipped:
            print("starting Glance (rbd store) ...", flush=True)
            try:
                glance = stack.enter_context(GlanceRbd(out / "rbd-glance", glance_venv, ceph))
            except RuntimeError as exc:
                meta["glance_skipped"] = f"did not start: {str(exc)[-600:]}"
                print(f"warning: Glance {meta['glance_skipped']}", flush=True)
        for rep in range(reps):
            print(f"rep {rep + 1}/{reps}: hashes ...", flush=True)
            md5, md5_cpu = hash_mib_s(files["random"], "md5")
            sha, sha_cpu = hash_mib_s(files["random"], "sha512")
            hashes.append({"md5_mib_s": md5, "md5_cpu_mib_s": md5_cpu, "sha512_mib_s": sha, "sha512_cpu_mib_s": sha_cpu})
            for kind, path in files.items():
                print(f"rep {rep + 1}/{reps} {kind} ...", flush=True)
                runs.append({"rep": rep, "file": kind,
                             "results": bench_file(path, kind, ceph, streamd, glance, rep == 0, file_md5[kind])})
        meta["streamd_log_errors"] = streamd.new_log_errors()
    meta["loadavg_end"] = open("/proc/loadavg").read().strip()
    meta["run_seconds"] = round(time.monotonic() - started)
    (machine, ours), (machine0, ours0) = busy_cpu_seconds(), busy
    meta["other_load_cores"] = round(((machine - machine0) - (ours - ours0)) / meta["run_seconds"], 2)
    results = {"meta": meta, "summary": summarize(runs, hashes, files), "runs": runs, "hashes": hashes}
    (out / "rbd.json").write_text(json.dumps(results, indent=1, default=str))
    print()
    print(table(results))
    print(f"\nwrote {out / 'rbd.json'} in {meta['run_seconds']} s; load average at end: {meta['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
