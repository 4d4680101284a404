"""auth_strategy = keystone against a real Keystone (tests/keystone.py), on the real app and daemon.

Every token here is issued by Keystone and every validation goes to it: no mocks. What is
checked: the 401 of keystonemiddleware (body, WWW-Authenticate), identity taken from the token
alone (client identity headers ignored), project/user/roles/domains/system scope in the context,
the versions document left unauthenticated, the token cache (hits, bound, revocation within
token_cache_time), Keystone down or refusing the service user -> 503, never a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from aiohttp.test_utils import TestServer

from conftest import PYTHON, ApiClient, Daemon, Reply, free_port, make_config, start_daemon, stop_daemon
from keystone import Keystone, User, bootstrap_keystone, keystone, start_keystone
from streamd import metrics
from streamd.api import create_app
from streamd.config import Config
from streamd.identity import KeystoneValidator
from streamd.identity.tokens import parse_time
from streamd.services import Services, open_services

GLANCE = Path(sys.executable).with_name("glance")  # python-glanceclient of the test venv
KEYSTONE_401 = {"error": {"code": 401, "title": "Unauthorized",
                          "message": "The request you have made requires authentication."}}


@pytest.fixture(scope="module")
def ks() -> Keystone:
    return keystone()


def keystone_config(tmp_path: Path, ks: Keystone, **authtoken: str) -> Config:
    return make_config(tmp_path, DEFAULT={"auth_strategy": "keystone"},
                       keystone_authtoken=ks.authtoken_options(**authtoken))


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[ApiClient, Services]]:
    """The real app on a loopback port in keystone mode, and its services (for the validator's counters)."""
    async with open_services(config) as services:
        server = TestServer(create_app(services), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                yield ApiClient(f"http://127.0.0.1:{server.port}", session, config), services
        finally:
            await server.close()


def as_token(token: str, **extra: str) -> dict[str, str]:
    return {"X-Auth-Token": token, **extra}


def assert_keystone_401(reply: Reply, ks_url: str) -> None:
    assert reply.status == 401, reply.body
    assert reply.headers["WWW-Authenticate"] == f'Keystone uri="{ks_url}"'
    assert reply.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert json.loads(reply.body) == KEYSTONE_401


async def create_image(api: ApiClient, headers: dict[str, str], **body: Any) -> Reply:
    return await api.call("POST", "/v2/images", as_=headers,
                          json_body={"disk_format": "raw", "container_format": "bare", **body})


# -- 401: no token, a bad token ---------------------------------------------------------------------

async def test_no_token_is_401_with_keystonemiddlewares_answer(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks)) as (api, _):
        for method, path in [("GET", "/v2/images"), ("POST", "/v2/images"), ("GET", "/v2/schemas/image"),
                             ("GET", "/v2/info/stores"), ("GET", "/v2/no-such-route")]:
            reply = await api.call(method, path, headers={"Accept": "*/*"})
            assert_keystone_401(reply, ks.url)
        # Identity headers alone are no identity in keystone mode, whatever they claim.
        reply = await api.call("GET", "/v2/images", as_={"X-Project-Id": "a" * 32, "X-Roles": "admin",
                                                         "X-Identity-Status": "Confirmed", "X-User-Id": "u"})
        assert_keystone_401(reply, ks.url)


async def test_a_bad_token_is_401(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks)) as (api, services):
        assert services.identity is not None
        for token in ("not-a-token", "gAAAAABnotafernettokenatall", ks.token("a-member")[:-4] + "AAAA"):
            assert_keystone_401(await api.call("GET", "/v2/images", as_=as_token(token)), ks.url)
        assert services.identity.validations == 3  # each one asked Keystone, none was let through


async def test_www_authenticate_names_www_authenticate_uri(tmp_path: Path, ks: Keystone) -> None:
    public = "https://keystone.example.test:5000/v3"
    async with serving(keystone_config(tmp_path, ks, www_authenticate_uri=public)) as (api, _):
        assert_keystone_401(await api.call("GET", "/v2/images"), public)


async def test_the_versions_document_needs_no_token(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks)) as (api, _):
        assert (await api.call("GET", "/")).status == 300
        assert (await api.call("GET", "/versions")).status == 200
        assert (await api.call("GET", "/healthcheck")).status == 200
        # An unknown version is answered by the versions document, before authentication (Glance's order).
        assert (await api.call("GET", "/v9/images")).status == 300


