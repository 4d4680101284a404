"""``PUT`` and ``GET /v2/images/{id}/file``: image data in and out, streamed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import AsyncIterator

from aiohttp import web

from .. import metrics
from ..catalog import ImageRecord
from ..errors import InvalidRequest, NotPermitted, StreamdError
from .errors import ProtocolError
from ..pipeline import ImageSource, UploadLimits, upload_image
from ..pipeline.download import FilePiece
from ..pipeline.socketcopy import copy_file_to_socket, receive_from_socket
from ..sizes import CHUNK
from .images import _get_visible, image_policy
from .inputs import require_content_type, size_header, text_header
from .keys import BODY_BYTES, SERVICES, context_of, notify, notifying
from ..notifications import image_payload, import_properties, send_payload

log = logging.getLogger(__name__)

# Below this, the copy thread's hop costs more than it saves.
THREAD_COPY_MIN = 1 << 20
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
_CONTENT_RANGE = re.compile(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)$")
# A byte position past any image: what a longer number in a Range header means (int() would
# parse thousands of digits slowly, or refuse them).
_BEYOND_ANY_IMAGE = 1 << 63


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body as the socket delivered it (pieces of up to a few hundred KiB), without joining them
    into larger buffers: the pipeline batches pieces itself, so no byte is copied on the loop here."""
    content = request.content
    while True:
        data, end_of_http_chunk = await content.readchunk()
        if data:
            yield data
        elif not end_of_http_chunk or content.at_eof():
            # (b"", True) is only a chunk boundary while data may follow: aiohttp's shared empty
            # reader answers it forever once asked twice.
            return


def _body_source(request: web.Request) -> AsyncIterator[bytes]:
    """Where the body comes from: a worker thread reading the socket for a plain body of known
    length (no TLS, not chunked, not compressed, large enough to pay for the hop), else aiohttp."""
    length = request.content_length
    transport = request.transport
    if (not request.app[SERVICES].config.default.upload_body_in_thread
            or length is None or length < THREAD_COPY_MIN or transport is None
            or transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("socket") is None
            or "Transfer-Encoding" in request.headers or "Content-Encoding" in request.headers):
        return _body_chunks(request)
    return _body_from_socket(request, length)


async def _body_from_socket(request: web.Request, length: int) -> AsyncIterator[bytes]:
    """The body read off the event loop (pipeline/socketcopy.py): first what aiohttp has already
    buffered, then the rest straight from the socket into batch-sized buffers while the transport's
    reading is paused. The parser never sees the rest of the body, so the connection is closed
    after the response (never reused) and its payload marked ended, whatever the outcome."""
    content = request.content
    protocol = request.protocol
    transport = request.transport
    assert transport is not None
    # What the parser already delivered. Taking it may resume a paused protocol, whose parser then
    # hands over the bytes it held back: take until nothing is left.
    # (Nothing has read the body before: what is taken here is all aiohttp received of it.)
    head: list[bytes] = []
    while content._buffer:  # aiohttp's own buffered pieces
        head.append(content.read_nowait())
    taken = sum(len(piece) for piece in head)
    if content.at_eof() or getattr(protocol, "_reading_paused", True) or taken >= length:
        # The whole body is already here (or aiohttp still holds some of it back): its own path.
        for piece in head:
            yield piece
        async for piece in _body_chunks(request):
            yield piece
        return
    transport.pause_reading()
    # After this response (whatever it is, an error too) the connection closes, and says so: its
    # next bytes were never parsed. (aiohttp's responses take keep-alive from the request message.)
    protocol.close()
    request._message = request._message._replace(should_close=True)
    # aiohttp's shutdown (and a lost connection) tells a handler through its request's payload,
    # which is no longer read: a watcher on it cancels this handler as a read would have failed.
    handler = asyncio.current_task()
    watcher = asyncio.ensure_future(content.readany())

    def _payload_failed(done: asyncio.Future[bytes]) -> None:
        # (aiohttp's shutdown sets a CancelledError on the payload: the watcher ends cancelled.)
        if handler is not None and (done.cancelled() or done.exception() is not None):
            handler.cancel()

    watcher.add_done_callback(_payload_failed)
    try:
        for piece in head:
            yield piece
        sock = transport.get_extra_info("socket")
        try:
            async with contextlib.aclosing(receive_from_socket(
                    sock.fileno(), length - taken, chunk=CHUNK,
                    idle_timeout=request.app[SERVICES].config.default.client_socket_timeout)) as received:
                async for data in received:
                    yield data
        except (OSError, EOFError) as exc:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError(f"upload body ended early: {exc}") from exc
    finally:
        watcher.remove_done_callback(_payload_failed)
        content.feed_eof()  # no lingering read of a body the parser will never see
        if not watcher.done():
            watcher.cancel()
        await asyncio.wait([watcher])
        if not watcher.cancelled():
            watcher.exception()  # retrieved: it only ever watched


