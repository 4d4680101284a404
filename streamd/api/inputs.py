"""Every input of a request, decoded and checked once, at the HTTP edge.

Handlers read what a client sent only through here, so that a malformed
input is a 4xx with a message that says what is wrong, never a 500 from
deeper down (a ``RecursionError`` in the JSON decoder, an ``OverflowError``
or ``UnicodeEncodeError`` in the database driver):

* the request target (path and query string), for every request, by
  :func:`inputs_middleware`: valid UTF-8 once percent-decoded, no U+0000.
  aiohttp would turn invalid bytes into U+FFFD (query) or keep them
  percent-encoded (path); Glance answers ``?name=%FF`` with 400;
* JSON bodies (:func:`json_body`): at most ``client_max_size`` (1 MiB, the
  app's cap), strict UTF-8, strict JSON (no ``NaN``/``Infinity``), nested at
  most :data:`MAX_JSON_DEPTH` levels, every string and key valid Unicode
  without lone surrogates or U+0000, every integer within 64 bits;
* the headers handlers read (:func:`text_header`, :func:`size_header`,
  :func:`require_content_type`).

Column-specific bounds (``min_ram`` is a 32-bit INTEGER, sizes 64-bit
BIGINT) are the catalogue's (:mod:`streamd.catalog.values`), which checks
every write again as a floor under this module.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..catalog.values import BIGINT_MAX, BIGINT_MIN, short_number, text_problem
from ..errors import InvalidRequest, UnsupportedContent

# Glance's documents are at most four levels deep (a JSON patch of a location's metadata);
# this leaves room for nested location metadata while keeping every recursive walker
# (jsonschema, json.dumps) far from Python's recursion limit.
MAX_JSON_DEPTH = 32
# An integer literal longer than this cannot be within 64 bits: refused before int() parses it.
_MAX_INTEGER_DIGITS = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the request target ------------------------------------------------------------------------

@web.middleware
async def inputs_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    check_target(request)
    return await handler(request)


def check_target(request: web.Request) -> None:
    """The path and the query string, as received, must percent-decode to valid UTF-8 without NUL."""
    path, _, query = request.raw_path.partition("?")
    _check_percent_encoded(path, "The request path")
    _check_percent_encoded(query.replace("+", " "), "The query string")


def _check_percent_encoded(text: str, what: str) -> None:
    raw = urllib.parse.unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid UTF-8 once percent-decoded: byte 0x{raw[exc.start]:02X} "
                             f"at offset {exc.start} ({exc.reason})") from None
    if "\x00" in decoded:
        raise InvalidRequest(f"{what} contains %00 (U+0000, NUL), which is not allowed")


# -- JSON bodies -------------------------------------------------------------------------------

async def json_body(request: web.Request) -> Any:
    """The request's JSON document (None for an empty body), decoded and checked.

    ``request.read`` enforces the app's ``client_max_size`` (413 beyond it).
    """
    return decode_json(await request.read())


def decode_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Python's json would take these bytes (it decodes with surrogatepass): UTF-16
        # surrogates encoded as UTF-8 would then reach the catalogue.
        raise InvalidRequest(f"Malformed JSON in request body: not valid UTF-8 at byte {exc.start} "
                             f"({exc.reason})") from None
    try:
        document = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # json.JSONDecodeError, or a refused number from the hooks
        raise InvalidRequest(f"Malformed JSON in request body: {exc}") from None
    check_document(document)
    return document


def check_document(document: Any) -> None:
    """Depth, strings, keys and integers of a decoded document; iterative, so depth cannot hurt it."""
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            if depth >= MAX_JSON_DEPTH:
                raise _too_deep()
            for key, item in value.items():
                _check_string(key, "A key")
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_JSON_DEPTH:
                raise _too_deep()
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_string(value, "A string")
        elif isinstance(value, int) and not isinstance(value, bool):
            if not BIGINT_MIN <= value <= BIGINT_MAX:
                raise _out_of_range(short_number(value))


def _check_string(value: str, what: str) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRequest(f"Malformed JSON in request body: {what.lower()} {problem}")


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INTEGER_DIGITS:
        raise _out_of_range(f"a {len(literal.lstrip('-'))}-digit number")
    return int(literal)


def _parse_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise InvalidRequest(f"Malformed JSON in request body: {literal[:40]} is out of range for a number")
    return number


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"Malformed JSON in request body: {name} is not JSON")


def _too_deep() -> InvalidRequest:
    return InvalidRequest(f"Malformed JSON in request body: nested more than {MAX_JSON_DEPTH} levels deep")


def _out_of_range(number: str) -> InvalidRequest:
    return InvalidRequest(f"Malformed JSON in request body: an integer is out of range: {number} "
                          f"(integers are 64-bit: from {BIGINT_MIN} to {BIGINT_MAX})")


# -- headers -----------------------------------------------------------------------------------

def text_header(request: web.Request, name: str, default: str | None = None) -> str | None:
    """A header whose value becomes a name or is stored: it must be valid UTF-8 (aiohttp keeps
    undecodable bytes as lone surrogates) and, like every stored text, without NUL."""
    value = request.headers.get(name)
    if value is None:
        return default
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRequest(f"Header {name} is not valid UTF-8 text: it {problem}")
    return value


def size_header(request: web.Request, name: str) -> int | None:
    """A byte count in a header: a decimal integer from 0 to 2**63 - 1 (the catalogue's BIGINT)."""
    value = request.headers.get(name)
    if value is None:
        return None
    text = value.strip(" \t")
    if not text.isascii() or not text.isdigit():
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidRequest(f"{name} must be a non-negative integer, not {shown!r}")
    if len(text.lstrip("0")) > _MAX_INTEGER_DIGITS or int(text) > BIGINT_MAX:
        raise InvalidRequest(f"{name} is out of range: at most {BIGINT_MAX} bytes")
    return int(text)


def require_content_type(request: web.Request, allowed: str, what: str) -> None:
    """415 unless the request names ``allowed`` as its Content-Type (aiohttp assumes
    application/octet-stream when there is none; Glance refuses a missing one)."""
    if "Content-Type" not in request.headers:
        raise UnsupportedContent(f"Invalid content type None: {what} must be sent as {allowed}")
    if request.content_type != allowed:
        raise UnsupportedContent(f"Unsupported Content-Type {request.content_type}: {what} must be {allowed}")