async def test_the_detailed_healthcheck_is_for_admin_tokens(tmp_path: Path, ks: Keystone) -> None:
    config = make_config(tmp_path, DEFAULT={"auth_strategy": "keystone"}, keystone_authtoken=ks.authtoken_options(),
                         healthcheck={"detailed": "true"})
    async with serving(config) as (api, _):
        for who in ({}, as_token(ks.token("a-member")), as_token("not-a-token"),
                    as_token(ks.token("a-member"), **{"X-Roles": "admin"})):
            reply = await api.call("GET", "/healthcheck", as_=who)
            assert (reply.status, reply.json["detailed"]) == (200, False)
        reply = await api.call("GET", "/healthcheck", as_=as_token(ks.token("a-admin")))
        assert (reply.status, reply.json["detailed"]) == (200, True)
        assert reply.json["reasons"][1] == {"class": "HealthcheckResult", "details": "catalogue answers", "reason": "OK"}


async def test_token_validations_are_measured(tmp_path: Path, ks: Keystone) -> None:
    config = make_config(tmp_path, DEFAULT={"auth_strategy": "keystone"}, keystone_authtoken=ks.authtoken_options(),
                         metrics={"enabled": "true"})
    async with serving(config) as (api, _):
        token = as_token(ks.token("a-member"))
        for _ in range(3):
            assert (await api.call("GET", "/v2/images", as_=token)).status == 200
        text = metrics.render()[0].decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("streamd_keystone_token_cache_total", (("result", "miss"),))] == 1
    assert samples[("streamd_keystone_token_cache_total", (("result", "hit"),))] == 2
    assert samples[("streamd_keystone_validation_duration_seconds_count", ())] == 1
    assert samples[("streamd_http_request_duration_seconds_count",
                    (("method", "GET"), ("route", "/{version}/images"), ("status", "200")))] == 3


# -- identity from the token ---------------------------------------------------------------------------

async def test_a_member_acts_as_its_project_whatever_the_headers_say(tmp_path: Path, ks: Keystone) -> None:
    project_a, project_b = ks.projects["streamd-a"], ks.projects["streamd-b"]
    member_a = ks.users["a-member"]
    # Headers claiming admin of project B: ignored, the token says member of A.
    forged = as_token(ks.token("a-member"), **{"X-Roles": "admin", "X-Project-Id": project_b,
                                               "X-Tenant-Id": project_b, "X-User-Id": "someone",
                                               "X-Identity-Status": "Confirmed", "X-Service-Roles": "service"})
    async with serving(keystone_config(tmp_path, ks)) as (api, _):
        reply = await create_image(api, forged, name="mine")
        assert reply.status == 201, reply.body
        image = reply.json
        assert image["owner"] == project_a
        # Publicizing takes the admin role, which the header claimed and the token does not hold.
        refused = await create_image(api, forged, name="public", visibility="public")
        assert refused.status == 403, refused.body
        listed = await api.call("GET", "/v2/images", as_=forged)
        assert [i["id"] for i in listed.json["images"]] == [image["id"]]
        # Project B's member does not see project A's private image.
        other = await api.call("GET", f"/v2/images/{image['id']}", as_=as_token(ks.token("b-member")))
        assert other.status == 404
        # Project A's admin does (and may publicize).
        admin = as_token(ks.token("a-admin"))
        assert (await api.call("GET", f"/v2/images/{image['id']}", as_=admin)).status == 200
        assert (await create_image(api, admin, name="public", visibility="public")).status == 201
    assert member_a.project_id == project_a


async def test_reader_and_member_come_from_the_token(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks)) as (api, _):
        reader = as_token(ks.token("a-reader"), **{"X-Roles": "member,admin"})
        member = as_token(ks.token("a-member"))
        assert (await create_image(api, reader, name="nope")).status == 403
        created = await create_image(api, member, name="shared-in-a")
        assert created.status == 201
        # The reader of the same project sees the project's image but cannot change it.
        image_id = created.json["id"]
        assert (await api.call("GET", f"/v2/images/{image_id}", as_=reader)).status == 200
        assert (await api.call("DELETE", f"/v2/images/{image_id}", as_=reader)).status == 403
        assert (await api.call("DELETE", f"/v2/images/{image_id}", as_=member)).status == 204


