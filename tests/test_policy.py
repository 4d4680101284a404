"""streamd's policy engine: policy files (YAML and JSON) over Glance 33's defaults, their reload,
scope, the sample file, and the catalogue's listing agreeing with the default rules.

Real parts: the daemon as a process with a real configuration and policy file, oslo.policy
itself, the real app over a real catalogue. (The defaults route by route are compared with the
real Glance 33 in test_policy_parity.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from conftest import ADMIN, MEMBER_A, MEMBER_B, MEMBER_C, PROJECT_A, PROJECT_B, PYTHON, READER_A, ROOT, \
    make_config, start_api, start_daemon, stop_daemon
from streamd.config import load_config
from streamd.context import RequestContext
from streamd.errors import ConfigError, NotPermitted
from streamd.policy import RULE_NAMES, ImagePolicy, PolicyEnforcer, PolicySettings, rules_read_once_per_request, \
    settings_from_config
from streamd.policy.descriptions import describe
from streamd.policy.glance_rules import RULES

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def _call(daemon_url: str, method: str, path: str, who: dict[str, str], body: Any = None,
          headers: dict[str, str] | None = None, data: bytes | None = None) -> requests.Response:
    all_headers = {"Accept": "application/json", **who, **(headers or {})}
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    return requests.request(method, daemon_url + path, headers=all_headers, data=data, timeout=30)


def _image_with_data(url: str, who: dict[str, str] = MEMBER_A) -> str:
    reply = _call(url, "POST", "/v2/images", who, {"name": "p", "disk_format": "raw", "container_format": "bare"})
    assert reply.status_code == 201, reply.text
    image_id = reply.json()["id"]
    put = _call(url, "PUT", f"/v2/images/{image_id}/file", who, data=b"data" * 10,
                headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 204, put.text
    return str(image_id)


def test_a_yaml_policy_file_opens_publicizing_to_members(tmp_path: Path) -> None:
    # Relative to the configuration file's directory, as oslo.config looks it up.
    (tmp_path / "open.yaml").write_text('# members may publish\npublicize_image: "role:member"\n')
    daemon = start_daemon(tmp_path, "[oslo_policy]\npolicy_file = open.yaml\n")
    try:
        created = _call(daemon.url, "POST", "/v2/images", MEMBER_A, {"name": "pub", "visibility": "public"})
        assert created.status_code == 201, created.text
        image_id = _image_with_data(daemon.url)
        patched = _call(daemon.url, "PATCH", f"/v2/images/{image_id}", MEMBER_A,
                        data=json.dumps([{"op": "replace", "path": "/visibility", "value": "public"}]).encode(),
                        headers=PATCH)
        assert patched.status_code == 200 and patched.json()["visibility"] == "public"
        # Only the rule named changed: a reader still may not publish (modify_image refuses it),
        # and the other project's member still may not change the owner's image.
        for who in (READER_A, MEMBER_B):
            refused = _call(daemon.url, "PATCH", f"/v2/images/{image_id}", who,
                            data=json.dumps([{"op": "replace", "path": "/name", "value": "x"}]).encode(),
                            headers=PATCH)
            assert refused.status_code == 403
            assert "You are not authorized to complete modify_image action." in refused.json()["message"]
    finally:
        stop_daemon(daemon)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_policy_file_that_forbids_downloads(tmp_path: Path, fmt: str) -> None:
    policy = tmp_path / "etc" / f"policy.{fmt}"
    policy.parent.mkdir()
    policy.write_text('download_image: "!"\n' if fmt == "yaml" else json.dumps({"download_image": "!"}))
    daemon = start_daemon(tmp_path, f"[oslo_policy]\npolicy_file = {policy}\n")
    try:
        image_id = _image_with_data(daemon.url)
        for who in (MEMBER_A, ADMIN):  # "!" refuses everyone, the admin too
            reply = _call(daemon.url, "GET", f"/v2/images/{image_id}/file", who)
            assert reply.status_code == 403
            assert "You are not authorized to complete download_image action." in reply.json()["message"]
        # A caller who may not see the image still gets 404, not 403: refusals never reveal images.
        assert _call(daemon.url, "GET", f"/v2/images/{image_id}/file", MEMBER_B).status_code == 404
        # Everything else keeps its default.
        assert _call(daemon.url, "GET", f"/v2/images/{image_id}", MEMBER_A).status_code == 200
    finally:
        stop_daemon(daemon)


def test_the_policy_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    # The default file name (policy.yaml beside the configuration): absent at start, which is fine.
    policy = tmp_path / "policy.yaml"
    daemon = start_daemon(tmp_path)
    try:
        image_id = _image_with_data(daemon.url)
        path = f"/v2/images/{image_id}/file"
        assert _call(daemon.url, "GET", path, MEMBER_A).status_code == 200
        policy.write_text('download_image: "!"\n')
        assert _call(daemon.url, "GET", path, MEMBER_A).status_code == 403
        # Removing the rule from the file brings the default back.
        time.sleep(0.01)  # a new modification time, whatever the filesystem's resolution
        policy.write_text('get_images: "rule:context_is_admin or (role:reader and project_id:%(project_id)s)"\n')
        os.utime(policy, (time.time() + 5, time.time() + 5))
        assert _call(daemon.url, "GET", path, MEMBER_A).status_code == 200
    finally:
        stop_daemon(daemon)


def test_files_in_policy_dirs_are_read_as_they_come_change_and_go(tmp_path: Path) -> None:
    # The enforcer looks at its files by their stat results and remembers its decisions for the
    # rules in force: each change below must still reach the very next check.
    policy_d = tmp_path / "policy.d"
    enforcer = PolicyEnforcer(PolicySettings(policy_file=tmp_path / "policy.yaml", policy_dirs=(policy_d,)))
    member = RequestContext(PROJECT_A, "user-a", frozenset({"member", "reader"}))
    admin = RequestContext(PROJECT_A, "admin", frozenset({"admin", "member", "reader"}))

    def publicize() -> tuple[bool, bool]:
        return enforcer.allows(member, "publicize_image", {}), enforcer.allows(admin, "publicize_image", {})

    assert publicize() == (False, True)  # the default: admins only; the directory does not exist yet
    assert publicize() == (False, True)  # (now remembered)
    policy_d.mkdir()
    (policy_d / "10-open.yaml").write_text('publicize_image: "role:member"\n')
    assert publicize() == (True, True)
    # Edited in place (the same inode; within one clock tick the same modification time too):
    (policy_d / "10-open.yaml").write_text('publicize_image: "role:reade"\n')
    assert publicize() == (False, False)
    (policy_d / "20-later.yaml").write_text('publicize_image: "role:admin or role:reader"\n')
    assert publicize() == (True, True)  # a later file in name order wins
    (policy_d / "20-later.yaml").unlink()
    (policy_d / "10-open.yaml").unlink()
    assert publicize() == (False, True)
    # The policy file beside the directories, appearing late: read as well.
    (tmp_path / "policy.yaml").write_text('publicize_image: "!"\n')
    assert publicize() == (False, False)


def test_a_request_is_decided_by_the_rules_in_force_when_it_began(tmp_path: Path) -> None:
    """Inside one request the files are looked at by the first check only; the next request (and
    any check outside a request) sees an edit at once."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('get_image: "role:reader"\n')
    enforcer = PolicyEnforcer(PolicySettings(policy_file=policy))
    ctx = RequestContext(project_id=PROJECT_A, user_id="u", roles=frozenset({"reader"}))
    target = {"project_id": PROJECT_A, "owner": PROJECT_A, "visibility": "private"}

    edits = [0]

    def edit(text: str) -> None:
        policy.write_text(text)
        edits[0] += 1
        later = time.time() + 5 * edits[0]  # a newer modification time, whatever the filesystem's resolution
        os.utime(policy, (later, later))

    with rules_read_once_per_request():
        assert enforcer.allows(ctx, "get_image", target)
        edit('get_image: "!"\n')
        assert enforcer.allows(ctx, "get_image", target)
        assert enforcer.allows_each(ctx, "get_image", [target]) == [True]
    assert not enforcer.allows(ctx, "get_image", target)
    edit('get_image: "role:reader"\n')
    with rules_read_once_per_request():
        assert enforcer.allows(ctx, "get_image", target)
    edit('get_image: "role:admin"\n')
    assert not enforcer.allows(ctx, "get_image", target)


