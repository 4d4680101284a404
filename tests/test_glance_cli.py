"""The real ``glance`` CLI (python-glanceclient) against the real daemon.

Every test runs ``glance --os-image-url <daemon> --os-auth-token x <command>``
as a subprocess, then checks what the server holds afterwards with plain
HTTP GETs (JSON), not only the CLI's tables. The CLI runs as the daemon's
default noauth identity (admin, member, reader of project ``0...01``); the
other side of a membership (the consumer) is driven with plain HTTP and
X-Project-Id/X-Roles headers, since the CLI cannot send those.

One daemon serves the whole module. Tests share its catalogue, so each test
marks its images with a property unique to that test (``suite=<uuid>``) and
filters on it, never on the whole catalogue.

glanceclient quirks this file works around:

* ``image-create`` uploads stdin as image data whenever fd 0 is open and not a
  tty, so the CLI runs with fd 0 closed (``glance ... <&-``).
* glanceclient caches the schemas under ``$HOME/.glanceclient``: each test
  gets its own ``HOME``; ``OS_*`` variables are dropped from the environment.
* ``image-list`` without any sort option sends ``sort_key=name&sort_dir=asc``
  itself, so the server's own default order is checked over HTTP.
* Enum and pattern checks (``--disk-format floppy``, ``--kernel-id x``) happen
  in the client, against the schema the server serves; ``image-delete``
  prints its own messages for 403/404/409, not the server's.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import MEMBER_B, PROJECT_B, PROJECT_C, Daemon, start_daemon, stop_daemon

GLANCE = Path(sys.executable).with_name("glance")  # the venv running the tests has python-glanceclient
DEFAULT_PROJECT = "0" * 31 + "1"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- plumbing --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("glance-cli"))
    try:
        yield d
    finally:
        stop_daemon(d)


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Glance:
    """Runs the real CLI against the daemon; reads the daemon's state over HTTP."""

    def __init__(self, daemon: Daemon, home: Path) -> None:
        self.url = daemon.url
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["HOME"] = str(home)
        env["PYTHONWARNINGS"] = "ignore"
        self.env = env

    def run_many(self, commands: list[tuple[str, ...]], ok: bool | None = True) -> list[Result]:
        """Independent commands, run side by side; results in order (``ok`` as for ``run``)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self.run(*args, ok=ok), commands))

    def run(self, *args: str, ok: bool | None = True) -> Result:
        """``ok=True``: must exit 0; ``ok=False``: must fail; ``None``: either."""
        # `exec ... <&-`: the CLI starts with fd 0 closed (no preexec_fn: run_many uses threads).
        cmd = ["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(GLANCE), "--os-image-api-version", "2",
               "--os-image-url", self.url, "--os-auth-token", "x", *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if ok is True:
            assert result.rc == 0, f"glance {' '.join(args)} failed:\n{result}"
        elif ok is False:
            assert result.rc != 0, f"glance {' '.join(args)} should have failed:\n{result}"
        return result

    # --- the server's side, over plain HTTP

    def http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             params: Any = None) -> tuple[int, Any]:
        url = self.url + path + (("?" + urllib.parse.urlencode(params, doseq=True)) if params else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def image(self, image_id: str) -> dict[str, Any]:
        status, body = self.http("GET", f"/v2/images/{image_id}")
        assert status == 200, (status, body)
        return body  # type: ignore[no-any-return]

    def image_status(self, image_id: str) -> int:
        return self.http("GET", f"/v2/images/{image_id}")[0]

    def list_all(self, params: list[tuple[str, str]], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every image the server lists for ``params``, following its ``next`` links."""
        images: list[dict[str, Any]] = []
        status, body = self.http("GET", "/v2/images", params=params, headers=headers)
        while True:
            assert status == 200, (status, body)
            images += body["images"]
            if "next" not in body:
                return images
            status, body = self.http("GET", body["next"], headers=headers)

    def members(self, image_id: str) -> dict[str, str]:
        status, body = self.http("GET", f"/v2/images/{image_id}/members")
        assert status == 200, (status, body)
        return {m["member_id"]: m["status"] for m in body["members"]}

    def http_create(self, **body: Any) -> str:
        """An image made over HTTP as the CLI's identity: setup for tests not about image-create."""
        status, image = self.http("POST", "/v2/images", body)
        assert status == 201, (status, image)
        return image["id"]  # type: ignore[no-any-return]

    # --- CLI helpers

    def create(self, *args: str) -> str:
        result = self.run("image-create", *args)
        return show_table(result.out)["id"]


