"""Where signing certificates come from, and what is checked of them.

``KeyManagerCertificates`` is Glance's way: castellan's key manager (``[key_manager]
backend = barbican``), the certificate's id being the Barbican secret's. streamd asks
Barbican with its own service credentials (``[key_manager] auth_url, username, ...``:
castellan's ``keystone_password`` credential) rather than the caller's token, so that
imports, which run after the request, can ask too.

``DirectoryCertificates`` is streamd's own, for deployments without a key manager
(``[image_signature] certificate_dir``): the certificate's id is a file name there, the
file PEM or DER.

``CertificateChecks``: Glance 33 checks nothing of the certificate but its format and
key type; streamd also refuses, by default, a certificate outside its validity dates
and one whose key usage extension does not allow digital signatures, and with
``enable_certificate_validation`` one that does not chain up to a trusted CA
(``trusted_certificate_ids``, found in the same source): cursive's
``verify_certificate``, which Nova uses for its trusted certificates.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from ..config import Config
from ..errors import SignatureVerificationFailed
from .verify import failure, reason

if TYPE_CHECKING:
    from .verify import Signatures

log = logging.getLogger(__name__)


class CertificateSource(Protocol):
    async def get(self, image_id: str, certificate_id: str) -> x509.Certificate:
        """The certificate, or SignatureVerificationFailed with cursive's message."""
        ...


