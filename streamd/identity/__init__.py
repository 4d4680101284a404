"""Who the caller is, proven: Keystone token validation for the API edge.

``KeystoneValidator`` (``keystone.py``) turns the tokens of a request (``X-Auth-Token``
and, optionally, ``X-Service-Token``) into a :class:`~streamd.context.RequestContext`,
as keystonemiddleware's auth_token filter does for Glance, on the event loop and with
one HTTP client session. ``tokens.py`` reads Keystone's token documents, ``cache.py``
keeps validated tokens for ``token_cache_time``, ``exposure.py`` refuses a noauth
daemon on a network address. Nothing here knows the HTTP server: the edge
(``api/middleware.py``) reads the headers, calls :meth:`KeystoneValidator.authenticate`
and renders the errors (``InvalidToken`` -> 401, ``IdentityUnavailable`` -> 503).
"""

from __future__ import annotations

from .cache import TokenCache
from .exposure import check_noauth_exposure
from .keystone import KeystoneValidator
from .tokens import ValidatedToken

__all__ = ["KeystoneValidator", "TokenCache", "ValidatedToken", "check_noauth_exposure"]
