"""Property protections against the real Glance 33: the same file, the same requests, the same answers.

Glance runs under uWSGI with its own paste pipeline (``bench/servers.py``), whose identity filter
lets the X-Roles/X-Project-Id headers through as Keystone's middleware would set them; streamd runs
in noauth mode. Both get the same property protection file (roles: rules from Glance's functional
tests, '@' and '!' included; policies: Glance's shipped sample) and the same sequence of requests,
with the same image ids. Compared per step: the status, the error message, and the set of extra
properties the answer shows.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from conftest import ADMIN, MEMBER_A, PROJECT_A, ROOT, start_daemon, stop_daemon
from test_property_protections import POLICIES_SAMPLE, ROLES_DETAILED, SPL


def _bench_servers() -> Any:
    spec = importlib.util.spec_from_file_location("streamd_bench_servers_protections", ROOT / "bench" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PATCH = "application/openstack-images-v2.1-json-patch"
IMAGE_X = "44444444-2222-3333-4444-555555555555"
IMAGE_Y = "55555555-2222-3333-4444-555555555555"
IMAGE_Z = "66666666-2222-3333-4444-555555555555"
# Ids for the creates that may be refused (so that one that is not has the same id on both).
OTHERS = [f"7777777{n}-2222-3333-4444-555555555555" for n in range(3)]
CONFLICT = "There was a conflict when trying to complete your request. "
# Put first in both files: a property the member may create but only the admin may read.
WRITE_ONLY = {"roles": "[^x_admin_read]\ncreate = admin,member\nread = admin\nupdate = admin\ndelete = admin\n\n",
              "policies": "[^x_admin_read]\ncreate = default\nread = context_is_admin\nupdate = context_is_admin\n"
                          "delete = context_is_admin\n\n"}
FILES = {"roles": ROLES_DETAILED, "policies": POLICIES_SAMPLE}
IMAGE_W = "88888888-2222-3333-4444-555555555555"
# What Glance's image schema shows that is not an extra property.
BASE = {"name", "disk_format", "container_format", "visibility", "size", "virtual_size", "status", "checksum",
        "protected", "min_ram", "min_disk", "owner", "os_hidden", "os_hash_algo", "os_hash_value", "id",
        "created_at", "updated_at", "tags", "self", "file", "schema", "stores", "direct_url", "locations"}


@pytest.fixture(scope="module", params=sorted(FILES))
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    rule_format = request.param
    venv = ROOT / ".venv-glance"
    if not (venv / "bin" / "uwsgi").exists():
        pytest.fail(f"{venv} is missing: run scripts/install.sh --test (it makes the Glance 33 venv)")
    base = tmp_path_factory.mktemp(f"protections-{rule_format}")
    rules = base / "protections.conf"
    rules.write_text(WRITE_ONLY[rule_format] + FILES[rule_format])
    options = f"property_protection_file = {rules}\nproperty_protection_rule_format = {rule_format}\n"

    class ProtectedGlance(_bench_servers().Glance):  # type: ignore[misc, name-defined]
        def prepare(self) -> list[str]:
            command = super().prepare()
            conf = self.workdir / "etc/glance-api.conf"
            conf.write_text(conf.read_text().replace("[DEFAULT]\n", "[DEFAULT]\n" + options, 1))
            return command

    (base / "streamd").mkdir()
    daemon = start_daemon(base / "streamd", extra_config=options)
    try:
        with ProtectedGlance(base / "glance", venv) as glance:
            _wait_until_steady(glance.url)
            yield {"glance": glance.url, "streamd": daemon.url, "format": rule_format}
    finally:
        stop_daemon(daemon)


def _wait_until_steady(url: str) -> None:
    answered = 0
    for _ in range(200):
        try:
            answered = answered + 1 if requests.get(url + "/v2/schemas/image", timeout=10).status_code == 200 else 0
        except requests.RequestException:
            answered = 0
        if answered >= 6:
            return
    raise AssertionError("Glance does not answer steadily")


def _outcome(reply: requests.Response) -> tuple[int, Any]:
    """The status, and the extra properties shown (or the error's message)."""
    if reply.status_code >= 400:
        try:
            message = reply.json()["message"]
        except ValueError:
            message = reply.text
        message = " ".join(message.replace("<br />", " ").split())
        # Glance's 409s from PATCH put webob's generic explanation first (HTTPConflict(detail)),
        # streamd answers with the detail alone: a difference of every PATCH 409, not of protections.
        return reply.status_code, message.removeprefix(CONFLICT)
    if not reply.content:
        return reply.status_code, None
    body = reply.json()
    if "images" in body:
        return reply.status_code, {i["id"]: sorted(set(i) - BASE) for i in body["images"]}
    return reply.status_code, sorted(set(body) - BASE)


def _scenario(url: str) -> list[tuple[str, tuple[int, Any]]]:
    json_headers = {"Accept": "application/json", "Content-Type": "application/json"}

    def create(who: dict[str, str], **body: Any) -> tuple[int, Any]:
        doc = {"disk_format": "raw", "container_format": "bare", **body}
        return _outcome(requests.post(url + "/v2/images", data=json.dumps(doc), headers={**json_headers, **who},
                                     timeout=30))

    def show(who: dict[str, str], image_id: str) -> tuple[int, Any]:
        return _outcome(requests.get(f"{url}/v2/images/{image_id}", headers={**json_headers, **who}, timeout=30))

    def listing(who: dict[str, str]) -> tuple[int, Any]:
        return _outcome(requests.get(f"{url}/v2/images", headers={**json_headers, **who}, timeout=30))

    def patch(who: dict[str, str], image_id: str, op: str, name: str, value: str | None = None) -> tuple[int, Any]:
        change: dict[str, Any] = {"op": op, "path": f"/{name}"}
        if op != "remove":
            change["value"] = value
        return _outcome(requests.patch(f"{url}/v2/images/{image_id}", data=json.dumps([change]),
                                      headers={**json_headers, **who, "Content-Type": PATCH}, timeout=30))

    steps: list[tuple[str, tuple[int, Any]]] = []
    add = lambda what, outcome: steps.append((what, outcome))  # noqa: E731
    add("admin creates X", create(ADMIN, id=IMAGE_X, owner=PROJECT_A, foo="1", spl_read_only_prop="r",
                                  spl_update_only_prop="u", x_none_update="1", x_none_delete="1", x_foo="2"))
    add("member creates Y with a write-only property", create(MEMBER_A, id=IMAGE_Y, x_none_read="s", x_bar="1"))
    add("member creates with an admin-only property", create(MEMBER_A, id=OTHERS[0], foo="1"))
    add("member creates with a no-one property", create(MEMBER_A, id=OTHERS[1], x_none_permitted_1="1"))
    add("admin creates with a no-one property", create(ADMIN, id=OTHERS[2], x_none_permitted_1="1"))
    add("member creates Z with an everyone property", create(MEMBER_A, id=IMAGE_Z, x_all_permitted_1="1"))
    for who, name in ((MEMBER_A, "member"), (SPL, "spl"), (ADMIN, "admin")):
        add(f"{name} shows X", show(who, IMAGE_X))
        add(f"{name} shows Y", show(who, IMAGE_Y))
    add("member lists", listing(MEMBER_A))
    add("admin lists", listing(ADMIN))
    add("admin replaces an admin-only property", patch(ADMIN, IMAGE_X, "replace", "foo", "3"))
    add("admin removes an admin-only property", patch(ADMIN, IMAGE_X, "remove", "foo"))
    add("admin adds an admin-only property", patch(ADMIN, IMAGE_X, "add", "foo", "4"))
    add("admin shows X", show(ADMIN, IMAGE_X))
    # From here on Glance may have dropped what the member cannot read (see the test).
    add("member replaces a hidden property", patch(MEMBER_A, IMAGE_X, "replace", "foo", "2"))
    add("member removes a hidden property", patch(MEMBER_A, IMAGE_X, "remove", "foo"))
    add("member adds a hidden property", patch(MEMBER_A, IMAGE_X, "add", "foo", "2"))
    add("member replaces a no-update property", patch(MEMBER_A, IMAGE_X, "replace", "x_none_update", "2"))
    add("member adds over a no-update property", patch(MEMBER_A, IMAGE_X, "add", "x_none_update", "2"))
    add("member removes a no-delete property", patch(MEMBER_A, IMAGE_X, "remove", "x_none_delete"))
    add("member replaces a no-one property", patch(MEMBER_A, IMAGE_Z, "replace", "x_none_permitted_1", "2"))
    add("member replaces an everyone property", patch(MEMBER_A, IMAGE_Z, "replace", "x_all_permitted_1", "2"))
    add("member removes an everyone property", patch(MEMBER_A, IMAGE_Z, "remove", "x_all_permitted_1"))
    add("spl replaces a read-only property", patch(SPL, IMAGE_X, "replace", "spl_read_only_prop", "x"))
    add("spl replaces an update-only property", patch(SPL, IMAGE_X, "replace", "spl_update_only_prop", "x"))
    # Last, as it is where the two part (see the test): a change by a caller who cannot read all of X.
    add("member adds an everyone property to X", patch(MEMBER_A, IMAGE_X, "add", "x_all_permitted_2", "1"))
    add(KEPT, show(ADMIN, IMAGE_X))
    add("member creates W with a property only the admin reads", create(MEMBER_A, id=IMAGE_W, x_admin_read="1"))
    add(STORED, show(ADMIN, IMAGE_W))
    return steps


KEPT = "admin shows X after the member's change"
STORED = "admin shows W"


def test_the_same_answers_as_glance(servers: dict[str, str]) -> None:
    glance = _scenario(servers["glance"])
    streamd = _scenario(servers["streamd"])
    assert [s[0] for s in streamd] == [s[0] for s in glance]
    # The one difference kept on purpose (Glance's step is last, after the member's changes): Glance saves an image with the extra properties its caller
    # can read, so a member's PATCH deletes every property hidden from the member (foo, the spl_*
    # ones): the protection would be undone by any edit. streamd keeps what the caller cannot see.
    (_, (g_status, g_keys)), (_, (s_status, s_keys)) = glance[-3], streamd[-3]
    hidden_from_member = {"foo", "spl_read_only_prop", "spl_update_only_prop"} | (
        {"x_foo"} if servers["format"] == "roles" else set())
    assert (g_status, s_status) == (200, 200)
    assert hidden_from_member <= set(s_keys) and set(g_keys) == set(s_keys) - hidden_from_member
    # The other: a property its creator may create but not read is dropped by Glance's create (its
    # protected image factory hands the store the properties filtered for reading); streamd stores it.
    assert glance[-1] == (STORED, (200, [])) and streamd[-1] == (STORED, (200, ["x_admin_read"]))
    glance, streamd = glance[:-3] + glance[-2:-1], streamd[:-3] + streamd[-2:-1]
    differences = [(what, g, s) for (what, g), (_, s) in zip(glance, streamd) if g != s]
    assert not differences, "\n".join(f"{what}:\n  glance  {g}\n  streamd {s}" for what, g, s in differences)
