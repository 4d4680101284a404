"""``/v2/metadefs`` on the real app over a real catalogue (SQLite and PostgreSQL).

Glance 33's rules: names unique (409), deleting a namespace deletes its contents, ``protected``
namespaces refuse deletion (403), private namespaces of another project are invisible (404),
reads need the reader role, writes are admin-only by default (a policy file may open them to
project members). The same calls against real Glance are in test_metadefs_parity.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import yaml

from conftest import (ADMIN, MEMBER_A, MEMBER_B, PROJECT_A, PROJECT_B, PYTHON, READER_A, ApiClient, Reply,
                      both_databases, make_config, start_api)
from streamd.catalog import Catalog
from streamd.catalog.metadef_files import SHIPPED_DEFINITIONS, read_definitions, write_definitions

pytestmark = both_databases

NS = "/v2/metadefs/namespaces"
NOBODY = {"X-Project-Id": PROJECT_A, "X-User-Id": "nobody", "X-Roles": "observer"}
GLANCE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def error_of(reply: Reply) -> dict[str, Any]:
    """The error, its message without webob's HTML tail (Glance's JSON errors carry it)."""
    error = reply.error
    error["message"] = error["message"].removesuffix("<br /><br />\n\n\n")
    return error


async def create_ns(api: ApiClient, name: str, **body: Any) -> dict[str, Any]:
    reply = await api.call("POST", NS, as_=ADMIN, json_body={"namespace": name, **body})
    assert reply.status == 201, reply.body
    return reply.json  # type: ignore[no-any-return]


async def get(api: ApiClient, path: str, as_: dict[str, str] = ADMIN) -> Any:
    reply = await api.call("GET", path, as_=as_)
    assert reply.status == 200, reply.body
    return reply.json


async def test_namespace_crud(api: ApiClient) -> None:
    created = await api.call("POST", NS, as_=ADMIN, json_body={
        "namespace": "ns-1", "display_name": "One", "description": "first", "visibility": "public"})
    assert created.status == 201
    assert created.headers["Location"] == f"{NS}/ns-1"
    body = created.json
    assert GLANCE_TIME.match(body.pop("created_at")) and GLANCE_TIME.match(body.pop("updated_at"))
    assert body == {"namespace": "ns-1", "display_name": "One", "description": "first", "visibility": "public",
                    "protected": False, "owner": ADMIN["X-Project-Id"], "self": f"{NS}/ns-1",
                    "schema": "/v2/schemas/metadefs/namespace"}
    shown = await get(api, f"{NS}/ns-1")
    assert shown["display_name"] == "One" and "objects" not in shown and "tags" not in shown

    # PUT replaces: what is not given goes back to create's defaults.
    updated = await api.call("PUT", f"{NS}/ns-1", as_=ADMIN, json_body={"namespace": "ns-2", "protected": True})
    assert updated.status == 200
    assert updated.json["namespace"] == "ns-2" and updated.json["visibility"] == "private"
    assert "display_name" not in updated.json and updated.json["protected"] is True
    assert error_of((await api.call("GET", f"{NS}/ns-1", as_=ADMIN))) == {
        "code": 404, "title": "Not Found", "message": "Metadata definition namespace=ns-1 was not found."}

    refused = await api.call("DELETE", f"{NS}/ns-2", as_=ADMIN)
    assert error_of(refused)["code"] == 403
    assert error_of(refused)["message"] == "Metadata definition namespace ns-2 is protected and cannot be deleted."
    await api.call("PUT", f"{NS}/ns-2", as_=ADMIN, json_body={"namespace": "ns-2"})
    assert (await api.call("DELETE", f"{NS}/ns-2", as_=ADMIN)).status == 204
    assert error_of((await api.call("DELETE", f"{NS}/ns-2", as_=ADMIN)))["message"] == "Namespace ns-2 not found"


async def test_duplicates_are_conflicts(api: ApiClient) -> None:
    await create_ns(api, "dup")
    await create_ns(api, "other")
    again = await api.call("POST", NS, as_=ADMIN, json_body={"namespace": "dup"})
    assert error_of(again) == {"code": 409, "title": "Conflict",
                           "message": "The metadata definition namespace=dup already exists."}
    rename = await api.call("PUT", f"{NS}/other", as_=ADMIN, json_body={"namespace": "dup"})
    assert error_of(rename)["code"] == 409
    assert (await api.call("POST", f"{NS}/dup/objects", as_=ADMIN, json_body={"name": "o"})).status == 201
    assert error_of((await api.call("POST", f"{NS}/dup/objects", as_=ADMIN, json_body={"name": "o"})))["code"] == 409
    # The same object name in another namespace is fine.
    assert (await api.call("POST", f"{NS}/other/objects", as_=ADMIN, json_body={"name": "o"})).status == 201
    prop = {"name": "p", "title": "P", "type": "string"}
    assert (await api.call("POST", f"{NS}/dup/properties", as_=ADMIN, json_body=prop)).status == 201
    assert error_of((await api.call("POST", f"{NS}/dup/properties", as_=ADMIN, json_body=prop)))["code"] == 409
    assert (await api.call("POST", f"{NS}/dup/tags/t", as_=ADMIN)).status == 201
    assert error_of((await api.call("POST", f"{NS}/dup/tags/t", as_=ADMIN)))["code"] == 409
    # A failed nested create leaves nothing behind.
    nested = await api.call("POST", NS, as_=ADMIN, json_body={
        "namespace": "half", "objects": [{"name": "x"}, {"name": "x"}]})
    assert error_of(nested)["code"] == 409
    assert (await api.call("GET", f"{NS}/half", as_=ADMIN)).status == 404


async def test_bad_bodies(api: ApiClient) -> None:
    assert error_of((await api.call("POST", NS, as_=ADMIN)))["message"] == "Body expected in request."
    ro = await api.call("POST", NS, as_=ADMIN, json_body={"namespace": "x", "self": "/here"})
    assert error_of(ro) == {"code": 403, "title": "Forbidden", "message": "Attribute 'self' is read-only."}
    bad = await api.call("POST", NS, as_=ADMIN, json_body={"namespace": "x", "visibility": "shared"})
    assert error_of(bad)["code"] == 400
    assert error_of(bad)["message"].startswith(
        "Provided object does not match schema 'namespace': 'shared' is not one of ['public', 'private']")
    await create_ns(api, "ns")
    no_type = await api.call("POST", f"{NS}/ns/properties", as_=ADMIN, json_body={"name": "p", "title": "P"})
    assert error_of(no_type)["message"].startswith(
        "Provided object does not match schema 'property': 'type' is a required property")
    assert error_of((await api.call("GET", NS + "?sort_dir=sideways", as_=ADMIN)))["message"] == \
        "Invalid sort direction: sideways"
    assert error_of((await api.call("GET", NS + "?limit=-1", as_=ADMIN)))["message"] == "limit param must be positive"
    assert error_of((await api.call("GET", NS + "?limit=many", as_=ADMIN)))["code"] == 400
    assert error_of((await api.call("GET", NS + "?sort_key=colour", as_=ADMIN)))["code"] == 400


async def test_nested_create_show_and_prefix(api: ApiClient) -> None:
    created = await create_ns(
        api, "hw", visibility="public",
        resource_type_associations=[{"name": "OS::Nova::Flavor", "prefix": "hw:", "properties_target": "x"}],
        properties={"cpu_policy": {"title": "CPU policy", "type": "string", "enum": ["shared", "dedicated"]}},
        objects=[{"name": "numa", "required": ["nodes"], "properties": {"nodes": {"title": "N", "type": "integer"}}}],
        tags=[{"name": "fast"}])
    assert created["objects"] == [{"name": "numa", "required": ["nodes"],
                                   "properties": {"nodes": {"title": "N", "type": "integer"}}}]
    assert created["tags"] == [{"name": "fast"}]
    shown = await get(api, f"{NS}/hw?resource_type=OS::Nova::Flavor")
    assert set(shown["properties"]) == {"hw:cpu_policy"}
    assert shown["objects"][0]["required"] == ["hw:nodes"]
    assert set(shown["objects"][0]["properties"]) == {"hw:nodes"}
    assert shown["tags"] == [{"name": "fast"}]
    [association] = shown["resource_type_associations"]
    assert association["name"] == "OS::Nova::Flavor" and association["prefix"] == "hw:"
    plain = await get(api, f"{NS}/hw")
    assert set(plain["properties"]) == {"cpu_policy"}
    # The property by its prefixed name, through the resource type.
    prop = await get(api, f"{NS}/hw/properties/hw:cpu_policy?resource_type=OS::Nova::Flavor")
    assert prop["name"] == "cpu_policy" and prop["enum"] == ["shared", "dedicated"]
    listed = await get(api, NS + "?resource_types=OS::Nova::Flavor")
    assert [n["namespace"] for n in listed["namespaces"]] == ["hw"]
    assert listed["namespaces"][0]["resource_type_associations"][0]["name"] == "OS::Nova::Flavor"


async def test_cascades(api: ApiClient) -> None:
    body = {"objects": [{"name": "o"}], "tags": [{"name": "t"}],
            "properties": {"p": {"title": "P", "type": "string"}},
            "resource_type_associations": [{"name": "OS::Glance::Image"}]}
    await create_ns(api, "c", **body)
    for kind in ("objects", "properties", "tags"):
        assert (await api.call("DELETE", f"{NS}/c/{kind}", as_=ADMIN)).status == 204
    assert (await get(api, f"{NS}/c/objects"))["objects"] == []
    assert (await get(api, f"{NS}/c/properties")) == {"properties": {}}
    assert (await get(api, f"{NS}/c/tags")) == {"tags": []}
    # Deleting the namespace deletes the rest; a namespace of the same name starts empty.
    await api.call("POST", f"{NS}/c/objects", as_=ADMIN, json_body={"name": "o2"})
    assert (await api.call("DELETE", f"{NS}/c", as_=ADMIN)).status == 204
    assert (await api.call("GET", f"{NS}/c/objects/o2", as_=ADMIN)).status == 404
    await create_ns(api, "c")
    assert (await get(api, f"{NS}/c/objects"))["objects"] == []
    assert (await get(api, f"{NS}/c/resource_types")) == {"resource_type_associations": []}
    # The resource type itself outlives the namespace.
    assert "OS::Glance::Image" in [t["name"] for t in (await get(api, "/v2/metadefs/resource_types"))["resource_types"]]
    # A protected namespace keeps its contents.
    await create_ns(api, "keep", protected=True, tags=[{"name": "t"}])
    for kind in ("objects", "properties", "tags"):
        reply = await api.call("DELETE", f"{NS}/keep/{kind}", as_=ADMIN)
        assert error_of(reply)["code"] == 403
    assert (await get(api, f"{NS}/keep/tags")) == {"tags": [{"name": "t"}]}


async def test_visibility_between_projects(api: ApiClient) -> None:
    await create_ns(api, "pub-b", visibility="public", owner=PROJECT_B)
    await create_ns(api, "priv-b", owner=PROJECT_B)
    await create_ns(api, "priv-a", owner=PROJECT_A, tags=[{"name": "t"}])
    names = lambda doc: sorted(n["namespace"] for n in doc["namespaces"])  # noqa: E731
    assert names(await get(api, NS, as_=MEMBER_A)) == ["priv-a", "pub-b"]
    assert names(await get(api, NS, as_=MEMBER_B)) == ["priv-b", "pub-b"]
    assert names(await get(api, NS, as_=ADMIN)) == ["priv-a", "priv-b", "pub-b"]
    assert names(await get(api, NS + "?visibility=private", as_=READER_A)) == ["priv-a"]
    # Another project's private namespace does not exist for A, whatever the call.
    assert error_of((await api.call("GET", f"{NS}/priv-b", as_=MEMBER_A)))["message"] == "The resource could not be found."
    for method, path in (("GET", "/tags"), ("GET", "/tags/t"), ("GET", "/objects"), ("POST", "/tags/x"),
                         ("DELETE", ""), ("GET", "/resource_types"), ("GET", "/properties")):
        reply = await api.call(method, f"{NS}/priv-b{path}", as_=MEMBER_A)
        assert error_of(reply)["code"] == 404, (method, path)
    assert (await get(api, f"{NS}/priv-a/tags/t", as_=READER_A))["name"] == "t"
    assert (await get(api, f"{NS}/pub-b", as_=MEMBER_A))["owner"] == PROJECT_B
    # Without the reader role nothing is visible, not even public namespaces.
    assert (await api.call("GET", f"{NS}/pub-b", as_=NOBODY)).status == 404
    assert (await api.call("GET", NS, as_=NOBODY)).status == 404


async def test_writes_are_admin_only(api: ApiClient) -> None:
    await create_ns(api, "own", owner=PROJECT_A, objects=[{"name": "o"}], tags=[{"name": "t"}],
                    properties={"p": {"title": "P", "type": "string"}})
    writes = [
        ("POST", NS, {"namespace": "mine"}, "add_metadef_namespace"),
        ("PUT", f"{NS}/own", {"namespace": "own"}, "modify_metadef_namespace"),
        ("DELETE", f"{NS}/own", None, "delete_metadef_namespace"),
        ("DELETE", f"{NS}/own/objects", None, "delete_metadef_namespace"),
        ("POST", f"{NS}/own/objects", {"name": "o2"}, "add_metadef_object"),
        ("PUT", f"{NS}/own/objects/o", {"name": "o"}, "modify_metadef_object"),
        ("DELETE", f"{NS}/own/objects/o", None, "delete_metadef_object"),
        ("POST", f"{NS}/own/properties", {"name": "q", "title": "Q", "type": "string"}, "add_metadef_property"),
        ("PUT", f"{NS}/own/properties/p", {"name": "p", "title": "P", "type": "string"}, "modify_metadef_property"),
        ("DELETE", f"{NS}/own/properties/p", None, "remove_metadef_property"),
        ("POST", f"{NS}/own/tags/t2", None, "add_metadef_tag"),
        ("POST", f"{NS}/own/tags", {"tags": [{"name": "t"}, {"name": "t3"}]}, "add_metadef_tags"),
        ("PUT", f"{NS}/own/tags/t", {"name": "t4"}, "modify_metadef_tag"),
        ("DELETE", f"{NS}/own/tags/t3", None, "delete_metadef_tag"),
        ("POST", f"{NS}/own/resource_types", {"name": "OS::Glance::Image"}, "add_metadef_resource_type_association"),
    ]
    for who in (MEMBER_A, READER_A):
        for method, path, body, rule in writes:
            reply = await api.call(method, path, as_=who, json_body=body,
                                   headers={"Content-Type": "application/json"})
            assert error_of(reply) == {"code": 403, "title": "Forbidden",
                                   "message": f"You are not authorized to complete {rule} action."}, (who, path)
    # Nothing changed; the admin may do all of it.
    shown = await get(api, f"{NS}/own", as_=READER_A)
    assert [o["name"] for o in shown["objects"]] == ["o"] and shown["tags"] == [{"name": "t"}]
    for method, path, body, _ in writes[4:] + [writes[3], writes[1], writes[2]]:
        reply = await api.call(method, path, as_=ADMIN, json_body=body, headers={"Content-Type": "application/json"})
        assert reply.status in (200, 201, 204), (path, reply.body)


# Opening the metadefs API to project members (issue 14 item 4), the way Glance 33's own rules
# build a project-member check (glance/policies/base.py PROJECT_MEMBER): a rule of the file's own
# naming, every write action pointed at it. Its target is the namespace's owner (the caller's
# project before there is one), so a member writes in their own project only.
OPEN_METADEFS = {
    "metadef_project_member": "rule:metadef_admin or (role:member and project_id:%(project_id)s)",
    **{rule: "rule:metadef_project_member" for rule in (
        "add_metadef_namespace", "modify_metadef_namespace", "delete_metadef_namespace",
        "add_metadef_object", "modify_metadef_object", "delete_metadef_object",
        "add_metadef_property", "modify_metadef_property", "remove_metadef_property",
        "add_metadef_tag", "modify_metadef_tag", "delete_metadef_tag", "add_metadef_tags", "delete_metadef_tags",
        "add_metadef_resource_type_association", "remove_metadef_resource_type_association")},
}


def _writes(ns: str) -> list[tuple[str, str, Any, str]]:
    """Every metadef write on namespace ``ns`` (holding object o, property p, tag t), with its rule."""
    path = f"{NS}/{ns}"
    return [
        ("PUT", path, {"namespace": ns, "description": "changed"}, "modify_metadef_namespace"),
        ("POST", f"{path}/objects", {"name": "o2"}, "add_metadef_object"),
        ("PUT", f"{path}/objects/o", {"name": "o", "description": "changed"}, "modify_metadef_object"),
        ("POST", f"{path}/properties", {"name": "q", "title": "Q", "type": "string"}, "add_metadef_property"),
        ("PUT", f"{path}/properties/p", {"name": "p", "title": "P2", "type": "string"}, "modify_metadef_property"),
        ("POST", f"{path}/tags/t2", None, "add_metadef_tag"),
        ("PUT", f"{path}/tags/t2", {"name": "t3"}, "modify_metadef_tag"),
        ("POST", f"{path}/tags", {"tags": [{"name": "t4"}, {"name": "t5"}]}, "add_metadef_tags"),
        ("POST", f"{path}/resource_types", {"name": "OS::Glance::Image"}, "add_metadef_resource_type_association"),
        ("DELETE", f"{path}/resource_types/OS::Glance::Image", None, "remove_metadef_resource_type_association"),
        ("DELETE", f"{path}/tags/t4", None, "delete_metadef_tag"),
        # Glance checks delete_metadef_namespace first here, then delete_metadef_tags.
        ("DELETE", f"{path}/tags", None, "delete_metadef_namespace"),
        ("DELETE", f"{path}/objects/o", None, "delete_metadef_object"),
        ("DELETE", f"{path}/properties/p", None, "remove_metadef_property"),
        ("DELETE", path, None, "delete_metadef_namespace"),
    ]


async def test_a_policy_file_opens_metadef_writes_to_members_of_the_owning_project(
        tmp_path: Path, database_url: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(OPEN_METADEFS))
    server, api, session = await start_api(make_config(tmp_path, database_url,
                                                       oslo_policy={"policy_file": str(policy)}))
    try:
        contents = {"objects": [{"name": "o"}], "tags": [{"name": "t"}],
                    "properties": {"p": {"title": "P", "type": "string"}}}
        await create_ns(api, "b-private", owner=PROJECT_B, **contents)
        await create_ns(api, "b-public", owner=PROJECT_B, visibility="public", **contents)
        # A member creates a namespace (with contents) in their own project: its owner is theirs.
        made = await api.call("POST", NS, as_=MEMBER_A, json_body={"namespace": "a-own", **contents})
        assert made.status == 201, made.body
        assert made.json["owner"] == PROJECT_A
        a_public = await api.call("POST", NS, as_=MEMBER_A, json_body={"namespace": "a-pub", "visibility": "public",
                                                                        **contents})
        assert a_public.status == 201, a_public.body

        # Nobody outside project A may write in A's namespaces: A's reader (403), B's member
        # (404 for the private one they cannot see, 403 for the public one).
        reader_writes = _writes("a-own") + [("POST", NS, {"namespace": "r-ns"}, "add_metadef_namespace")]
        for method, path, body, rule in reader_writes:
            reply = await api.call(method, path, as_=READER_A, json_body=body,
                                   headers={"Content-Type": "application/json"})
            assert error_of(reply) == {"code": 403, "title": "Forbidden",
                                       "message": f"You are not authorized to complete {rule} action."}, (path, rule)
        for ns, code in (("a-own", 404), ("a-pub", 403)):
            for method, path, body, rule in _writes(ns):
                reply = await api.call(method, path, as_=MEMBER_B, json_body=body,
                                       headers={"Content-Type": "application/json"})
                assert error_of(reply)["code"] == code, (ns, path, rule, reply.body)
                if code == 403:
                    assert error_of(reply)["message"] == f"You are not authorized to complete {rule} action."
        # ... and A's member may not write in B's.
        for ns, code in (("b-private", 404), ("b-public", 403)):
            for method, path, body, rule in _writes(ns):
                reply = await api.call(method, path, as_=MEMBER_A, json_body=body,
                                       headers={"Content-Type": "application/json"})
                assert error_of(reply)["code"] == code, (ns, path, rule, reply.body)
        for ns in ("b-private", "b-public", "a-own"):
            shown = await get(api, f"{NS}/{ns}", as_=ADMIN)
            assert [o["name"] for o in shown["objects"]] == ["o"] and shown["tags"] == [{"name": "t"}], ns
            assert list(shown["properties"]) == ["p"] and "description" not in shown, ns

        # Their own: every write goes through, in order, down to deleting the namespace.
        for method, path, body, rule in _writes("a-own"):
            reply = await api.call(method, path, as_=MEMBER_A, json_body=body,
                                   headers={"Content-Type": "application/json"})
            assert reply.status in (200, 201, 204), (path, rule, reply.body)
        assert (await api.call("GET", f"{NS}/a-own", as_=MEMBER_A)).status == 404
        # B's namespaces are as they were.
        assert (await get(api, f"{NS}/b-public", as_=MEMBER_A))["owner"] == PROJECT_B
    finally:
        await session.close()
        await server.close()



async def test_the_issues_metadef_default_recipe_opens_writes_to_anyone_who_sees_the_namespace(
        tmp_path: Path, database_url: str) -> None:
    # Every write rule set to rule:metadef_default (an empty rule) as the issue's recipe says:
    # then, as in Glance 33 (its MetadefAPIPolicy and the visibility check of its database layer),
    # only visibility is left to protect a namespace: another project's private one stays 404,
    # but a reader may write and so may another project's member in a public one. Hence the
    # project-member rule of the test above for opening metadefs to members.
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({rule: "rule:metadef_default" for rule in OPEN_METADEFS
                                      if rule != "metadef_project_member"}))
    server, api, session = await start_api(make_config(tmp_path, database_url,
                                                       oslo_policy={"policy_file": str(policy)}))
    try:
        contents = {"objects": [{"name": "o"}], "tags": [{"name": "t"}],
                    "properties": {"p": {"title": "P", "type": "string"}}}
        await create_ns(api, "b-private", owner=PROJECT_B, **contents)
        await create_ns(api, "b-public", owner=PROJECT_B, visibility="public", **contents)
        for method, path, body, rule in _writes("b-private"):
            reply = await api.call(method, path, as_=MEMBER_A, json_body=body,
                                   headers={"Content-Type": "application/json"})
            assert error_of(reply)["code"] == 404, (path, rule)
        reply = await api.call("POST", f"{NS}/b-public/tags/by-a", as_=READER_A)
        assert reply.status == 201, reply.body
        for method, path, body, rule in _writes("b-public"):
            reply = await api.call(method, path, as_=MEMBER_A, json_body=body,
                                   headers={"Content-Type": "application/json"})
            assert reply.status in (200, 201, 204), (path, rule, reply.body)
        assert (await api.call("GET", f"{NS}/b-public", as_=ADMIN)).status == 404
    finally:
        await session.close()
        await server.close()


async def test_objects_and_properties(api: ApiClient) -> None:
    await create_ns(api, "n")
    prop = {"title": "Hypervisor", "type": "string", "enum": ["kvm", "xen"], "default": "kvm"}
    created = await api.call("POST", f"{NS}/n/objects", as_=ADMIN, json_body={
        "name": "o", "description": "d", "required": ["hv"], "properties": {"hv": prop}})
    assert created.status == 201
    assert created.json["self"] == f"{NS}/n/objects/o" and created.json["properties"] == {"hv": prop}
    bare = await api.call("POST", f"{NS}/n/objects", as_=ADMIN, json_body={"name": "bare"})
    assert "properties" not in bare.json and "required" not in bare.json
    listed = await get(api, f"{NS}/n/objects")
    assert [o["name"] for o in listed["objects"]] == ["bare", "o"]
    assert listed["objects"][0]["properties"] == {} and listed["objects"][0]["required"] == []
    assert listed["schema"] == "v2/schemas/metadefs/objects"  # sic, as Glance
    renamed = await api.call("PUT", f"{NS}/n/objects/o", as_=ADMIN, json_body={"name": "o2", "description": "e"})
    assert renamed.status == 200 and renamed.json["name"] == "o2"
    assert (await get(api, f"{NS}/n/objects/o2"))["properties"] == {}
    assert error_of((await api.call("PUT", f"{NS}/n/objects/o2", as_=ADMIN, json_body={"name": "bare"})))["code"] == 409
    assert error_of((await api.call("GET", f"{NS}/n/objects/o", as_=ADMIN)))["message"] == \
        "Could not find metadata object o"
    assert (await api.call("DELETE", f"{NS}/n/objects/o2", as_=ADMIN)).status == 204

    p = await api.call("POST", f"{NS}/n/properties", as_=ADMIN, json_body={"name": "hv", **prop})
    assert p.status == 201 and p.json == {"name": "hv", **prop}
    assert await get(api, f"{NS}/n/properties/hv") == {"name": "hv", **prop}
    assert await get(api, f"{NS}/n/properties") == {"properties": {"hv": {"name": "hv", **prop}}}
    up = await api.call("PUT", f"{NS}/n/properties/hv", as_=ADMIN,
                        json_body={"name": "hyper", "title": "H", "type": "string"})
    assert up.json == {"name": "hyper", "title": "H", "type": "string"}
    assert error_of((await api.call("GET", f"{NS}/n/properties/hv", as_=ADMIN)))["message"] == "Could not find property hv"
    assert (await api.call("DELETE", f"{NS}/n/properties/hyper", as_=ADMIN)).status == 204
    assert (await api.call("DELETE", f"{NS}/n/properties/hyper", as_=ADMIN)).status == 404


async def test_tags_bulk_and_append(api: ApiClient) -> None:
    await create_ns(api, "t")
    await api.call("POST", f"{NS}/t/tags/old", as_=ADMIN)
    bulk = await api.call("POST", f"{NS}/t/tags", as_=ADMIN, json_body={"tags": [{"name": "a"}, {"name": "b"}]})
    assert bulk.status == 201 and bulk.json == {"tags": [{"name": "a"}, {"name": "b"}]}
    # Without X-Openstack-Append the list replaces the namespace's tags.
    assert sorted(t["name"] for t in (await get(api, f"{NS}/t/tags"))["tags"]) == ["a", "b"]
    appended = await api.call("POST", f"{NS}/t/tags", as_=ADMIN, json_body={"tags": [{"name": "c"}]},
                              headers={"X-Openstack-Append": "True"})
    assert appended.status == 201 and appended.json == {"tags": [{"name": "c"}]}
    assert sorted(t["name"] for t in (await get(api, f"{NS}/t/tags"))["tags"]) == ["a", "b", "c"]
    clash = await api.call("POST", f"{NS}/t/tags", as_=ADMIN, json_body={"tags": [{"name": "a"}]},
                           headers={"X-Openstack-Append": "yes"})
    assert error_of(clash)["code"] == 409
    twice = await api.call("POST", f"{NS}/t/tags", as_=ADMIN, json_body={"tags": [{"name": "z"}, {"name": "z"}]})
    assert error_of(twice)["code"] == 409
    assert sorted(t["name"] for t in (await get(api, f"{NS}/t/tags"))["tags"]) == ["a", "b", "c"]  # unchanged
    page = await get(api, f"{NS}/t/tags?sort_key=name&sort_dir=asc&limit=2")
    assert page == {"tags": [{"name": "a"}, {"name": "b"}]}
    assert await get(api, f"{NS}/t/tags?sort_key=name&sort_dir=asc&marker=b") == {"tags": [{"name": "c"}]}
    renamed = await api.call("PUT", f"{NS}/t/tags/c", as_=ADMIN, json_body={"name": "d"})
    assert renamed.status == 200 and renamed.json["name"] == "d"
    assert error_of((await api.call("PUT", f"{NS}/t/tags/d", as_=ADMIN, json_body={"name": "a"})))["code"] == 409
    assert error_of((await api.call("GET", f"{NS}/t/tags/c", as_=ADMIN)))["message"] == "Could not find metadata tag c"
    assert (await api.call("DELETE", f"{NS}/t/tags/d", as_=ADMIN)).status == 204
    bad = await api.call("POST", f"{NS}/t/tags", as_=ADMIN, json_body={"tags": "a"})
    assert error_of(bad)["code"] == 400


async def test_resource_type_associations(api: ApiClient) -> None:
    await create_ns(api, "r", visibility="public")
    made = await api.call("POST", f"{NS}/r/resource_types", as_=ADMIN,
                          json_body={"name": "Custom::Thing", "prefix": "thing_"})
    assert made.status == 201
    assert {k: v for k, v in made.json.items() if not k.endswith("_at")} == {"name": "Custom::Thing",
                                                                             "prefix": "thing_"}
    again = await api.call("POST", f"{NS}/r/resource_types", as_=ADMIN, json_body={"name": "Custom::Thing"})
    assert error_of(again)["code"] == 409
    assert [a["name"] for a in (await get(api, f"{NS}/r/resource_types", as_=READER_A))
            ["resource_type_associations"]] == ["Custom::Thing"]
    assert "Custom::Thing" in [t["name"] for t in (await get(api, "/v2/metadefs/resource_types", as_=READER_A))
                               ["resource_types"]]
    assert (await api.call("DELETE", f"{NS}/r/resource_types/Custom::Thing", as_=ADMIN)).status == 204
    gone = await api.call("DELETE", f"{NS}/r/resource_types/Custom::Thing", as_=ADMIN)
    assert error_of(gone)["message"] == "Failed to find resource type Custom::Thing to delete"
    assert (await get(api, f"{NS}/r/resource_types")) == {"resource_type_associations": []}


async def test_namespace_paging(api: ApiClient) -> None:
    for i in range(5):
        await create_ns(api, f"page-{i}", resource_type_associations=[{"name": "Paging::Test"}])
    query = "resource_types=Paging::Test&sort_key=namespace&sort_dir=asc&limit=2"
    seen: list[str] = []
    path = f"{NS}?{query}"
    while True:
        page = await get(api, path)
        assert page["first"] == f"{NS}?resource_types=Paging%3A%3ATest&sort_key=namespace&sort_dir=asc&limit=2"
        seen += [n["namespace"] for n in page["namespaces"]]
        if "next" not in page:
            break
        path = page["next"]
    assert seen == [f"page-{i}" for i in range(5)]
    newest_first = await get(api, f"{NS}?resource_types=Paging::Test")
    assert [n["namespace"] for n in newest_first["namespaces"]] == [f"page-{i}" for i in reversed(range(5))]
    assert (await api.call("GET", f"{NS}?marker=nothing", as_=ADMIN)).status == 404


@pytest.mark.parametrize("name,title", [
    ("namespace", "namespace"), ("namespaces", "namespaces"), ("resource_type", "resource_type_association"),
    ("resource_types", "resource_type_associations"), ("object", "object"), ("objects", "objects"),
    ("property", "property"), ("properties", "properties"), ("tag", "tag"), ("tags", "tags")])
async def test_schemas_are_glances(api: ApiClient, name: str, title: str) -> None:
    """The names Tempest checks, and the shape glanceclient reads (the parity test compares the
    whole documents with a live Glance)."""
    schema = await get(api, f"/v2/schemas/metadefs/{name}", as_=READER_A)
    assert schema["name"] == title
    if name.endswith("s") and name not in ("properties",) or name == "properties":
        assert {link["rel"] for link in schema["links"]} == {"first", "next", "describedby"}
    else:
        assert schema["additionalProperties"] is False


# -- Glance's published definitions ---------------------------------------------------------------

@pytest.fixture
async def api_with_definitions(tmp_path: Path, database_url: str) -> AsyncIterator[ApiClient]:
    """A node's first start with the default metadefs_initial_load."""
    server, client, session = await start_api(make_config(tmp_path, database_url,
                                                          DEFAULT={"metadefs_initial_load": "true"}))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


