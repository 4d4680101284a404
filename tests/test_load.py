"""Mixed load across three nodes on one PostgreSQL catalogue: bench/load.py, short, must see no error.

The bench itself (64 clients, 5 minutes) reports latencies and memory; here it runs for seconds with
fewer clients, and what is asserted is only what it checks: every upload, download (md5 of the body),
list and delete succeeded, on every node, while the others were busy, and no node's memory ran away.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, pg_url


def test_mixed_load_on_three_nodes_has_no_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--nodes", "3", "--clients", "12", "--duration", "15",
         "--base-images", "3", "--max-rss-mib", "400", "--pg-url", pg_url(), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "load.json").read_text())
    assert report["errors"] == []
    counts = {op: row["count"] for op, row in report["operations"].items()}
    assert all(counts[op] > 0 for op in ("upload", "download", "list", "delete")), counts