def _parse(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


class DirectoryCertificates:
    """Certificates as files in one directory, each named by its id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _read(self, certificate_id: str) -> bytes | None:
        if not certificate_id or "/" in certificate_id or "\0" in certificate_id or certificate_id.startswith("."):
            return None
        try:
            return (self.directory / certificate_id).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def get(self, image_id: str, certificate_id: str) -> x509.Certificate:
        data = await asyncio.to_thread(self._read, certificate_id)
        if data is None:
            raise reason(image_id, f"Certificate not found with ID: {certificate_id}")
        try:
            return _parse(data)
        except ValueError:
            raise reason(image_id, f"Invalid certificate format: {certificate_id}") from None


class KeyManagerCertificates:
    """Certificates from castellan's key manager (Barbican), asked with streamd's service credentials."""

    def __init__(self, config: Config) -> None:
        from castellan import key_manager, options
        from castellan.common.credentials import keystone_password
        from oslo_config import cfg

        km = config.key_manager
        bb = config.barbican
        conf = cfg.ConfigOpts()
        conf([], project="streamd", default_config_files=[], default_config_dirs=[])
        options.set_defaults(conf, backend="barbican", barbican_endpoint=bb.barbican_endpoint,
                             barbican_api_version=bb.barbican_api_version, auth_endpoint=bb.auth_endpoint or km.auth_url,
                             barbican_endpoint_type=bb.barbican_endpoint_type, verify_ssl=bb.verify_ssl,
                             verify_ssl_path=bb.verify_ssl_path)
        self._manager = key_manager.API(conf)  # registers the [barbican] options set_defaults does not know
        if bb.barbican_region_name:
            conf.set_override("barbican_region_name", bb.barbican_region_name, group="barbican")
        self._credential = keystone_password.KeystonePassword(
            km.password, auth_url=km.auth_url, username=km.username, user_id=km.user_id,
            user_domain_id=km.user_domain_id, user_domain_name=km.user_domain_name, project_id=km.project_id,
            project_name=km.project_name, project_domain_id=km.project_domain_id,
            project_domain_name=km.project_domain_name)

    def _fetch(self, certificate_id: str) -> Any:
        return self._manager.get(self._credential, certificate_id)

    async def get(self, image_id: str, certificate_id: str) -> x509.Certificate:
        from castellan.common import exception as castellan_errors

        try:
            managed = await asyncio.to_thread(self._fetch, certificate_id)
        except castellan_errors.ManagedObjectNotFoundError:
            raise reason(image_id, f"Certificate not found with ID: {certificate_id}") from None
        except castellan_errors.CastellanException as exc:
            log.error("Unable to retrieve certificate with ID %s: %s", certificate_id, exc)
            raise reason(image_id, f"Unable to retrieve certificate with ID: {certificate_id}") from None
        if managed.format != "X.509":
            raise reason(image_id, f"Invalid certificate format: {managed.format}")
        try:
            return x509.load_der_x509_certificate(managed.get_encoded())
        except ValueError:
            raise reason(image_id, f"Invalid certificate format: {managed.format}") from None


def _within_dates(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def _extension(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> Any:
    try:
        return certificate.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _can_sign_certificates(certificate: x509.Certificate) -> bool:
    constraints = _extension(certificate, ExtensionOID.BASIC_CONSTRAINTS)
    usage = _extension(certificate, ExtensionOID.KEY_USAGE)
    return bool(constraints is not None and constraints.ca and usage is not None and usage.key_cert_sign)


def _issued_by(issuer: x509.Certificate, certificate: x509.Certificate) -> bool:
    if issuer.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class CertificateChecks:
    """What a signing certificate must pass besides its key type (see the module's text)."""

    def __init__(self, *, valid_dates: bool = True, key_usage: bool = True, validate_chain: bool = False,
                 trusted_ids: Sequence[str] = ()) -> None:
        self.valid_dates = valid_dates
        self.key_usage = key_usage
        self.validate_chain = validate_chain
        self.trusted_ids = tuple(trusted_ids)

    async def check(self, image_id: str, certificate_id: str, certificate: x509.Certificate,
                    source: CertificateSource) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        if self.valid_dates and not _within_dates(certificate, now):
            raise failure(image_id, "The certificate is outside its valid date range.")
        if self.key_usage:
            usage = _extension(certificate, ExtensionOID.KEY_USAGE)
            if usage is not None and not usage.digital_signature:
                raise failure(image_id, f"The certificate '{certificate_id}' is not allowed to make digital "
                                        "signatures (key usage).")
        if self.validate_chain:
            await self._check_chain(image_id, certificate, source, now)

    async def _check_chain(self, image_id: str, certificate: x509.Certificate, source: CertificateSource,
                           now: datetime.datetime) -> None:
        """cursive's CertificateVerificationContext: up the chain through trusted CA certificates to a
        self-signed one, each able to sign certificates, in its dates, and its path length allowing the rest."""
        trusted: list[tuple[str, x509.Certificate]] = []
        for trusted_id in self.trusted_ids:
            try:
                candidate = await source.get(image_id, trusted_id)
            except SignatureVerificationFailed:
                log.warning("Skipping trusted certificate: %s", trusted_id)
                continue
            if self.valid_dates and not _within_dates(candidate, now):
                log.warning("Certificate '%s' is outside its valid date range and cannot be used as a signing "
                            "certificate.", trusted_id)
                continue
            if not _can_sign_certificates(candidate):
                log.warning("Certificate '%s' is not configured to act as a signing certificate. It will not be "
                            "used as a signing certificate.", trusted_id)
                continue
            trusted.append((trusted_id, candidate))
        chain: list[tuple[str, x509.Certificate]] = [("base", certificate)]
        current = certificate
        while True:
            found = next(((tid, c) for tid, c in trusted if _issued_by(c, current)), None)
            if found is None:
                name = chain[0][0]
                what = "the base certificate" if name == "base" else f"certificate '{name}'"
                raise failure(image_id, "Certificate chain building failed. Could not locate the signing "
                                        f"certificate for {what} in the set of trusted certificates.")
            if found[1] == current:
                break
            chain.insert(0, found)
            current = found[1]
            if len(chain) > len(trusted) + 1:
                raise failure(image_id, "Certificate chain building failed: the chain loops.")
        for i, (name, cert) in enumerate(chain[:-1]):
            constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
            if constraints is None:
                raise failure(image_id, f"Certificate validation failed. The signing certificate '{name}' does not "
                                        "have a basic constraints extension.")
            if constraints.path_length is None:
                continue
            below = len(chain[i:])
            below = below - 2 if below > 2 else 0
            if constraints.path_length < below:
                raise failure(image_id, f"Certificate validation failed. The signing certificate '{name}' is not "
                                        "configured to support certificate chains of sufficient length.")


def certificate_source(config: Config) -> CertificateSource:
    """The configured source: the key manager, the directory, or none (no signed image's certificate
    can be retrieved, so every signed image is refused)."""
    backend = config.key_manager.backend
    if backend == "barbican":
        return KeyManagerCertificates(config)
    directory = config.image_signature.certificate_dir
    if directory:
        return DirectoryCertificates(Path(directory).absolute())
    return NoCertificates()


class NoCertificates:
    """No key manager and no directory: every signed image's certificate is one that cannot be retrieved."""

    async def get(self, image_id: str, certificate_id: str) -> x509.Certificate:
        raise reason(image_id, f"Unable to retrieve certificate with ID: {certificate_id}")


def signatures_from_config(config: Config) -> "Signatures":
    """The signature service of this configuration: its certificate source and checks."""
    from .verify import Signatures

    opts = config.image_signature
    checks = CertificateChecks(valid_dates=opts.verify_certificate_dates, key_usage=opts.verify_key_usage,
                               validate_chain=opts.enable_certificate_validation,
                               trusted_ids=opts.trusted_certificate_ids)
    return Signatures(certificate_source(config), checks)
