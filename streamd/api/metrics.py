"""``/metrics`` (Prometheus's text format) and the per-route request timing ([metrics]).

With ``[metrics] enabled`` and no ``bind_port`` the API serves ``GET /metrics`` to admins
only (noauth: the admin role; keystone: an admin's token). With ``bind_port`` the daemon
serves :func:`create_metrics_app` on that port instead, without authentication, for a
scraper on a private network; the API port then has no ``/metrics``. The request timing
middleware is installed only when metrics are enabled: otherwise it costs nothing.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .. import metrics
from ..errors import NotPermitted
from .keys import context_of
from .middleware import Handler

PATH = "/metrics"


@web.middleware
async def timing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each request's duration (its body included) by method, route template and status."""
    started = metrics.now()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code for it)
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(no route)"
        metrics.request_done(request.method, route, status, metrics.now() - started)


async def scrape(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def admin_scrape(request: web.Request) -> web.Response:
    if not context_of(request).is_admin:
        raise NotPermitted("Only admins may read the metrics")
    return await scrape(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, admin_scrape)


def create_metrics_app() -> web.Application:
    """The app of ``[metrics] bind_port``: ``/metrics`` alone, unauthenticated."""
    app = web.Application()
    app.router.add_get(PATH, scrape)
    return app
