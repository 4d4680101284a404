"""web-download from ftp:// URIs, against a real FTP server (pyftpdlib) on loopback.

pyftpdlib serves a directory in a thread of the test process, anonymously and to a user with
a password. Raw asyncio servers play FTP servers that misbehave: one that stalls, one that
ends the data short of its SIZE, one that breaks off the transfer, and one whose PASV reply
names another host (the data connection must still go to the server's own address).
Through the API, ftp is fetched when allowed_schemes names it and refused otherwise
(Glance's default allowed_schemes is [http, https]).
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import hashlib
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

from conftest import ADMIN, MEMBER_A, make_config, start_api
from streamd.config import ImportFilteringOptions
from streamd.errors import DisallowedAddress, ImportSourceError, InvalidRequest
from streamd.imports import UriFilter, open_web_source

BODY = random.Random(11).randbytes(5 * 1024 * 1024 + 333)
STALL = 0.5
FTP_ALLOWED = ImportFilteringOptions(allowed_schemes=("http", "https", "ftp"), allowed_ports=(),
                                     allow_private_networks=True)


class FtpSite:
    """pyftpdlib serving ``root`` on 127.0.0.1: anonymous read, and user 'glance' / 's3cret:/@'."""

    PASSWORD = "s3cret:/@"

    def __init__(self, root: Path) -> None:
        authorizer = DummyAuthorizer()
        authorizer.add_anonymous(str(root))
        authorizer.add_user("glance", self.PASSWORD, str(root), perm="elr")
        handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "test ftp ready",
                                                   "auth_failed_timeout": 0.01})
        self.server = FTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.address[1])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        # The loop and its closing in one thread: close_all() from another thread closes the poller
        # under a running poll, which then fails with EBADF (seen on a busy machine).
        while not self.stopping.is_set():
            self.server.ioloop.loop(0.05, blocking=False)
        self.server.close_all()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the FTP server thread did not stop"

    def url(self, path: str, userinfo: str = "") -> str:
        return f"ftp://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[FtpSite]:
    root = tmp_path / "ftp"
    (root / "images" / "sub dir").mkdir(parents=True)
    (root / "images" / "sub dir" / "disk one.img").write_bytes(BODY)
    (root / "top.img").write_bytes(BODY[:1000])
    (root / "empty.img").write_bytes(b"")
    ftp = FtpSite(root)
    ftp.thread.start()
    # A greeting means the server loop runs: closing it before then races its start-up.
    with ftplib.FTP() as probe:
        probe.connect("127.0.0.1", ftp.port, timeout=10)
    try:
        yield ftp
    finally:
        ftp.stop()


async def _fetch(uri: str, uri_filter: UriFilter = UriFilter(FTP_ALLOWED)) -> tuple[Any, bytes]:
    async with open_web_source(uri, uri_filter, stall_timeout=STALL, max_redirects=0,
                               connect_timeout=5) as download:
        received = bytearray()
        async for chunk in download.chunks():
            received += chunk
    return download, bytes(received)


# -- against pyftpdlib -----------------------------------------------------------------------------

async def test_anonymous_download_in_a_subdirectory(site: FtpSite) -> None:
    download, received = await _fetch(site.url("/images/sub%20dir/disk%20one.img"))
    assert received == BODY
    assert download.size == len(BODY)  # from SIZE
    assert download.url == site.url("/images/sub%20dir/disk%20one.img")


async def test_download_with_user_and_password(site: FtpSite) -> None:
    download, received = await _fetch(site.url("/top.img", "glance:s3cret%3A%2F%40"))
    assert received == BODY[:1000]
    assert "s3cret" not in download.url  # the password is not repeated in messages and logs


async def test_empty_file(site: FtpSite) -> None:
    download, received = await _fetch(site.url("/empty.img"))
    assert received == b"" and download.size == 0


async def test_ftp_refused_unless_allowed_schemes_names_it(site: FtpSite) -> None:
    glance_default = ImportFilteringOptions(allowed_ports=(), allow_private_networks=True)
    assert glance_default.allowed_schemes == ("http", "https")
    with pytest.raises(InvalidRequest, match="scheme 'ftp' is not allowed"):
        await _fetch(site.url("/top.img"), UriFilter(glance_default))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_refused_without_private_networks(site: FtpSite, host: str) -> None:
    options = ImportFilteringOptions(allowed_schemes=("ftp",), allowed_ports=())
    with pytest.raises(DisallowedAddress):
        await _fetch(f"ftp://{host}:{site.port}/top.img", UriFilter(options))


async def test_port_filter_applies(site: FtpSite) -> None:
    options = ImportFilteringOptions(allowed_schemes=("ftp",), allowed_ports=(21,), allow_private_networks=True)
    with pytest.raises(InvalidRequest, match=f"port {site.port} is not allowed"):
        await _fetch(site.url("/top.img"), UriFilter(options))


@pytest.mark.parametrize("path, refused", [("/missing.img", "RETR missing.img"), ("/nodir/x.img", "CWD nodir")])
async def test_missing_file_or_directory(site: FtpSite, path: str, refused: str) -> None:
    with pytest.raises(ImportSourceError, match=f"{refused} was refused: FTP 550"):
        await _fetch(site.url(path))


async def test_wrong_password(site: FtpSite) -> None:
    with pytest.raises(ImportSourceError, match="login was refused: FTP 530"):
        await _fetch(site.url("/top.img", "glance:wrong"))


async def test_uri_naming_no_file_is_refused(site: FtpSite) -> None:
    with pytest.raises(InvalidRequest, match="names no file"):
        await _fetch(site.url("/images/"))


async def test_line_break_in_the_path_is_refused(site: FtpSite) -> None:
    with pytest.raises(InvalidRequest, match="line break"):
        await _fetch(site.url("/top.img%0D%0ADELE%20top.img"))


# -- against misbehaving servers -------------------------------------------------------------------

Script = Callable[[asyncio.StreamWriter, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def fake_ftp(*, size: int, on_retr: Script, epsv: bool = True, pasv_host: str = "127,0,0,1") -> AsyncIterator[int]:
    """An FTP server on 127.0.0.1 that logs anyone in and, on RETR, runs ``on_retr(control, data)``."""
    data_ready: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()
    opened: list[asyncio.StreamWriter] = []  # closed at the end, whatever the script left open

    async def on_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer)
        if not data_ready.done():
            data_ready.set_result(writer)

    data_server = await asyncio.start_server(on_data, "127.0.0.1", 0)
    data_port = data_server.sockets[0].getsockname()[1]

    async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer)
        writer.write(b"220-fake\r\n220 ready\r\n")
        try:
            while line := await reader.readline():
                verb = line.decode().split()[0].upper()
                if verb == "USER":
                    writer.write(b"331 password please\r\n")
                elif verb == "PASS":
                    writer.write(b"230 in\r\n")
                elif verb == "TYPE":
                    writer.write(b"200 binary\r\n")
                elif verb == "SIZE":
                    writer.write(b"213 %d\r\n" % size)
                elif verb == "EPSV" and epsv:
                    writer.write(b"229 Entering Extended Passive Mode (|||%d|)\r\n" % data_port)
                elif verb == "PASV":
                    writer.write(b"227 Entering Passive Mode (%s,%d,%d)\r\n"
                                 % (pasv_host.encode(), data_port // 256, data_port % 256))
                elif verb == "RETR":
                    writer.write(b"150 here it comes\r\n")
                    await on_retr(writer, await data_ready)
                else:
                    writer.write(b"502 not implemented\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    control_server = await asyncio.start_server(on_control, "127.0.0.1", 0)
    try:
        yield control_server.sockets[0].getsockname()[1]
    finally:
        control_server.close()
        data_server.close()
        await _close_all(opened)
        await control_server.wait_closed()
        await data_server.wait_closed()


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _send_all(control: asyncio.StreamWriter, data: asyncio.StreamWriter) -> None:
    data.write(BODY[:4096])
    await data.drain()
    data.close()
    control.write(b"226 done\r\n")


async def test_pasv_host_is_ignored_for_the_data_connection() -> None:
    # The PASV reply points at 10.1.2.3; the data must come from the server's own address all the same.
    async with fake_ftp(size=4096, on_retr=_send_all, epsv=False, pasv_host="10,1,2,3") as port:
        download, received = await _fetch(f"ftp://127.0.0.1:{port}/x.img")
    assert received == BODY[:4096] and download.size == 4096


async def test_stalled_data_fails() -> None:
    async def stall(control: asyncio.StreamWriter, data: asyncio.StreamWriter) -> None:
        data.write(BODY[:100])
        await data.drain()
        await asyncio.sleep(STALL * 6)

    async with fake_ftp(size=4096, on_retr=stall) as port:
        with pytest.raises(ImportSourceError, match="sent no data after 100 bytes for 0.5 s"):
            await _fetch(f"ftp://127.0.0.1:{port}/x.img")


async def test_data_short_of_its_size_fails() -> None:
    async with fake_ftp(size=9999, on_retr=_send_all) as port:
        with pytest.raises(ImportSourceError, match="ended after 4096 of the 9999 bytes"):
            await _fetch(f"ftp://127.0.0.1:{port}/x.img")


async def test_data_past_its_size_fails() -> None:
    async with fake_ftp(size=1000, on_retr=_send_all) as port:
        with pytest.raises(ImportSourceError, match="more than the 1000 bytes its SIZE declared"):
            await _fetch(f"ftp://127.0.0.1:{port}/x.img")


async def test_transfer_broken_off_by_the_server_fails() -> None:
    async def abort(control: asyncio.StreamWriter, data: asyncio.StreamWriter) -> None:
        data.write(BODY[:4096])
        await data.drain()
        data.close()
        control.write(b"426 connection closed; transfer aborted\r\n")

    async with fake_ftp(size=4096, on_retr=abort) as port:
        with pytest.raises(ImportSourceError, match="broke off the transfer after 4096 bytes: FTP 426"):
            await _fetch(f"ftp://127.0.0.1:{port}/x.img")


async def test_silent_server_fails() -> None:
    opened: list[asyncio.StreamWriter] = []
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer)
        await hold.wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        with pytest.raises(ImportSourceError, match="sent no reply for 0.5 s"):
            await _fetch(f"ftp://127.0.0.1:{server.sockets[0].getsockname()[1]}/x.img")
    finally:
        hold.set()
        server.close()
        await _close_all(opened)
        await server.wait_closed()


# -- through the API -------------------------------------------------------------------------------

async def _settled(api: Any, image_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll until the image's import task finished and its lock is gone: the image and its tasks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        image = (await api.call("GET", f"/v2/images/{image_id}", as_=ADMIN)).json
        tasks = (await api.call("GET", f"/v2/images/{image_id}/tasks", as_=ADMIN)).json["tasks"]
        if (tasks and all(t["status"] in ("success", "failure") for t in tasks)
                and image["status"] != "importing" and "os_glance_import_task" not in image):
            return image, tasks
        assert loop.time() < deadline, (image, tasks)
        await asyncio.sleep(0.05)


async def test_web_download_import_from_ftp(tmp_path: Path, site: FtpSite) -> None:
    filtering = {"allowed_schemes": "[http,https,ftp]", "allowed_ports": "[]", "allow_private_networks": "true"}
    server, api, session = await start_api(make_config(tmp_path, import_filtering_opts=filtering))
    try:
        image = await api.create()
        uri = site.url("/images/sub%20dir/disk%20one.img")
        reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                               json_body={"method": {"name": "web-download", "uri": uri}})
        assert reply.status == 202, reply.body
        shown, tasks = await _settled(api, image["id"])
        assert shown["status"] == "active", shown
        assert [t["status"] for t in tasks] == ["success"]
        assert shown["size"] == len(BODY)
        assert shown["checksum"] == hashlib.md5(BODY).hexdigest()
        download = await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)
        assert download.status == 200 and download.body == BODY
    finally:
        await session.close()
        await server.close()


async def test_web_download_from_ftp_refused_by_default(tmp_path: Path, site: FtpSite) -> None:
    # Ports and private networks open; the scheme alone keeps ftp out.
    filtering = {"allowed_ports": "[]", "allow_private_networks": "true"}
    server, api, session = await start_api(make_config(tmp_path, import_filtering_opts=filtering))
    try:
        image = await api.create()
        reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                               json_body={"method": {"name": "web-download", "uri": site.url("/top.img")}})
        assert reply.status == 400, reply.body
        assert b"scheme 'ftp' is not allowed" in reply.body
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=ADMIN)).json["status"] == "queued"
    finally:
        await session.close()
        await server.close()


async def test_web_download_from_ftp_over_the_size_cap_fails(tmp_path: Path, site: FtpSite) -> None:
    filtering = {"allowed_schemes": "[ftp]", "allowed_ports": "[]", "allow_private_networks": "true"}
    config = make_config(tmp_path, DEFAULT={"image_size_cap": str(1 << 20)}, import_filtering_opts=filtering)
    server, api, session = await start_api(config)
    try:
        image = await api.create()
        reply = await api.call("POST", f"/v2/images/{image['id']}/import", as_=MEMBER_A,
                               json_body={"method": {"name": "web-download",
                                                     "uri": site.url("/images/sub%20dir/disk%20one.img")}})
        assert reply.status == 202, reply.body
        shown, tasks = await _settled(api, image["id"])
        assert shown["status"] == "queued" and shown["size"] is None
        assert [t["status"] for t in tasks] == ["failure"]
        assert "exceeds the maximum of 1048576 bytes" in tasks[0]["message"], tasks[0]["message"]
    finally:
        await session.close()
        await server.close()
