"""Property protections ([DEFAULT] property_protection_file), against the real server on loopback.

The files are Glance's own: the rules of its two shipped samples
(etc/property-protections-roles.conf.sample, etc/property-protections-policies.conf.sample)
and of the one its functional tests use (glance/tests/etc/property-protections.conf), so
that the answers can be compared with what Glance documents and does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from streamd.errors import ConfigError

from conftest import (ADMIN, MEMBER_A, PROJECT_A, READER_A, ApiClient, both_databases, make_config, start_api,
                      start_daemon)

ROOT = Path(__file__).resolve().parent.parent

# Glance's etc/property-protections-roles.conf.sample (its rules; the comments left out).
ROLES_SAMPLE = """
[^x_.*]
create = admin,member,_member_
read = admin,member,_member_
update = admin,member,_member_
delete = admin,member,_member_

[.*]
create = admin
read = admin
update = admin
delete = admin
"""

# Glance's etc/property-protections-policies.conf.sample.
POLICIES_SAMPLE = """
[^x_.*]
create = default
read = default
update = default
delete = default

[.*]
create = context_is_admin
read = context_is_admin
update = context_is_admin
delete = context_is_admin
"""

# From Glance's glance/tests/etc/property-protections.conf: '@', '!', one missing right per section.
ROLES_DETAILED = """
[spl_read_only_prop]
create = admin
read = admin,spl_role
update = admin
delete = admin

[spl_update_only_prop]
create = admin
read = admin
update = admin,spl_role
delete = admin

[^x_all_permitted.*]
create = @
read = @
update = @
delete = @

[^x_none_permitted.*]
create = !
read = !
update = !
delete = !

[x_none_read]
create = admin,member
read = !
update = !
delete = !

[x_none_update]
create = admin,member
read = admin,member
update = !
delete = admin,member

[x_none_delete]
create = admin,member
read = admin,member
update = admin,member
delete = !

[x_case_insensitive]
create = admin,Member
read = admin,Member
update = admin,Member
delete = admin,Member

[.*]
create = admin
read = admin
update = admin
delete = admin
"""

SPL = {"X-Project-Id": PROJECT_A, "X-User-Id": "spl-a", "X-Roles": "member,reader,spl_role"}

pytestmark = both_databases


async def _serve(tmp_path: Path, database_url: str, text: str, rule_format: str = "roles",
                 policy: str | None = None) -> tuple[Any, ApiClient, Any]:
    (tmp_path / "protections.conf").write_text(text)
    sections: dict[str, dict[str, str]] = {"DEFAULT": {
        "property_protection_file": str(tmp_path / "protections.conf"),
        "property_protection_rule_format": rule_format}}
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
        sections["oslo_policy"] = {"policy_file": str(tmp_path / "policy.yaml")}
    return await start_api(make_config(tmp_path, database_url, **sections))


@pytest.fixture
async def roles_api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiClient]:
    server, client, session = await _serve(tmp_path, database_url, ROLES_SAMPLE)
    try:
        yield client
    finally:
        await session.close()
        await server.close()


@pytest.fixture
async def detailed_api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiClient]:
    server, client, session = await _serve(tmp_path, database_url, ROLES_DETAILED)
    try:
        yield client
    finally:
        await session.close()
        await server.close()


@pytest.fixture
async def policies_api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiClient]:
    server, client, session = await _serve(tmp_path, database_url, POLICIES_SAMPLE, "policies")
    try:
        yield client
    finally:
        await session.close()
        await server.close()


def _message(reply: Any) -> str:
    """The message of an error body, without the markup webob (and so Glance) appends."""
    return reply.error["message"].split("<br />")[0]  # type: ignore[no-any-return]


def _op(op: str, name: str, value: Any = None) -> dict[str, Any]:
    change: dict[str, Any] = {"op": op, "path": f"/{name}"}
    if op != "remove":
        change["value"] = value
    return change


async def _create(api: ApiClient, as_: dict[str, str], **props: Any) -> Any:
    return await api.call("POST", "/v2/images", as_=as_,
                          json_body={"disk_format": "raw", "container_format": "bare", **props})


async def _show(api: ApiClient, image_id: str, as_: dict[str, str]) -> dict[str, Any]:
    reply = await api.call("GET", f"/v2/images/{image_id}", as_=as_)
    assert reply.status == 200, reply.body
    return reply.json  # type: ignore[no-any-return]


async def _admin_image_of_a(api: ApiClient, **props: str) -> str:
    """An image of project A holding properties only the admin may create."""
    reply = await _create(api, ADMIN, owner=PROJECT_A, **props)
    assert reply.status == 201, reply.body
    return reply.json["id"]  # type: ignore[no-any-return]


# -- roles: Glance's sample ---------------------------------------------------------------------

async def test_create_with_a_protected_property(roles_api: ApiClient) -> None:
    ok = await _create(roles_api, MEMBER_A, x_distro="debian")
    assert ok.status == 201, ok.body
    assert ok.json["x_distro"] == "debian"
    refused = await _create(roles_api, MEMBER_A, x_ok="1", hw_disk_bus="scsi")
    assert refused.status == 403
    assert (refused.error["title"], _message(refused)) == ("Forbidden", "Attribute 'hw_disk_bus' is reserved.")
    assert await roles_api.list_ids(as_=MEMBER_A) == [ok.json["id"]]  # nothing created by the refusal
    admin = await _create(roles_api, ADMIN, hw_disk_bus="scsi")
    assert admin.status == 201 and admin.json["hw_disk_bus"] == "scsi"


async def test_base_properties_are_not_protected(roles_api: ApiClient) -> None:
    # [.*] covers every name, but only extra properties: name, visibility, ... stay the policy's.
    reply = await _create(roles_api, MEMBER_A, name="n", visibility="shared", min_ram=1, tags=["t"])
    assert reply.status == 201, reply.body
    patched = await roles_api.patch(reply.json["id"], [_op("replace", "name", "m"), _op("add", "min_disk", 2)])
    assert patched.status == 200, patched.body


async def test_read_protected_properties_are_hidden_in_show_and_list(roles_api: ApiClient) -> None:
    image_id = await _admin_image_of_a(roles_api, hw_disk_bus="scsi", x_distro="debian")
    seen = await _show(roles_api, image_id, MEMBER_A)
    assert "hw_disk_bus" not in seen and seen["x_distro"] == "debian"
    listed = (await roles_api.call("GET", "/v2/images", as_=MEMBER_A)).json["images"]
    assert [i["id"] for i in listed] == [image_id]
    assert "hw_disk_bus" not in listed[0] and listed[0]["x_distro"] == "debian"
    assert (await _show(roles_api, image_id, ADMIN))["hw_disk_bus"] == "scsi"
    admin_list = (await roles_api.call("GET", "/v2/images", as_=ADMIN)).json["images"]
    assert admin_list[0]["hw_disk_bus"] == "scsi"
    # A filter on a hidden property still selects (Glance filters in the database) but never shows it.
    filtered = (await roles_api.call("GET", "/v2/images", as_=MEMBER_A, params={"hw_disk_bus": "scsi"})).json
    assert [i["id"] for i in filtered["images"]] == [image_id] and "hw_disk_bus" not in filtered["images"][0]


async def test_a_property_the_caller_cannot_read_is_absent_on_patch(roles_api: ApiClient) -> None:
    image_id = await _admin_image_of_a(roles_api, hw_disk_bus="scsi")
    for change in (_op("replace", "hw_disk_bus", "ide"), _op("remove", "hw_disk_bus")):
        reply = await roles_api.patch(image_id, [change])
        assert reply.status == 409, reply.body
        assert _message(reply) == "Property hw_disk_bus does not exist."
    # add: the property is new to the caller, so it needs the create right (admin only here).
    reply = await roles_api.patch(image_id, [_op("add", "hw_disk_bus", "ide")])
    assert reply.status == 403
    assert _message(reply) == "Attribute 'hw_disk_bus' is reserved."
    # A change the caller may make leaves what it cannot see as it was.
    reply = await roles_api.patch(image_id, [_op("add", "x_distro", "debian")])
    assert reply.status == 200, reply.body
    assert "hw_disk_bus" not in reply.json and reply.json["x_distro"] == "debian"
    shown = await _show(roles_api, image_id, ADMIN)
    assert (shown["hw_disk_bus"], shown["x_distro"]) == ("scsi", "debian")


async def test_update_and_delete_of_a_protected_property(roles_api: ApiClient) -> None:
    image_id = await _admin_image_of_a(roles_api, x_distro="debian", hw_disk_bus="scsi")
    assert (await roles_api.patch(image_id, [_op("replace", "x_distro", "ubuntu")])).status == 200
    assert (await roles_api.patch(image_id, [_op("remove", "x_distro")])).status == 200
    # The admin may do all of it.
    reply = await roles_api.patch(image_id, [_op("replace", "hw_disk_bus", "ide")], as_=ADMIN)
    assert reply.status == 200 and reply.json["hw_disk_bus"] == "ide"
    reply = await roles_api.patch(image_id, [_op("remove", "hw_disk_bus")], as_=ADMIN)
    assert reply.status == 200 and "hw_disk_bus" not in reply.json


async def test_a_refused_change_leaves_the_whole_patch_undone(roles_api: ApiClient) -> None:
    image_id = (await roles_api.create(x_a="1")).get("id")
    reply = await roles_api.patch(image_id, [_op("add", "x_b", "2"), _op("add", "hw_x", "3")])
    assert reply.status == 403
    shown = await _show(roles_api, image_id, ADMIN)
    assert "x_b" not in shown and "hw_x" not in shown


# -- roles: '@', '!', per-operation rights, case --------------------------------------------------

async def test_everyone_and_no_one(detailed_api: ApiClient) -> None:
    api = detailed_api
    created = await _create(api, READER_A, x_all_permitted_1="1")
    assert created.status == 403  # add_image refuses a reader first: the policy comes before protections
    created = await _create(api, MEMBER_A, x_all_permitted_1="1")
    assert created.status == 201, created.body
    image_id = created.json["id"]
    for who in (MEMBER_A, ADMIN):
        refused = await _create(api, who, x_none_permitted_1="1")
        assert refused.status == 403
        assert _message(refused) == "Attribute 'x_none_permitted_1' is reserved."
        refused = await api.patch(image_id, [_op("add", "x_none_permitted_1", "1")], as_=who)
        assert refused.status == 403
    assert (await api.patch(image_id, [_op("replace", "x_all_permitted_1", "2")])).status == 200
    assert (await api.patch(image_id, [_op("remove", "x_all_permitted_1")])).status == 200


async def test_update_and_delete_rights_apart(detailed_api: ApiClient) -> None:
    api = detailed_api
    image_id = (await api.create(x_none_update="1", x_none_delete="1", x_case_insensitive="1"))["id"]
    reply = await api.patch(image_id, [_op("replace", "x_none_update", "2")])
    assert reply.status == 403 and _message(reply) == "Attribute 'x_none_update' is reserved."
    # add of an existing, readable property is an update.
    reply = await api.patch(image_id, [_op("add", "x_none_update", "2")])
    assert reply.status == 403
    assert (await api.patch(image_id, [_op("remove", "x_none_update")])).status == 200
    reply = await api.patch(image_id, [_op("remove", "x_none_delete")])
    assert reply.status == 403 and _message(reply) == "Attribute 'x_none_delete' is reserved."
    assert (await api.patch(image_id, [_op("replace", "x_none_delete", "2")])).status == 200
    # "Member" in the file matches the role member.
    assert (await api.patch(image_id, [_op("replace", "x_case_insensitive", "2")])).status == 200


async def test_write_only_and_read_only_properties(detailed_api: ApiClient) -> None:
    api = detailed_api
    # x_none_read: the member may create it, nobody may read it.
    created = await _create(api, MEMBER_A, x_none_read="secret")
    assert created.status == 201, created.body
    assert "x_none_read" not in created.json
    assert "x_none_read" not in await _show(api, created.json["id"], MEMBER_A)
    assert "x_none_read" not in await _show(api, created.json["id"], ADMIN)
    # Added by PATCH: stored, and not shown in the answer either (Glance 33 answers this one with a 500).
    other = (await api.create())["id"]
    reply = await api.patch(other, [_op("add", "x_none_read", "secret")])
    assert reply.status == 200, reply.body
    assert "x_none_read" not in reply.json
    # spl_read_only_prop: spl_role reads it, only the admin writes it.
    image_id = await _admin_image_of_a(api, spl_read_only_prop="r", spl_update_only_prop="u")
    shown = await _show(api, image_id, SPL)
    assert shown["spl_read_only_prop"] == "r" and "spl_update_only_prop" not in shown
    assert (await api.patch(image_id, [_op("replace", "spl_read_only_prop", "x")], as_=SPL)).status == 403
    # spl_update_only_prop: spl_role may not read it, so to it the property is absent.
    reply = await api.patch(image_id, [_op("replace", "spl_update_only_prop", "x")], as_=SPL)
    assert reply.status == 409


# -- policies: Glance's sample and rules of the policy file ---------------------------------------

async def test_policies_sample(policies_api: ApiClient) -> None:
    api = policies_api
    # [^x_.*] = default: Glance 33's "default" rule is empty, so everyone.
    created = await _create(api, MEMBER_A, x_distro="debian")
    assert created.status == 201, created.body
    refused = await _create(api, MEMBER_A, hw_disk_bus="scsi")
    assert refused.status == 403 and _message(refused) == "Attribute 'hw_disk_bus' is reserved."
    image_id = await _admin_image_of_a(api, hw_disk_bus="scsi", x_distro="d")
    assert "hw_disk_bus" not in await _show(api, image_id, MEMBER_A)
    assert (await _show(api, image_id, ADMIN))["hw_disk_bus"] == "scsi"
    assert (await api.patch(image_id, [_op("remove", "hw_disk_bus")])).status == 409
    assert (await api.patch(image_id, [_op("remove", "x_distro")])).status == 200


async def test_policies_name_rules_of_the_policy_file(tmp_path: Path, database_url: str) -> None:
    text = ("[^spl_]\ncreate = spl_creator\nread = spl_reader\nupdate = spl_creator\ndelete = !\n\n"
            "[.*]\ncreate = @\nread = @\nupdate = @\ndelete = @\n")
    policy = 'spl_creator: "role:spl_role"\nspl_reader: "role:spl_role or role:reader"\n'
    server, api, session = await _serve(tmp_path, database_url, text, "policies", policy)
    try:
        assert (await _create(api, MEMBER_A, spl_a="1")).status == 403
        created = await _create(api, SPL, spl_a="1", other="2")
        assert created.status == 201, created.body
        image_id = created.json["id"]
        assert (await _show(api, image_id, READER_A))["spl_a"] == "1"
        assert (await api.patch(image_id, [_op("replace", "spl_a", "2")], as_=SPL)).status == 200
        assert (await api.patch(image_id, [_op("replace", "spl_a", "3")], as_=MEMBER_A)).status == 403
        assert (await api.patch(image_id, [_op("remove", "spl_a")], as_=SPL)).status == 403
    finally:
        await session.close()
        await server.close()


# -- bad files stop the start ---------------------------------------------------------------------

BAD_FILES = {
    "not ini": ("create = admin\n", "not a valid property protection file"),
    "bad regex": ("[x_(]\ncreate = @\nread = @\nupdate = @\ndelete = @\n", "malformed property protection rule [x_(]"),
    "missing operation": ("[x_.*]\ncreate = @\nread = @\nupdate = @\n", "[x_.*] has no 'delete'"),
    "misspelt operation": ("[x_.*]\ncreate = @\nread = @\nupdate = @\ndelte = @\n", "[x_.*] has no 'delete'"),
    "@ and !": ("[x_.*]\ncreate = @,!\nread = @\nupdate = @\ndelete = @\n", "'@' and '!' are mutually exclusive"),
    "duplicate section": ("[a]\ncreate = @\nread = @\nupdate = @\ndelete = @\n[a]\ncreate = @\n",
                          "not a valid property protection file"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
async def test_a_bad_file_is_refused_at_start(tmp_path: Path, database_url: str, case: str) -> None:
    text, expected = BAD_FILES[case]
    with pytest.raises(ConfigError) as info:
        await _serve(tmp_path, database_url, text)
    assert expected in str(info.value)


async def test_policies_format_refuses_several_policies(tmp_path: Path, database_url: str) -> None:
    text = "[x_.*]\ncreate = a,b\nread = @\nupdate = @\ndelete = @\n"
    with pytest.raises(ConfigError) as info:
        await _serve(tmp_path, database_url, text, "policies")
    assert "one policy per operation" in str(info.value)
    # The same file is fine as roles.
    server, _, session = await _serve(tmp_path, database_url, text, "roles")
    await session.close()
    await server.close()


async def test_a_missing_file_is_refused_at_start(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url, DEFAULT={"property_protection_file": str(tmp_path / "none.conf")})
    with pytest.raises(ConfigError) as info:
        await start_api(config)
    assert f"[DEFAULT] property_protection_file: {tmp_path / 'none.conf'} does not exist" in str(info.value)


def test_check_config_names_a_bad_file(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "prot.conf").write_text("[x_(]\ncreate = @\nread = @\nupdate = @\ndelete = @\n")
    conf = tmp_path / "streamd.conf"
    conf.write_text(f"[DEFAULT]\ndata_dir = {tmp_path / 'data'}\nproperty_protection_file = prot.conf\n")
    result = subprocess.run([sys.executable, "-m", "streamd", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "malformed property protection rule [x_(]" in result.stderr
    (tmp_path / "prot.conf").write_text(ROLES_SAMPLE)  # relative to the configuration file's directory
    result = subprocess.run([sys.executable, "-m", "streamd", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_daemon_does_not_start_on_a_bad_file(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "prot.conf").write_text("[x_.*]\ncreate = @\nread = @\nupdate = @\n")
    with pytest.raises(AssertionError) as info:
        start_daemon(tmp_path, extra_config=f"property_protection_file = {tmp_path / 'prot.conf'}\n")
    assert "daemon exited with 1" in str(info.value)
    assert "[DEFAULT] property_protection_file: [x_.*] has no 'delete'" in str(info.value)
