"""``streamd policy-sample``: the default rules as a commented YAML file.

The shape of ``oslopolicy-sample-generator --namespace glance``: for each rule its
description, the operations it guards, its scope and the rule it deprecates, then the rule
itself commented out, so that the file changes nothing until a line is uncommented.
"""

from __future__ import annotations

import textwrap

from oslo_policy import policy as oslo_policy

from .enforcer import rule_defaults


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_sample() -> str:
    lines: list[str] = []
    for rule in rule_defaults():
        lines.extend(textwrap.wrap(rule.description, 76, initial_indent="# ", subsequent_indent="# "))
        if isinstance(rule, oslo_policy.DocumentedRuleDefault):
            for operation in rule.operations:
                lines.append(f"# {operation['method']}  {operation['path']}")
        if rule.scope_types:
            lines.append(f"# Intended scope(s): {', '.join(rule.scope_types)}")
        lines.append(f"#{_quote(rule.name)}: {_quote(rule.check_str)}")
        deprecated = rule.deprecated_rule
        if deprecated is not None:
            lines.append("")
            lines.append(f"# DEPRECATED")
            lines.append(f"# {_quote(deprecated.name)}:{_quote(deprecated.check_str)} has been deprecated since "
                         f"{deprecated.deprecated_since} in favor of {_quote(rule.name)}:{_quote(rule.check_str)}.")
            lines.extend(textwrap.wrap(deprecated.deprecated_reason, 76, initial_indent="# ",
                                       subsequent_indent="# "))
        lines.append("")
    return "\n".join(lines)
