"""The one exception hierarchy of streamd.

Every error the core raises on purpose is a ``StreamdError``. The classes are
named for the situation, and their roots for who must act, in the spirit of
asyncpg's error roots:

``RequestError``
    the caller's request is wrong: the caller must change it;
``StateConflict``
    the request is fine but the resource is in the wrong state for it: the
    caller must wait, or act on the resource first;
``BackendFailure``
    we, or a store or tool we depend on, failed: the operator must act;
``OutOfSpace``
    a store or this node has no room left: the operator must free some;
``PeerFailure``
    another node or a remote source misbehaved;
``ConfigError``
    the configuration is invalid.

Nothing here knows HTTP. How each class is answered on the wire (status and
reason) is one table in :mod:`streamd.status`, which only the edges read.
"""

from __future__ import annotations


class StreamdError(Exception):
    """Root of every error streamd raises on purpose."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message or type(self).__name__)
        self.message = message or type(self).__name__


# -- the caller must change the request ------------------------------------------

class RequestError(StreamdError):
    """The request is wrong, whatever the state of the service."""


class InvalidRequest(RequestError):
    """A value, a combination of values or a document in the request is not acceptable."""


class SignatureVerificationFailed(InvalidRequest):
    """A signed image's data does not match its signature, or its signature properties or
    certificate cannot be used to verify it (Glance's SignatureVerificationError)."""


class NotAuthenticated(RequestError):
    """The caller did not prove who they are."""


class InvalidToken(NotAuthenticated):
    """The request's token is missing, or Keystone does not know it (unknown, revoked, expired)."""


class NotPermitted(RequestError):
    """The caller is known but not allowed to do this."""


class DoesNotExist(RequestError):
    """What the request names does not exist, or is not visible to the caller."""


class LimitExceeded(RequestError):
    """The request would take the caller past a limit."""


class QuotaExceeded(LimitExceeded):
    """A property, tag, member or storage quota would be exceeded."""


class StorageQuotaFull(QuotaExceeded):
    """The project's data would pass ``user_storage_quota``."""


class ProjectOverLimit(QuotaExceeded):
    """A Keystone unified limit (image_size_total, image_count_total, ...) would be passed.

    ``over`` names each limit passed: (resource name, limit, current usage, delta)."""

    def __init__(self, message: str, over: tuple[tuple[str, int, int, int], ...] = ()) -> None:
        super().__init__(message)
        self.over = over


class ImageSizeLimitExceeded(LimitExceeded):
    """The image grew past ``image_size_cap``."""


class UnsupportedContent(RequestError):
    """The request's content is of a kind this operation does not take."""


class InvalidImageData(UnsupportedContent):
    """The bytes are not what the image claims to be, or fail a safety check."""


class DisallowedAddress(InvalidRequest):
    """web-download would reach a loopback, private, link-local or other non-global address."""


# -- the resource is in the wrong state ----------------------------------------------

class StateConflict(StreamdError):
    """The resource's state does not allow this now (it may have changed under the caller)."""


class Duplicate(StateConflict):
    """The thing to create exists already."""


class InvalidStatusTransition(StateConflict):
    """A compare-and-swap on the image status lost, or the move is not allowed."""


class ImageVanished(StateConflict):
    """The image was deleted while the request was working on it."""


# -- we, or something we depend on, failed ------------------------------------------

class BackendFailure(StreamdError):
    """A fault of ours or of a backend: nothing the caller can change fixes it."""


class StoreFailure(BackendFailure):
    """A store could not read or write data."""


class StoreUnavailable(StoreFailure):
    """A store (or its cluster) does not answer now; trying again later may work."""


class IdentityUnavailable(BackendFailure):
    """The identity service (Keystone) did not answer, failed, or refused streamd's own
    credentials: no token can be checked now, so the request is refused, never let through."""


class LimitsUnavailable(BackendFailure):
    """Keystone, which holds the unified limits, cannot be reached or failed: nothing is let through
    unchecked; trying again later may work."""


class LimitsMisconfigured(BackendFailure):
    """Keystone refuses the service's credentials, or the configured endpoint, service or region
    of the limits is not found (or not unique): the operator must fix [oslo_limit]."""


class OutOfSpace(StreamdError):
    """A store, the staging area or the cache has no room left for the data."""


# -- another node or a remote source misbehaved ----------------------------------------

class PeerFailure(StreamdError):
    """Another party the request depends on failed."""


class PeerUnreachable(PeerFailure):
    """Another node this request was passed to could not be reached."""


class PeerFailed(PeerFailure):
    """Another node this request was passed to answered with a failure or broke off."""


class ImportSourceError(PeerFailure):
    """The source of an import failed: refused, broke off, stalled, or sent other than it declared."""


class EndpointNotFound(PeerFailure):
    """The service catalogue names no endpoint for what was asked (glance-download's region and interface)."""


# -- the configuration ----------------------------------------------------------------

class ConfigError(StreamdError):
    """The configuration is invalid. ``problems`` names every wrong option."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))
