"""glance-direct import: stage + import of one raw image, to one store and to three; Glance alongside.

    .venv/bin/python bench/import_bench.py [--quick] [--out bench/out] [--reps N] [--size-mib N] [--no-glance]

One random raw file (default 2 GiB; --quick 512 MiB and 1 repetition). Each server runs with
three file stores (`enabled_backends = fs:file,fs2:file,fs3:file`) and its staging area on the
same filesystem. For each repetition, server and target (`fs` alone; `fs,fs2,fs3`), interleaved:

    POST /v2/images; curl PUT /stage (Content-Length, `Expect:` off for uWSGI);
    POST /import {"method": {"name": "glance-direct"}, "stores": [...]};
    GET the image every 50 ms until it is active (or the import failed)

Measured from the first request to active: wall seconds, MiB/s of image data, server
CPU-seconds per GiB (whole process tree), peak RSS; the image's checksum is checked against
the file's md5. Targets (issue 7): streamd one store <= 0.3x Glance's wall time; streamd three
stores <= 1.3x its one-store time. Writes OUT/import.json.

With ``--copy-staging DIR`` streamd stages on another filesystem (e.g. /dev/shm/x), so that no
store can take the staged file by rename or link: every store is written a copy, from one read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache import loadavg, make_random  # noqa: E402
from procs import Meter, md5_of  # noqa: E402
from run import read_through  # noqa: E402
from servers import GLANCE_API_CONF, REPO, Glance, Streamd  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
TARGETS = {"1 store": ["fs"], "3 stores": ["fs", "fs2", "fs3"]}


class StreamdStores(Streamd):
    staging_uri: str | None = None

    def prepare(self) -> list[str]:
        cmd = super().prepare()
        config = self.workdir / "streamd.conf"
        extra = "enabled_backends = fs:file,fs2:file,fs3:file\n"
        if self.staging_uri:
            extra += f"node_staging_uri = {self.staging_uri}\n"
        config.write_text(config.read_text() + extra)
        return cmd


class GlanceStores(Glance):
    def prepare(self) -> list[str]:
        cmd = super().prepare()
        w = self.workdir
        conf = GLANCE_API_CONF.format(url=self.url, w=w).replace(
            "enabled_backends = fs:file", "enabled_backends = fs:file,fs2:file,fs3:file")
        for extra in ("fs2", "fs3"):
            (w / extra).mkdir()
            conf += f"[{extra}]\nfilesystem_store_datadir = {w / extra}\n"
        (w / "etc/glance-api.conf").write_text(conf)
        return cmd


def _delete(server, image_id: str) -> None:
    """Best effort: Glance on SQLite may still be finishing the import task ("database is locked")."""
    import urllib.error

    for attempt in range(5):
        try:
            server.delete_image(image_id)
            return
        except urllib.error.HTTPError as exc:
            print(f"    {server.name}: DELETE of {image_id} failed ({exc.code}); retrying", flush=True)
            time.sleep(1 + attempt)
    print(f"    {server.name}: gave up deleting {image_id}", flush=True)


def import_once(server, path: Path, stores: list[str], md5: str) -> dict:
    size = path.stat().st_size
    with Meter(server.pid) as usage:
        start = time.perf_counter()
        image_id = server.create_image(f"import-bench-{len(stores)}")
        curl = subprocess.run(
            ["curl", "-sS", "-f", "-T", str(path), "-X", "PUT", "-H", "Content-Type: application/octet-stream",
             "-H", "Expect:", f"{server.url}/v2/images/{image_id}/stage"], capture_output=True, text=True)
        if curl.returncode != 0:
            raise RuntimeError(f"{server.name}: stage failed: {curl.stderr.strip()}")
        staged = time.perf_counter()
        server.api("POST", f"/v2/images/{image_id}/import",
                   {"method": {"name": "glance-direct"}, "stores": stores})
        deadline = time.monotonic() + 600
        while True:
            image = server.api("GET", f"/v2/images/{image_id}")
            done = set((image.get("stores") or "").split(",")) >= set(stores)
            if image["status"] == "active" and done:
                break
            if image["status"] == "queued" or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: import to {stores} ended {image['status']}: {image}")
            time.sleep(0.05)
    if image["checksum"] != md5:
        raise RuntimeError(f"{server.name}: checksum {image['checksum']} != {md5}")
    _delete(server, image_id)
    return {"wall_s": usage.wall_s, "stage_s": staged - start, "import_s": usage.wall_s - (staged - start),
            "mib_s": size / MiB / usage.wall_s, "cpu_s_per_gib": usage.cpu_s / (size / GiB),
            "peak_rss_mib": usage.peak_rss_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 MiB file, 1 repetition")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--size-mib", type=int, help="file size (default 2048, or 512 with --quick)")
    parser.add_argument("--no-glance", action="store_true", help="leave Glance out")
    parser.add_argument("--copy-staging", type=Path, metavar="DIR",
                        help="streamd stages in DIR (another filesystem, e.g. /dev/shm/x): every store gets a copy")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    size = (args.size_mib or (512 if args.quick else 2048)) * MiB
    out = args.out.resolve()
    path = make_random(out / "data", size)
    md5 = md5_of(path)
    print(f"import bench: {size // MiB} MiB raw, {reps} repetition(s); load {loadavg()}"
          + (f"; streamd stages in {args.copy_staging} (copies, no rename)" if args.copy_staging else ""), flush=True)
    streamd = StreamdStores(out / "import-streamd")
    if args.copy_staging:
        streamd.staging_uri = args.copy_staging.resolve().as_uri()
    servers = [streamd]
    if not args.no_glance:
        servers.append(GlanceStores(out / "import-glance", REPO / ".venv-glance"))
    results: dict[str, dict[str, list[dict]]] = {s.name: {t: [] for t in TARGETS} for s in servers}
    for server in servers:
        server.__enter__()
    try:
        for rep in range(reps):
            for target, stores in TARGETS.items():
                for server in servers:
                    read_through(path)
                    r = import_once(server, path, stores, md5)
                    results[server.name][target].append(r)
                    print(f"  rep {rep + 1} {server.name:8} {target:9} {r['wall_s']:6.2f} s (stage {r['stage_s']:.2f},"
                          f" import {r['import_s']:.2f})  {r['mib_s']:7.1f} MiB/s"
                          f"  {r['cpu_s_per_gib']:5.2f} CPU-s/GiB  peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        for server in servers:
            server.stop()

    def median(name: str, target: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name][target])

    print(f"\nmedians ({size // MiB} MiB, {reps} rep(s)); load at end {loadavg()}")
    print(f"{'server':8} {'target':9} {'wall s':>8} {'MiB/s':>8} {'CPU-s/GiB':>10} {'peak RSS MiB':>13}")
    for name in results:
        for target in TARGETS:
            print(f"{name:8} {target:9} {median(name, target, 'wall_s'):8.2f} {median(name, target, 'mib_s'):8.1f}"
                  f" {median(name, target, 'cpu_s_per_gib'):10.2f} {median(name, target, 'peak_rss_mib'):13.0f}")
    checks = []
    one, three = median("streamd", "1 store", "wall_s"), median("streamd", "3 stores", "wall_s")
    checks.append(("streamd 3 stores / 1 store (target <= 1.3)", three / one, three / one <= 1.3))
    if "glance" in results:
        g1, g3 = median("glance", "1 store", "wall_s"), median("glance", "3 stores", "wall_s")
        checks.append(("streamd / Glance wall, 1 store (target <= 0.3)", one / g1, one / g1 <= 0.3))
        checks.append(("streamd / Glance wall, 3 stores", three / g3, True))
    print()
    for label, ratio, ok in checks:
        print(f"{label:48} {ratio:6.2f}  {'met' if ok else 'MISSED'}")
    (out / ("import-copy.json" if args.copy_staging else "import.json")).write_text(json.dumps({
        "meta": {"size_mib": size // MiB, "reps": reps, "load_end": loadavg(),
                 "streamd_staging": str(args.copy_staging) if args.copy_staging else "beside the stores"},
        "runs": results, "checks": [{"label": c[0], "ratio": c[1], "met": c[2]} for c in checks]}, indent=1))


if __name__ == "__main__":
    main()
