"""The web-download source: stream an image from an HTTP(S) or FTP URI, under the import URI filter.

ftp:// URIs (fetched only when ``allowed_schemes`` names ftp) are handed to
:mod:`streamd.imports.ftp`, under the same filter and limits; the rest of this module is HTTP.

A URI the caller hands us is an invitation to make requests from inside our network,
so every hop is checked, not just the first one:

* ``UriFilter.check`` runs on the initial URI and again on every redirect target.
  Redirects are followed here, one at a time, never by aiohttp.
* The address actually connected to is checked: the connector's resolver drops every
  address ``UriFilter.check_address`` refuses, so a name that resolves to 127.0.0.1
  (or is re-pointed there between our check and the connect) cannot reach it. aiohttp
  does not call a resolver for IP literals, so those are checked here before each request.

The body is streamed with bounded memory (aiohttp's flow control pauses the socket when
its buffer is full) and held to what the source declared: a body that ends short of its
Content-Length, a framing the HTTP parser rejects, a source that sends nothing for
``stall_timeout`` seconds, and a final status other than 2xx all raise
``ImportSourceError``. What the filter refuses raises ``InvalidRequest`` (``DisallowedAddress``
for addresses).

A source that sends more than its Content-Length: HTTP framing ends the body at the
declared length, so the extra bytes are never returned as image data. When they arrive
with the body, aiohttp's (C) parser reads them as a malformed next response and the
download fails; when they arrive later, nothing reads them and the connection is dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Coroutine, Generator
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from ..errors import InvalidRequest, DisallowedAddress, ImportSourceError
from .filtering import UriFilter
from .ftp import FtpDownload, open_ftp_source

__all__ = ["WebDownload", "WebSource", "open_web_source"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTTP_SCHEMES = frozenset({"http", "https"})
# What web-download can fetch at all; which of them it may is allowed_schemes' business.
SUPPORTED_SCHEMES = HTTP_SCHEMES | {"ftp"}
# Larger reads mean fewer trips through Python per gigabyte; aiohttp pauses the socket
# at about twice this much buffered, which bounds the memory of one download.
READ_BUFFER_BYTES = 1 << 20
USER_AGENT = "streamd-web-download"


class FilteringResolver(AbstractResolver):
    """Resolves names with the system resolver, keeping only addresses the filter allows.

    If a name resolves to both allowed and refused addresses only the allowed ones are
    tried; if none is left the lookup fails with ``DisallowedAddress``.
    """

    def __init__(self, uri_filter: UriFilter) -> None:
        self._system = ThreadedResolver()
        self._filter = uri_filter

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._system.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            try:
                self._filter.check_address(result["host"])
            except DisallowedAddress:
                refused.append(result["host"])
            else:
                allowed.append(result)
        if not allowed:
            raise DisallowedAddress(
                f"host {host!r} resolves only to addresses web-download may not reach "
                f"({', '.join(refused)}); allow_private_networks is false")
        return allowed

    async def close(self) -> None:
        await self._system.close()


def _checked_url(uri: str, uri_filter: UriFilter, schemes: frozenset[str] = SUPPORTED_SCHEMES) -> URL:
    """``uri`` as the URL to request, once the filter and this downloader (for ``schemes``) accept it."""
    uri_filter.check(uri)
    try:
        url = URL(uri).with_fragment(None)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"the URI is malformed: {exc}") from exc
    # The filter parsed the text with urllib, the request uses yarl's reading of it; check
    # yarl's serialization too, so a URI the two parsers read differently cannot slip by.
    uri_filter.check(str(url))
    if url.scheme not in schemes:
        raise InvalidRequest(f"scheme {url.scheme!r} is not supported by web-download here "
                             f"({', '.join(sorted(schemes))} are)")
    raw_host = url.raw_host or ""
    # aiohttp connects without asking the resolver when the host merely looks like an IP
    # address (any colon, or digits and dots), so apply the address rule to exactly those.
    if ":" in raw_host or raw_host.replace(".", "").isdigit():
        uri_filter.check_address(url.host or raw_host)
    return url


class WebDownload:
    """An open response of a web-download source, ready to stream its body once."""

    def __init__(self, session: aiohttp.ClientSession, response: aiohttp.ClientResponse, url: URL,
                 stall_timeout: float) -> None:
        self._session = session
        self._response = response
        self._stall_timeout = stall_timeout
        self._started = False
        self.url = str(url)
        # aiohttp's decompression is off, so this is the length of the bytes we receive.
        self.size: int | None = response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; raises ``ImportSourceError`` if it is not what was declared."""
        if self._started:
            raise RuntimeError("the body of a web-download can be read only once")
        self._started = True
        received = 0
        while True:
            chunk = await self._read_chunk(received)
            if not chunk:
                break
            received += len(chunk)
            if self.size is not None and received > self.size:
                raise ImportSourceError(
                    f"{self.url} sent more than the {self.size} bytes its Content-Length declared")
            yield chunk
        if self.size is not None and received != self.size:
            raise ImportSourceError(
                f"{self.url} ended after {received} of the {self.size} bytes its Content-Length declared")

    async def _read_chunk(self, received: int) -> bytes:
        try:
            return await self._response.content.readany()
        except aiohttp.ClientPayloadError as exc:
            declared = f" of the {self.size} bytes declared" if self.size is not None else ""
            raise ImportSourceError(f"{self.url} broke off the body after {received} bytes{declared}: {exc}") from exc
        except asyncio.TimeoutError as exc:
            raise ImportSourceError(
                f"{self.url} sent nothing for {self._stall_timeout:g} s after {received} bytes") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ImportSourceError(f"reading {self.url} failed after {received} bytes: {exc}") from exc

    async def close(self) -> None:
        """Drop the connection (the body may be unread) and the session; safe to call twice."""
        self._response.close()
        await self._session.close()

    async def __aenter__(self) -> WebDownload:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


