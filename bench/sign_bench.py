"""Upload of a signed image against an unsigned one, in the same run, to the same streamd.

    .venv/bin/python bench/sign_bench.py [--quick] [--out bench/out] [--reps N] [--size-mib N]

One random file (default 2 GiB; --quick 512 MiB, 1 repetition), signed with a fresh RSA
3072 key (RSA-PSS; ``streamd-sign``'s code) twice: over SHA-256 (one more hash thread in the
upload) and over SHA-512 (the daemon's os_hash algorithm: the signature shares that hash);
the self-signed certificate in the daemon's ``[image_signature] certificate_dir``. For each
repetition, unsigned, SHA-256-signed and SHA-512-signed uploads interleaved (the order
rotated every repetition):

    POST /v2/images (with the four img_signature* properties, or none);
    curl -T FILE -X PUT .../file (Content-Length, `Expect:` off); the image must be active;
    DELETE the image

Measured per upload: wall seconds, MiB/s, server CPU-seconds per GiB (the daemon's process
tree). Target (issue 16): a signed upload's median wall time <= 1.05x the unsigned one's.
A SHA-256 signature's hash is one more consumer of the stream (its own thread): it costs CPU,
and wall time only when no core is free for it (2 shared cores are usually not). Writes OUT/sign.json. Run with PYTHONPATH at the
checkout whose streamd is to be measured (the .venv may hold another checkout's, editable).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache import loadavg, make_random  # noqa: E402
from procs import Meter  # noqa: E402
from run import read_through  # noqa: E402
from servers import REPO, Streamd  # noqa: E402

sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from streamd.sign import signature_properties  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
TARGET = 1.05


class SigningStreamd(Streamd):
    def prepare(self) -> list[str]:
        cmd = super().prepare()
        config = self.workdir / "streamd.conf"
        (self.workdir / "certs").mkdir()
        config.write_text(config.read_text() + f"[image_signature]\ncertificate_dir = {self.workdir / 'certs'}\n")
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}


def _certificate(key: rsa.RSAPrivateKey) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench signer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def upload_once(server: SigningStreamd, path: Path, properties: dict[str, str]) -> dict:
    image = server.api("POST", "/v2/images", {"name": path.name, "disk_format": "raw", "container_format": "bare",
                                              **properties})
    image_id = image["id"]
    read_through(path)
    with Meter(server.pid) as usage:
        done = subprocess.run(["curl", "-sS", "-f", "-T", str(path), "-X", "PUT", "-H",
                               "Content-Type: application/octet-stream", "-H", "Expect:", server.file_url(image_id)],
                              capture_output=True, text=True)
    shown = server.api("GET", f"/v2/images/{image_id}")
    ok = done.returncode == 0 and shown["status"] == "active"
    server.delete_image(image_id)
    size = path.stat().st_size
    return {"ok": ok, "error": done.stderr.strip()[:300], "wall_s": usage.wall_s,
            "mib_s": size / MiB / usage.wall_s, "cpu_s_per_gib": usage.cpu_s / (size / GiB),
            "peak_rss_mib": usage.peak_rss_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 MiB file, 1 repetition")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--size-mib", type=int, help="file size (default 2048, or 512 with --quick)")
    args = parser.parse_args()
    size = (args.size_mib or (512 if args.quick else 2048)) * MiB
    reps = args.reps or (1 if args.quick else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    path = make_random(args.out / "data", size)
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    started = time.perf_counter()
    signed = {f"signed {m}": signature_properties(str(path), key, "bench-signer", m) for m in ("SHA-256", "SHA-512")}
    print(f"signed {size // MiB} MiB twice in {time.perf_counter() - started:.1f} s", flush=True)
    kinds = ["unsigned", *signed]
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with SigningStreamd(args.out / "sign-streamd") as server:
        (server.workdir / "certs" / "bench-signer").write_bytes(_certificate(key))
        for rep in range(reps):
            order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
            for kind in order:
                result = upload_once(server, path, signed.get(kind, {}))
                results[kind].append(result)
                print(f"rep {rep + 1} {kind:15s} {result['wall_s']:6.2f} s {result['mib_s']:7.1f} MiB/s "
                      f"{result['cpu_s_per_gib']:5.2f} CPU-s/GiB ok={result['ok']} (load {loadavg()})", flush=True)
    summary = {}
    for kind, rows in results.items():
        good = [r for r in rows if r["ok"]]
        summary[kind] = {"median_wall_s": statistics.median(r["wall_s"] for r in good) if good else None,
                         "median_cpu_s_per_gib": statistics.median(r["cpu_s_per_gib"] for r in good) if good else None,
                         "failed": len(rows) - len(good)}
    ratios: dict[str, float | None] = {}
    base = summary["unsigned"]["median_wall_s"]
    for kind in signed:
        wall = summary[kind]["median_wall_s"]
        ratios[kind] = wall / base if wall and base else None
        verdict = "n/a" if ratios[kind] is None else ("met" if ratios[kind] <= TARGET else "MISSED")
        print(f"{kind} / unsigned median wall time: {ratios[kind] and round(ratios[kind], 3)} "
              f"(target <= {TARGET}: {verdict}); CPU-s/GiB {summary[kind]['median_cpu_s_per_gib']:.2f} against "
              f"{summary['unsigned']['median_cpu_s_per_gib']:.2f}")
    (args.out / "sign.json").write_text(json.dumps({"size": size, "reps": reps, "results": results,
                                                    "summary": summary, "ratios": ratios, "target": TARGET}, indent=2))


if __name__ == "__main__":
    main()
