"""Who may do what: Glance 33's policy rules (secure RBAC defaults), policy files, oslo.policy.

``PolicyEnforcer`` (``enforcer.py``) holds the rules and answers ``enforce``/``allows``;
``targets.py`` builds what a rule is checked against, as Glance does; ``images.py`` holds
Glance's per-image answers (404 for an image the caller may not see, 403 otherwise);
``sample.py`` renders the commented defaults (``streamd policy-sample``). The rule table
itself is generated from Glance (``glance_rules.py``).

This package sits above the catalogue (it reads its records) and below the composition
root; the catalogue never imports it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from .enforcer import RULE_NAMES, PolicyEnforcer, PolicySettings, credentials, rule_defaults, rules_read_once_per_request
from .images import NOT_FOUND, ImagePolicy, enforce_add_image, enforce_visibility
from .protections import PropertyProtections
from .targets import image_target, list_target, new_image_target

__all__ = ["RULE_NAMES", "NOT_FOUND", "ImagePolicy", "PolicyEnforcer", "PolicySettings", "PropertyProtections", "credentials",
           "enforce_add_image", "enforce_visibility", "image_target", "list_target", "new_image_target",
           "protections_from_config", "rule_defaults", "rules_read_once_per_request", "settings_from_config"]


def _config_dir(config: Config) -> Path:
    return Path(config.source).absolute().parent if config.source else Path.cwd()


def protections_from_config(config: Config, enforcer: PolicyEnforcer) -> PropertyProtections | None:
    """``[DEFAULT] property_protection_file`` loaded (relative to the configuration file's
    directory), or None when it is unset; a missing or malformed file is a ConfigError."""
    name = config.default.property_protection_file
    if not name:
        return None
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = _config_dir(config) / path
    return PropertyProtections.from_file(path, config.default.property_protection_rule_format, enforcer)


def settings_from_config(config: Config) -> PolicySettings:
    """``[oslo_policy]`` with relative paths taken from the configuration file's directory (the
    directory streamd runs in when there is no file), as oslo.config looks them up."""
    options = config.oslo_policy
    base = _config_dir(config)

    def resolve(name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else base / path

    return PolicySettings(
        policy_file=resolve(options.policy_file),
        policy_file_required=config.policy_file_explicit,
        policy_default_rule=options.policy_default_rule,
        policy_dirs=tuple(resolve(d) for d in options.policy_dirs),
        enforce_scope=options.enforce_scope,
        enforce_new_defaults=options.enforce_new_defaults,
    )