# What open_web_source gives: the body of an HTTP response or of an FTP transfer, alike to its reader.
WebSource = WebDownload | FtpDownload


class WebSourceOpener:
    """What ``open_web_source`` returns: await it, or use it with ``async with``."""

    def __init__(self, opening: Coroutine[Any, Any, WebSource]) -> None:
        self._opening = opening
        self._download: WebSource | None = None

    def __await__(self) -> Generator[Any, None, WebSource]:
        return self._opening.__await__()

    async def __aenter__(self) -> WebSource:
        self._download = await self._opening
        return self._download

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._download is not None:
            await self._download.close()


def open_web_source(uri: str, uri_filter: UriFilter, *, stall_timeout: float, max_redirects: int,
                    connect_timeout: float = 30.0, headers: dict[str, str] | None = None) -> WebSourceOpener:
    """Request ``uri``, following at most ``max_redirects`` redirects, each one filtered.

    Returns the open 2xx response as a ``WebDownload``, or for an ftp:// URI the started
    transfer as an ``FtpDownload`` (no redirects there). Raises ``InvalidRequest`` (or its
    ``DisallowedAddress``) when the URI or a redirect target is refused, and
    ``ImportSourceError`` when the source fails, answers other than 2xx, redirects too
    often, or stalls for ``stall_timeout`` seconds. ``headers`` (HTTP only) go with the requests
    to the first URI's origin, never to another one a redirect leads to (glance-download's token).
    """
    return WebSourceOpener(_open(uri, uri_filter, stall_timeout=stall_timeout, max_redirects=max_redirects,
                                 connect_timeout=connect_timeout, headers=headers or {}))


async def _open(uri: str, uri_filter: UriFilter, *, stall_timeout: float, max_redirects: int,
                connect_timeout: float, headers: dict[str, str]) -> WebSource:
    url = _checked_url(uri, uri_filter)
    if url.scheme == "ftp":
        return await open_ftp_source(url, uri_filter, stall_timeout=stall_timeout, connect_timeout=connect_timeout)
    session = aiohttp.ClientSession(
        # No DNS cache: every connection resolves, and so checks, its addresses afresh.
        connector=aiohttp.TCPConnector(resolver=FilteringResolver(uri_filter), use_dns_cache=False),
        # sock_read bounds every wait for data, for the headers and for each body read:
        # that is the stall timeout. No total: a large image may take hours.
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout,
                                      sock_read=stall_timeout),
        # Store the bytes the source serves: ask for no content-coding, and do not undo one.
        auto_decompress=False,
        headers={"Accept-Encoding": "identity", "User-Agent": USER_AGENT},
        # No proxies from the environment (they would connect for us, past the address
        # check) and no cookies carried from one redirect hop to another.
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=READ_BUFFER_BYTES,
    )
    opened = False
    origin = url.origin()
    try:
        redirects = 0
        while True:
            response = await _request(session, url, stall_timeout, headers if url.origin() == origin else {})
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                response.close()
                if not location:
                    raise ImportSourceError(f"{url} answered {response.status} without a Location")
                if redirects >= max_redirects:
                    raise ImportSourceError(f"{uri} redirected more than {max_redirects} times")
                redirects += 1
                url = _redirect_target(url, location, uri_filter)
                continue
            if not 200 <= response.status < 300:
                response.close()
                raise ImportSourceError(f"{url} answered HTTP {response.status} {response.reason or ''}".rstrip())
            opened = True
            return WebDownload(session, response, url, stall_timeout)
    finally:
        if not opened:
            await session.close()


def _redirect_target(current: URL, location: str, uri_filter: UriFilter) -> URL:
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError) as exc:
        raise ImportSourceError(f"{current} redirected to a malformed Location {location!r}") from exc
    try:
        # An HTTP redirect stays on HTTP: aiohttp would not fetch another scheme anyway.
        return _checked_url(str(target), uri_filter, HTTP_SCHEMES)
    except InvalidRequest as exc:
        # Same class, so a refused address stays a DisallowedAddress; the message says which hop.
        raise type(exc)(f"redirect from {current} to {target} refused: {exc.message}") from exc


async def _request(session: aiohttp.ClientSession, url: URL, stall_timeout: float,
                   headers: dict[str, str]) -> aiohttp.ClientResponse:
    try:
        return await session.get(url, allow_redirects=False, headers=headers)
    except aiohttp.ConnectionTimeoutError as exc:
        raise ImportSourceError(f"could not connect to {url} in time") from exc
    except asyncio.TimeoutError as exc:
        raise ImportSourceError(f"{url} sent no response for {stall_timeout:g} s") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ImportSourceError(f"requesting {url} failed: {exc}") from exc
