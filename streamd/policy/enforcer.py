"""The policy engine: Glance 33's rules, enforced by oslo.policy itself.

Choices, and why:

- **oslo.policy, not a re-implementation.** A check is pure CPU (a small tree of role,
  generic and rule checks over two dicts), microseconds per call, so it runs on the event
  loop like any other request code. Policy files are therefore written in exactly the
  language operators already use for Glance, YAML or JSON (JSON is YAML).
- **A private oslo.config.** oslo.policy reads its options from an oslo.config
  ``ConfigOpts``; one is built here from streamd's own ``[oslo_policy]`` values and never
  leaves this module. The rest of streamd keeps its own configuration.
- **Loading at start-up, re-reading when the files change.** The enforcer loads the policy
  file (and ``policy_dirs``) when the service starts, so a broken file is a start-up error
  naming the file. After that oslo.policy's own mechanism applies: before each check it
  compares the file's modification time (one ``stat``) and re-reads the file when it changed,
  so an edited policy.yaml takes effect on the next request without a restart. Rules removed
  from the file fall back to their defaults (``overwrite=True``; Glance passes False, which
  keeps a removed rule's last value until restart). A file that fails to parse on re-read is
  logged and the rules in force stay as they were.
- **No remote checks.** ``http:``/``https:`` checks would make a blocking HTTP call from the
  event loop: a policy file using them is refused at start-up, and such a rule read later
  fails closed (logged).
- **Scope.** Glance 33 requires oslo.policy 6, which always enforces the rules' scope types
  (its ``enforce_scope`` option is gone): every image rule is project-scoped, so a
  system-scoped token is refused. streamd keeps the older option for operators who ask
  for the old behaviour: ``enforce_scope = false`` registers the rules without scope types.
- **New defaults.** ``enforce_new_defaults`` defaults to True, as oslo.policy 6 and Glance 33
  have it; with False the deprecated check strings are OR-ed in by oslo.policy and the API
  adds Glance's legacy ownership checks (``legacy_ownership``).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from oslo_config import cfg
from oslo_policy import _checks
from oslo_policy import opts as policy_opts
from oslo_policy import policy as oslo_policy

from ..context import RequestContext
from ..errors import ConfigError, NotPermitted
from .descriptions import describe
from .glance_rules import RULES

log = logging.getLogger(__name__)

_MISSING = object()  # a key the target does not have (a check reading it fails), unlike None
_TARGET_KEY = re.compile(r"%\(([^)]*)\)")


def _collect_target_keys(rules: Mapping[str, Any], check: Any, found: set[str], seen: set[str]) -> bool:
    """Add to ``found`` the target keys ``check`` reads; False if it may read others too."""
    if check is None:
        return False  # not defined here: oslo.policy's default rule decides
    if isinstance(check, (_checks.AndCheck, _checks.OrCheck)):
        return all(_collect_target_keys(rules, c, found, seen) for c in check.rules)
    if isinstance(check, _checks.NotCheck):
        return _collect_target_keys(rules, check.rule, found, seen)
    if isinstance(check, (_checks.TrueCheck, _checks.FalseCheck)):
        return True
    if type(check) is _checks.RuleCheck:
        if check.match in seen:
            return True
        seen.add(check.match)
        return _collect_target_keys(rules, rules.get(check.match), found, seen)
    if type(check) in (_checks.RoleCheck, _checks.GenericCheck):
        names = _TARGET_KEY.findall(check.match)
        if any("." in n for n in names):
            return False
        found.update(names)
        return True
    return False

_DEPRECATION_REASON = ("Glance replaced its legacy defaults (the open 'default' rule) with role- and "
                       "project-aware defaults (secure RBAC).")


@dataclass(frozen=True)
class PolicySettings:
    """streamd's ``[oslo_policy]`` values, with relative paths already resolved."""

    policy_file: Path
    # True when the configuration names the file itself: then it must exist.
    policy_file_required: bool = False
    policy_default_rule: str = "default"
    policy_dirs: tuple[Path, ...] = ()
    enforce_scope: bool = True
    enforce_new_defaults: bool = True


def rule_defaults(*, with_scope: bool = True) -> list[oslo_policy.RuleDefault]:
    """Every Glance 33 rule as an oslo.policy default (documented when it guards operations)."""
    defaults: list[oslo_policy.RuleDefault] = []
    for name, check_str, scope_types, operations, deprecated in RULES:
        old = None
        if deprecated is not None:
            old_name, old_check, since = deprecated
            old = oslo_policy.DeprecatedRule(old_name, old_check, deprecated_reason=_DEPRECATION_REASON,
                                             deprecated_since=since)
        scope = list(scope_types) if (scope_types and with_scope) else None
        if operations:
            defaults.append(oslo_policy.DocumentedRuleDefault(
                name, check_str, describe(name), [{"method": m, "path": p} for m, p in operations],
                deprecated_rule=old, scope_types=scope))
        else:
            defaults.append(oslo_policy.RuleDefault(name, check_str, description=describe(name),
                                                    deprecated_rule=old, scope_types=scope))
    return defaults


