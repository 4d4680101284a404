"""Glance's notifications, sent to a real RabbitMQ (scripts/rabbitmq-dev.sh, started by
scripts/test.sh) and consumed from it with oslo.messaging's own notification listener.

Each test sends to topics of its own, so nothing another test (or an earlier run) left in the
broker is read. The bus "briefly down" is real too: the daemon is pointed at a loopback port
where a TCP relay to the broker is started only later."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from conftest import ADMIN, MEMBER_A, PROJECT_B, ApiClient, free_port, make_config, start_api
from streamd.api.keys import SERVICES
from streamd.notifications import import_messaging

RABBIT = os.environ.get("STREAMD_TEST_RABBITMQ_URL", "")
OCTET = {"Content-Type": "application/octet-stream"}
DATA = os.urandom(300_000)


@pytest.fixture(scope="module", autouse=True)
def _broker() -> None:
    assert RABBIT, "STREAMD_TEST_RABBITMQ_URL is not set: run the suite through scripts/test.sh"


class Consumer:
    """oslo.messaging's notification listener on ``topic``, collecting (priority, publisher, type, payload)."""

    def __init__(self, topic: str) -> None:
        import_messaging()
        import oslo_messaging
        from oslo_config import cfg

        self.received: list[tuple[str, str, str, Any]] = []
        self._lock = threading.Lock()
        consumer = self

        class Endpoint:
            def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any) -> None:
                consumer._add("info", publisher_id, event_type, payload)

            def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any) -> None:
                consumer._add("error", publisher_id, event_type, payload)

        conf = cfg.ConfigOpts()
        conf([], project="streamd-test", default_config_files=[], default_config_dirs=[])
        self.transport = oslo_messaging.get_notification_transport(conf, url=RABBIT)
        self.listener = oslo_messaging.get_notification_listener(
            self.transport, [oslo_messaging.Target(topic=topic)], [Endpoint()], executor="threading")
        self.listener.start()

    def _add(self, *item: Any) -> None:
        with self._lock:
            self.received.append(item)

    def types(self) -> list[str]:
        with self._lock:
            return [t for _, _, t, _ in self.received]

    def of(self, event_type: str) -> list[tuple[str, str, str, Any]]:
        with self._lock:
            return [r for r in self.received if r[2] == event_type]

    async def wait_for(self, *event_types: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = self.types()
            if all(t in have for t in event_types):
                return
            await asyncio.sleep(0.05)
        missing = [t for t in event_types if t not in self.types()]
        raise AssertionError(f"never received {missing}; received {self.types()}")

    def close(self) -> None:
        self.listener.stop()
        self.listener.wait()
        self.transport.cleanup()


@contextlib.contextmanager
def consuming(topic: str) -> Iterator[Consumer]:
    consumer = Consumer(topic)
    try:
        yield consumer
    finally:
        consumer.close()


def sections(topic: str, transport_url: str = "", **extra: str) -> dict[str, dict[str, str]]:
    return {"DEFAULT": {"transport_url": transport_url or RABBIT, "default_publisher_id": "image.streamd-test",
                        **extra},
            "oslo_messaging_notifications": {"driver": "messagingv2", "topics": topic}}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, topic: str, transport_url: str = "", **extra: str) -> AsyncIterator[Any]:
    server, client, session = await start_api(make_config(tmp_path, None, **sections(topic, transport_url, **extra)))
    try:
        yield server, client
    finally:
        await session.close()
        await server.close()


async def _until_active(api: ApiClient, image_id: str) -> None:
    for _ in range(500):
        reply = await api.call("GET", f"/v2/images/{image_id}", as_=MEMBER_A)
        if reply.json["status"] == "active":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never active")


async def test_every_kind_arrives_from_one_cycle(tmp_path: Path) -> None:
    """One upload / import / member / metadefs / delete cycle: every notification kind Glance sends,
    with Glance's payloads, on the bus."""
    topic = f"streamd-test-{uuid.uuid4().hex}"
    with consuming(topic) as bus:
        async with running(tmp_path, topic) as (_, api):
            image = await api.create(name="cycle")
            assert (await api.patch(image["id"], [{"op": "replace", "path": "/name", "value": "renamed"}])).status == 200
            reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=DATA, headers=OCTET)
            assert reply.status == 204, reply.body
            assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).body == DATA
            # A failed upload: an error notification with Glance's message.
            bad = await api.create()
            reply = await api.call("PUT", f"/v2/images/{bad['id']}/file", as_=MEMBER_A, data=DATA,
                                   headers={**OCTET, "x-openstack-image-size": "5"})
            assert reply.status == 400, reply.body
            # Members.
            path = f"/v2/images/{image['id']}/members"
            assert (await api.call("POST", path, as_=MEMBER_A, json_body={"member": PROJECT_B})).status == 200
            member_b = {"X-Project-Id": PROJECT_B, "X-User-Id": "user-b", "X-Roles": "member,reader"}
            assert (await api.call("PUT", f"{path}/{PROJECT_B}", as_=member_b,
                                   json_body={"status": "accepted"})).status == 200
            assert (await api.call("DELETE", f"{path}/{PROJECT_B}", as_=MEMBER_A)).status == 204
            # An import: the task's life and the image's set_data.
            imported = await api.create()
            assert (await api.call("PUT", f"/v2/images/{imported['id']}/stage", as_=MEMBER_A, data=DATA,
                                   headers=OCTET)).status == 204
            assert (await api.call("POST", f"/v2/images/{imported['id']}/import", as_=MEMBER_A,
                                   json_body={"method": {"name": "glance-direct"}})).status == 202
            await _until_active(api, imported["id"])
            # Metadefs.
            ns = "OS::Streamd::Notify"
            assert (await api.call("POST", "/v2/metadefs/namespaces", as_=ADMIN,
                                   json_body={"namespace": ns, "display_name": "n"})).status == 201
            base = f"/v2/metadefs/namespaces/{ns}"
            assert (await api.call("PUT", base, as_=ADMIN,
                                   json_body={"namespace": ns, "display_name": "n2"})).status == 200
            assert (await api.call("POST", f"{base}/objects", as_=ADMIN,
                                   json_body={"name": "obj", "properties": {"p": {"type": "string", "title": "p"}}})).status == 201
            assert (await api.call("PUT", f"{base}/objects/obj", as_=ADMIN, json_body={"name": "obj2"})).status == 200
            assert (await api.call("DELETE", f"{base}/objects/obj2", as_=ADMIN)).status == 204
            assert (await api.call("POST", f"{base}/properties", as_=ADMIN,
                                   json_body={"name": "prop", "title": "t", "type": "string"})).status == 201
            assert (await api.call("PUT", f"{base}/properties/prop", as_=ADMIN,
                                   json_body={"name": "prop2", "title": "t", "type": "string"})).status == 200
            assert (await api.call("DELETE", f"{base}/properties/prop2", as_=ADMIN)).status == 204
            assert (await api.call("POST", f"{base}/tags/t1", as_=ADMIN)).status == 201
            assert (await api.call("PUT", f"{base}/tags/t1", as_=ADMIN, json_body={"name": "t2"})).status == 200
            assert (await api.call("DELETE", f"{base}/tags/t2", as_=ADMIN)).status == 204
            assert (await api.call("POST", f"{base}/resource_types", as_=ADMIN,
                                   json_body={"name": "OS::Glance::Image", "prefix": "x_"})).status == 201
            assert (await api.call("DELETE", f"{base}/resource_types/OS::Glance::Image", as_=ADMIN)).status == 204
            for kind in ("objects", "properties", "tags"):
                assert (await api.call("DELETE", f"{base}/{kind}", as_=ADMIN)).status == 204
            assert (await api.call("DELETE", base, as_=ADMIN)).status == 204
            assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204

            kinds = ["image.create", "image.update", "image.prepare", "image.upload", "image.activate", "image.send",
                     "image.member.create", "image.member.update", "image.member.delete", "image.delete",
                     "task.create", "task.processing", "task.success", "task.run",
                     "metadef_namespace.create", "metadef_namespace.update", "metadef_namespace.delete",
                     "metadef_namespace.delete_objects", "metadef_namespace.delete_properties",
                     "metadef_namespace.delete_tags",
                     "metadef_object.create", "metadef_object.update", "metadef_object.delete",
                     "metadef_property.create", "metadef_property.update", "metadef_property.delete",
                     "metadef_tag.create", "metadef_tag.update", "metadef_tag.delete",
                     "metadef_resource_type.create", "metadef_resource_type.delete"]
            await bus.wait_for(*kinds)

        assert {publisher for _, publisher, _, _ in bus.received} == {"image.streamd-test"}
        [created] = [p for _, _, _, p in bus.of("image.create") if p["id"] == image["id"]]
        assert (created["name"], created["status"], created["owner"], created["is_public"]) == (
            "cycle", "queued", image["owner"], False)
        assert "locations" not in created and created["deleted"] is False
        activated = [p for _, _, _, p in bus.of("image.activate") if p["id"] == image["id"]]
        assert activated and activated[0]["checksum"] == hashlib.md5(DATA).hexdigest()
        assert activated[0]["size"] == len(DATA)
        prepared = [p for _, _, _, p in bus.of("image.prepare") if p["id"] == image["id"]]
        assert prepared[0]["backend"] == "fs" and prepared[0]["os_glance_importing_to_stores"] == []
        [(priority, _, _, sent)] = bus.of("image.send")
        assert priority == "info" and sent == {"bytes_sent": len(DATA), "image_id": image["id"],
                                               "owner_id": image["owner"], "receiver_tenant_id": MEMBER_A["X-Project-Id"],
                                               "receiver_user_id": "user-a"}
        failures = [(priority, p) for priority, _, _, p in bus.of("image.upload") if priority == "error"]
        assert len(failures) == 1 and failures[0][1].startswith(f"Failed to upload image data for image {bad['id']}: ")
        [(_, _, _, deleted)] = bus.of("image.delete")
        assert deleted["id"] == image["id"] and deleted["deleted"] is True and deleted["deleted_at"]
        members = [p for _, _, t, p in bus.received if t.startswith("image.member.")]
        assert [m["status"] for m in members] == ["pending", "accepted", "accepted"]
        assert {m["member_id"] for m in members} == {PROJECT_B}
        task_events = [(t, p["status"]) for _, _, t, p in bus.received if t.startswith("task.")]
        assert task_events == [("task.create", "processing"), ("task.processing", "processing"),
                               ("task.success", "success"), ("task.run", "success")]
        assert all(p["type"] == "api_image_import" and p["result"] is None and p["message"] is None
                   for _, _, t, p in bus.received if t.startswith("task."))
        [(_, _, _, ns_update)] = bus.of("metadef_namespace.update")
        assert (ns_update["namespace"], ns_update["namespace_old"], ns_update["display_name"]) == (ns, ns, "n2")
        [(_, _, _, obj_update)] = bus.of("metadef_object.update")
        assert (obj_update["name"], obj_update["name_old"]) == ("obj2", "obj")
        [(_, _, _, tag_delete)] = bus.of("metadef_tag.delete")
        assert (tag_delete["name"], tag_delete["deleted"]) == ("t2", True)


async def test_disabled_notifications_are_not_sent(tmp_path: Path) -> None:
    topic = f"streamd-test-{uuid.uuid4().hex}"
    with consuming(topic) as bus:
        async with running(tmp_path, topic, disabled_notifications="image.send,image.member.create,metadef_tag") as (_, api):
            image = await api.create()
            assert (await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=DATA,
                                   headers=OCTET)).status == 204
            assert (await api.call("GET", f"/v2/images/{image['id']}/file", as_=MEMBER_A)).status == 200
            assert (await api.call("POST", f"/v2/images/{image['id']}/members", as_=MEMBER_A,
                                   json_body={"member": PROJECT_B})).status == 200
            ns = "OS::Streamd::Quiet"
            assert (await api.call("POST", "/v2/metadefs/namespaces", as_=ADMIN, json_body={"namespace": ns})).status == 201
            assert (await api.call("POST", f"/v2/metadefs/namespaces/{ns}/tags/t", as_=ADMIN)).status == 201
            assert (await api.call("DELETE", f"/v2/metadefs/namespaces/{ns}", as_=ADMIN)).status == 204
            assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
            await bus.wait_for("image.delete", "metadef_namespace.delete")
        # A type, or a whole group (the part before the first dot, as Glance reads it).
        assert not [t for t in bus.types() if t in ("image.send", "image.member.create") or t.startswith("metadef_tag.")]
        assert "image.upload" in bus.types()


class Relay:
    """A TCP relay from a loopback port to the broker, started when the test wants the bus up."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def _broker_address() -> tuple[str, int]:
    hostport = RABBIT.split("@", 1)[1].strip("/")
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


async def test_a_bus_that_is_down_loses_nothing_and_blocks_no_request(tmp_path: Path) -> None:
    """The broker unreachable at first: requests answer at once, the notifications wait in the
    queue (the publisher keeps trying) and all arrive, in order, once the bus is there."""
    topic = f"streamd-test-{uuid.uuid4().hex}"
    port = free_port()
    relay = Relay(port, _broker_address())
    with consuming(topic) as bus:
        async with running(tmp_path, topic, transport_url=f"rabbit://guest:guest@127.0.0.1:{port}/") as (server, api):
            notifier = server.app[SERVICES].notifier
            started = time.monotonic()
            ids = [(await api.create(name=f"n{n}"))["id"] for n in range(5)]
            assert time.monotonic() - started < 5  # no request waited for the bus
            for _ in range(200):
                if notifier.failed_attempts >= 2:
                    break
                await asyncio.sleep(0.05)
            assert notifier.failed_attempts >= 2 and notifier.sent == 0 and notifier.pending == 5
            await relay.start()
            try:
                await bus.wait_for("image.create", timeout=60)
                for _ in range(600):
                    if len(bus.of("image.create")) == 5:
                        break
                    await asyncio.sleep(0.05)
                assert [p["id"] for _, _, _, p in bus.of("image.create")] == ids
                assert notifier.dropped == 0 and notifier.pending == 0 and notifier.sent == 5
            finally:
                await relay.stop()


async def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    topic = f"streamd-test-{uuid.uuid4().hex}"
    port = free_port()
    with consuming(topic):
        config_extra = {"oslo_messaging_notifications": {"driver": "messagingv2", "topics": topic, "queue_size": "3"}}
        sect = sections(topic, f"rabbit://guest:guest@127.0.0.1:{port}/")
        sect.update(config_extra)
        server, api, session = await start_api(make_config(tmp_path, None, **sect))
        try:
            notifier = server.app[SERVICES].notifier
            for n in range(6):
                await api.create(name=f"n{n}")
            # One may be in the publisher's hands (not in the queue) when the others arrive.
            assert notifier.pending == 3 and notifier.dropped >= 2
        finally:
            await session.close()
            await server.close()
        assert notifier.dropped == 6  # what never left is counted as dropped at stop
