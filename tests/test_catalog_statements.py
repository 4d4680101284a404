"""SQL statements per request (issue 18 item 5): a fixed number, whatever the catalogue holds.

The real application on a loopback port, over a real SQLite or PostgreSQL catalogue; every
statement its engine sends is counted (an SQLAlchemy ``before_cursor_execute`` listener; an
executemany is one statement). SQLite's explicit ``BEGIN``/``BEGIN IMMEDIATE`` (the catalogue
takes transaction control from the driver) is not counted, so that both back-ends give the
same figures: a page of the list, an image, a create and a PATCH each cost the same number
of statements with 10 images or 200 on the project, 1 property or 30, 2 ops or 40: no N+1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from sqlalchemy import event

from conftest import MEMBER_A, MEMBER_B, PROJECT_A, PROJECT_B, ApiClient, both_databases, make_config, start_api
from streamd.api.app import SERVICES
from streamd.catalog import Catalog

pytestmark = both_databases

# The figures today: list = the page + its properties, tags and locations; a marker adds its
# lookup; show = one SELECT (the image row, its properties, tags and locations gathered as JSON,
# and the caller's membership); create = the three INSERTs (the primary key refuses a taken id;
# nothing is read back), on PostgreSQL one statement that makes all three (CREATE_STATEMENTS); PATCH = the read the API checks the patch against, then in the
# transaction the read for update, the UPDATE of the row, one DELETE and one upsert of
# properties, one DELETE and one INSERT of tags (the result is built from what was written).
LIST, LIST_MARKER, SHOW, CREATE, PATCH = 4, 5, 1, 3, 7
# On SQLite a list filtered by tag first counts the tag's images (no further than
# listing.RARE_TAG_IMAGES), to choose between walking the sort order and gathering the tag's own.
TAG_COUNT = {"sqlite": 1, "postgresql": 0}
CREATE_STATEMENTS = {"sqlite": CREATE, "postgresql": 1}


class Counted:
    def __init__(self, client: ApiClient, catalog: Catalog) -> None:
        self.client, self.catalog = client, catalog
        self.tag_count = TAG_COUNT["sqlite" if catalog.is_sqlite else "postgresql"]
        self.create = CREATE_STATEMENTS["sqlite" if catalog.is_sqlite else "postgresql"]
        self.statements: list[str] = []
        # Every engine: on a SQLite file a show's read goes through the catalogue's reader threads.
        for engine in catalog.sync_engines:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Nor the daemon's WAL checkpoints (a background job's, every second: no request's).
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA WAL_CHECKPOINT")):
            self.statements.append(statement)

    async def count(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        self.statements.clear()
        reply = await self.client.call(method, path, **kwargs)
        assert reply.status < 300, reply.body
        return len(self.statements), reply.json if reply.body else None

    async def patch_count(self, image_id: str, ops: list[dict[str, Any]]) -> tuple[int, Any]:
        self.statements.clear()
        reply = await self.client.patch(image_id, ops)
        assert reply.status == 200, reply.body
        return len(self.statements), reply.json

    async def seed(self, n: int, n_props: int, *, start: int = 0) -> list[str]:
        """``n`` images of project A (every third shared with B, as a member), each with
        ``n_props`` properties and three tags; their ids, oldest first."""
        ids = []
        for k in range(start, start + n):
            visibility = ("private", "public", "shared")[k % 3]
            image = await self.catalog.create_image(
                {"name": f"img-{k:04d}", "visibility": visibility, "owner": PROJECT_A,
                 "disk_format": "raw", "container_format": "bare"},
                {f"prop_{j}": f"value-{k}-{j}" for j in range(n_props)}, [f"t{k % 5}", "all", f"u{k}"])
            if visibility == "shared":
                await self.catalog.add_member(image.id, PROJECT_B)
            ids.append(image.id)
        return ids


@pytest.fixture
async def counted(tmp_path: Path, database_url: str) -> AsyncIterator[Counted]:
    server, client, session = await start_api(make_config(tmp_path, database_url))
    try:
        yield Counted(client, server.app[SERVICES].catalog)
    finally:
        await session.close()
        await server.close()


async def _request_counts(c: Counted, ids: list[str], limit: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    counts["list"], page = await c.count("GET", "/v2/images", as_=MEMBER_A, params={"limit": str(limit)})
    assert len(page["images"]) == limit
    marker = page["images"][-1]["id"]
    counts["list_marker"], page2 = await c.count("GET", "/v2/images", as_=MEMBER_A,
                                                 params={"limit": str(limit), "marker": marker})
    assert page2["images"] and not {i["id"] for i in page2["images"]} & {i["id"] for i in page["images"]}
    counts["list_sorted"], page3 = await c.count(
        "GET", "/v2/images", as_=MEMBER_A,
        params=[("limit", str(limit)), ("tag", "all"), ("visibility", "all"), ("member_status", "all"),
                ("sort", "name:asc,created_at:desc")])
    assert [i["name"] for i in page3["images"]] == sorted(i["name"] for i in page3["images"])
    assert len(page3["images"]) == limit
    first = (await c.client.call("GET", f"/v2/images/{ids[0]}", as_=MEMBER_A)).json
    counts["list_property"], page4 = await c.count(
        "GET", "/v2/images", as_=MEMBER_A, params=[("prop_0", first["prop_0"]), ("tag", "all")])
    assert [i["id"] for i in page4["images"]] == [ids[0]]
    counts["list_member"], _ = await c.count("GET", "/v2/images", as_=MEMBER_B,
                                             params={"limit": str(limit), "visibility": "shared",
                                                     "member_status": "all"})
    counts["show"], shown = await c.count("GET", f"/v2/images/{ids[0]}", as_=MEMBER_A)
    assert shown["id"] == ids[0]
    return counts


async def test_statements_per_request_do_not_grow_with_the_catalogue(counted: Counted) -> None:
    ids = await counted.seed(10, 1)
    small = await _request_counts(counted, ids, 5)
    tagged = LIST + counted.tag_count
    assert small == {"list": LIST, "list_marker": LIST_MARKER, "list_sorted": tagged, "list_property": tagged,
                     "list_member": LIST,
                     "show": SHOW}, small
    ids += await counted.seed(190, 30, start=10)
    large = await _request_counts(counted, ids[10:], 50)
    assert large == small


async def test_create_costs_the_same_whatever_it_carries(counted: Counted) -> None:
    few, image = await counted.count("POST", "/v2/images", as_=MEMBER_A,
                                     json_body={"name": "a", "disk_format": "raw", "container_format": "bare",
                                                "tags": ["x"], "p": "1"})
    many, image2 = await counted.count(
        "POST", "/v2/images", as_=MEMBER_A,
        json_body={"name": "b", "disk_format": "raw", "container_format": "bare",
                   "tags": [f"t{n}" for n in range(20)], **{f"p{n}": str(n) for n in range(30)}})
    assert (few, many) == (counted.create, counted.create)
    assert len(image2["tags"]) == 20 and image2["p29"] == "29"


async def test_patch_writes_properties_and_tags_in_one_statement_each(counted: Counted) -> None:
    (image_id,) = await counted.seed(1, 20)

    def ops(n: int, round_: int) -> list[dict[str, Any]]:
        # n replaced, n added, n removed properties; the tag list replaced (n tags out, n in); a rename
        return ([{"op": "replace", "path": f"/prop_{j}", "value": f"r{round_}"} for j in range(n)]
                + [{"op": "add", "path": f"/new_{round_}_{j}", "value": "v"} for j in range(n)]
                + [{"op": "remove", "path": f"/prop_{19 - j - round_ * n}"} for j in range(n)]
                + [{"op": "replace", "path": "/tags", "value": [f"r{round_}-{j}" for j in range(n)]},
                   {"op": "replace", "path": "/name", "value": f"round {round_}"}])

    small, after = await counted.patch_count(image_id, ops(1, 0))
    assert small == PATCH
    assert after["prop_0"] == "r0" and after["new_0_0"] == "v" and "prop_19" not in after
    assert after["tags"] == ["r0-0"] and after["name"] == "round 0"
    large, after = await counted.patch_count(image_id, ops(5, 1))
    assert large == PATCH
    assert all(after[f"prop_{j}"] == "r1" for j in range(5)) and after["new_1_4"] == "v"
    assert not any(f"prop_{j}" in after for j in range(10, 15))
    assert sorted(after["tags"]) == [f"r1-{j}" for j in range(5)]
    assert PROJECT_A == after["owner"]


async def test_a_page_reads_the_same_rows_as_one_request_per_image(counted: Counted) -> None:
    """What the batched hydration hands back is what showing each image gives (no row of one
    image's properties or tags leaks into another's)."""
    ids = await counted.seed(12, 3)
    _, page = await counted.count("GET", "/v2/images", as_=MEMBER_A, params={"limit": "12"})
    for listed in page["images"]:
        _, shown = await counted.count("GET", f"/v2/images/{listed['id']}", as_=MEMBER_A)
        assert listed == shown
    assert sorted(i["id"] for i in page["images"]) == sorted(ids)



async def test_what_create_and_patch_hand_back_is_what_showing_gives(counted: Counted) -> None:
    """Create and PATCH build their answer from what they wrote (no read back): it must be what
    a read of the image then gives, tags in the catalogue's order (the kept ones by when they
    were added, then the new ones) and attributes as stored."""
    _, made = await counted.count("POST", "/v2/images", as_=MEMBER_A, json_body={
        "name": "a", "disk_format": "raw", "container_format": "bare", "min_disk": 3, "protected": False,
        "tags": ["m", "b", "z", "b"], "p2": "2", "p1": "1"})
    _, shown = await counted.count("GET", f"/v2/images/{made['id']}", as_=MEMBER_A)
    assert made == shown
    assert made["tags"] == ["b", "m", "z"]
    _, patched = await counted.patch_count(made["id"], [
        {"op": "replace", "path": "/tags", "value": ["zz", "z", "aa", "b"]},
        {"op": "replace", "path": "/p1", "value": "one"}, {"op": "remove", "path": "/p2"},
        {"op": "add", "path": "/p3", "value": "3"}, {"op": "replace", "path": "/min_disk", "value": 5},
        {"op": "replace", "path": "/visibility", "value": "private"}])
    _, shown = await counted.count("GET", f"/v2/images/{made['id']}", as_=MEMBER_A)
    assert patched == shown
    assert patched["tags"] == ["b", "z", "aa", "zz"] and patched["min_disk"] == 5 and "p2" not in patched
    assert patched["updated_at"] >= made["updated_at"]
