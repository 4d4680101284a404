"""Run Tempest's image tests against a streamd started for the run (scripts/tempest.sh calls this).

Every part is real and throwaway, inside one temporary directory: a Keystone from
scripts/keystone-dev.sh (or the one named by STREAMD_TEST_KEYSTONE_URL), the service user and
image endpoint registered in it as a Glance deployment does, two streamd nodes in keystone mode
sharing one catalogue and two file stores (the second registered as ``image_remote``, Tempest's
alternate endpoint for its cross-worker import and delete tests), glance-download enabled (it
imports from the same region's image service, as Tempest's tests ask), the cache, a loopback HTTP server holding the images Tempest downloads, and a
Tempest workspace whose tempest.conf says all that. Only the standard library is used here, so
the project's venv is enough to run it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv/bin/python"
DEFAULT_REGEX = r"^(tempest\.api\.image\.v2|glance_tempest_plugin\.tests\.rbac)"
SERVICE_PASSWORD = "streamd-glance-secret"
REGION = "RegionOne"


def say(message: str) -> None:
    print(f"tempest.sh: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keystone:
    """Just enough of Keystone's v3 API to register a service user and an endpoint."""

    def __init__(self, url: str, admin_password: str) -> None:
        self.url = url.rstrip("/")
        self.admin_password = admin_password
        self.token = self._authenticate()

    def _authenticate(self) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": self.admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
        request = urllib.request.Request(f"{self.url}/auth/tokens", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.headers["X-Subject-Token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "X-Auth-Token": self.token}, method=method)
        with urllib.request.urlopen(request, timeout=60) as reply:
            raw = reply.read()
            return json.loads(raw) if raw else {}

    def find_or_create(self, collection: str, key: str, name: str, body: dict) -> str:
        found = self.call("GET", f"/{collection}?name={name}")[collection]
        if found:
            return found[0]["id"]
        return self.call("POST", f"/{collection}", {key: body})[key]["id"]

    def register_image_service(self, image_url: str, remote_url: str) -> None:
        """As Glance's install guide: a ``glance`` user with admin and service roles in the
        ``service`` project, and an ``image`` service with public/internal/admin endpoints; and
        an ``image_remote`` service at the second node, which Tempest's
        ``alternate_image_endpoint`` names for its cross-worker import and delete tests."""
        project = self.find_or_create("projects", "project", "service",
                                      {"name": "service", "domain_id": "default"})
        user = self.find_or_create("users", "user", "glance",
                                   {"name": "glance", "domain_id": "default", "password": SERVICE_PASSWORD})
        self.call("PATCH", f"/users/{user}", {"user": {"password": SERVICE_PASSWORD}})
        for role_name in ("admin", "service"):
            role = self.find_or_create("roles", "role", role_name, {"name": role_name})
            self.call("PUT", f"/projects/{project}/users/{user}/roles/{role}")
        for kind, url in (("image", image_url), ("image_remote", remote_url)):
            services = [s for s in self.call("GET", f"/services?type={kind}")["services"]]
            service = services[0]["id"] if services else self.call(
                "POST", "/services", {"service": {"type": kind, "name": f"glance-{kind}"}})["service"]["id"]
            for endpoint in self.call("GET", f"/endpoints?service_id={service}")["endpoints"]:
                self.call("DELETE", f"/endpoints/{endpoint['id']}")
            for interface in ("public", "internal", "admin"):
                self.call("POST", "/endpoints", {"endpoint": {
                    "service_id": service, "interface": interface, "url": url, "region_id": REGION}})


def streamd_conf(work: Path, node: str, port: int, keystone_url: str, http_port: int) -> str:
    """One of two nodes sharing one catalogue (SQLite) and the two file stores; each has its own
    staging area and cache, and passes a glance-direct import to the node that staged the data."""
    return f"""\
[DEFAULT]
bind_host = 127.0.0.1
bind_port = {port}
data_dir = {work}/{node}-data
enabled_backends = cheap:file, fast:file, web:http
enabled_import_methods = [glance-direct,web-download,copy-image,glance-download]
image_cache_dir = {work}/{node}-data/cache
auth_strategy = keystone
show_multiple_locations = true
show_image_direct_url = true
peer_url = http://127.0.0.1:{port}
peer_token = tempest-peers

[database]
connection = sqlite:///{work}/catalogue.sqlite

[glance_store]
default_backend = cheap

[cheap]
filesystem_store_datadir = {work}/stores/cheap
store_description = Cheap store, the default
# Weights in the stores' alphabetical order: Tempest's wait_for_image_imported_to_stores compares
# the image's "stores" (listed by weight, as Glance 33 lists them) with the sorted store ids.
weight = 20

[fast]
filesystem_store_datadir = {work}/stores/fast
store_description = Fast store
weight = 10

[web]
store_description = Images left on web servers (read-only)

[os_glance_staging_store]
filesystem_store_datadir = {work}/{node}-data/staging

[import_filtering_opts]
allowed_ports = [80,443,{http_port}]
allow_private_networks = true

[keystone_authtoken]
www_authenticate_uri = {keystone_url.removesuffix("/v3")}
auth_url = {keystone_url.removesuffix("/v3")}
auth_type = password
username = glance
password = {SERVICE_PASSWORD}
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = {REGION}

[oslo_policy]
enforce_scope = true
enforce_new_defaults = true
"""


def tempest_conf(work: Path, keystone_url: str, admin_password: str, http_port: int) -> str:
    return f"""\
[DEFAULT]
log_file = {work}/tempest.log

[auth]
use_dynamic_credentials = True
admin_username = admin
admin_password = {admin_password}
admin_project_name = admin
admin_domain_name = Default

[identity]
uri_v3 = {keystone_url}
auth_version = v3
region = {REGION}
disable_ssl_certificate_validation = True

[identity-feature-enabled]
api_v3 = True

[service_available]
glance = True
nova = False
neutron = False
cinder = False
swift = False
heat = False
horizon = False
placement = False

[enforce_scope]
glance = True

[image]
alternate_image_endpoint = image_remote
alternate_image_endpoint_type = publicURL
http_image = http://127.0.0.1:{http_port}/tempest-image.raw
http_qcow2_image = http://127.0.0.1:{http_port}/tempest-image.qcow2
image_caching_enabled = True
build_timeout = 120

[image-feature-enabled]
import_image = True
manage_locations = True
http_store_enabled = True
store_weight_enabled = True
do_secure_hash = True
"""


def make_images(directory: Path) -> None:
    directory.mkdir(parents=True)
    raw = directory / "tempest-image.raw"
    with raw.open("wb") as f:
        f.write(os.urandom(1 << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(directory / "tempest-image.qcow2")], check=True)


def wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise SystemExit(f"tempest.sh: error: {what} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"tempest.sh: error: {what} did not answer on {url}")


def start(stack: ExitStack, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stack.callback(stop)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tempest-venv", type=Path, required=True)
    parser.add_argument("regex", nargs="?", default=DEFAULT_REGEX)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamd-tempest."))
    keep = os.environ.get("STREAMD_TEMPEST_KEEP") == "1"
    say(f"work directory {work}")
    with ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, work, True)
        keystone_url = os.environ.get("STREAMD_TEST_KEYSTONE_URL")
        admin_password = os.environ.get("STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD", "")
        if not keystone_url:
            out = subprocess.run([str(ROOT / "scripts/keystone-dev.sh"), "start", str(work / "keystone")],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            stack.callback(subprocess.run, [str(ROOT / "scripts/keystone-dev.sh"), "stop", str(work / "keystone")])
            found = dict(re.findall(r"export (\w+)=(\S+)", out))
            keystone_url = found["STREAMD_TEST_KEYSTONE_URL"]
            admin_password = found["STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"]
        port, remote_port, http_port = free_port(), free_port(), free_port()
        Keystone(keystone_url, admin_password).register_image_service(f"http://127.0.0.1:{port}",
                                                                      f"http://127.0.0.1:{remote_port}")
        say(f"Keystone {keystone_url}: glance service user, image endpoint http://127.0.0.1:{port}, "
            f"image_remote endpoint http://127.0.0.1:{remote_port}")

        make_images(work / "http")
        http = start(stack, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(http_port),
                             "--directory", str(work / "http")], work / "http.log")
        wait_http(f"http://127.0.0.1:{http_port}/", http, work / "http.log", "the image HTTP server")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        # The first node makes the catalogue; the second starts once it is there.
        for node, node_port in (("streamd", port), ("streamd-remote", remote_port)):
            conf = work / f"{node}.conf"
            conf.write_text(streamd_conf(work, node, node_port, keystone_url, http_port))
            process = start(stack, [str(PYTHON), "-m", "streamd", "serve", "--config", str(conf)],
                            work / f"{node}.log", cwd=str(work), env=env)
            wait_http(f"http://127.0.0.1:{node_port}/versions", process, work / f"{node}.log", node)
            say(f"{node} on 127.0.0.1:{node_port} (log {work}/{node}.log)")

        tempest = args.tempest_venv / "bin/tempest"
        # A registry of our own: Tempest's default (~/.tempest/workspace.yaml) refuses a name twice.
        subprocess.run([str(tempest), "init", "--workspace-path", str(work / "workspaces.yaml"),
                        "--name", work.name, str(work / "workspace")], check=True,
                       stdout=subprocess.DEVNULL, cwd=str(work))
        (work / "workspace/etc/tempest.conf").write_text(tempest_conf(work, keystone_url, admin_password, http_port))
        say(f"tempest run --concurrency 1 --regex '{args.regex}'")
        started = time.monotonic()
        run = subprocess.run([str(tempest), "run", "--concurrency", "1", "--regex", args.regex],
                             cwd=str(work / "workspace"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(run.stdout)
        totals = {k: int(v) for k, v in re.findall(r"^ - (Passed|Skipped|Failed|Unexpected Success): (\d+)",
                                                     run.stdout, re.M)}
        say(f"tempest: {totals.get('Passed', 0)} passed, {totals.get('Failed', 0)} failed, "
            f"{totals.get('Skipped', 0)} skipped in {time.monotonic() - started:.0f} s (exit {run.returncode})")
        if keep:
            say(f"kept {work}")
        if run.returncode != 0 or totals.get("Failed", 0) or not totals.get("Passed", 0):
            if not keep:
                for node in ("streamd", "streamd-remote"):
                    sys.stderr.write((work / f"{node}.log").read_text(errors="replace")[-6000:])
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