def _declared_size(request: web.Request) -> int | None:
    size = size_header(request, "x-openstack-image-size")
    if size is not None:
        if request.content_length is not None and request.content_length != size:
            raise InvalidRequest("x-openstack-image-size does not match Content-Length")
        return size
    return request.content_length


async def upload(request: web.Request) -> web.Response:
    ctx = context_of(request)
    config = request.app[SERVICES].config
    image = await _get_visible(request, request.match_info["image_id"])
    image_policy(request, image).enforce("upload_image")
    require_content_type(request, "application/octet-stream", "image data")
    store = request.app[SERVICES].stores.writable(text_header(request, "X-Image-Meta-Store"))
    # Glance's ImageProxy.set_data: image.prepare, then image.upload (error: its message) and image.activate.
    notify(request, "image.prepare", {**image_payload(image), **import_properties(image), "backend": store.name})
    try:
        async with request.app[SERVICES].uploads.track():
            async with contextlib.aclosing(_body_source(request)) as body:
                await upload_image(
                    request.app[SERVICES].catalog, store, image.id, body, declared_size=_declared_size(request),
                    limits=UploadLimits.from_config(config, signatures=request.app[SERVICES].signatures),
                    host=config.host_id, quota=request.app[SERVICES].quotas.for_project(ctx.project_id))
    except StreamdError as exc:
        notify(request, "image.upload", f"Failed to upload image data for image {image.id}: {exc.message}", error=True)
        raise
    if notifying(request):
        uploaded = await request.app[SERVICES].catalog.get_image(image.id)
        notify(request, "image.upload", {**image_payload(uploaded), **import_properties(uploaded)})
        if uploaded.status == "active" and image.status != "active":
            notify(request, "image.activate", image_payload(uploaded))
    return web.Response(status=204)


def parse_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None for the whole image. Glance's rules, plus RFC suffix ranges."""
    header = request.headers.get("Range")
    if header is None:
        legacy = request.headers.get("Content-Range")
        if legacy is None:
            return None
        match = _CONTENT_RANGE.match(legacy.strip())
        if not match:
            raise _unsatisfiable("Invalid Content-Range header.", size)
        first, last = _position(match.group(1)), _position(match.group(2))
    else:
        if "," in header:
            raise InvalidRequest("Multiple ranges are not supported")
        match = _RANGE.match(header.strip())
        if not match or (not match.group(1) and not match.group(2)):
            raise _unsatisfiable("Invalid Range header.", size)
        if not match.group(1):
            suffix = _position(match.group(2))
            if suffix == 0 or size == 0:
                raise _unsatisfiable("Invalid Range header.", size)
            return max(0, size - suffix), size - 1
        first = _position(match.group(1))
        last = _position(match.group(2)) if match.group(2) else size - 1
    if first >= size:
        raise _unsatisfiable("Invalid start position in Range header. Start position MUST be in the inclusive "
                             f"range [0, {size - 1}].", size)
    if last < first:
        raise _unsatisfiable("Invalid Range header.", size)
    return first, min(last, size - 1)


