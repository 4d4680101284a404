"""bench/report.py: the issue-18 targets are computed from the run's own figures and checked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT


def _bench_report() -> Any:
    """bench/report.py, loaded by its path: bench/ on sys.path would shadow Ceph's ``rbd`` module
    with bench/rbd.py for every later test in the process (the RBD tests then fail)."""
    spec = importlib.util.spec_from_file_location("streamd_bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _bench_report()


def _result(mib_s: float, cpu: float, client_cpu: float = 0.5, rss: float = 100) -> dict:
    return {"mib_s": mib_s, "cpu_s_per_gib": cpu, "client_cpu_s_per_gib": client_cpu, "peak_rss_mib": rss,
            "wall_s": 1.0, "attempted": 1, "failed": 0, "errors": []}


def _server(up1: float, up4: float, cpu1: float, cpu4: float) -> dict:
    downloads = {"download_cold": _result(2400, 0.4), "download_warm": _result(2600, 0.3)}
    return {"c1": {"upload": _result(up1, cpu1)} | downloads, "c4": {"upload": _result(up4, cpu4)} | downloads}


def _results(streamd: dict, glance: dict) -> dict:
    # md5 and sha512 at 1024 MiB/s of CPU time: 1 CPU-s/GiB each; curl 0.5: ceiling 2 * 1024 / 2.5 = 819 MiB/s.
    reference = {"md5_mib_s": 1000, "md5_cpu_mib_s": 1024, "sha512_mib_s": 1000, "sha512_cpu_mib_s": 1024}
    for mode in ("sendfile", "readwrite"):
        for clients in ("c1", "c4"):
            reference[f"{mode}_{clients}"] = {"mib_s": 2800, "cpu_s_per_gib": 0.3, "failed": 0}
    return {"meta": {"cores": 2, "cpu": "test", "file_mib": 64, "repetitions": 1, "loadavg_start": [0.0] * 3,
                     "loadavg_end": [0.0] * 3, "other_load_cores": 0.0, "date": "now"},
            "summary": {"reference": reference, "files": {"random": {"streamd": streamd, "glance": glance}}}}


def test_two_core_ceiling_is_cores_over_hashes_and_client() -> None:
    results = _results(_server(700, 600, 2.3, 2.4), _server(200, 400, 4, 4))
    data, ref = results["summary"]["files"]["random"], results["summary"]["reference"]
    assert report.two_core_ceiling(ref, data, 2) == pytest.approx(2 * 1024 / 2.5)
    assert report.beyond_hashes(ref, data) == pytest.approx(0.3)


def test_all_targets_met_gives_no_problem() -> None:
    results = _results(_server(700, 600, 2.3, 2.4), _server(200, 400, 4, 4))
    assert report.checks(results["summary"], 2) == []
    assert "all streamd targets met" in report.table(results)


@pytest.mark.parametrize(("streamd", "expected"), [
    (_server(600, 600, 2.3, 2.4), "below 0.8x the two-core ceiling"),   # 600 < 0.8 * 819
    (_server(700, 600, 2.7, 2.7), "beyond the two hashes"),              # 0.7 > 0.5
    (_server(700, 500, 2.3, 2.4), "below 1.3x Glance's"),                # 500 < 1.3 * 400
    (_server(700, 600, 2.3, 2.6), "over 1.1x the 1-client"),             # 2.6 > 1.1 * 2.3
])
def test_each_missed_target_is_named(streamd: dict, expected: str) -> None:
    problems = report.checks(_results(streamd, _server(200, 400, 4, 4))["summary"], 2)
    assert len(problems) == 1 and expected in problems[0]


def test_chart_draws_the_target_panel(tmp_path: Path) -> None:
    results = _results(_server(700, 600, 2.3, 2.4), _server(200, 400, 4, 4))
    ratios = {name: value for _, name, value in report.target_ratios(results)}
    assert ratios["upload 4 / Glance 4 >= 1.3"] == pytest.approx(600 / 520)
    assert ratios["CPU 4 / CPU 1 <= 1.1"] == pytest.approx(1.1 * 2.3 / 2.4)
    assert report.chart(results, tmp_path / "r.png") == tmp_path / "r.png" and (tmp_path / "r.png").stat().st_size
