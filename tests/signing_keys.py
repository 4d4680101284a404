"""Keys and X.509 certificates made at test time, for the image signature tests."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def make_key(kind: str) -> Any:
    """kind: rsa, dsa, secp384r1, secp521r1."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "dsa":
        return dsa.generate_private_key(key_size=2048)
    return ec.generate_private_key({"secp384r1": ec.SECP384R1(), "secp521r1": ec.SECP521R1()}[kind])


def make_cert(key: Any, *, name: str = "signer", issuer_key: Any = None, issuer_name: str | None = None,
              not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
              ca: bool = False, digital_signature: bool = True) -> x509.Certificate:
    """A certificate of ``key``'s public key, self-signed unless ``issuer_key`` is given."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name or name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - DAY).not_valid_after(not_after or NOW + 30 * DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True))
    signer = issuer_key or key
    return builder.sign(signer, hashes.SHA256())


def write_cert(directory: Path, name: str, cert: x509.Certificate, *, der: bool = False) -> str:
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    (directory / name).write_bytes(cert.public_bytes(encoding))
    return name


def write_key(path: Path, key: Any) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path
