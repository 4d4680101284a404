"""Background jobs under one supervisor: named, started together, stopped in a known order.

Every periodic job of the daemon (cache pruner and cleaner, prefetcher, import
sweeper, a store's reaper ...) is a :class:`PeriodicJob`. :class:`BackgroundJobs`
runs each in its own task, restarts a job whose run crashed (after logging it
with its name), and on :meth:`BackgroundJobs.stop` cancels them in the reverse
order of registration, waiting for each to finish its cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from .errors import StreamdError

log = logging.getLogger(__name__)

# After a crash, the job waits this long (or its interval, if shorter) before its next run.
CRASH_BACKOFF = 5.0


@dataclass(frozen=True)
class PeriodicJob:
    """``run`` every ``interval`` seconds, the first time ``interval`` seconds after start."""

    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


class BackgroundJobs:
    def __init__(self) -> None:
        self._jobs: list[PeriodicJob] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.crashes: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return [job.name for job in self._jobs]

    @property
    def running(self) -> int:
        return sum(not task.done() for task in self._tasks)

    def add(self, job: PeriodicJob) -> None:
        if self._tasks:
            raise RuntimeError("jobs are added before start()")
        if job.interval <= 0:
            log.info("background job %s is off (interval %s)", job.name, job.interval)
            return
        self._jobs.append(job)

    def start(self) -> None:
        for job in self._jobs:
            self._tasks.append(asyncio.create_task(self._supervise(job), name=f"job:{job.name}"))
        if self._jobs:
            log.info("background jobs: %s", ", ".join(f"{j.name} every {j.interval:g} s" for j in self._jobs))

    async def stop(self) -> None:
        for task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _supervise(self, job: PeriodicJob) -> None:
        delay = job.interval
        while True:
            await asyncio.sleep(delay)
            delay = job.interval
            try:
                await job.run()
            except StreamdError as exc:
                log.warning("%s failed: %s", job.name, exc.message)
            except OSError as exc:
                log.warning("%s failed: %s", job.name, exc)
            except Exception:  # noqa: BLE001 - the supervisor is the boundary: a crashed job is restarted
                self.crashes[job.name] = self.crashes.get(job.name, 0) + 1
                log.exception("background job %s crashed; restarting it", job.name)
                delay = min(job.interval, CRASH_BACKOFF)


def loop_lag_job(interval: float, record: Callable[[float], None]) -> PeriodicJob:
    """``event-loop lag``: every ``interval`` seconds, how much later than asked the loop woke
    the supervisor's sleep (a blocked loop, or one too busy to keep up), given to ``record``.
    The run itself takes no time: the next sleep starts as it returns."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]

    async def measure() -> None:
        now = loop.time()
        record(max(0.0, now - last[0] - interval))
        last[0] = loop.time()

    return PeriodicJob("event-loop lag", interval, measure)