async def test_the_context_carries_scope_domains_and_roles(tmp_path: Path, ks: Keystone) -> None:
    config = keystone_config(tmp_path, ks)
    validator = KeystoneValidator(config.keystone_authtoken)
    await validator.start()
    try:
        member = await validator.authenticate(ks.token("a-member"), None)
        assert (member.project_id, member.user_id) == (ks.projects["streamd-a"], ks.users["a-member"].id)
        assert member.roles == {"member", "reader"} and member.system_scope is None
        assert (member.user_domain_id, member.project_domain_id, member.domain_id) == ("default", "default", None)
        assert member.service_user_id is None and member.service_roles == frozenset()

        system = await validator.authenticate(ks.system_token(), None)
        assert system.system_scope == "all" and system.project_id is None
        assert system.user_id == ks.users["admin"].id and "admin" in system.roles
    finally:
        await validator.stop()


# -- the cache ------------------------------------------------------------------------------------------

async def test_a_validated_token_is_asked_about_once(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks)) as (api, services):
        validator = services.identity
        assert validator is not None
        token = as_token(ks.token("a-member"))
        before = validator.validations
        replies = await asyncio.gather(*(api.call("GET", "/v2/images", as_=token) for _ in range(5)))
        assert [r.status for r in replies] == [200] * 5
        for _ in range(5):
            assert (await api.call("GET", "/v2/images", as_=token)).status == 200
        # Ten requests, five of them at once: one validation (concurrent ones share it).
        assert validator.validations - before == 1


async def test_the_cache_is_bounded(tmp_path: Path, ks: Keystone) -> None:
    config = keystone_config(tmp_path, ks)
    validator = KeystoneValidator(config.keystone_authtoken, cache_size=2)
    await validator.start()
    try:
        tokens = [ks.token(user) for user in ("a-member", "a-reader", "b-member")]
        for token in tokens:
            await validator.validate(token)
        assert validator.validations == 3 and len(validator.cache) == 2
        await validator.validate(tokens[2])  # still held
        await validator.validate(tokens[1])  # still held
        assert validator.validations == 3
        await validator.validate(tokens[0])  # the least recently used: forgotten, asked again
        assert validator.validations == 4 and len(validator.cache) == 2
    finally:
        await validator.stop()


async def test_a_revoked_token_is_refused_once_the_cache_time_is_over(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks, token_cache_time="1")) as (api, services):
        token = ks.token("a-member")
        assert (await api.call("GET", "/v2/images", as_=as_token(token))).status == 200
        ks.revoke(token)
        assert not ks.is_valid(token)
        # Within token_cache_time the cached answer may still be used (keystonemiddleware's bound too) ...
        await asyncio.sleep(1.1)
        # ... past it Keystone is asked again, and says 404: refused.
        assert_keystone_401(await api.call("GET", "/v2/images", as_=as_token(token)), ks.url)


async def test_without_a_cache_every_request_asks_keystone(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks, token_cache_time="-1")) as (api, services):
        assert services.identity is not None
        token = as_token(ks.token("a-member"))
        before = services.identity.validations
        for _ in range(3):
            assert (await api.call("GET", "/v2/images", as_=token)).status == 200
        assert services.identity.validations - before == 3


# -- Keystone unavailable: 503, never a pass ----------------------------------------------------------

KEYSTONE_503_JSON = {"code": "503 Service Unavailable", "title": "Service Unavailable",
                     "message": "The server is currently unavailable. Please try again at a later time."
                                "<br /><br />\nThe Keystone service is temporarily unavailable.\n\n"}


async def test_keystone_unreachable_is_503(tmp_path: Path, ks: Keystone) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v3"
    config = keystone_config(tmp_path, ks, auth_url=closed, www_authenticate_uri=closed)
    async with serving(config) as (api, services):
        for token in (ks.token("a-member"), "anything"):
            reply = await api.call("GET", "/v2/images", as_=as_token(token))
            assert reply.status == 503, reply.body
            assert reply.json == KEYSTONE_503_JSON
        assert (await api.call("POST", "/v2/images", as_=as_token("x"), json_body={})).status == 503
        # No token at all is still 401: nothing to ask Keystone about.
        assert_keystone_401(await api.call("GET", "/v2/images"), closed)


async def test_keystone_refusing_the_service_user_is_503(tmp_path: Path, ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, ks, password="wrong")) as (api, services):
        reply = await api.call("GET", "/v2/images", as_=as_token(ks.token("a-member")))
        assert reply.status == 503, reply.body
        assert reply.json == KEYSTONE_503_JSON


