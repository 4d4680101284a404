"""Errors only the HTTP protocol has: raised by ``api/`` handlers, never by the core."""

from __future__ import annotations

import html
import json
import re
from typing import Callable

from ..errors import StreamdError
from ..status import reason_of


class ProtocolError(StreamdError):
    """An answer that exists because of HTTP itself and needs its own headers
    (a 416 with ``Content-Range``, a 415 with ``Accept-Patch``)."""

    def __init__(self, status: int, message: str, *, detail: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


# -- error responses in the shape Glance's (webob's) are -----------------------------------------
#
# glanceclient, openstackclient and openstacksdk build the text they print from the response's
# Content-Type and body, so an error is rendered exactly as Glance 33 renders it: HTML for
# ``Accept: */*`` (what glanceclient sends), flat JSON when JSON is preferred, plain text when the
# request has no Accept header. The message is webob's "explanation" and the detail is empty.

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_RANGE = re.compile(rf"^({_TOKEN})/({_TOKEN})((?:\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"[^\"]*\"))*)\s*$")
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")
_OFFERS = ("text/html", "application/json")


def _parse_accept(header: str) -> list[tuple[str, str, float, int]] | None:
    """(type, subtype, q, number of parameters) per media range; None when the header is malformed."""
    ranges = []
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        match = _MEDIA_RANGE.match(item)
        if match is None:
            return None
        q, params = 1.0, 0
        for param in filter(None, (p.strip() for p in match.group(3).split(";"))):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                if not _QVALUE.match(value.strip()):
                    return None
                q = float(value)
                break  # what follows q are accept-extensions, not media type parameters
            params += 1
        ranges.append((match.group(1).lower(), match.group(2).lower(), q, params))
    return ranges


def negotiate_error_type(accept: str | None) -> str:
    """The media type of an error body: webob's choice between HTML and JSON, else plain text."""
    if accept is None or not accept.strip():
        return "text/plain"
    # A malformed Accept accepts everything; HTML is the first offer.
    return negotiate_media_type(accept, _OFFERS, default="text/plain")


def negotiate_media_type(accept: str, offers: tuple[str, ...], *, default: str) -> str:
    """webob's ``acceptable_offers(offers)[0]``: the offer of highest quality (the most specific
    matching range decides each offer's), the first listed on a tie; ``default`` when none is
    acceptable. A malformed header accepts every offer, so the first one wins."""
    ranges = _parse_accept(accept)
    if ranges is None:
        return offers[0]
    scored = []
    for order, offer in enumerate(offers):
        kind, sub = offer.split("/")
        best: tuple[int, float] | None = None
        for rkind, rsub, q, params in ranges:
            if params:
                continue  # a range with media type parameters matches only offers with those: ours have none
            if rkind == kind and rsub == sub:
                specificity = 3
            elif rkind == kind and rsub == "*":
                specificity = 2
            elif rkind == "*" and rsub == "*":
                specificity = 1
            else:
                continue
            if best is None or specificity > best[0]:
                best = (specificity, q)
        if best is not None and best[1] > 0:
            scored.append((-best[1], order, offer))
    return min(scored)[2] if scored else default


def _html_escape(text: str) -> str:
    return html.escape(text, quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")


def _strip_tags(text: str) -> str:
    text = text.replace("\n", " ").replace("\r", "")
    text = re.sub(r"<br.*?>", "\n", text, flags=re.I | re.S)
    text = re.sub(r"<!--|-->", "", text)
    return re.sub(r"<.*?>", "", text, flags=re.S)


def render_error(status: int, message: str, accept: str | None, detail: str = "",
                 request_content_type: str | None = None) -> tuple[str, str]:
    """(content type with charset, body) of an error answer: ``message`` is webob's explanation,
    ``detail`` its detail line. A 415 has webob's own text naming the request's content type, and
    the message as its detail (as Glance's answers read)."""
    line = f"{status} {reason_of(status)}"

    def body(escape: Callable[[str], str]) -> str:
        if status == 415:
            # webob leaves the placeholder as it is when the request has no Content-Type.
            media = escape(request_content_type) if request_content_type is not None else "${CONTENT_TYPE}"
            return (f"The request media type {media} is not supported by this server.\n<br /><br />\n"
                    f"{escape(detail or message)}")
        return f"{escape(message)}<br /><br />\n{escape(detail)}\n\n"

    media = negotiate_error_type(accept)
    if media == "text/html":
        page = (f"<html>\n <head>\n  <title>{line}</title>\n </head>\n <body>\n  <h1>{line}</h1>\n"
                f"  {body(_html_escape)}\n </body>\n</html>")
        return "text/html; charset=UTF-8", page
    if media == "application/json":
        return "application/json", json.dumps({"message": body(str), "code": line, "title": reason_of(status)})
    return "text/plain; charset=UTF-8", f"{line}\n\n{_strip_tags(body(str))}"
