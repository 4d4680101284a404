"""Scrape streamd's /metrics during a bench run and chart its throughput over time.

    scraper = Scraper("http://127.0.0.1:PORT/metrics", interval=0.5)
    with scraper:            # a thread scrapes until the block ends
        ...                  # the bench
    scraper.write(out)       # OUT/metrics.json, and OUT/throughput.png when matplotlib is there

Each scrape keeps the totals that move with the data: the bytes each store took and gave
(``streamd_store_bytes_total`` by direction) and the bytes sent to clients
(``streamd_download_bytes_total``), plus the event-loop lag. The chart plots their rate
between scrapes in MiB/s. Bytes into the stores are counted as they go (per ~4 MiB batch);
downloads and cache fills when they end, so their rate shows as a spike at the end.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

MiB = 1 << 20


def totals(text: str) -> dict[str, float]:
    """The sums the chart needs, from one scrape's text."""
    out = {"store_in": 0.0, "store_out": 0.0, "sent": 0.0, "requests": 0.0, "loop_lag_last": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "streamd_store_bytes_total":
                out["store_in" if s.labels.get("direction") == "in" else "store_out"] += s.value
            elif s.name == "streamd_download_bytes_total":
                out["sent"] += s.value
            elif s.name == "streamd_http_request_duration_seconds_count":
                out["requests"] += s.value
            elif s.name == "streamd_event_loop_lag_last_seconds":
                out["loop_lag_last"] = s.value
    return out


class Scraper:
    def __init__(self, url: str, interval: float = 0.5) -> None:
        self.url = url
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self._t0 = 0.0

    def scrape_once(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            sample = totals(resp.read().decode())
        sample["t"] = time.monotonic() - self._t0
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.scrape_once())
            except OSError:
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Scraper":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.samples.append(self.scrape_once())  # the final totals
        except OSError:
            self.errors += 1

    def rates(self) -> list[dict[str, float]]:
        """MiB/s between consecutive scrapes, at the midpoint of each interval."""
        rates = []
        for a, b in zip(self.samples, self.samples[1:]):
            dt = b["t"] - a["t"]
            if dt <= 0:
                continue
            rates.append({"t": (a["t"] + b["t"]) / 2,
                          **{k: (b[k] - a[k]) / dt / MiB for k in ("store_in", "store_out", "sent")}})
        return rates

    def summary(self) -> dict[str, Any]:
        last = self.samples[-1] if self.samples else {}
        return {"scrapes": len(self.samples), "errors": self.errors,
                "store_in_mib": round(last.get("store_in", 0) / MiB),
                "store_out_mib": round(last.get("store_out", 0) / MiB),
                "sent_mib": round(last.get("sent", 0) / MiB), "requests": int(last.get("requests", 0))}

    def write(self, out: Path) -> Path | None:
        """OUT/metrics.json (every scrape), and OUT/throughput.png if matplotlib is installed."""
        (out / "metrics.json").write_text(json.dumps({"summary": self.summary(), "samples": self.samples}, indent=1))
        try:
            import matplotlib
        except ImportError:
            print("matplotlib is missing: no throughput chart (pip install matplotlib)")
            return None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rates = self.rates()
        fig, ax = plt.subplots(figsize=(14, 5), constrained_layout=True)
        for key, label in (("store_in", "into the stores (uploads, staging, imports)"),
                           ("sent", "sent to clients (downloads)"), ("store_out", "read from the stores")):
            ax.plot([r["t"] for r in rates], [r[key] for r in rates], label=label, linewidth=1)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("MiB/s")
        ax.set_title(f"streamd throughput from /metrics (scraped every {self.interval:g} s)")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / "throughput.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
