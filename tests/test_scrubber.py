"""Delayed delete and the scrubber: pending_delete, scrub_time, restore, several scrubbers at once.

Real parts throughout: the app on a loopback port, SQLite and PostgreSQL catalogues, the file
store on disk, `streamd scrub` as processes, and (test_scrubber_rbd) the real Ceph cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from streamd.api.keys import SERVICES
from streamd.catalog import models as m
from streamd.errors import DoesNotExist, InvalidStatusTransition
from streamd.pipeline import Scrubber
from streamd.services import Services

from conftest import ADMIN, MEMBER_A, PYTHON, ROOT, ApiClient, both_databases, make_config, start_api, write_config

pytestmark = both_databases

DATA = os.urandom(300_000)
DELAYED = {"delayed_delete": "true", "wakeup_time": "0"}  # the tests run the scrubber themselves


async def start(tmp_path: Path, database_url: str, name: str = "a", store_dir: Path | None = None,
                **default: str):
    sections = {"DEFAULT": {**DELAYED, **default, "data_dir": str(tmp_path / name)}}
    if store_dir is not None:
        sections["fs"] = {"filesystem_store_datadir": str(store_dir)}
    server, client, session = await start_api(make_config(tmp_path, database_url, **sections))
    return server, client, session


async def stop(server, session) -> None:
    await session.close()
    await server.close()


def services_of(server) -> Services:
    return server.app[SERVICES]


async def active_image(api: ApiClient, data: bytes = DATA, **body) -> dict:
    image = await api.create(**body)
    reply = await api.call("PUT", f"/v2/images/{image['id']}/file", as_=MEMBER_A, data=data,
                           headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 204, reply.body
    return (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json


def data_path(server, image_id: str) -> Path:
    return services_of(server).stores.get("fs").path_of(image_id)  # type: ignore[attr-defined]


async def row(server, image_id: str) -> dict:
    async with services_of(server).catalog.engine.connect() as conn:
        r = (await conn.execute(sa.select(m.images).where(m.images.c.id == image_id))).mappings().one()
        locations = (await conn.execute(sa.select(m.image_locations.c.status).where(
            m.image_locations.c.image_id == image_id))).scalars().all()
    return {**r, "locations": list(locations)}


async def test_delete_moves_to_pending_delete_and_keeps_the_data(tmp_path: Path, database_url: str) -> None:
    server, api, session = await start(tmp_path, database_url)
    try:
        image = await active_image(api, tags=["keep"])
        iid = image["id"]
        # Downloaded once: the cache holds a copy (the tests let it cache local stores).
        assert (await api.call("GET", f"/v2/images/{iid}/file", as_=MEMBER_A)).body == DATA
        cache = services_of(server).cache
        assert cache is not None
        for _ in range(100):  # the fill finishes beside the response
            if iid in [e.image_id for e in await cache.entries()]:
                break
            await asyncio.sleep(0.05)
        assert iid in [e.image_id for e in await cache.entries()]

        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        # As in Glance: a pending_delete image is a deleted one to the API.
        assert (await api.call("GET", f"/v2/images/{iid}", as_=MEMBER_A)).status == 404
        assert (await api.call("GET", f"/v2/images/{iid}", as_=ADMIN)).status == 404
        assert (await api.call("GET", f"/v2/images/{iid}/file", as_=ADMIN)).status == 404
        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=ADMIN)).status == 404
        assert iid not in await api.list_ids(as_=ADMIN)
        assert await api.list_ids({"status": "pending_delete"}, as_=ADMIN) == []
        # The data stays in the store; the catalogue keeps the location for the scrubber.
        assert data_path(server, iid).read_bytes() == DATA
        stored = await row(server, iid)
        assert (stored["status"], stored["deleted"], stored["locations"]) == ("pending_delete", True, ["pending_delete"])
        assert stored["deleted_at"] is not None
        # The cache's copy went at delete time, as Glance's cache middleware drops it.
        assert iid not in [e.image_id for e in await cache.entries()]

        # An image without data has nothing to wait for: deleted at once (Glance: no locations).
        queued = await api.create()
        assert (await api.call("DELETE", f"/v2/images/{queued['id']}", as_=MEMBER_A)).status == 204
        assert (await row(server, queued["id"]))["status"] == "deleted"
    finally:
        await stop(server, session)


async def test_deactivated_image_cannot_go_pending_delete(tmp_path: Path, database_url: str) -> None:
    """Glance allows only active -> pending_delete: deleting a deactivated image with data is a 400."""
    server, api, session = await start(tmp_path, database_url)
    try:
        image = await active_image(api)
        assert (await api.call("POST", f"/v2/images/{image['id']}/actions/deactivate", as_=ADMIN)).status == 204
        reply = await api.call("DELETE", f"/v2/images/{image['id']}", as_=ADMIN)
        assert reply.status == 400
        assert reply.error["message"].startswith(  # webob's 400 body, as Glance's
            "Image status transition from deactivated to pending_delete is not allowed<br />")
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=ADMIN)).json["status"] == "deactivated"
    finally:
        await stop(server, session)


async def test_scrub_waits_for_scrub_time_then_deletes(tmp_path: Path, database_url: str) -> None:
    server, api, session = await start(tmp_path, database_url, scrub_time="1")
    try:
        image = await active_image(api)
        iid = image["id"]
        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        scrubber = services_of(server).scrubber
        assert scrubber is not None
        report = await scrubber.run_once()
        assert report.scrubbed == [] and report.failed == []
        assert data_path(server, iid).exists()
        assert (await row(server, iid))["status"] == "pending_delete"

        await asyncio.sleep(1.1)
        report = await scrubber.run_once()
        assert report.scrubbed == [iid]
        assert not data_path(server, iid).exists()
        stored = await row(server, iid)
        assert (stored["status"], stored["deleted"], stored["locations"]) == ("deleted", True, [])
        # Nothing left to do, and a deleted image cannot be restored.
        assert (await scrubber.run_once()).scrubbed == []
        with pytest.raises(InvalidStatusTransition, match="cannot restore the image from deleted to active"):
            await services_of(server).catalog.restore_image(iid)
    finally:
        await stop(server, session)


async def test_restore_brings_the_image_back_with_its_data(tmp_path: Path, database_url: str) -> None:
    server, api, session = await start(tmp_path, database_url)
    try:
        image = await active_image(api, name="precious", tags=["t1"])
        iid = image["id"]
        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        await services_of(server).catalog.restore_image(iid)

        shown = (await api.call("GET", f"/v2/images/{iid}", as_=MEMBER_A)).json
        assert shown["status"] == "active"
        assert (shown["name"], shown["size"], shown["checksum"], shown["os_hash_value"]) == (
            "precious", len(DATA), image["checksum"], image["os_hash_value"])
        # As in Glance, the image's tags (and properties, members) went with the delete.
        assert shown["tags"] == []
        body = (await api.call("GET", f"/v2/images/{iid}/file", as_=MEMBER_A)).body
        assert hashlib.md5(body).hexdigest() == image["checksum"] == hashlib.md5(DATA).hexdigest()
        assert hashlib.sha512(body).hexdigest() == image["os_hash_value"]
        assert iid in await api.list_ids()
        # A scrub finds nothing, and the restored image deletes as any other.
        assert (await services_of(server).scrubber.run_once()).scrubbed == []
        assert data_path(server, iid).exists()
        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        assert (await services_of(server).scrubber.run_once()).scrubbed == [iid]
        assert not data_path(server, iid).exists()
    finally:
        await stop(server, session)


async def test_restore_refuses_images_not_pending_delete(tmp_path: Path, database_url: str) -> None:
    server, api, session = await start(tmp_path, database_url)
    try:
        catalog = services_of(server).catalog
        image = await active_image(api)
        with pytest.raises(InvalidStatusTransition) as info:
            await catalog.restore_image(image["id"])
        assert info.value.message == "cannot restore the image from active to active (wanted from_state=pending_delete)"
        queued = await api.create()
        with pytest.raises(InvalidStatusTransition, match="from queued to active"):
            await catalog.restore_image(queued["id"])
        with pytest.raises(DoesNotExist, match="No image found with ID"):
            await catalog.restore_image("00000000-0000-0000-0000-000000000000")
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json["status"] == "active"
    finally:
        await stop(server, session)


async def test_two_nodes_scrub_each_image_exactly_once(tmp_path: Path, database_url: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Two nodes (own Services, own cache) on one catalogue and one shared file store directory."""
    shared = tmp_path / "shared-store"
    a, api_a, session_a = await start(tmp_path, database_url, "a", shared, scrub_pool_size="3")
    b, api_b, session_b = await start(tmp_path, database_url, "b", shared, scrub_pool_size="3")
    try:
        ids = [(await active_image(api_a, data=DATA[:1000 + n]))["id"] for n in range(12)]
        for n, iid in enumerate(ids):
            api = api_a if n % 2 else api_b
            assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        assert all(data_path(a, iid).exists() for iid in ids)

        caplog.set_level(logging.INFO, logger="streamd.pipeline.scrubber")
        first, second = await asyncio.gather(services_of(a).scrubber.run_once(), services_of(b).scrubber.run_once())
        assert not first.failed and not second.failed
        assert not set(first.scrubbed) & set(second.scrubbed)
        assert sorted(first.scrubbed + second.scrubbed) == sorted(ids)
        deletes = [r.getMessage() for r in caplog.records if "scrubber deleted the data of image" in r.getMessage()]
        for iid in ids:
            assert sum(iid in line for line in deletes) == 1, deletes
        for iid in ids:
            assert not data_path(a, iid).exists()
            assert (await row(a, iid))["status"] == "deleted"
    finally:
        await stop(a, session_a)
        await stop(b, session_b)


