"""systemd: readiness over ``$NOTIFY_SOCKET`` (sd_notify, no dependency) and the SIGHUP re-read of
the configuration (``ExecReload=/bin/kill -HUP $MAINPID``).

What a re-read applies at once: ``[oslo_policy]`` (another policy file, default rule, scope,
defaults; the policy file's own edits are picked up without it, at the next check), the
property protection file (re-read; its rule format too), ``image_cache_max_size`` and
``image_cache_stall_time``. Any other change is logged as needing a restart and has no effect
until then. A configuration that no longer loads is logged and changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from typing import Any

from .config import Config, load_config
from .errors import ConfigError
from .policy import PolicyEnforcer, protections_from_config, settings_from_config
from .services import Services

log = logging.getLogger("streamd")

# Applied by reload(); every other option needs a restart.
LIVE_OPTIONS = frozenset({
    "DEFAULT.property_protection_file", "DEFAULT.property_protection_rule_format",
    "DEFAULT.image_cache_max_size", "DEFAULT.image_cache_stall_time",
    "oslo_policy.policy_file", "oslo_policy.policy_default_rule", "oslo_policy.policy_dirs",
    "oslo_policy.enforce_scope", "oslo_policy.enforce_new_defaults",
})
# Config fields that are bookkeeping, not options.
_NOT_OPTIONS = {"source", "sources", "ignored", "policy_file_explicit"}


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``...) to systemd when it gave a ``$NOTIFY_SOCKET``;
    False when there is none or it cannot be reached (never an error: readiness is advisory)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def reloading() -> bool:
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def changed_options(old: Config, new: Config) -> list[str]:
    """``section.option`` of every option whose value differs (stores as ``stores``)."""
    changed = []
    for f in dataclasses.fields(old):
        if f.name in _NOT_OPTIONS:
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after) and type(before) is type(after):
            section = "DEFAULT" if f.name == "default" else f.name
            changed += [f"{section}.{g.name}" for g in dataclasses.fields(before)
                        if getattr(before, g.name) != getattr(after, g.name)]
        elif before != after:
            changed.append(f.name)
    return changed


@dataclasses.dataclass
class ReloadReport:
    applied: list[str]
    need_restart: list[str]
    error: str | None = None


def reload(services: Services, current: Config) -> tuple[ReloadReport, Config]:
    """Re-read the configuration file ``current`` came from and apply what can change while running.
    Returns what happened and the configuration now in force (``current`` when nothing loads)."""
    if current.source is None:
        log.info("SIGHUP: no configuration file to re-read")
        return ReloadReport([], []), current
    try:
        new = load_config(current.source)
        settings = settings_from_config(new)
        policy_changed = settings != services.policy.settings
        # Both built before anything is swapped: a broken file changes nothing.
        policy = PolicyEnforcer(settings) if policy_changed else services.policy
        protections = protections_from_config(new, policy)
    except ConfigError as exc:
        log.error("SIGHUP: %s not applied, the configuration in force stays: %s", current.source, exc)
        return ReloadReport([], [], str(exc)), current
    if policy_changed:
        services.policy.adopt(policy)
    changed = changed_options(current, new)
    applied = [c for c in changed if c in LIVE_OPTIONS]
    need_restart = [c for c in changed if c not in LIVE_OPTIONS]
    if policy_changed and not any(c.startswith("oslo_policy.") for c in applied):
        applied.append("oslo_policy")  # the same names, other files (relative paths)
    existing = services.protections
    if (existing is None) != (protections is None):
        # The routes hold the object they were built with: switching protections on or off needs a restart.
        need_restart += [c for c in applied if c.startswith("DEFAULT.property_protection")]
        applied = [c for c in applied if not c.startswith("DEFAULT.property_protection")]
    elif existing is not None and protections is not None:
        existing.rules, existing.rule_format = protections.rules, protections.rule_format
        if "DEFAULT.property_protection_file" not in applied:
            applied.append("property protection rules re-read")
    cache = services.cache
    if cache is not None:
        cache.max_size = new.default.image_cache_max_size
        cache.stall_time = new.default.image_cache_stall_time
    else:
        need_restart += [c for c in applied if c.startswith("DEFAULT.image_cache_")]
        applied = [c for c in applied if not c.startswith("DEFAULT.image_cache_")]
    if new.warning:
        log.warning("%s", new.warning)
    log.info("SIGHUP: %s re-read; applied: %s", current.source, ", ".join(applied) or "nothing changed")
    if need_restart:
        log.warning("SIGHUP: changed, needs a restart to take effect: %s", ", ".join(need_restart))
    # What is in force: the new values of what was applied, the old ones of the rest.
    return ReloadReport(applied, need_restart), _merge(current, new, applied)


def _merge(current: Config, new: Config, applied: list[str]) -> Config:
    sections: dict[str, Any] = {}
    for name in applied:
        if "." not in name:
            continue
        section, option = name.split(".", 1)
        field = "default" if section == "DEFAULT" else section
        sections.setdefault(field, {})[option] = getattr(getattr(new, field), option)
    merged = current
    for field, values in sections.items():
        merged = dataclasses.replace(merged, **{field: dataclasses.replace(getattr(merged, field), **values)})
    return merged