async def test_noauth_is_unchanged(tmp_path: Path) -> None:
    # The default: identity from the headers, no token needed, no validator built.
    config = make_config(tmp_path)
    assert config.auth_strategy == "noauth"
    async with serving(config) as (api, services):
        assert services.identity is None
        reply = await create_image(api, {"X-Project-Id": "a" * 32, "X-Roles": "member"}, name="x")
        assert reply.status == 201 and reply.json["owner"] == "a" * 32
        assert "WWW-Authenticate" not in reply.headers


# -- X-Service-Token: an expired user token let through by a service -----------------------------------
# A Keystone of its own whose tokens live TOKEN_LIFETIME seconds, so that they expire during a test.

TOKEN_LIFETIME = 8


@pytest.fixture(scope="module")
def short_ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    """Keystone with TOKEN_LIFETIME-second tokens, bootstrapped like the suite's. Set
    STREAMD_TEST_KEYSTONE_SHORT_URL to one already started that way (``STREAMD_KEYSTONE_TOKEN_EXPIRATION=8
    scripts/keystone-dev.sh start DIR``) to save the minute it takes to start."""
    url = os.environ.get("STREAMD_TEST_KEYSTONE_SHORT_URL")
    if url:
        yield bootstrap_keystone(url, os.environ["STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"])
        return
    process = start_keystone(tmp_path_factory.mktemp("short-keystone") / "ks", token_expiration=TOKEN_LIFETIME)
    try:
        yield bootstrap_keystone(process.url, process.admin_password)
    finally:
        process.stop()


def expiring_token(ks: Keystone, user: str) -> tuple[str, float]:
    token, document = ks.token_document(user)
    return token, parse_time(document["expires_at"])


async def wait_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_an_expired_user_token_passes_with_a_service_token(tmp_path: Path, short_ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, short_ks)) as (api, services):
        token, expires_at = expiring_token(short_ks, "a-member")
        created = await create_image(api, as_token(token), name="before expiry")
        assert created.status == 201, created.body
        await wait_until(expires_at + 0.5)
        assert not short_ks.is_valid(token)
        # Alone, the expired token is refused ...
        assert_keystone_401(await api.call("GET", "/v2/images", as_=as_token(token)), short_ks.url)
        # ... with the glance service user's token (role service) it is the user's request still.
        service = short_ks.token("glance")
        reply = await api.call("GET", "/v2/images", as_=as_token(token, **{"X-Service-Token": service}))
        assert reply.status == 200, reply.body
        assert [i["id"] for i in reply.json["images"]] == [created.json["id"]]
        service = short_ks.token("glance")  # the service token lives TOKEN_LIFETIME seconds too
        context = await services.identity.authenticate(token, service)  # type: ignore[union-attr]
        assert context.project_id == short_ks.projects["streamd-a"]
        assert context.service_user_id == short_ks.users["glance"].id and "service" in context.service_roles
        # A "service" token without the service role (a member's) is refused outright
        # (service_token_roles_required), expired user token or not.
        member_as_service = {"X-Service-Token": short_ks.token("b-member")}
        assert_keystone_401(await api.call("GET", "/v2/images", as_=as_token(token, **member_as_service)),
                            short_ks.url)
        assert_keystone_401(await api.call("GET", "/v2/images",
                                           as_=as_token(short_ks.token("a-member"), **member_as_service)),
                            short_ks.url)
        # An invalid service token is refused too, whatever the user's token.
        assert_keystone_401(await api.call("GET", "/v2/images", as_=as_token(
            short_ks.token("a-member"), **{"X-Service-Token": "bogus"})), short_ks.url)
        # The validator's own token expired meanwhile, several times: it logged in again.
        assert services.identity is not None and services.identity.service_logins >= 2


async def test_service_token_roles_not_required(tmp_path: Path, short_ks: Keystone) -> None:
    config = keystone_config(tmp_path, short_ks, service_token_roles_required="false")
    async with serving(config) as (api, _):
        member_as_service = {"X-Service-Token": short_ks.token("b-member")}
        # Any valid token is accepted as a service token then ...
        fresh = as_token(short_ks.token("a-member"), **member_as_service)
        assert (await api.call("GET", "/v2/images", as_=fresh)).status == 200
        # ... but only one with a service role lets an expired user token through.
        token, expires_at = expiring_token(short_ks, "a-member")
        await wait_until(expires_at + 0.5)
        expired_with_member = as_token(token, **{"X-Service-Token": short_ks.token("b-member")})
        assert_keystone_401(await api.call("GET", "/v2/images", as_=expired_with_member), short_ks.url)
        expired_with_glance = as_token(token, **{"X-Service-Token": short_ks.token("glance")})
        assert (await api.call("GET", "/v2/images", as_=expired_with_glance)).status == 200


