"""Property protections: who may create, read, update and delete which extra properties.

The file is Glance's (``[DEFAULT] property_protection_file``): an ini file whose section
names are regular expressions of property names (an exact name is a regular expression
too), each with the four options ``create``, ``read``, ``update`` and ``delete``. A
property takes the first section, in the file's order, whose expression is found in its
name (``re.search``, as Glance: ``[x_foo]`` also covers ``ax_foo_b``); a property no
section covers is refused every operation.

The values depend on ``property_protection_rule_format``:

- ``roles``: comma-separated role names (case-insensitive); the caller's roles and its
  service token's roles count;
- ``policies``: one rule name of the policy enforcer (the policy file or Glance's
  defaults), checked against an empty target; a comma is refused;

and in both ``@`` is everyone, ``!`` no one, an empty value no one (logged). ``@`` and
``!`` together, a missing operation, an expression that does not compile, a file that
is missing or is not ini are configuration errors: the service does not start.

Glance reserves the ``os_glance`` prefix for itself: sections whose name starts with it
are dropped and a first section ``[os_glance.*]`` allowing everyone is put in front, so
a file's catch-all ``[.*]`` never shadows Glance's own properties.

No HTTP here: the API asks :meth:`PropertyProtections.allows` and filters what it shows.
"""

from __future__ import annotations

import configparser
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..context import RequestContext
from ..errors import ConfigError
from .enforcer import PolicyEnforcer

log = logging.getLogger(__name__)

OPERATIONS = ("create", "read", "update", "delete")
RULE_FORMATS = ("roles", "policies")
EVERYONE = "@"
NO_ONE = "!"
_RESERVED_PREFIX = "os_glance"
_RESERVED_SECTION = "os_glance.*"
_OPTION = "[DEFAULT] property_protection_file"


@dataclass(frozen=True)
class PropertyRule:
    """One section: its expression, and per operation the roles (or the one policy) it names."""

    section: str
    pattern: re.Pattern[str]
    permissions: Mapping[str, tuple[str, ...]]


class PropertyProtections:
    """The rules of one property protection file, in the file's order."""

    def __init__(self, rules: list[PropertyRule], rule_format: str, enforcer: PolicyEnforcer | None = None) -> None:
        if rule_format not in RULE_FORMATS:
            raise ConfigError([f"[DEFAULT] property_protection_rule_format: {rule_format!r} is not one of "
                               f"{', '.join(RULE_FORMATS)}"])
        if rule_format == "policies" and enforcer is None:
            raise ConfigError(["[DEFAULT] property_protection_rule_format = policies needs the policy enforcer"])
        self.rules = list(rules)
        self.rule_format = rule_format
        self._enforcer = enforcer

    @classmethod
    def from_file(cls, path: Path, rule_format: str, enforcer: PolicyEnforcer | None = None) -> PropertyProtections:
        if rule_format not in RULE_FORMATS:
            raise ConfigError([f"[DEFAULT] property_protection_rule_format: {rule_format!r} is not one of "
                               f"{', '.join(RULE_FORMATS)}"])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError([f"{_OPTION}: {path} does not exist"]) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{_OPTION}: {path} cannot be read: {exc}"]) from exc
        return cls(parse_rules(text, rule_format, str(path)), rule_format, enforcer)

    def allows(self, ctx: RequestContext, name: str, operation: str) -> bool:
        """May ``ctx`` apply ``operation`` (create, read, update, delete) to the property ``name``?"""
        if operation not in OPERATIONS:
            return False
        rule = self.rule_for(name)
        if rule is None:
            return False
        granted = rule.permissions[operation]
        if not granted or NO_ONE in granted:
            return False
        if EVERYONE in granted:
            return True
        if self.rule_format == "policies":
            assert self._enforcer is not None
            return self._enforcer.allows_named_rule(ctx, granted[0], {})
        roles = ctx.roles | ctx.service_roles
        return any(role.lower() in roles for role in granted)

    def rule_for(self, name: str) -> PropertyRule | None:
        """The first rule whose expression is found in ``name``."""
        for rule in self.rules:
            if rule.pattern.search(name):
                return rule
        return None

    def readable(self, ctx: RequestContext, properties: Mapping[str, str]) -> dict[str, str]:
        """The properties ``ctx`` may read (the others are hidden, as if absent)."""
        return {k: v for k, v in properties.items() if self.allows(ctx, k, "read")}


def parse_rules(text: str, rule_format: str, source: str = "<string>") -> list[PropertyRule]:
    """The rules of a property protection file's text; ConfigError names every problem found."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError([f"{_OPTION}: {source} is not a valid property protection file: {exc}"]) from exc
    sections = [s for s in parser.sections() if not s.startswith(_RESERVED_PREFIX)]
    rules = [PropertyRule(_RESERVED_SECTION, re.compile(_RESERVED_SECTION),
                          dict.fromkeys(OPERATIONS, (EVERYONE,)))]
    problems: list[str] = []
    for section in sections:
        try:
            pattern = re.compile(section)
        except re.error as exc:
            problems.append(f"{_OPTION}: malformed property protection rule [{section}]: {exc}")
            continue
        permissions: dict[str, tuple[str, ...]] = {}
        for operation in OPERATIONS:
            try:
                raw = parser.get(section, operation)
            except configparser.NoOptionError:
                problems.append(f"{_OPTION}: [{section}] has no {operation!r} (create, read, update and "
                                "delete must all be given)")
                continue
            except configparser.InterpolationError as exc:
                problems.append(f"{_OPTION}: [{section}] {operation}: {exc}")
                continue
            if not raw:
                log.warning("property protection [%s] gives no %s: no one may %s these properties",
                            section, operation, operation)
                permissions[operation] = ()
                continue
            if rule_format == "policies":
                if "," in raw:
                    problems.append(f"{_OPTION}: [{section}] {operation} = {raw}: one policy per operation "
                                    "(combine policies in the policy file)")
                    continue
                permissions[operation] = (raw,)
                continue
            granted = tuple(role.strip() for role in raw.split(","))
            if EVERYONE in granted and NO_ONE in granted:
                problems.append(f"{_OPTION}: [{section}] {operation} = {raw}: '@' and '!' are mutually exclusive")
                continue
            permissions[operation] = granted
        if len(permissions) == len(OPERATIONS):
            rules.append(PropertyRule(section, pattern, permissions))
    if problems:
        raise ConfigError(problems)
    return rules
