"""The property protection rules on their own (streamd.policy.protections): parsing and decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.context import RequestContext
from streamd.errors import ConfigError
from streamd.policy import PolicyEnforcer, PolicySettings, PropertyProtections
from streamd.policy.protections import parse_rules


def _ctx(*roles: str, service_roles: tuple[str, ...] = ()) -> RequestContext:
    return RequestContext(project_id="p" * 32, user_id="u", roles=frozenset(roles),
                          service_roles=frozenset(service_roles))


def _rules(text: str) -> PropertyProtections:
    return PropertyProtections(parse_rules(text, "roles"), "roles")


ALL = "create = {0}\nread = {0}\nupdate = {0}\ndelete = {0}\n"


def test_the_first_section_in_the_file_order_decides() -> None:
    rules = _rules("[x_.*]\n" + ALL.format("@") + "[.*]\n" + ALL.format("!"))
    assert [r.section for r in rules.rules] == ["os_glance.*", "x_.*", ".*"]
    assert rules.allows(_ctx(), "x_a", "read") and not rules.allows(_ctx(), "y_a", "read")
    # re.search, as Glance: an expression found anywhere in the name matches.
    assert rules.allows(_ctx(), "hw_x_a", "update")


def test_a_name_no_section_covers_is_refused() -> None:
    rules = _rules("[^x_]\n" + ALL.format("@"))
    assert not rules.allows(_ctx("admin"), "y", "read")
    assert not rules.allows(_ctx("admin"), "x_a", "frobnicate")


def test_os_glance_sections_are_glance_s() -> None:
    rules = _rules("[os_glance_foo]\n" + ALL.format("!") + "[.*]\n" + ALL.format("!"))
    assert [r.section for r in rules.rules] == ["os_glance.*", ".*"]
    assert rules.allows(_ctx(), "os_glance_importing_to_stores", "read")


def test_roles_are_case_insensitive_and_service_roles_count() -> None:
    rules = _rules("[.*]\n" + ALL.format("Admin, spl_role"))
    assert rules.allows(_ctx("admin"), "a", "create")
    assert rules.allows(_ctx("member", service_roles=("spl_role",)), "a", "delete")
    assert not rules.allows(_ctx("member"), "a", "read")


def test_an_empty_value_is_no_one(caplog: pytest.LogCaptureFixture) -> None:
    rules = _rules("[.*]\ncreate =\nread = @\nupdate = @\ndelete = @\n")
    assert not rules.allows(_ctx("admin"), "a", "create")
    assert "gives no create" in caplog.text


def test_default_section_supplies_missing_operations() -> None:
    # configparser's [DEFAULT] (Glance reads the file with configparser too).
    rules = _rules("[DEFAULT]\ndelete = !\n[.*]\ncreate = @\nread = @\nupdate = @\n")
    assert not rules.allows(_ctx(), "a", "delete") and rules.allows(_ctx(), "a", "update")


def test_every_problem_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules("[a(]\n" + ALL.format("@") + "[b]\ncreate = @\n[c]\n" + ALL.format("@,!") + "[d]\ncreate = %(x\n"
                    "read = @\nupdate = @\ndelete = @\n", "roles")
    problems = info.value.problems
    assert len(problems) == 1 + 3 + 4 + 1, problems
    assert any("[d] create" in p for p in problems)


def test_policies_check_the_named_rule(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text('spl: "role:spl_role"\n')
    enforcer = PolicyEnforcer(PolicySettings(policy_file=tmp_path / "policy.yaml", policy_file_required=True))
    (tmp_path / "prot.conf").write_text("[^spl_]\ncreate = spl\nread = context_is_admin\nupdate = nosuchrule\n"
                                        "delete = !\n[.*]\n" + ALL.format("default"))
    rules = PropertyProtections.from_file(tmp_path / "prot.conf", "policies", enforcer)
    assert rules.allows(_ctx("spl_role"), "spl_a", "create") and not rules.allows(_ctx("member"), "spl_a", "create")
    assert rules.allows(_ctx("admin"), "spl_a", "read") and not rules.allows(_ctx("spl_role"), "spl_a", "read")
    # An unknown rule is oslo.policy's default rule: Glance 33's "default" is empty, so everyone.
    assert rules.allows(_ctx(), "spl_a", "update")
    assert not rules.allows(_ctx("admin"), "spl_a", "delete")
    assert rules.allows(_ctx(), "other", "delete")


def test_a_bad_rule_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prot.conf").write_text("[.*]\n" + ALL.format("@"))
    with pytest.raises(ConfigError, match="property_protection_rule_format"):
        PropertyProtections.from_file(tmp_path / "prot.conf", "Roles")