async def test_an_upload_outlives_its_token(tmp_path: Path, short_ks: Keystone) -> None:
    async with serving(keystone_config(tmp_path, short_ks)) as (api, _):
        token, expires_at = expiring_token(short_ks, "a-member")
        created = await create_image(api, as_token(token), name="long upload")
        assert created.status == 201, created.body
        image_id = created.json["id"]
        chunk = b"\x5a" * 65536
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            # Keeps sending until well after the token has expired.
            while time.time() < expires_at + 2.0 or sent < 16:
                yield chunk
                sent += 1
                await asyncio.sleep(0.1)

        await wait_until(expires_at - 2.0)
        headers = as_token(token, **{"X-Service-Token": short_ks.token("glance"),
                                     "Content-Type": "application/octet-stream"})
        reply = await api.call("PUT", f"/v2/images/{image_id}/file", as_=headers, data=body())
        assert reply.status == 204, reply.body
        assert time.time() > expires_at + 2.0 and not short_ks.is_valid(token)
        shown = await api.call("GET", f"/v2/images/{image_id}", as_=as_token(short_ks.token("a-member")))
        assert shown.json["status"] == "active" and shown.json["size"] == sent * len(chunk)


# -- the daemon: noauth refuses a network address; glance CLI and openstacksdk with Keystone logins ----

