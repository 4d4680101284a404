"""Version negotiation as Glance does it, and the version list tied to the routes it promises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import ADMIN, MEMBER_A, ApiClient, make_config, start_api
from streamd.api.versions import listed_versions

VND = "application/vnd.openstack.images-"

# What each minor version adds (Glance's API history); listing a version promises all of them.
VERSION_ROUTES: dict[str, list[tuple[str, str]]] = {
    "2.10": [("DELETE", "/v2/stores/{store_id}/{image_id}")],
    "2.12": [("GET", "/v2/images/{image_id}/tasks")],
    "2.13": [("GET", "/v2/info/usage")],
    "2.14": [("GET", "/v2/cache"), ("PUT", "/v2/cache/{image_id}"), ("DELETE", "/v2/cache/{image_id}")],
    "2.15": [("GET", "/v2/info/stores/detail")],
    "2.17": [("POST", "/v2/images/{image_id}/locations"), ("GET", "/v2/images/{image_id}/locations")],
    "2.18": [("POST", "/v2/cache/clean"), ("POST", "/v2/cache/prune"), ("GET", "/v2/cache/nodes/{image_id}")],
}
# Versions Glance 33 lists that streamd does not serve yet (none: streamd lists only what it serves).
NOT_YET_SERVED: set[str] = set()


async def test_accept_header_selects_the_version_like_the_url(api: ApiClient) -> None:
    image = await api.create(name="v")
    shown = await api.call("GET", f"/images/{image['id']}", headers={"Accept": VND + "v2.1"})
    assert shown.status == 200 and shown.json["id"] == image["id"]
    listed = await api.call("GET", "/images", headers={"Accept": VND + "v2"})
    assert listed.status == 200 and [i["id"] for i in listed.json["images"]] == [image["id"]]


async def test_an_unknown_version_in_accept_gets_the_versions_document(api: ApiClient) -> None:
    for method in ("GET", "POST"):
        reply = await api.call(method, "/images", headers={"Accept": VND + "v2.99"})
        assert reply.status == 300 and "versions" in reply.json


async def test_accept_versioning_does_not_also_take_a_url_prefix(api: ApiClient) -> None:
    # Glance prepends /v2 to the path as it is: /v2/images becomes /v2/v2/images.
    reply = await api.call("GET", "/v2/images", headers={"Accept": VND + "v2.1"})
    assert reply.status == 404
    assert (await api.call("GET", "/versions", headers={"Accept": VND + "v2.99"})).status == 200


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
async def test_every_listed_version_has_its_routes(tmp_path: Path, cache: bool) -> None:
    config = make_config(tmp_path, None, **({} if cache else {"DEFAULT": {"image_cache_dir": "none"}}))
    server, client, session = await start_api(config)
    try:
        routes = {(r.method, r.resource.canonical.replace("{version}", "v2"))
                  for r in server.app.router.routes() if r.resource is not None}
        routes |= {(m, "/v2" + p) for m, p in routes}  # the unprefixed twins (media-type versioning)
        listed = {v for v, _ in listed_versions(config)}
        missing = {v for v in listed for route in VERSION_ROUTES.get(v, ()) if route not in routes}
        assert missing == set()
        assert not NOT_YET_SERVED & listed
        # When the routes of a left-out version exist, it must be listed (and NOT_YET_SERVED emptied).
        assert all(any(r not in routes for r in VERSION_ROUTES[v]) for v in NOT_YET_SERVED)
        versions = (await client.call("GET", "/versions")).json["versions"]
        assert {v["id"] for v in versions} == {f"v{v}" for v in listed}
        assert [v["id"] for v in versions if v["status"] == "CURRENT"] == (["v2.18"] if cache else ["v2.17"])
    finally:
        await session.close()
        await server.close()




async def test_usage_is_empty_without_keystone_limits(api: ApiClient) -> None:
    reply = await api.call("GET", "/v2/info/usage", as_=MEMBER_A)
    assert reply.status == 200 and reply.json == {"usage": {}}


async def test_cache_nodes_lists_the_nodes_caching_an_image(tmp_path: Path) -> None:
    server, client, session = await start_api(make_config(tmp_path, None, DEFAULT={"peer_url": "http://node-a:9292", "peer_token": "t0ken"}))
    try:
        image = await client.create(as_=ADMIN, name="n")
        assert (await client.call("PUT", f"/v2/images/{image['id']}/file", as_=ADMIN, data=b"x" * 4096,
                                  headers={"Content-Type": "application/octet-stream"})).status == 204
        assert (await client.call("GET", f"/v2/cache/nodes/{image['id']}", as_=ADMIN)).json == []
        assert (await client.call("GET", f"/v2/images/{image['id']}/file", as_=ADMIN)).status == 200
        for _ in range(200):  # the fill commits just after the body went out
            nodes = await client.call("GET", f"/v2/cache/nodes/{image['id']}", as_=ADMIN)
            if nodes.json:
                break
            await asyncio.sleep(0.025)
        assert nodes.status == 200 and nodes.json == ["http://node-a:9292"]
        assert (await client.call("GET", f"/v2/cache/nodes/{image['id']}", as_=MEMBER_A)).status == 403
        gone = await client.call("GET", "/v2/cache/nodes/00000000-0000-0000-0000-000000000000", as_=ADMIN)
        assert gone.status == 404 and "Image 00000000-0000-0000-0000-000000000000 not found." in gone.error["message"]
    finally:
        await session.close()
        await server.close()
