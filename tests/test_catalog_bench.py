"""bench/catalog.py runs end to end, short: 200 images loaded into streamd's catalogue and a real
Glance 33's, both servers measured, and the table printed with a row per request kind, both
servers listing the same images and no request failing. The figures are not checked (benches
print them; tests never assert timings)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("list default", "list visibility=all", "list member_status=all", "list tag= (1 in 20)",
        "list tag= (1 in 97)", "list property os_distro=", "list sort=name:asc,created_at:desc",
        "list limit=20 sort_key=created_at", "show", "show (back to back)", "create", "patch",
        "list every page (marker)")


def test_the_catalogue_bench_prints_its_table(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "bench/catalog.py"), "--images", "200", "--reps", "2",
                           "--page-size", "20", "--db", "sqlite", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "catalogue bench: 200 images, 50 projects, sqlite, 2 rounds" in out
    number = r"\s+\d+\.\d"
    for row in ROWS:
        line = re.search(rf"^{re.escape(row)}\s.*$", out, re.MULTILINE)
        assert line is not None, (row, out)
        fields = line.group(0)[len(row):]
        assert re.match(rf"({number}){{5}}", fields), line.group(0)
        if row.startswith("list"):
            assert fields.rstrip().endswith(" yes"), line.group(0)
    assert "failed requests: {'streamd': 0, 'glance': 0}" in out
    # The walk saw every image the member may list, the same on both servers.
    walks = re.findall(r"^walk (\w+): (\d+) images, (\d+) pages", out, re.MULTILINE)
    assert [w[0] for w in walks] == ["streamd", "glance"] and walks[0][1:] == walks[1][1:]
    assert int(walks[0][1]) > 20 and int(walks[0][2]) > 1
    saved = json.loads((tmp_path / "catalog-sqlite-200.json").read_text())
    assert set(saved["results"]) == set(ROWS) and saved["errors"] == {"streamd": 0, "glance": 0}
    assert all(len(by["streamd"]) == len(by["glance"]) == 2 for case, by in saved["results"].items()
               if not case.startswith("list every page"))