async def test_first_start_loads_glances_definitions(api_with_definitions: ApiClient) -> None:
    api = api_with_definitions
    types = [t["name"] for t in (await get(api, "/v2/metadefs/resource_types", as_=READER_A))["resource_types"]]
    # What Tempest and glance-tempest-plugin take as given (resource_types[0] must exist).
    assert {"OS::Glance::Image", "OS::Nova::Flavor", "OS::Cinder::Volume", "OS::Nova::Server"} <= set(types)
    shipped = read_definitions()
    assert len(shipped) == 32
    everything = await get(api, NS + "?limit=1000")
    assert len(everything["namespaces"]) == len(shipped)
    libvirt = await get(api, f"{NS}/OS::Compute::Libvirt?resource_type=OS::Glance::Image", as_=READER_A)
    assert libvirt["owner"] == "admin" and libvirt["protected"] is True and "updated_at" not in libvirt
    assert all(name.startswith("hw_") for name in libvirt["properties"])
    # A reader sees the public ones; the two without a visibility are the admins' (as in Glance).
    readable = await get(api, NS + "?limit=1000", as_=READER_A)
    hidden = {d["namespace"] for d in shipped if d.get("visibility") != "public"}
    assert {n["namespace"] for n in readable["namespaces"]} == {d["namespace"] for d in shipped} - hidden
    assert (await api.call("DELETE", f"{NS}/OS::Compute::Libvirt", as_=ADMIN)).status == 403  # protected


