"""The ftp:// source of web-download: a passive-mode FTP client on asyncio streams, RETR only.

Glance fetches web-download URIs with urllib, which speaks FTP; streamd does too when an
operator puts ``ftp`` in ``allowed_schemes`` (Glance's default, ``[http, https]``, keeps
it refused). Just enough of RFC 959 for one download: log in (the URI's user and password,
or anonymous), binary type, ``SIZE``, ``CWD`` into each directory of the path (RFC 1738),
a passive data connection and ``RETR``.

The same rules as for HTTP hold:

* the URI has passed ``UriFilter.check`` (scheme, host, port) before it gets here;
* every address the host name resolves to is checked with ``UriFilter.check_address``
  and only the allowed ones are connected to (an IP literal is checked as it is);
* the data connection goes to the address the control connection reached, whatever
  address a ``PASV`` reply names (``EPSV`` names none), so a server cannot point the
  download at another host; its port is the server's choice and is not filtered;
* every wait for a reply or for data is bounded by the stall timeout, the body is
  streamed in bounded reads, held to the ``SIZE`` the server declared, and must end
  with the server's transfer-complete reply (226/250), or ``ImportSourceError``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import TypeVar
from urllib.parse import unquote

from yarl import URL

from ..errors import DisallowedAddress, ImportSourceError, InvalidRequest
from .filtering import UriFilter, ip_literal

__all__ = ["FtpDownload", "open_ftp_source"]

READ_BUFFER_BYTES = 1 << 20
# A reply line longer than this, or a reply of more lines, is no FTP server talking.
MAX_REPLY_LINE = 8192
MAX_REPLY_LINES = 200
_EPSV_PORT = re.compile(r"\((.)\1\1(\d{1,5})\1\)")
_PASV_ADDRESS = re.compile(r"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")

T = TypeVar("T")


class _Control:
    """The control connection: commands out, replies (code, text) in, each wait bounded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str,
                 stall_timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.url = url
        self.stall_timeout = stall_timeout
        self.peer_ip: str = writer.get_extra_info("peername")[0]

    async def within(self, waiting: Awaitable[T], what: str) -> T:
        try:
            return await asyncio.wait_for(waiting, self.stall_timeout)
        except asyncio.TimeoutError as exc:
            raise ImportSourceError(f"{self.url} sent {what} for {self.stall_timeout:g} s") from exc
        except (ValueError, asyncio.LimitOverrunError) as exc:  # a line past the reader's limit
            raise ImportSourceError(f"{self.url} sent a reply line that is too long") from exc
        except OSError as exc:
            raise ImportSourceError(f"the FTP connection to {self.url} failed: {exc}") from exc

    async def _line(self) -> str:
        raw = await self.within(self.reader.readline(), "no reply")
        if not raw.endswith(b"\n"):
            raise ImportSourceError(f"{self.url} closed the FTP control connection")
        if len(raw) > MAX_REPLY_LINE:
            raise ImportSourceError(f"{self.url} sent a reply line that is too long")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def reply(self) -> tuple[int, str]:
        """The next reply; a multi-line one ("123-" ... "123 ") as its last line's text."""
        line = await self._line()
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
            raise ImportSourceError(f"{self.url} sent a malformed FTP reply {line[:80]!r}")
        code = line[:3]
        lines = 1
        while line[3:4] == "-":
            line = await self._line()
            lines += 1
            if lines > MAX_REPLY_LINES:
                raise ImportSourceError(f"{self.url} sent an FTP reply of more than {MAX_REPLY_LINES} lines")
            if line[:3] == code and line[3:4] in ("", " "):
                break
            line = code + "-"  # an inner line of the reply: keep reading
        return int(code), line[4:]

    async def command(self, verb: str, argument: str = "") -> tuple[int, str]:
        """Send one command and return the server's first reply to it (RETR's is the 1xx "opening")."""
        if any(c in argument for c in "\r\n\0"):
            raise InvalidRequest("the FTP URI contains a line break or NUL")
        self.writer.write(f"{verb} {argument}".rstrip().encode("utf-8") + b"\r\n")
        await self.within(self.writer.drain(), "no room for a command")
        return await self.reply()

    def fail(self, step: str, code: int, text: str) -> ImportSourceError:
        return ImportSourceError(f"{self.url}: {step} was refused: FTP {code} {text}".rstrip())

    def close(self) -> None:
        self.writer.close()