def _position(digits: str) -> int:
    """A byte position of a Range header; any number past 2**63 means the same: beyond the image."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else _BEYOND_ANY_IMAGE


def _unsatisfiable(detail: str, size: int) -> ProtocolError:
    # Glance's wording (webob's explanation, its detail); Content-Range as RFC 9110 asks.
    return ProtocolError(416, "The Range requested is not available.", detail=detail,
                         headers={"Content-Range": f"bytes */{size}"})


def _etag(image: ImageRecord) -> str:
    return f'"{image.os_hash_value or image.checksum}"'


async def download(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    image = await _get_visible(request, request.match_info["image_id"])
    # Glance's order: the deactivated image (for non-admins, whatever the rules say), then download_image.
    if image.status == "deactivated" and not ctx.is_admin:
        raise NotPermitted("The requested image has been deactivated. Image data download is forbidden.")
    image_policy(request, image).enforce("download_image")
    delivery = request.app[SERVICES].delivery
    if image.status not in ("active", "deactivated") or not delivery.has_data(image):
        return web.Response(status=204)
    source = await delivery.open(image)
    sent = _Sent()
    try:
        response = await _send(request, image, source, sent)
    except ConnectionResetError:
        _notify_send(request, image, sent)
        raise
    finally:
        source.close()
    _notify_send(request, image, sent)
    return response


class _Sent:
    """Bytes of the body that went out, and how many were promised (image.send's payload)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.promised = 0


def _notify_send(request: web.Request, image: ImageRecord, sent: _Sent) -> None:
    request[BODY_BYTES] = sent.bytes
    ctx = context_of(request)
    notify(request, "image.send", send_payload(image, sent.bytes, ctx.project_id, ctx.user_id),
           error=sent.bytes != sent.promised)


async def _send(request: web.Request, image: ImageRecord, source: ImageSource, sent: _Sent) -> web.StreamResponse:
    size = source.size
    etag = _etag(image)
    byte_range = parse_range(request, size)
    if_range = request.headers.get("If-Range")
    if byte_range is not None and if_range is not None and if_range.strip() != etag:
        byte_range = None  # the client's copy is stale: send the whole image
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": etag}
    if image.checksum:
        headers["Content-MD5"] = image.checksum  # hex, as Glance sends it
    if byte_range is None:
        first, length, status = 0, size, 200
    else:
        first, last = byte_range
        length, status = last - first + 1, 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    sent.promised = length
    writer = await response.prepare(request)
    file_fd = source.fileno()
    # A fill being followed: sent by the copy thread too, range by range as the file grows.
    pieces = source.file_pieces(first, length) if file_fd is None else None
    if ((file_fd is not None or pieces is not None) and length >= THREAD_COPY_MIN and writer is not None
            and request.transport is not None
            and request.transport.get_extra_info("sslcontext") is None):  # raw bytes on the socket: never under TLS
        sock = request.transport.get_extra_info("socket")
        # The headers go out through the transport; once it holds nothing more, a thread copies the
        # body from the file to the socket (pipeline/socketcopy.py: the fastest way measured here).
        writer.send_headers()
        await writer.drain()
        if sock is not None and request.transport.get_write_buffer_size() == 0:
            idle_timeout = request.app[SERVICES].config.default.client_socket_timeout
            try:
                if pieces is None:
                    assert file_fd is not None
                    await copy_file_to_socket(sock.fileno(), file_fd, first, length, direct_io=source.direct_io,
                                              idle_timeout=idle_timeout)
                    sent.bytes = length
                else:
                    await _send_pieces(response, sock.fileno(), source, pieces, sent, idle_timeout)
            except (OSError, EOFError) as exc:
                if request.transport is not None:  # None once aiohttp saw the connection go
                    request.transport.abort()
                # The errors middleware logs it (one INFO line with the request id): the client is gone.
                raise ConnectionResetError(f"download of image {image.id} ended early: {exc}") from exc
            except StreamdError as exc:
                # As below: the status line is out, the body is cut short.
                log.error("GET %s failed after %s bytes were promised: %s", request.path, length, exc.message)
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            _sent(source, length)
            return response
    if pieces is not None:
        await pieces.aclose()  # not used: the body goes through the transport
    try:
        async for data in source.chunks(first, length):
            await response.write(data)
            sent.bytes += len(data)
    except StreamdError as exc:
        # The status line went out with the headers: the only way left to tell the client is to
        # cut the body short (it sees less than Content-Length), never to answer a second time.
        log.error("GET %s failed after %s bytes were promised: %s", request.path, length, exc.message)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    _sent(source, length)
    return response


async def _send_pieces(response: web.StreamResponse, sock_fd: int, source: ImageSource,
                       pieces: AsyncIterator[FilePiece], sent: _Sent, idle_timeout: float) -> None:
    """A growing file's ranges by the copy thread; bytes from elsewhere (the store, once the fill
    failed: nothing of the file follows them) through the transport. Raises StreamdError when the
    source fails midway."""
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if isinstance(piece, bytes):
                await response.write(piece)
                sent.bytes += len(piece)
                continue
            at, count = piece
            await copy_file_to_socket(sock_fd, source.piece_fd, at, count, idle_timeout=idle_timeout,
                                      direct_io=source.direct_io)
            sent.bytes += count


def _sent(source: ImageSource, length: int) -> None:
    """A whole download (or range) went out: counted once, by where it came from."""
    metrics.download_bytes(source.origin, length)
    if source.store is not None:
        metrics.store_bytes(source.store, "out", "download", length)


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_put(prefix + "/images/{image_id}/file", upload)
    app.router.add_get(prefix + "/images/{image_id}/file", download, allow_head=False)
