"""bench/storm.py, run tiny (32 MiB, 2 nodes x 2 clients) against the dev Ceph and PostgreSQL: it runs
both sides, checks every body and prints its table. Figures are printed, never asserted, except what
is no timing: how many bodies were right, and that the streamd side read the backend about once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import pg_url
from test_rbd_store import ceph_env

ROOT = Path(__file__).resolve().parent.parent


def test_storm_bench_prints_its_table() -> None:
    env = {**os.environ, **ceph_env(), "STREAMD_TEST_PG_URL": pg_url()}
    # A short directory, not tmp_path: the nodes' admin sockets (<out>/streamd-N/data/run/admin.sock) must
    # stay within AF_UNIX's 108 bytes, which pytest-xdist's popen-gwN level of tmp_path can pass.
    work = Path(tempfile.mkdtemp(prefix="storm-"))
    try:
        out = subprocess.run([sys.executable, str(ROOT / "bench/storm.py"), "--nodes", "2", "--clients", "2",
                              "--size-mib", "32", "--out", str(work / "storm")],
                             capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "boot storm: one 32 MiB image, 2 nodes x 2 clients" in text, text
    rows = {m.group(1): m for m in re.finditer(
        r"^(streamd|glance)\s*\|\s*(\d+)\s+([\d.]+) \|\s*(\d+) \|\s*([\d.]+) \| (\d+)/(\d+)", text, re.M)}
    assert set(rows) == {"streamd", "glance"}, text
    for row in rows.values():
        assert row.group(4) == "128" and row.group(6) == row.group(7) == "4", text  # 4 whole, right bodies
    # One node read the backend, the other streamed its fill.
    assert "streamd nodes (backend reads opened / fills streamed from a peer): " in text, text
    assert sorted(re.search(r"from a peer\): (.*)$", text, re.M).group(1).split(", ")) == ["0/1", "1/0"], text