RULE_NAMES = frozenset(r[0] for r in RULES)


# Remembered decisions (PolicyEnforcer._decide) before the memory starts over: callers times rules
# times distinct values of the target keys the rules read.
_DECISIONS_KEPT = 4096


def _caller_key(ctx: RequestContext) -> tuple[Any, ...] | None:
    """The caller's credentials as a dictionary key, or None if one of them cannot be a key."""
    key = tuple((name, tuple(value) if isinstance(value, list) else value)
                for name, value in credentials(ctx).items())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def credentials(ctx: RequestContext) -> dict[str, Any]:
    """The caller as oslo.policy sees it: the keys of oslo.context's ``to_policy_values``."""
    return {
        "user_id": ctx.user_id,
        "user_domain_id": ctx.user_domain_id,
        "system_scope": ctx.system_scope,
        "domain_id": ctx.domain_id,
        "project_id": ctx.project_id,
        "project_domain_id": ctx.project_domain_id,
        "roles": sorted(ctx.roles),
        # Keystone's is_admin_project: streamd has no admin project, so every token is in it
        # (oslo.context's default).
        "is_admin_project": True,
        "service_user_id": ctx.service_user_id,
        "service_user_domain_id": getattr(ctx, "service_user_domain_id", None),
        "service_project_id": getattr(ctx, "service_project_id", None),
        "service_project_domain_id": getattr(ctx, "service_project_domain_id", None),
        "service_roles": sorted(ctx.service_roles),
    }


def _remote_checks(check: _checks.BaseCheck) -> list[str]:
    """The http:/https: checks in a rule's check tree (their kind is the check's ``kind``)."""
    kind = getattr(check, "kind", None)
    found = [f"{kind}:{check.match}"] if kind in ("http", "https") else []  # type: ignore[attr-defined]
    for child in getattr(check, "rules", ()):
        found += _remote_checks(child)
    inner = getattr(check, "rule", None)
    if isinstance(inner, _checks.BaseCheck):
        found += _remote_checks(inner)
    return found


# oslo.policy evaluates every check (each "and"/"or"/"rule:" node too) through ``_checks._check``,
# which calls ``inspect.getfullargspec`` on the check's ``__call__`` to learn whether it takes the
# rule name: ~25 us a node, most of a rule's cost. The answer is the class's, so it is asked once
# per class here; the evaluation is oslo.policy's own.
_TAKES_RULE_NAME: dict[type, bool] = {}


def _check_once_inspected(rule: Any, target: Any, creds: Any, enforcer: Any, current_rule: Any) -> Any:
    kind = type(rule)
    takes = _TAKES_RULE_NAME.get(kind)
    if takes is None:
        takes = _TAKES_RULE_NAME[kind] = len(inspect.getfullargspec(rule.__call__).args) > 4
    if takes:
        return rule(target, creds, enforcer, current_rule)
    return rule(target, creds, enforcer)


# Only over the function it was written against (oslo.policy 6.x's five-argument ``_check``):
# another version keeps its own.
if list(inspect.signature(_checks._check).parameters) == ["rule", "target", "creds", "enforcer", "current_rule"]:
    _checks._check = _check_once_inspected


class _OsloEnforcer(oslo_policy.Enforcer):
    """oslo.policy's enforcer, except that ``enforce`` does not look at the policy files again when
    ``PolicyEnforcer._reload`` has just done it (oslo.policy's ``enforce`` starts with a
    ``load_rules`` of its own: two stats of every file and a search of the config directories)."""

    rules_fresh = False
    # What the policy files were (stat of each, and of each file in each directory) when the rules
    # were last loaded: while it stays the same there is nothing to re-read. oslo.policy's own
    # look (a search of the config directories for the file, then for each directory) cost
    # ~100 us a request, a tenth of a show's; these stats cost a few.
    _files_loaded: tuple[Any, ...] | None = None

    def load_rules(self, force_reload: bool = False) -> None:
        if self.rules_fresh and not force_reload:
            return
        files = self._files_signature()
        if not force_reload and files is not None and files == self._files_loaded and self.rules:
            return
        self._files_loaded = None  # a load that fails must not leave the files as "loaded"
        super().load_rules(force_reload)
        self._files_loaded = files  # taken before the read: a file changed during it is read again

    def _files_signature(self) -> tuple[Any, ...] | None:
        """The policy file's and directories' stat results, or None when oslo.policy would search
        the config directories for a relative path (then only its own look can tell)."""
        paths = [self.policy_file, *self.conf.oslo_policy.policy_dirs]
        if not all(os.path.isabs(p) for p in paths):
            return None
        signature: list[Any] = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                signature.append(None)
                continue
            signature.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                try:
                    with os.scandir(path) as entries:
                        listing = sorted((e.name, e.inode(), e.stat().st_mtime_ns, e.stat().st_size)
                                         for e in entries)  # (scandir caches the stat: one call each)
                except OSError:
                    return None
                signature.append(tuple(listing))
        return tuple(signature)