@pytest.fixture
def glance(server: Daemon, tmp_path: Path) -> Glance:
    return Glance(server, tmp_path / "home")


@pytest.fixture
def suite() -> str:
    """A property value unique to one test, to fence its images off from the others'."""
    return uuid.uuid4().hex


def show_table(out: str) -> dict[str, str]:
    """The Property | Value table of image-create / image-show / image-update."""
    rows: dict[str, str] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and cells[0] != "Property":
            rows[cells[0]] = cells[1]
    assert rows, f"no Property/Value table in:\n{out}"
    return rows


def table_rows(out: str) -> list[list[str]]:
    """The data rows of a list table, as cells (the header row excluded)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if line.startswith("|")]
    return rows[1:]


def listed_ids(out: str) -> list[str]:
    return [row[0] for row in table_rows(out) if UUID_RE.fullmatch(row[0])]


# -- image-create ------------------------------------------------------------------------------

def test_create_with_every_option_lands_in_the_catalogue(glance: Glance, suite: str) -> None:
    image_id = str(uuid.uuid4())
    result = glance.run(
        "image-create", "--id", image_id, "--name", "cli-full", "--disk-format", "qcow2",
        "--container-format", "bare", "--property", f"suite={suite}", "--property", "hw_disk_bus=scsi",
        "--property", "answer=42", "--property", "eq=a=b", "--tags", "alpha", "beta", "--min-ram", "512",
        "--min-disk", "3", "--visibility", "private", "--protected", "True", "--os-distro", "debian")
    shown = show_table(result.out)
    assert shown["id"] == image_id
    assert shown["status"] == "queued"

    image = glance.image(image_id)
    assert image["name"] == "cli-full"
    assert image["disk_format"] == "qcow2"
    assert image["container_format"] == "bare"
    assert image["visibility"] == "private"
    assert image["protected"] is True
    assert image["os_hidden"] is False
    assert image["min_ram"] == 512
    assert image["min_disk"] == 3
    assert image["status"] == "queued"
    assert image["owner"] == DEFAULT_PROJECT
    assert sorted(image["tags"]) == ["alpha", "beta"]
    # --property values stay strings, a second '=' belongs to the value; schema options are properties too.
    assert image["suite"] == suite
    assert image["hw_disk_bus"] == "scsi"
    assert image["answer"] == "42"
    assert image["eq"] == "a=b"
    assert image["os_distro"] == "debian"
    # What the CLI printed is what the server holds.
    assert shown["min_ram"] == "512"
    assert shown["answer"] == "42"
    assert shown["visibility"] == "private"
    assert json.loads(shown["tags"]) == image["tags"]

    # Cleanup: protected images cannot be deleted until unprotected.
    glance.run("image-update", "--protected", "False", image_id)
    glance.run("image-delete", image_id)
    assert glance.image_status(image_id) == 404


def test_create_defaults_and_hidden(glance: Glance, suite: str) -> None:
    plain = glance.create("--name", "cli-defaults", "--property", f"suite={suite}")
    image = glance.image(plain)
    # Glance's defaults: shared, unprotected, not hidden, no formats, zero minimums.
    assert image["visibility"] == "shared"
    assert image["protected"] is False
    assert image["os_hidden"] is False
    assert image["disk_format"] is None and image["container_format"] is None
    assert image["min_ram"] == 0 and image["min_disk"] == 0
    assert image["tags"] == []
    assert image["size"] is None and image["checksum"] is None

    hidden = glance.create("--name", "cli-hidden", "--hidden", "True", "--visibility", "public",
                           "--owner", PROJECT_C, "--property", f"suite={suite}")
    image = glance.image(hidden)
    assert image["os_hidden"] is True
    assert image["visibility"] == "public"
    assert image["owner"] == PROJECT_C


def test_create_with_bad_values_fails_and_creates_nothing(glance: Glance, suite: str) -> None:
    before = glance.list_all([("suite", suite), ("os_hidden", "false")])
    before += glance.list_all([("suite", suite), ("os_hidden", "true")])
    assert before == []

    mine = ("image-create", "--name", "cli-bad", "--property", f"suite={suite}")
    floppy, crate, everyone, negative, reserved = glance.run_many([
        (*mine, "--disk-format", "floppy"),
        (*mine, "--container-format", "crate"),
        (*mine, "--visibility", "everyone"),
        # Not caught by the client's schema: the server refuses these two (400, 403).
        (*mine, "--min-ram", "-1"),
        (*mine, "--property", "status=active"),
    ], ok=False)
    assert "floppy" in floppy.err and "disk_format" in floppy.err, floppy
    assert "crate" in crate.err and "container_format" in crate.err, crate
    assert "everyone" in everyone.err, everyone
    assert "min_ram" in negative.err, negative
    assert "status" in reserved.err, reserved
    for result in (floppy, crate, everyone, negative, reserved):
        assert "Traceback" not in result.err, result

    for hidden in ("false", "true"):
        assert glance.list_all([("suite", suite), ("os_hidden", hidden)]) == []
    status, body = glance.http("GET", "/v2/images", params=[("name", "cli-bad")])
    assert status == 200 and body["images"] == []


def test_create_with_an_existing_id_conflicts(glance: Glance, suite: str) -> None:
    image_id = glance.http_create(name="cli-first", suite=suite)
    again = glance.run("image-create", "--id", image_id, "--name", "cli-second", ok=False)
    assert image_id in again.err, again
    assert glance.image(image_id)["name"] == "cli-first"
    assert [i["id"] for i in glance.list_all([("suite", suite)])] == [image_id]


# -- image-list --------------------------------------------------------------------------------

def test_list_pages_through_sorted_results(glance: Glance, suite: str) -> None:
    names = ["p-echo", "p-alpha", "p-delta", "p-bravo", "p-foxtrot", "p-charlie", "p-golf"]
    ids = {glance.http_create(name=n, disk_format="raw", container_format="bare", suite=suite): n for n in names}
    by_name = sorted(ids, key=ids.__getitem__)
    mine = ("image-list", "--property-filter", f"suite={suite}")

    asc, desc, limited, several = glance.run_many([
        # Page size 2 over 7 images: the CLI must follow the server's `next` links (4 pages).
        (*mine, "--page-size", "2", "--sort", "name:asc"),
        (*mine, "--page-size", "3", "--sort-key", "name", "--sort-dir", "desc"),
        # --limit stops after 3 images, even though pages of 2 would go on.
        (*mine, "--limit", "3", "--page-size", "2", "--sort", "name:desc"),
        # Several sort keys: the images were made one after the other, so created_at ascending is
        # creation order (the API shows whole seconds; the catalogue sorts on more).
        (*mine, "--page-size", "4", "--sort", "status:asc,created_at:asc,id:asc"),
    ])
    assert listed_ids(asc.out) == by_name
    assert [row[1] for row in table_rows(asc.out)] == sorted(names)
    assert listed_ids(desc.out) == by_name[::-1]
    assert listed_ids(limited.out) == by_name[::-1][:3]
    assert listed_ids(several.out) == list(ids)

    # The server agrees, page by page.
    server_order = [i["id"] for i in glance.list_all([("suite", suite), ("sort", "name:asc"), ("limit", "2")])]
    assert server_order == by_name


def test_list_paging_with_equal_and_missing_names(glance: Glance, suite: str) -> None:
    # Ties on the sort key and NULL names: the marker must still land every image exactly once.
    made = []
    for name in (None, "same", None, "same", "zed", "same", None):
        made.append(glance.http_create(suite=suite, **({"name": name} if name else {})))
    same = [made[1], made[3], made[5]]
    mine = ("image-list", "--property-filter", f"suite={suite}")

    asc, desc, default, by_key = glance.run_many([
        (*mine, "--page-size", "2", "--sort", "name:asc"),
        (*mine, "--page-size", "2", "--sort", "name:desc"),
        # Without sort options glanceclient itself asks for sort_key=name&sort_dir=asc.
        (*mine, "--page-size", "3"),
        # --sort-key without --sort-dir: the server's default direction, desc.
        (*mine, "--page-size", "3", "--sort-key", "name"),
    ])
    for direction, result in (("asc", asc), ("desc", desc)):
        paged = listed_ids(result.out)
        whole = [i["id"] for i in glance.list_all([("suite", suite), ("sort", f"name:{direction}"),
                                                   ("limit", "100")])]
        assert sorted(paged) == sorted(made), direction
        assert paged == whole, direction
        # Glance breaks ties with created_at and id, in the direction given for the last key.
        assert [i for i in paged if i in same] == (same if direction == "asc" else same[::-1]), direction

    assert listed_ids(default.out) == listed_ids(asc.out)
    by_key_ids = listed_ids(by_key.out)
    assert [i for i in by_key_ids if i in same] == same[::-1]
    assert by_key_ids[0] == made[4]  # "zed"
    # The server's own default (no sort parameters) is Glance's: newest first.
    assert [i["id"] for i in glance.list_all([("suite", suite), ("limit", "3")])] == made[::-1]


def test_list_filters(glance: Glance, suite: str) -> None:
    # Made over HTTP: creating through the CLI is covered above; this test is about the filters.
    common = {"disk_format": "raw", "container_format": "bare", "suite": suite}
    private = glance.http_create(name="f-private", visibility="private", tags=["red", "blue"], flavour="mint",
                                 **common)
    public = glance.http_create(name="f-public", visibility="public", tags=["red"], flavour="lemon", **common)
    shared = glance.http_create(name="f-shared", flavour="mint", **common)
    community = glance.http_create(name="f-community", visibility="community", **common)
    hidden = glance.http_create(name="f-hidden", os_hidden=True, tags=["red"], **common)
    other_owner = glance.http_create(name="f-owned-by-b", owner=PROJECT_B, visibility="private", **common)
    everything = {private, public, shared, community, other_owner}

    # (CLI filter options, expected images, the same query straight to the server or None)
    cases: list[tuple[tuple[str, ...], set[str], list[tuple[str, str]] | None]] = [
        # Hidden images are left out by default; the admin sees every other one.
        ((), everything, []),
        (("--visibility", "private"), {private, other_owner}, [("visibility", "private")]),
        (("--visibility", "public"), {public}, [("visibility", "public")]),
        (("--visibility", "shared"), {shared}, None),
        (("--visibility", "community"), {community}, None),
        (("--visibility", "all"), everything, None),
        (("--tag", "red"), {private, public}, [("tag", "red")]),
        (("--tag", "red", "--tag", "blue"), {private}, [("tag", "red"), ("tag", "blue")]),
        (("--owner", PROJECT_B), {other_owner}, [("owner", PROJECT_B)]),
        (("--property-filter", "flavour=mint"), {private, shared}, [("flavour", "mint")]),
        (("--hidden", "true"), {hidden}, [("os_hidden", "true")]),
        (("--hidden", "true", "--tag", "red"), {hidden}, None),
    ]
    results = glance.run_many([("image-list", "--property-filter", f"suite={suite}", *args)
                               for args, _, _ in cases])
    for (args, expected, params), result in zip(cases, results):
        assert set(listed_ids(result.out)) == expected, args
        if params is not None:
            assert {i["id"] for i in glance.list_all([("suite", suite), *params])} == expected, params


def test_list_verbose_columns_match_the_server(glance: Glance, suite: str) -> None:
    image_id = glance.http_create(name="cli-verbose", disk_format="iso", container_format="bare", suite=suite)
    out = glance.run("--verbose", "image-list", "--property-filter", f"suite={suite}").out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, row)) for row in table_rows(out)]
    assert len(rows) == 1, out
    image = glance.image(image_id)
    row = rows[0]
    assert row["ID"] == image_id
    assert row["Name"] == image["name"]
    assert row["Disk_format"] == image["disk_format"]
    assert row["Container_format"] == image["container_format"]
    assert row["Status"] == image["status"] == "queued"
    assert row["Owner"] == image["owner"]


# -- image-show --------------------------------------------------------------------------------

def test_show_prints_what_the_server_holds(glance: Glance, suite: str) -> None:
    image_id = glance.create("--name", "cli-show", "--disk-format", "vmdk", "--container-format", "ova",
                             "--property", f"suite={suite}", "--property", "note=hello world",
                             "--tags", "one", "--min-disk", "9")
    image = glance.image(image_id)
    for args in ((image_id,), ("--human-readable", image_id)):
        shown = show_table(glance.run("image-show", *args).out)
        assert shown["id"] == image_id
        for key in ("name", "disk_format", "container_format", "status", "visibility", "owner", "created_at",
                    "updated_at", "suite", "note"):
            assert shown[key] == image[key], key
        assert shown["min_disk"] == "9"
        assert shown["protected"] == "False"
        assert json.loads(shown["tags"]) == ["one"]
        # glanceclient leaves out the links.
        assert "self" not in shown and "file" not in shown and "schema" not in shown

    missing = str(uuid.uuid4())
    result = glance.run("image-show", missing, ok=False)
    assert f"No image found with ID {missing}" in result.err, result


# -- image-update ------------------------------------------------------------------------------

def test_update_name_properties_hidden_min_disk(glance: Glance, suite: str) -> None:
    image_id = glance.create("--name", "cli-before", "--property", f"suite={suite}", "--property", "a=1",
                             "--property", "b=2", "--property", "c=3")
    created = glance.image(image_id)

    result = glance.run("image-update", "--name", "cli-after", "--property", "b=20", "--property", "d=4",
                        "--remove-property", "a", "--remove-property", "not-there", "--hidden", "true",
                        "--min-disk", "7", "--min-ram", "256", "--disk-format", "qcow2",
                        "--container-format", "bare", "--os-version", "12", image_id)
    shown = show_table(result.out)
    image = glance.image(image_id)
    assert image["name"] == shown["name"] == "cli-after"
    assert "a" not in image and "a" not in shown
    assert "not-there" not in image
    assert image["b"] == shown["b"] == "20"
    assert image["c"] == "3"
    assert image["d"] == "4"
    assert image["os_version"] == "12"
    assert image["os_hidden"] is True
    assert image["min_disk"] == 7
    assert image["min_ram"] == 256
    assert image["disk_format"] == "qcow2" and image["container_format"] == "bare"
    assert image["suite"] == suite
    assert image["created_at"] == created["created_at"]
    assert image["status"] == "queued"

    # Hidden now: out of the default list, in the hidden one.
    default, hidden = glance.run_many([("image-list", "--property-filter", f"suite={suite}"),
                                       ("image-list", "--property-filter", f"suite={suite}", "--hidden", "true")])
    assert listed_ids(default.out) == []
    assert listed_ids(hidden.out) == [image_id]

    kernel = str(uuid.uuid4())
    glance.run("image-update", "--hidden", "false", "--visibility", "community", "--remove-property", "b",
               "--remove-property", "c", "--owner", PROJECT_C, "--kernel-id", kernel, image_id)
    image = glance.image(image_id)
    assert image["os_hidden"] is False
    assert image["visibility"] == "community"
    assert image["owner"] == PROJECT_C
    assert image["kernel_id"] == kernel
    assert "b" not in image and "c" not in image and image["d"] == "4"

    glance.run("image-update", "--remove-property", "kernel_id", "--remove-property", "os_version", image_id)
    image = glance.image(image_id)
    assert "kernel_id" not in image and "os_version" not in image


def test_update_with_bad_values_fails_and_changes_nothing(glance: Glance, suite: str) -> None:
    image_id = glance.create("--name", "cli-stable", "--property", f"suite={suite}", "--min-ram", "64")
    before = glance.image(image_id)

    missing = str(uuid.uuid4())
    floppy, negative, base, absent = glance.run_many([
        ("image-update", "--disk-format", "floppy", image_id),
        # One bad change in the patch: none of it is applied (the name stays).
        ("image-update", "--min-ram", "-5", "--name", "cli-changed", image_id),
        # glanceclient sends a JSON-patch "remove" for a base attribute; Glance refuses it (403).
        ("image-update", "--remove-property", "name", image_id),
        ("image-update", "--name", "x", missing),
    ], ok=False)
    assert "floppy" in floppy.err, floppy
    assert "min_ram" in negative.err, negative
    assert "Property name may not be removed." in base.err, base
    assert f"No image found with ID {missing}" in absent.err, absent

    after = glance.image(image_id)
    assert after == before


# -- tags --------------------------------------------------------------------------------------

def test_tag_update_and_delete(glance: Glance, suite: str) -> None:
    image_id = glance.http_create(name="cli-tags", suite=suite, tags=["keep"])

    result = glance.run("image-tag-update", image_id, "two words")
    assert "two words" in result.out and image_id in result.out
    glance.run("image-tag-update", image_id, "grün")
    glance.run("image-tag-update", image_id, "keep")  # adding it again is a no-op
    assert sorted(glance.image(image_id)["tags"]) == ["grün", "keep", "two words"]
    assert listed_ids(glance.run("image-list", "--property-filter", f"suite={suite}", "--tag", "two words").out) \
        == [image_id]

    glance.run("image-tag-delete", image_id, "two words")
    glance.run("image-tag-delete", image_id, "grün")
    assert glance.image(image_id)["tags"] == ["keep"]

    # Glance answers a missing tag with a bare 404 (no explanation), so only the failure is certain.
    glance.run("image-tag-delete", image_id, "never-there", ok=False)
    assert glance.image(image_id)["tags"] == ["keep"]


# -- members -----------------------------------------------------------------------------------

def test_member_lifecycle(glance: Glance, suite: str) -> None:
    image_id = glance.http_create(name="cli-shared", disk_format="raw", container_format="bare", suite=suite)
    assert glance.image(image_id)["visibility"] == "shared"

    # Before sharing, the consumer cannot see the image.
    assert glance.http("GET", f"/v2/images/{image_id}", headers=MEMBER_B)[0] == 404

    result = glance.run("member-create", image_id, PROJECT_B)
    assert [image_id, PROJECT_B, "pending"] in table_rows(result.out), result
    assert glance.members(image_id) == {PROJECT_B: "pending"}
    assert glance.http("POST", f"/v2/images/{image_id}/members", {"member": PROJECT_C})[0] == 200
    assert glance.members(image_id) == {PROJECT_B: "pending", PROJECT_C: "pending"}

    # Adding the same member twice is a conflict.
    again = glance.run("member-create", image_id, PROJECT_B, ok=False)
    assert PROJECT_B in again.err, again

    # The consumer sees the pending image directly, but not in its default list until it accepts.
    assert glance.http("GET", f"/v2/images/{image_id}", headers=MEMBER_B)[0] == 200
    consumer_list = glance.list_all([("suite", suite)], headers=MEMBER_B)
    assert [i["id"] for i in consumer_list] == []

    status, body = glance.http("PUT", f"/v2/images/{image_id}/members/{PROJECT_B}", {"status": "accepted"},
                               headers=MEMBER_B)
    assert status == 200 and body["status"] == "accepted", body

    rows = table_rows(glance.run("member-list", "--image-id", image_id).out)
    assert sorted(rows) == sorted([[image_id, PROJECT_B, "accepted"], [image_id, PROJECT_C, "pending"]])
    assert [i["id"] for i in glance.list_all([("suite", suite)], headers=MEMBER_B)] == [image_id]

    # The admin CLI identity may set a member's status too.
    result = glance.run("member-update", image_id, PROJECT_C, "rejected")
    assert [image_id, PROJECT_C, "rejected"] in table_rows(result.out), result
    assert glance.members(image_id) == {PROJECT_B: "accepted", PROJECT_C: "rejected"}

    glance.run("member-delete", image_id, PROJECT_B)
    assert glance.members(image_id) == {PROJECT_C: "rejected"}
    assert table_rows(glance.run("member-list", "--image-id", image_id).out) == [[image_id, PROJECT_C, "rejected"]]
    assert glance.http("GET", f"/v2/images/{image_id}", headers=MEMBER_B)[0] == 404

    gone = glance.run("member-delete", image_id, PROJECT_B, ok=False)
    assert PROJECT_B in gone.err, gone


def test_member_create_on_a_private_image_is_refused(glance: Glance, suite: str) -> None:
    image_id = glance.http_create(name="cli-private", visibility="private", suite=suite)
    result = glance.run("member-create", image_id, PROJECT_B, ok=False)
    assert f"HTTP 403 Forbidden: Not allowed to create members for image {image_id}." in result.err, result  # Glance's
    # Glance refuses to list the members of a non-shared image too (403).
    listing = glance.run("member-list", "--image-id", image_id, ok=False)
    assert "Only shared images have members." in listing.err, listing
    status, body = glance.http("GET", f"/v2/images/{image_id}/members")
    assert status == 403, (status, body)
    # Once shared, the image turns out to have no members: the refused call created none.
    glance.run("image-update", "--visibility", "shared", image_id)
    assert glance.members(image_id) == {}


# -- deactivate / reactivate -------------------------------------------------------------------

def test_deactivate_and_reactivate_a_queued_image_are_refused(glance: Glance, suite: str) -> None:
    help_text = glance.run("help").out
    assert re.search(r"^\s+image-deactivate\s+Deactivate specified image", help_text, re.M), help_text
    assert re.search(r"^\s+image-reactivate\s+Reactivate specified image", help_text, re.M), help_text

    image_id = glance.http_create(name="cli-queued", suite=suite)
    # Glance's text; its HTML error page would show the quotes as &#x27;, streamd's JSON as '.
    result = glance.run("image-deactivate", image_id, ok=False)
    assert re.search(r"Not allowed to deactivate image in status ('|&#x27;)queued\1", result.err), result
    assert glance.image(image_id)["status"] == "queued"

    result = glance.run("image-reactivate", image_id, ok=False)
    assert re.search(r"Not allowed to reactivate image in status ('|&#x27;)queued\1", result.err), result
    assert glance.image(image_id)["status"] == "queued"

    missing = str(uuid.uuid4())
    result = glance.run("image-deactivate", missing, ok=False)
    assert f"No image found with ID {missing}" in result.err, result


# -- image-delete ------------------------------------------------------------------------------

def test_delete(glance: Glance, suite: str) -> None:
    first, second, third = (glance.http_create(name=f"cli-del-{n}", suite=suite) for n in (1, 2, 3))

    glance.run("image-delete", first)
    assert glance.image_status(first) == 404
    assert glance.image_status(second) == 200

    # Several at once.
    glance.run("image-delete", second, third)
    assert glance.image_status(second) == 404 and glance.image_status(third) == 404
    assert glance.list_all([("suite", suite)]) == []

    result = glance.run("image-delete", first, ok=False)
    assert f"No image with an ID of '{first}' exists." in result.err, result


def test_delete_of_a_protected_image_is_refused(glance: Glance, suite: str) -> None:
    protected = glance.create("--name", "cli-protected", "--protected", "True", "--property", f"suite={suite}")
    plain = glance.http_create(name="cli-unprotected", suite=suite)

    # One refused, the other deleted: the CLI goes on and exits non-zero.
    result = glance.run("image-delete", protected, plain, ok=False)
    assert f"You are not permitted to delete the image '{protected}'." in result.err, result
    assert glance.image(protected)["protected"] is True
    assert glance.image_status(plain) == 404

    glance.run("image-update", "--protected", "False", protected)
    assert glance.image(protected)["protected"] is False
    glance.run("image-delete", protected)
    assert glance.image_status(protected) == 404
