"""``GET /v2/tasks`` as Glance 33 lists tasks: paging (``limit`` bounded by api_limit_max,
``marker``, the ``next`` link), ``sort_key``/``sort_dir``, the ``status`` and ``type`` filters
(and equality on the other task columns), the caller's project's tasks unless an admin asks,
expired tasks gone, and 400s in Glance's words.

On streamd alone, on both catalogue back-ends, over task rows written through a real catalogue
on the server's database; then against real Glance 33, the same imports on both servers and the
same list requests, answers compared (ids by their creation order, times masked), and the real
``glance task-list --page-size 1`` printing the same.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from conftest import (ADMIN, MEMBER_A, MEMBER_B, PROJECT_A, PROJECT_B, ApiClient, both_databases, make_config,
                      start_api)
from streamd.catalog import Catalog
from streamd.catalog import models as m
from streamd.catalog.records import utcnow
from test_glance_parity import GLANCE_CLI, glance_and_streamd

ROOT = Path(__file__).resolve().parent.parent

# -- streamd alone ----------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiClient]:
    """The application with small page sizes and the tasks API opened to members (Glance's default
    is admins only), so that owner scoping can be seen."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('tasks_api_access: "role:member"\n')
    config = make_config(tmp_path, database_url, DEFAULT={"limit_param_default": "4", "api_limit_max": "6"},
                         oslo_policy={"policy_file": str(policy)})
    server, client, session = await start_api(config)
    try:
        yield client
    finally:
        await session.close()
        await server.close()


# (name, owner, type, status, minutes ago created, expires in hours (None: never))
ROWS = [
    ("a1", PROJECT_A, "api_image_import", "success", 10, 40),
    ("a2", PROJECT_A, "import", "failure", 9, 40),
    ("b1", PROJECT_B, "api_image_import", "processing", 8, None),
    ("a3", PROJECT_A, "api_image_import", "pending", 7, None),
    ("n1", None, "import", "success", 6, 40),
    ("b2", PROJECT_B, "import", "success", 5, 40),
    ("a4", PROJECT_A, "api_image_import", "success", 4, 40),
    ("b3", PROJECT_B, "api_image_import", "failure", 3, 40),
    ("gone", PROJECT_A, "api_image_import", "success", 2, -1),  # expired an hour ago: not listed
]


async def _write_tasks(url: str) -> dict[str, str]:
    ids = {name: str(uuid.uuid4()) for name, *_ in ROWS}
    catalog = await Catalog.open(url)
    now = utcnow()
    try:
        async with catalog.engine.begin() as conn:
            for name, owner, kind, status, ago, expires in ROWS:
                created = now - dt.timedelta(minutes=ago)
                await conn.execute(m.tasks.insert().values(
                    id=ids[name], type=kind, status=status, owner=owner, host="elsewhere", input_json="{}",
                    message="", created_at=created, updated_at=created,
                    expires_at=None if expires is None else now + dt.timedelta(hours=expires)))
    finally:
        await catalog.close()
    return ids


async def _names(api: ApiClient, ids: dict[str, str], query: str, as_: dict[str, str] = ADMIN) -> list[str]:
    reply = await api.call("GET", "/v2/tasks" + query, as_=as_)
    assert reply.status == 200, reply.body
    by_id = {v: k for k, v in ids.items()}
    return [by_id[t["id"]] for t in reply.json["tasks"]]


async def _walk(api: ApiClient, ids: dict[str, str], query: str, as_: dict[str, str] = ADMIN) -> list[list[str]]:
    """Every page, following ``next`` until a page has none."""
    by_id = {v: k for k, v in ids.items()}
    pages, path = [], "/v2/tasks" + query
    for _ in range(20):
        reply = await api.call("GET", path, as_=as_)
        assert reply.status == 200, reply.body
        pages.append([by_id[t["id"]] for t in reply.json["tasks"]])
        if "next" not in reply.json:
            return pages
        path = reply.json["next"]
    raise AssertionError("next links never ended")


NEWEST_FIRST = ["b3", "a4", "b2", "n1", "a3", "b1", "a2", "a1"]


@both_databases
async def test_paging_sorting_and_links(api: ApiClient) -> None:
    ids = await _write_tasks(api.config.database_url)
    # No limit: limit_param_default (4), newest first; the page is full, so a next link.
    reply = await api.call("GET", "/v2/tasks", as_=ADMIN)
    assert reply.status == 200
    body = reply.json
    assert [t["id"] for t in body["tasks"]] == [ids[n] for n in NEWEST_FIRST[:4]]
    assert body["first"] == "/v2/tasks" and body["schema"] == "/v2/schemas/tasks"
    assert body["next"] == f"/v2/tasks?marker={ids['n1']}"
    assert set(body["tasks"][0]) == {"id", "type", "status", "owner", "expires_at", "created_at", "updated_at",
                                     "self", "schema"}
    assert await _walk(api, ids, "") == [NEWEST_FIRST[:4], NEWEST_FIRST[4:], []]
    # A limit beyond api_limit_max (6) is api_limit_max; limit 0 is an empty page without next.
    assert await _walk(api, ids, "?limit=100") == [NEWEST_FIRST[:6], NEWEST_FIRST[6:]]
    reply = await api.call("GET", "/v2/tasks?limit=0", as_=ADMIN)
    assert reply.json["tasks"] == [] and "next" not in reply.json and reply.json["first"] == "/v2/tasks?limit=0"
    # The links keep the query as it came (the marker last, the other names in their order).
    reply = await api.call("GET", f"/v2/tasks?sort_dir=asc&marker={ids['a1']}&limit=3", as_=ADMIN)
    assert reply.json["first"] == "/v2/tasks?sort_dir=asc&limit=3"
    assert reply.json["next"] == f"/v2/tasks?sort_dir=asc&limit=3&marker={ids['a3']}"  # a2, b1, a3
    assert await _walk(api, ids, "?sort_dir=asc&limit=3") == [NEWEST_FIRST[::-1][:3], NEWEST_FIRST[::-1][3:6],
                                                              NEWEST_FIRST[::-1][6:]]
    # sort_key, then created_at and id in the same direction; NULL owners sort as ''.
    assert await _walk(api, ids, "?sort_key=status&sort_dir=asc&limit=6") == \
        [["a2", "b3", "a3", "b1", "a1", "n1"], ["b2", "a4"]]
    by_owner = await _walk(api, ids, "?sort_key=owner&sort_dir=asc&limit=2")
    assert sum(by_owner, []) == ["n1", "a1", "a2", "a3", "a4", "b1", "b2", "b3"]
    expires_desc = sum(await _walk(api, ids, "?sort_key=expires_at&limit=3"), [])
    # Never-expiring tasks (NULL) sort as the earliest time: last when descending.
    assert expires_desc[-2:] == ["a3", "b1"] and len(expires_desc) == 8
    assert await _names(api, ids, "?sort_key=deleted") == NEWEST_FIRST[:4]  # Glance's column, the same for all


@both_databases
async def test_filters_and_owner_scoping(api: ApiClient) -> None:
    ids = await _write_tasks(api.config.database_url)
    assert await _names(api, ids, "?status=success&limit=10") == ["a4", "b2", "n1", "a1"]
    assert await _names(api, ids, "?type=import") == ["b2", "n1", "a2"]
    assert await _names(api, ids, "?type=import&status=success") == ["b2", "n1"]
    assert await _names(api, ids, f"?owner={PROJECT_B}") == ["b3", "b2", "b1"]
    assert await _names(api, ids, f"?id={ids['a2']}&whatever=1") == ["a2"]  # unknown names filter nothing
    assert await _names(api, ids, "?status=") == []  # Glance: an empty status is no check, and matches nothing
    # A member sees its project's tasks only; a marker of another project's task is a 403.
    assert await _names(api, ids, "?limit=10", as_=MEMBER_A) == ["a4", "a3", "a2", "a1"]
    assert sum(await _walk(api, ids, "?limit=1", as_=MEMBER_B), []) == ["b3", "b2", "b1"]
    assert await _names(api, ids, f"?owner={PROJECT_B}", as_=MEMBER_A) == []
    reply = await api.call("GET", f"/v2/tasks?marker={ids['b1']}", as_=MEMBER_A)
    assert reply.status == 403 and reply.error["message"].startswith(f"Forbidding request, task {ids['b1']} is "
                                                                     "not visible"), reply.body
    # Shown one by one: another project's task is a 403, an expired one is gone (admins see both).
    assert (await api.call("GET", f"/v2/tasks/{ids['a2']}", as_=MEMBER_A)).status == 200
    assert (await api.call("GET", f"/v2/tasks/{ids['n1']}", as_=MEMBER_A)).status == 200  # no owner: anyone's
    reply = await api.call("GET", f"/v2/tasks/{ids['b1']}", as_=MEMBER_A)
    assert reply.status == 403 and reply.error["message"].startswith(
        f"Forbidding request, task {ids['b1']} is not visible"), reply.body
    assert (await api.call("GET", f"/v2/tasks/{ids['gone']}", as_=MEMBER_A)).status == 404
    for name in ("b1", "gone"):
        assert (await api.call("GET", f"/v2/tasks/{ids[name]}", as_=ADMIN)).status == 200
    # The expired task is not listed, and as a marker it is not found.
    assert "gone" not in await _names(api, ids, "?limit=100")
    reply = await api.call("GET", f"/v2/tasks?marker={ids['gone']}", as_=ADMIN)
    assert reply.status == 400 and reply.error["message"].startswith(
        f"Task with the given id {ids['gone']} was not found"), reply.body


