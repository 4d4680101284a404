"""Signed images (img_signature*): verified while the data streams, refused with Glance's 400.

A real daemon with ``[image_signature] certificate_dir``, the real ``glance`` CLI and
``streamd-sign`` (``python -m streamd.sign``), keys and certificates made at test time.
The key manager (Barbican) path is tests/test_signing_barbican.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Daemon, start_daemon, stop_daemon
from signing_keys import DAY, NOW, make_cert, make_key, write_cert, write_key
from test_glance_cli import show_table
from test_glance_cli_import import Cli, stores_of
from test_import_crash import DATA as SOURCE_DATA
from test_import_crash import Source

from streamd.errors import SignatureVerificationFailed
from streamd.sign import signature_properties
from streamd.signing import CertificateChecks, DirectoryCertificates, Signatures

MIB = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def rsa_signer(certs: Path) -> tuple[Any, str]:
    key = make_key("rsa")
    return key, write_cert(certs, "rsa-signer", make_cert(key))


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    with Source() as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, certs: Path, source: Source) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("signing"), (
        "enabled_backends = fs:file,fs2:file\n"
        f"[import_filtering_opts]\nallow_private_networks = true\nallowed_ports = {source.port}\n"
        f"[image_signature]\ncertificate_dir = {certs}\n"))
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


@pytest.fixture
def cli(server: Daemon, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path / "home")


def make_file(path: Path, size: int) -> bytes:
    data = hashlib.shake_256(path.name.encode() + uuid.uuid4().bytes).digest(size)
    path.write_bytes(data)
    return data


def http(server: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + path, data=body, method=method,
                                     headers={"Accept": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return status, json.loads(raw) if raw else None


def create(server: Daemon, properties: dict[str, str]) -> str:
    status, body = http(server, "POST", "/v2/images",
                        json.dumps({"disk_format": "raw", "container_format": "bare", **properties}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 201, body
    return str(body["id"])


def upload(server: Daemon, image_id: str, data: bytes) -> tuple[int, Any]:
    return http(server, "PUT", f"/v2/images/{image_id}/file", data, {"Content-Type": "application/octet-stream"})


def stored_files(server: Daemon) -> set[str]:
    root = server.data_dir / "images"
    return {p.name for p in root.rglob("*") if p.is_file()}


def sign(path: Path, key: Any, cert_uuid: str, method: str = "SHA-256") -> dict[str, str]:
    return signature_properties(str(path), key, cert_uuid, method)


def mismatch(image_id: str) -> str:
    return f"Signature verification failed for image {image_id}: Signature verification failed"


def refused(image_id: str, reason: str) -> str:
    return f"Signature verification failed for image {image_id}: Signature verification for the image failed: {reason}."


def assert_refused(server: Daemon, image_id: str, status: int, body: Any, message: str) -> None:
    assert status == 400, body
    # webob's JSON body, as Glance sends it: the explanation, then "<br /><br />" and blank lines.
    assert body["message"] == message + "<br /><br />\n\n\n", body
    status, image = http(server, "GET", f"/v2/images/{image_id}")
    assert image["status"] == "queued" and image["checksum"] is None and image["size"] is None, image
    assert image_id not in stored_files(server)


# -- the glance CLI with streamd-sign ------------------------------------------------------------

def streamd_sign(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd.sign", *args], capture_output=True, text=True, timeout=60)


def test_glance_cli_good_signature_goes_active_and_flipped_byte_is_refused(
        cli: Cli, tmp_path: Path, rsa_signer: tuple[Any, str]) -> None:
    key, cert = rsa_signer
    data = make_file(tmp_path / "disk.raw", 3 * MIB + 5)
    key_path = write_key(tmp_path / "key.pem", key)
    printed = streamd_sign(str(tmp_path / "disk.raw"), "--key", str(key_path), "--cert-uuid", cert)
    assert printed.returncode == 0, printed.stderr
    args = printed.stdout.split()
    assert args[0::2] == ["--property"] * 4
    assert [a.split("=", 1)[0] for a in args[1::2]] == [
        "img_signature", "img_signature_hash_method", "img_signature_key_type", "img_signature_certificate_uuid"]
    assert "img_signature_key_type=RSA-PSS" in args and f"img_signature_certificate_uuid={cert}" in args

    out = cli.run("image-create", "--name", "signed", "--disk-format", "raw", "--container-format", "bare",
                  *args, "--file", str(tmp_path / "disk.raw")).stdout
    image = cli.image(show_table(out)["id"])
    assert image["status"] == "active" and image["size"] == len(data)
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()

    # The same properties, one byte of the data flipped: Glance's 400, and nothing stored.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    (tmp_path / "flipped.raw").write_bytes(flipped)
    before = stored_files(cli.daemon)
    result = cli.run("image-create", "--name", "tampered", "--disk-format", "raw", "--container-format", "bare",
                     *args, "--file", str(tmp_path / "flipped.raw"), ok=False)
    output = result.stdout + result.stderr
    assert "400 Bad Request" in output and "Signature verification failed for image" in output, output
    tampered = [i for i in cli.http("GET", "/v2/images?name=tampered")[1]["images"]]
    assert len(tampered) == 1 and tampered[0]["status"] == "queued"
    assert mismatch(tampered[0]["id"]) in output, output
    assert stored_files(cli.daemon) == before


def test_streamd_sign_refuses_a_missing_key(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    result = streamd_sign(str(tmp_path / "f"), "--key", str(tmp_path / "nope.pem"), "--cert-uuid", "c")
    assert result.returncode == 1 and "nope.pem" in result.stderr


# -- the matrix: every key type and hash method Glance accepts ------------------------------------

@pytest.mark.parametrize("kind,key_type", [("rsa", "RSA-PSS"), ("dsa", "DSA"), ("secp384r1", "ECC_SECP384R1"),
                                           ("secp521r1", "ECC_SECP521R1")])
@pytest.mark.parametrize("method", ["SHA-224", "SHA-256", "SHA-384", "SHA-512"])
def test_key_types_and_hash_methods(server: Daemon, certs: Path, tmp_path: Path, kind: str, key_type: str,
                                    method: str) -> None:
    key = make_key(kind) if kind != "rsa" else make_key("rsa")
    cert = write_cert(certs, f"{kind}-{method}", make_cert(key), der=kind == "dsa")
    data = make_file(tmp_path / "d", MIB + 3)
    props = sign(tmp_path / "d", key, cert, method)
    assert props["img_signature_key_type"] == key_type
    good = create(server, props)
    assert upload(server, good, data)[0] == 204
    assert http(server, "GET", f"/v2/images/{good}")[1]["status"] == "active"
    bad = create(server, props)
    status, body = upload(server, bad, data[:-1] + bytes([data[-1] ^ 0x80]))
    assert_refused(server, bad, status, body, mismatch(bad))


# -- what is refused before the data is read, with Glance's (cursive's) messages -------------------

def test_wrong_certificate_expired_and_truncated(server: Daemon, certs: Path, tmp_path: Path,
                                                 rsa_signer: tuple[Any, str]) -> None:
    key, cert = rsa_signer
    data = make_file(tmp_path / "d", 2 * MIB)
    props = sign(tmp_path / "d", key, cert)
    # Another key's certificate: the signature does not verify.
    other = write_cert(certs, "other-rsa", make_cert(make_key("rsa")))
    image = create(server, {**props, "img_signature_certificate_uuid": other})
    assert_refused(server, image, *upload(server, image, data), mismatch(image))
    # Expired, and not yet valid: refused before any byte is stored.
    for name, before, after in (("expired", NOW - 10 * DAY, NOW - DAY), ("future", NOW + DAY, NOW + 10 * DAY)):
        write_cert(certs, name, make_cert(key, not_before=before, not_after=after))
        image = create(server, {**props, "img_signature_certificate_uuid": name})
        assert_refused(server, image, *upload(server, image, data),
                       f"Signature verification failed for image {image}: "
                       "The certificate is outside its valid date range.")
    # A certificate whose key usage forbids signatures.
    write_cert(certs, "no-signing", make_cert(key, digital_signature=False))
    image = create(server, {**props, "img_signature_certificate_uuid": "no-signing"})
    assert_refused(server, image, *upload(server, image, data),
                   f"Signature verification failed for image {image}: The certificate 'no-signing' is not "
                   "allowed to make digital signatures (key usage).")
    # The upload cut short (the client sends less than was signed).
    image = create(server, props)
    assert_refused(server, image, *upload(server, image, data[: MIB]), mismatch(image))
    # An empty upload of a signed image.
    image = create(server, props)
    assert_refused(server, image, *upload(server, image, b""), mismatch(image))


@pytest.mark.parametrize("change,reason", [
    ({"img_signature_certificate_uuid": "no-such-cert"}, "Certificate not found with ID: no-such-cert"),
    ({"img_signature_certificate_uuid": "../etc"}, "Certificate not found with ID: ../etc"),
    ({"img_signature_hash_method": "MD5"}, "Invalid signature hash method: MD5"),
    ({"img_signature_key_type": "RSA"}, "Invalid signature key type: RSA"),
    ({"img_signature": "not*base64"}, "The signature data was not properly encoded using base64"),
    ({"img_signature_key_type": "ECC_SECP384R1"}, "Invalid public key type for signature key type: ECC_SECP384R1"),
])
def test_bad_signature_properties(server: Daemon, tmp_path: Path, rsa_signer: tuple[Any, str],
                                  change: dict[str, str], reason: str) -> None:
    key, cert = rsa_signer
    data = make_file(tmp_path / "d", 4096)
    image = create(server, {**sign(tmp_path / "d", key, cert), **change})
    assert_refused(server, image, *upload(server, image, data), refused(image, reason))


def test_partial_signature_properties_are_not_verified(server: Daemon, tmp_path: Path) -> None:
    """cursive's should_create_verifier: without all four properties Glance verifies nothing."""
    data = make_file(tmp_path / "d", 4096)
    image = create(server, {"img_signature": base64.b64encode(b"junk").decode(), "img_signature_hash_method": "SHA-256",
                            "img_signature_key_type": "RSA-PSS"})
    assert upload(server, image, data)[0] == 204
    assert http(server, "GET", f"/v2/images/{image}")[1]["status"] == "active"


