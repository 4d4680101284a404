"""How each error is answered on the wire: one class -> status table for both edges.

The HTTP API (``api/``) and the admin socket (``admin/``) each turn a
:class:`~streamd.errors.StreamdError` into an answer; both read the status
from here, so the core never names one. The reasons are Glance's (and HTTP's)
phrases.
"""

from __future__ import annotations

from http import HTTPStatus

from . import errors as e

# Looked up along the class's MRO: the nearest listed ancestor decides.
HTTP_STATUS: dict[type[e.StreamdError], int] = {
    e.StreamdError: 500,
    e.RequestError: 400,
    e.InvalidRequest: 400,
    # Glance: cursive's SignatureVerificationError -> HTTPBadRequest (upload) / a failed task (import).
    e.SignatureVerificationFailed: 400,
    e.NotAuthenticated: 401,
    e.NotPermitted: 403,
    e.DoesNotExist: 404,
    e.LimitExceeded: 413,
    e.UnsupportedContent: 415,
    e.StateConflict: 409,
    e.ImageVanished: 410,
    e.BackendFailure: 500,
    e.StoreUnavailable: 503,
    e.IdentityUnavailable: 503,
    e.LimitsUnavailable: 503,
    # Glance answers a full store with 413 (glance_store's StorageFull -> HTTPRequestEntityTooLarge).
    e.OutOfSpace: 413,
    e.PeerFailure: 502,
    e.PeerUnreachable: 504,
    e.ConfigError: 500,
}


def status_of(exc: e.StreamdError) -> int:
    explicit = getattr(exc, "status", None)  # the HTTP edge's own protocol errors carry theirs
    if isinstance(explicit, int):
        return explicit
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


# Where webob's reason phrase (what Glance sends) differs from the standard library's.
_WEBOB_REASONS = {414: "Request-URI Too Long", 416: "Request Range Not Satisfiable"}


def reason_of(status: int) -> str:
    if status in _WEBOB_REASONS:
        return _WEBOB_REASONS[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
