"""The local admin socket: cache management for ``streamd-cache-manage``.

One JSON object per line each way over a Unix socket that only the daemon's
user can reach (mode 0600 in a 0700 directory). Requests are
``{"command": ..., "image_id": ...}``; answers are ``{"ok": true, "result": ...}``
or ``{"ok": false, "status": 404, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..context import RequestContext
from ..errors import InvalidRequest, DoesNotExist, BackendFailure, StreamdError
from ..status import status_of
from ..services import Services

log = logging.getLogger(__name__)
MAX_LINE = 1 << 16


class AdminSocketInUse(BackendFailure):
    """Another live daemon already answers on the admin socket."""


class AdminServer:
    def __init__(self, path: Path, services: Services) -> None:
        self.path = path
        self.catalog = services.catalog
        self.cache = services.cache
        self.delivery = services.delivery
        self.prefetcher = services.prefetcher
        self._server: asyncio.AbstractServer | None = None
        self.commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "list-cached": self._list_cached,
            "list-queued": self._list_queued,
            "queue-image": self._queue_image,
            "delete-cached-image": self._delete_cached,
            "delete-all-cached-images": self._delete_all_cached,
            "delete-queued-image": self._delete_queued,
            "delete-all-queued-images": self._delete_all_queued,
            "prune": self._prune,
            "clean": self._clean,
            "verify": self._verify,
            "stats": self._stats,
            "fill-progress": self._fill_progress,
        }

    async def start(self) -> None:
        await claim(self.path)
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("admin socket on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self._answer(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise InvalidRequest("a request is a JSON object")
            command = self.commands.get(str(request.get("command")))
            if command is None:
                raise InvalidRequest(f"unknown command {request.get('command')!r}; known: {', '.join(self.commands)}")
            if self.cache is None and request.get("command") != "stats":
                raise DoesNotExist("the image cache is not enabled on this node")
            return {"ok": True, "result": await command(request)}
        except json.JSONDecodeError:
            return {"ok": False, "status": 400, "error": "requests are JSON objects, one per line"}
        except StreamdError as exc:
            return {"ok": False, "status": status_of(exc), "error": exc.message}

    # -- commands --------------------------------------------------------------------------------

    def _image_id(self, request: dict[str, Any]) -> str:
        image_id = request.get("image_id")
        if not isinstance(image_id, str) or not image_id:
            raise InvalidRequest("this command needs an image_id")
        return image_id

    async def _list_cached(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.cache is not None
        return [{"image_id": e.image_id, "size": e.size, "hits": e.hits, "last_accessed": e.last_accessed,
                 "last_modified": e.last_modified, "checksum": e.checksum, "verified": e.verified_at is not None}
                for e in await self.cache.entries()]

    async def _list_queued(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.cache is not None
        return [{"image_id": i, "queued_at": t} for i, t in await self.cache.queued()]

    async def _queue_image(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None and self.prefetcher is not None
        image_id = self._image_id(request)
        image = await self.catalog.get_image(image_id, RequestContext.admin())
        if image.status != "active":
            raise InvalidRequest(f"Only images with status active can be queued (image {image_id} is {image.status})")
        added = await self.cache.queue(image_id)
        if request.get("now"):
            cached = await self.prefetcher.fetch_soon(image_id)
            return {"queued": added, "cached": cached}
        return {"queued": added}

    async def _delete_cached(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        await self.cache.delete(self._image_id(request))
        return {"deleted": 1}

    async def _delete_all_cached(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        return {"deleted": await self.cache.delete_all()}

    async def _delete_queued(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        image_id = self._image_id(request)
        if not await self.cache.dequeue(image_id):
            raise DoesNotExist(f"Image {image_id} is not queued")
        return {"deleted": 1}

    async def _delete_all_queued(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        return {"deleted": await self.cache.clear_queue()}

    async def _prune(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        result = await self.cache.prune()
        return {"files_pruned": result.removed, "bytes_pruned": result.freed, "size_after": result.size_after}

    async def _clean(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        return {"files_cleaned": await self.cache.clean()}

    async def _verify(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        image = await self.catalog.get_image(self._image_id(request), RequestContext.admin())
        if await self.cache.entry(image.id) is None:
            # Not "valid: false": that answer means a corrupt copy was found and evicted.
            raise DoesNotExist(f"Image {image.id} is not cached")
        valid = await self.delivery.verify_cached(image)
        return {"valid": valid, "evicted": not valid}

    async def _fill_progress(self, request: dict[str, Any]) -> dict[str, Any]:
        """How far the fill of an image is (``written`` None when none runs): for the progress bar
        of ``streamd-cache-manage queue-image --now``, asked on a second connection."""
        assert self.cache is not None
        fill = self.cache.fills.get(self._image_id(request))
        if fill is None:
            return {"written": None, "size": None}
        return {"written": fill.written, "size": fill.size}

    async def _stats(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"store_reads": dict(self.delivery.store_reads), "peer_reads": dict(self.delivery.peer_reads),
                "fills_in_flight": sorted(self.cache.fills) if self.cache else []}


async def claim(path: Path) -> None:
    """Make ``path`` free for this daemon's admin socket: its directory 0700, a stale socket removed.
    Raises AdminSocketInUse if another live daemon answers there (or something else is in the way).
    Call it before touching anything a live daemon could own (the data directory), then ``start``."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    if directory.stat().st_mode & stat.S_ISVTX:
        # A shared directory such as /tmp: making it 0700 would lock everyone else out of it.
        raise AdminSocketInUse(f"{directory} is a shared directory (sticky bit): put admin_socket_path "
                               "in a directory of its own")
    os.chmod(directory, 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AdminSocketInUse(f"{path} exists and is not a socket; refusing to replace it")
        if await _is_alive(path):
            raise AdminSocketInUse(f"another streamd daemon is serving the admin socket {path}")
        log.info("removing stale admin socket %s", path)
        path.unlink()


async def _is_alive(path: Path) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def connect(path: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock
