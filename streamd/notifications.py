"""Notifications on the message bus, as Glance sends them (glance/notifier.py): the same event
types, payloads, publisher id and ``disabled_notifications``, through oslo.messaging's own
notification drivers (``[oslo_messaging_notifications] driver``: messagingv2, messaging, log,
routing, noop).

What differs is how they leave. A request never waits for the bus: :meth:`Notifier.info` and
:meth:`Notifier.error` only append to a bounded queue, and one publisher task hands the queue to
the drivers, one notification at a time, from a thread of its own. A notification the bus did
not take (it is down, or refused it) stays at the head of the queue and is sent again after a
pause that grows to ``MAX_BACKOFF``; a full queue drops its oldest notification and counts it
(``dropped``). oslo.messaging's own ``Notifier`` would log a failed delivery and forget the
notification, so the drivers are loaded as it loads them (the ``oslo.messaging.notify.drivers``
entry points) and called directly, where a failure raises.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import queue
import threading
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .catalog import ImageRecord, MemberRecord, TaskRecord
from .catalog.metadefs import NamespaceRecord, ObjectRecord, PropertyRecord, TagRecord
from .catalog.records import isotime
from .config import Config

log = logging.getLogger(__name__)

# The drivers that publish on the bus, and the message version each sends (oslo.messaging's).
BUS_DRIVERS = {"messaging": 1.0, "messagingv2": 2.0}
# Longest pause between two attempts to hand a notification to a bus that refused the last one.
MAX_BACKOFF = 10.0
# How long stopping waits for the queue to empty before it drops what is left.
STOP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Notification:
    priority: str  # "info" or "error", as Glance sends them
    event_type: str
    payload: Any
    timestamp: str


def import_messaging() -> None:
    """Import oslo.messaging (once, on the loop's thread: warnings filters are process-wide).

    Only nodes that send notifications load it. Its imports pull in eventlet (through oslo.service
    and futurist, which import it wherever it is installed) and oslo.utils' eventletutils, both of
    which warn that they are deprecated at import: their plans, not a use of ours (streamd runs no
    eventlet code), so those import-time warnings are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Eventlet is deprecated")  # its own Warning subclass
        warnings.simplefilter("ignore", DeprecationWarning)
        import oslo_messaging  # noqa: F401
        import oslo_messaging.notify.messaging  # noqa: F401


def _now() -> str:
    return str(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))


class Notifier:
    """The node's notifications; ``enabled`` False (no driver configured) makes every call a no-op."""

    def __init__(self, config: Config) -> None:
        options = config.oslo_messaging_notifications
        self.drivers = tuple(d for d in options.driver if d)
        self.enabled = bool(self.drivers) and self.drivers != ("noop",)
        self.publisher_id = config.default.default_publisher_id
        self.disabled = frozenset(config.default.disabled_notifications)
        self.transport_url = options.transport_url or config.default.transport_url
        self.topics = list(options.topics)
        self.retry = None if options.retry < 0 else options.retry
        self.control_exchange = config.default.control_exchange
        self._queue: collections.deque[Notification] = collections.deque(maxlen=options.queue_size)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._worker: _DaemonWorker | None = None
        self._extensions: list[Any] = []
        self._bus_versions: list[float] = []
        self._transport: Any = None
        self.sent = 0
        self.dropped = 0
        self.failed_attempts = 0

    # -- what the routes call ------------------------------------------------------------------

    def info(self, event_type: str, payload: Any) -> None:
        self._emit("info", event_type, payload)

    def error(self, event_type: str, payload: Any) -> None:
        self._emit("error", event_type, payload)

    def is_enabled(self, event_type: str) -> bool:
        """Glance's ``_is_notification_enabled``: neither the type nor its group is disabled."""
        return self.enabled and not {event_type, event_type.split(".", 1)[0]} & self.disabled

    def _emit(self, priority: str, event_type: str, payload: Any) -> None:
        if not self.is_enabled(event_type):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            log.warning("notification queue full (%d): dropped the oldest notification", self._queue.maxlen)
        self._queue.append(Notification(priority, event_type, payload, _now()))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        import_messaging()
        self._worker = _DaemonWorker()
        await self._worker.run(self._load_drivers)
        self._task = asyncio.create_task(self._publish_forever(), name="notifications")

    def _load_drivers(self) -> None:
        import oslo_messaging
        from oslo_config import cfg
        from stevedore import named

        conf = cfg.ConfigOpts()
        conf([], project="streamd", default_config_files=[], default_config_dirs=[])
        oslo_messaging.set_transport_defaults(self.control_exchange)
        self._transport = oslo_messaging.get_notification_transport(conf, url=self.transport_url)
        # messaging and messagingv2 publish on the transport: called here, where a failed publish
        # raises (their driver classes would log it and forget the notification).
        self._bus_versions = [BUS_DRIVERS[d] for d in self.drivers if d in BUS_DRIVERS]
        others = [d for d in self.drivers if d not in BUS_DRIVERS]
        if others:
            manager = named.NamedExtensionManager(
                "oslo.messaging.notify.drivers", names=others, invoke_on_load=True,
                invoke_args=[conf], invoke_kwds={"topics": self.topics, "transport": self._transport},
                on_missing_entrypoints_callback=self._missing_drivers)
            self._extensions = list(manager)

    @staticmethod
    def _missing_drivers(names: Any) -> None:
        log.error("notification drivers not found (not sent there): %s", ", ".join(sorted(names)))

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Send what is queued for up to ``timeout`` seconds, then drop the rest (counted)."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue and loop.time() < deadline and not self._task.done():
            await asyncio.sleep(0.05)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if self._queue:
            self.dropped += len(self._queue)
            log.warning("stopping: %d notification(s) were never delivered", len(self._queue))
            self._queue.clear()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()
        if self._transport is not None:
            # Closing the connections may wait on a bus that is down: never hold the stop for it.
            threading.Thread(target=self._transport.cleanup, name="streamd-notify-cleanup", daemon=True).start()

    # -- the publisher ----------------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        assert self._worker is not None
        backoff = 0.0
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue[0]
            delivered = await self._worker.run(lambda: self._deliver(item))
            if delivered:
                # The deque may have dropped ``item`` meanwhile (full): remove it only if still first.
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                self.sent += 1
                backoff = 0.0
                continue
            self.failed_attempts += 1
            backoff = min(MAX_BACKOFF, max(0.25, backoff * 2))
            await asyncio.sleep(backoff)

    def _deliver(self, item: Notification) -> bool:
        """Hand ``item`` to every driver (blocking, in the publisher's thread); False if the bus refused."""
        import kombu.exceptions
        import oslo_messaging

        message = {"message_id": str(uuid.uuid4()), "publisher_id": self.publisher_id,
                   "event_type": item.event_type, "priority": item.priority.upper(), "payload": item.payload,
                   "timestamp": item.timestamp}
        try:
            for version in self._bus_versions:
                for topic in self.topics:
                    target = oslo_messaging.Target(topic=f"{topic}.{item.priority}")
                    self._transport._send_notification(target, {}, message, version=version, retry=self.retry)
        except (oslo_messaging.MessagingException, kombu.exceptions.KombuError, OSError) as exc:
            log.warning("notification %s not delivered, will try again: %s", item.event_type, exc)
            return False
        for extension in self._extensions:  # log, routing, noop: they report their own failures
            extension.obj.notify({}, message, item.priority, self.retry)
        return True


class _DaemonWorker:
    """One daemon thread that runs blocking calls in order. Not a ThreadPoolExecutor: the process
    joins those at exit, and a delivery blocked on an unreachable bus must never hold up a stop."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None]
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="streamd-notify", daemon=True).start()

    def run(self, call: Callable[[], Any]) -> "asyncio.Future[Any]":
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((call, future, loop))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future, loop = job
            try:
                result, error = call(), None
            except BaseException as exc:  # handed over to the coroutine that awaits the call
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop has closed (the daemon stopped): no one waits any more
                return


def _settle(future: "asyncio.Future[Any]", result: Any, exc: BaseException | None) -> None:
    if future.done():  # the awaiting coroutine was cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# -- Glance's payloads (glance/notifier.py format_*_notification) ------------------------------------

def image_payload(image: ImageRecord) -> dict[str, Any]:
    """No locations: they may hold credentials (Glance leaves them out for that reason)."""
    return {
        "id": image.id, "name": image.name, "status": image.status,
        "created_at": isotime(image.created_at), "updated_at": isotime(image.updated_at),
        "min_disk": image.min_disk, "min_ram": image.min_ram, "protected": image.protected,
        "checksum": image.checksum, "owner": image.owner, "disk_format": image.disk_format,
        "container_format": image.container_format, "size": image.size, "virtual_size": image.virtual_size,
        "is_public": image.visibility == "public", "visibility": image.visibility,
        "properties": dict(image.properties), "tags": list(image.tags), "deleted": False, "deleted_at": None,
    }


def import_properties(image: ImageRecord) -> dict[str, list[str]]:
    """The extra payload of image.prepare and image.upload."""
    def listed(name: str) -> list[str]:
        value = image.properties.get(name)
        return value.split(",") if value else []
    return {"os_glance_importing_to_stores": listed("os_glance_importing_to_stores"),
            "os_glance_failed_import": listed("os_glance_failed_import")}


def deleted(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "deleted": True, "deleted_at": isotime(dt.datetime.now(dt.timezone.utc))}


def member_payload(member: MemberRecord) -> dict[str, Any]:
    return {"image_id": member.image_id, "member_id": member.member, "status": member.status,
            "created_at": isotime(member.created_at), "updated_at": isotime(member.updated_at),
            "deleted": False, "deleted_at": None}


def task_payload(task: TaskRecord) -> dict[str, Any]:
    """Neither input nor result nor message: they may hold secrets (Glance leaves them out)."""
    return {"id": task.id, "type": task.type, "status": task.status, "result": None, "owner": task.owner,
            "message": None, "expires_at": isotime(task.expires_at), "created_at": isotime(task.created_at),
            "updated_at": isotime(task.updated_at), "deleted": False, "deleted_at": None}


def send_payload(image: ImageRecord, bytes_sent: int, project_id: str | None, user_id: str | None
                 ) -> dict[str, Any]:
    return {"bytes_sent": bytes_sent, "image_id": image.id, "owner_id": image.owner,
            "receiver_tenant_id": project_id, "receiver_user_id": user_id}


def namespace_payload(ns: NamespaceRecord, old_name: str | None = None) -> dict[str, Any]:
    return {"namespace": ns.namespace, "namespace_old": old_name or ns.namespace, "display_name": ns.display_name,
            "protected": ns.protected, "visibility": ns.visibility, "owner": ns.owner,
            "description": ns.description, "created_at": isotime(ns.created_at),
            "updated_at": isotime(ns.updated_at), "deleted": False, "deleted_at": None}


_PROPERTY_KEYS = ("type", "title", "description", "default", "minimum", "maximum", "enum", "pattern", "minLength",
                  "maxLength", "confidential", "items", "uniqueItems", "minItems", "maxItems", "additionalItems")


def object_payload(namespace: str, obj: ObjectRecord, old_name: str | None = None) -> dict[str, Any]:
    properties = [{"name": name, **{k: (prop or {}).get(k) or None for k in _PROPERTY_KEYS}}
                  for name, prop in (obj.properties or {}).items()]
    return {"namespace": namespace, "name": obj.name, "name_old": old_name or obj.name, "properties": properties,
            "required": obj.required, "description": obj.description, "created_at": isotime(obj.created_at),
            "updated_at": isotime(obj.updated_at), "deleted": False, "deleted_at": None}


def property_payload(namespace: str, prop: PropertyRecord, old_name: str | None = None) -> dict[str, Any]:
    return {"namespace": namespace, "name": prop.name, "name_old": old_name or prop.name,
            **{k: prop.schema.get(k) for k in _PROPERTY_KEYS}, "deleted": False, "deleted_at": None}


def resource_type_payload(namespace: str, name: str, prefix: str | None, properties_target: str | None,
                          created_at: dt.datetime, updated_at: dt.datetime | None) -> dict[str, Any]:
    return {"namespace": namespace, "name": name, "name_old": name, "prefix": prefix,
            "properties_target": properties_target, "created_at": isotime(created_at),
            "updated_at": isotime(updated_at), "deleted": False, "deleted_at": None}


def tag_payload(namespace: str, tag: TagRecord, old_name: str | None = None) -> dict[str, Any]:
    return {"namespace": namespace, "name": tag.name, "name_old": old_name or tag.name,
            "created_at": isotime(tag.created_at), "updated_at": isotime(tag.updated_at),
            "deleted": False, "deleted_at": None}


__all__ = ["Notifier", "Notification", "deleted", "image_payload", "import_properties", "member_payload",
           "namespace_payload", "object_payload", "property_payload", "resource_type_payload", "send_payload",
           "tag_payload", "task_payload"]
