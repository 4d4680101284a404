"""qcow2 -> raw throughput against qemu-img, and the CPU cost of format inspection on upload.

    .venv/bin/python bench/convert.py            # 4 GiB virtual, ~1 GiB allocated, median of 3
    .venv/bin/python bench/convert.py --quick    # 1 GiB virtual, ~256 MiB allocated, 1 repetition

Converter: one raw source (``--virtual-gib`` virtual, a quarter of it allocated in 4 MiB
extents spread over the disk; each 64 KiB cluster half random, half text, so that it
compresses to about half) is turned by qemu-img into a plain and a zlib-compressed
(``-c``) qcow2, kept in OUT/convert for later runs. For each, ``qemu-img convert -O raw``
and ``streamd.formats.convert.convert_qcow2_to_raw`` write a raw image to the same
directory, interleaved, the source in the page cache, the output deleted before each
run; the figure is MiB/s of *allocated* guest data (virtual bytes backed by clusters),
the median of --reps, with the ratio streamd / qemu-img (target >= 0.8). The outputs
are compared byte for byte once.

Inspection: the daemon (bench/servers.py) takes the same --upload-mib file with
curl, alternately into images of container_format ``bare`` (inspected: disk_format raw,
the full set of inspectors runs) and ``ovf`` (not inspected, the same code path
otherwise); the daemon's CPU-seconds per upload, median of --reps each. The same chunks
fed straight to ``ImageInspection`` give the inspection's own CPU per GiB, compared with
the upload's (target <= 2%).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import cpu_seconds  # noqa: E402
from servers import Streamd  # noqa: E402
from streamd.formats import ImageInspection, InspectionPolicy  # noqa: E402
from streamd.formats.convert import convert_qcow2_to_raw  # noqa: E402
from streamd.kernels import qcow2 as qcow2_kernel  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
EXTENT = 4 * MiB


def make_source(path: Path, virtual: int, allocated: int) -> None:
    rng = random.Random(42)
    text = b"".join(b"block %08d of the streamd bench, " % i for i in range(1200))[:32 * 1024]
    slots = virtual // EXTENT
    chosen = sorted(rng.sample(range(slots), allocated // EXTENT))
    with path.open("wb") as handle:
        handle.truncate(virtual)
        for slot in chosen:
            extent = bytearray()
            for _ in range(EXTENT // (64 * 1024)):
                extent += rng.randbytes(32 * 1024)
                extent += text
            handle.seek(slot * EXTENT)
            handle.write(extent)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def prepare_images(root: Path, virtual: int) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    allocated = virtual // 4
    tag = f"{virtual // MiB}M"
    source = root / f"source-{tag}.raw"
    images = {"plain": root / f"plain-{tag}.qcow2", "zlib": root / f"zlib-{tag}.qcow2"}
    if not all(p.exists() for p in images.values()):
        print(f"building the images ({virtual / GiB:g} GiB virtual, {allocated / GiB:g} GiB allocated)...",
              flush=True)
        make_source(source, virtual, allocated)
        qemu_img("convert", "-O", "qcow2", str(source), str(images["plain"]))
        qemu_img("convert", "-c", "-O", "qcow2", str(source), str(images["zlib"]))
        source.unlink()
    return images


def read_through(path: Path) -> None:
    with path.open("rb") as handle:
        while handle.read(16 * MiB):
            pass


def timed_qemu(src: Path, dst: Path) -> tuple[float, float]:
    dst.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    qemu_img("convert", "-O", "raw", str(src), str(dst))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed_streamd(src: Path, dst: Path) -> tuple[float, float, int]:
    dst.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = convert_qcow2_to_raw(src, dst)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), result.allocated_bytes


def bench_converter(images: dict[str, Path], root: Path, reps: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, image in images.items():
        read_through(image)
        ours, theirs = root / "streamd.raw", root / "qemu.raw"
        _, _, allocated = timed_streamd(image, ours)     # warm-up, and the allocated size
        timed_qemu(image, theirs)
        identical = filecmp.cmp(ours, theirs, shallow=False)
        q_runs, s_runs = [], []
        for _ in range(reps):
            q_runs.append(timed_qemu(image, theirs))
            s_runs.append(timed_streamd(image, ours)[:2])
        ours.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)
        q_wall = statistics.median(r[0] for r in q_runs)
        s_wall = statistics.median(r[0] for r in s_runs)
        out[name] = {
            "allocated_mib": allocated / MiB, "qemu_mib_s": allocated / MiB / q_wall,
            "streamd_mib_s": allocated / MiB / s_wall, "ratio": q_wall / s_wall,
            "qemu_cpu_s": statistics.median(r[1] for r in q_runs),
            "streamd_cpu_s": statistics.median(r[1] for r in s_runs), "identical": float(identical),
        }
        row = out[name]
        print(f"  {name:6} {row['allocated_mib']:7.0f} MiB allocated   qemu-img {row['qemu_mib_s']:7.0f} MiB/s "
              f"(cpu {row['qemu_cpu_s']:.2f} s)   streamd {row['streamd_mib_s']:7.0f} MiB/s "
              f"(cpu {row['streamd_cpu_s']:.2f} s)   ratio {row['ratio']:.2f}   identical={bool(identical)}",
              flush=True)
    return out


# -- inspection overhead -------------------------------------------------------------------------

def inspection_cpu_per_gib(data_file: Path) -> float:
    """CPU-seconds per GiB of feeding the file, in 4 MiB chunks, to the upload's inspection."""
    size = data_file.stat().st_size
    chunks = []
    with data_file.open("rb") as handle:
        for _ in range(min(size, 256 * MiB) // (4 * MiB)):
            chunks.append(handle.read(4 * MiB))
    fed = 0
    start = time.process_time()
    rounds = 0
    while time.process_time() - start < 1.0 or rounds < 3:
        inspection = ImageInspection(InspectionPolicy("raw"))
        for chunk in chunks:
            inspection.feed(chunk)
        inspection.finish()
        fed += sum(len(c) for c in chunks)
        rounds += 1
    return (time.process_time() - start) / (fed / GiB)


def bench_upload(root: Path, size_mib: int, reps: int) -> dict[str, float]:
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the upload bench")
    data = root / f"upload-{size_mib}M.bin"
    if not data.exists() or data.stat().st_size != size_mib * MiB:
        rng = random.Random(7)
        with data.open("wb") as handle:
            for _ in range(size_mib // 4):
                handle.write(rng.randbytes(2 * MiB) + bytes(2 * MiB))
    read_through(data)
    per_upload: dict[str, list[float]] = {"bare": [], "ovf": []}
    walls: dict[str, list[float]] = {"bare": [], "ovf": []}
    with Streamd(root / "streamd") as server:
        for rep in range(reps + 1):
            for container in ("bare", "ovf") if rep % 2 == 0 else ("ovf", "bare"):
                image = server.api("POST", "/v2/images", {"name": f"{container}-{rep}", "disk_format": "raw",
                                                          "container_format": container})
                cpu0 = cpu_seconds(server.pid)
                t0 = time.perf_counter()
                subprocess.run(["curl", "-sS", "-f", "-T", str(data), "-X", "PUT", "-H",
                                "Content-Type: application/octet-stream", "-H", "Expect:",
                                server.file_url(image["id"])], check=True)  # type: ignore[index]
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(server.pid) - cpu0
                shown = server.api("GET", f"/v2/images/{image['id']}")  # type: ignore[index]
                assert shown["status"] == "active", shown  # type: ignore[index]
                if rep:  # the first round warms up
                    per_upload[container].append(cpu)
                    walls[container].append(wall)
                server.delete_image(image["id"])  # type: ignore[index]
    gib = size_mib * MiB / GiB
    with_cpu = statistics.median(per_upload["bare"]) / gib
    without_cpu = statistics.median(per_upload["ovf"]) / gib
    direct = inspection_cpu_per_gib(data)
    result = {"upload_mib": size_mib, "cpu_per_gib_inspected": with_cpu, "cpu_per_gib_not_inspected": without_cpu,
              "end_to_end_overhead_pct": (with_cpu / without_cpu - 1) * 100,
              "inspection_cpu_per_gib": direct, "inspection_share_pct": direct / with_cpu * 100,
              "mib_s_inspected": size_mib / statistics.median(walls["bare"]),
              "mib_s_not_inspected": size_mib / statistics.median(walls["ovf"])}
    print(f"  upload of {size_mib} MiB, daemon CPU per GiB: inspected {with_cpu:.3f} s, not inspected "
          f"{without_cpu:.3f} s ({result['end_to_end_overhead_pct']:+.1f}%, noise included; "
          f"{result['mib_s_inspected']:.0f} vs {result['mib_s_not_inspected']:.0f} MiB/s)", flush=True)
    print(f"  inspection alone: {direct * 1000:.3f} ms CPU per GiB = {result['inspection_share_pct']:.4f}% "
          f"of the upload's CPU", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--virtual-gib", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="1 GiB virtual, 256 MiB upload, 1 repetition")
    parser.add_argument("--skip-upload", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.virtual_gib, args.reps, args.upload_mib = 1.0, 1, 256
    root = args.out / "convert"
    print(f"load average {os.getloadavg()[0]:.1f}; qcow2 kernel: {qcow2_kernel.IMPLEMENTATION}; {os.cpu_count()} CPUs; "
          f"{subprocess.run(['qemu-img', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    images = prepare_images(root, int(args.virtual_gib * GiB))
    print("qcow2 -> raw (MiB/s of allocated data, median of %d):" % args.reps, flush=True)
    converter = bench_converter(images, root, args.reps)
    report: dict[str, object] = {"converter": converter}
    if not args.skip_upload:
        print("inspection on upload:", flush=True)
        report["upload"] = bench_upload(root, args.upload_mib, max(1, args.reps))
    report["load_average_at_end"] = os.getloadavg()[0]
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other work on the machine skews the timings)")
    (root / "results.json").write_text(json.dumps(report, indent=2))
    ok = all(row["ratio"] >= 0.8 and row["identical"] for row in converter.values())
    if "upload" in report:
        ok = ok and report["upload"]["inspection_share_pct"] <= 2.0  # type: ignore[index]
    print(f"targets: converter >= 0.8x qemu-img, inspection <= 2% of upload CPU: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
