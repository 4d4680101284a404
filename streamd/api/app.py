"""The application factory: routes, middlewares and the resources' lifecycle."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from aiohttp import web

import asyncio
import contextlib

from ..cache import ImageCache
from ..catalog import Catalog
from ..config import Config
from ..pipeline import ImageDelivery, Prefetcher, run_periodically, verify_stale_entry
from ..pipeline.peers import PeerClient
from ..imports import Importer, StagingArea
from ..stores import StoreRegistry
from . import cache as cache_routes
from . import image_data, images, imports, members, peer, schemas, tags, versions
from .inflight import InflightUploads
from .keys import CACHE, CATALOG, CONFIG, DELIVERY, IMPORTER, INFLIGHT_UPLOADS, PREFETCHER, STORES, request_id_of
from .middleware import errors_middleware, identity_middleware, version_middleware

log = logging.getLogger(__name__)

# Every v2 route is served under /v2 and under the listed /v2.N prefixes (checked by version_middleware).
V2_PREFIX = r"/{version:v2(?:\.[0-9]+)?}"


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, version_middleware, identity_middleware],
        client_max_size=1 << 20,  # JSON bodies; image data is streamed, not read whole
        handler_args={"max_field_size": 65536},
    )
    app[CONFIG] = config
    app[INFLIGHT_UPLOADS] = InflightUploads()
    versions.add_routes(app)
    peer.add_routes(app)
    for module in (images, image_data, imports, members, tags, schemas, cache_routes):
        module.add_routes(app, V2_PREFIX)
    app.on_response_prepare.append(_add_request_id)
    app.cleanup_ctx.append(_catalog_ctx)
    app.cleanup_ctx.append(_stores_ctx)
    app.cleanup_ctx.append(_cache_ctx)
    app.cleanup_ctx.append(_imports_ctx)
    return app


async def _imports_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    staging = StagingArea(config.staging_dir)
    await staging.start()
    importer = Importer(app[CATALOG], app[STORES], staging, config)
    # Imports this node ran when it last stopped died with it: fail their tasks, release their
    # locks, queue their images again, and clear the staging area of what no import will use.
    await importer.recover()
    app[IMPORTER] = importer
    # Dead imports of other nodes sharing the catalogue are freed by whichever node looks first.
    sweeper = asyncio.create_task(run_periodically(
        "import lock sweeper", config.image_import_opts.import_lock_timeout / 2, importer.expire_dead_imports))
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await importer.stop(0)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Openstack-Request-Id"] = request_id_of(request)


async def _catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    catalog = await Catalog.open(config.database_url, busy_timeout=config.database.busy_timeout,
                                 pool_size=config.database.pool_size)
    app[CATALOG] = catalog
    log.info("catalogue open: %s", catalog.engine.url.render_as_string(hide_password=True))
    try:
        yield
    finally:
        await catalog.close()


async def _stores_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    stores = StoreRegistry.from_config(config)
    await stores.start()
    app[STORES] = stores
    # Uploads this node had in flight when it last stopped died with it: their partial
    # data was removed by the stores' start(); put their images back to queued.
    recovered = await app[CATALOG].recover_uploads(config.host_id)
    if recovered:
        log.warning("recovered %d interrupted upload(s): %s", len(recovered), ", ".join(recovered))
    try:
        yield
    finally:
        await stores.stop()


async def _cache_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    cache: ImageCache | None = None
    directory = config.cache_dir
    if directory is not None:
        cache = ImageCache(directory, config.default.image_cache_max_size, config.default.image_cache_stall_time)
        await cache.start()
        app[CACHE] = cache
    peers: PeerClient | None = None
    if cache is not None and config.default.peer_url and config.default.peer_token:
        catalog = app[CATALOG]
        node = config.host_id
        await catalog.register_cache_node(node, config.default.peer_url, [e.image_id for e in await cache.entries()])

        async def announce(image_id: str, cached: bool) -> None:
            await catalog.set_node_caches(node, image_id, cached)

        cache.listeners.append(announce)
        peers = PeerClient(catalog, node, config.default.peer_token)
    delivery = ImageDelivery(app[STORES], cache, peers,
                             cache_local_stores=config.default.image_cache_local_stores)
    app[DELIVERY] = delivery
    tasks: list[asyncio.Task[None]] = []
    prefetcher: Prefetcher | None = None
    if cache is not None:
        prefetcher = Prefetcher(app[CATALOG], cache, delivery)
        app[PREFETCHER] = prefetcher
        if config.default.cache_prefetcher_interval > 0:
            tasks.append(asyncio.create_task(run_periodically(
                "prefetcher", config.default.cache_prefetcher_interval, prefetcher.run_once)))
        if config.default.image_cache_maintenance_interval > 0:
            async def maintain() -> None:
                await cache.prune()
                await cache.clean()
                await verify_stale_entry(app[CATALOG], cache, delivery, config.default.image_cache_verify_interval)

            tasks.append(asyncio.create_task(run_periodically(
                "cache maintenance", config.default.image_cache_maintenance_interval, maintain)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if prefetcher is not None:
            await prefetcher.stop()
        await delivery.stop()
        if cache is not None:
            await cache.stop()
