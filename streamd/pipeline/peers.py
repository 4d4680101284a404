"""Fetching an image from a peer's cache: nodes sharing one catalogue serve each other.

The edge-site case: the backend is far or down, but a neighbour already
caches the image. A peer that is down is skipped; one that serves bytes whose
digests do not match is skipped from then on for that image.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

import aiohttp

from ..catalog import Catalog, ImageRecord

log = logging.getLogger(__name__)
PEER_TOKEN_HEADER = "X-Streamd-Peer-Token"
PEER_PATH = "/peer/v1/images/{image_id}"


class PeerSource:
    """A peer's answer for one image: its chunks, and which peer it came from."""

    def __init__(self, url: str, response: aiohttp.ClientResponse, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.response = response
        self.session = session

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.content.iter_chunked(4 << 20):
            yield chunk

    async def close(self) -> None:
        self.response.release()
        await self.session.close()


class PeerClient:
    def __init__(self, catalog: Catalog, node_id: str, token: str, *, connect_timeout: float = 3.0) -> None:
        self.catalog = catalog
        self.node_id = node_id
        self.token = token
        self.connect_timeout = connect_timeout
        self.bad: set[tuple[str, str]] = set()  # (peer url, image id) that served bad bytes

    async def open(self, image: ImageRecord) -> PeerSource | None:
        for url in await self.catalog.cache_peers(image.id, exclude=self.node_id):
            if (url, image.id) in self.bad:
                continue
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                            sock_read=60)
            session = aiohttp.ClientSession(timeout=timeout)
            try:
                response = await session.get(url.rstrip("/") + PEER_PATH.format(image_id=image.id),
                                             headers={PEER_TOKEN_HEADER: self.token})
            except (aiohttp.ClientError, TimeoutError) as exc:
                await session.close()
                log.info("peer %s is unreachable for image %s: %s", url, image.id, exc)
                continue
            if response.status != 200 or response.content_length != image.size:
                log.info("peer %s cannot serve image %s (HTTP %d)", url, image.id, response.status)
                response.release()
                await session.close()
                continue
            log.info("image %s: fetching from peer %s", image.id, url)
            return PeerSource(url, response, session)
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
