"""Create, show, delete, deactivate/reactivate, versions, schemas and errors, over HTTP."""

from __future__ import annotations

import re
import uuid

import pytest

from conftest import ADMIN, MEMBER_A, MEMBER_B, READER_A, ApiClient, both_databases

pytestmark = both_databases


async def test_versions_documents(api: ApiClient) -> None:
    root = await api.call("GET", "/")
    assert root.status == 300
    explicit = await api.call("GET", "/versions")
    assert explicit.status == 200
    versions = {v["id"]: v["status"] for v in explicit.json["versions"]}
    assert [v for v, s in versions.items() if s == "CURRENT"] == ["v2.18"]
    assert {"v2.0", "v2.9", "v2.12", "v2.13", "v2.15"} <= set(versions)
    assert explicit.json["versions"][0]["links"][0]["href"].endswith("/v2/")
    # A listed minor version works as a URL prefix; an unknown one answers with the versions document.
    assert (await api.call("GET", "/v2.12/images", as_=MEMBER_A)).status == 200
    assert (await api.call("GET", "/v2.99/images", as_=MEMBER_A)).status == 300
    assert (await api.call("GET", "/v1/images", as_=MEMBER_A)).status == 300


@pytest.mark.parametrize("name", ["image", "images", "member", "members", "metadefs/namespace"])
async def test_schemas(api: ApiClient, name: str) -> None:
    reply = await api.call("GET", f"/v2/schemas/{name}")
    assert reply.status == 200
    assert reply.json["name"] == name.split("/")[-1]


async def test_image_schema_matches_config(api: ApiClient) -> None:
    schema = (await api.call("GET", "/v2/schemas/image")).json
    assert schema["additionalProperties"] == {"type": "string"}
    assert schema["properties"]["disk_format"]["enum"][0] is None
    assert "qcow2" in schema["properties"]["disk_format"]["enum"]
    assert schema["properties"]["os_distro"]["is_base"] is False


async def test_create_show_and_headers(api: ApiClient) -> None:
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={
        "name": "cirros", "disk_format": "qcow2", "container_format": "bare", "tags": ["a", "b", "a"],
        "os_distro": "cirros", "min_ram": 64})
    assert reply.status == 201
    image = reply.json
    assert reply.headers["Location"].endswith(f"/v2/images/{image['id']}")
    assert reply.headers["OpenStack-image-import-methods"] == "glance-direct,web-download,copy-image"
    assert reply.headers["OpenStack-image-store-ids"] == "fs"
    assert image["status"] == "queued" and image["visibility"] == "shared" and image["os_hidden"] is False
    assert image["owner"] == MEMBER_A["X-Project-Id"]
    assert image["tags"] == ["a", "b"] and image["os_distro"] == "cirros" and image["min_ram"] == 64
    assert image["self"] == f"/v2/images/{image['id']}" and image["file"].endswith("/file")
    shown = await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)
    assert shown.status == 200 and shown.json == image


async def test_client_chosen_id_and_duplicate(api: ApiClient) -> None:
    image_id = str(uuid.uuid4())
    first = await api.create(id=image_id)
    assert first["id"] == image_id
    again = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={"id": image_id})
    assert again.status == 409
    assert "already exists" in again.error["message"]


@pytest.mark.parametrize("attribute", ["status", "checksum", "size", "virtual_size", "created_at",
                                       "updated_at", "os_hash_value", "os_hash_algo", "self", "file",
                                       "schema", "direct_url", "stores"])
async def test_create_refuses_read_only(api: ApiClient, attribute: str) -> None:
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={"name": "x", attribute: "1"})
    assert reply.status == 403
    assert "read-only" in reply.error["message"]
    assert await api.list_ids() == []


@pytest.mark.parametrize("attribute", ["location", "deleted", "deleted_at", "os_glance_import_task", "os_glance_x"])
async def test_create_refuses_reserved(api: ApiClient, attribute: str) -> None:
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={attribute: "1"})
    assert reply.status == 403
    assert "reserved" in reply.error["message"]


@pytest.mark.parametrize("body,status", [
    ({"name": "x" * 256}, 400),
    ({"disk_format": "floppy"}, 400),
    ({"visibility": "everyone"}, 400),
    ({"min_ram": "lots"}, 400),
    ({"min_disk": -1}, 400),
    ({"protected": "yes"}, 400),
    ({"custom": 5}, 400),
    ({"tags": ["t" * 256]}, 400),
    ({"id": "not-a-uuid"}, 400),
    ({"owner": "someone-else"}, 403),
    ({"visibility": "public"}, 403),
])
async def test_create_bad_input(api: ApiClient, body: dict, status: int) -> None:
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body=body)
    assert reply.status == status, reply.body
    assert reply.error["code"] == status and reply.error["message"]
    assert await api.list_ids(as_=ADMIN) == []


async def test_create_malformed_json_and_reader(api: ApiClient) -> None:
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, data=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert reply.status == 400 and "JSON" in reply.error["message"]
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, data=b"[1, 2]",
                           headers={"Content-Type": "application/json"})
    assert reply.status == 400
    reply = await api.call("POST", "/v2/images", as_=READER_A, json_body={"name": "x"})
    assert reply.status == 403
    assert await api.list_ids(as_=ADMIN) == []


