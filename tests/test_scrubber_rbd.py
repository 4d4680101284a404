"""Delayed delete on the real Ceph cluster: the RBD image stays until the scrub, a restore gives
it back, and an image whose snapshot has clones waits in pending_delete until they are gone."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import sqlalchemy as sa
from conftest import MEMBER_A, make_config, start_api
from test_rbd_store import ceph_env, rbd, rbd_images

from streamd.api.keys import SERVICES
from streamd.catalog import models as m

DATA = os.urandom(3 * 1024 * 1024 + 17)


def sections(tmp_path: Path) -> dict[str, dict[str, str]]:
    env = ceph_env()
    return {
        "DEFAULT": {"enabled_backends": "fs:file,ceph:rbd", "delayed_delete": "true", "wakeup_time": "0"},
        "glance_store": {"default_backend": "ceph"},
        "ceph": {"rbd_store_ceph_conf": env["CEPH_CONF"], "rbd_store_user": "admin",
                 "rbd_store_pool": env["CEPH_POOL"], "rados_connect_timeout": "10"},
    }


async def status_of(server, image_id: str) -> str:
    async with server.app[SERVICES].catalog.engine.connect() as conn:
        return str(await conn.scalar(sa.select(m.images.c.status).where(m.images.c.id == image_id)))


async def test_rbd_pending_delete_restore_scrub_and_clones(tmp_path: Path) -> None:
    server, api, session = await start_api(make_config(tmp_path, None, **sections(tmp_path)))
    pool = ceph_env()["CEPH_POOL"]
    try:
        scrubber = server.app[SERVICES].scrubber
        image = await api.create()
        iid = image["id"]
        reply = await api.call("PUT", f"/v2/images/{iid}/file", as_=MEMBER_A, data=DATA,
                               headers={"Content-Type": "application/octet-stream"})
        assert reply.status == 204, reply.body
        checksum = (await api.call("GET", f"/v2/images/{iid}", as_=MEMBER_A)).json["checksum"]

        assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
        assert (await api.call("GET", f"/v2/images/{iid}", as_=MEMBER_A)).status == 404
        assert iid in rbd_images(pool)
        await server.app[SERVICES].catalog.restore_image(iid)
        body = (await api.call("GET", f"/v2/images/{iid}/file", as_=MEMBER_A)).body
        assert hashlib.md5(body).hexdigest() == checksum == hashlib.md5(DATA).hexdigest()

        # A clone (a Nova disk) of the protected snapshot: Glance's delayed DELETE still answers
        # 204; the scrub cannot remove the RBD image and leaves it pending_delete, retried later.
        clone = f"clone-{uuid.uuid4().hex[:8]}"
        rbd("clone", f"{pool}/{iid}@snap", f"{pool}/{clone}")
        try:
            assert (await api.call("DELETE", f"/v2/images/{iid}", as_=MEMBER_A)).status == 204
            report = await scrubber.run_once()
            assert (report.scrubbed, report.failed) == ([], [iid])
            assert iid in rbd_images(pool)
            assert await status_of(server, iid) == "pending_delete"
        finally:
            rbd("rm", f"{pool}/{clone}")
        report = await scrubber.run_once()
        assert (report.scrubbed, report.failed) == ([iid], [])
        assert iid not in rbd_images(pool)
        assert await status_of(server, iid) == "deleted"
    finally:
        await session.close()
        await server.close()
