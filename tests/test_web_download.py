"""The web-download source against real servers on loopback ports.

An aiohttp application serves well-behaved answers and redirects; raw asyncio servers
play sources that lie about their length or stall. Since every server is on 127.0.0.1,
most tests allow private networks; the tests of the private-network rule do not.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamd.status import status_of
from streamd.config import ImportFilteringOptions
from streamd.errors import InvalidRequest, DisallowedAddress, ImportSourceError, StreamdError
from streamd.imports import UriFilter, WebDownload, open_web_source

BODY = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
STALL = 0.5

LOOPBACK = ImportFilteringOptions(allowed_ports=(), allow_private_networks=True)
# Filters that the /to handler turns private networks off in (filled in by a test).
FLIP_PRIVATE = web.AppKey("flip_private", list)


async def _data(request: web.Request) -> web.Response:
    response = web.Response(body=BODY, content_type="application/octet-stream")
    # Compresses only if the client accepts gzip: the downloader must ask for identity.
    response.enable_compression()
    return response


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(BODY), 100_000):
        await response.write(BODY[start:start + 100_000])
    await response.write_eof()
    return response


STATUS_OF_HOP = [301, 302, 303, 307, 308]


async def _chain(request: web.Request) -> web.Response:
    """/chain/N redirects N times (relative Locations, every redirect status) before the data."""
    left = int(request.match_info["left"])
    status = STATUS_OF_HOP[left % len(STATUS_OF_HOP)]
    location = "../data" if left == 1 else f"{left - 1}"
    if left == 0:
        return await _data(request)
    return web.Response(status=status, headers={"Location": location})


async def _to(request: web.Request) -> web.Response:
    """/to?location=X redirects to X; filters in app[FLIP_PRIVATE] stop allowing private networks here."""
    for uri_filter in request.app[FLIP_PRIVATE]:
        uri_filter.allow_private_networks = False
    return web.Response(status=302, headers={"Location": request.query["location"]})


async def _no_location(request: web.Request) -> web.Response:
    return web.Response(status=302)


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="nope")


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app[FLIP_PRIVATE] = []
    app.router.add_get("/data", _data)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/chain/{left}", _chain)
    app.router.add_get("/to", _to)
    app.router.add_get("/no-location", _no_location)
    app.router.add_get("/status/{code}", _status)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


def _url(server: TestServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}{path}"


async def _fetch(uri: str, uri_filter: UriFilter, *, max_redirects: int = 5) -> tuple[WebDownload, bytes]:
    async with open_web_source(uri, uri_filter, stall_timeout=STALL, max_redirects=max_redirects) as download:
        received = bytearray()
        async for chunk in download.chunks():
            received += chunk
    return download, bytes(received)


# -- success ---------------------------------------------------------------------------------------

async def test_download_with_known_size(server: TestServer) -> None:
    download, received = await _fetch(_url(server, "/data"), UriFilter(LOOPBACK))
    assert download.size == len(BODY)
    assert received == BODY
    assert download.url == _url(server, "/data")


async def test_download_chunked_without_size(server: TestServer) -> None:
    download = await open_web_source(_url(server, "/chunked"), UriFilter(LOOPBACK), stall_timeout=STALL,
                                     max_redirects=0)
    try:
        assert download.size is None
        received = b"".join([chunk async for chunk in download.chunks()])
    finally:
        await download.close()
    assert received == BODY


async def test_port_allow_list_naming_the_server_port(server: TestServer) -> None:
    options = ImportFilteringOptions(allowed_ports=(server.port,), allow_private_networks=True)
    _, received = await _fetch(_url(server, "/data"), UriFilter(options))
    assert received == BODY


async def test_body_can_be_read_once(server: TestServer) -> None:
    async with open_web_source(_url(server, "/data"), UriFilter(LOOPBACK), stall_timeout=STALL,
                               max_redirects=0) as download:
        async for _ in download.chunks():
            break
        with pytest.raises(RuntimeError):
            async for _ in download.chunks():
                pass


# -- redirects ---------------------------------------------------------------------------------------

async def test_redirect_chain_is_followed(server: TestServer) -> None:
    download, received = await _fetch(_url(server, "/chain/5"), UriFilter(LOOPBACK), max_redirects=5)
    assert received == BODY
    assert download.url == _url(server, "/data")


async def test_too_many_redirects(server: TestServer) -> None:
    with pytest.raises(ImportSourceError, match="redirected more than 4 times"):
        await _fetch(_url(server, "/chain/5"), UriFilter(LOOPBACK), max_redirects=4)
    with pytest.raises(ImportSourceError, match="redirected more than 0 times"):
        await _fetch(_url(server, "/chain/1"), UriFilter(LOOPBACK), max_redirects=0)


async def test_redirect_to_a_disallowed_port_is_refused(server: TestServer) -> None:
    options = ImportFilteringOptions(allowed_ports=(server.port,), allow_private_networks=True)
    target = "http://127.0.0.1:21/data"
    with pytest.raises(InvalidRequest, match="redirect .* refused: port 21 is not allowed"):
        await _fetch(_url(server, f"/to?location={target}"), UriFilter(options))


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/data", "file:///etc/passwd", "gopher://127.0.0.1/x"])
async def test_redirect_to_a_disallowed_scheme_is_refused(server: TestServer, target: str) -> None:
    with pytest.raises(InvalidRequest, match="redirect .* refused: scheme .* is not allowed"):
        await _fetch(_url(server, f"/to?location={target}"), UriFilter(LOOPBACK))


async def test_redirect_to_a_scheme_the_filter_allows_but_we_cannot_fetch(server: TestServer) -> None:
    options = ImportFilteringOptions(allowed_schemes=("http", "ftp"), allowed_ports=(), allow_private_networks=True)
    with pytest.raises(InvalidRequest, match="'ftp' is not supported by web-download"):
        await _fetch(_url(server, "/to?location=ftp://127.0.0.1/data"), UriFilter(options))


async def test_redirect_to_a_disallowed_host_is_refused(server: TestServer) -> None:
    options = ImportFilteringOptions(allowed_hosts=("localhost",), allowed_ports=(), allow_private_networks=True)
    target = _url(server, "/data")  # same server, by an address the allow list does not name
    with pytest.raises(InvalidRequest, match="host '127.0.0.1' is not allowed"):
        await _fetch(_url(server, f"/to?location={target}", host="localhost"), UriFilter(options))


@pytest.mark.parametrize("target_host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_redirect_to_loopback_is_refused_once_private_networks_are_not_allowed(
        server: TestServer, target_host: str) -> None:
    """The private-network rule is applied at each hop, on the address of that hop.

    Every server here is on loopback, so the first hop needs private networks; the
    redirecting handler then turns them off, as a policy that forbids them would be
    for a redirect from a public server.
    """
    uri_filter = UriFilter(LOOPBACK)
    server.app[FLIP_PRIVATE].append(uri_filter)
    target = _url(server, "/data", host=target_host)
    with pytest.raises(DisallowedAddress) as refused:
        await _fetch(_url(server, f"/to?location={target}"), uri_filter)
    assert "allow_private_networks is false" in refused.value.message


async def test_redirect_without_location(server: TestServer) -> None:
    with pytest.raises(ImportSourceError, match="302 without a Location"):
        await _fetch(_url(server, "/no-location"), UriFilter(LOOPBACK))


# -- status ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [404, 403, 500, 503])
async def test_non_2xx_status_is_an_error_naming_it(server: TestServer, code: int) -> None:
    with pytest.raises(ImportSourceError, match=f"HTTP {code}") as failed:
        await _fetch(_url(server, f"/status/{code}"), UriFilter(LOOPBACK))
    assert status_of(failed.value) == 502


# -- the private-network rule on the first hop --------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"])
async def test_loopback_is_refused_without_private_networks(server: TestServer, host: str) -> None:
    options = ImportFilteringOptions(allowed_ports=(), allow_private_networks=False)
    uri = _url(server, "/data", host=host)
    with pytest.raises(DisallowedAddress) as refused:
        await _fetch(uri, UriFilter(options))
    if host == "localhost":
        # The name is fine to the filter: it is the address it resolves to that is refused.
        UriFilter(options).check(uri)
        assert "resolves only to addresses" in refused.value.message


async def test_uri_refused_before_any_request(server: TestServer) -> None:
    with pytest.raises(InvalidRequest, match=f"port {server.port} is not allowed"):
        await _fetch(_url(server, "/data"), UriFilter(ImportFilteringOptions(allow_private_networks=True)))


# -- sources that lie or stall (raw servers) ---------------------------------------------------------

@asynccontextmanager
async def raw_server(answer: Callable[[asyncio.StreamWriter, asyncio.Event], Awaitable[None]]) -> AsyncIterator[int]:
    """A TCP server that reads one request and lets ``answer`` write whatever it likes."""
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await answer(writer, done)
        finally:
            writer.close()

    tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield tcp.sockets[0].getsockname()[1]
    finally:
        done.set()
        tcp.close()
        await tcp.wait_closed()


async def test_source_that_sends_less_than_declared() -> None:
    async def short(writer: asyncio.StreamWriter, done: asyncio.Event) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
        await writer.drain()

    async with raw_server(short) as port:
        with pytest.raises(ImportSourceError, match="after 500 bytes of the 1000 bytes declared"):
            await _fetch(f"http://127.0.0.1:{port}/", UriFilter(LOOPBACK))


async def test_source_that_sends_more_than_declared() -> None:
    async def long(writer: asyncio.StreamWriter, done: asyncio.Event) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10 + b"and some more bytes")
        await writer.drain()

    async with raw_server(long) as port:
        with pytest.raises(ImportSourceError):
            await _fetch(f"http://127.0.0.1:{port}/", UriFilter(LOOPBACK))


async def test_chunked_source_that_breaks_off() -> None:
    async def broken(writer: asyncio.StreamWriter, done: asyncio.Event) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async with raw_server(broken) as port:
        with pytest.raises(ImportSourceError, match="broke off the body after 5 bytes"):
            await _fetch(f"http://127.0.0.1:{port}/", UriFilter(LOOPBACK))


async def test_source_that_stalls_before_answering() -> None:
    async def silent(writer: asyncio.StreamWriter, done: asyncio.Event) -> None:
        await done.wait()

    async with raw_server(silent) as port:
        with pytest.raises(ImportSourceError, match=f"sent no response for {STALL:g} s"):
            await _fetch(f"http://127.0.0.1:{port}/", UriFilter(LOOPBACK))


async def test_source_that_stalls_mid_body() -> None:
    async def stalls(writer: asyncio.StreamWriter, done: asyncio.Event) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        await done.wait()

    async with raw_server(stalls) as port:
        with pytest.raises(ImportSourceError, match=f"sent nothing for {STALL:g} s after 100 bytes"):
            await _fetch(f"http://127.0.0.1:{port}/", UriFilter(LOOPBACK))


async def test_every_failure_is_a_streamd_error(server: TestServer) -> None:
    """Nothing from aiohttp leaks: a refused connection is a source error too."""
    async with raw_server(lambda writer, done: done.wait()) as port:
        pass  # the port is closed again: nothing listens there now
    with pytest.raises(StreamdError) as failed:
        await _fetch(f"http://127.0.0.1:{port}/", UriFilter(LOOPBACK))
    assert isinstance(failed.value, ImportSourceError)
