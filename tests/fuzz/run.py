"""Coverage-guided fuzzing (atheris) of every format inspector and of the qcow2 converter.

One command runs them all, splitting the time between the targets:

    .venv/bin/python tests/fuzz/run.py --seconds 300
    .venv/bin/python tests/fuzz/run.py --seconds 60 --targets qcow2,vmdk,convert

Targets: one per inspector (raw, qcow2, vhd, vhdx, vmdk, vdi, qed, iso, gpt, luks: the
image declares that format and is fed in fuzzer-chosen chunk sizes through both the
bare inspector and Glance's verdict), ``convert`` (the qcow2 -> raw converter on the
native kernel) and ``convert-twin`` (on the pure-Python twin, which atheris can
instrument). Allowed outcomes are a result or ``FormatRejected``; anything else, or a
converter output that is not the virtual size, is a finding. Each target runs in its
own process; findings are written under --out (default: a new temporary directory)
and the command exits 1 if there were any.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FORMATS = ["raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "qed", "iso", "gpt", "luks"]
TARGETS = [*FORMATS, "convert", "convert-twin"]
CHUNKS = [1, 7, 512, 4096, 65536, 1 << 20]
MAX_LEN = 1 << 18


# -- the worker: one target in this process ----------------------------------------------------------

def worker(target: str, seconds: int, out: Path, corpus: Path) -> None:
    import atheris

    if target == "convert-twin":
        os.environ["STREAMD_NO_EXTENSIONS"] = "1"
    with atheris.instrument_imports(include=["streamd"]):
        from streamd.formats import ALL_INSPECTORS, FormatRejected, ImageInspection, InspectionPolicy
        from streamd.formats.convert import convert_qcow2_to_raw

    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))

    def inspect_one(data: bytes) -> None:
        if not data:
            return
        chunk = CHUNKS[data[0] % len(CHUNKS)]
        body = data[1:]
        if chunk == 1:
            body = body[:4096]
        inspector = ALL_INSPECTORS[target]()
        for start in range(0, len(body), chunk):
            if inspector.needs_data:
                inspector.feed(memoryview(body[start:start + chunk]), start)
        inspector.finish(len(body))
        if inspector.matched and not inspector.invalid and not inspector.truncated:
            failures = inspector.safety_failures()
            assert all(isinstance(v, str) for v in failures.values())
            assert not any(v.startswith("check could not run") for v in failures.values()), failures
            size = inspector.virtual_size
            assert size is None or (isinstance(size, int) and size >= 0)
        inspection = ImageInspection(InspectionPolicy(target, require_match=bool(data[0] & 0x80)))
        try:
            for start in range(0, len(body), chunk):
                inspection.feed(body[start:start + chunk])
            verdict = inspection.finish()
        except FormatRejected:
            return
        assert verdict.virtual_size is None or verdict.virtual_size >= 0

    source = scratch / "in.qcow2"
    output = scratch / "out.raw"

    def convert_one(data: bytes) -> None:
        source.write_bytes(data)
        output.unlink(missing_ok=True)
        try:
            result = convert_qcow2_to_raw(source, output, max_virtual_size=16 << 20, threads=1)
        except FormatRejected:
            assert not output.exists(), "a refused conversion left its output behind"
            return
        assert output.stat().st_size == result.virtual_size

    test = convert_one if target.startswith("convert") else inspect_one
    args = [sys.argv[0], f"-max_total_time={seconds}", f"-max_len={MAX_LEN}", f"-artifact_prefix={out}/{target}-",
            "-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1", str(corpus)]
    try:
        atheris.Setup(args, test)
        atheris.Fuzz()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- the driver: seeds, one process per target, a report ---------------------------------------------

def make_seeds(directory: Path, target: str) -> Path:
    sys.path.insert(0, str(HERE.parent))
    from fuzz.corpus import seed_inputs  # type: ignore[import-not-found]

    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seed_inputs().items():
        if target.startswith("convert"):
            (directory / name).write_bytes(data)
        else:
            (directory / name).write_bytes(bytes([3]) + data)  # chunk size 4096
    if target.startswith("convert") and shutil.which("qemu-img"):
        raw = directory.parent / f"{target}-seed.raw"
        with raw.open("wb") as handle:
            handle.truncate(1 << 20)
            handle.write(b"seed data " * 3000)
        for name, options in (("plain", []), ("zlib", ["-c"]), ("zstd", ["-c", "-o", "compression_type=zstd"]),
                              ("v2", ["-o", "compat=0.10"])):
            image = directory / f"qemu-{name}.qcow2"
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=512", *options, str(raw),
                            str(image)], check=True, capture_output=True)
            if image.stat().st_size > MAX_LEN:
                image.unlink()
        raw.unlink()
    return directory


def run_target(target: str, seconds: int, out: Path) -> dict[str, object]:
    corpus = make_seeds(out / "corpus" / target, target)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", target, "--seconds",
                           str(seconds), "--out", str(out), "--corpus", str(corpus)],
                          capture_output=True, text=True, cwd=ROOT)
    elapsed = time.monotonic() - started
    log = done.stdout + done.stderr
    (out / f"{target}.log").write_text(log)
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    cov = re.findall(r"cov: (\d+)", log)
    artifacts = sorted(p.name for p in out.glob(f"{target}-*"))
    return {"target": target, "seconds": round(elapsed, 1), "execs": int(execs[-1]) if execs else None,
            "coverage": int(cov[-1]) if cov else None, "exit": done.returncode, "artifacts": artifacts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="total fuzzing time, split between the targets")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of: " + ",".join(TARGETS))
    parser.add_argument("--out", type=Path, help="where logs and findings go (default: a new temporary directory)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seconds, args.out, args.corpus)
        return 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    out = args.out or Path(tempfile.mkdtemp(prefix="streamd-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    each = max(5, args.seconds // len(targets))
    print(f"fuzzing {len(targets)} targets for {each} s each; logs and findings in {out}", flush=True)
    findings = 0
    total = 0.0
    for target in targets:
        result = run_target(target, each, out)
        total += float(result["seconds"])  # type: ignore[arg-type]
        crashed = result["exit"] != 0 or result["artifacts"]
        findings += bool(crashed)
        print(f"  {target:13} {result['seconds']:>6} s  {result['execs'] or '?':>9} execs  "
              f"cov {result['coverage'] or '?':>5}  {'FINDING ' + str(result['artifacts']) if crashed else 'ok'}",
              flush=True)
    print(f"total {total:.0f} s, {findings} target(s) with findings", flush=True)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
