"""A real Keystone for the tests: the users, projects and roles streamd's tests authenticate as.

``scripts/test.sh`` starts a throwaway Keystone (``scripts/keystone-dev.sh``) and exports
``STREAMD_TEST_KEYSTONE_URL`` and ``STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD``; without them a test
that needs Keystone fails, it never skips. :func:`keystone` bootstraps that Keystone once per
test session, idempotently (running the suite twice against one Keystone creates nothing new):

- projects ``streamd-a`` and ``streamd-b`` in domain ``default``, each with the users
  ``streamd-a-admin``, ``streamd-a-member``, ``streamd-a-reader`` (and ``-b-``) holding the role
  of their name on their project (Keystone 30's implied roles add member and reader to admin,
  reader to member);
- a ``service`` project with the user ``glance`` holding ``service`` and ``admin``, as Glance's
  deployment guide makes it (the ``service`` role is created when missing);
- the bootstrap ``admin`` user, which also holds ``admin`` on the system (``system_token``).

Usage::

    from keystone import keystone
    ks = keystone()
    token = ks.token("a-member")
    options = ks.authtoken_options()       # [keystone_authtoken] for streamd, as the glance user
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DOMAIN = "default"
PROJECTS = ("a", "b")
ROLES = ("admin", "member", "reader")
SERVICE_PROJECT = "service"
SERVICE_USER = "glance"
SERVICE_ROLES = ("service", "admin")
# scripts/tempest_run.py's password for the same user: both may share one Keystone without
# changing it under each other.
SERVICE_PASSWORD = "streamd-glance-secret"


def keystone_url() -> str:
    url = os.environ.get("STREAMD_TEST_KEYSTONE_URL")
    if not url or not os.environ.get("STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"):
        pytest.fail("STREAMD_TEST_KEYSTONE_URL / STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD are not set: run the "
                    "suite with scripts/test.sh, which starts a throwaway Keystone (scripts/keystone-dev.sh)")
    return url.rstrip("/")


@dataclass(frozen=True)
class User:
    name: str
    id: str
    password: str
    project_name: str
    project_id: str


@dataclass
class Keystone:
    """One Keystone (its v3 URL) and the test identities bootstrapped in it."""

    url: str
    admin_password: str
    projects: dict[str, str] = field(default_factory=dict)  # name -> id
    users: dict[str, User] = field(default_factory=dict)  # "a-member", ..., "glance", "admin"
    _admin_token: str | None = None

    # -- HTTP ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        """(status, JSON body or None, headers) of one request to Keystone."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        if token:
            all_headers["X-Auth-Token"] = token
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None, response.headers
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            exc.close()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            return exc.code, parsed, exc.headers

    def _ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, answer, _ = self.request(method, path, body, token or self.admin_token())
        if status == 401 and token is None:
            # The admin token expired (a Keystone with short-lived tokens): log in again, once.
            self._admin_token = None
            status, answer, _ = self.request(method, path, body, self.admin_token())
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    # -- tokens -----------------------------------------------------------------------------

    def login(self, name: str, password: str, scope: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {
            "user": {"name": name, "domain": {"id": DOMAIN}, "password": password}}}}
        if scope is not None:
            auth["scope"] = scope
        status, body, headers = self.request("POST", "/auth/tokens?nocatalog", {"auth": auth})
        assert status == 201, (name, status, body)
        return headers["X-Subject-Token"], body["token"]

    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.login("admin", self.admin_password,
                                           {"project": {"name": "admin", "domain": {"id": DOMAIN}}})[0]
        return self._admin_token

    def token(self, user: str) -> str:
        """A new project-scoped token of ``user`` ("a-member", "glance", ...)."""
        return self.token_document(user)[0]

    def token_document(self, user: str) -> tuple[str, dict[str, Any]]:
        who = self.users[user]
        return self.login(who.name, who.password, {"project": {"id": who.project_id}})

    def system_token(self) -> str:
        """A system-scoped token of the bootstrap admin (``system_scope`` all)."""
        return self.login("admin", self.admin_password, {"system": {"all": True}})[0]

    def revoke(self, token: str) -> None:
        status, body, _ = self.request("DELETE", "/auth/tokens", token=self.fresh_admin_token(),
                                       headers={"X-Subject-Token": token})
        assert status == 204, (status, body)

    def is_valid(self, token: str) -> bool:
        status, _, _ = self.request("GET", "/auth/tokens?nocatalog", token=self.fresh_admin_token(),
                                    headers={"X-Subject-Token": token})
        return status == 200

    def fresh_admin_token(self) -> str:
        self._admin_token = None
        return self.admin_token()

    # -- what streamd is configured with ------------------------------------------------------

    def authtoken_options(self, **overrides: str) -> dict[str, str]:
        """``[keystone_authtoken]`` for streamd: Keystone at ``url``, the glance service user."""
        glance = self.users[SERVICE_USER]
        options = {"www_authenticate_uri": self.url, "auth_url": self.url, "auth_type": "password",
                   "username": glance.name, "password": glance.password, "user_domain_name": "Default",
                   "project_name": SERVICE_PROJECT, "project_domain_id": DOMAIN, "region_name": "RegionOne"}
        options.update(overrides)
        return options

    # -- bootstrap ------------------------------------------------------------------------------
    # Four listings, then only what is missing is created: Keystone under uWSGI on a busy machine
    # takes a fair part of a second per request.

    def _ids_by_name(self, collection: str, query: str = "") -> dict[str, str]:
        return {item["name"]: item["id"] for item in self._ok("GET", f"/{collection}{query}")[collection]}

    def _create(self, collection: str, body: dict[str, Any]) -> str:
        singular = collection[:-1]
        return str(self._ok("POST", f"/{collection}", {singular: body})[singular]["id"])

    def _password_refused(self, name: str, password: str) -> bool:
        auth = {"identity": {"methods": ["password"], "password": {
            "user": {"name": name, "domain": {"id": DOMAIN}, "password": password}}}}
        return self.request("POST", "/auth/tokens?nocatalog", {"auth": auth})[0] == 401

    def bootstrap(self) -> "Keystone":
        role_ids = self._ids_by_name("roles")
        for role in (*ROLES, "service"):
            if role not in role_ids:
                role_ids[role] = self._create("roles", {"name": role})
        project_ids = self._ids_by_name("projects", f"?domain_id={DOMAIN}")
        for project in (*[f"streamd-{p}" for p in PROJECTS], SERVICE_PROJECT):
            if project not in project_ids:
                project_ids[project] = self._create("projects", {"name": project, "domain_id": DOMAIN,
                                                                 "description": "streamd tests"})
        self.projects.update(project_ids)
        user_ids = self._ids_by_name("users", f"?domain_id={DOMAIN}")
        assignments = {(a["user"]["id"], a["scope"]["project"]["id"], a["role"]["id"])
                       for a in self._ok("GET", "/role_assignments")["role_assignments"]
                       if "user" in a and "project" in a.get("scope", {})}
        wanted = [(f"{p}-{role}", f"streamd-{p}-{role}", f"streamd-{p}", (role,)) for p in PROJECTS for role in ROLES]
        wanted.append((SERVICE_USER, SERVICE_USER, SERVICE_PROJECT, SERVICE_ROLES))
        for key, name, project, roles in wanted:
            password = SERVICE_PASSWORD if name == SERVICE_USER else f"{name}-secret"
            project_id = project_ids[project]
            if name not in user_ids:
                user_ids[name] = self._create("users", {"name": name, "domain_id": DOMAIN, "password": password,
                                                        "default_project_id": project_id})
            elif self._password_refused(name, password):
                # Made earlier with another password (another script's glance user): ours from now on.
                self._ok("PATCH", f"/users/{user_ids[name]}", {"user": {"password": password, "enabled": True}})
            for role in roles:
                if (user_ids[name], project_id, role_ids[role]) not in assignments:
                    self._ok("PUT", f"/projects/{project_id}/users/{user_ids[name]}/roles/{role_ids[role]}")
            self.users[key] = User(name, user_ids[name], password, project, project_id)
        self.users["admin"] = User("admin", user_ids["admin"], self.admin_password, "admin", project_ids["admin"])
        return self