@both_databases
@pytest.mark.parametrize(("query", "message"), [
    ("limit=abc", "limit param must be an integer"),
    ("limit=-1", "limit param must be positive"),
    ("limit=1.5", "limit param must be an integer"),
    ("marker=abc", "Invalid marker format"),
    ("sort_dir=up", "Invalid sort direction: up"),
    ("sort_key=bogus", "Sort key supplied was not valid."),
    ("sort_key=input", "Sort key supplied was not valid."),
    ("sort_key=host", "Sort key supplied was not valid."),
    ("status=bogus", "Invalid status value: bogus"),
    ("type=api_image_import", "Invalid type value: api_image_import"),
    ("marker=00000000-0000-0000-0000-000000000009", "Task with the given id 00000000-0000-0000-0000-000000000009 "
                                                    "was not found"),
    # Glance checks sort_dir, then the filters, then the marker, then the limit.
    ("limit=x&marker=y&sort_dir=z&status=w", "Invalid sort direction: z"),
    ("limit=x&marker=y&status=w", "Invalid status value: w"),
    ("limit=x&marker=y", "Invalid marker format"),
])
async def test_bad_values_are_400_in_glances_words(api: ApiClient, query: str, message: str) -> None:
    reply = await api.call("GET", f"/v2/tasks?{query}", as_=ADMIN)
    assert reply.status == 400, reply.body
    assert reply.error["message"].split("<br />")[0] == message


# -- against Glance 33 --------------------------------------------------------------------------------

_TIMES = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IMPORTER = {"X-Project-Id": PROJECT_A, "X-User-Id": "user-a", "X-Roles": "admin,member,reader"}
IMPORTS = 3


def _http(url: str, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, data=body, method=method, headers={
        "Accept": "application/json", **IMPORTER, **(headers or {})})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                raw = reply.read()
                return reply.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (ConnectionError, urllib.error.URLError):  # uWSGI's Glance workers reset while warming up
            if attempt == 4:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _import_images(url: str) -> None:
    """IMPORTS glance-direct imports, a second apart (Glance keeps seconds: ties would order by id)."""
    for n in range(IMPORTS):
        status, image = _http(url, "POST", "/v2/images", json.dumps(
            {"name": f"t{n}", "disk_format": "raw", "container_format": "bare"}).encode(),
            {"Content-Type": "application/json"})
        assert status == 201, image
        assert _http(url, "PUT", f"/v2/images/{image['id']}/stage", b"task data %d" % n,
                     {"Content-Type": "application/octet-stream"})[0] == 204
        assert _http(url, "POST", f"/v2/images/{image['id']}/import", json.dumps(
            {"method": {"name": "glance-direct"}}).encode(), {"Content-Type": "application/json"})[0] == 202
        time.sleep(1.1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, listed = _http(url, "GET", "/v2/tasks?limit=100")
        if len(listed["tasks"]) == IMPORTS and all(t["status"] == "success" for t in listed["tasks"]):
            return
        time.sleep(0.3)
    raise AssertionError(f"imports did not finish on {url}: {listed}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with glance_and_streamd(tmp_path_factory.mktemp("tasks-parity")) as both:
        for url in both.values():
            _import_images(url)
        yield both


def _masked(url: str, text: str) -> str:
    """Task ids as their creation order (t0 oldest), times masked."""
    _, listed = _http(url, "GET", "/v2/tasks?limit=100&sort_dir=asc")
    for n, task in enumerate(listed["tasks"]):
        text = text.replace(task["id"], f"t{n}")
    return _UUID.sub("<uuid>", _TIMES.sub("<time>", text))


LIST_QUERIES = ["", "?limit=1", "?limit=2&sort_dir=asc", "?sort_key=status&limit=2", "?sort_key=type&sort_dir=asc",
                "?status=success&limit=2", "?status=failure", "?type=import", "?limit=0", "?limit=5000",
                "?status=", "?limit=abc", "?limit=-3", "?marker=nope", "?sort_dir=sideways", "?sort_key=nosuch",
                "?sort_key=input", "?status=bogus", "?type=api_image_import",
                "?marker=00000000-0000-0000-0000-000000000009"]


def _compare(servers: dict[str, str], query: str) -> None:
    answers = {}
    for name, url in servers.items():
        status, body = _http(url, "GET", "/v2/tasks" + query)
        answers[name] = (status, _masked(url, json.dumps(body, sort_keys=True)))
    assert answers["streamd"] == answers["glance"], query


def test_lists_answer_as_glances(servers: dict[str, str]) -> None:
    for query in LIST_QUERIES:
        _compare(servers, query)
    # Markers: each server's own second-oldest task, then the next link each gives, followed.
    for name in ("glance", "streamd"):
        url = servers[name]
        _, listed = _http(url, "GET", "/v2/tasks?limit=100&sort_dir=asc")
        assert len(listed["tasks"]) == IMPORTS
    pages: dict[str, list[str]] = {}
    for name, url in servers.items():
        _, oldest_first = _http(url, "GET", "/v2/tasks?limit=100&sort_dir=asc")
        second = oldest_first["tasks"][1]["id"]
        walked, path = [], f"/v2/tasks?limit=1&sort_dir=asc&marker={second}"
        while path:
            status, body = _http(url, "GET", path)
            walked.append(_masked(url, json.dumps([status, body], sort_keys=True)))
            path = body.get("next")
        pages[name] = walked
    assert pages["streamd"] == pages["glance"]
    assert len(pages["streamd"]) == 2  # t2, then an empty page (Glance gives next on a full page)


_DROPPED = re.compile(r"Connection aborted|Connection reset by peer|Remote end closed connection")


def _task_list(url: str, *args: str) -> tuple[int, str, str]:
    """``glance task-list``, run again when uWSGI's Glance workers reset a connection (a read: safe;
    glanceclient reuses its connection for the next page and the schema, which uWSGI often resets)."""
    for _ in range(30):
        done = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(GLANCE_CLI), "--os-image-url", url,
                               "--os-auth-token", "x", "task-list", *args], capture_output=True, text=True,
                              timeout=60)
        if not _DROPPED.search(done.stderr):
            break
        time.sleep(0.5)
    return done.returncode, _masked(url, done.stdout), done.stderr.strip()