async def test_load_unload_export(tmp_path: Path, database_url: str) -> None:
    catalog = await Catalog.open(database_url)
    try:
        assert await catalog.metadefs_empty()
        shipped = read_definitions()
        assert len(await catalog.load_metadefs(shipped)) == len(shipped)
        assert await catalog.load_metadefs(shipped) == []  # loaded already: skipped
        exported = await catalog.export_metadefs()
        assert sorted(d["namespace"] for d in exported) == sorted(d["namespace"] for d in shipped)
        by_name = {d["namespace"]: d for d in exported}
        for document in shipped:
            again = by_name[document["namespace"]]
            assert again["properties"] == document.get("properties", {})
            assert sorted(o["name"] for o in again["objects"]) == sorted(o["name"] for o in document.get("objects", []))
            assert {a["name"] for a in again["resource_type_associations"]} == \
                {a["name"] for a in document.get("resource_type_associations", [])}
        written = write_definitions(tmp_path / "export", exported)
        assert len(written) == len(exported)
        await catalog.unload_metadefs()
        assert await catalog.metadefs_empty()
        # What was exported loads again as it was.
        assert len(await catalog.load_metadefs(read_definitions(tmp_path / "export"))) == len(shipped)
        assert sorted(d["namespace"] for d in await catalog.export_metadefs()) == sorted(by_name)
    finally:
        await catalog.close()


