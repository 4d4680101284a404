"""The composition root: everything a node runs, opened in order and closed in reverse.

:func:`open_services` builds the catalogue, the stores, the cache and its peers,
image delivery, the prefetcher, the quotas, the staging area, the importer and
(auth_strategy keystone) the token validator, recovers what
a crash of this node left behind, and registers every periodic job with one
supervisor (:class:`~streamd.background.BackgroundJobs`). It yields one frozen
:class:`Services`. The two edges, the HTTP API (``api.create_app``) and the
admin socket (``admin.AdminServer``), receive that object; neither builds
anything. Closing runs in the reverse order of opening: background jobs first,
then imports, prefetches and fills, then the cache, the stores and the catalogue.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import AsyncIterator

from . import metrics
from .background import BackgroundJobs, PeriodicJob, loop_lag_job
from .cache import ImageCache
from .catalog import Catalog
from .catalog.metadef_files import read_definitions
from .config import Config
from .errors import Duplicate
from .health import HealthChecker
from .identity import KeystoneValidator
from .identity.keystone import RENEW_CHECK_INTERVAL
from .imports import Importer, StagingArea
from .notifications import Notifier
from .pipeline import ImageDelivery, Prefetcher, Scrubber, verify_stale_entry
from .pipeline import workpool
from .pipeline.inflight import InflightUploads
from .pipeline.peers import PeerClient
from .policy import PolicyEnforcer, PropertyProtections, protections_from_config, settings_from_config
from .quota import KeystoneLimits, Quotas
from .signing import Signatures, signatures_from_config
from .stores import StoreRegistry

log = logging.getLogger(__name__)
# Seconds between copies of an SQLite catalogue's WAL into its database file (Catalog.checkpoint).
SQLITE_CHECKPOINT_INTERVAL = 1.0


@dataclass(frozen=True)
class Services:
    config: Config
    catalog: Catalog
    stores: StoreRegistry
    # None when the cache is off (image_cache_dir = none); the prefetcher goes with it.
    cache: ImageCache | None
    prefetcher: Prefetcher | None
    delivery: ImageDelivery
    staging: StagingArea
    importer: Importer
    uploads: InflightUploads
    jobs: BackgroundJobs
    # Glance's policy rules (and the policy file): every route and property-level decision asks it.
    policy: PolicyEnforcer
    quotas: Quotas
    # The Keystone token validator with auth_strategy keystone; None in noauth mode.
    identity: KeystoneValidator | None = None
    # Deletes the data of pending_delete images (delayed_delete); run every wakeup_time seconds.
    scrubber: Scrubber | None = None
    # [DEFAULT] property_protection_file's rules; None when no file is configured.
    protections: PropertyProtections | None = None
    # Glance's notifications to the message bus (a no-op without [oslo_messaging_notifications] driver).
    notifier: Notifier | None = None
    # Image signature verification (certificates from Barbican or [image_signature] certificate_dir).
    signatures: Signatures | None = None
    # /healthcheck's checks ([healthcheck]); built last, over what is open.
    health: HealthChecker | None = None


@contextlib.asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    # First, so that a broken policy file stops the start before anything is opened.
    policy = PolicyEnforcer(settings_from_config(config))
    protections = protections_from_config(config, policy)
    if protections is not None:
        log.info("property protections: %d rule(s) (%s) from %s", len(protections.rules) - 1,
                 protections.rule_format, config.default.property_protection_file)
    async with contextlib.AsyncExitStack() as stack:
        if config.metrics.enabled:
            metrics.enable()
            stack.callback(metrics.disable)
        # The data path's shared hash threads and per-store writer threads, for every stream of this node;
        # shut down last, once every stream that used them has ended.
        pools = workpool.install(config.default.upload_worker_threads, config.default.upload_writer_threads)
        stack.callback(workpool.release, pools)
        catalog = await Catalog.open(config.database_url, busy_timeout=config.database.busy_timeout,
                                     pool_size=config.database.pool_size, background_checkpoints=True)
        stack.push_async_callback(catalog.close)
        log.info("catalogue open: %s", catalog.engine.url.render_as_string(hide_password=True))
        if config.default.metadefs_initial_load:
            await _load_initial_metadefs(catalog)

        stores = StoreRegistry.from_config(config)
        await stores.start()
        stack.push_async_callback(stores.stop)
        # Uploads this node had in flight when it last stopped died with it: their partial
        # data was removed by the stores' start(); put their images back to queued.
        recovered = await catalog.recover_uploads(config.host_id)
        if recovered:
            log.warning("recovered %d interrupted upload(s): %s", len(recovered), ", ".join(recovered))

        cache = await _open_cache(config, catalog, stack)
        peers = await _open_peers(config, catalog, cache)
        delivery = ImageDelivery(stores, cache, peers, cache_local_stores=config.default.image_cache_local_stores)
        stack.push_async_callback(delivery.stop)
        prefetcher = Prefetcher(catalog, cache, delivery) if cache is not None else None
        if prefetcher is not None:
            stack.push_async_callback(prefetcher.stop)

        identity = None
        if config.auth_strategy == "keystone":
            identity = KeystoneValidator(config.keystone_authtoken)
            await identity.start()
            stack.push_async_callback(identity.stop)

        quotas = await _open_quotas(config, catalog, stack)
        # Before the importer (its tasks notify), closed after it: what the last imports sent is flushed.
        notifier = Notifier(config)
        await notifier.start()
        stack.push_async_callback(notifier.stop)
        staging = StagingArea(config.staging_dir)
        await staging.start()
        signatures = signatures_from_config(config)
        # glance-download finds the remote image service in the caller's Keystone catalogue.
        importer = Importer(catalog, stores, staging, config, quotas,
                            endpoint_lookup=identity.image_endpoint if identity is not None else None,
                            notifier=notifier,
                            signatures=signatures)
        # Imports this node ran when it last stopped died with it: fail their tasks, release their
        # locks, queue their images again, and clear the staging area of what no import will use.
        await importer.recover()
        stack.push_async_callback(importer.stop, 0)

        scrubber = Scrubber(catalog, stores, cache, scrub_time=config.default.scrub_time,
                            pool_size=config.default.scrub_pool_size)
        jobs = BackgroundJobs()
        for job in _periodic_jobs(config, catalog, stores, cache, prefetcher, delivery, importer):
            jobs.add(job)
        if config.default.delayed_delete:
            # Every node that delays deletes scrubs too; claims in the catalogue keep them apart.
            jobs.add(PeriodicJob("scrubber", config.default.wakeup_time, scrubber.run_once))
        if identity is not None:
            jobs.add(PeriodicJob("keystone service token", RENEW_CHECK_INTERVAL, identity.renew_service_token))
        health = HealthChecker(config.healthcheck, catalog, stores, staging, cache)
        stack.push_async_callback(health.stop)
        uploads = InflightUploads()
        if config.metrics.enabled:
            metrics.watch("streamd_data_path_queued_bytes",
                          "Bytes handed to the shared hash and writer pools and not yet consumed", lambda: pools.queued)
            jobs.add(loop_lag_job(config.metrics.event_loop_lag_interval, metrics.loop_lag))
            _watch_queues(uploads, importer, cache, jobs)
        jobs.start()
        stack.push_async_callback(jobs.stop)

        yield Services(config=config, catalog=catalog, stores=stores, cache=cache, prefetcher=prefetcher,
                       delivery=delivery, staging=staging, importer=importer, uploads=uploads,
                       jobs=jobs, policy=policy, quotas=quotas, identity=identity, scrubber=scrubber,
                       protections=protections, notifier=notifier, signatures=signatures,
                       health=health)


def _watch_queues(uploads: InflightUploads, importer: Importer, cache: ImageCache | None,
                  jobs: BackgroundJobs) -> None:
    """Queue lengths and work in flight, read when /metrics is scraped."""
    metrics.watch("streamd_uploads_in_flight", "Image uploads (PUT /file) in flight", lambda: uploads.count)
    metrics.watch("streamd_imports_running", "Imports running on this node", lambda: importer.running)
    metrics.watch("streamd_background_jobs_running", "Background jobs running", lambda: jobs.running)
    if cache is not None:
        metrics.watch("streamd_cache_fills_in_flight", "Cache fills in flight", lambda: len(cache.fills))
        metrics.watch("streamd_cache_fill_bytes_in_flight", "Bytes reserved by cache fills in flight",
                      cache.size_in_flight)


async def _open_quotas(config: Config, catalog: Catalog, stack: contextlib.AsyncExitStack) -> Quotas:
    """user_storage_quota, or with use_keystone_limits the limits read from Keystone ([oslo_limit])."""
    keystone = None
    if config.default.use_keystone_limits:
        keystone = KeystoneLimits(config.oslo_limit)
        await keystone.start()
        stack.push_async_callback(keystone.close)
        log.info("quotas: Keystone unified limits from %s (kept %g s)", keystone.base, keystone.cache_time)
    elif config.default.user_storage_quota > 0:
        log.info("quotas: user_storage_quota %d bytes per project", config.default.user_storage_quota)
    return Quotas(catalog, storage_quota=config.default.user_storage_quota, keystone=keystone)


@contextlib.asynccontextmanager
async def open_scrubber(config: Config) -> AsyncIterator[Scrubber]:
    """A scrubber alone (``streamd scrub``): the catalogue and the stores, nothing else.

    The stores are not started: starting reaps this node's half-written uploads, which would
    break a daemon running beside on the same node. Deleting needs no start (RBD connects
    when first used). No cache: the daemon that deleted the image dropped its cached copy."""
    async with contextlib.AsyncExitStack() as stack:
        catalog = await Catalog.open(config.database_url, busy_timeout=config.database.busy_timeout,
                                     pool_size=config.database.pool_size)
        stack.push_async_callback(catalog.close)
        stores = StoreRegistry.from_config(config)
        stack.push_async_callback(stores.stop)
        yield Scrubber(catalog, stores, None, scrub_time=config.default.scrub_time,
                       pool_size=config.default.scrub_pool_size)


async def _load_initial_metadefs(catalog: Catalog) -> None:
    """Glance's published definitions into an empty metadefs catalogue (a new node's first start)."""
    if not await catalog.metadefs_empty():
        return
    try:
        loaded = await catalog.load_metadefs(read_definitions())
    except Duplicate:
        # Another node sharing this catalogue loaded them at the same moment: they are there.
        log.info("metadata definitions were loaded by another node")
        return
    log.info("loaded %d metadata definition namespaces into the empty metadefs catalogue", len(loaded))


async def _open_cache(config: Config, catalog: Catalog, stack: contextlib.AsyncExitStack) -> ImageCache | None:
    if config.cache_dir is None:
        return None
    cache = ImageCache(config.cache_dir, config.default.image_cache_max_size, config.default.image_cache_stall_time,
                       direct_io=config.default.image_cache_direct_io)
    await cache.start()
    stack.push_async_callback(cache.stop)
    return cache


async def _open_peers(config: Config, catalog: Catalog, cache: ImageCache | None) -> PeerClient | None:
    """Nodes sharing a catalogue serve each other's cache misses (peer_url, peer_token)."""
    if cache is None or not (config.default.peer_url and config.default.peer_token):
        return None
    node = config.host_id
    await catalog.register_cache_node(node, config.default.peer_url, [e.image_id for e in await cache.entries()])

    async def announce(image_id: str, cached: bool) -> None:
        await catalog.set_node_caches(node, image_id, cached)

    cache.listeners.append(announce)
    return PeerClient(catalog, node, config.default.peer_token, url=config.default.peer_url,
                      lease_ttl=config.default.fill_lease_ttl)


def _periodic_jobs(config: Config, catalog: Catalog, stores: StoreRegistry, cache: ImageCache | None,
                   prefetcher: Prefetcher | None, delivery: ImageDelivery, importer: Importer) -> list[PeriodicJob]:
    jobs = [job for store in stores for job in store.background_jobs()]
    if catalog.is_sqlite:
        jobs.append(PeriodicJob("catalogue checkpoint", SQLITE_CHECKPOINT_INTERVAL, catalog.checkpoint))
    # Dead imports of other nodes sharing the catalogue are freed by whichever node looks first.
    jobs.append(PeriodicJob("import lock sweeper", config.image_import_opts.import_lock_timeout / 2,
                            importer.expire_dead_imports))
    if cache is not None and prefetcher is not None:
        jobs.append(PeriodicJob("prefetcher", config.default.cache_prefetcher_interval, prefetcher.run_once))

        async def maintain_cache() -> None:
            await cache.prune()
            await cache.clean()
            await verify_stale_entry(catalog, cache, delivery, config.default.image_cache_verify_interval)

        jobs.append(PeriodicJob("cache maintenance", config.default.image_cache_maintenance_interval, maintain_cache))
    return jobs
