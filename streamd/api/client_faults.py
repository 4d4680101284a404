"""Requests that end because of the client, not of us: one INFO line each, never a traceback.

A client that goes away mid-request (a reset, or a close before its body was
whole) reaches a handler as ``ConnectionResetError`` (from aiohttp's body
reader or from a write to the closed socket) or as aiohttp's
``ContentLengthError``; a request aiohttp's HTTP parser refuses is answered
400 by aiohttp itself. Left alone, aiohttp logs each of them at ERROR with a
full traceback ("Error handling request"), and the access log shows a 500.
ERROR is for our own faults: the errors middleware turns a vanished client
into :func:`client_went_away` (one INFO line naming the request id, 499 in
the access log, as nginx logs a closed request), and :class:`ClientFaultFilter`
turns aiohttp's own record of a parser refusal into one INFO line.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .keys import request_id_of

log = logging.getLogger("streamd.api")

# Nginx's "client closed request": what the access log shows; nobody is left to read it.
CLIENT_CLOSED_REQUEST = 499
_SERVER_LOGGER = "aiohttp.server"


def client_is_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def client_went_away(request: web.Request, exc: BaseException) -> web.Response:
    log.info("%s %s (%s): the client went away: %s", request.method, request.path, request_id_of(request),
             describe(exc))
    return web.Response(status=CLIENT_CLOSED_REQUEST)


def describe(exc: BaseException) -> str:
    """One short printable line for the log or an error message."""
    if isinstance(exc, HttpProcessingError):
        # aiohttp's messages span lines: the reason, the offending bytes, a caret under them.
        parts = [line.strip() for line in exc.message.splitlines()]
        text = " ".join(p for p in parts if p and set(p) != {"^"})
    else:
        text = str(exc) or type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return text.encode("ascii", "backslashreplace").decode("ascii")


class ClientFaultFilter(logging.Filter):
    """On aiohttp's server logger: a request its HTTP parser refused, or a connection the client
    dropped, becomes one INFO line without its traceback; every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # aiohttp's message is "Error handling request from %s" (the peer's address).
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "an unknown peer"
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "malformed HTTP request from %s answered %d: %s", (
                peer, exc.code or 400, describe(exc))
        elif isinstance(exc, ConnectionError):
            record.msg, record.args = "client %s went away: %s", (peer, describe(exc))
        else:
            return True
        record.levelno = min(record.levelno, logging.INFO)
        record.levelname = logging.getLevelName(record.levelno)
        record.exc_info, record.exc_text = None, None
        # The logger let the record through at ERROR; it must pass at its new level too.
        return logging.getLogger(record.name).isEnabledFor(record.levelno)


def install_log_filter() -> None:
    """Filter aiohttp's server logger (once per process)."""
    logger = logging.getLogger(_SERVER_LOGGER)
    if not any(isinstance(f, ClientFaultFilter) for f in logger.filters):
        logger.addFilter(ClientFaultFilter())
