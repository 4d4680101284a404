"""CPU time and resident memory of a server's whole process tree, read from /proc.

CPU is utime+stime+cutime+cstime summed over the root and every live descendant
(cutime/cstime keep the time of children that exited and were reaped), so worker
processes and threads all count. RSS is sampled every ~50 ms in a thread and summed
over the tree; the peak of that sum is reported.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1 << 20


def _stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()  # fields after "pid (comm) "; [0] is state


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                children[int(_stat_fields(int(name))[1])].append(int(name))
            except (OSError, IndexError, ValueError):
                pass  # exited meanwhile
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def cpu_seconds(root: int) -> float:
    ticks = 0
    for pid in process_tree(root):
        try:
            ticks += sum(int(x) for x in _stat_fields(pid)[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


def rss_bytes(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


@dataclass
class Usage:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0


class Meter:
    """``with Meter(pid) as usage:`` fills usage with wall time, CPU-seconds and peak RSS of the tree."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root, self.interval = root, interval
        self.usage = Usage()
        self._stop = threading.Event()
        self._peak = 0

    def _sample(self) -> None:
        while True:
            self._peak = max(self._peak, rss_bytes(self.root))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Usage:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu0 = cpu_seconds(self.root)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self.usage

    def __exit__(self, *exc: object) -> None:
        self.usage.wall_s = time.perf_counter() - self._t0
        self.usage.cpu_s = cpu_seconds(self.root) - self._cpu0
        self._stop.set()
        self._thread.join()
        self.usage.peak_rss_mib = self._peak / MiB


def md5_of(path: "os.PathLike[str] | str", start: int = 0, length: int | None = None) -> str:
    """md5 of a file or of a byte range of it, read in 8 MiB pieces (the benches' body check)."""
    import hashlib
    import os

    h = hashlib.md5()
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = os.fstat(f.fileno()).st_size - start if length is None else length
        while left > 0 and (data := f.read(min(8 << 20, left))):
            h.update(data)
            left -= len(data)
    return h.hexdigest()