# -- Tempest's tempest.api.image.v2 metadefs tests, call for call (as its admin client makes them) --

async def _ok(api: ApiClient, method: str, path: str, status: int, body: Any = None,
              as_: dict[str, str] = ADMIN) -> Any:
    # Tempest's clients send JSON bodies, and Content-Type even without one (create_namespace_tag).
    reply = await api.call(method, path, as_=as_, json_body=body, headers={"Content-Type": "application/json"})
    assert reply.status == status, (method, path, reply.body)  # Tempest's expected_success
    return reply.json if reply.body else None


async def test_tempest_namespaces(api_with_definitions: ApiClient) -> None:
    api = api_with_definitions
    resource_name = (await _ok(api, "GET", "/v2/metadefs/resource_types", 200))["resource_types"][0]["name"]
    name = "tempest-namespace-1234"
    await _ok(api, "POST", NS, 201, {"namespace": name, "visibility": "public", "description": "Tempest",
                                     "display_name": name, "resource_type_associations": [{"name": resource_name}],
                                     "protected": True})
    assert name in [n["namespace"] for n in (await _ok(api, "GET", NS, 200))["namespaces"]]
    body = await _ok(api, "GET", f"{NS}/{name}", 200)
    assert body["namespace"] == name and body["visibility"] == "public"
    await _ok(api, "DELETE", f"{NS}/{name}", 403)  # lib_exc.Forbidden
    body = await _ok(api, "PUT", f"{NS}/{name}", 200, {"namespace": name, "description": "Tempest",
                                                      "visibility": "private", "display_name": name,
                                                      "protected": False})
    assert body["visibility"] == "private" and body["protected"] is False
    await _ok(api, "DELETE", f"{NS}/{name}", 204)
    await _ok(api, "GET", f"{NS}/{name}", 404)  # wait_for_resource_deletion


