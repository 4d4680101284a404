"""The server process: uvloop, the services, the two edges, signals and graceful shutdown.

The node's services are opened once (:func:`streamd.services.open_services`)
and handed to both edges: the HTTP API and the admin socket.

SIGTERM or SIGINT stops accepting connections and gives in-flight requests
(uploads included) ``graceful_shutdown_timeout`` seconds to finish; what is
still running then is cancelled, and every handler cleans up after itself on
cancellation. A second signal stops at once. SIGHUP re-reads the configuration file and applies what can
change at runtime (``streamd.systemd``). systemd hears READY=1 once the port answers,
RELOADING=1 then READY=1 around a re-read, and STOPPING=1 (``$NOTIFY_SOCKET``, Type=notify).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import uvloop
from aiohttp import web

from . import __version__, kernels
from .api import create_app, create_metrics_app
from .api.access_log import AccessLogger
from .api.client_faults import install_log_filter
from .admin import AdminServer
from .admin.server import claim
from .config import Config
from .identity import check_noauth_exposure
from .services import Services, open_services
from . import systemd

log = logging.getLogger("streamd")


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    # A noauth API on a network address is refused before anything starts (ConfigError: exit 1).
    check_noauth_exposure(config)
    # Before anything touches the data directory: a live daemon may own it (its uploads, its fills).
    await claim(config.admin_socket)
    async with open_services(config) as services:
        await _serve(services, ready)


async def _serve(services: Services, ready: asyncio.Event | None) -> None:
    config = services.config
    app = create_app(services)
    install_log_filter()  # aiohttp's records of clients' faults: one INFO line, no traceback
    runner = web.AppRunner(
        app,
        # Uploads get the graceful period below; aiohttp's own wait is for the other requests.
        shutdown_timeout=min(5.0, config.default.graceful_shutdown_timeout),
        keepalive_timeout=config.default.client_socket_timeout,
        access_log=logging.getLogger("streamd.access"),
        access_log_class=AccessLogger,
        handle_signals=False,
    )
    await runner.setup()
    admin = AdminServer(config.admin_socket, services)
    try:
        await admin.start()
    except BaseException:
        await runner.cleanup()
        raise
    site = web.TCPSite(runner, config.default.bind_host, config.default.bind_port, reuse_address=True)
    await site.start()
    metrics_runner: web.AppRunner | None = None
    if config.metrics.enabled and config.metrics.bind_port is not None:
        # Prometheus's own port: /metrics only, no authentication (keep it on a private network).
        metrics_runner = web.AppRunner(create_metrics_app(), access_log=None, handle_signals=False)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, config.default.bind_host, config.metrics.bind_port,
                          reuse_address=True).start()
        log.info("metrics on http://%s/metrics",
                 ", ".join(f"{a[0]}:{a[1]}" for a in metrics_runner.addresses))
    addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses]
    log.info("streamd %s listening on %s (kernels: %s; catalogue: %s; stores: %s)",
             __version__, ", ".join(addresses), kernels.describe(),
             config.database_url.split("://", 1)[0], ", ".join(f"{s.name}:{s.type}" for s in config.stores))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("received %s: shutting down gracefully (up to %.0f s)",
                     signal.Signals(signum).name, config.default.graceful_shutdown_timeout)
            stop.set()
        else:
            log.warning("second signal: stopping now")
            raise SystemExit(1)

    in_force = config

    def on_hangup() -> None:
        nonlocal in_force
        systemd.reloading()
        try:
            in_force = systemd.reload(services, in_force)[1]
        finally:
            systemd.notify("READY=1")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    systemd.notify(f"READY=1\nSTATUS=listening on {', '.join(addresses)}\nMAINPID={os.getpid()}")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        systemd.notify("STOPPING=1")
        await site.stop()  # no new connections; requests in flight go on
        uploads = services.uploads
        deadline = loop.time() + config.default.graceful_shutdown_timeout
        if uploads.count:
            log.info("waiting for %d upload(s) in flight", uploads.count)
            if not await uploads.wait_idle(config.default.graceful_shutdown_timeout):
                log.warning("%d upload(s) still running after %.0f s: aborting them", uploads.count,
                            config.default.graceful_shutdown_timeout)
        importer = services.importer
        if importer.running:
            log.info("waiting for %d import(s) in flight", importer.running)
            # What is still running at the deadline is aborted cleanly: its image queued again.
            await importer.stop(max(0.0, deadline - loop.time()))
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await admin.stop()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        log.info("streamd stopped")


def run(config: Config) -> None:
    uvloop.run(serve(config))
