"""Fetching an image from a peer's cache: nodes sharing one catalogue serve each other.

The edge-site case: the backend is far or down, but a neighbour already
caches the image. A peer that is down is skipped; one that serves bytes whose
digests do not match is skipped from then on for that image.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import socket
import urllib.parse
from typing import AsyncIterator

from ..catalog import Catalog, ImageRecord
from ..errors import StoreFailure
from ..sizes import CHUNK

log = logging.getLogger(__name__)
PEER_TOKEN_HEADER = "X-Streamd-Peer-Token"
PEER_PATH = "/peer/v1/images/{image_id}"


class PeerSource:
    """A peer's answer for one image, on a plain blocking HTTP connection.

    Blocking on purpose: a fill thread reads it straight into its own buffer
    (``readinto``: no per-chunk objects, no event loop work), hashes and writes
    in the same thread, so a peer copy costs the loop nothing but the wake-ups.
    """

    def __init__(self, url: str, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self.url = url
        self.connection = connection
        self.response = response

    def readinto(self, view: memoryview) -> int:
        """Blocking; up to ``len(view)`` bytes, 0 at the end. Read errors are ``StoreFailure``s."""
        try:
            return self.response.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            raise StoreFailure(f"reading from peer {self.url} failed: {exc}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.run_in_executor(None, self.response.read, CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise StoreFailure(f"reading from peer {self.url} failed: {exc}") from exc
            if not data:
                return
            yield data

    def abort(self) -> None:
        """Unblock a thread waiting in ``readinto`` (from any thread)."""
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def close(self) -> None:
        self.abort()
        self.connection.close()


class PeerClient:
    def __init__(self, catalog: Catalog, node_id: str, token: str, *, url: str = "", lease_ttl: float = 10.0,
                 connect_timeout: float = 3.0, read_timeout: float = 60.0) -> None:
        self.catalog = catalog
        self.node_id = node_id
        self.token = token
        self.url = url  # where the other nodes reach this one (peer_url)
        self.lease_ttl = lease_ttl
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.bad: set[tuple[str, str]] = set()  # (peer url, image id) that served bad bytes

    def _connect(self, url: str, image_id: str, query: str = "") -> tuple[http.client.HTTPConnection,
                                                                          http.client.HTTPResponse]:
        parsed = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        connection = kind(parsed.hostname or "localhost", parsed.port, timeout=self.connect_timeout)
        try:
            connection.request("GET", parsed.path.rstrip("/") + PEER_PATH.format(image_id=image_id) + query,
                               headers={PEER_TOKEN_HEADER: self.token})
            response = connection.getresponse()
            if connection.sock is not None:
                connection.sock.settimeout(self.read_timeout)
        except BaseException:
            connection.close()
            raise
        return connection, response

    async def open(self, image: ImageRecord) -> PeerSource | None:
        for url in await self.catalog.cache_peers(image.id, exclude=self.node_id):
            if (url, image.id) in self.bad:
                continue
            try:
                connection, response = await asyncio.to_thread(self._connect, url, image.id)
            except (OSError, http.client.HTTPException) as exc:
                log.info("peer %s is unreachable for image %s: %s", url, image.id, exc)
                continue
            if response.status != 200 or response.length != image.size:
                log.info("peer %s cannot serve image %s (HTTP %d)", url, image.id, response.status)
                connection.close()
                continue
            log.info("image %s: fetching from peer %s", image.id, url)
            return PeerSource(url, connection, response)
        return None

    def mark_bad(self, url: str, image_id: str) -> None:
        self.bad.add((url, image_id))

    async def expected_digest(self, image: ImageRecord) -> str | None:
        """The BLAKE3 a peer's copy of ``image`` must have, when a node has recorded one."""
        if not image.os_hash_value:
            return None
        return await self.catalog.data_digest(image.id, image.os_hash_value)

    async def record_digest(self, image: ImageRecord, blake3: str) -> None:
        """After a copy was verified against the image's own digests: let peers check theirs cheaply."""
        if image.os_hash_value:
            await self.catalog.set_data_digest(image.id, image.os_hash_value, blake3)

    # -- cluster-wide single flight ------------------------------------------------------------

    async def take_lease(self, image: ImageRecord) -> bool:
        """Become the node that fills ``image`` from the backend for the whole catalogue."""
        return await self.catalog.take_fill_lease(image.id, self.node_id, self.url, self.lease_ttl)

    async def renew_lease(self, image: ImageRecord) -> bool:
        return await self.catalog.renew_fill_lease(image.id, self.node_id, self.lease_ttl)

    async def release_lease(self, image: ImageRecord) -> None:
        await self.catalog.release_fill_lease(image.id, self.node_id)

    async def filler(self, image: ImageRecord) -> str | None:
        """The URL of the other node filling ``image`` now (its lease alive), if any."""
        lease = await self.catalog.fill_lease(image.id)
        if lease is None or lease[0] == self.node_id:
            return None
        return lease[1]

    async def open_fill(self, url: str, image: ImageRecord, offset: int) -> PeerSource:
        """The filler's copy of ``image`` from ``offset`` on, streamed as its fill goes."""
        assert image.size is not None
        try:
            connection, response = await asyncio.to_thread(self._connect, url, image.id, f"?fill=1&offset={offset}")
        except (OSError, http.client.HTTPException) as exc:
            raise StoreFailure(f"the filling peer {url} is unreachable: {exc}") from exc
        if response.status != 200 or response.length != image.size - offset:
            connection.close()
            raise StoreFailure(f"the filling peer {url} cannot stream image {image.id} (HTTP {response.status})")
        return PeerSource(url, connection, response)
