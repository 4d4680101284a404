"""Version discovery, as Glance does it.

``GET /`` (300) and ``GET /versions`` (200) list the versions; a request picks
one by its URL prefix (``/v2``, ``/v2.N``) or, as with Glance's
VersionNegotiationFilter, by ``Accept: application/vnd.openstack.images-v2.N``
on an unprefixed path (checked in ``middleware.version_middleware``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import Config
from .keys import SERVICES


def listed_versions(config: Config) -> list[tuple[str, str]]:
    """(version, status) in Glance 33's order for the same configuration.

    streamd always runs with ``enabled_backends``; the cache API (2.14, 2.16, 2.18) is listed once
    the image cache is configured. 2.17 is the locations API (``/v2/images/{id}/locations``).
    Without the cache Glance lists 2.17, its CURRENT, after 2.8, and so does streamd.
    """
    versions: list[tuple[str, str]] = []
    cache = config.cache_dir is not None
    if cache:
        versions += [("2.18", "CURRENT"), ("2.17", "SUPPORTED"), ("2.16", "SUPPORTED"), ("2.15", "SUPPORTED"),
                     ("2.14", "SUPPORTED")]
    else:
        versions += [("2.15", "SUPPORTED")]
    versions += [(f"2.{n}", "SUPPORTED") for n in (13, 12, 11, 10, 9, 8)]
    if not cache:
        versions += [("2.17", "CURRENT")]
    versions += [(f"2.{n}", "SUPPORTED") for n in (7, 6, 5, 4, 3, 2, 1, 0)]
    return versions


def allowed_url_versions(config: Config) -> frozenset[str]:
    """Path prefixes accepted in place of ``v2``: ``v2`` and every listed ``v2.N``."""
    # Asked by every request: worked out once per configuration (a SIGHUP brings a new one).
    known = _ALLOWED_FOR
    if known and known[0] is config:
        return known[1]
    allowed = frozenset({"v2"} | {f"v{v}" for v, _ in listed_versions(config)})
    _ALLOWED_FOR[:] = [config, allowed]
    return allowed


_ALLOWED_FOR: list[Any] = []  # [the Config last asked about, its answer]


def versions_document(request: web.Request) -> dict[str, object]:
    config = request.app[SERVICES].config
    base = (config.default.public_endpoint or f"{request.scheme}://{request.host}").rstrip("/")
    return {"versions": [
        {"id": f"v{version}", "status": status, "links": [{"rel": "self", "href": f"{base}/v2/"}]}
        for version, status in listed_versions(config)
    ]}


def multiple_choices(request: web.Request) -> web.Response:
    return web.json_response(versions_document(request), status=300)


async def root(request: web.Request) -> web.Response:
    return multiple_choices(request)


async def versions(request: web.Request) -> web.Response:
    return web.json_response(versions_document(request), status=200)


# Glance's media-type versioning: ``Accept: application/vnd.openstack.images-v2.N`` on a path
# without a version prefix (see ``middleware.version_middleware``).
VERSION_MEDIA_TYPE = "application/vnd.openstack.images-"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/versions", versions)
