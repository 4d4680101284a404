"""A page of the list reads the index of its sort order and stops at the limit (issue 18 item 5).

On SQLite the catalogue names the index (``INDEXED BY``): without statistics its planner gathers
every visible image through the visibility indexes and sorts them all, a page then costing as
much as the catalogue is large. These tests read the plan SQLite makes of the very statement
the catalogue sends, and check that paging along those indexes lists what sorting everything
would: names missing (NULL, listed as ''), names shared by several images, both directions.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from sqlalchemy import event

from conftest import PROJECT_A, PROJECT_B
from streamd.catalog import Catalog
from streamd.catalog.query import parse_list_params
from streamd.context import RequestContext

MEMBER = RequestContext(project_id=PROJECT_B, user_id="b", roles=frozenset({"reader", "member"}))


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    catalog = await Catalog.open(f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        for k in range(120):
            visibility = ("public", "private", "shared", "community")[k % 4]
            image = await catalog.create_image(
                {"name": None if k % 9 == 0 else f"name-{k % 13:02d}", "visibility": visibility,
                 "owner": PROJECT_A if k % 5 else PROJECT_B, "disk_format": "raw", "container_format": "bare"},
                {"k": str(k)}, [])
            if visibility == "shared" and k % 3:
                member = await catalog.add_member(image.id, PROJECT_B)
                if k % 2:
                    await catalog.update_member(image.id, member.member, "accepted")
        yield catalog
    finally:
        await catalog.close()


async def _plan(catalog: Catalog, params: list[tuple[str, str]]) -> tuple[str, list[Any]]:
    """The plan of the page query ``list_images`` sends, and the page."""
    sent: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        sent.append((statement, parameters))

    event.listen(catalog.engine.sync_engine, "before_cursor_execute", seen)
    try:
        page, _ = await catalog.list_images(MEMBER, parse_list_params(params, limit_default=10, limit_max=1000))
    finally:
        event.remove(catalog.engine.sync_engine, "before_cursor_execute", seen)
    statement, parameters = next((s, p) for s, p in reversed(sent) if s.lstrip().startswith("SELECT images.id"))
    async with catalog.engine.connect() as conn:
        rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
    return "\n".join(str(r[-1]) for r in rows), page


@pytest.mark.parametrize(("sort", "index"), [
    ([], "ix_images_created_at_id"),
    ([("sort", "created_at:asc")], "ix_images_created_at_id"),
    ([("sort", "name:asc,created_at:desc")], "ix_images_name_created_at_id_desc"),
    ([("sort", "name:desc,created_at:asc,id:asc")], "ix_images_name_created_at_id_desc"),
    ([("sort", "name:asc")], "ix_images_name_created_at_id"),
    ([("sort_key", "name"), ("sort_dir", "desc")], "ix_images_name_created_at_id"),
])
async def test_a_page_reads_its_sort_index_without_sorting(catalog: Catalog, sort: list[tuple[str, str]],
                                                           index: str) -> None:
    plan, page = await _plan(catalog, sort)
    assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan
    plan, _ = await _plan(catalog, sort + [("marker", page[-1].id)])
    # From the marker on: a range of the index (its first key bounded), not a scan from the start.
    assert f"SEARCH images USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan


async def test_a_sort_no_index_holds_is_sorted_as_before(catalog: Catalog) -> None:
    plan, page = await _plan(catalog, [("sort", "size:asc,name:desc")])
    assert "TEMP B-TREE" in plan and page


def _key(image: Any, key: str) -> Any:
    if key == "name":
        return image.name or ""
    return getattr(image, key)


@pytest.mark.parametrize("sort", ["name:asc,created_at:desc", "name:desc,created_at:asc", "name:asc", "name:desc",
                                  "created_at:desc", "created_at:asc"])
async def test_paging_along_the_index_lists_what_sorting_everything_would(catalog: Catalog, sort: str) -> None:
    everything, _ = await catalog.list_images(MEMBER, parse_list_params([("limit", "1000")],
                                                                        limit_default=1000, limit_max=1000))
    assert len({_key(i, "name") for i in everything}) > 5 and any(i.name is None for i in everything)
    pairs = [(item.split(":")[0], (item.split(":") + ["desc"])[1]) for item in sort.split(",")]
    tiebreak = pairs[0][1] if len(pairs) == 1 else "desc"
    keys = pairs + [(k, tiebreak) for k in ("created_at", "id") if k not in dict(pairs)]
    expected = list(everything)
    for key, direction in reversed(keys):  # stable sorts, last key first
        expected.sort(key=lambda i: _key(i, key), reverse=direction == "desc")
    walked: list[Any] = []
    marker: list[tuple[str, str]] = []
    while True:
        page, full = await catalog.list_images(MEMBER, parse_list_params([("sort", sort), ("limit", "7")] + marker,
                                                                         limit_default=7, limit_max=1000))
        walked += page
        if not full:
            break
        marker = [("marker", page[-1].id)]
    assert [i.id for i in walked] == [i.id for i in expected]
    assert isinstance(walked[0].created_at, dt.datetime)


@pytest.mark.parametrize("sort", ["name:asc,created_at:desc", "created_at:desc"])
async def test_a_rare_tag_is_listed_from_its_own_images(catalog: Catalog, sort: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag on fewer than RARE_TAG_IMAGES images: the tag's rows are the outer loop (walking the
    sort order would visit catalogue/tagged images per one listed), and the pages, marker by
    marker, are those of walking the sort order; a tag on more images walks the sort index."""
    from streamd.catalog import listing

    everything, _ = await catalog.list_images(MEMBER, parse_list_params([("limit", "1000")],
                                                                        limit_default=1000, limit_max=1000))
    for n, image in enumerate(everything):
        if n % 3 == 0:
            await catalog.add_tag(image.id, "third")

    async def walk() -> tuple[list[str], str]:
        walked: list[str] = []
        marker: list[tuple[str, str]] = []
        while True:
            plan, page = await _plan(catalog, [("sort", sort), ("tag", "third"), ("limit", "4")] + marker)
            walked += [i.id for i in page]
            if len(page) < 4:
                return walked, plan
            marker = [("marker", page[-1].id)]

    rare, rare_plan = await walk()
    assert rare_plan.startswith("SEARCH rare_tag USING INDEX ix_image_tags_value"), rare_plan
    monkeypatch.setattr(listing, "RARE_TAG_IMAGES", 10)  # the tag is on 12 of the images the member sees and more
    common, common_plan = await walk()
    assert "rare_tag" not in common_plan and "USING INDEX ix_images_" in common_plan, common_plan
    assert rare == common and len(rare) == len({i.id for i in everything[::3]})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_plans_each_statement_for_its_values(database_url: str) -> None:
    """asyncpg prepares every statement; PostgreSQL would move one run often enough to a generic
    plan, blind to its values (a property filter's page then reads every image with that
    property). The catalogue's connections ask for custom plans."""
    catalog = await Catalog.open(database_url)
    try:
        async with catalog.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
    finally:
        await catalog.close()
