"""Keystone's unified limits, read asynchronously: what oslo.limit's ``Enforcer`` asks Keystone, on
the event loop.

``KeystoneLimits.limits(project_id, names)`` answers each name's limit for the project: the
project's own limit (``GET /v3/limits``) where Keystone has one, else the registered default
(``GET /v3/registered_limits``), else 0, as oslo.limit counts a limit nobody registered (so
everything that needs it is refused). Both lists are filtered by the service and region of the
configured endpoint (``endpoint_id``, or found by service type/name, region and interface), and
read with the service's own token (password authentication, scoped as ``[oslo_limit]`` says),
which is renewed before it expires and once more when Keystone answers 401.

A project's limits are kept ``limits_cache_time`` seconds (5 by default): a burst of requests of
one project asks Keystone once, and a limit changed in Keystone applies within seconds. Requests
for the same project while a read is under way wait for that read.

Failures never let a request through: Keystone unreachable, timing out or answering 5xx is
``LimitsUnavailable`` (the API's 503); credentials refused, or an endpoint, service or region
not found or not unique, is ``LimitsMisconfigured`` (500, as Glance answers oslo.limit's
``SessionInitError``). Nothing here knows HTTP servers, the catalogue or what the limits are for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Collection, Mapping

import aiohttp

from ..config import OsloLimitOptions
from ..errors import LimitsMisconfigured, LimitsUnavailable

log = logging.getLogger(__name__)

# Renew the service token this long before Keystone says it expires.
TOKEN_RENEW_MARGIN = 60.0
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # time.monotonic()


@dataclass(frozen=True)
class _Endpoint:
    service_id: str
    region_id: str | None


@dataclass(frozen=True)
class _CachedLimits:
    limits: Mapping[str, int]   # every limit Keystone has for the project: project's over registered
    fetched_at: float


def identity_base(auth_url: str) -> str:
    """The v3 API's root from ``auth_url``, which may or may not name /v3 (keystoneauth accepts both)."""
    base = auth_url.rstrip("/")
    return base if base.endswith("/v3") else base + "/v3"