async def test_tempest_resource_types_and_properties(api_with_definitions: ApiClient) -> None:
    api = api_with_definitions
    resource_name = (await _ok(api, "GET", "/v2/metadefs/resource_types", 200))["resource_types"][0]["name"]
    for ns in ("tempest-ns-rt", "tempest-ns-prop"):
        await _ok(api, "POST", NS, 201, {"namespace": ns, "visibility": "public", "description": "Tempest",
                                         "protected": False, "display_name": ns})
    body = await _ok(api, "POST", f"{NS}/tempest-ns-rt/resource_types", 201, {"name": resource_name})
    assert body["name"] == resource_name
    listed = await _ok(api, "GET", f"{NS}/tempest-ns-rt/resource_types", 200)
    assert resource_name in [a["name"] for a in listed["resource_type_associations"]]
    await _ok(api, "DELETE", f"{NS}/tempest-ns-rt/resource_types/{resource_name}", 204)
    listed = await _ok(api, "GET", f"{NS}/tempest-ns-rt/resource_types", 200)
    assert resource_name not in [a["name"] for a in listed["resource_type_associations"]]

    enum = ["xen", "qemu", "kvm", "lxc", "uml", "vmware", "hyperv"]
    ns = f"{NS}/tempest-ns-prop"
    await _ok(api, "POST", f"{ns}/resource_types", 201, {"name": resource_name})
    body = await _ok(api, "POST", f"{ns}/properties", 201, {"title": "tempest-property", "name": resource_name,
                                                            "type": "string", "enum": enum})
    assert body["title"] == "tempest-property"
    assert (await _ok(api, "GET", f"{ns}/properties/{resource_name}", 200))["name"] == resource_name
    body = await _ok(api, "PUT", f"{ns}/properties/{resource_name}", 200, {"title": "tempest-update-property",
                                                                           "type": "string", "enum": enum,
                                                                           "name": resource_name})
    assert body["title"] == "tempest-update-property"
    await _ok(api, "DELETE", f"{ns}/properties/{resource_name}", 204)
    titles = [p["title"] for p in (await _ok(api, "GET", f"{ns}/properties", 200))["properties"].values()]
    assert "tempest-update-property" not in titles
    for name in ("tempest-ns-rt", "tempest-ns-prop"):
        await _ok(api, "DELETE", f"{NS}/{name}", 204)  # the base class's cleanup


