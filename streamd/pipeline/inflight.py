"""Requests that must be allowed to finish on a graceful shutdown: uploads.

aiohttp's own graceful shutdown stops reading from connections as soon as it
begins, so an upload could never complete during it. The daemon therefore
stops accepting connections first, waits here for the uploads in flight (up to
``graceful_shutdown_timeout``), and only then lets aiohttp shut down, which
cancels whatever is still running; cancelled uploads clean up after themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator


class InflightUploads:
    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True if every upload finished within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
