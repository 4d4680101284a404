"""Image signatures: the four ``img_signature*`` properties checked against the image data.

The properties and their meanings are Glance's (cursive's ``signature_utils``):
``img_signature`` (base64), ``img_signature_hash_method`` (SHA-224/256/384/512),
``img_signature_key_type`` (RSA-PSS, DSA, ECC_<curve> for the curves Glance accepts)
and ``img_signature_certificate_uuid`` (the X.509 certificate holding the public key,
found by a ``CertificateSource``: castellan's key manager or a local directory).

The hash the signature covers is computed with hashlib (which releases the GIL) in
its own thread beside the other consumers of the stream (``pipeline.ingest``); the
signature is checked once the stream is whole, on the digest (``Prehashed``). An
image with only some of the four properties is not verified, as in Glance.
"""

from __future__ import annotations

from .certificates import (CertificateChecks, CertificateSource, DirectoryCertificates, KeyManagerCertificates,
                           certificate_source, signatures_from_config)
from .verify import (CERT_UUID, HASH_METHOD, HASH_METHODS, KEY_TYPE, KEY_TYPES, SIGNATURE, SIGNATURE_PROPERTIES,
                     SignatureHash, SignatureVerifier, Signatures, sign_digest, signing_requested)

__all__ = ["CERT_UUID", "HASH_METHOD", "HASH_METHODS", "KEY_TYPE", "KEY_TYPES", "SIGNATURE", "SIGNATURE_PROPERTIES",
           "CertificateChecks", "CertificateSource", "DirectoryCertificates", "KeyManagerCertificates",
           "SignatureHash", "SignatureVerifier", "Signatures", "certificate_source", "sign_digest",
           "signatures_from_config", "signing_requested"]
