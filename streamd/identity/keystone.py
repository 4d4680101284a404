"""Keystone token validation, as keystonemiddleware's auth_token does it, on the event loop.

One ``aiohttp.ClientSession`` talks to ``[keystone_authtoken] auth_url``. The service's own
token (password authentication of the service user, project-scoped: ``POST /v3/auth/tokens``)
is obtained at start, renewed by a background job before it expires, and fetched again at
once when Keystone refuses it. A user's token is validated with ``GET /v3/auth/tokens``
(``X-Auth-Token``: the service token, ``X-Subject-Token``: the user's); Keystone answers 404
for a token it does not know, that has expired or that was revoked. Answers are cached
(``cache.TokenCache``); concurrent validations of one token share one request to Keystone.

Keystone unreachable, timing out, answering 5xx, or refusing the service user's own
credentials is ``IdentityUnavailable`` (503): a request is never let through unchecked.

The service token (``X-Service-Token``) follows keystonemiddleware: it is validated like a
user token; if it holds one of ``service_token_roles`` the user's token may have expired
(validated with ``allow_expired=1``), so that a service finishing what a user started is not
cut off. With ``service_token_roles_required`` (the default) a service token without those
roles is refused (401); without it such a token is accepted but lets no expired token through.
Tokens are checked once, when a request starts: an upload that outlives its token goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Mapping

import aiohttp

from .. import metrics
from ..config import KeystoneAuthtokenOptions
from ..context import RequestContext
from ..errors import EndpointNotFound, IdentityUnavailable, InvalidToken
from .cache import DEFAULT_MAX_ENTRIES, TokenCache, token_key
from .tokens import ValidatedToken, parse_time, parse_token

log = logging.getLogger(__name__)

# keystonemiddleware's http_connect_timeout has no default (no timeout at all); streamd bounds it.
DEFAULT_TIMEOUT = 30.0
# The service token is renewed when less than this part of its lifetime, or 5 minutes, is left.
RENEW_FRACTION = 0.5
RENEW_BEFORE = 300.0
# How often the background job looks at the service token's expiry.
RENEW_CHECK_INTERVAL = 30.0


@dataclass(frozen=True)
class _ServiceToken:
    value: str
    issued_at: float
    expires_at: float

    def due(self, now: float) -> bool:
        lifetime = self.expires_at - self.issued_at
        return self.expires_at - now < min(RENEW_BEFORE, lifetime * RENEW_FRACTION)


def identity_v3_url(auth_url: str) -> str:
    """The v3 root of an identity endpoint given as ``http://host:5000`` or ``http://host:5000/v3``."""
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


