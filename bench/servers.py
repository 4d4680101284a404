"""The servers under test, each started fresh in its own work directory and always stopped.

``Streamd``: the project's daemon from .venv, default options, a free port.
``Glance``: real Glance 33.0.0 under uWSGI in its own venv, file store, SQLite, cache on
(the recipe of shared/notes/anchor-figures.md). ``RefSource``: bench/refsource.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# psycopg2: Glance on PostgreSQL (bench/catalog.py --db postgresql).
GLANCE_PACKAGES = ["glance==33.0.0", "python-glanceclient==4.13.0", "uwsgi", "psycopg2-binary"]
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    name = ""
    stop_signal = signal.SIGTERM  # sent to the whole process group first; SIGKILL 30 s later

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.resolve()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "server.log"

    # lifecycle
    def prepare(self) -> list[str]:
        """Write the configuration; return the command line."""
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def __enter__(self) -> "Server":
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        try:
            cmd = self.prepare()
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                             cwd=self.workdir, start_new_session=True)
            deadline = time.monotonic() + 120
            while not self.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((self.stop_signal, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)  # the session we started, workers included
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # Images API
    def api(self, method: str, path: str, body: object = None) -> object:
        request = urllib.request.Request(self.url + path, method=method)
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        with _opener.open(request, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data else None

    def create_image(self, name: str) -> str:
        image = self.api("POST", "/v2/images", {"name": name, "disk_format": "raw", "container_format": "bare"})
        return image["id"]

    def delete_image(self, image_id: str) -> None:
        self.api("DELETE", f"/v2/images/{image_id}")

    def file_url(self, image_id: str) -> str:
        return f"{self.url}/v2/images/{image_id}/file"

    def settle(self, image_ids: list[str]) -> None:
        """After the cold downloads: wait until the cache (GET /v2/cache) lists the images."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cached = {entry["image_id"] for entry in self.api("GET", "/v2/cache")["cached_images"]}
            if cached >= set(image_ids):
                return
            time.sleep(0.1)
        print(f"warning: {self.name} did not cache {sorted(set(image_ids) - cached)} within 30 s", flush=True)

    _log_offset = 0

    def _new_log(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
            self._log_offset = f.tell()
        return text

    def new_log_errors(self) -> list[str]:
        """Causes of failed requests the server logged since the last call."""
        return []


class Streamd(Server):
    name = "streamd"

    def __init__(self, workdir: Path, database_url: str | None = None,
                 options: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.database_url = database_url  # None: SQLite under data_dir (the default)
        # More options (a bench's --set): [DEFAULT] ones by name, others as SECTION.option (fs.filesystem_store_direct_io).
        self.options = dict(options or {})
        # /metrics on a port of its own (scraped during the run: bench/scrape.py).
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def prepare(self) -> list[str]:
        config = self.workdir / "streamd.conf"
        sections: dict[str, dict[str, str]] = {}
        for key, value in self.options.items():
            section, _, name = key.rpartition(".")
            sections.setdefault(section or "DEFAULT", {})[name] = value
        config.write_text(f"[DEFAULT]\nbind_host = 127.0.0.1\nbind_port = {self.port}\n"
                          f"data_dir = {self.workdir / 'data'}\n"
                          + "".join(f"{key} = {value}\n" for key, value in sections.pop("DEFAULT", {}).items())
                          + f"[metrics]\nenabled = true\nbind_port = {self.metrics_port}\n"
                          + (f"[database]\nconnection = {self.database_url}\n" if self.database_url else "")
                          + "".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
                                    for section, values in sections.items()))
        streamd = REPO / ".venv/bin/streamd"
        if streamd.exists():
            return [str(streamd), "serve", "--config", str(config)]
        # A git worktree has no venv of its own: this interpreter (the main checkout's .venv),
        # with the worktree first on the path (env()).
        return [sys.executable, "-m", "streamd", "serve", "--config", str(config)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def ready(self) -> bool:
        return "listening on" in self.log.read_text(errors="replace")

    def settle(self, image_ids: list[str]) -> None:
        # With its defaults streamd serves file-store images straight from the store
        # (image_cache_local_stores = false): there is no fill to wait for.
        return None

    def new_log_errors(self) -> list[str]:
        """Each logged ERROR with the last line of its traceback."""
        blocks = re.split(r"\n(?=\d{4}-\d\d-\d\d )", self._new_log())
        return [(lines[0].split(" ERROR ", 1)[1] + (": " + lines[-1] if len(lines) > 1 else ""))[:300]
                for lines in (b.strip().splitlines() for b in blocks if " ERROR " in b.split("\n", 1)[0])]


GLANCE_API_CONF = """\
[DEFAULT]
enabled_backends = fs:file
worker_self_reference_url = {url}
image_cache_dir = {w}/cache
[database]
connection = {database}
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {w}/images
[os_glance_staging_store]
filesystem_store_datadir = {w}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {w}/tasks
[oslo_concurrency]
lock_path = {w}/locks
[paste_deploy]
flavor = bench
"""

# Glance's own pipeline for keystone+caching, with our identity filter in place of authtoken.
GLANCE_PASTE_INI = """\
[composite:glance-api-bench]
paste.composite_factory = glance.api:root_app_factory
/: api

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
bench = cors http_proxy_to_wsgi versionnegotiation osprofiler identity context cache rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:identity]
paste.filter_factory = glance_identity:filter_factory

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:cache]
paste.filter_factory = glance.api.middleware.cache:CacheFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""

UWSGI_INI = """\
[uwsgi]
http-socket = 127.0.0.1:{port}
processes = 2
threads = 2
master = true
enable-threads = true
lazy-apps = true
http-raw-body = true
http-chunked-input = true
http-auto-chunked = true
buffer-size = 65535
chunked-input-limit = 16777216
home = {venv}
pythonpath = {bench}
module = glance.wsgi.api:application
need-app = true
die-on-term = true
disable-logging = true
# http-socket closes each connection after its response without saying so: a client that reuses
# it (requests, so glanceclient and openstacksdk) then races the close and, under load, gets a
# reset (measured: 9 of 200 second requests on one session). Saying so ends the race.
add-header = Connection: close
"""


class Glance(Server):
    name = "glance"
    # uWSGI's workers take SIGTERM for "reload" and the master then waits out their mercy time
    # (measured: still up after 30 s, whatever die-on-term); SIGINT stops them all at once (1 s).
    stop_signal = signal.SIGINT

    def __init__(self, workdir: Path, venv: Path, database_url: str | None = None) -> None:
        super().__init__(workdir)
        self.venv = venv
        # None: SQLite in the work directory; a PostgreSQL URL needs psycopg2 in the venv.
        self.database_url = database_url

    def add_rbd_backend(self, ceph_conf: str, pool: str) -> None:
        """After prepare(): the rbd store (thin provisioned, as streamd's) as the default backend.

        uWSGI then gets a pythonpath holding only glance_identity: bench/ itself holds rbd.py, which
        would shadow Ceph's own ``rbd`` module inside Glance.
        """
        conf = self.workdir / "etc/glance-api.conf"
        text = conf.read_text()
        text = text.replace("enabled_backends = fs:file", "enabled_backends = fs:file,ceph:rbd")
        text = text.replace("default_backend = fs", "default_backend = ceph")
        text += (f"[ceph]\nrbd_store_ceph_conf = {ceph_conf}\nrbd_store_pool = {pool}\n"
                 "rbd_store_user = admin\nrbd_thin_provisioning = True\n")
        conf.write_text(text)
        path_dir = self.workdir / "pythonpath"
        path_dir.mkdir(exist_ok=True)
        (path_dir / "glance_identity.py").symlink_to(Path(__file__).resolve().parent / "glance_identity.py")
        ini = self.workdir / "uwsgi.ini"
        ini.write_text(re.sub(r"^pythonpath = .*$", f"pythonpath = {path_dir}", ini.read_text(), flags=re.M))

    @staticmethod
    def link_ceph_bindings(venv: Path) -> str | None:
        """Debian's rados/rbd into Glance's venv (scripts/link-ceph-bindings.sh); why it cannot be done, or None."""
        Glance.ensure_venv(venv)
        r = subprocess.run([str(REPO / "scripts/link-ceph-bindings.sh"), str(venv / "bin/python")],
                           capture_output=True, text=True)
        return (r.stderr or r.stdout).strip()[-500:] if r.returncode else None

    @staticmethod
    def ensure_venv(venv: Path) -> None:
        if (venv / "bin/uwsgi").exists():
            if not list(venv.glob("lib/python*/site-packages/psycopg2")):  # a venv made before it joined the list
                subprocess.run([str(venv / "bin/pip"), "install", "-q", "psycopg2-binary"], check=True)
            return
        print(f"creating {venv} ({' '.join(GLANCE_PACKAGES)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", *GLANCE_PACKAGES], check=True)

    def env(self) -> dict[str, str]:
        return dict(os.environ, OS_GLANCE_CONFIG_DIR=str(self.workdir / "etc"))

    def prepare(self) -> list[str]:
        self.ensure_venv(self.venv)
        w = self.workdir
        for sub in ("etc", "images", "cache", "staging", "tasks", "locks"):
            (w / sub).mkdir()
        (w / "etc/glance-api.conf").write_text(GLANCE_API_CONF.format(
            url=self.url, w=w, database=self.database_url or f"sqlite:///{w}/glance.sqlite"))
        (w / "etc/glance-api-paste.ini").write_text(GLANCE_PASTE_INI)
        (w / "uwsgi.ini").write_text(UWSGI_INI.format(port=self.port, venv=self.venv, bench=BENCH))
        subprocess.run([str(self.venv / "bin/glance-manage"), "--config-file", str(w / "etc/glance-api.conf"),
                        "db_sync"], check=True, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return [str(self.venv / "bin/uwsgi"), "--ini", str(w / "uwsgi.ini")]

    def ready(self) -> bool:
        # lazy-apps: each worker loads the app itself; wait for both.
        if self.log.read_text(errors="replace").count("WSGI app 0 (mountpoint='') ready") < 2:
            return False
        try:
            self.api("GET", "/v2/images")
            return True
        except OSError:
            return False

    def new_log_errors(self) -> list[str]:
        return [m.group(1)[:200] for m in re.finditer(r" ERROR glance\.api\.v2\.image_data \[[^\]]*\] (.*)",
                                                      self._new_log())]


class RefSource(Server):
    """bench/refsource.py serving the data directory (no Images API: URL is /NAME)."""

    def __init__(self, workdir: Path, mode: str, root: Path) -> None:
        super().__init__(workdir)
        self.name, self.mode, self.root = f"ref-{mode}", mode, root

    def prepare(self) -> list[str]:
        return [sys.executable, str(BENCH / "refsource.py"), self.mode, str(self.root)]

    def ready(self) -> bool:
        text = self.log.read_text().strip()
        if text.isdigit():
            self.port = int(text)
            self.url = f"http://127.0.0.1:{self.port}"
            return True
        return False