def test_glance_task_list_pages_as_against_glance(servers: dict[str, str]) -> None:
    # --page-size 1: glanceclient follows every next link, one task per request.
    for args in (["--page-size", "1"], ["--page-size", "1", "--sort-dir", "asc"],
                 ["--page-size", "2", "--status", "success"], ["--sort-key", "status"]):
        ours, theirs = _task_list(servers["streamd"], *args), _task_list(servers["glance"], *args)
        assert ours == theirs, args
        assert ours[0] == 0 and len(re.findall(r"\| t\d ", ours[1])) == IMPORTS, ours
    ours = _task_list(servers["streamd"], "--page-size", "1")[1]
    assert [line.split("|")[1].strip() for line in ours.splitlines() if "| t" in line] == ["t2", "t1", "t0"]


def _openstack_task_list(url: str, *args: str) -> tuple[int, str, str]:
    """``openstack image task list`` (noauth, the image endpoint given), run again on uWSGI's resets."""
    for _ in range(30):
        done = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(ROOT / ".venv" / "bin" / "openstack"),
                               "--os-auth-type", "none", "--os-endpoint", url, "--os-image-api-version", "2",
                               "image", "task", "list", "-f", "json", *args], capture_output=True, text=True,
                              timeout=60)
        if not _DROPPED.search(done.stderr):
            break
        time.sleep(0.5)
    return done.returncode, _masked(url, done.stdout), done.stderr.replace(url, "URL").strip()


def test_openstack_image_task_list_as_against_glance(servers: dict[str, str]) -> None:
    for args in (["--limit", "1"], ["--limit", "1", "--sort-dir", "asc"], ["--limit", "2", "--max-items", "2"],
                 ["--status", "success", "--sort-key", "status"], ["--type", "import"], ["--status", "bogus"]):
        ours, theirs = _openstack_task_list(servers["streamd"], *args), _openstack_task_list(servers["glance"], *args)
        assert ours == theirs, args
    rc, printed, _ = _openstack_task_list(servers["streamd"], "--limit", "1", "--sort-dir", "asc")
    assert rc == 0 and [t["ID"] for t in json.loads(printed)] == ["t0", "t1", "t2"]
    # (openstackclient 10.5 leaves --max-items to the SDK, which lists every page anyway: on both.)
    rc, printed, _ = _openstack_task_list(servers["streamd"], "--limit", "1")
    assert rc == 0 and [t["ID"] for t in json.loads(printed)] == ["t2", "t1", "t0"]
