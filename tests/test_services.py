"""The composition root, the job supervisor and the error -> status table."""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path

import pytest

from conftest import make_config
from streamd import errors
from streamd.background import BackgroundJobs, PeriodicJob
from streamd.services import open_services
from streamd.status import HTTP_STATUS, status_of


async def test_a_crashed_job_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    done = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise ZeroDivisionError("a bug in the job")
        if len(runs) == 3:
            done.set()

    jobs = BackgroundJobs()
    jobs.add(PeriodicJob("flaky job", 0.01, flaky))
    with caplog.at_level(logging.ERROR, logger="streamd.background"):
        jobs.start()
        await asyncio.wait_for(done.wait(), 5)
        await jobs.stop()
    assert jobs.crashes == {"flaky job": 1}
    assert "background job flaky job crashed" in caplog.text and "ZeroDivisionError" in caplog.text
    assert len(runs) >= 3


async def test_jobs_stop_in_reverse_order_and_a_zero_interval_is_off() -> None:
    stopped: list[str] = []

    def job(name: str) -> PeriodicJob:
        async def run() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                stopped.append(name)
        return PeriodicJob(name, 0.001, run)

    jobs = BackgroundJobs()
    for name in ("first", "second", "third"):
        jobs.add(job(name))
    jobs.add(PeriodicJob("off", 0, job("off").run))
    assert jobs.names == ["first", "second", "third"]
    jobs.start()
    await asyncio.sleep(0.05)
    await jobs.stop()
    assert stopped == ["third", "second", "first"]


async def test_services_open_in_order_register_their_jobs_and_close(tmp_path: Path) -> None:
    config = make_config(tmp_path, None)
    async with open_services(config) as services:
        assert services.cache is not None and services.prefetcher is not None
        # SQLite (make_config's default): its WAL is checkpointed by a job, not by the commits.
        assert services.jobs.names == ["catalogue checkpoint", "import lock sweeper", "prefetcher",
                                       "cache maintenance"]
        assert services.jobs.running == 4
        assert (await services.catalog.list_tasks()) == []
        with pytest.raises(AttributeError):
            services.cache = None  # type: ignore[misc]  # frozen: the edges share one object
    assert services.jobs.running == 0


async def test_without_a_cache_there_is_no_prefetcher_and_no_cache_job(tmp_path: Path) -> None:
    config = make_config(tmp_path, None, DEFAULT={"image_cache_dir": "none"})
    async with open_services(config) as services:
        assert services.cache is None and services.prefetcher is None
        assert services.jobs.names == ["catalogue checkpoint", "import lock sweeper"]


def _core_error_classes() -> list[type[errors.StreamdError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.StreamdError) and c.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", _core_error_classes(), ids=lambda c: c.__name__)
def test_core_errors_know_no_http_status(cls: type[errors.StreamdError]) -> None:
    assert not hasattr(cls, "status") and not hasattr(cls, "title") and not hasattr(cls, "headers")


def test_every_core_error_has_a_status_by_who_must_act() -> None:
    for cls in _core_error_classes():
        exc = cls.__new__(cls)
        status = status_of(exc)
        if issubclass(cls, errors.RequestError):
            assert 400 <= status < 500 and status != 409, cls
        elif issubclass(cls, errors.StateConflict):
            assert status in (409, 410), cls
        elif issubclass(cls, (errors.BackendFailure, errors.PeerFailure)):
            assert status >= 500, cls
    assert status_of(errors.OutOfSpace("full")) == 413  # as Glance answers StorageFull
    assert status_of(errors.StoreUnavailable("ceph down")) == 503
    assert status_of(errors.PeerUnreachable("gone")) == 504
    assert set(HTTP_STATUS) <= set(_core_error_classes())