async def test_admin_may_create_public_and_for_other_owner(api: ApiClient) -> None:
    image = await api.create(as_=ADMIN, visibility="public", owner="someone")
    assert image["visibility"] == "public" and image["owner"] == "someone"


async def test_property_and_tag_quotas_on_create(tmp_path, database_url: str) -> None:
    from conftest import make_config, start_api

    server, client, session = await start_api(make_config(
        tmp_path, database_url, DEFAULT={"image_property_quota": "2", "image_tag_quota": "1"}))
    try:
        ok = await client.call("POST", "/v2/images", as_=MEMBER_A, json_body={"p1": "1", "p2": "2"})
        assert ok.status == 201
        over = await client.call("POST", "/v2/images", as_=MEMBER_A, json_body={"p1": "1", "p2": "2", "p3": "3"})
        assert over.status == 413
        over = await client.call("POST", "/v2/images", as_=MEMBER_A, json_body={"tags": ["a", "b"]})
        assert over.status == 413
        assert len(await client.list_ids()) == 1
    finally:
        await session.close()
        await server.close()


async def test_show_non_uuid_and_unknown_are_404(api: ApiClient) -> None:
    assert (await api.call("GET", "/v2/images/not-a-uuid", as_=MEMBER_A)).status == 404
    reply = await api.call("GET", f"/v2/images/{uuid.uuid4()}", as_=MEMBER_A)
    assert reply.status == 404 and reply.error["title"] == "Not Found"


async def test_delete_and_protected(api: ApiClient) -> None:
    image = await api.create(protected=True)
    reply = await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)
    assert reply.status == 403
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 200
    await api.patch(image["id"], [{"op": "replace", "path": "/protected", "value": False}])
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 204
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 404
    assert (await api.call("DELETE", f"/v2/images/{image['id']}", as_=MEMBER_A)).status == 404
    # A deleted id is never reused.
    again = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={"id": image["id"]})
    assert again.status == 409


async def test_deactivate_reactivate_rules(api: ApiClient) -> None:
    image = await api.create()
    # Only active images can be deactivated; queued is 403 as in Glance.
    reply = await api.call("POST", f"/v2/images/{image['id']}/actions/deactivate", as_=MEMBER_A)
    assert reply.status == 403
    reply = await api.call("POST", f"/v2/images/{image['id']}/actions/reactivate", as_=MEMBER_A)
    assert reply.status == 403


async def test_method_not_allowed_has_allow_and_json(api: ApiClient) -> None:
    reply = await api.call("PUT", "/v2/images", as_=MEMBER_A)
    assert reply.status == 405
    assert "GET" in reply.headers["Allow"] and "POST" in reply.headers["Allow"]
    assert reply.error["code"] == 405


async def test_unknown_route_is_json_404(api: ApiClient) -> None:
    reply = await api.call("GET", "/v2/nothing-here", as_=MEMBER_A)
    assert reply.status == 404
    assert reply.error["code"] == 404


async def test_default_identity_when_none_sent(api: ApiClient) -> None:
    reply = await api.call("POST", "/v2/images", json_body={"name": "anon", "visibility": "public"},
                           headers={"X-Auth-Token": "anything"})
    assert reply.status == 201
    assert reply.json["owner"] == api.config.noauth.default_project_id


async def test_other_project_cannot_see_change_or_delete(api: ApiClient) -> None:
    image = await api.create(visibility="private")
    path = f"/v2/images/{image['id']}"
    assert (await api.call("GET", path, as_=MEMBER_B)).status == 404
    assert (await api.patch(image["id"], [{"op": "replace", "path": "/name", "value": "x"}], as_=MEMBER_B)).status == 404
    assert (await api.call("DELETE", path, as_=MEMBER_B)).status == 404
    assert image["id"] not in await api.list_ids(as_=MEMBER_B)
    shared = await api.create(visibility="public", as_=ADMIN)
    # Visible but not owned: changes are 403.
    assert (await api.patch(shared["id"], [{"op": "replace", "path": "/name", "value": "x"}], as_=MEMBER_B)).status == 403
    assert (await api.call("DELETE", f"/v2/images/{shared['id']}", as_=MEMBER_B)).status == 403
    assert (await api.call("GET", path, as_=ADMIN)).json["name"] is None


async def test_every_response_carries_a_request_id(api: ApiClient) -> None:
    """oslo.middleware's X-Openstack-Request-Id, req-<uuid>, different for each request, errors included."""
    seen = set()
    for method, path in (("GET", "/v2/images"), ("GET", "/v2/images/nope"), ("GET", "/versions")):
        reply = await api.call(method, path, as_=MEMBER_A)
        request_id = reply.headers["X-Openstack-Request-Id"]
        assert re.fullmatch(r"req-[0-9a-f-]{36}", request_id), request_id
        seen.add(request_id)
    assert len(seen) == 3