async def test_tempest_objects_and_tags(api_with_definitions: ApiClient) -> None:
    api = api_with_definitions
    await _ok(api, "POST", NS, 201, {"namespace": "tempest-ns", "visibility": "public", "description": "Tempest",
                                     "protected": False, "display_name": "tempest-ns"})
    ns = f"{NS}/tempest-ns"
    body = await _ok(api, "POST", f"{ns}/objects", 201, {"name": "tempest-object"})
    body = await _ok(api, "PUT", f"{ns}/objects/{body['name']}", 200, {"name": "tempest-update-object"})
    assert body["name"] == "tempest-update-object"
    assert (await _ok(api, "GET", f"{ns}/objects/tempest-update-object", 200))["name"] == "tempest-update-object"
    await _ok(api, "DELETE", f"{ns}/objects/tempest-update-object", 204)
    assert "tempest-update-object" not in [o["name"] for o in (await _ok(api, "GET", f"{ns}/objects", 200))["objects"]]
    await _ok(api, "DELETE", f"{ns}/objects/tempest-object", 404)  # call_and_ignore_notfound_exc

    tags = ["sample-tag1", "sample-tag2", "sample-tag3"]
    await _ok(api, "POST", f"{ns}/tags", 201, {"tags": [{"name": t} for t in tags]})
    body = await _ok(api, "GET", f"{ns}/tags", 200)
    assert len(body["tags"]) == 3 and all(t["name"] in tags for t in body["tags"])
    await _ok(api, "POST", f"{ns}/tags/tempest-tag", 201)
    assert (await _ok(api, "GET", f"{ns}/tags/tempest-tag", 200))["name"] == "tempest-tag"
    assert (await _ok(api, "PUT", f"{ns}/tags/tempest-tag", 200, {"name": "tempest-update-tag"}))["name"] == \
        "tempest-update-tag"
    await _ok(api, "DELETE", f"{ns}/tags/tempest-update-tag", 204)
    assert "tempest-update-tag" not in [t["name"] for t in (await _ok(api, "GET", f"{ns}/tags", 200))["tags"]]
    await _ok(api, "DELETE", f"{ns}/tags", 204)
    assert (await _ok(api, "GET", f"{ns}/tags", 200))["tags"] == []
    await _ok(api, "DELETE", f"{NS}/tempest-ns", 204)