class KeystoneLimits:
    def __init__(self, options: OsloLimitOptions) -> None:
        assert options.auth_url is not None
        self.options = options
        self.base = identity_base(options.auth_url)
        self.cache_time = options.limits_cache_time
        self._session: aiohttp.ClientSession | None = None
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._endpoint: _Endpoint | None = None
        self._endpoint_lock = asyncio.Lock()
        self._cache: dict[str, _CachedLimits] = {}
        self._reads: dict[str, asyncio.Future[Mapping[str, int]]] = {}

    async def start(self) -> None:
        ssl_option: ssl.SSLContext | bool = True
        if self.options.insecure:
            ssl_option = False
        elif self.options.cafile:
            ssl_option = ssl.create_default_context(cafile=self.options.cafile)
        timeout = aiohttp.ClientTimeout(total=self.options.timeout or DEFAULT_TIMEOUT)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=ssl_option))

    async def close(self) -> None:
        reads = list(self._reads.values())
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the one question -----------------------------------------------------------------------

    async def limits(self, project_id: str, names: Collection[str]) -> dict[str, int]:
        """Each of ``names``' limit for ``project_id`` (project limit, else registered, else 0;
        negative means unlimited, as in oslo.limit)."""
        cached = self._cache.get(project_id)
        if cached is None or time.monotonic() - cached.fetched_at >= self.cache_time:
            known = await self._read_shared(project_id)
        else:
            known = cached.limits
        return {name: int(known.get(name, 0)) for name in names}

    async def _read_shared(self, project_id: str) -> Mapping[str, int]:
        """One read from Keystone per project at a time; the others wait for it (shielded, so one
        caller going away does not fail the rest)."""
        read = self._reads.get(project_id)
        if read is None:
            read = asyncio.ensure_future(self._read(project_id))
            self._reads[project_id] = read

            def forget(done: asyncio.Future[Mapping[str, int]]) -> None:
                self._reads.pop(project_id, None)
                if not done.cancelled():
                    done.exception()  # retrieved: its waiters may all have gone away meanwhile

            read.add_done_callback(forget)
        return await asyncio.shield(read)

    async def _read(self, project_id: str) -> Mapping[str, int]:
        endpoint = await self._resolve_endpoint()
        where: dict[str, str] = {"service_id": endpoint.service_id}
        if endpoint.region_id is not None:
            where["region_id"] = endpoint.region_id
        # Two questions at once: Keystone answers each in about a second when it is busy.
        registered, project = await asyncio.gather(self._get("/registered_limits", where),
                                                   self._get("/limits", {**where, "project_id": project_id}))
        limits = {item["resource_name"]: int(item["default_limit"]) for item in registered["registered_limits"]}
        limits.update({item["resource_name"]: int(item["resource_limit"]) for item in project["limits"]})
        self._cache[project_id] = _CachedLimits(limits, time.monotonic())
        return limits

    # -- which endpoint the limits are for --------------------------------------------------------

    async def _resolve_endpoint(self) -> _Endpoint:
        if self._endpoint is not None:
            return self._endpoint
        async with self._endpoint_lock:
            if self._endpoint is None:
                model = (await self._get("/limits/model", {}))["model"]["name"]
                if model != "flat":
                    # oslo.limit implements no other model (strict-two-level raises NotImplementedError).
                    raise LimitsMisconfigured(f"Keystone's limit enforcement model is {model!r}: only 'flat' "
                                              "is supported")
                self._endpoint = await self._find_endpoint()
                log.info("unified limits: service %s, region %s", self._endpoint.service_id,
                         self._endpoint.region_id or "(any)")
            return self._endpoint

    async def _find_endpoint(self) -> _Endpoint:
        """oslo.limit's ``_get_endpoint``: by id, else by service type/name, region and interface."""
        o = self.options
        if o.endpoint_id:
            found = await self._get(f"/endpoints/{o.endpoint_id}", {}, missing=f"Can't find endpoint for "
                                                                              f"{o.endpoint_id}")
            return _Endpoint(found["endpoint"]["service_id"], found["endpoint"].get("region_id"))
        services = (await self._get("/services", _present(type=o.endpoint_service_type,
                                                          name=o.endpoint_service_name)))["services"]
        if len(services) != 1:
            raise LimitsMisconfigured("[oslo_limit]: " + ("Multiple services found" if services
                                                          else "Service not found")
                                      + f" (type {o.endpoint_service_type}, name {o.endpoint_service_name})")
        region_id = None
        if o.endpoint_region_name:
            region = await self._get(f"/regions/{o.endpoint_region_name}", {}, missing="Region not found")
            region_id = region["region"]["id"]
        interface = o.endpoint_interface.removesuffix("URL")
        endpoints = (await self._get("/endpoints", _present(service_id=services[0]["id"], region_id=region_id,
                                                            interface=interface)))["endpoints"]
        if len(endpoints) != 1:
            raise LimitsMisconfigured("[oslo_limit]: " + ("Multiple endpoints found" if endpoints
                                                          else "Endpoint not found"))
        return _Endpoint(endpoints[0]["service_id"], endpoints[0].get("region_id"))

    # -- HTTP with the service token ----------------------------------------------------------------

    async def _get(self, path: str, params: Mapping[str, str], *, missing: str | None = None) -> Any:
        for attempt in (1, 2):
            token = await self._service_token(renew=attempt == 2)
            status, body = await self._request("GET", path, params=params, headers={"X-Auth-Token": token})
            if status == 401 and attempt == 1:
                continue  # revoked or expired early: one new token, then give up
            if status == 404 and missing is not None:
                raise LimitsMisconfigured(f"[oslo_limit]: {missing}")
            if status in (401, 403):
                raise LimitsMisconfigured(f"Keystone refused the service user reading {path}: {status}")
            if status != 200:
                raise LimitsUnavailable(f"Keystone answered {status} to GET {path}")
            return body
        raise AssertionError("unreachable")

    async def _service_token(self, *, renew: bool = False) -> str:
        token = self._token
        if token is not None and not renew and time.monotonic() < token.renew_at:
            return token.value
        async with self._token_lock:
            if self._token is not token and self._token is not None:
                return self._token.value  # renewed by another request meanwhile
            status, body, value = await self._authenticate()
            if status == 401:
                raise LimitsMisconfigured("Keystone refused the [oslo_limit] credentials (401)")
            if status not in (200, 201) or value is None:
                raise LimitsUnavailable(f"Keystone answered {status} to the service's authentication")
            self._token = _Token(value, time.monotonic() + _lifetime(body) - TOKEN_RENEW_MARGIN)
            return value

    async def _authenticate(self) -> tuple[int, Any, str | None]:
        o = self.options
        user: dict[str, Any] = {"password": o.password}
        if o.user_id:
            user["id"] = o.user_id
        else:
            user["name"] = o.username
            user["domain"] = _domain(o.user_domain_id or o.default_domain_id,
                                     o.user_domain_name or o.default_domain_name)
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": user}}}
        scope = self._scope()
        if scope is not None:
            auth["scope"] = scope
        return await self._request("POST", "/auth/tokens", json={"auth": auth}, want_subject_token=True)

    def _scope(self) -> dict[str, Any] | None:
        o = self.options
        if o.system_scope:
            return {"system": {o.system_scope: True}}
        if o.project_id:
            return {"project": {"id": o.project_id}}
        if o.project_name:
            return {"project": {"name": o.project_name,
                                "domain": _domain(o.project_domain_id or o.default_domain_id,
                                                  o.project_domain_name or o.default_domain_name)}}
        if o.domain_id:
            return {"domain": {"id": o.domain_id}}
        if o.domain_name:
            return {"domain": {"name": o.domain_name}}
        return None

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       headers: Mapping[str, str] | None = None, json: Any = None,
                       want_subject_token: bool = False) -> Any:
        if self._session is None:
            raise LimitsUnavailable("the Keystone limits client is not started")
        url = self.base + path
        try:
            async with self._session.request(method, url, params=params, headers=headers, json=json) as reply:
                body = await reply.json(content_type=None) if reply.status < 300 else None
                if want_subject_token:
                    return reply.status, body, reply.headers.get("X-Subject-Token")
                return reply.status, body
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            # ValueError: a 2xx answer that is not JSON; Keystone is not itself.
            raise LimitsUnavailable(f"Keystone at {self.base} cannot be reached for the unified limits: "
                                    f"{type(exc).__name__}: {exc}") from exc


def _present(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


def _domain(domain_id: str | None, domain_name: str | None) -> dict[str, str]:
    if domain_id:
        return {"id": domain_id}
    return {"name": domain_name} if domain_name else {"id": "default"}


def _lifetime(body: Any) -> float:
    """Seconds until the token Keystone just issued expires (an hour if it does not say)."""
    try:
        expires = dt.datetime.fromisoformat(body["token"]["expires_at"].replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return 3600.0
    return max(0.0, (expires - dt.datetime.now(dt.timezone.utc)).total_seconds())
