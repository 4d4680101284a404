"""Image sub-resources: members (/v2/images/{id}/members) and tags (/v2/images/{id}/tags/{tag}).

Reference: Glance ``ImageMembersController`` and ``image_tags.Controller`` with the default
(secure RBAC) policies: the owner shares, the consumer accepts or rejects, and nobody learns of an
image they cannot see (404).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from conftest import (ADMIN, MEMBER_A, MEMBER_B, MEMBER_C, PROJECT_A, PROJECT_B, PROJECT_C, READER_A, ApiClient,
                      both_databases, make_config, start_api)

pytestmark = both_databases

PROJECT_D = "d" * 32
MEMBER_D = {"X-Project-Id": PROJECT_D, "X-User-Id": "user-d", "X-Roles": "member,reader"}
READER_B = {"X-Project-Id": PROJECT_B, "X-User-Id": "reader-b", "X-Roles": "reader"}


def members_path(image_id: str, member: str | None = None) -> str:
    return f"/v2/images/{image_id}/members" + (f"/{member}" if member else "")


async def add_member(api: ApiClient, image_id: str, member: str, as_: dict[str, str] = MEMBER_A) -> Any:
    return await api.call("POST", members_path(image_id), as_=as_, json_body={"member": member})


async def set_status(api: ApiClient, image_id: str, member: str, status: Any, as_: dict[str, str]) -> Any:
    return await api.call("PUT", members_path(image_id, member), as_=as_, json_body={"status": status})


async def shared_with(api: ApiClient, *members: str, accept: bool = False) -> dict[str, Any]:
    image = await api.create(name="shared")
    for member in members:
        reply = await add_member(api, image["id"], member)
        assert reply.status == 200, reply.body
        if accept:
            consumer = {"X-Project-Id": member, "X-User-Id": "u", "X-Roles": "member,reader"}
            assert (await set_status(api, image["id"], member, "accepted", consumer)).status == 200
    return image


# -- members: the owner shares -----------------------------------------------------------------

async def test_owner_adds_member(api: ApiClient) -> None:
    image = await api.create()
    assert image["visibility"] == "shared"
    reply = await add_member(api, image["id"], PROJECT_B)
    assert reply.status == 200, reply.body
    member = reply.json
    assert member["member_id"] == PROJECT_B and member["image_id"] == image["id"]
    assert member["status"] == "pending" and member["schema"] == "/v2/schemas/member"
    assert member["created_at"].endswith("Z") and member["updated_at"].endswith("Z")
    again = await add_member(api, image["id"], PROJECT_B)
    assert again.status == 409, again.body
    listed = await api.call("GET", members_path(image["id"]), as_=MEMBER_A)
    assert listed.status == 200
    assert listed.json["schema"] == "/v2/schemas/members"
    assert [m["member_id"] for m in listed.json["members"]] == [PROJECT_B]
    shown = await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_A)
    assert shown.status == 200 and shown.json == member
    # Neither a consumer, nor a reader of the owner, nor a project that cannot see the image may share it.
    assert (await set_status(api, image["id"], PROJECT_B, "accepted", MEMBER_B)).status == 200
    assert (await add_member(api, image["id"], PROJECT_C, as_=MEMBER_B)).status == 403
    assert (await add_member(api, image["id"], PROJECT_C, as_=READER_A)).status == 403
    assert (await add_member(api, image["id"], PROJECT_C, as_=MEMBER_C)).status == 404
    listed = await api.call("GET", members_path(image["id"]), as_=MEMBER_A)
    assert [m["member_id"] for m in listed.json["members"]] == [PROJECT_B]
    # The admin may share any image.
    assert (await add_member(api, image["id"], PROJECT_C, as_=ADMIN)).status == 200


async def test_member_quota(tmp_path: Path, database_url: str) -> None:
    server, client, session = await start_api(make_config(tmp_path, database_url,
                                                          DEFAULT={"image_member_quota": "2"}))
    try:
        image = await client.create()
        assert (await add_member(client, image["id"], PROJECT_B)).status == 200
        assert (await add_member(client, image["id"], PROJECT_C)).status == 200
        reply = await add_member(client, image["id"], PROJECT_D)
        assert reply.status == 413, reply.body
        assert reply.error["code"] == 413
        listed = await client.call("GET", members_path(image["id"]), as_=MEMBER_A)
        assert len(listed.json["members"]) == 2
        # Removing one makes room again.
        assert (await client.call("DELETE", members_path(image["id"], PROJECT_B), as_=MEMBER_A)).status == 204
        assert (await add_member(client, image["id"], PROJECT_D)).status == 200
    finally:
        await session.close()
        await server.close()


async def test_add_member_bad_body_is_400(api: ApiClient) -> None:
    image = await api.create()
    for data in (b"{}", b'{"member": ""}', b'{"members": "%s"}' % PROJECT_B.encode(), b'["%s"]' % PROJECT_B.encode(),
                 b'"%s"' % PROJECT_B.encode(), b"", b"{nope", b'{"member": null}'):
        reply = await api.call("POST", members_path(image["id"]), as_=MEMBER_A, data=data,
                               headers={"Content-Type": "application/json"})
        assert reply.status == 400, (data, reply.body)
    assert (await api.call("GET", members_path(image["id"]), as_=MEMBER_A)).json["members"] == []
    # Glance's deserializer runs first: a bad body is 400 even for an image the caller cannot see.
    image = await api.create(visibility="private")
    reply = await api.call("POST", members_path(image["id"]), as_=MEMBER_B, json_body={"nobody": 1})
    assert reply.status == 400
    reply = await api.call("PUT", members_path(image["id"], PROJECT_B), as_=MEMBER_B, json_body={"nothing": 1})
    assert reply.status == 400
    reply = await api.call("POST", members_path(str(uuid.uuid4())), as_=MEMBER_A, json_body={})
    assert reply.status == 400


async def test_only_shared_images_have_members(api: ApiClient) -> None:
    image = await shared_with(api, PROJECT_B, accept=True)
    for visibility in ("private", "community", "public"):
        who = ADMIN if visibility == "public" else MEMBER_A
        assert (await api.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": visibility}],
                                as_=who)).status == 200
        assert (await add_member(api, image["id"], PROJECT_C)).status == 403
        assert (await add_member(api, image["id"], PROJECT_C, as_=ADMIN)).status == 403
        assert (await api.call("GET", members_path(image["id"]), as_=MEMBER_A)).status == 403
        # Showing a member is 404 (Glance hides the reason), changing or deleting is 403.
        assert (await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_A)).status == 404
        assert (await set_status(api, image["id"], PROJECT_B, "rejected", ADMIN)).status == 403
        assert (await api.call("DELETE", members_path(image["id"], PROJECT_B), as_=MEMBER_A)).status == 403
        if visibility != "private":
            # The old consumer still sees the (now public or community) image, not its membership.
            assert (await api.call("GET", members_path(image["id"]), as_=MEMBER_B)).status == 403
            assert (await set_status(api, image["id"], PROJECT_B, "rejected", MEMBER_B)).status == 403
            assert (await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_B)).status == 404
        else:
            assert (await api.call("GET", members_path(image["id"]), as_=MEMBER_B)).status == 404
    # Back to shared: the membership was kept all along.
    assert (await api.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": "shared"}],
                            as_=ADMIN)).status == 200
    shown = await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_B)
    assert shown.status == 200 and shown.json["status"] == "accepted"


# -- members: the consumer ---------------------------------------------------------------------

async def test_consumer_sees_image_and_only_its_own_membership(api: ApiClient) -> None:
    image = await shared_with(api, PROJECT_B, PROJECT_C)
    path = f"/v2/images/{image['id']}"
    assert (await api.call("GET", path, as_=MEMBER_B)).status == 200
    assert (await api.call("GET", path, as_=READER_B)).status == 200
    for who, project in ((MEMBER_B, PROJECT_B), (MEMBER_C, PROJECT_C), (READER_B, PROJECT_B)):
        listed = await api.call("GET", members_path(image["id"]), as_=who)
        assert listed.status == 200, listed.body
        assert [m["member_id"] for m in listed.json["members"]] == [project]
    assert (await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_B)).status == 200
    assert (await api.call("GET", members_path(image["id"], PROJECT_C), as_=MEMBER_B)).status == 404
    # The owning project (reader included) and the admin see every member.
    for who in (MEMBER_A, READER_A, ADMIN):
        listed = await api.call("GET", members_path(image["id"]), as_=who)
        assert sorted(m["member_id"] for m in listed.json["members"]) == [PROJECT_B, PROJECT_C]
    assert (await api.call("GET", members_path(image["id"], PROJECT_C), as_=READER_A)).status == 200
    assert (await api.call("GET", members_path(image["id"], PROJECT_D), as_=MEMBER_A)).status == 404


async def test_third_project_cannot_see_the_image(api: ApiClient) -> None:
    image = await shared_with(api, PROJECT_B)
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_D)).status == 404
    assert image["id"] not in await api.list_ids({"member_status": "all"}, as_=MEMBER_D)
    assert (await api.call("GET", members_path(image["id"]), as_=MEMBER_D)).status == 404
    assert (await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_D)).status == 404
    assert (await add_member(api, image["id"], PROJECT_D, as_=MEMBER_D)).status == 404
    assert (await set_status(api, image["id"], PROJECT_D, "accepted", MEMBER_D)).status == 404
    assert (await set_status(api, image["id"], PROJECT_B, "accepted", MEMBER_D)).status == 404
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_B), as_=MEMBER_D)).status == 404


async def test_consumer_accepts_and_rejects(api: ApiClient) -> None:
    image = await shared_with(api, PROJECT_B)
    assert image["id"] not in await api.list_ids(as_=MEMBER_B)  # pending: not listed by default
    assert image["id"] in await api.list_ids({"member_status": "pending"}, as_=MEMBER_B)
    assert image["id"] in await api.list_ids({"member_status": "all"}, as_=MEMBER_B)
    reply = await set_status(api, image["id"], PROJECT_B, "accepted", MEMBER_B)
    assert reply.status == 200, reply.body
    assert reply.json["status"] == "accepted" and reply.json["member_id"] == PROJECT_B
    assert image["id"] in await api.list_ids(as_=MEMBER_B)
    assert image["id"] not in await api.list_ids({"member_status": "pending"}, as_=MEMBER_B)
    owner_view = await api.call("GET", members_path(image["id"], PROJECT_B), as_=MEMBER_A)
    assert owner_view.json["status"] == "accepted"
    reply = await set_status(api, image["id"], PROJECT_B, "rejected", MEMBER_B)
    assert reply.status == 200 and reply.json["status"] == "rejected"
    assert image["id"] not in await api.list_ids(as_=MEMBER_B)
    assert image["id"] in await api.list_ids({"member_status": "rejected"}, as_=MEMBER_B)
    # A rejected consumer still sees the image and may change its mind, even back to pending.
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_B)).status == 200
    assert (await set_status(api, image["id"], PROJECT_B, "pending", MEMBER_B)).json["status"] == "pending"
    assert (await set_status(api, image["id"], PROJECT_B, "accepted", MEMBER_B)).status == 200
    assert image["id"] in await api.list_ids(as_=MEMBER_B)


async def test_who_may_set_member_status(api: ApiClient) -> None:
    image = await shared_with(api, PROJECT_B, PROJECT_C)
    # The owner cannot decide for the consumer, even with a bad status; an unknown member is 404.
    assert (await set_status(api, image["id"], PROJECT_B, "accepted", MEMBER_A)).status == 403
    assert (await set_status(api, image["id"], PROJECT_B, "bogus", MEMBER_A)).status == 403
    assert (await set_status(api, image["id"], PROJECT_B, "accepted", READER_A)).status == 403
    assert (await set_status(api, image["id"], PROJECT_D, "accepted", MEMBER_A)).status == 404
    # A consumer cannot touch another consumer's membership, and a reader cannot write.
    assert (await set_status(api, image["id"], PROJECT_C, "accepted", MEMBER_B)).status == 404
    assert (await set_status(api, image["id"], PROJECT_B, "accepted", READER_B)).status == 403
    # Invalid statuses are 400 for the consumer.
    for bad in ("bogus", "ACCEPTED", "", None, 1, ["accepted"]):
        reply = await set_status(api, image["id"], PROJECT_B, bad, MEMBER_B)
        assert reply.status == 400, (bad, reply.body)
    for body in ({}, [], "accepted"):
        reply = await api.call("PUT", members_path(image["id"], PROJECT_B), as_=MEMBER_B, json_body=body)
        assert reply.status == 400, (body, reply.body)
    statuses = {m["member_id"]: m["status"] for m in
                (await api.call("GET", members_path(image["id"]), as_=MEMBER_A)).json["members"]}
    assert statuses == {PROJECT_B: "pending", PROJECT_C: "pending"}
    # The admin may.
    reply = await set_status(api, image["id"], PROJECT_C, "rejected", ADMIN)
    assert reply.status == 200 and reply.json["status"] == "rejected"


async def test_delete_member(api: ApiClient) -> None:
    image = await shared_with(api, PROJECT_B, PROJECT_C, accept=True)
    assert image["id"] in await api.list_ids(as_=MEMBER_B)
    # The consumer cannot remove itself; another consumer's membership is not even visible to it.
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_B), as_=MEMBER_B)).status == 403
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_C), as_=MEMBER_B)).status == 404
    # A reader of the owner cannot write; an unknown member is 404 before that.
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_B), as_=READER_A)).status == 403
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_D), as_=READER_A)).status == 404
    reply = await api.call("DELETE", members_path(image["id"], PROJECT_B), as_=MEMBER_A)
    assert reply.status == 204 and reply.body == b""
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_B), as_=MEMBER_A)).status == 404
    assert (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_B)).status == 404
    assert image["id"] not in await api.list_ids({"member_status": "all"}, as_=MEMBER_B)
    assert (await api.call("DELETE", members_path(image["id"], PROJECT_C), as_=ADMIN)).status == 204
    assert (await api.call("GET", members_path(image["id"]), as_=MEMBER_A)).json["members"] == []
    # A removed member can be added again, pending once more.
    reply = await add_member(api, image["id"], PROJECT_B)
    assert reply.status == 200 and reply.json["status"] == "pending"


# -- tags --------------------------------------------------------------------------------------

def tag_path(image_id: str, tag: str) -> str:
    return f"/v2/images/{image_id}/tags/{tag}"


async def test_tags_put_is_idempotent_and_delete(api: ApiClient) -> None:
    image = await api.create(tags=["first"])
    for _ in range(2):
        reply = await api.call("PUT", tag_path(image["id"], "second"), as_=MEMBER_A)
        assert reply.status == 204 and reply.body == b""
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert sorted(shown["tags"]) == ["first", "second"]
    reply = await api.call("DELETE", tag_path(image["id"], "first"), as_=MEMBER_A)
    assert reply.status == 204 and reply.body == b""
    assert (await api.call("DELETE", tag_path(image["id"], "first"), as_=MEMBER_A)).status == 404
    assert (await api.call("DELETE", tag_path(image["id"], "never"), as_=MEMBER_A)).status == 404
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["tags"] == ["second"]
    # Tags appear in the tag filter.
    assert await api.list_ids({"tag": "second"}) == [image["id"]]
    # Unusual characters survive the URL.
    assert (await api.call("PUT", tag_path(image["id"], "with%20space"), as_=MEMBER_A)).status == 204
    assert (await api.call("PUT", tag_path(image["id"], "caf%C3%A9"), as_=MEMBER_A)).status == 204
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert sorted(shown["tags"]) == ["café", "second", "with space"]


async def test_tag_length(api: ApiClient) -> None:
    image = await api.create()
    assert (await api.call("PUT", tag_path(image["id"], "t" * 255), as_=MEMBER_A)).status == 204
    reply = await api.call("PUT", tag_path(image["id"], "t" * 256), as_=MEMBER_A)
    assert reply.status == 400, reply.body
    # Glance validates the tag before looking the image up.
    assert (await api.call("PUT", tag_path(str(uuid.uuid4()), "t" * 256), as_=MEMBER_A)).status == 400
    shown = (await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
    assert shown["tags"] == ["t" * 255]


async def test_tag_quota(tmp_path: Path, database_url: str) -> None:
    server, client, session = await start_api(make_config(tmp_path, database_url,
                                                          DEFAULT={"image_tag_quota": "2"}))
    try:
        image = await client.create(tags=["a"])
        assert (await client.call("PUT", tag_path(image["id"], "b"), as_=MEMBER_A)).status == 204
        reply = await client.call("PUT", tag_path(image["id"], "c"), as_=MEMBER_A)
        assert reply.status == 413, reply.body
        assert reply.error["code"] == 413
        # Re-adding a tag the image already has is fine at the quota.
        assert (await client.call("PUT", tag_path(image["id"], "a"), as_=MEMBER_A)).status == 204
        shown = (await client.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)).json
        assert sorted(shown["tags"]) == ["a", "b"]
    finally:
        await session.close()
        await server.close()


async def test_tags_need_write_access(api: ApiClient) -> None:
    public = await api.create(as_=ADMIN, visibility="public", owner=PROJECT_A, tags=["t"])
    private = await api.create(visibility="private", tags=["t"])
    shared = await shared_with(api, PROJECT_B, accept=True)
    await api.call("PUT", tag_path(shared["id"], "t"), as_=MEMBER_A)
    for image_id, who, status in ((public["id"], MEMBER_B, 403), (public["id"], READER_A, 403),
                                  (shared["id"], MEMBER_B, 403), (shared["id"], READER_B, 403),
                                  (private["id"], MEMBER_B, 404), (private["id"], READER_A, 403),
                                  (str(uuid.uuid4()), MEMBER_A, 404)):
        assert (await api.call("PUT", tag_path(image_id, "new"), as_=who)).status == status, (image_id, who)
        assert (await api.call("DELETE", tag_path(image_id, "t"), as_=who)).status == status, (image_id, who)
    for image in (public, private, shared):
        tags = (await api.call("GET", f"/v2/images/{image['id']}", as_=ADMIN)).json["tags"]
        assert tags == ["t"], image["id"]
    # The admin may change anyone's tags.
    assert (await api.call("PUT", tag_path(private["id"], "adm"), as_=ADMIN)).status == 204
    assert (await api.call("DELETE", tag_path(private["id"], "t"), as_=ADMIN)).status == 204
    assert (await api.call("GET", f"/v2/images/{private['id']}", as_=ADMIN)).json["tags"] == ["adm"]
