"""Signed images with their certificates in a real Barbican (``[key_manager] backend = barbican``).

Barbican 23 from PyPI (scripts/barbican-dev.sh: SQLite, simple_crypto, auth_token against the
suite's Keystone) holds certificates made at test time, stored through castellan as an operator
would; streamd reads them through castellan with its own credentials. The real ``glance`` CLI
creates the images. scripts/test.sh starts that Barbican (STREAMD_TEST_BARBICAN_URL); run alone
(tests/keystone.py's Keystone set), this module starts its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Daemon, start_daemon, stop_daemon
from keystone import keystone_url
from signing_keys import DAY, NOW, make_cert, make_key
from test_glance_cli import show_table
from test_glance_cli_import import Cli
from test_signing import assert_refused, create, make_file, mismatch, refused, sign, stored_files, upload

from streamd.sign import signature_properties

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def barbican(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("STREAMD_TEST_BARBICAN_URL")
    if url:
        yield url
        return
    keystone_url()  # fails the test, with how to run it, when there is no Keystone
    directory = tmp_path_factory.mktemp("barbican")
    started = subprocess.run([str(ROOT / "scripts" / "barbican-dev.sh"), "start", str(directory)],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    try:
        yield env["STREAMD_TEST_BARBICAN_URL"]
    finally:
        subprocess.run([str(ROOT / "scripts" / "barbican-dev.sh"), "stop", str(directory)], timeout=60)


def _credentials() -> dict[str, str]:
    return {"auth_url": keystone_url(), "username": "admin",
            "password": os.environ["STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"], "user_domain_name": "Default",
            "project_name": "admin", "project_domain_name": "Default"}


class Vault:
    """Barbican as an operator uses it: certificates stored through castellan."""

    def __init__(self, url: str) -> None:
        from castellan import key_manager, options
        from castellan.common.credentials import keystone_password
        from oslo_config import cfg

        conf = cfg.ConfigOpts()
        conf([], project="streamd-tests", default_config_files=[], default_config_dirs=[])
        options.set_defaults(conf, backend="barbican", barbican_endpoint=url, auth_endpoint=keystone_url())
        self.manager = key_manager.API(conf)
        creds = _credentials()
        self.credential = keystone_password.KeystonePassword(creds.pop("password"), **creds)

    def store_cert(self, cert: Any) -> str:
        from castellan.common.objects import x_509
        from cryptography.hazmat.primitives import serialization

        return str(self.manager.store(self.credential, x_509.X509(cert.public_bytes(serialization.Encoding.DER))))

    def store_passphrase(self, text: str) -> str:
        from castellan.common.objects import passphrase

        return str(self.manager.store(self.credential, passphrase.Passphrase(text)))


@pytest.fixture(scope="module")
def vault(barbican: str) -> Vault:
    return Vault(barbican)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, barbican: str) -> Iterator[Daemon]:
    creds = _credentials()
    key_manager = "".join(f"{k} = {v}\n" for k, v in creds.items())
    daemon = start_daemon(tmp_path_factory.mktemp("signing-barbican"), (
        f"[key_manager]\nbackend = barbican\n{key_manager}"
        f"[barbican]\nbarbican_endpoint = {barbican}\n"))
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


@pytest.fixture
def cli(server: Daemon, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path / "home")


def glance_create(cli: Cli, path: Path, props: dict[str, str], *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    args = [a for k, v in props.items() for a in ("--property", f"{k}={v}")]
    return cli.run("image-create", "--name", path.name, "--disk-format", "raw", "--container-format", "bare",
                   *args, "--file", str(path), ok=ok)


def test_glance_cli_with_a_certificate_in_barbican(cli: Cli, vault: Vault, tmp_path: Path) -> None:
    key = make_key("rsa")
    cert_id = vault.store_cert(make_cert(key))
    data = make_file(tmp_path / "good.raw", 5 * (1 << 20) + 3)
    props = signature_properties(str(tmp_path / "good.raw"), key, cert_id)
    image = cli.image(show_table(glance_create(cli, tmp_path / "good.raw", props).stdout)["id"])
    assert image["status"] == "active" and image["size"] == len(data)
    assert image["img_signature_certificate_uuid"] == cert_id

    # One flipped byte: 400 with Glance's message, the image queued, nothing stored.
    flipped = bytearray(data)
    flipped[12345] ^= 0x10
    (tmp_path / "flipped.raw").write_bytes(flipped)
    before = stored_files(cli.daemon)
    result = glance_create(cli, tmp_path / "flipped.raw", props, ok=False)
    output = result.stdout + result.stderr
    found = cli.http("GET", "/v2/images?name=flipped.raw")[1]["images"]
    assert len(found) == 1 and found[0]["status"] == "queued"
    assert "400 Bad Request" in output and mismatch(found[0]["id"]) in output, output
    assert stored_files(cli.daemon) == before


def test_refusals_with_barbican(server: Daemon, vault: Vault, tmp_path: Path) -> None:
    key = make_key("secp384r1")
    data = make_file(tmp_path / "d", 1 << 20)
    good_cert = vault.store_cert(make_cert(key))
    props = sign(tmp_path / "d", key, good_cert, "SHA-512")
    image = create(server, props)
    assert upload(server, image, data)[0] == 204
    # Wrong certificate (another key's), expired certificate, tampered byte, truncated upload.
    wrong = vault.store_cert(make_cert(make_key("secp384r1")))
    image = create(server, {**props, "img_signature_certificate_uuid": wrong})
    assert_refused(server, image, *upload(server, image, data), mismatch(image))
    expired = vault.store_cert(make_cert(key, not_before=NOW - 9 * DAY, not_after=NOW - DAY))
    image = create(server, {**props, "img_signature_certificate_uuid": expired})
    assert_refused(server, image, *upload(server, image, data),
                   f"Signature verification failed for image {image}: The certificate is outside its valid date range.")
    image = create(server, props)
    assert_refused(server, image, *upload(server, image, b"\xff" + data[1:]), mismatch(image))
    image = create(server, props)
    assert_refused(server, image, *upload(server, image, data[:-4096]), mismatch(image))
    # No such secret, and a secret that is no certificate: cursive's messages.
    missing = "0b1e6d9a-5c4b-4d8e-9f51-0d5b0a1c2e3f"
    image = create(server, {**props, "img_signature_certificate_uuid": missing})
    assert_refused(server, image, *upload(server, image, data),
                   refused(image, f"Certificate not found with ID: {missing}"))
    secret = vault.store_passphrase("not a certificate")
    image = create(server, {**props, "img_signature_certificate_uuid": secret})
    assert_refused(server, image, *upload(server, image, data), refused(image, "Invalid certificate format: RAW"))


# -- parity: real Glance 33 with the same Barbican ------------------------------------------------

def _admin_login() -> tuple[str, str]:
    """A project-scoped token of Keystone's admin, and the admin project's id."""
    import json
    import urllib.request

    auth = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": os.environ["STREAMD_TEST_KEYSTONE_ADMIN_PASSWORD"]}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
    request = urllib.request.Request(keystone_url() + "/auth/tokens?nocatalog", data=json.dumps(auth).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["X-Subject-Token"], json.load(response)["token"]["project"]["id"]


@pytest.fixture(scope="module")
def glance_and_streamd_signing(tmp_path_factory: pytest.TempPathFactory, barbican: str) -> Iterator[dict[str, str]]:
    """Glance 33 (``[key_manager] backend = barbican``: castellan with the caller's token, as Glance
    runs it) and a streamd with its own credentials, both reading the same Barbican."""
    from test_glance_parity import Glance, glance_and_streamd

    class SigningGlance(Glance):  # type: ignore[misc, valid-type]
        def prepare(self) -> list[str]:
            cmd = super().prepare()
            conf = self.workdir / "etc" / "glance-api.conf"
            conf.write_text(conf.read_text() + f"[key_manager]\nbackend = barbican\n[barbican]\n"
                                               f"barbican_endpoint = {barbican}\nauth_endpoint = {keystone_url()}\n")
            return cmd

    creds = "".join(f"{k} = {v}\n" for k, v in _credentials().items())
    with glance_and_streamd(tmp_path_factory.mktemp("signing-parity"), glance_class=SigningGlance,
                            extra_config=f"[key_manager]\nbackend = barbican\n{creds}"
                                         f"[barbican]\nbarbican_endpoint = {barbican}\n") as both:
        yield both


def _raw(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + path, data=body, method=method, headers={"Accept": "application/json",
                                                                                     **headers})
    for attempt in range(12):  # Glance's uWSGI drops a connection now and then (see test_glance_parity)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status = response.read(), response.status
            break
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
            break
        except (ConnectionError, urllib.error.URLError):
            if attempt == 11:
                raise
            import time
            time.sleep(0.2 * (attempt + 1))
    return status, json.loads(raw) if raw else None


def test_parity_with_glance(glance_and_streamd_signing: dict[str, str], vault: Vault, tmp_path: Path) -> None:
    token, project = _admin_login()
    who = {"X-Auth-Token": token, "X-Project-Id": project, "X-Roles": "admin,member,reader"}
    key = make_key("rsa")
    cert = vault.store_cert(make_cert(key))
    expired = vault.store_cert(make_cert(key, not_before=NOW - 9 * DAY, not_after=NOW - DAY))
    other = vault.store_cert(make_cert(make_key("rsa")))
    data = make_file(tmp_path / "d", 1 << 20)
    props = sign(tmp_path / "d", key, cert)
    flipped = data[:100] + bytes([data[100] ^ 4]) + data[101:]
    missing = "5b8c1a0e-1111-4222-8333-944445555666"
    cases = {
        "good": (props, data),
        "flipped byte": (props, flipped),
        "truncated": (props, data[:4096]),
        "wrong certificate": ({**props, "img_signature_certificate_uuid": other}, data),
        "no such certificate": ({**props, "img_signature_certificate_uuid": missing}, data),
        "bad hash method": ({**props, "img_signature_hash_method": "SHA-1"}, data),
        "bad key type": ({**props, "img_signature_key_type": "ECC_SECT571K1"}, data),
        "key type of another kind": ({**props, "img_signature_key_type": "DSA"}, data),
        "partial": ({k: v for k, v in props.items() if k != "img_signature_key_type"}, data),
    }
    answers: dict[str, dict[str, tuple[Any, ...]]] = {}
    for server, url in glance_and_streamd_signing.items():
        for case, (properties, body) in cases.items():
            status, image = _raw(url, "POST", "/v2/images", {**who, "Content-Type": "application/json"},
                                 json_bytes({"disk_format": "raw", "container_format": "bare", **properties}))
            assert status == 201, (server, case, image)
            status, answer = _raw(url, "PUT", f"/v2/images/{image['id']}/file",
                                  {**who, "Content-Type": "application/octet-stream"}, body)
            message = answer["message"].replace(image["id"], "IMAGE") if answer else None
            shown = _raw(url, "GET", f"/v2/images/{image['id']}", who)[1]
            answers.setdefault(case, {})[server] = (status, message, shown["status"], shown["checksum"])
    for case, both in answers.items():
        assert both["glance"] == both["streamd"], (case, both)
    assert answers["good"]["streamd"][:3] == (204, None, "active")
    assert answers["flipped byte"]["streamd"][:3] == (
        400, "Signature verification failed for image IMAGE: Signature verification failed<br /><br />\n\n\n", "queued")

    # Deliberately not Glance's: an expired certificate is refused (verify_certificate_dates).
    statuses = {}
    for server, url in glance_and_streamd_signing.items():
        status, image = _raw(url, "POST", "/v2/images", {**who, "Content-Type": "application/json"},
                             json_bytes({"disk_format": "raw", "container_format": "bare",
                                         **props, "img_signature_certificate_uuid": expired}))
        statuses[server] = _raw(url, "PUT", f"/v2/images/{image['id']}/file",
                                {**who, "Content-Type": "application/octet-stream"}, data)[0]
    assert statuses == {"glance": 204, "streamd": 400}


def json_bytes(document: Any) -> bytes:
    import json

    return json.dumps(document).encode()