def test_a_missing_policy_file_named_by_the_configuration_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "streamd.conf"
    config.write_text(f"[DEFAULT]\ndata_dir = {tmp_path / 'data'}\n[oslo_policy]\npolicy_file = nowhere.yaml\n")
    result = subprocess.run([PYTHON, "-m", "streamd", "check-config", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"[oslo_policy] policy_file: {tmp_path / 'nowhere.yaml'} does not exist" in result.stderr
    served = subprocess.run([PYTHON, "-m", "streamd", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert served.returncode == 1 and "nowhere.yaml does not exist" in served.stderr


def test_a_policy_file_that_is_not_yaml_or_uses_remote_checks_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("download_image: [unclosed\n")
    with pytest.raises(ConfigError, match="policy file"):
        PolicyEnforcer(PolicySettings(policy_file=broken, policy_file_required=True))
    remote = tmp_path / "remote.yaml"
    remote.write_text('get_image: "http://127.0.0.1:1/check"\n')
    with pytest.raises(ConfigError, match="remote checks"):
        PolicyEnforcer(PolicySettings(policy_file=remote, policy_file_required=True))


def test_oslo_policy_section_is_read_with_its_defaults(tmp_path: Path) -> None:
    config = load_config(None)
    assert (config.oslo_policy.policy_file, config.oslo_policy.policy_dirs) == ("policy.yaml", ("policy.d",))
    assert config.oslo_policy.enforce_scope and config.oslo_policy.enforce_new_defaults
    assert not config.policy_file_explicit
    path = tmp_path / "glance-api.conf"
    path.write_text("[oslo_policy]\npolicy_file = p.json\nenforce_scope = false\nenforce_new_defaults = false\n"
                    "policy_dirs = a,/abs/b\nremote_timeout = 5\n")
    config = load_config(path)
    settings = settings_from_config(config)
    assert settings.policy_file == tmp_path / "p.json" and settings.policy_file_required
    assert settings.policy_dirs == (tmp_path / "a", Path("/abs/b"))
    assert not settings.enforce_scope and not settings.enforce_new_defaults
    assert [(i.section, i.option) for i in config.ignored] == [("oslo_policy", "remote_timeout")]


def test_scope_is_enforced_unless_turned_off(tmp_path: Path) -> None:
    system_admin = RequestContext(None, "sys", frozenset({"admin", "member", "reader"}), system_scope="all")
    project_admin = RequestContext(PROJECT_A, "adm", frozenset({"admin"}))
    domain_admin = RequestContext(None, "dom", frozenset({"admin"}), domain_id="default")
    target = {"project_id": PROJECT_A, "owner": PROJECT_A, "visibility": "private"}
    scoped = PolicyEnforcer(PolicySettings(policy_file=tmp_path / "policy.yaml"))
    # Every Glance 33 rule with a scope is project-scoped: system and domain tokens are refused.
    assert scoped.allows(project_admin, "add_image", target)
    assert not scoped.allows(system_admin, "add_image", target)
    assert not scoped.allows(domain_admin, "get_images", {"project_id": None})
    with pytest.raises(NotPermitted, match="You are not authorized to complete add_image action."):
        scoped.enforce(system_admin, "add_image", target)
    # context_is_admin has no scope: a system admin is still Glance's admin.
    assert scoped.is_admin(system_admin)
    unscoped = PolicyEnforcer(PolicySettings(policy_file=tmp_path / "policy.yaml", enforce_scope=False))
    assert unscoped.allows(system_admin, "add_image", target)
    assert unscoped.allows(domain_admin, "get_images", {"project_id": None})


def test_legacy_defaults_open_the_deprecated_rules_with_glance_owner_checks(tmp_path: Path) -> None:
    legacy = PolicyEnforcer(PolicySettings(policy_file=tmp_path / "policy.yaml", enforce_new_defaults=False))
    nobody = RequestContext("9" * 32, "u", frozenset())
    # The deprecated check string of add_image is "rule:default", which is open ("").
    assert legacy.allows(nobody, "add_image", {"project_id": nobody.project_id, "owner": nobody.project_id,
                                               "visibility": "private"})
    assert legacy.legacy_ownership
    new = PolicyEnforcer(PolicySettings(policy_file=tmp_path / "policy.yaml"))
    assert not new.allows(nobody, "add_image", {"project_id": nobody.project_id, "owner": nobody.project_id,
                                                "visibility": "private"})


def test_policy_sample_is_commented_yaml_naming_every_rule() -> None:
    result = subprocess.run([PYTHON, "-m", "streamd", "policy-sample"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert result.returncode == 0, result.stderr
    # As it is, the file changes nothing: every rule is commented out.
    assert yaml.safe_load(result.stdout) is None
    rules = [line[1:] for line in result.stdout.splitlines() if line.startswith('#"')]
    uncommented = yaml.safe_load("\n".join(rules))
    assert set(uncommented) == RULE_NAMES == {r[0] for r in RULES}
    assert {name: check for name, check, *_ in RULES} == uncommented
    assert "# GET  /v2/images/{image_id}/file" in result.stdout
    assert "get_metadef_namespace" in uncommented and "add_metadef_namespace" in uncommented
    # Every rule has a description of ours.
    for name in RULE_NAMES:
        assert describe(name)


async def test_the_catalogue_lists_what_the_default_get_image_rule_allows(tmp_path: Path) -> None:
    """The catalogue filters lists in SQL; with the default rules the get_image filter the API adds
    (Glance's index) removes nothing from what the catalogue lists, for every caller."""
    server, api, session = await start_api(make_config(tmp_path))
    try:
        enforcer = api_services(server).policy
        made: dict[str, str] = {}
        for visibility in ("private", "shared", "community", "public"):
            image = await api.create(as_=ADMIN, name=visibility, owner=PROJECT_A, visibility=visibility)
            made[visibility] = image["id"]
        path = f"/v2/images/{made['shared']}/members"
        assert (await api.call("POST", path, as_=MEMBER_A, json_body={"member": PROJECT_B})).status == 200
        assert (await api.call("PUT", f"{path}/{PROJECT_B}", as_=MEMBER_B,
                               json_body={"status": "accepted"})).status == 200
        catalog = api_services(server).catalog
        expected = {"owner": {"private", "shared", "community", "public"}, "reader": {"private", "shared",
                    "community", "public"}, "image-member": {"shared", "public"}, "other": {"public"},
                    "admin": {"private", "shared", "public"}}
        callers = {"owner": MEMBER_A, "reader": READER_A, "image-member": MEMBER_B, "other": MEMBER_C,
                   "admin": ADMIN}
        from streamd.catalog import parse_list_params

        for caller, headers in callers.items():
            roles = frozenset(headers["X-Roles"].split(","))
            ctx = RequestContext(headers["X-Project-Id"], headers["X-User-Id"], roles)
            ctx = RequestContext(ctx.project_id, ctx.user_id, roles, policy_admin=enforcer.is_admin(ctx))
            images, _ = await catalog.list_images(ctx, parse_list_params([], limit_default=100, limit_max=100))
            listed = {i.name for i in images}
            assert listed == expected[caller], caller
            assert all(ImagePolicy(enforcer, ctx, i).allows("get_image") for i in images), caller
            # And the API answers the same list.
            assert set(await api.list_ids(as_=headers)) == {made[v] for v in listed}, caller
    finally:
        await session.close()
        await server.close()


def api_services(server: Any) -> Any:
    from streamd.api.keys import SERVICES

    return server.app[SERVICES]


def test_the_rule_table_is_glance_33s() -> None:
    """The generated table is current: the generator, run under the Glance venv, prints it again."""
    venv_python = ROOT / ".venv-glance" / "bin" / "python"
    result = subprocess.run([str(venv_python), str(ROOT / "scripts" / "glance_policy_rules.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "streamd" / "policy" / "glance_rules.py").read_text()
