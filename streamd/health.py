"""The node's health, as oslo.middleware's healthcheck reports it, with real checks behind it.

:class:`HealthChecker` runs, for each request, oslo.middleware's backends named in
``[healthcheck] backends`` (``disable_by_file``, ``disable_by_files_ports``,
``enable_by_files``: same answers, reasons and details), then streamd's own checks,
each bounded by ``check_timeout``: the catalogue answers a trivial query; every
store proves it can write and read (``Store.check``: a probe file in a file store,
a probe object through the RBD store's rados connection); the staging and cache
directories are writable; and each of them has at least ``min_free_space`` free.
A result is one line of the answer: ``reason`` is what everybody sees (``OK`` or
what is wrong, in oslo.middleware's capitals), ``details`` only admins with
``detailed``. Nothing here knows HTTP; ``api/health.py`` renders the results.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Awaitable, Callable

from .cache import ImageCache
from .catalog import Catalog
from .config import HealthcheckOptions
from .errors import StreamdError
from .imports import StagingArea
from .stores import StoreRegistry
from .stores.base import StoreHealth, probe_directory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthResult:
    """oslo.middleware's HealthcheckResult."""

    available: bool
    reason: str
    details: str = ""
    kind: str = "HealthcheckResult"


OK = "OK"


class HealthChecker:
    def __init__(self, options: HealthcheckOptions, catalog: Catalog, stores: StoreRegistry,
                 staging: StagingArea, cache: ImageCache | None) -> None:
        self.options = options
        self.catalog = catalog
        self.stores = stores
        self.staging = staging
        self.cache = cache
        # The failing checks of the last run, by reason: logged when they start and stop failing.
        self._failing: set[str] = set()
        # Each check's run in flight: a check that outlives its timeout (a stalled cluster) is
        # joined by the next requests, never started again beside itself (the store's threads
        # are the data path's too).
        self._running: dict[str, asyncio.Task[HealthResult]] = {}

    async def stop(self) -> None:
        """Cancel the checks still running (shutdown)."""
        tasks = [t for t in self._running.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()

    async def run(self, server_port: int) -> list[HealthResult]:
        """Every result, oslo.middleware's backends first (in ``backends`` order), then streamd's checks."""
        results = [self._backend(name, server_port) for name in self.options.backends]
        checks: list[tuple[str, Callable[[], Awaitable[HealthResult]]]] = [("catalogue", self._catalog)]
        for store in self.stores:
            checks.append((f"store {store.name}", _store_check(store.name, store.check, self.options.min_free_space)))
        checks.append(("staging", _store_check("staging", self.staging.store.check, self.options.min_free_space,
                                               what="STAGING")))
        if self.cache is not None:
            checks.append(("cache", self._cache))
        results += await asyncio.gather(*(self._bounded(name, check) for name, check in checks))
        failing = {r.reason for r in results if not r.available}
        for result in results:
            if not result.available and result.reason not in self._failing:
                log.warning("health check fails: %s: %s", result.reason, result.details)
        for reason in sorted(self._failing - failing):
            log.info("health check passes again: %s", reason)
        self._failing = failing
        return results

    async def _bounded(self, name: str, check: Callable[[], Awaitable[HealthResult]]) -> HealthResult:
        task = self._running.get(name)
        if task is None or task.done():
            task = asyncio.ensure_future(check())
            self._running[name] = task
            # Retrieved here too: the requests that waited for it may all have timed out.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.options.check_timeout)
        except TimeoutError:
            return HealthResult(False, f"{name.upper()} NOT ANSWERING",
                                f"{name}: no answer within {self.options.check_timeout:g} s")

    async def _catalog(self) -> HealthResult:
        try:
            await self.catalog.ping()
        except StreamdError as exc:
            return HealthResult(False, "CATALOGUE UNREACHABLE", exc.message)
        return HealthResult(True, OK, "catalogue answers")

    async def _cache(self) -> HealthResult:
        assert self.cache is not None
        directory = self.cache.incomplete
        try:
            free = await asyncio.to_thread(probe_directory, directory)
        except (OSError, ValueError) as exc:
            return HealthResult(False, "CACHE NOT WRITABLE", f"cache: {directory} is not writable: {exc}")
        return _free_space("CACHE", StoreHealth(f"cache: {self.cache.directory} writable and readable", free),
                           self.options.min_free_space)

    # -- oslo.middleware's backends ------------------------------------------------------------

    def _backend(self, name: str, server_port: int) -> HealthResult:
        if name == "disable_by_file":
            return _disable_by_file(self.options.disable_by_file_path)
        if name == "disable_by_files_ports":
            return _disable_by_files_ports(self.options.disable_by_file_paths, server_port)
        return _enable_by_files(self.options.enable_by_file_paths)


def _store_check(name: str, check: Callable[[], Awaitable[StoreHealth]], min_free: int,
                 what: str | None = None) -> Callable[[], Awaitable[HealthResult]]:
    label = what or f"STORE {name}"

    async def run() -> HealthResult:
        try:
            health = await check()
        except StreamdError as exc:
            return HealthResult(False, f"{label} UNAVAILABLE", exc.message)
        return _free_space(label, health, min_free)

    return run


def _free_space(label: str, health: StoreHealth, min_free: int) -> HealthResult:
    if health.free_bytes is None:
        return HealthResult(True, OK, health.details)
    details = f"{health.details}, {format_size(health.free_bytes)} free"
    if min_free and health.free_bytes < min_free:
        return HealthResult(False, f"{label} LOW ON SPACE", f"{details}, below min_free_space {format_size(min_free)}")
    return HealthResult(True, OK, details)


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _disable_by_file(path: str | None) -> HealthResult:
    if not path:
        return HealthResult(True, OK, "No 'disable_by_file_path' configuration value specified")
    if not os.path.exists(path):
        return HealthResult(True, OK, f"Path '{path}' was not found")
    return HealthResult(False, "DISABLED BY FILE", f"Path '{path}' was found")


def _disable_by_files_ports(port_paths: tuple[str, ...], server_port: int) -> HealthResult:
    files = {}
    for entry in port_paths:
        port, _, path = entry.partition(":")
        files[int(port)] = path.strip()
    path = files.get(server_port)
    if path is None:
        return HealthResult(True, OK)
    if not os.path.exists(path):
        return HealthResult(True, OK)
    return HealthResult(False, "DISABLED BY FILE")


def _enable_by_files(paths: tuple[str, ...]) -> HealthResult:
    for path in paths:
        if not os.path.exists(path):
            return HealthResult(False, "FILE PATH MISSING", f"File path {path} is missing")
    return HealthResult(True, OK, "Specified file paths are available")
