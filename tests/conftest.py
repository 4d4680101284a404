"""Shared fixtures: real configs, real catalogues, real servers on loopback ports.

``api`` starts the real aiohttp application on a loopback port, on SQLite and
on PostgreSQL (the throwaway server ``scripts/test.sh`` starts and names in
``STREAMD_TEST_PG_URL``; without it the PostgreSQL cases fail, they never skip).
``daemon`` runs ``python -m streamd serve`` as a separate process, for tests
that drive it with the real ``glance`` CLI or send it signals.

Every async test runs twice, on asyncio's own loop and on uvloop (which the
daemon runs in production); the loop is in the test id, ``test_x[uvloop]``.

Hypothesis runs the property tests under the profile named by
``HYPOTHESIS_PROFILE``: ``bounded`` (the default: few examples, so the whole
suite stays fast) or ``long`` (many more, for a hunt).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from streamd.api import create_app
from streamd.config import Config, load_config
from streamd.services import open_services

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Hypothesis' own files go to the temp dir, never into the checkout; no example database either.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "streamd-hypothesis"))
# The property tests against a live server share one server across their examples
# (function_scoped_fixture) and time themselves by example count, not by a deadline.
settings.register_profile("bounded", max_examples=30, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", settings.get_profile("bounded"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bounded"))

# Identities used across the tests: two projects, each with a member user, and an admin.
PROJECT_A = "a" * 32
PROJECT_B = "b" * 32
PROJECT_C = "c" * 32
ADMIN = {"X-Project-Id": "f" * 32, "X-User-Id": "admin-user", "X-Roles": "admin,member,reader"}
MEMBER_A = {"X-Project-Id": PROJECT_A, "X-User-Id": "user-a", "X-Roles": "member,reader"}
MEMBER_B = {"X-Project-Id": PROJECT_B, "X-User-Id": "user-b", "X-Roles": "member,reader"}
MEMBER_C = {"X-Project-Id": PROJECT_C, "X-User-Id": "user-c", "X-Roles": "member,reader"}
READER_A = {"X-Project-Id": PROJECT_A, "X-User-Id": "reader-a", "X-Roles": "reader"}


# The event loops every async test runs on (pytest-asyncio's loop factory hook). A test
# that only needs one says so with @pytest.mark.asyncio(loop_factories=["asyncio"]) and why.
EVENT_LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return EVENT_LOOPS


# Under pytest-xdist (scripts/test.sh: -n 3 --dist loadfile) each worker takes whole files, in collection
# order: the files that take minutes (their own Glance, Keystone or Barbican, CLI sequences, benches) go
# first, so that none of them starts last while the other workers have nothing left to do. The order of
# the tests inside a file is kept.
SLOW_FILES_FIRST = ("test_signing_barbican.py", "test_metadefs_cli.py", "test_metadefs_parity.py",
                    "test_keystone_auth.py", "test_storm_bench.py", "test_manage.py", "test_locations.py",
                    "test_glance_parity.py", "test_cluster_fill.py", "test_cache_admin.py", "test_rbd_store.py",
                    "test_notifications.py", "test_policy_parity.py", "test_api_tasks.py", "test_load.py",
                    "test_catalog_bench.py", "test_health.py", "test_cache_manage_fleet.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: index for index, name in enumerate(SLOW_FILES_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


def pg_url() -> str:
    url = os.environ.get("STREAMD_TEST_PG_URL")
    if not url:
        pytest.fail("STREAMD_TEST_PG_URL is not set: run the suite with scripts/test.sh, "
                    "which starts a throwaway PostgreSQL")
    return url


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_url().replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty catalogue database: SQLite by default, PostgreSQL when parametrized so."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    name = "t_" + uuid.uuid4().hex[:16]
    await _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield pg_url().rsplit("/", 1)[0] + "/" + name
    finally:
        await _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_config(tmp_path: Path, database_url: str | None = None, **sections: dict[str, str]) -> Config:
    # The tests exercise the cache with the file store behind it: let it cache local images too
    # (the product default serves them straight from the store).
    # They start from an empty metadefs catalogue (test_api_metadefs.py asks for the shipped
    # definitions where it tests them).
    overrides: dict[str, dict[str, str]] = {"DEFAULT": {"data_dir": str(tmp_path / "data"),
                                                        "image_cache_local_stores": "true",
                                                        "metadefs_initial_load": "false"}}
    if database_url:
        overrides["database"] = {"connection": database_url}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(None, overrides=overrides)


# aiohttp's threshold for "a large body" (aiohttp.payload.TOO_LARGE_BYTES_BODY).
LARGE_BODY = 1 << 20


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """An error answer in Glance's flat JSON shape (the client asks for JSON), as code/title/message."""
        body = self.json
        assert set(body) == {"message", "code", "title"}, body
        return {"code": int(body["code"].split()[0]), "title": body["title"], "message": body["message"]}


