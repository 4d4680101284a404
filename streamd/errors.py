"""The one exception hierarchy of streamd.

Every error the core raises is a ``StreamdError``. Each class carries the HTTP
status the API edge answers with, so ``api/`` maps errors to responses in one
place and the core never imports anything HTTP. The split follows who must act:
``ClientError`` (the caller sent something wrong), ``ConflictError`` (the state
of the world changed under the caller), ``ServiceError`` (we or a backend
failed).
"""

from __future__ import annotations


class StreamdError(Exception):
    """Root of every error streamd raises on purpose."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, message: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.title)
        self.message = message or self.title
        self.headers = headers or {}


# -- the caller must act ------------------------------------------------------

class ClientError(StreamdError):
    status = 400
    title = "Bad Request"


class BadRequest(ClientError):
    pass


class Unauthorized(ClientError):
    status = 401
    title = "Unauthorized"


class Forbidden(ClientError):
    status = 403
    title = "Forbidden"


class NotFound(ClientError):
    status = 404
    title = "Not Found"


class MethodNotAllowed(ClientError):
    status = 405
    title = "Method Not Allowed"


class Gone(ClientError):
    status = 410
    title = "Gone"


class RequestEntityTooLarge(ClientError):
    status = 413
    title = "Request Entity Too Large"


class QuotaExceeded(RequestEntityTooLarge):
    """A property, tag, member or storage quota would be exceeded."""


class ImageSizeLimitExceeded(RequestEntityTooLarge):
    """The image grew past ``image_size_cap``."""


class UnsupportedMediaType(ClientError):
    status = 415
    title = "Unsupported Media Type"


class InvalidImageData(UnsupportedMediaType):
    """The bytes are not what the image claims to be, or fail a safety check."""


class RangeNotSatisfiable(ClientError):
    status = 416
    title = "Requested Range Not Satisfiable"


# -- the state changed under the caller ------------------------------------------

class ConflictError(StreamdError):
    status = 409
    title = "Conflict"


class Duplicate(ConflictError):
    pass


class InvalidStatusTransition(ConflictError):
    """A compare-and-swap on the image status lost, or the move is not allowed."""


# -- we, or something we depend on, failed ------------------------------------------

class ServiceError(StreamdError):
    status = 500
    title = "Internal Server Error"


class ServiceUnavailable(ServiceError):
    status = 503
    title = "Service Unavailable"


class StoreError(ServiceError):
    """A store could not read or write data."""


class BadGateway(ServiceError):
    """Another node this request was passed to failed (Glance's stage-host proxy: 502)."""

    status = 502
    title = "Bad Gateway"


class GatewayTimeout(ServiceError):
    """Another node this request was passed to could not be reached (504)."""

    status = 504
    title = "Gateway Timeout"


class StorageFull(RequestEntityTooLarge):
    """The store has no room left for the image."""


class ConfigError(StreamdError):
    """The configuration is invalid. ``problems`` names every wrong option."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


# -- web-download (streamd.imports) ----------------------------------------------------

class DisallowedAddress(BadRequest):
    """web-download would reach a loopback, private, link-local or other non-global address."""


class ImportSourceError(ServiceError):
    """The source of an import failed: refused, broke off, stalled, or sent other than it declared."""

    status = 502
    title = "Bad Gateway"
