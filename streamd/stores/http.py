"""The http store: images whose data stays on a web server, read-only (glance_store's ``http``).

A location ``http(s)://host/path`` names the data; its size is what a ``HEAD`` answers
(``Content-Length``), following at most five 301/302 redirects as glance_store does. Reads
stream one ``GET`` from the first offset asked and go on while the offsets follow each other
(the data path reads in order); a read elsewhere opens a new ``GET`` with a ``Range``. The
store never writes and never deletes: the data belongs to whoever runs the web server, so
removing a location or deleting the image leaves it where it is (glance_store refuses the
delete and Glance ignores that).

Which URLs may be added is the caller's to decide (the API runs web-download's filtering
rules on them); this module knows nothing of the catalogue or of HTTP servers.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from ..config import HttpStoreOptions
from ..errors import DoesNotExist, InvalidRequest, StoreFailure, StoreUnavailable
from .base import Reader, Store, Writer

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Seconds a web server may take to answer or to send the next bytes.
TIMEOUT = 60.0


class _Redirects(urllib.request.HTTPRedirectHandler):
    """glance_store's rule: at most ``MAX_REDIRECTS`` redirects, and only 301 and 302."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if code not in (301, 302):
            raise StoreFailure(f"The HTTP URL {req.full_url} attempted to redirect with an invalid {code} "
                               "status code.")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            for name, value in req.header_items():
                if name.lower() == "range":
                    new.add_header(name, value)
        return new


class HttpStore(Store):
    type = "http"
    read_only = True

    def __init__(self, name: str, options: HttpStoreOptions) -> None:
        self.name = name
        if options.https_ca_certificates_file:
            context = ssl.create_default_context(cafile=options.https_ca_certificates_file)
        elif options.https_insecure:
            context = ssl._create_unverified_context()  # glance_store's default: https_insecure = true
        else:
            context = ssl.create_default_context()
        proxies = dict(options.http_proxy_information)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=context), _Redirects())

    def owns(self, url: str) -> bool:
        return url.startswith(("http://", "https://"))

    def _open(self, url: str, method: str, offset: int = 0) -> http.client.HTTPResponse:
        """The answer to ``method url`` (after redirects), blocking; errors as glance_store names them."""
        request = urllib.request.Request(url, method=method)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = self._opener.open(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                raise DoesNotExist("HTTP datastore could not find image at URI.") from None
            if exc.code in (301, 302):
                raise StoreFailure(f"The HTTP URL exceeded {MAX_REDIRECTS} maximum redirects.") from None
            raise StoreFailure(f"HTTP URL {url} returned a {exc.code} status code.") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnavailable(f"Remote server where the image is present is unavailable: {reason}") from None
        if offset and response.status != 206:
            response.close()
            raise StoreFailure(f"HTTP URL {url} does not serve byte ranges (asked from byte {offset})")
        return response  # type: ignore[no-any-return]

    def size_of(self, url: str) -> int:
        """``Content-Length`` of a ``HEAD`` (0 when the server names none), blocking."""
        with self._open(url, "HEAD") as response:
            try:
                return int(response.headers.get("Content-Length") or 0)
            except ValueError:
                return 0

    async def reader(self, url: str) -> Reader:
        if not self.owns(url):
            raise StoreFailure(f"{url} is not an http location")
        size = await asyncio.to_thread(self.size_of, url)
        return HttpReader(self, url, size)

    async def writer(self, image_id: str, expected_size: int | None) -> Writer:
        raise InvalidRequest(f"Store {self.name} is read-only: it serves images from web servers, "
                             "it takes no image data")

    async def delete(self, url: str) -> None:
        log.debug("store %s: %s stays on its web server (the http store never deletes)", self.name, url)

    def can_adopt(self, path: Path) -> bool:
        return False


class HttpReader(Reader):
    """One location's data, read by consecutive ``read`` calls from one worker thread at a time."""

    def __init__(self, store: HttpStore, url: str, size: int) -> None:
        self.store = store
        self.url = url
        self.size = size
        self._response: http.client.HTTPResponse | None = None
        self._position = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            if self._response is None or offset != self._position:
                self._drop()
                self._response = self.store._open(self.url, "GET", offset)
                self._position = offset
            try:
                data = self._response.read(length)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise StoreUnavailable(f"Remote server where the image is present is unavailable: {exc}") from None
            self._position += len(data)
            return data

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        with self._lock:
            self._drop()
