"""Reading an object store's object through ranged GETs: the reader the S3 and Swift stores share.

A body is kept open while the reads go on in order, each new window twice the last (up to
``MAX_READ_WINDOW``): a sequential download costs few requests, a random ``Range`` read only its
own window. A connection that dies between reads is reopened once at the offset reached.
"""

from __future__ import annotations

import abc
from typing import Any

from ..errors import StoreFailure
from .base import Reader

FIRST_READ_WINDOW = 1 << 20
MAX_READ_WINDOW = 64 << 20


class RangedReader(Reader):
    def __init__(self, size: int, label: str) -> None:
        self.size = size
        self.label = label  # "S3 store NAME: bucket/key", for errors
        self.body: Any = None
        self.position = 0  # the offset the open body continues at
        self.window_end = 0  # the end (exclusive) of the open body's range
        self.window = FIRST_READ_WINDOW

    @abc.abstractmethod
    def _get_range(self, offset: int, end: int) -> Any:
        """A body (with a blocking ``read(n)``) of bytes ``offset`` to ``end - 1``."""

    @abc.abstractmethod
    def _release(self, body: Any) -> None:
        """Close ``body`` and whatever connection it holds."""

    @abc.abstractmethod
    def _store_errors(self) -> tuple[type[BaseException], ...]:
        """What the store's client raises (mapped by ``_failure``)."""

    @abc.abstractmethod
    def _failure(self, exc: BaseException) -> Exception:
        """The ``StreamdError`` for an error raised while opening or reading."""

    def _broken_stream_errors(self) -> tuple[type[BaseException], ...]:
        """What a body's ``read`` raises when its connection died: worth one more try."""
        import urllib3.exceptions  # both clients (botocore and requests) stream through urllib3

        return (OSError, urllib3.exceptions.HTTPError, *self._store_errors())

    def _open(self, offset: int, length: int, sequential: bool) -> None:
        self.close()
        self.window = min(self.window * 2, MAX_READ_WINDOW) if sequential else FIRST_READ_WINDOW
        end = min(self.size, offset + max(length, self.window))
        self.body = self._get_range(offset, end)
        self.position, self.window_end = offset, end

    def read(self, offset: int, length: int) -> bytes:
        length = min(length, self.size - offset)
        if length <= 0:
            return b""
        out = bytearray()
        retried = False
        while len(out) < length:
            at = offset + len(out)
            want = length - len(out)
            if self.body is None or self.position != at or self.position >= self.window_end:
                try:
                    self._open(at, want, sequential=self.body is not None and self.position == at)
                except self._store_errors() as exc:
                    raise self._failure(exc) from exc
            try:
                data = self.body.read(min(want, self.window_end - self.position))
            except self._broken_stream_errors() as exc:  # a connection that died between reads
                if retried:
                    raise self._failure(exc) from exc
                retried = True
                self.close()
                continue
            if not data:
                raise StoreFailure(f"{self.label} ended at {at}, before its size {self.size}")
            out += data
            self.position += len(data)
        return bytes(out)

    def close(self) -> None:
        if self.body is not None:
            body, self.body = self.body, None
            self._release(body)
