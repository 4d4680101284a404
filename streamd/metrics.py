"""The node's Prometheus metrics, behind one small facade (``[metrics]``, off by default).

The core records events here with plain function calls (``store_bytes``, ``cache_event``...);
only this module knows prometheus_client. Until :func:`enable` runs (``[metrics] enabled``),
every call is one test of a module global and returns: nothing is counted, nothing allocated.
Calls are made once per event (an upload's end, a cache hit, an import's end), never per chunk:
bytes are counted when a transfer ends.

Queue lengths are read at scrape time from callbacks the composition root registers
(:func:`watch`), so they cost nothing between scrapes. :func:`render` gives the text
exposition format for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

# Seconds: from a cached token's microseconds to a slow import of many GiB.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Watched(Collector):
    """Gauges read at scrape time: name -> (help, callback)."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, read) in self.gauges.items():
            yield GaugeMetricFamily(name, help_text, value=float(read()))


class _Live:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=r)
        self.watched = _Watched()
        r.register(self.watched)
        self.store_bytes = Counter(
            "streamd_store_bytes", "Bytes written to (in) and read from (out) each store, by operation",
            ["store", "direction", "operation"], registry=r)
        self.download_bytes = Counter(
            "streamd_download_bytes", "Image bytes sent to clients, by where they came from (cache, fill, store)",
            ["source"], registry=r)
        self.request_seconds = Histogram(
            "streamd_http_request_duration_seconds", "HTTP requests by route, method and status (body included)",
            ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_events = Counter(
            "streamd_cache_events", "Cache lookups and fills: hit, miss, join (a reader joined a fill in flight: "
            "single flight), fill, fill_failed, eviction", ["event"], registry=r)
        self.cache_bytes = Counter(
            "streamd_cache_bytes", "Bytes written into the cache (filled) and removed from it (evicted)",
            ["event"], registry=r)
        self.peer_fetches = Counter(
            "streamd_peer_fetches", "Cache fills from another node's cache, by result", ["result"], registry=r)
        self.peer_bytes = Counter("streamd_peer_bytes", "Bytes fetched from other nodes' caches", registry=r)
        self.sparse_skipped = Counter(
            "streamd_sparse_skipped_bytes", "Zero bytes never written (holes, or objects never sent) by sparse "
            "writes, per store", ["store"], registry=r)
        self.import_seconds = Histogram(
            "streamd_import_duration_seconds", "Image imports by method and result", ["method", "result"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.upload_failures = Counter(
            "streamd_upload_failures", "Failed uploads (PUT /file: upload, PUT /stage: stage) by cause: the "
            "error's class, or cancelled (the client went away, or the daemon stopped)", ["operation", "cause"],
            registry=r)
        self.keystone_seconds = Histogram(
            "streamd_keystone_validation_duration_seconds", "Token validations that asked Keystone",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.keystone_cache = Counter(
            "streamd_keystone_token_cache", "Token validations answered from the token cache (hit) or not (miss)",
            ["result"], registry=r)
        self.loop_lag = Histogram(
            "streamd_event_loop_lag_seconds", "How late the event loop woke a sleeping task", buckets=_LAG_BUCKETS,
            registry=r)
        self.loop_lag_last = Gauge("streamd_event_loop_lag_last_seconds", "The last measured event-loop lag",
                                   registry=r)


_live: _Live | None = None


def enable() -> None:
    """Start recording (a fresh registry: counters start at zero)."""
    global _live
    _live = _Live()


def disable() -> None:
    global _live
    _live = None


def enabled() -> bool:
    return _live is not None


def render() -> tuple[bytes, str]:
    """The text exposition of every metric, and its content type."""
    if _live is None:
        return b"", CONTENT_TYPE_LATEST
    return generate_latest(_live.registry), CONTENT_TYPE_LATEST


def watch(name: str, help_text: str, read: Callable[[], float]) -> None:
    """A gauge whose value is ``read()`` at each scrape (queue lengths, things in flight)."""
    if _live is not None:
        _live.watched.gauges[name] = (help_text, read)


# -- the events ---------------------------------------------------------------------------------------

def store_bytes(store: str, direction: str, operation: str, n: int) -> None:
    if _live is not None and n:
        _live.store_bytes.labels(store, direction, operation).inc(n)


def download_bytes(source: str, n: int) -> None:
    if _live is not None and n:
        _live.download_bytes.labels(source).inc(n)


def request_done(method: str, route: str, status: int, seconds: float) -> None:
    if _live is not None:
        _live.request_seconds.labels(method, route, str(status)).observe(seconds)


def cache_event(event: str, n_bytes: int = 0) -> None:
    """hit, miss, join, fill (``n_bytes`` written), fill_failed, eviction (``n_bytes`` removed)."""
    if _live is not None:
        _live.cache_events.labels(event).inc()
        if n_bytes and event in ("fill", "eviction"):
            _live.cache_bytes.labels("filled" if event == "fill" else "evicted").inc(n_bytes)


def peer_fetch(result: str, n_bytes: int = 0) -> None:
    if _live is not None:
        _live.peer_fetches.labels(result).inc()
        if n_bytes:
            _live.peer_bytes.inc(n_bytes)


def sparse_skipped(store: str, n: int) -> None:
    if _live is not None and n > 0:
        _live.sparse_skipped.labels(store).inc(n)


def import_done(method: str, result: str, seconds: float) -> None:
    if _live is not None:
        _live.import_seconds.labels(method, result).observe(seconds)


def upload_failed(operation: str, exc: BaseException) -> None:
    if _live is not None:
        cause = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__
        _live.upload_failures.labels(operation, cause).inc()


def keystone_validated(seconds: float) -> None:
    if _live is not None:
        _live.keystone_seconds.observe(seconds)


def keystone_cache(hit: bool) -> None:
    if _live is not None:
        _live.keystone_cache.labels("hit" if hit else "miss").inc()


def loop_lag(seconds: float) -> None:
    if _live is not None:
        _live.loop_lag.observe(seconds)
        _live.loop_lag_last.set(seconds)


def now() -> float:
    """The clock durations are measured with."""
    return time.monotonic()
