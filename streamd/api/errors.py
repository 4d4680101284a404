"""Errors only the HTTP protocol has: raised by ``api/`` handlers, never by the core."""

from __future__ import annotations

from ..errors import StreamdError


class ProtocolError(StreamdError):
    """An answer that exists because of HTTP itself and needs its own headers
    (a 416 with ``Content-Range``, a 415 with ``Accept-Patch``)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
