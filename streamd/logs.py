"""The daemon's log: plain lines for people, or one JSON object a line (``[DEFAULT] use_json``,
oslo.log's option) for log pipelines.

Every record logged while a request is served carries that request's identity: the HTTP edge
sets :data:`REQUEST` (a context variable, so it follows the request into every coroutine and
thread it starts) and :class:`RequestFilter` copies it onto the record, the way oslo.log puts
the request context on Glance's lines. The access log adds route, status, bytes and duration
(``streamd.api.access_log``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
# The fields a record may carry beyond the message (set by RequestFilter and the access log).
REQUEST_FIELDS = ("request_id", "project_id", "user_id", "image_id")
ACCESS_FIELDS = ("method", "path", "route", "status", "bytes", "duration_ms", "remote", "user_agent")


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    request_id: str
    project_id: str | None = None
    user_id: str | None = None
    image_id: str | None = None


REQUEST: contextvars.ContextVar[RequestIdentity | None] = contextvars.ContextVar("streamd_request", default=None)


class RequestFilter(logging.Filter):
    """Puts the current request's identity on every record (``request_tag`` for the plain format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = REQUEST.get()
        for name in REQUEST_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, getattr(current, name) if current is not None else None)
        record.request_tag = f" [{record.request_id}]" if record.request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the request's
    identity and, for access records, what the request did; a traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS + ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str | int, *, use_json: bool) -> None:
    """The root logger to stderr, in the chosen format; the noisy libraries quieter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestFilter())
    handler.setFormatter(JsonFormatter() if use_json else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
