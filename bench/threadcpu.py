"""Where a streamd server spends its CPU, per thread, during one upload or download.

    .venv/bin/python bench/threadcpu.py FILE [--op upload|download|both] [--reps N] [--out bench/out]

Starts streamd (defaults, a fresh data directory), uploads FILE with
``curl -T`` (Content-Length, ``Expect:`` off), downloads it with
``curl -o /dev/null``, and prints for each operation the wall speed, the curl
client's CPU and the server's CPU-seconds per GiB split by thread: the event
loop (the main thread) and each worker thread, busiest first (hash threads,
store writer, copy threads; Python does not name OS threads, so they are
numbered). Threads are sampled from ``/proc/PID/task/*/stat`` every 50 ms, so
short-lived workers are counted too.

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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen.update(thread_cpu(self.pid))

    def __enter__(self) -> "ThreadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(thread_cpu(self.pid))

    def used(self) -> dict[int, float]:
        return {tid: cpu - self.before.get(tid, 0.0) for tid, cpu in self.seen.items()}


def measure(server: Streamd, label: str, cmd: list[str], size: int) -> None:
    children = os.times()
    start = time.perf_counter()
    with ThreadSampler(server.pid) as sampler:
        subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    after = os.times()
    curl_cpu = (after.children_user + after.children_system - children.children_user - children.children_system)
    gib = size / GiB
    used = sampler.used()
    loop = used.pop(server.pid, 0.0)
    workers = sorted((cpu for cpu in used.values() if cpu > 0.005), reverse=True)
    print(f"{label}: {size / wall / 1e6:.0f} MB/s; curl {curl_cpu / gib:.2f} CPU-s/GiB; server "
          f"{(loop + sum(workers)) / gib:.2f} CPU-s/GiB")
    print(f"  event loop (main thread)  {loop / gib:5.2f}")
    for n, cpu in enumerate(workers, 1):
        print(f"  worker thread {n:<11} {cpu / gib:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--op", choices=("upload", "download", "both"), default="both")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    args = parser.parse_args()
    size = args.file.stat().st_size
    with Streamd(args.out.resolve() / "threadcpu") as server:
        for rep in range(args.reps):
            image_id = server.create_image(f"threadcpu-{rep}")
            url = server.file_url(image_id)
            upload = ["curl", "-sS", "-f", "-T", str(args.file), "-X", "PUT", "-H",
                      "Content-Type: application/octet-stream", "-H", "Expect:", url]
            if args.op in ("upload", "both"):
                measure(server, f"rep {rep + 1} upload", upload, size)
            else:
                subprocess.run(upload, check=True)
            if args.op in ("download", "both"):
                measure(server, f"rep {rep + 1} download", ["curl", "-sS", "-f", "-o", "/dev/null", url], size)


if __name__ == "__main__":
    main()
