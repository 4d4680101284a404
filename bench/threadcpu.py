"""Where a streamd server spends its CPU, per thread, during one upload or download.

    .venv/bin/python bench/threadcpu.py FILE [--op upload|download|both] [--clients N] [--reps N] [--out bench/out]

Starts streamd (defaults, a fresh data directory), uploads FILE with
``curl -T`` (Content-Length, ``Expect:`` off), downloads it with
``curl -o /dev/null``, and prints for each operation the wall speed, the curl
client's CPU and the server's CPU-seconds per GiB split by thread: the event
loop (the main thread) and each worker thread, busiest first (hash threads,
store writer, copy threads; Python does not name OS threads, so they are
numbered). Threads are sampled from ``/proc/PID/task/*/stat`` every 50 ms, so
short-lived workers are counted too. ``--clients N`` runs N curls at once, each on its own
image, and reports per GiB of all of them: compare ``--clients 1`` with ``--clients 4`` for how
the server's CPU per GiB holds up under concurrency (threads are then grouped by name prefix,
e.g. ``upload-hash``, ``upload-write``).

This is the measurement behind the upload ceiling in the issue notes: on 2
cores, md5 and sha512 alone are ~2.7 CPU-s/GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import REPO, Streamd  # noqa: E402

GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    found: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended between listdir and open
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return found


class ThreadSampler:
    """Last seen CPU time of every thread of ``pid``, including those that end before the stop."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = thread_cpu(pid)
        self.seen: dict[int, float] = dict(self.before)
        self.names: dict[int, str] = thread_names(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen.update(thread_cpu(self.pid))
            self.names.update(thread_names(self.pid))

    def __enter__(self) -> "ThreadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(thread_cpu(self.pid))

    def used(self) -> dict[int, float]:
        return {tid: cpu - self.before.get(tid, 0.0) for tid, cpu in self.seen.items()}


def thread_names(pid: int) -> dict[int, str]:
    names: dict[int, str] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names[int(tid)] = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        except OSError:
            continue
    return names


def measure(server: Streamd, label: str, cmds: list[list[str]], size: int) -> float:
    """Run the commands at once; print the server's CPU per GiB of all of them; return it."""
    children = os.times()
    start = time.perf_counter()
    with ThreadSampler(server.pid) as sampler:
        procs = [subprocess.Popen(cmd) for cmd in cmds]
        codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"{label}: curl failed: exit codes {codes}")
    after = os.times()
    curl_cpu = (after.children_user + after.children_system - children.children_user - children.children_system)
    total = size * len(cmds)
    gib = total / GiB
    used = sampler.used()
    loop = used.pop(server.pid, 0.0)
    server_cpu = loop + sum(used.values())
    print(f"{label}: {len(cmds)} client(s), {total / wall / 1e6:.0f} MB/s aggregate; curl {curl_cpu / gib:.2f} "
          f"CPU-s/GiB; server {server_cpu / gib:.2f} CPU-s/GiB")
    print(f"  event loop (main thread)  {loop / gib:5.2f}")
    # Threads grouped by their OS name (Linux truncates names to 15 characters) without its trailing
    # number: the pools name theirs (hash-pool, write-pool, socketcopy).
    groups: dict[str, list[float]] = {}
    for tid, cpu in used.items():
        name = sampler.names.get(tid, "?").rstrip("0123456789_-") or "?"
        groups.setdefault(name, []).append(cpu)
    for name, cpus in sorted(groups.items(), key=lambda item: -sum(item[1])):
        if sum(cpus) > 0.005:
            detail = " ".join(f"{cpu / gib:.2f}" for cpu in sorted(cpus, reverse=True) if cpu > 0.005)
            print(f"  {name:<16} x{len(cpus):<3} {sum(cpus) / gib:5.2f}   ({detail})")
    hashes = sum(groups.get("hash-pool", []))
    print(f"  beyond the hash threads: {(server_cpu - hashes) / gib:.2f} CPU-s/GiB")
    return server_cpu / gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--op", choices=("upload", "download", "both"), default="both")
    parser.add_argument("--clients", type=int, default=1, help="uploads (and downloads) at once, each of its own image")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--set", action="append", default=[], metavar="[SECTION.]OPTION=VALUE",
                        help="an option for the server (repeatable): [DEFAULT] by name, e.g. upload_body_in_thread=false, "
                             "another section as SECTION.OPTION, e.g. fs.filesystem_store_direct_io=true")
    args = parser.parse_args()
    size = args.file.stat().st_size
    options = dict(item.split("=", 1) for item in args.set)
    with Streamd(args.out.resolve() / "threadcpu", options=options) as server:
        for rep in range(args.reps):
            urls = [server.file_url(server.create_image(f"threadcpu-{rep}-{n}")) for n in range(args.clients)]
            uploads = [["curl", "-sS", "-f", "-T", str(args.file), "-X", "PUT", "-H",
                        "Content-Type: application/octet-stream", "-H", "Expect:", url] for url in urls]
            if args.op in ("upload", "both"):
                measure(server, f"rep {rep + 1} upload", uploads, size)
            else:
                for upload in uploads:
                    subprocess.run(upload, check=True)
            if args.op in ("download", "both"):
                measure(server, f"rep {rep + 1} download",
                        [["curl", "-sS", "-f", "-o", "/dev/null", url] for url in urls], size)


if __name__ == "__main__":
    main()