class KeystoneValidator:
    """Validates tokens against Keystone for the API edge; owned by the services."""

    def __init__(self, options: KeystoneAuthtokenOptions, *, cache_size: int = DEFAULT_MAX_ENTRIES) -> None:
        if not options.auth_url:
            raise ValueError("[keystone_authtoken] auth_url is required")
        self.options = options
        self.identity_url = identity_v3_url(options.auth_url)
        self.www_authenticate_uri = options.www_authenticate_uri or options.auth_url
        self.cache = TokenCache(options.token_cache_time, cache_size)
        self._service_roles = frozenset(r.lower() for r in options.service_token_roles)
        self._session: aiohttp.ClientSession | None = None
        self._service_token: _ServiceToken | None = None
        self._service_token_lock = asyncio.Lock()
        self._inflight: dict[tuple[str, bool], asyncio.Task[ValidatedToken]] = {}
        # Requests sent to Keystone, for tests and operators: token validations, service logins.
        self.validations = 0
        self.service_logins = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        options = self.options
        ssl_option: ssl.SSLContext | bool | None = None
        if options.insecure:
            ssl_option = False
        elif options.cafile:
            ssl_option = ssl.create_default_context(cafile=options.cafile)
        timeout = float(options.http_connect_timeout or DEFAULT_TIMEOUT)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_option) if ssl_option is not None else None,
            headers={"User-Agent": "streamd-keystone-validator"})
        log.info("Keystone token validation at %s; validated tokens cached in-process (up to %d, %s)",
                 self.identity_url, self.cache.max_entries,
                 f"for {options.token_cache_time} s" if options.token_cache_time > 0 else "cache off")
        try:
            await self._login()
        except IdentityUnavailable as exc:
            # Not fatal: Keystone may come up after streamd; requests get 503 until it does.
            log.warning("cannot obtain the service token yet: %s", exc.message)

    async def stop(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, InvalidToken, IdentityUnavailable):
                await task
        self._inflight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def renew_service_token(self) -> None:
        """The background job: a new service token before the one held expires."""
        token = self._service_token
        if token is None or token.due(time.time()):
            await self._login()

    # -- what the edge calls -------------------------------------------------------------------

    async def authenticate(self, user_token: str | None, service_token: str | None) -> RequestContext:
        """The caller's context from the request's tokens; ``InvalidToken`` (401) or ``IdentityUnavailable`` (503)."""
        service: ValidatedToken | None = None
        allow_expired = False
        if service_token:
            try:
                service = await self.validate(service_token)
            except InvalidToken:
                log.info("invalid service token")
                raise
            roles_ok = bool(self._service_roles & service.roles)
            if self.options.service_token_roles_required and not roles_ok:
                log.info("service token of user %s holds none of the service_token_roles (%s)",
                         service.user_id, ", ".join(sorted(self._service_roles)))
                raise InvalidToken("the service token holds none of the service_token_roles")
            # Only a service token that passes the role check may let an expired user token through.
            allow_expired = roles_ok
        if not user_token:
            raise InvalidToken("the request has no X-Auth-Token")
        user = await self.validate(user_token, allow_expired=allow_expired)
        return RequestContext(
            project_id=user.project_id, user_id=user.user_id, roles=user.roles,
            system_scope=user.system_scope, domain_id=user.domain_id, user_domain_id=user.user_domain_id,
            project_domain_id=user.project_domain_id,
            service_user_id=service.user_id if service else None,
            service_roles=service.roles if service else frozenset())

    async def validate(self, token: str, *, allow_expired: bool = False) -> ValidatedToken:
        """What Keystone says of ``token`` (cached); ``InvalidToken`` when it is unknown, revoked or expired."""
        token = token.strip()
        key = token_key(token)
        validated = self.cache.get(key)
        metrics.keystone_cache(validated is not None)
        if validated is None:
            flight = (key, allow_expired)
            task = self._inflight.get(flight)
            if task is None:
                task = asyncio.ensure_future(self._fetch(token, key, allow_expired))
                self._inflight[flight] = task
                task.add_done_callback(lambda done: self._landed(flight, done))
            # One caller giving up (its client went away) does not cancel the others' validation.
            validated = await asyncio.shield(task)
        if not allow_expired and validated.expired():
            raise InvalidToken("the token has expired")
        return validated

    async def image_endpoint(self, token: str, region: str, interface: str) -> str:
        """The URL of the ``image`` service in ``region`` for ``interface`` (public, internal,
        admin), from the service catalogue of the caller's own ``token`` (``GET /v3/auth/catalog``),
        as Glance's glance-download reads it from the request's catalogue; region names are
        compared without case, as Glance does. ``EndpointNotFound`` when the catalogue has none."""
        status, body = await self._request("GET", "/auth/catalog", params={}, headers={"X-Auth-Token": token})
        if status in (401, 404):
            raise InvalidToken("Keystone refused the token when asked for its service catalogue")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("catalog"), list):
            raise IdentityUnavailable(f"Keystone answered {status} to a service catalogue request")
        wanted = interface.removesuffix("URL")
        for service in body["catalog"]:
            if not isinstance(service, dict) or service.get("type") != "image":
                continue
            for endpoint in service.get("endpoints") or ():
                if not isinstance(endpoint, dict):
                    continue
                names = {str(endpoint.get("region_id") or ""), str(endpoint.get("region") or "")}
                if region.lower() in {n.lower() for n in names if n} and endpoint.get("interface") == wanted \
                        and isinstance(endpoint.get("url"), str):
                    return endpoint["url"].rstrip("/")
        raise EndpointNotFound(f"{interface} glance endpoint not found for region {region}")

    # -- Keystone -----------------------------------------------------------------------------

    def _landed(self, flight: tuple[str, bool], task: asyncio.Task[ValidatedToken]) -> None:
        if self._inflight.get(flight) is task:
            del self._inflight[flight]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _fetch(self, token: str, key: str, allow_expired: bool) -> ValidatedToken:
        started = metrics.now()
        try:
            return await self._ask_keystone(token, key, allow_expired)
        finally:
            metrics.keystone_validated(metrics.now() - started)

    async def _ask_keystone(self, token: str, key: str, allow_expired: bool) -> ValidatedToken:
        params = {"nocatalog": "1"}
        if allow_expired:
            params["allow_expired"] = "1"
        for attempt in (1, 2):
            service_token = await self._current_service_token()
            self.validations += 1
            status, body = await self._request(
                "GET", "/auth/tokens", params=params,
                headers={"X-Auth-Token": service_token, "X-Subject-Token": token})
            if status == 200:
                validated = parse_token(body)
                self.cache.put(key, validated)
                return validated
            if status == 404:
                raise InvalidToken("Keystone does not know the token (unknown, expired or revoked)")
            if status == 401 and attempt == 1:
                # Our own token was refused (expired, revoked): log in again and ask once more.
                log.info("Keystone refused the service token; obtaining a new one")
                await self._login(refused=service_token)
                continue
            raise IdentityUnavailable(f"Keystone answered {status} to a token validation"
                                      + (" (the service user may lack the service or admin role)"
                                         if status == 403 else ""))
        raise AssertionError("unreachable")

    async def _current_service_token(self) -> str:
        token = self._service_token
        if token is None or token.expires_at - time.time() < 1.0:
            token = await self._login(refused=token.value if token else None)
        return token.value

    async def _login(self, refused: str | None = None) -> _ServiceToken:
        """A new service token (one login at a time; waiters take the one just obtained)."""
        async with self._service_token_lock:
            current = self._service_token
            if current is not None and current.value != refused and not current.due(time.time()):
                return current  # another caller renewed it while this one waited
            options = self.options
            user: dict[str, object] = {"password": options.password}
            if options.user_id:
                user["id"] = options.user_id
            else:
                user["name"] = options.username
                user["domain"] = ({"id": options.user_domain_id} if options.user_domain_id
                                  else {"name": options.user_domain_name})
            if options.project_id:
                project: dict[str, object] = {"id": options.project_id}
            else:
                project = {"name": options.project_name,
                           "domain": ({"id": options.project_domain_id} if options.project_domain_id
                                      else {"name": options.project_domain_name})}
            body = {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                             "scope": {"project": project}}}
            self.service_logins += 1
            status, document, headers = await self._request_with_headers(
                "POST", "/auth/tokens", params={"nocatalog": "1"}, json_body=body)
            if status != 201 or "X-Subject-Token" not in headers:
                raise IdentityUnavailable(
                    f"Keystone answered {status} to the service user's login "
                    f"({options.username or options.user_id}); check [keystone_authtoken]")
            try:
                expires_at = parse_time(document["token"]["expires_at"])
            except (KeyError, TypeError, ValueError) as exc:
                raise IdentityUnavailable(f"Keystone's answer to the service login is unreadable: {exc!r}") from exc
            self._service_token = _ServiceToken(headers["X-Subject-Token"], time.time(), expires_at)
            log.info("service token obtained for %s, valid until %s",
                     options.username or options.user_id, document["token"]["expires_at"])
            return self._service_token

    async def _request(self, method: str, path: str, *, params: dict[str, str],
                       headers: dict[str, str]) -> tuple[int, object]:
        status, body, _ = await self._request_with_headers(method, path, params=params, headers=headers)
        return status, body

    async def _request_with_headers(self, method: str, path: str, *, params: dict[str, str],
                                    headers: dict[str, str] | None = None,
                                    json_body: object = None) -> tuple[int, object, Mapping[str, str]]:
        if self._session is None:
            raise IdentityUnavailable("the Keystone validator is not started")
        try:
            async with self._session.request(method, self.identity_url + path, params=params, headers=headers,
                                             json=json_body) as response:
                raw = await response.read()
                status, answer_headers = response.status, response.headers.copy()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IdentityUnavailable(f"Keystone at {self.identity_url} is unreachable: {exc!r}") from exc
        if status >= 500:
            raise IdentityUnavailable(f"Keystone answered {status}")
        document: object = None
        if status in (200, 201):
            try:
                document = json.loads(raw)
            except ValueError:
                document = None  # parse_token / the login path name what is missing
        return status, document, answer_headers
