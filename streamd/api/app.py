"""The application factory: routes and middlewares over the node's services.

``create_app`` builds nothing but the HTTP edge: it receives the opened
:class:`~streamd.services.Services` (see :func:`streamd.services.open_services`)
and puts them where the handlers find them (``request.app[SERVICES]``).
"""

from __future__ import annotations

from aiohttp import web

from ..services import Services
from . import cache as cache_routes
from . import health, image_data, images, imports, members, metadefs, peer, schemas, tags, tasks, versions
from . import metrics as metrics_routes
from .inputs import inputs_middleware
from .keys import SERVICES, request_id_of
from .middleware import add_www_authenticate, errors_middleware, identity_middleware, version_middleware

# Every v2 route is served under /v2 and under the listed /v2.N prefixes (checked by version_middleware).
V2_PREFIX = r"/{version:v2(?:\.[0-9]+)?}"


def create_app(services: Services) -> web.Application:
    middlewares = [errors_middleware, inputs_middleware, version_middleware, identity_middleware]
    metrics_on = services.config.metrics.enabled
    if metrics_on:
        middlewares.insert(0, metrics_routes.timing_middleware)  # outermost: sees the statuses errors_middleware sets
    app = web.Application(
        # inputs_middleware checks the request target (path, query string) of every request.
        middlewares=middlewares,
        client_max_size=1 << 20,  # JSON bodies; image data is streamed, not read whole
        handler_args={"max_field_size": 65536},
    )
    app[SERVICES] = services
    versions.add_routes(app)
    health.add_routes(app, services.config.healthcheck.path)
    if metrics_on and services.config.metrics.bind_port is None:
        metrics_routes.add_routes(app)
    peer.add_routes(app)
    for module in (images, image_data, imports, tasks, members, tags, schemas, metadefs, cache_routes):
        module.add_routes(app, V2_PREFIX)
        # Unprefixed, for Glance's media-type versioning (Accept: application/vnd.openstack.images-v2.N).
        module.add_routes(app, "")
    app.on_response_prepare.append(_add_request_id)
    if services.identity is not None:
        app.on_response_prepare.append(add_www_authenticate)
    return app


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Openstack-Request-Id"] = request_id_of(request)