# -- import: glance-direct (stage then import) and copy-image ------------------------------------

def import_and_wait(cli: Cli, image_id: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = http(cli.daemon, "POST", f"/v2/images/{image_id}/import", json.dumps(body).encode(),
                          {"Content-Type": "application/json"})
    assert status == 202, answer
    return cli.wait_import(image_id)


def test_glance_direct_import_verifies_the_staged_data(cli: Cli, tmp_path: Path,
                                                       rsa_signer: tuple[Any, str]) -> None:
    key, cert = rsa_signer
    data = make_file(tmp_path / "d", 2 * MIB + 1)
    props = sign(tmp_path / "d", key, cert)
    good = create(cli.daemon, props)
    assert http(cli.daemon, "PUT", f"/v2/images/{good}/stage", data,
                {"Content-Type": "application/octet-stream"})[0] == 204
    # The digest the signature covers was computed while the data was staged: the import reads nothing again.
    staged = json.loads((cli.daemon.data_dir / "staging" / f"{good}.json").read_text())
    assert staged["signature_hash_method"] == "SHA-256"
    assert staged["signature_digest"] == hashlib.sha256(data).hexdigest()
    assert import_and_wait(cli, good, {"method": {"name": "glance-direct"}})["status"] == "success"
    assert cli.image(good)["status"] == "active"

    bad = create(cli.daemon, props)
    assert http(cli.daemon, "PUT", f"/v2/images/{bad}/stage", data[:-1] + b"\0",
                {"Content-Type": "application/octet-stream"})[0] == 204
    task = import_and_wait(cli, bad, {"method": {"name": "glance-direct"}})
    assert task["status"] == "failure" and task["message"] == mismatch(bad), task
    image = cli.image(bad)
    assert image["status"] == "queued" and not stores_of(image)
    assert bad not in stored_files(cli.daemon) and bad not in " ".join(cli.staging())


def test_web_download_verifies_the_downloaded_data(cli: Cli, source: Source, tmp_path: Path,
                                                   rsa_signer: tuple[Any, str]) -> None:
    key, cert = rsa_signer
    (tmp_path / "d").write_bytes(SOURCE_DATA)
    good = create(cli.daemon, sign(tmp_path / "d", key, cert, "SHA-384"))
    web = {"method": {"name": "web-download", "uri": source.url("/disk.raw")}}
    assert import_and_wait(cli, good, web)["status"] == "success"
    assert cli.image(good)["status"] == "active"
    # Signed over other bytes than the source serves.
    (tmp_path / "d").write_bytes(SOURCE_DATA[:-1] + bytes([SOURCE_DATA[-1] ^ 1]))
    bad = create(cli.daemon, sign(tmp_path / "d", key, cert, "SHA-384"))
    task = import_and_wait(cli, bad, web)
    assert task["status"] == "failure" and task["message"] == mismatch(bad), task
    image = cli.image(bad)
    assert image["status"] == "queued" and not stores_of(image)
    assert bad not in stored_files(cli.daemon) and bad not in " ".join(cli.staging())


def test_signed_after_staging_is_verified_at_import(cli: Cli, tmp_path: Path,
                                                    rsa_signer: tuple[Any, str]) -> None:
    """Properties set after the data was staged: the import reads the staged data once more."""
    key, cert = rsa_signer
    data = make_file(tmp_path / "d", MIB)
    image = create(cli.daemon, {})
    assert http(cli.daemon, "PUT", f"/v2/images/{image}/stage", data[1:] + b"x",
                {"Content-Type": "application/octet-stream"})[0] == 204
    patch = [{"op": "add", "path": f"/{k}", "value": v} for k, v in sign(tmp_path / "d", key, cert).items()]
    status, body = http(cli.daemon, "PATCH", f"/v2/images/{image}", json.dumps(patch).encode(),
                        {"Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert status == 200, body
    task = import_and_wait(cli, image, {"method": {"name": "glance-direct"}})
    assert task["status"] == "failure" and task["message"] == mismatch(image), task
    assert cli.image(image)["status"] == "queued"


def test_copy_image_verifies_what_it_copies(cli: Cli, tmp_path: Path, certs: Path) -> None:
    """copy-image reads the image's data once into the new stores and checks the signature on the way:
    a certificate replaced meanwhile (another key) fails the copy and leaves nothing in the new store."""
    key = make_key("rsa")
    cert = write_cert(certs, "copy-signer", make_cert(key))
    data = make_file(tmp_path / "d", MIB + 7)
    image = create(cli.daemon, sign(tmp_path / "d", key, cert))
    assert upload(cli.daemon, image, data)[0] == 204
    assert import_and_wait(cli, image, {"method": {"name": "copy-image"}, "stores": ["fs2"]})["status"] == "success"
    assert stores_of(cli.image(image)) == ["fs", "fs2"]

    second = create(cli.daemon, sign(tmp_path / "d", key, cert))
    assert upload(cli.daemon, second, data)[0] == 204
    write_cert(certs, "copy-signer", make_cert(make_key("rsa")))
    task = import_and_wait(cli, second, {"method": {"name": "copy-image"}, "stores": ["fs2"]})
    assert task["status"] == "failure" and task["message"] == mismatch(second), task
    copied = cli.image(second)
    assert copied["status"] == "active" and stores_of(copied) == ["fs"]
    assert not (cli.daemon.data_dir / "images" / "fs2" / second).exists()


# -- the trust store (enable_certificate_validation) ---------------------------------------------

async def test_certificate_chain_to_a_trusted_ca(tmp_path: Path) -> None:
    ca_key, other_ca_key, signer_key = make_key("rsa"), make_key("rsa"), make_key("secp384r1")
    write_cert(tmp_path, "ca", make_cert(ca_key, name="ca", ca=True))
    write_cert(tmp_path, "other-ca", make_cert(other_ca_key, name="other-ca", ca=True))
    write_cert(tmp_path, "expired-ca", make_cert(ca_key, name="ca", ca=True, not_after=NOW - DAY,
                                                 not_before=NOW - 3 * DAY))
    write_cert(tmp_path, "issued", make_cert(signer_key, name="signer", issuer_key=ca_key, issuer_name="ca"))
    write_cert(tmp_path, "self-signed", make_cert(signer_key, name="signer"))
    source = DirectoryCertificates(tmp_path)
    (tmp_path / "d").write_bytes(b"data" * 1000)
    props = sign(tmp_path / "d", signer_key, "issued", "SHA-384")

    def signatures(*trusted: str) -> Signatures:
        return Signatures(source, CertificateChecks(validate_chain=True, trusted_ids=trusted))

    verifier = await signatures("other-ca", "ca").verifier_for("img", props)
    assert verifier is not None
    verifier.update(b"data" * 1000)
    verifier.verify()
    assert verifier.checked
    chain_failed = ("Signature verification failed for image img: Certificate chain building failed. Could not "
                    "locate the signing certificate for the base certificate in the set of trusted certificates.")
    for trusted in (("other-ca",), ("expired-ca",), ("missing",), ()):
        with pytest.raises(SignatureVerificationFailed) as caught:
            await signatures(*trusted).verifier_for("img", props)
        assert caught.value.message == chain_failed
    # A self-signed signing certificate is trusted only when it is itself in the trust store.
    own = {**props, "img_signature_certificate_uuid": "self-signed"}
    with pytest.raises(SignatureVerificationFailed):
        await signatures("ca").verifier_for("img", own)
    # ... and it is no CA, so it cannot be one either.
    with pytest.raises(SignatureVerificationFailed):
        await signatures("self-signed").verifier_for("img", own)
    assert await Signatures(source, CertificateChecks()).verifier_for("img", own) is not None


def test_signature_made_with_openssl_as_glance_documents(server: Daemon, certs: Path, tmp_path: Path) -> None:
    """Glance's documented recipe: ``openssl dgst -sha256 -sign key -sigopt rsa_padding_mode:pss``."""
    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    openssl("genrsa", "-out", str(tmp_path / "key.pem"), "2048")
    openssl("req", "-new", "-x509", "-key", str(tmp_path / "key.pem"), "-out", str(certs / "openssl-cert"),
            "-days", "2", "-subj", "/CN=openssl signer")
    data = make_file(tmp_path / "img", 3 * MIB + 11)
    openssl("dgst", "-sha256", "-sign", str(tmp_path / "key.pem"), "-sigopt", "rsa_padding_mode:pss",
            "-out", str(tmp_path / "img.sig"), str(tmp_path / "img"))
    props = {"img_signature": base64.b64encode((tmp_path / "img.sig").read_bytes()).decode(),
             "img_signature_hash_method": "SHA-256", "img_signature_key_type": "RSA-PSS",
             "img_signature_certificate_uuid": "openssl-cert"}
    image = create(server, props)
    assert upload(server, image, data)[0] == 204
    assert http(server, "GET", f"/v2/images/{image}")[1]["status"] == "active"
    image = create(server, props)
    assert_refused(server, image, *upload(server, image, data + b"\n"), mismatch(image))


async def test_without_a_certificate_source_signed_images_are_refused(tmp_path: Path) -> None:
    """No key manager and no certificate_dir: as a Glance whose castellan reaches no Barbican."""
    from streamd.config import load_config
    from streamd.signing import signatures_from_config

    signatures = signatures_from_config(load_config(overrides={"DEFAULT": {"data_dir": str(tmp_path)}}))
    key = make_key("rsa")
    (tmp_path / "d").write_bytes(b"x" * 100)
    with pytest.raises(SignatureVerificationFailed) as caught:
        await signatures.verifier_for("img", sign(tmp_path / "d", key, "some-id"))
    assert caught.value.message == refused("img", "Unable to retrieve certificate with ID: some-id")
    assert await signatures.verifier_for("img", {"img_signature": "x"}) is None
