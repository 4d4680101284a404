"""GET /v2/images: every filter, operator, sort, paging and visibility rule, over HTTP.

The reference is Glance: ``glance/api/v2/images.py`` (``RequestDeserializer.index``,
``ImagesController.index``, ``ResponseSerializer.index``), ``glance/db/sqlalchemy/api.py``
(``_image_get_all``, ``_make_conditions_from_filters``, ``_select_images_query``,
``_paginate_query``) and ``glance/common/utils.py`` (``split_filter_op``, ``validate_quotes``,
``split_filter_value_for_quotes``). Values no API call can set yet (size, checksum, a killed
status, exact timestamps) are written straight into the catalogue database the server uses.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conftest import (ADMIN, MEMBER_A, MEMBER_B, MEMBER_C, PROJECT_A, PROJECT_B, PROJECT_C, READER_A, ApiClient,
                      Reply, both_databases, make_config, start_api)
from streamd.catalog import models as m

pytestmark = both_databases

Params = Sequence[tuple[str, str]]
IDENTITY = {PROJECT_A: MEMBER_A, PROJECT_B: MEMBER_B, PROJECT_C: MEMBER_C, ADMIN["X-Project-Id"]: ADMIN}


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture
async def db(api: ApiClient, database_url: str) -> AsyncIterator[AsyncEngine]:
    """The very database the ``api`` server uses (migrated by the time ``api`` is up)."""
    args = {"timeout": 30} if database_url.startswith("sqlite") else {}
    engine = create_async_engine(database_url, connect_args=args)
    try:
        yield engine
    finally:
        await engine.dispose()


async def set_row(db: AsyncEngine, image_id: str, **values: Any) -> None:
    async with db.begin() as conn:
        result = await conn.execute(m.images.update().where(m.images.c.id == image_id).values(**values))
        assert result.rowcount == 1


async def listing(api: ApiClient, params: Params = (), as_: dict[str, str] = MEMBER_A) -> Reply:
    return await api.call("GET", "/v2/images", as_=as_, params=list(params))


async def names(api: ApiClient, params: Params = (), as_: dict[str, str] = MEMBER_A) -> list[str | None]:
    # limit goes first: Glance takes the first ``limit`` and leaves any other among the filters.
    reply = await listing(api, [("limit", "100"), *params], as_)
    assert reply.status == 200, (params, reply.body)
    assert "next" not in reply.json
    return [i["name"] for i in reply.json["images"]]


async def name_set(api: ApiClient, params: Params = (), as_: dict[str, str] = MEMBER_A) -> set[str | None]:
    found = await names(api, params, as_)
    assert len(found) == len(set(found)), found
    return set(found)


async def bad(api: ApiClient, params: Params, as_: dict[str, str] = MEMBER_A, status: int = 400) -> str:
    reply = await listing(api, params, as_)
    assert reply.status == status, (params, reply.status, reply.body)
    assert reply.error["code"] == status
    return str(reply.error["message"])


def query_of(link: str) -> list[tuple[str, str]]:
    parsed = urllib.parse.urlsplit(link)
    assert parsed.path == "/v2/images" and not parsed.scheme and not parsed.netloc, link
    return urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)


async def share(api: ApiClient, image_id: str, owner: dict[str, str], member: str, status: str | None) -> None:
    reply = await api.call("POST", f"/v2/images/{image_id}/members", as_=owner, json_body={"member": member})
    assert reply.status == 200, reply.body
    if status is not None:
        reply = await api.call("PUT", f"/v2/images/{image_id}/members/{member}", as_=IDENTITY[member],
                               json_body={"status": status})
        assert reply.status == 200, reply.body


# -- a realistic multi-project catalogue ---------------------------------------------------------

PUB = {"pub-admin", "pub-b"}
A_OWN = {"a-private", "a-shared-none", "a-shared-b-acc", "a-shared-b-pend", "a-shared-b-rej", "a-community",
         "a-was-shared"}
A_SHARED_OWN = {"a-shared-none", "a-shared-b-acc", "a-shared-b-pend", "a-shared-b-rej"}
B_OWN = {"pub-b", "b-private", "b-shared-a-acc", "b-shared-a-pend", "b-shared-a-rej", "b-community"}
C_OWN = {"c-shared-a-acc-b-pend", "c-private", "c-community"}
COMMUNITY = {"a-community", "b-community", "c-community", "admin-community"}
EVERYTHING = PUB | A_OWN | B_OWN | C_OWN | {"admin-community"}


async def build_world(api: ApiClient, db: AsyncEngine) -> dict[str, str]:
    """Three projects and an admin; public, private, shared (every member status), community,
    hidden, deleted and killed images. Returns name -> id."""
    ids: dict[str, str] = {}
    owners: dict[str, dict[str, str]] = {}

    async def make(name: str, as_: dict[str, str], **body: Any) -> None:
        ids[name] = (await api.create(as_=as_, name=name, **body))["id"]
        owners[name] = IDENTITY[body.get("owner", as_["X-Project-Id"])]

    await make("pub-admin", ADMIN, visibility="public", tags=["x86", "linux", "lts"], os_distro="ubuntu",
               hw_arch="x86_64", min_ram=2048)
    await make("pub-b", ADMIN, visibility="public", owner=PROJECT_B)
    await make("pub-hidden", ADMIN, visibility="public", os_hidden=True)
    await make("admin-community", ADMIN, visibility="community")
    await make("a-private", MEMBER_A, visibility="private", protected=True, tags=["linux", "x86"],
               os_distro="ubuntu")
    await make("a-shared-none", MEMBER_A, tags=["linux"])
    for name in ("a-shared-b-acc", "a-shared-b-pend", "a-shared-b-rej", "a-was-shared", "a-deleted", "a-killed"):
        await make(name, MEMBER_A)
    await make("a-community", MEMBER_A, visibility="community", os_distro="debian")
    await make("a-hidden", MEMBER_A, visibility="private", os_hidden=True)
    await make("b-private", MEMBER_B, visibility="private", os_distro="ubuntu")
    await make("b-shared-a-acc", MEMBER_B, tags=["x86", "linux"])
    await make("b-shared-a-pend", MEMBER_B)
    await make("b-shared-a-rej", MEMBER_B)
    await make("b-community", MEMBER_B, visibility="community")
    await make("c-shared-a-acc-b-pend", MEMBER_C)
    await make("c-private", MEMBER_C, visibility="private")
    await make("c-community", MEMBER_C, visibility="community")
    for name, member, status in [
        ("a-shared-b-acc", PROJECT_B, "accepted"), ("a-shared-b-pend", PROJECT_B, None),
        ("a-shared-b-rej", PROJECT_B, "rejected"), ("a-was-shared", PROJECT_B, "accepted"),
        ("a-deleted", PROJECT_B, "accepted"), ("a-killed", PROJECT_B, "accepted"),
        ("b-shared-a-acc", PROJECT_A, "accepted"), ("b-shared-a-pend", PROJECT_A, "pending"),
        ("b-shared-a-rej", PROJECT_A, "rejected"), ("c-shared-a-acc-b-pend", PROJECT_A, "accepted"),
        ("c-shared-a-acc-b-pend", PROJECT_B, None),
    ]:
        await share(api, ids[name], owners[name], member, status)
    # Members of an image that is no longer shared do not see it.
    reply = await api.patch(ids["a-was-shared"], [{"op": "replace", "path": "/visibility", "value": "private"}])
    assert reply.status == 200, reply.body
    assert (await api.call("DELETE", f"/v2/images/{ids['a-deleted']}", as_=MEMBER_A)).status == 204
    await set_row(db, ids["a-killed"], status="killed")
    return ids


# -- the document, limit and links -----------------------------------------------------------

async def test_empty_list_document(api: ApiClient) -> None:
    reply = await listing(api)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json == {"images": [], "first": "/v2/images", "schema": "/v2/schemas/images"}


async def _bulk(db: AsyncEngine, count: int, owner: str = PROJECT_A) -> list[str]:
    """``count`` private images of ``owner``, created a second apart; newest first."""
    base = dt.datetime(2024, 3, 1, 12, 0, 0, 500000)
    rows = [{"id": str(uuid.uuid4()), "name": f"bulk-{n:02d}", "status": "queued", "visibility": "private",
             "protected": False, "os_hidden": False, "disk_format": "raw", "container_format": "bare",
             "min_disk": 0, "min_ram": 0, "owner": owner, "created_at": base + dt.timedelta(seconds=n),
             "updated_at": base + dt.timedelta(seconds=n), "deleted": False} for n in range(count)]
    async with db.begin() as conn:
        await conn.execute(m.images.insert(), rows)
    return [r["id"] for r in reversed(rows)]


async def test_limit_default_is_limit_param_default(api: ApiClient, db: AsyncEngine) -> None:
    assert api.config.default.limit_param_default == 25 and api.config.default.api_limit_max == 1000
    newest_first = await _bulk(db, 26)
    page = await listing(api)
    assert [i["id"] for i in page.json["images"]] == newest_first[:25]
    assert query_of(page.json["next"]) == [("marker", newest_first[24])]
    last = await api.call("GET", page.json["next"], as_=MEMBER_A)
    assert [i["id"] for i in last.json["images"]] == newest_first[25:]
    assert "next" not in last.json
    # A page exactly as long as the limit has a next link (Glance counts the rows the database
    # returned); following it gives an empty page without one.
    full = await listing(api, [("limit", "26")])
    assert len(full.json["images"]) == 26 and "next" in full.json
    empty = await api.call("GET", full.json["next"], as_=MEMBER_A)
    assert empty.status == 200 and empty.json["images"] == [] and "next" not in empty.json
    assert len((await listing(api, [("limit", "27")])).json["images"]) == 26
    # Other projects see none of them.
    assert (await listing(api, as_=MEMBER_B)).json["images"] == []


async def test_limit_is_capped_at_api_limit_max(tmp_path: Path, database_url: str) -> None:
    server, client, session = await start_api(make_config(
        tmp_path, database_url, DEFAULT={"limit_param_default": "2", "api_limit_max": "3"}))
    try:
        for n in range(5):
            await client.create(name=f"img-{n}")
        default = await client.call("GET", "/v2/images", as_=MEMBER_A)
        assert [i["name"] for i in default.json["images"]] == ["img-4", "img-3"] and "next" in default.json
        capped = await client.call("GET", "/v2/images", as_=MEMBER_A, params={"limit": "1000"})
        assert [i["name"] for i in capped.json["images"]] == ["img-4", "img-3", "img-2"]
        # The cap applies to the page; the links repeat the limit as asked.
        assert ("limit", "1000") in query_of(capped.json["next"])
        rest = await client.call("GET", capped.json["next"], as_=MEMBER_A)
        assert [i["name"] for i in rest.json["images"]] == ["img-1", "img-0"] and "next" not in rest.json
    finally:
        await session.close()
        await server.close()


async def test_limit_must_be_a_non_negative_integer(api: ApiClient) -> None:
    await api.create(name="x")
    for value in ("abc", "-1", "1.5", "", "1e3", "0x10"):
        assert "limit param must be" in await bad(api, [("limit", value)]), value
    zero = await listing(api, [("limit", "0")])
    assert zero.status == 200 and zero.json["images"] == [] and "next" not in zero.json
    assert [i["name"] for i in (await listing(api, [("limit", " 1 ")])).json["images"]] == ["x"]


async def test_first_next_and_schema_links(api: ApiClient) -> None:
    for n in range(5):
        await api.create(name=f"img-{n}", os_distro="cirros")
    await api.create(name="other", os_distro="fedora")
    params = [("limit", "2"), ("sort_key", "name"), ("sort_dir", "asc"), ("os_distro", "cirros")]
    seen: list[str] = []
    reply = await listing(api, params)
    pages = 0
    while True:
        pages += 1
        assert reply.status == 200
        body = reply.json
        assert body["schema"] == "/v2/schemas/images"
        assert sorted(query_of(body["first"])) == sorted(params)
        seen += [i["name"] for i in body["images"]]
        if "next" not in body:
            break
        assert sorted(query_of(body["next"])) == sorted(params + [("marker", body["images"][-1]["id"])])
        reply = await api.call("GET", body["next"], as_=MEMBER_A)
    assert seen == [f"img-{n}" for n in range(5)] and pages == 3
    # ``first`` drops the marker, keeps everything else.
    marker_page = await listing(api, [("marker", reply.json["images"][0]["id"]), *params])
    assert sorted(query_of(marker_page.json["first"])) == sorted(params)
    # Four images, two a page: the second page is full, so it has a next link to an empty page.
    assert (await api.call("DELETE", f"/v2/images/{reply.json['images'][0]['id']}", as_=MEMBER_A)).status == 204
    second = await api.call("GET", (await listing(api, params)).json["next"], as_=MEMBER_A)
    assert [i["name"] for i in second.json["images"]] == ["img-2", "img-3"] and "next" in second.json
    third = await api.call("GET", second.json["next"], as_=MEMBER_A)
    assert third.json["images"] == [] and "next" not in third.json


# -- sorting and paging ------------------------------------------------------------------------

T0 = dt.datetime(2024, 5, 1, 8, 0, 0, 0)


def _at(seconds: int, micro: int = 0) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds, microseconds=micro)


# name, disk_format (None: no formats), size, status, created_at, updated_at
PAGING_SET: list[tuple[str | None, str | None, int | None, str, dt.datetime, dt.datetime]] = [
    (None, "qcow2", None, "queued", _at(0), _at(50)),
    ("alpha", "raw", 10, "queued", _at(0), _at(40)),
    ("alpha", "raw", 10, "active", _at(0), _at(40)),
    (None, None, 0, "queued", _at(1), _at(30)),
    ("beta", "iso", 20, "saving", _at(1), _at(30)),
    ("", "qcow2", None, "queued", _at(1, 1), _at(20)),
    ("Gamma", "raw", 5, "active", _at(2), _at(10)),
    ("alpha", None, 10, "queued", _at(2), _at(10)),
    ("delta", "iso", None, "queued", _at(2), _at(10)),
    (None, "raw", 0, "active", _at(3), _at(0)),
    ("beta", "qcow2", 20, "queued", _at(3), _at(0)),
    ("alpha", "raw", 10, "queued", _at(3), _at(0)),
]


async def _paging_set(api: ApiClient, db: AsyncEngine) -> list[dict[str, Any]]:
    rows = []
    for name, disk_format, size, status, created, updated in PAGING_SET:
        body: dict[str, Any] = {"name": name, "disk_format": disk_format,
                                "container_format": "bare" if disk_format else None}
        image = await api.create(**body)
        await set_row(db, image["id"], size=size, status=status, created_at=created, updated_at=updated)
        rows.append({"id": image["id"], "name": name, "disk_format": disk_format,
                     "container_format": image["container_format"], "size": size, "status": status,
                     "created_at": created, "updated_at": updated})
    # Images the caller must never page into: another project's, a deleted one, a killed one.
    other = await api.create(as_=MEMBER_B, name="alpha", visibility="private")
    await set_row(db, other["id"], created_at=_at(1))
    gone = await api.create(name="alpha")
    assert (await api.call("DELETE", f"/v2/images/{gone['id']}", as_=MEMBER_A)).status == 204
    killed = await api.create(name="alpha")
    await set_row(db, killed["id"], status="killed")
    return rows


# NULLs order as a stand-in ('' for strings, -1 for size), so both databases page identically.
_STANDIN = {"name": "", "disk_format": "", "container_format": "", "size": -1}


def expected_order(rows: list[dict[str, Any]], keys: list[tuple[str, str]]) -> list[str]:
    ordered = list(rows)
    for key, direction in reversed(keys):
        ordered.sort(key=lambda r: _STANDIN.get(key) if r[key] is None else r[key], reverse=direction == "desc")
    return [r["id"] for r in ordered]


# (query, the full order Glance applies: asked keys, then created_at and id, which take the one
# direction given if exactly one was given, else desc)
SORTS: list[tuple[list[tuple[str, str]], list[tuple[str, str]]]] = [
    ([], [("created_at", "desc"), ("id", "desc")]),
    ([("sort_dir", "asc")], [("created_at", "asc"), ("id", "asc")]),
    ([("sort_key", "name"), ("sort_dir", "asc")], [("name", "asc"), ("created_at", "asc"), ("id", "asc")]),
    ([("sort_key", "name")], [("name", "desc"), ("created_at", "desc"), ("id", "desc")]),
    ([("sort", "name:desc,size:asc")], [("name", "desc"), ("size", "asc"), ("created_at", "desc"), ("id", "desc")]),
    ([("sort", "size:asc,name:asc")], [("size", "asc"), ("name", "asc"), ("created_at", "desc"), ("id", "desc")]),
    ([("sort", "name:asc")], [("name", "asc"), ("created_at", "asc"), ("id", "asc")]),
    ([("sort", "status")], [("status", "desc"), ("created_at", "desc"), ("id", "desc")]),
    ([("sort_key", "size"), ("sort_key", "name"), ("sort_dir", "asc"), ("sort_dir", "desc")],
     [("size", "asc"), ("name", "desc"), ("created_at", "desc"), ("id", "desc")]),
    ([("sort_key", "disk_format"), ("sort_key", "container_format"), ("sort_dir", "asc")],
     [("disk_format", "asc"), ("container_format", "asc"), ("created_at", "asc"), ("id", "asc")]),
    ([("sort", "updated_at:asc,id:desc")], [("updated_at", "asc"), ("id", "desc"), ("created_at", "desc")]),
    ([("sort_key", "id"), ("sort_dir", "asc")], [("id", "asc"), ("created_at", "asc")]),
    ([("sort", "created_at:asc,name")], [("created_at", "asc"), ("name", "desc"), ("id", "desc")]),
]


async def test_sort_orders_and_paging_visit_every_image_once(api: ApiClient, db: AsyncEngine) -> None:
    rows = await _paging_set(api, db)
    for query, keys in SORTS:
        want = expected_order(rows, keys)
        full = await listing(api, [("limit", "100"), *query])
        assert [i["id"] for i in full.json["images"]] == want, query
        # One image a page crosses every boundary of the order.
        for size in (1, 5) if not query else (1,):
            got: list[str] = []
            marker: str | None = None
            for _ in range(len(rows) + 2):
                params = [*query, ("limit", str(size))] + ([("marker", marker)] if marker else [])
                page = (await listing(api, params)).json
                got += [i["id"] for i in page["images"]]
                if "next" not in page:
                    break
                marker = page["images"][-1]["id"]
            assert got == want, (query, size)


async def test_following_next_links(api: ApiClient, db: AsyncEngine) -> None:
    rows = await _paging_set(api, db)
    query = [("sort", "name:asc,size:desc"), ("limit", "4")]
    want = expected_order(rows, [("name", "asc"), ("size", "desc"), ("created_at", "desc"), ("id", "desc")])
    reply = await listing(api, query)
    got = [i["id"] for i in reply.json["images"]]
    while "next" in reply.json:
        reply = await api.call("GET", reply.json["next"], as_=MEMBER_A)
        got += [i["id"] for i in reply.json["images"]]
    assert got == want


async def test_default_order_is_created_at_desc_then_id(api: ApiClient, db: AsyncEngine) -> None:
    ids = [(await api.create(name=f"n{n}"))["id"] for n in range(4)]
    # Two pairs created in the same instant: id breaks the tie, in the same direction.
    for image_id, when in zip(ids, [_at(5), _at(5), _at(9), _at(9)]):
        await set_row(db, image_id, created_at=when)
    newest_first = sorted(ids[2:], reverse=True) + sorted(ids[:2], reverse=True)
    assert [i["id"] for i in (await listing(api)).json["images"]] == newest_first
    oldest_first = sorted(ids[:2]) + sorted(ids[2:])
    assert [i["id"] for i in (await listing(api, [("sort_dir", "asc")])).json["images"]] == oldest_first
    assert [i["id"] for i in (await listing(api, [("sort", "created_at:asc")])).json["images"]] == oldest_first


BAD_SORTS: list[tuple[Params, str]] = [
    ([("sort_key", "owner")], "Invalid sort key: owner"),
    ([("sort_key", "checksum"), ("sort_dir", "asc")], "Invalid sort key"),
    ([("sort_key", "name"), ("sort_dir", "up")], "Invalid sort direction: up"),
    ([("sort_dir", "ASC")], "Invalid sort direction"),
    ([("sort", "name:sideways")], "Invalid sort direction"),
    ([("sort", "bogus:asc")], "Invalid sort key"),
    ([("sort", "")], "Invalid sort key"),
    ([("sort", "name,")], "Invalid sort key"),
    ([("sort", "name: ,size:asc")], "Invalid sort direction"),
    ([("sort_key", "name"), ("sort_dir", "asc"), ("sort_dir", "desc")], "does not match"),
    ([("sort_key", "name"), ("sort_key", "size"), ("sort_key", "id"), ("sort_dir", "asc"), ("sort_dir", "desc")],
     "does not match"),
    ([("sort_dir", "asc"), ("sort_dir", "desc")], "does not match"),
    ([("sort", "name:asc"), ("sort_key", "size")], "cannot be combined"),
    ([("sort_dir", "asc"), ("sort", "name")], "cannot be combined"),
]


async def test_bad_sorting(api: ApiClient) -> None:
    for params, fragment in BAD_SORTS:
        assert fragment in await bad(api, params), params


async def test_sort_syntax_details(api: ApiClient, db: AsyncEngine) -> None:
    for name, size in [("b", 3), ("a", 1), ("c", 2)]:
        image = await api.create(name=name)
        await set_row(db, image["id"], size=size)
    # One direction applies to every key; keys and directions are stripped; "name:" means desc.
    assert await names(api, [("sort_key", " size "), ("sort_key", "name"), ("sort_dir", "asc ")]) == ["a", "c", "b"]
    assert await names(api, [("sort", " name:asc , size:desc ")]) == ["a", "b", "c"]
    assert await names(api, [("sort", "name:")]) == ["c", "b", "a"]
    assert await names(api, [("sort", " name: ")]) == ["c", "b", "a"]
    assert await names(api, [("sort", "size")]) == ["b", "c", "a"]


# -- visibility and membership ------------------------------------------------------------------

async def test_default_visibility_for_regular_users(api: ApiClient, db: AsyncEngine) -> None:
    await build_world(api, db)
    # Public, everything of their own (community included), and shared-with-them that they accepted.
    a_sees = PUB | A_OWN | {"b-shared-a-acc", "c-shared-a-acc-b-pend"}
    assert await name_set(api) == a_sees
    assert await name_set(api, as_=READER_A) == a_sees
    assert await name_set(api, as_=MEMBER_B) == PUB | B_OWN | {"a-shared-b-acc"}
    assert await name_set(api, as_=MEMBER_C) == PUB | C_OWN


async def test_visibility_filter_for_regular_users(api: ApiClient, db: AsyncEngine) -> None:
    await build_world(api, db)
    assert await name_set(api, [("visibility", "public")]) == PUB
    assert await name_set(api, [("visibility", "private")]) == {"a-private", "a-was-shared"}
    assert await name_set(api, [("visibility", "shared")]) == A_SHARED_OWN | {"b-shared-a-acc",
                                                                              "c-shared-a-acc-b-pend"}
    # Every community image, whoever owns it.
    assert await name_set(api, [("visibility", "community")]) == COMMUNITY
    assert await name_set(api, [("visibility", "all")]) == (PUB | A_OWN | COMMUNITY
                                                           | {"b-shared-a-acc", "c-shared-a-acc-b-pend"})
    assert await name_set(api, [("visibility", "private")], as_=MEMBER_C) == {"c-private"}
    for value in ("everyone", "Public", "PRIVATE", "none"):
        assert "Invalid visibility value" in await bad(api, [("visibility", value)])
    # An empty value is not checked, and matches no image (Glance filters on visibility == '').
    assert await names(api, [("visibility", "")]) == []


async def test_member_status_only_concerns_images_shared_with_me(api: ApiClient, db: AsyncEngine) -> None:
    await build_world(api, db)
    mine = PUB | A_OWN
    assert await name_set(api, [("member_status", "accepted")]) == mine | {"b-shared-a-acc", "c-shared-a-acc-b-pend"}
    assert await name_set(api, [("member_status", "pending")]) == mine | {"b-shared-a-pend"}
    assert await name_set(api, [("member_status", "rejected")]) == mine | {"b-shared-a-rej"}
    assert await name_set(api, [("member_status", "all")]) == mine | {
        "b-shared-a-acc", "b-shared-a-pend", "b-shared-a-rej", "c-shared-a-acc-b-pend"}
    assert await name_set(api, [("visibility", "shared"), ("member_status", "pending")]) == A_SHARED_OWN | {
        "b-shared-a-pend"}
    assert await name_set(api, [("member_status", "pending")], as_=MEMBER_B) == PUB | B_OWN | {
        "a-shared-b-pend", "c-shared-a-acc-b-pend"}
    assert await name_set(api, [("member_status", "rejected"), ("visibility", "shared")], as_=MEMBER_B) == {
        "a-shared-b-rej", "b-shared-a-acc", "b-shared-a-pend", "b-shared-a-rej"}
    for value in ("accept", "ACCEPTED", "", "any"):
        assert "Invalid status" in await bad(api, [("member_status", value)])


async def test_admin_visibility(api: ApiClient, db: AsyncEngine) -> None:
    await build_world(api, db)
    # Admins see every image, except community images they do not own unless they ask for them.
    default = await name_set(api, as_=ADMIN)
    assert default == (EVERYTHING - COMMUNITY) | {"admin-community"}
    assert await name_set(api, [("member_status", "rejected")], as_=ADMIN) == default
    assert await name_set(api, [("visibility", "community")], as_=ADMIN) == COMMUNITY
    assert await name_set(api, [("visibility", "all")], as_=ADMIN) == EVERYTHING
    assert await name_set(api, [("visibility", "private")], as_=ADMIN) == {"a-private", "a-was-shared", "b-private",
                                                                            "c-private"}
    assert await name_set(api, [("visibility", "shared"), ("owner", PROJECT_B)], as_=ADMIN) == {
        "b-shared-a-acc", "b-shared-a-pend", "b-shared-a-rej"}


async def test_hidden_deleted_and_killed(api: ApiClient, db: AsyncEngine) -> None:
    ids = await build_world(api, db)
    assert await name_set(api, [("os_hidden", "true")]) == {"pub-hidden", "a-hidden"}
    assert await name_set(api, [("os_hidden", "TRUE"), ("visibility", "all")], as_=MEMBER_B) == {"pub-hidden"}
    assert await name_set(api, [("os_hidden", "True")], as_=ADMIN) == {"pub-hidden", "a-hidden"}
    assert await name_set(api, [("os_hidden", "False")]) == await name_set(api)
    for value in ("yes", "1", "", "t", "on"):
        assert "os_hidden" in await bad(api, [("os_hidden", value)])
    # Deleted and killed images are never listed, whatever the filters.
    for params in ([("visibility", "all")], [("status", "in:killed,deleted,queued")], [("status", "killed")],
                   [("id", f"in:{ids['a-deleted']},{ids['a-killed']}")], [("member_status", "all")]):
        for who in (ADMIN, MEMBER_A, MEMBER_B):
            found = await name_set(api, params, as_=who)
            assert not found & {"a-deleted", "a-killed"}, (params, who)
    assert await names(api, [("status", "killed")], as_=ADMIN) == []
    # deleted is not a filter: Glance always lists undeleted images.
    assert await name_set(api, [("deleted", "true")]) == await name_set(api)


async def test_marker_rules(api: ApiClient, db: AsyncEngine) -> None:
    ids = await build_world(api, db)
    order = [i["id"] for i in (await listing(api, [("limit", "100")])).json["images"]]
    middle = order[5]
    after = await listing(api, [("marker", middle), ("limit", "100")])
    assert [i["id"] for i in after.json["images"]] == order[6:]
    # Unknown, malformed and deleted markers are 400, as Glance's NotFound is.
    assert "No image found" in await bad(api, [("marker", str(uuid.uuid4()))])
    for marker in ("not-a-uuid", "x" * 80, ids["a-deleted"], ""):
        await bad(api, [("marker", marker)])
    # An image the caller cannot see: Glance's marker lookup raises Forbidden (403).
    for name in ("b-private", "c-private", "a-shared-b-pend"):
        who = MEMBER_A if name != "a-shared-b-pend" else MEMBER_C
        await bad(api, [("marker", ids[name])], as_=who, status=403)
    # Any membership of a shared image makes it a valid marker, whatever its status; so do hidden,
    # killed and community images the caller may see; the page is what follows it in the order.
    created = {image_id: n for n, image_id in enumerate(ids.values())}  # build_world creates in this order

    def older_than(name: str, newest_first: list[str]) -> list[str]:
        return [i for i in newest_first if created[i] < created[ids[name]]]

    for name in ("b-shared-a-pend", "b-shared-a-rej", "a-hidden", "a-killed", "b-community"):
        reply = await listing(api, [("marker", ids[name]), ("limit", "100")])
        assert reply.status == 200, (name, reply.body)
        assert [i["id"] for i in reply.json["images"]] == older_than(name, order), name
    # Admins may use any image as a marker, a deleted one too.
    admin_order = [i["id"] for i in (await listing(api, [("limit", "100")], as_=ADMIN)).json["images"]]
    for name in ("a-deleted", "b-private"):
        reply = await listing(api, [("marker", ids[name]), ("limit", "100")], as_=ADMIN)
        assert [i["id"] for i in reply.json["images"]] == older_than(name, admin_order), name


# -- filters -------------------------------------------------------------------------------------

async def test_protected_and_tags(api: ApiClient, db: AsyncEngine) -> None:
    await build_world(api, db)
    assert await name_set(api, [("protected", "true")]) == {"a-private"}
    assert await name_set(api, [("protected", "false")]) == await name_set(api) - {"a-private"}
    for value in ("True", "yes", "1", ""):
        assert "protected" in await bad(api, [("protected", value)])
    # Tags combine with AND; each is stripped.
    assert await name_set(api, [("tag", "linux")]) == {"pub-admin", "a-private", "a-shared-none", "b-shared-a-acc"}
    assert await name_set(api, [("tag", "linux"), ("tag", "x86")]) == {"pub-admin", "a-private", "b-shared-a-acc"}
    assert await name_set(api, [("tag", "x86"), ("tag", " lts ")]) == {"pub-admin"}
    assert await names(api, [("tag", "linux"), ("tag", "nope")]) == []
    assert await names(api, [("tag", "Linux")]) == []
    assert await name_set(api, [("tag", "linux"), ("protected", "false"), ("visibility", "shared")]) == {
        "a-shared-none", "b-shared-a-acc"}


async def test_property_and_column_equality(api: ApiClient, db: AsyncEngine) -> None:
    ids = await build_world(api, db)
    assert await name_set(api, [("os_distro", "ubuntu")]) == {"pub-admin", "a-private"}
    assert await name_set(api, [("os_distro", "ubuntu")], as_=MEMBER_B) == {"pub-admin", "b-private"}
    assert await name_set(api, [("os_distro", "ubuntu"), ("hw_arch", "x86_64")]) == {"pub-admin"}
    assert await names(api, [("os_distro", "Ubuntu")]) == []
    assert await names(api, [("no_such_property", "x")]) == []
    assert await name_set(api, [("owner", PROJECT_B)]) == {"pub-b", "b-shared-a-acc"}
    assert await name_set(api, [("owner", PROJECT_B), ("member_status", "all")]) == {
        "pub-b", "b-shared-a-acc", "b-shared-a-pend", "b-shared-a-rej"}
    assert await names(api, [("owner", PROJECT_A[:-1])]) == []
    assert await name_set(api, [("name", "a-private")]) == {"a-private"}
    assert await name_set(api, [("id", ids["pub-b"])]) == {"pub-b"}
    assert await name_set(api, [("min_ram", "2048")]) == {"pub-admin"}
    assert await name_set(api, [("status", "queued"), ("container_format", "bare"), ("disk_format", "raw"),
                                ("visibility", "public")]) == PUB
    assert await names(api, [("min_ram", "lots")]) == []
    assert await names(api, [("size", "1.0")], as_=ADMIN) == []
    assert await names(api, [("x" * 300, "1")]) == []
    # checksum and os_hash_value compare for equality; the server computes them on upload.
    await set_row(db, ids["a-shared-none"], checksum="0" * 32, os_hash_algo="sha512", os_hash_value="ab" * 64)
    await set_row(db, ids["b-private"], checksum="0" * 32)
    assert await name_set(api, [("checksum", "0" * 32)]) == {"a-shared-none"}
    assert await name_set(api, [("checksum", "0" * 32)], as_=ADMIN) == {"a-shared-none", "b-private"}
    assert await name_set(api, [("os_hash_value", "ab" * 64)]) == {"a-shared-none"}
    assert await name_set(api, [("os_hash_algo", "sha512")]) == {"a-shared-none"}
    assert await names(api, [("checksum", "1" * 32)]) == []
    assert "no longer available" in await bad(api, [("changes-since", "2024-01-01T00:00:00Z")])


async def test_repeated_filters_take_the_last_value(api: ApiClient) -> None:
    for name in ("one", "two"):
        await api.create(name=name, os_distro=name)
    assert await names(api, [("name", "one"), ("name", "two")]) == ["two"]
    assert await names(api, [("os_distro", "two"), ("os_distro", "one")]) == ["one"]
    assert await names(api, [("os_hidden", "true"), ("os_hidden", "false"), ("sort", "name:asc")]) == ["one", "two"]
    assert await names(api, [("visibility", "private"), ("visibility", "shared")]) == []
    # limit, marker, member_status and sort take their first value; Glance leaves a repeat among
    # the filters, where it is a property filter that matches no image.
    assert await names(api, [("sort", "name:asc")]) == ["one", "two"]
    assert await names(api, [("sort", "name:asc"), ("sort", "name:desc")]) == []
    reply = await listing(api, [("limit", "1"), ("limit", "5")])
    assert reply.status == 200 and reply.json["images"] == []


async def test_ranges(api: ApiClient, db: AsyncEngine) -> None:
    specs = {"tiny": (0, 0, 0), "small": (256, 1, 1024), "medium": (1024, 10, 10 ** 9),
             "large": (4096, 40, 5 * 10 ** 10), "nosize": (512, 5, None)}
    for name, (ram, disk, size) in specs.items():
        image = await api.create(name=name, min_ram=ram, min_disk=disk)
        await set_row(db, image["id"], size=size, virtual_size=None if size is None else size * 2)
    assert await name_set(api, [("min_ram_min", "512")]) == {"medium", "large", "nosize"}
    assert await name_set(api, [("min_ram_max", "512")]) == {"tiny", "small", "nosize"}
    assert await name_set(api, [("min_ram_min", "256"), ("min_ram_max", "1024")]) == {"small", "medium", "nosize"}
    assert await name_set(api, [("min_disk_min", "5"), ("min_disk_max", "10")]) == {"medium", "nosize"}
    assert await name_set(api, [("min_disk_min", "-3")]) == set(specs)
    # An image without data has no size: it is in no size range.
    assert await name_set(api, [("size_min", "1024")]) == {"small", "medium", "large"}
    assert await name_set(api, [("size_max", str(10 ** 9))]) == {"tiny", "small", "medium"}
    assert await name_set(api, [("size_min", "1"), ("size_max", "1024")]) == {"small"}
    assert await name_set(api, [("size_min", str(10 ** 10))]) == {"large"}
    assert await name_set(api, [("virtual_size_min", str(2 * 10 ** 9))]) == {"medium", "large"}
    assert await name_set(api, [("size", "0")]) == {"tiny"}
    assert await names(api, [("size_min", "2"), ("size_max", "1")]) == []
    for key in ("size_min", "size_max", "min_ram_min", "min_disk_max", "virtual_size_min", "whatever_min"):
        for value in ("big", "1.5", ""):
            assert "non-numeric" in await bad(api, [(key, value)]), (key, value)


async def test_time_filters(api: ApiClient, db: AsyncEngine) -> None:
    # The API shows times to the second; filters compare at that precision, so a time copied from
    # an image's created_at finds that image with eq, and gt excludes it.
    times = {"t1": _at(100, 250000), "t2": _at(100, 750000), "t3": _at(101), "t4": _at(86400 * 40, 500000)}
    for name, when in times.items():
        image = await api.create(name=name)
        await set_row(db, image["id"], created_at=when, updated_at=when + dt.timedelta(days=1))
    shown = (await listing(api, [("name", "t1")])).json["images"][0]["created_at"]
    assert shown == "2024-05-01T08:01:40Z"
    nxt = "2024-05-01T08:01:41Z"
    cases = [
        (f"eq:{shown}", {"t1", "t2"}), (shown, {"t1", "t2"}), (f"neq:{shown}", {"t3", "t4"}),
        (f"gt:{shown}", {"t3", "t4"}), (f"gte:{shown}", {"t1", "t2", "t3", "t4"}),
        (f"lt:{nxt}", {"t1", "t2"}), (f"lte:{shown}", {"t1", "t2"}), (f"lte:{nxt}", {"t1", "t2", "t3"}),
        ("gt:2024-05-01T08:01:40.5Z", {"t3", "t4"}), ("gte:2024-05-01T08:01:40.5Z", {"t3", "t4"}),
        ("lt:2024-05-01T08:01:40.5Z", {"t1", "t2"}), ("eq:2024-05-01T08:01:40.5Z", set()),
        ("neq:2024-05-01T08:01:40.5Z", {"t1", "t2", "t3", "t4"}),
        ("eq:2024-05-01T09:01:40+01:00", {"t1", "t2"}), ("2024-05-01T03:31:40-0430", {"t1", "t2"}),
        ("eq:2024-05-01 08:01:40", {"t1", "t2"}), ("eq:20240501T080140Z", {"t1", "t2"}),
        ("gte:2024-06-01", {"t4"}), ("lt:2024-6-10", {"t1", "t2", "t3"}), ("gt:2024", {"t1", "t2", "t3", "t4"}),
        ("lt:2024", set()), ("gte:2024-05-01T08:02", {"t4"}),
    ]
    for value, want in cases:
        assert await name_set(api, [("created_at", value)]) == want, value
    assert await name_set(api, [("updated_at", "gt:2024-05-02T08:01:40Z")]) == {"t3", "t4"}
    assert await name_set(api, [("updated_at", "eq:2024-05-02T08:01:40Z")]) == {"t1", "t2"}
    # A repeated filter key: the last value wins (Glance builds a dict from the query).
    assert await name_set(api, [("created_at", f"gte:{nxt}"), ("created_at", "lt:2024-05-02")]) == {"t1", "t2", "t3"}
    assert await name_set(api, [("created_at", f"gte:{shown}"), ("updated_at", "lt:2024-05-03")]) == {"t1", "t2", "t3"}
    for value in ("lt:yesterday", "gt:", "", "2024-13-01T00:00:00Z", "eq:2024-05-01T25:00:00Z", " 2024-05-01",
                  "gt:2024-05-01T08:01:40+25:00", "eq:0000-01-01", "in:2024-05-01,2024-05-02"):
        assert "ISO 8601" in await bad(api, [("created_at", value)]), value
    for value in ("like:2024-05-01T08:01:40Z", "gtx:2024", "in:2024-05-01", "GT:2024"):
        assert "operator" in await bad(api, [("updated_at", value)]), value


async def test_in_operator(api: ApiClient, db: AsyncEngine) -> None:
    ids = {}
    for name, disk, container in [("alpha", "qcow2", "bare"), ("beta", "raw", "ovf"), ("a,b", "iso", "bare"),
                                  ("c", "raw", "bare"), ("2024-05-01T08:00:00", "vmdk", "ova"), ("", "raw", "bare"),
                                  ('d"e', "raw", "bare"), ('d\\"e', "raw", "bare")]:
        ids[name] = (await api.create(name=name, disk_format=disk, container_format=container))["id"]
    await set_row(db, ids["beta"], status="active")
    assert await name_set(api, [("name", "in:alpha,beta")]) == {"alpha", "beta"}
    assert await name_set(api, [("name", 'in:"a,b",c')]) == {"a,b", "c"}
    assert await name_set(api, [("name", 'in:"a,b"')]) == {"a,b"}
    assert await name_set(api, [("name", 'in:c,"a,b"')]) == {"a,b", "c"}
    assert await names(api, [("name", "in:a,b")]) == []
    # A trailing comma adds no item, an empty list matches nothing; two commas make an empty item.
    assert await name_set(api, [("name", "in:alpha,")]) == {"alpha"}
    assert await names(api, [("name", "in:")]) == []
    assert await name_set(api, [("name", "in:alpha,,c")]) == {"alpha", "", "c"}
    assert await name_set(api, [("name", 'in:"",beta')]) == {"", "beta"}
    # A backslash escapes a quote for the quote rules, and stays in the value (as in Glance).
    assert await name_set(api, [("name", 'in:"d\\"e"')]) == {'d\\"e'}
    assert await name_set(api, [("name", 'in:d\\"e,c')]) == {'d\\"e', "c"}
    assert await name_set(api, [("name", "eq:alpha")]) == {"alpha"}
    # A bare ISO time with colons is an equality value, not an operator.
    assert await name_set(api, [("name", "2024-05-01T08:00:00")]) == {"2024-05-01T08:00:00"}
    assert await name_set(api, [("id", f"in:{ids['alpha']},{ids['c']},{uuid.uuid4()}")]) == {"alpha", "c"}
    assert await name_set(api, [("status", "in:active,killed")]) == {"beta"}
    assert await name_set(api, [("status", "in:queued")]) == set(ids) - {"beta"}
    assert await name_set(api, [("name", "")]) == {""}
    assert await name_set(api, [("container_format", "in:ovf,ova")]) == {"beta", "2024-05-01T08:00:00"}
    assert await name_set(api, [("disk_format", "in:qcow2,iso"), ("container_format", "bare")]) == {"a,b", "alpha"}
    assert await name_set(api, [("disk_format", "in:raw,iso"), ("name", 'in:"a,b",beta')]) == {"a,b", "beta"}
    for value, fragment in [('in:"a,b', "not closed"), ('in:x"a,b"', "no comma before"),
                            ('in:"a,b"x', "no comma after"), ('in:"a",b"', "no comma before"),
                            ('in:"a","b', "not closed")]:
        assert fragment in await bad(api, [("name", value)]), value
    for key, value in [("name", "like:alpha"), ("status", "gt:active"), ("id", "neq:x"),
                       ("disk_format", "nin:raw"), ("container_format", "IN:bare"), ("name", "foo:bar")]:
        assert "operator" in await bad(api, [(key, value)]), (key, value)


async def test_operators_on_other_fields_are_literal_values(api: ApiClient) -> None:
    await api.create(name="literal", os_distro="in:ubuntu,debian", os_version="gt:5")
    await api.create(name="plain", os_distro="ubuntu")
    assert await name_set(api, [("os_distro", "in:ubuntu,debian")]) == {"literal"}
    assert await name_set(api, [("os_version", "gt:5")]) == {"literal"}
    assert await names(api, [("os_version", "5")]) == []
    assert await names(api, [("owner", f"in:{PROJECT_A},{PROJECT_B}")]) == []
    assert await names(api, [("checksum", "in:abc")]) == []
    assert await names(api, [("os_distro", 'in:"ubuntu"')]) == []