async def test_a_dead_nodes_claim_is_finished_by_the_next_scrub(tmp_path: Path, database_url: str) -> None:
    """A node that deleted the data and died before marking the image deleted: the claim expires,
    the next scrub deletes what is (not) left and marks the image deleted."""
    server, api, session = await start(tmp_path, database_url)
    try:
        services = services_of(server)
        image = await active_image(api)
        iid = image["id"]
        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        claim = await services.catalog.claim_scrub(iid, 0, 300)
        assert claim is not None and [loc.store for loc in claim.locations] == ["fs"]
        assert await services.catalog.claim_scrub(iid, 0, 300) is None  # one claim at a time
        await services.stores.get("fs").delete(claim.locations[0].url)
        # ... and the node dies here. Restore is refused: the data is going.
        with pytest.raises(InvalidStatusTransition, match="from scrubbing to active"):
            await services.catalog.restore_image(iid)

        scrubber = Scrubber(services.catalog, services.stores, None, scrub_time=0, claim_timeout=0.5)
        assert (await scrubber.run_once()).scrubbed == []  # the claim is still fresh
        await asyncio.sleep(0.6)
        assert (await scrubber.run_once()).scrubbed == [iid]
        assert (await row(server, iid))["status"] == "deleted"
        # The dead node, were it to wake up, can no longer touch the image.
        with pytest.raises(InvalidStatusTransition, match="taken over"):
            await services.catalog.finish_scrub(claim)
    finally:
        await stop(server, session)