class _RequestReads:
    """The oslo.policy enforcers whose files have been looked at during one API request."""

    def __init__(self) -> None:
        self.open = True
        self.seen: list[object] = []


_REQUEST_READS: contextvars.ContextVar[_RequestReads | None] = contextvars.ContextVar(
    "streamd_policy_request_reads", default=None)


@contextlib.contextmanager
def rules_read_once_per_request() -> Iterator[None]:
    """Within this block (one API request), the policy files are looked at (and re-read if they
    changed) by the first rule checked, not again by every later one: a request is decided by the
    rules in force when it began, as a policy file edited mid-request would leave it anyway.
    Outside such a block (and in tasks that outlive it) every check looks, as oslo.policy does."""
    reads = _RequestReads()
    token = _REQUEST_READS.set(reads)
    try:
        yield
    finally:
        reads.open = False
        _REQUEST_READS.reset(token)


class PolicyEnforcer:
    """Decides whether a caller may apply a Glance rule to a target.

    ``enforce`` raises ``NotPermitted`` with Glance's message ("You are not authorized to
    complete X action."); ``allows`` answers True or False. Targets are plain mappings
    (``streamd.policy.targets`` builds them as Glance does).
    """

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        if settings.policy_file_required and not settings.policy_file.is_file():
            raise ConfigError([f"[oslo_policy] policy_file: {settings.policy_file} does not exist"])
        conf = cfg.ConfigOpts()
        # Parse no command line and no files: every value comes from streamd's configuration.
        conf(args=[], project="streamd", default_config_files=[], default_config_dirs=[], use_env=False)
        policy_opts.set_defaults(conf)
        conf.set_override("policy_file", str(settings.policy_file), group="oslo_policy")
        conf.set_override("policy_dirs", [str(d) for d in settings.policy_dirs], group="oslo_policy")
        conf.set_override("policy_default_rule", settings.policy_default_rule, group="oslo_policy")
        conf.set_override("enforce_new_defaults", settings.enforce_new_defaults, group="oslo_policy")
        self._conf = conf
        self._enforcer = _OsloEnforcer(conf, use_conf=True, overwrite=True)
        # Glance silences these too: every rule changed its default, a warning per rule helps nobody.
        self._enforcer.suppress_default_change_warnings = True
        self._enforcer.suppress_deprecation_warnings = True
        self._enforcer.register_defaults(rule_defaults(with_scope=settings.enforce_scope))
        self._checked_rules: object = None
        self._keys_cache: tuple[object, dict[str, tuple[str, ...] | None]] = (None, {})
        self._decisions: tuple[object, dict[tuple[Any, ...], bool]] = (None, {})
        try:
            self._enforcer.load_rules()
        except ValueError as exc:  # oslo.policy's answer to a file that is not YAML/JSON
            raise ConfigError([f"[oslo_policy] policy file: {exc}"]) from exc
        remote = self._find_remote_checks()
        if remote:
            raise ConfigError([f"[oslo_policy] rule {name!r} uses {what}: remote checks would block the event "
                               "loop and are not supported" for name, what in remote])

    def adopt(self, fresh: PolicyEnforcer) -> None:
        """Enforce what ``fresh`` (built, and so checked, from other settings) enforces, from now on:
        the daemon's SIGHUP (another policy file, default rule, scope or defaults) without replacing
        the object everything holds."""
        self.settings = fresh.settings
        self._conf = fresh._conf
        self._enforcer = fresh._enforcer
        self._checked_rules = fresh._checked_rules
        self._keys_cache = (None, {})
        self._decisions = (None, {})

    @property
    def legacy_ownership(self) -> bool:
        """Glance's legacy owner checks apply on top of the rules (``enforce_new_defaults = false``)."""
        return not self.settings.enforce_new_defaults

    def _find_remote_checks(self) -> list[tuple[str, str]]:
        rules = self._enforcer.rules
        self._checked_rules = rules
        return [(name, what) for name, check in rules.items() for what in _remote_checks(check)]

    def _reload(self) -> None:
        """oslo.policy's re-read of changed files, done here so that a bad edit cannot fail a request
        (once per request inside ``rules_read_once_per_request``)."""
        reads = _REQUEST_READS.get()
        if reads is not None and reads.open:
            if any(e is self._enforcer for e in reads.seen):
                return
            reads.seen.append(self._enforcer)
        try:
            self._enforcer.load_rules()
        except ValueError as exc:
            log.error("policy file not reloaded, the rules in force stay: %s", exc)
            return
        if self._enforcer.rules is not self._checked_rules:
            for name, what in self._find_remote_checks():
                log.error("policy rule %r uses %s (remote checks are not supported): it refuses everyone",
                          name, what)
                self._enforcer.rules[name] = _checks.FalseCheck()

    def _oslo_enforce(self, rule: Any, target: Mapping[str, Any], creds: Mapping[str, Any], *,
                      do_raise: bool) -> Any:
        """oslo.policy's ``enforce``, right after ``_reload`` (which looked at the files already)."""
        enforcer = self._enforcer
        enforcer.rules_fresh = True
        try:
            return enforcer.enforce(rule, target, creds, do_raise=do_raise)
        finally:
            enforcer.rules_fresh = False

    def allows(self, ctx: RequestContext, rule: str, target: Mapping[str, Any]) -> bool:
        if rule not in RULE_NAMES:
            raise LookupError(f"policy rule {rule!r} is not one of Glance's")  # a bug of the caller
        self._reload()
        return self._decide(ctx, _caller_key(ctx), rule, target, self._target_keys(rule))

    def allows_each(self, ctx: RequestContext, rule: str, targets: Sequence[Mapping[str, Any]]) -> list[bool]:
        """``allows`` for each of many targets of one rule (a page of images): the rules are re-read
        once, and the rule is evaluated once per distinct value of the target keys it reads (a page
        of public images of other projects is one evaluation, not one per image). A rule that could
        read anything else (a check of another kind, a dotted key, a rule it does not define) is
        evaluated for every target."""
        if rule not in RULE_NAMES:
            raise LookupError(f"policy rule {rule!r} is not one of Glance's")  # a bug of the caller
        self._reload()
        keys = self._target_keys(rule)
        caller = _caller_key(ctx)
        return [self._decide(ctx, caller, rule, target, keys) for target in targets]

    def _decide(self, ctx: RequestContext, caller: tuple[Any, ...] | None, rule: str,
                target: Mapping[str, Any], keys: tuple[str, ...] | None) -> bool:
        """oslo.policy's answer, remembered for the rules in force: the same caller (as its
        credentials say) asking the same rule of a target with the same values of the keys the
        rule reads gets the same answer (oslo.policy's checks read nothing else)."""
        rules = self._enforcer.rules
        if self._decisions[0] is not rules or len(self._decisions[1]) >= _DECISIONS_KEPT:
            self._decisions = (rules, {})
        decisions = self._decisions[1]
        memo_key: tuple[Any, ...] | None = None
        if caller is not None and keys is not None:
            memo_key = (rule, caller, tuple(target.get(k, _MISSING) for k in keys))
            try:
                answer = decisions.get(memo_key)
            except TypeError:  # a target value that cannot be a key (a list)
                memo_key = answer = None
            if answer is not None:
                return answer
        # Each call gets fresh credentials: oslo.policy adds keys to the dict it is given.
        answer = bool(self._oslo_enforce(rule, target, credentials(ctx), do_raise=False))
        if memo_key is not None:
            decisions[memo_key] = answer
        return answer

    def _target_keys(self, rule: str) -> tuple[str, ...] | None:
        """The target keys the rule in force reads (``%(key)s`` in its checks, through the rules it
        names), or None when that cannot be told."""
        rules = self._enforcer.rules
        if self._keys_cache[0] is not rules:
            self._keys_cache = (rules, {})
        cache = self._keys_cache[1]
        if rule not in cache:
            found: set[str] = set()
            cache[rule] = tuple(sorted(found)) if _collect_target_keys(rules, rules.get(rule), found, set()) else None
        return cache[rule]

    def allows_named_rule(self, ctx: RequestContext, name: str, target: Mapping[str, Any]) -> bool:
        """``rule:NAME`` for any rule name, Glance's or the policy file's own (a property protection
        file in the policies format names these). An unknown name gets oslo.policy's answer: the
        ``policy_default_rule``."""
        self._reload()
        return bool(self._oslo_enforce(_checks.RuleCheck("rule", name), dict(target), credentials(ctx),
                                           do_raise=False))

    def enforce(self, ctx: RequestContext, rule: str, target: Mapping[str, Any]) -> None:
        if not self.allows(ctx, rule, target):
            raise NotPermitted(f"You are not authorized to complete {rule} action.")

    def is_admin(self, ctx: RequestContext) -> bool:
        """Glance's ``context.is_admin``: the ``context_is_admin`` rule, checked once per request."""
        return self.allows(ctx, "context_is_admin", {})

    def rule_in_force(self, name: str) -> str:
        """The check string a rule has now (file, else default), for tests and diagnostics."""
        self._reload()
        return str(self._enforcer.rules[name])