class ApiClient:
    """A thin client over a real HTTP connection; every call names the identity it runs as."""

    def __init__(self, base: str, session: aiohttp.ClientSession, config: Config) -> None:
        self.base = base
        self.session = session
        self.config = config

    async def call(self, method: str, path: str, *, as_: dict[str, str] | None = None, json_body: Any = None,
                   data: Any = None, headers: dict[str, str] | None = None, params: Any = None) -> Reply:
        all_headers = {"Accept": "application/json"}
        all_headers.update(as_ or {})
        all_headers.update(headers or {})
        if json_body is not None:
            data = json.dumps(json_body)
            all_headers.setdefault("Content-Type", "application/json")
        if isinstance(data, (bytes, bytearray)) and len(data) > LARGE_BODY:
            # aiohttp writes a bytes body in one piece, holding the loop for the whole send (and
            # says so with a ResourceWarning); from a BytesIO it sends pieces, still with Content-Length.
            data = io.BytesIO(data)
        async with self.session.request(method, self.base + path, data=data, headers=all_headers,
                                        params=params) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def create(self, as_: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("disk_format", "raw")
        body.setdefault("container_format", "bare")
        reply = await self.call("POST", "/v2/images", as_=as_ or MEMBER_A, json_body=body)
        assert reply.status == 201, reply.body
        return reply.json  # type: ignore[no-any-return]

    async def patch(self, image_id: str, ops: list[dict[str, Any]], *, as_: dict[str, str] | None = None,
                    media: str = "application/openstack-images-v2.1-json-patch") -> Reply:
        return await self.call("PATCH", f"/v2/images/{image_id}", as_=as_ or MEMBER_A,
                               data=json.dumps(ops), headers={"Content-Type": media})

    async def list_ids(self, params: Any = None, *, as_: dict[str, str] | None = None) -> list[str]:
        reply = await self.call("GET", "/v2/images", as_=as_ or MEMBER_A, params=params)
        assert reply.status == 200, reply.body
        return [i["id"] for i in reply.json["images"]]


class ApiServer(TestServer):
    """The real application on a loopback port over services of its own: ``close()`` stops the
    server, then closes the services (in the daemon's order)."""

    def __init__(self, app: web.Application, services: contextlib.AsyncExitStack) -> None:
        super().__init__(app, host="127.0.0.1", port=0)
        self._services = services

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self._services.aclose()


async def start_api(config: Config) -> tuple[TestServer, ApiClient, aiohttp.ClientSession]:
    stack = contextlib.AsyncExitStack()
    services = await stack.enter_async_context(open_services(config))
    server = ApiServer(create_app(services), stack)
    try:
        await server.start_server()
    except BaseException:
        await stack.aclose()
        raise
    session = aiohttp.ClientSession()
    return server, ApiClient(f"http://127.0.0.1:{server.port}", session, config), session


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiClient]:
    """The real application on a loopback port (SQLite unless ``database_url`` is parametrized)."""
    server, client, session = await start_api(make_config(tmp_path, database_url))
    try:
        yield client
    finally:
        await session.close()
        await server.close()


# Parametrize a test module over both catalogue back-ends with:
#   pytestmark = both_databases
both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


# -- the daemon as a real process --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    url: str
    config_path: Path
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def start_daemon(tmp_path: Path, extra_config: str = "", env: dict[str, str] | None = None,
                 timeout: float = 60.0, port: int | None = None) -> Daemon:
    port = port or free_port()
    data_dir = tmp_path / "data"
    config_path = write_config(tmp_path / "streamd.conf", (
        f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {port}\ndata_dir = {data_dir}\n"
        f"image_cache_local_stores = true\n{extra_config}\n"))
    log_path = tmp_path / "daemon.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen([PYTHON, "-m", "streamd", "serve", "--config", str(config_path)],
                               stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path,
                               env={**os.environ, **(env or {})})
    log_file.close()
    daemon = Daemon(process, f"http://127.0.0.1:{port}", config_path, data_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited with {process.returncode}:\n{daemon.log()}")
        if re.search(r"listening on", daemon.log()):
            return daemon
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"daemon did not start within {timeout} s:\n{daemon.log()}")


def start_node(tmp_path: Path, name: str, catalogue: Path, *, token: str = "t0ken", extra: str = "",
               default: str = "") -> Daemon:
    """A daemon in ``tmp_path/name`` sharing the SQLite ``catalogue`` with other nodes, peers on;
    ``default``: more [DEFAULT] lines, ``extra``: more sections."""
    port = free_port()
    directory = tmp_path / name
    directory.mkdir()
    return start_daemon(directory, port=port, extra_config=(
        f"peer_url = http://127.0.0.1:{port}\npeer_token = {token}\n{default}"
        f"[database]\nconnection = sqlite:///{catalogue}\n{extra}"))


def stop_daemon(daemon: Daemon, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if daemon.process.poll() is None:
        daemon.process.send_signal(sig)
        try:
            daemon.process.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    return daemon.process.returncode


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path)
    try:
        yield d
    finally:
        stop_daemon(d)