async def test_in_daemon_scrubber_runs_every_wakeup_time(tmp_path: Path, database_url: str) -> None:
    server, api, session = await start(tmp_path, database_url, wakeup_time="1", scrub_time="0")
    try:
        assert "scrubber" in services_of(server).jobs.names
        image = await active_image(api)
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
        for _ in range(60):
            if not data_path(server, image["id"]).exists():
                break
            await asyncio.sleep(0.1)
        assert not data_path(server, image["id"]).exists()
        for _ in range(20):
            if (await row(server, image["id"]))["status"] == "deleted":
                break
            await asyncio.sleep(0.1)
        assert (await row(server, image["id"]))["status"] == "deleted"
    finally:
        await stop(server, session)


async def test_without_delayed_delete_data_goes_at_once(tmp_path: Path, database_url: str) -> None:
    server, api, session = await start(tmp_path, database_url, delayed_delete="false")
    try:
        assert "scrubber" not in services_of(server).jobs.names
        image = await active_image(api)
        assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
        assert not data_path(server, image["id"]).exists()
        assert (await row(server, image["id"]))["status"] == "deleted"
    finally:
        await stop(server, session)


def scrub_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "streamd", "scrub", "--config", str(config), *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def node_config(tmp_path: Path, name: str, database_url: str, shared: Path) -> Path:
    return write_config(tmp_path / f"{name}.conf", (
        f"[DEFAULT]\ndata_dir = {tmp_path / name}\ndelayed_delete = true\nscrub_time = 0\nscrub_pool_size = 2\n"
        f"[fs]\nfilesystem_store_datadir = {shared}\n[database]\nconnection = {database_url}\n"))