def serve_and_wait(tmp_path: Path, config_text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "streamd.conf"
    path.write_text(config_text)
    return subprocess.run([PYTHON, "-m", "streamd", "serve", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


def test_noauth_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", ""):
        result = serve_and_wait(tmp_path, f"[DEFAULT]\nbind_host = {host}\nbind_port = {free_port()}\n"
                                          f"data_dir = {tmp_path / 'data'}\n")
        assert result.returncode == 1, result.stderr
        assert f"[DEFAULT] bind_host = {host!r} is not a loopback address and auth_strategy is noauth" \
            in result.stderr
        assert "allow_noauth_on_network = true" in result.stderr and "listening on" not in result.stderr


def authtoken_section(ks: Keystone) -> str:
    return "[keystone_authtoken]\n" + "".join(f"{k} = {v}\n" for k, v in ks.authtoken_options().items())


def test_a_network_address_takes_keystone_or_the_explicit_option(tmp_path: Path, ks: Keystone) -> None:
    (tmp_path / "explicit").mkdir()
    (tmp_path / "keystone").mkdir()
    explicit = start_daemon(tmp_path / "explicit", "bind_host = 0.0.0.0\nallow_noauth_on_network = true\n")
    try:
        with urllib.request.urlopen(explicit.url + "/v2/images", timeout=10) as response:
            assert response.status == 200  # noauth, as the operator asked
    finally:
        assert stop_daemon(explicit) == 0
    keystone_daemon = start_daemon(tmp_path / "keystone", "bind_host = 0.0.0.0\nauth_strategy = keystone\n"
                                   + authtoken_section(ks))
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(keystone_daemon.url + "/v2/images", timeout=10)
        assert info.value.code == 401
        info.value.close()
    finally:
        assert stop_daemon(keystone_daemon) == 0


@pytest.fixture(scope="module")
def keystone_daemon(tmp_path_factory: pytest.TempPathFactory, ks: Keystone) -> Iterator[Daemon]:
    # Glance's own spelling of keystone mode: the paste flavor.
    d = start_daemon(tmp_path_factory.mktemp("keystone-daemon"),
                     "[paste_deploy]\nflavor = keystone+cachemanagement\n" + authtoken_section(ks))
    try:
        yield d
    finally:
        stop_daemon(d)


def login_options(ks: Keystone, user: str) -> list[str]:
    who = ks.users[user]
    return ["--os-auth-url", ks.url, "--os-username", who.name, "--os-password", who.password,
            "--os-project-name", who.project_name, "--os-user-domain-id", "default",
            "--os-project-domain-id", "default", "--os-region-name", "RegionOne"]


def run_glance(tmp_path: Path, daemon: Daemon, ks: Keystone, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path)  # glanceclient caches schemas under ~/.glanceclient
    return subprocess.run([str(GLANCE), *login_options(ks, user), "--os-image-url", daemon.url, *args],
                          capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def test_the_glance_cli_logs_in_with_keystone(tmp_path: Path, keystone_daemon: Daemon, ks: Keystone) -> None:
    data = tmp_path / "disk.raw"
    data.write_bytes(b"\x01" * 70000)
    created = run_glance(tmp_path, keystone_daemon, ks, "a-member", "--os-image-api-version", "2",
                         "image-create", "--name", "cli-image", "--disk-format", "raw", "--container-format",
                         "bare", "--file", str(data))
    assert created.returncode == 0, created.stderr
    image_id = re.search(r"\|\s+id\s+\|\s+([0-9a-f-]{36})", created.stdout).group(1)  # type: ignore[union-attr]
    assert re.search(rf"\|\s+owner\s+\|\s+{ks.projects['streamd-a']}\s+\|", created.stdout)
    assert re.search(r"\|\s+status\s+\|\s+active\s+\|", created.stdout)
    listed = run_glance(tmp_path, keystone_daemon, ks, "a-reader", "image-list")
    assert listed.returncode == 0 and image_id in listed.stdout, listed.stderr
    downloaded = tmp_path / "back.raw"
    # Glance 33's download_image needs the member role: a reader lists and shows, never downloads.
    refused_download = run_glance(tmp_path, keystone_daemon, ks, "a-reader", "image-download", "--file",
                                  str(downloaded), image_id)
    assert refused_download.returncode != 0 and "download_image" in refused_download.stderr
    got = run_glance(tmp_path, keystone_daemon, ks, "a-member", "image-download", "--file", str(downloaded),
                     image_id)
    assert got.returncode == 0, got.stderr
    assert downloaded.read_bytes() == data.read_bytes()
    # Project B does not see it; a reader cannot delete it; a wrong password never reaches streamd.
    other = run_glance(tmp_path, keystone_daemon, ks, "b-member", "image-show", image_id)
    assert other.returncode != 0 and "404" in other.stderr + other.stdout
    refused = run_glance(tmp_path, keystone_daemon, ks, "a-reader", "image-delete", image_id)
    # glanceclient's own line for a 403 on delete.
    assert refused.returncode != 0 and f"You are not permitted to delete the image '{image_id}'" in refused.stderr
    ks.users["bad"] = User("streamd-a-member", "", "wrong", "streamd-a", ks.projects["streamd-a"])
    try:
        bad = run_glance(tmp_path, keystone_daemon, ks, "bad", "image-list")
        assert bad.returncode != 0 and "401" in bad.stderr + bad.stdout
    finally:
        del ks.users["bad"]
    assert run_glance(tmp_path, keystone_daemon, ks, "a-member", "image-delete", image_id).returncode == 0


SDK_SCRIPT = """
import json, sys
import openstack

conn = openstack.connect(cloud="streamd-test")
payload = b"\\x07" * 100000
image = conn.image.create_image(name="sdk-image", disk_format="raw", container_format="bare", data=payload,
                                validate_checksum=False)
image = conn.image.get_image(image.id)
listed = [i.id for i in conn.image.images()]
data = conn.image.download_image(image).content
print(json.dumps({"id": image.id, "owner": image.owner, "status": image.status, "listed": listed,
                  "same": data == payload}))
conn.image.delete_image(image.id)
print(json.dumps({"after": [i.id for i in conn.image.images()]}))
conn.close()
"""


def test_openstacksdk_with_a_clouds_yaml(tmp_path: Path, keystone_daemon: Daemon, ks: Keystone) -> None:
    who = ks.users["a-member"]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  streamd-test:\n    auth:\n"
        f"      auth_url: {ks.url}\n      username: {who.name}\n      password: {who.password}\n"
        f"      project_name: {who.project_name}\n      user_domain_id: default\n      project_domain_id: default\n"
        "    region_name: RegionOne\n    identity_api_version: 3\n"
        f"    image_endpoint_override: {keystone_daemon.url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(clouds), HOME=str(tmp_path))
    result = subprocess.run([PYTHON, "-c", SDK_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert first["owner"] == ks.projects["streamd-a"] and first["status"] == "active" and first["same"]
    assert first["id"] in first["listed"] and first["id"] not in second["after"]
