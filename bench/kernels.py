"""Micro-benchmark: zero detection and upload hashing on one machine.

    .venv/bin/python bench/kernels.py [--quick]

Zero scan: native and twin ``is_zero`` against glance_store's ``not any(chunk)``, the
``chunk == bytes(n)`` idiom, and ``bytes.find`` of a byte that is absent (a memchr over
the same buffer: the speed a C scan can reach here). Hashing: md5 and sha512 alone,
serially in one thread (Glance's way), and overlapped in two threads (hashlib drops
the GIL for buffers of 2 KiB or more). Figures are GB/s (1e9 bytes/s), median of
several repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Runnable from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamd.kernels import _zeroscan_c as native  # noqa: E402
from streamd.kernels import _zeroscan_py as twin  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
SCAN_SIZES = [64 * KiB, 1 * MiB, 8 * MiB]
HASH_CHUNK = 8 * MiB


def median_seconds(run: Callable[[], object], repeats: int, min_seconds: float) -> float:
    """Median time of one call, batching calls so each timed repeat lasts min_seconds."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
        calls *= 2 if elapsed == 0 else max(2, int(min_seconds / elapsed * 1.2))
    samples = [elapsed / calls]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def bench_zero_scan(repeats: int, min_seconds: float) -> None:
    methods: list[tuple[str, Callable[[bytes], object]]] = [
        ("native", native.is_zero),
        ("twin", twin.is_zero),
        ("not any()", lambda chunk: not any(chunk)),
        ("== bytes(n)", lambda chunk: chunk == bytes(len(chunk))),
        ("memchr", lambda chunk: chunk.find(b"\x01")),
    ]
    print(f"zero scan, GB/s (median of {repeats}); 'random' shows early exit")
    header = f"{'size':>7} {'content':<7}" + "".join(f"{name:>12}" for name, _ in methods)
    print(header + f"{'native/memchr':>15}")
    for size in SCAN_SIZES:
        # b"\0" * n writes real pages; bytes(n) may map the shared zero page,
        # which would stay cache-hot and flatter every scan.
        buffers = {"zeros": b"\x00" * size, "random": os.urandom(size)}
        for content, chunk in buffers.items():
            assert native.is_zero(chunk) == twin.is_zero(chunk) == (content == "zeros")
            rates = {name: gbps(size, median_seconds(lambda: fn(chunk), repeats, min_seconds))
                     for name, fn in methods}
            row = f"{size // KiB:>4} KiB {content:<7}" + "".join(
                f"{rate:>12.2f}" for rate in rates.values())
            # Only the all-zero buffer makes both scan every byte.
            ratio = f"{rates['native'] / rates['memchr']:>15.2f}" if content == "zeros" else ""
            print(row + ratio)


def bench_hashing(total: int, repeats: int) -> None:
    chunk = os.urandom(HASH_CHUNK)
    chunks = total // HASH_CHUNK

    def md5_only() -> None:
        digest = hashlib.md5()
        for _ in range(chunks):
            digest.update(chunk)

    def sha512_only() -> None:
        digest = hashlib.sha512()
        for _ in range(chunks):
            digest.update(chunk)

    def serial() -> None:
        md5, sha512 = hashlib.md5(), hashlib.sha512()
        for _ in range(chunks):
            md5.update(chunk)
            sha512.update(chunk)

    with ThreadPoolExecutor(max_workers=1) as worker:
        def overlapped() -> None:
            # Per chunk, like a streaming upload: sha512 on the worker while md5
            # runs here, both done before the next chunk is taken.
            md5, sha512 = hashlib.md5(), hashlib.sha512()
            for _ in range(chunks):
                pending = worker.submit(sha512.update, chunk)
                md5.update(chunk)
                pending.result()

        serial_name = "md5 + sha512 serial (1 thread)"
        overlapped_name = "md5 + sha512 overlapped (2 threads)"
        configs = [("md5", md5_only), ("sha512", sha512_only),
                   (serial_name, serial), (overlapped_name, overlapped)]
        print(f"\nhashing {total // MiB} MiB in {HASH_CHUNK // MiB} MiB chunks, "
              f"GB/s (median of {repeats})")
        # cpu/wall near 2 means the threads really ran in parallel; near 1 with
        # threads means the second core was busy elsewhere and the ratio says little.
        print(f"  {'':<36}{'GB/s':>8}{'cpu/wall':>10}")
        rates = {}
        for name, run in configs:
            timings = sorted(_timed(run) for _ in range(repeats))
            wall, cpu = timings[len(timings) // 2]
            rates[name] = gbps(total, wall)
            print(f"  {name:<36}{rates[name]:>8.2f}{cpu / wall:>10.2f}")
    print(f"  {'overlapped / serial':<36}{rates[overlapped_name] / rates[serial_name]:>8.2f}")


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    """Wall and process CPU seconds of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run, noisier figures")
    args = parser.parse_args()
    if args.quick:
        scan_repeats, min_seconds, hash_total, hash_repeats = 3, 0.005, 64 * MiB, 1
    else:
        scan_repeats, min_seconds, hash_total, hash_repeats = 7, 0.02, 512 * MiB, 3
    load = ", ".join(f"{avg:.2f}" for avg in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}\n")
    bench_zero_scan(scan_repeats, min_seconds)
    bench_hashing(hash_total, hash_repeats)


if __name__ == "__main__":
    main()