class FtpDownload:
    """An FTP transfer in progress, ready to stream its data once (the interface of ``WebDownload``)."""

    def __init__(self, control: _Control, data: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 url: URL, size: int | None) -> None:
        self._control = control
        self._data_reader, self._data_writer = data
        self._started = False
        self.url = str(url.with_password(None) if url.password else url)
        self.size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file, chunk by chunk; raises ``ImportSourceError`` unless the server completes the transfer."""
        if self._started:
            raise RuntimeError("the body of a web-download can be read only once")
        self._started = True
        control = self._control
        received = 0
        while True:
            chunk = await control.within(self._data_reader.read(READ_BUFFER_BYTES),
                                         f"no data after {received} bytes")
            if not chunk:
                break
            received += len(chunk)
            if self.size is not None and received > self.size:
                raise ImportSourceError(f"{self.url} sent more than the {self.size} bytes its SIZE declared")
            yield chunk
        self._data_writer.close()
        code, text = await control.reply()
        if code not in (226, 250):
            raise ImportSourceError(f"{self.url} broke off the transfer after {received} bytes: FTP {code} {text}")
        if self.size is not None and received != self.size:
            raise ImportSourceError(f"{self.url} ended after {received} of the {self.size} bytes its SIZE declared")

    async def close(self) -> None:
        """Drop both connections (the data may be unread); safe to call twice."""
        self._data_writer.close()
        self._control.close()

    async def __aenter__(self) -> FtpDownload:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def _allowed_addresses(host: str, port: int, uri_filter: UriFilter) -> list[str]:
    """The addresses of ``host`` web-download may connect to; ``DisallowedAddress`` if there is none."""
    if ip_literal(host) is not None:
        uri_filter.check_address(host)
        return [host]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImportSourceError(f"cannot resolve {host!r}: {exc}") from exc
    allowed: list[str] = []
    refused: list[str] = []
    for info in infos:
        address = str(info[4][0])
        try:
            uri_filter.check_address(address)
        except DisallowedAddress:
            refused.append(address)
        else:
            allowed.append(address)
    if not allowed:
        raise DisallowedAddress(f"host {host!r} resolves only to addresses web-download may not reach "
                                f"({', '.join(refused)}); allow_private_networks is false")
    return list(dict.fromkeys(allowed))


async def _connect(address: str, port: int, timeout: float,
                   what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(asyncio.open_connection(address, port, limit=MAX_REPLY_LINE * 2), timeout)
    except asyncio.TimeoutError as exc:
        raise ImportSourceError(f"could not connect to {what} in time") from exc
    except OSError as exc:
        raise ImportSourceError(f"connecting to {what} failed: {exc}") from exc


def _path_segments(url: URL) -> tuple[list[str], str]:
    """RFC 1738: the directories to CWD into, one by one, and the file name to RETR."""
    segments = [unquote(s) for s in url.raw_path.split("/")[1:]]
    if not segments or not segments[-1]:
        raise InvalidRequest(f"the FTP URI {url.with_password(None)} names no file")
    directories = [s for s in segments[:-1] if s]
    return directories, segments[-1]


async def _passive_port(control: _Control) -> int:
    """The data port the server listens on: EPSV, or PASV when the server has no EPSV."""
    code, text = await control.command("EPSV")
    if code == 229:
        found = _EPSV_PORT.search(text)
        port = int(found.group(2)) if found else 0
    else:
        code, text = await control.command("PASV")
        if code != 227:
            raise control.fail("passive mode", code, text)
        found = _PASV_ADDRESS.search(text)
        # Only the port counts: the data connection goes to control.peer_ip (see the module docstring).
        port = int(found.group(5)) * 256 + int(found.group(6)) if found else 0
    if not 0 < port < 65536:
        raise ImportSourceError(f"{control.url} named no usable passive port: {text[:80]!r}")
    return port


async def open_ftp_source(url: URL, uri_filter: UriFilter, *, stall_timeout: float,
                          connect_timeout: float) -> FtpDownload:
    """Log in to the server of ``url`` (already filtered) and start the transfer of its file."""
    directories, name = _path_segments(url)
    user = url.user or "anonymous"
    password = url.password if url.user else "anonymous@"
    shown = str(url.with_password(None) if url.password else url)
    host = url.host or ""
    port = url.port or 21
    control: _Control | None = None
    failure: ImportSourceError | None = None
    for address in await _allowed_addresses(host, port, uri_filter):
        try:
            reader, writer = await _connect(address, port, connect_timeout, shown)
        except ImportSourceError as exc:
            failure = exc
            continue
        control = _Control(reader, writer, shown, stall_timeout)
        break
    if control is None:
        assert failure is not None
        raise failure
    data: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        code, text = await control.reply()
        while code == 120:  # "service ready in n minutes": the greeting follows
            code, text = await control.reply()
        if code != 220:
            raise control.fail("the connection", code, text)
        code, text = await control.command("USER", user)
        if code == 331:
            code, text = await control.command("PASS", password or "")
        if code not in (230, 202):
            raise control.fail("the login", code, text)
        code, text = await control.command("TYPE", "I")
        if code != 200:
            raise control.fail("binary mode", code, text)
        for directory in directories:
            code, text = await control.command("CWD", directory)
            if code != 250:
                raise control.fail(f"CWD {directory}", code, text)
        code, text = await control.command("SIZE", name)
        size = int(text.split()[0]) if code == 213 and text.split() and text.split()[0].isdigit() else None
        data_port = await _passive_port(control)
        data = await _connect(control.peer_ip, data_port, connect_timeout, f"the data port of {shown}")
        code, text = await control.command("RETR", name)
        if code not in (125, 150):
            raise control.fail(f"RETR {name}", code, text)
        return FtpDownload(control, data, url, size)
    except BaseException:
        if data is not None:
            data[1].close()
        control.close()
        raise