async def test_tempest_schemas_for_a_reader(api_with_definitions: ApiClient) -> None:
    """MetadataSchemaTest runs with the project reader's client."""
    names = {"namespace": "namespace", "namespaces": "namespaces", "resource_type": "resource_type_association",
             "resource_types": "resource_type_associations", "object": "object", "objects": "objects",
             "property": "property", "properties": "properties", "tag": "tag", "tags": "tags"}
    for path, name in names.items():
        assert (await _ok(api_with_definitions, "GET", f"/v2/schemas/metadefs/{path}", 200, as_=READER_A))["name"] == name


# -- streamd metadefs-load / -unload / -export --------------------------------------------------------

def _streamd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "streamd", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.asyncio(loop_factories=["asyncio"])  # the commands run in their own processes
async def test_metadefs_commands(tmp_path: Path, database_url: str) -> None:
    config = tmp_path / "streamd.conf"
    config.write_text(f"[DEFAULT]\ndata_dir = {tmp_path / 'data'}\n[database]\nconnection = {database_url}\n")
    done = _streamd("metadefs-load", "--config", str(config))
    assert done.returncode == 0 and done.stdout.strip() == "loaded 32 of 32 namespaces", done.stderr
    one = str(SHIPPED_DEFINITIONS / "compute-libvirt.json")
    assert _streamd("metadefs-load", "--config", str(config), one).stdout.strip() == "loaded 0 of 1 namespaces"
    assert _streamd("metadefs-load", "--config", str(config), one, "--overwrite").stdout.strip() == \
        "loaded 1 of 1 namespaces"
    done = _streamd("metadefs-export", "--config", str(config), str(tmp_path / "out"))
    assert done.returncode == 0 and len(list((tmp_path / "out").glob("*.json"))) == 32
    assert _streamd("metadefs-unload", "--config", str(config)).returncode == 0
    catalog = await Catalog.open(database_url)
    try:
        assert await catalog.metadefs_empty()
    finally:
        await catalog.close()
    missing = _streamd("metadefs-load", "--config", str(config), str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr
