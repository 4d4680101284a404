"""Many large uploads at once into one streamd: failures, the daemon's peak RSS, aggregate MiB/s.

    .venv/bin/python bench/many_uploads.py [--clients 16] [--size-mib 2048] [--out bench/out]

Starts streamd (.venv, default options, a fresh data directory), creates one random file of
the size (once, in OUT/data), then runs one ``curl -T`` per client at once, each on its own
image (Content-Length, ``Expect:`` off). Prints the failed uploads (HTTP status other than 204,
or an image that is not active with the file's md5), the peak RSS of the daemon's process
tree (sampled every 50 ms), its CPU-seconds per GiB and the aggregate MiB/s (bytes of the
uploads that succeeded / wall time from the first curl's start to the last one's end).
The issue 18 target: 16 concurrent 2 GiB uploads, 0 failures, peak RSS <= 256 MiB.
The images are deleted at the end (the store needs clients x size bytes meanwhile).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache import make_random  # noqa: E402
from procs import Meter, md5_of  # noqa: E402
from servers import REPO, Streamd  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--set", action="append", default=[], metavar="[SECTION.]OPTION=VALUE",
                        help="an option for the server (repeatable): [DEFAULT] by name, e.g. upload_body_in_thread=false, "
                             "another section as SECTION.OPTION, e.g. fs.filesystem_store_direct_io=true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    out = args.out.resolve()
    free = shutil.disk_usage(out.parent if not out.exists() else out).free
    if free < (args.clients + 2) * size:
        print(f"warning: {free / GiB:.0f} GiB free; this run needs about {(args.clients + 2) * size / GiB:.0f} GiB")
    path = make_random(out / "data", size)
    expected = md5_of(path)
    with Streamd(out / "many_uploads", options=dict(item.split("=", 1) for item in args.set)) as server:
        ids = [server.create_image(f"many-{n}") for n in range(args.clients)]
        cmds = [["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(path), "-X", "PUT",
                 "-H", "Content-Type: application/octet-stream", "-H", "Expect:", server.file_url(i)] for i in ids]
        with Meter(server.pid) as usage:
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in cmds]
            outputs = [p.communicate() for p in procs]
        failures = []
        for image_id, (code, err) in zip(ids, outputs):
            image = server.api("GET", f"/v2/images/{image_id}")
            assert isinstance(image, dict)
            if code != "204" or image["status"] != "active" or image["checksum"] != expected:
                failures.append(f"{image_id}: HTTP {code} {err.strip()[:200]}; status {image['status']}, "
                                f"checksum {image['checksum']}")
        errors = server.new_log_errors()
        for image_id in ids:
            server.delete_image(image_id)
    ok = args.clients - len(failures)
    print(f"{args.clients} concurrent uploads of {size // MiB} MiB: {len(failures)} failed; "
          f"peak RSS {usage.peak_rss_mib:.0f} MiB; {usage.cpu_s / max(1, ok * size / GiB):.2f} CPU-s/GiB; "
          f"{ok * size / MiB / usage.wall_s:.0f} MiB/s aggregate in {usage.wall_s:.0f} s "
          f"(load average {os.getloadavg()[0]:.1f})")
    for line in failures + errors:
        print(f"  - {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