def bootstrap_keystone(url: str, admin_password: str) -> Keystone:
    """The test identities in the Keystone at ``url`` (made when missing)."""
    return Keystone(url.rstrip("/"), admin_password).bootstrap()


@functools.cache
def _session_keystone(url: str, admin_password: str) -> Keystone:
    # pytest-xdist's workers are processes of their own, each bootstrapping on first use: one at a time
    # (a lock file per Keystone), or two would both create a missing user and one get a 409.
    lock_path = Path(tempfile.gettempdir()) / f"streamd-keystone-{hashlib.sha1(url.encode()).hexdigest()[:16]}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return bootstrap_keystone(url, admin_password)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class KeystoneProcess:
    """A Keystone of its own (``scripts/keystone-dev.sh start DIR``), for tests that need other
    settings than the suite's (short-lived tokens) or that stop it."""

    directory: Path
    url: str
    admin_password: str

    def stop(self) -> None:
        subprocess.run([str(KEYSTONE_DEV), "stop", str(self.directory)], check=True, capture_output=True,
                       timeout=60)


KEYSTONE_DEV = Path(__file__).resolve().parent.parent / "scripts" / "keystone-dev.sh"


def start_keystone(directory: Path, *, token_expiration: int | None = None) -> KeystoneProcess:
    """A new Keystone in ``directory`` (which must not exist or be empty); about a minute on 2 busy cores."""
    env = dict(os.environ)
    if token_expiration is not None:
        env["STREAMD_KEYSTONE_TOKEN_EXPIRATION"] = str(token_expiration)
    result = subprocess.run([str(KEYSTONE_DEV), "start", str(directory)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    exports = dict(re.findall(r"^export (\w+)=(.*)$", result.stdout, re.M))
    return KeystoneProcess(directory, exports["STREAMD_TEST_KEYSTONE_URL"],
                           exports["STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"])


def keystone() -> Keystone:
    """The suite's Keystone (``STREAMD_TEST_KEYSTONE_URL``), bootstrapped once per session."""
    url = keystone_url()
    return _session_keystone(url, os.environ["STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"])