async def test_streamd_scrub_processes_and_restore(tmp_path: Path, database_url: str) -> None:
    """Two `streamd scrub` processes at once (cron on two nodes), and `streamd scrub --restore`."""
    shared = tmp_path / "shared-store"
    server, api, session = await start(tmp_path, database_url, "api", shared)
    try:
        ids = [(await active_image(api, data=DATA[:5000 + n]))["id"] for n in range(10)]
        keep = await active_image(api)
        for iid in ids + [keep["id"]]:
            assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204

        conf1, conf2 = (node_config(tmp_path, n, database_url, shared) for n in ("n1", "n2"))
        restore = scrub_cli(conf1, "--restore", keep["id"])
        out, err = await asyncio.to_thread(restore.communicate, timeout=60)
        assert restore.returncode == 0, err
        assert out.strip() == f"Image {keep['id']} restored to active."

        procs = [scrub_cli(conf1), scrub_cli(conf2)]
        outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e for _, e in outputs]
        lines = [line for out, _ in outputs for line in out.splitlines()]
        assert sorted(lines) == sorted(f"scrubbed {iid}" for iid in ids)  # each once, by one of them
        assert not any(data_path(server, iid).exists() for iid in ids)

        body = (await api.call("GET", f"/v2/images/{keep['id']}/file", as_=MEMBER_A)).body
        assert hashlib.md5(body).hexdigest() == keep["checksum"]

        again = scrub_cli(conf2, "--restore", keep["id"])
        out, err = await asyncio.to_thread(again.communicate, timeout=60)
        assert again.returncode == 1
        assert err.strip() == ("streamd scrub: ERROR: cannot restore the image from active to active "
                               "(wanted from_state=pending_delete)")
        gone = scrub_cli(conf2, "--restore", ids[0])
        out, err = await asyncio.to_thread(gone.communicate, timeout=60)
        assert gone.returncode == 1 and "from deleted to active" in err
    finally:
        await stop(server, session)


async def test_a_live_claim_is_renewed_and_not_taken_over(tmp_path: Path, database_url: str) -> None:
    """While a (long) delete runs, the holder renews its claim: a scrubber that would take over a
    dead node's claim after 0.6 s never gets this one, and the holder finishes."""
    from streamd.pipeline.scrubber import _ClaimHolder

    server, api, session = await start(tmp_path, database_url)
    try:
        services = services_of(server)
        image = await active_image(api)
        iid = image["id"]
        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        claim = await services.catalog.claim_scrub(iid, 0, 0.6)
        assert claim is not None
        other = Scrubber(services.catalog, services.stores, None, scrub_time=0, claim_timeout=0.6)
        holder = _ClaimHolder(services.catalog, claim, 0.1)
        async with holder.kept_alive():
            for _ in range(15):  # 1.5 s: well past the claim timeout
                await asyncio.sleep(0.1)
                assert (await other.run_once()).scrubbed == []
            await services.stores.get("fs").delete(claim.locations[0].url)
            await holder.location_gone(claim.locations[0])
            await holder.finish()
        assert (await row(server, iid))["status"] == "deleted"
    finally:
        await stop(server, session)


async def test_restore_on_one_node_races_a_scrub_on_another(tmp_path: Path, database_url: str) -> None:
    """Node A restores images while node B scrubs the same ones, at once: each image ends either
    active with its data intact (the restore won) or deleted with its data gone (the scrub won),
    never active without data nor restored twice; and restored images are never scrubbed later."""
    shared = tmp_path / "shared-store"
    a, api_a, session_a = await start(tmp_path, database_url, "a", shared)
    b, api_b, session_b = await start(tmp_path, database_url, "b", shared)
    try:
        images = [await active_image(api_a, data=DATA[:2000 + n]) for n in range(10)]
        ids = [i["id"] for i in images]
        for n, iid in enumerate(ids):
            assert (await (api_a if n % 2 else api_b).call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204

        async def restore(iid: str) -> bool:
            try:
                await services_of(a).catalog.restore_image(iid)
            except InvalidStatusTransition:
                return False
            return True

        *restored, scrub = await asyncio.gather(*(restore(iid) for iid in ids), services_of(b).scrubber.run_once())
        assert not scrub.failed
        for image, won in zip(images, restored):
            iid = image["id"]
            state = await row(a, iid)
            if won:
                assert iid not in scrub.scrubbed
                assert state["status"] == "active"
                body = (await api_b.call("GET", f"/v2/images/{iid}/file", as_=MEMBER_A)).body
                assert hashlib.md5(body).hexdigest() == image["checksum"]
            else:
                assert iid in scrub.scrubbed
                assert state["status"] == "deleted" and not data_path(a, iid).exists()
        # A later scrub on either node touches none of the restored images.
        later = await asyncio.gather(services_of(a).scrubber.run_once(), services_of(b).scrubber.run_once())
        assert later[0].scrubbed == later[1].scrubbed == []
        assert all(data_path(a, iid).exists() for iid, won in zip(ids, restored) if won)
    finally:
        await stop(a, session_a)
        await stop(b, session_b)
