"""Building a verifier from an image's properties, and checking the data's digest against it.

The checks and their order, and every message, are cursive's ``get_verifier`` (which
Glance 33 calls): the four properties must all be there (else nothing is verified), the
signature must be base64, the hash method and key type known, the certificate found
and of X.509 format, its public key of the key type's kind. The certificate checks of
``CertificateChecks`` (dates, key usage, a trust store) come after, as Nova's cursive
``verify_certificate`` does them for trusted certificates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ..errors import SignatureVerificationFailed

log = logging.getLogger(__name__)

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERT_UUID = "img_signature_certificate_uuid"
SIGNATURE_PROPERTIES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERT_UUID)

# Glance's names -> (hashlib name, cryptography's algorithm class).
HASH_METHODS: dict[str, tuple[str, Callable[[], hashes.HashAlgorithm]]] = {
    "SHA-224": ("sha224", hashes.SHA224),
    "SHA-256": ("sha256", hashes.SHA256),
    "SHA-384": ("sha384", hashes.SHA384),
    "SHA-512": ("sha512", hashes.SHA512),
}

PublicKey = Union[rsa.RSAPublicKey, dsa.DSAPublicKey, ec.EllipticCurvePublicKey]


@dataclass(frozen=True)
class KeyType:
    name: str
    public_key_type: type


# cursive's curves, those this cryptography still offers (the binary SECT* curves are gone from it).
_ECC_CURVES = ("SECT571K1", "SECT409K1", "SECT571R1", "SECT409R1", "SECP521R1", "SECP384R1")
KEY_TYPES: dict[str, KeyType] = {
    "RSA-PSS": KeyType("RSA-PSS", rsa.RSAPublicKey),
    "DSA": KeyType("DSA", dsa.DSAPublicKey),
    **{f"ECC_{name}": KeyType(f"ECC_{name}", ec.EllipticCurvePublicKey)
       for name in _ECC_CURVES if hasattr(ec, name)},
}


def failure(image_id: str, message: str) -> SignatureVerificationFailed:
    """Glance's 400: ``Signature verification failed for image <id>: <cursive's message>``."""
    return SignatureVerificationFailed(f"Signature verification failed for image {image_id}: {message}")


def reason(image_id: str, text: str) -> SignatureVerificationFailed:
    """cursive's ``SignatureVerificationError(reason=...)``, inside Glance's message."""
    return failure(image_id, f"Signature verification for the image failed: {text}.")


def signing_requested(properties: Mapping[str, Any] | None) -> bool:
    """cursive's ``should_create_verifier``: all four properties are there (partial sets: no check)."""
    return properties is not None and all(name in properties for name in SIGNATURE_PROPERTIES)


class SignatureHash:
    """The digest the signature covers, fed from its own thread (hashlib releases the GIL)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.hashlib_name = HASH_METHODS[method][0]
        self._hash = hashlib.new(self.hashlib_name)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def digest(self) -> bytes:
        return self._hash.digest()


class SignatureVerifier:
    """One image's signature, its hash method and public key; ``update`` with every byte, then
    ``verify`` (or ``verify_digest`` with a digest of the same method computed elsewhere)."""

    def __init__(self, image_id: str, signature: bytes, method: str, key_type: KeyType, public_key: PublicKey) -> None:
        self.image_id = image_id
        self.signature = signature
        self.method = method
        self.key_type = key_type
        self.public_key = public_key
        self.hash = SignatureHash(method)
        self.checked = False  # True once the data was found to match

    def update(self, chunk: bytes) -> None:
        self.hash.update(chunk)

    def verify(self, digest: bytes | None = None) -> None:
        """Against what ``update`` saw, or ``digest`` (the same data's, of the same hash) when given."""
        self.verify_digest(self.hash.digest() if digest is None else digest)

    def verify_digest(self, digest: bytes) -> None:
        """SignatureVerificationFailed with Glance's message when the data is not what was signed."""
        algorithm = Prehashed(HASH_METHODS[self.method][1]())
        key = self.public_key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                pss = padding.PSS(mgf=padding.MGF1(HASH_METHODS[self.method][1]()),
                                  salt_length=padding.PSS.MAX_LENGTH)
                key.verify(self.signature, digest, pss, algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(self.signature, digest, ec.ECDSA(algorithm))
            else:
                key.verify(self.signature, digest, algorithm)
        except InvalidSignature:
            raise failure(self.image_id, "Signature verification failed") from None
        self.checked = True
        log.info("Successfully verified signature for image %s", self.image_id)


def decode_properties(image_id: str, properties: Mapping[str, Any]) -> tuple[bytes, str, KeyType, str]:
    """The signature, hash method, key type and certificate id, checked as cursive checks them
    before it asks for the certificate."""
    for key in SIGNATURE_PROPERTIES:
        if properties.get(key) is None:
            # cursive names the certificate property img_signature_uuid here.
            name = "img_signature_uuid" if key == CERT_UUID else key
            raise reason(image_id, "Required image properties for signature verification do not exist. "
                                   f"Cannot verify signature. Missing property: {name}")
    try:
        signature = base64.b64decode(str(properties[SIGNATURE]).encode(), validate=False)
    except (TypeError, ValueError, binascii.Error):
        raise reason(image_id, "The signature data was not properly encoded using base64") from None
    method = str(properties[HASH_METHOD])
    if method not in HASH_METHODS:
        raise reason(image_id, f"Invalid signature hash method: {method}")
    key_name = str(properties[KEY_TYPE])
    key_type = KEY_TYPES.get(key_name)
    if key_type is None:
        raise reason(image_id, f"Invalid signature key type: {key_name}")
    return signature, method, key_type, str(properties[CERT_UUID])


def sign_digest(private_key: Any, digest: bytes, method: str) -> bytes:
    """The signature Glance checks of data with this digest: what ``streamd-sign`` and the tests make."""
    algorithm = Prehashed(HASH_METHODS[method][1]())
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(digest, padding.PSS(mgf=padding.MGF1(HASH_METHODS[method][1]()),
                                                    salt_length=padding.PSS.MAX_LENGTH), algorithm)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(digest, ec.ECDSA(algorithm))
    if isinstance(private_key, dsa.DSAPrivateKey):
        return private_key.sign(digest, algorithm)
    raise ValueError(f"cannot sign with a {type(private_key).__name__}")


class Signatures:
    """The service: a verifier for an image that asks for one, its certificate from ``source``."""

    def __init__(self, source: Any, checks: Any) -> None:
        self.source = source
        self.checks = checks

    async def verifier_for(self, image_id: str, properties: Mapping[str, Any]) -> SignatureVerifier | None:
        """None when the image asks for no verification (not all four properties); else a verifier,
        or SignatureVerificationFailed with Glance's message for what cursive refuses."""
        if not signing_requested(properties):
            return None
        signature, method, key_type, cert_id = decode_properties(image_id, properties)
        certificate = await self.source.get(image_id, cert_id)
        public_key = certificate.public_key()
        if not isinstance(public_key, key_type.public_key_type):
            raise reason(image_id, f"Invalid public key type for signature key type: {key_type.name}")
        await self.checks.check(image_id, cert_id, certificate, self.source)
        return SignatureVerifier(image_id, signature, method, key_type, public_key)
